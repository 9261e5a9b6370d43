//! `Browser`: headless Chromium driven over W3C WebDriver by a small client
//! on `reqwest`, against a `chromedriver` of its own (killed, with the
//! Chromium it started, on drop). Waits poll the page until a condition
//! holds (`wait_js`, `wait_for`), never sleep. A test that panics leaves,
//! under `artifacts_dir`, a screenshot and the source of the page it was
//! on and one screenshot per page it visited last.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::poll::eventually;
use super::procs::kill_tree_below;

/// The Chromium binary (Debian's `chromium`); `TEST_CHROMIUM` overrides.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver (Debian's `chromium-driver`); `TEST_CHROMEDRIVER` overrides.
const CHROMEDRIVER: &str = "chromedriver";
/// The Firefox binary (Debian's `firefox-esr`); `TEST_FIREFOX` overrides.
const FIREFOX: &str = "/usr/bin/firefox-esr";
/// Mozilla's driver (crates.io's `geckodriver`, which Debian does not
/// package); `TEST_GECKODRIVER` overrides.
const GECKODRIVER: &str = "geckodriver";

/// Which browser a session drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Chromium,
    Firefox,
}

impl Engine {
    /// The driver's program and its arguments to listen on `port`.
    fn driver_command(self, port: u16) -> std::process::Command {
        let mut command;
        match self {
            Engine::Chromium => {
                command = std::process::Command::new(env_or("TEST_CHROMEDRIVER", CHROMEDRIVER));
                command.arg(format!("--port={port}"));
            }
            Engine::Firefox => {
                command = std::process::Command::new(env_or("TEST_GECKODRIVER", GECKODRIVER));
                command
                    .args(["--host", "127.0.0.1", "--port"])
                    .arg(port.to_string());
            }
        }
        command
    }

    /// The narrowest window the browser opens: a phone's 375 px, but
    /// desktop Firefox keeps its windows at least 500 px wide (a
    /// `window/rect` asking less gets 500).
    pub fn narrowest_width(self) -> u32 {
        match self {
            Engine::Chromium => 375,
            Engine::Firefox => 500,
        }
    }

    /// What to install when the driver cannot start.
    fn install_hint(self) -> &'static str {
        match self {
            Engine::Chromium => "Debian's chromium and chromium-driver (scripts/prepare test)",
            Engine::Firefox => {
                "Debian's firefox-esr and geckodriver from crates.io (scripts/prepare test)"
            }
        }
    }
}
/// The W3C key under which an element reference travels.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a wait on the page may take: a failure guard only (a loaded
/// machine renders slowly), never a pause.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many page visits keep their screenshot for a failure report.
const VISITS_KEPT: usize = 8;

/// A headless Chromium session; see the module docs.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver: std::process::Child,
    /// Chromium's `--user-data-dir` and the driver's log.
    dir: tempfile::TempDir,
    artifacts: PathBuf,
    visits: Mutex<VecDeque<Visit>>,
    visit_count: Mutex<usize>,
}

/// A page the test reached, as it looked then.
struct Visit {
    number: usize,
    url: String,
    png: Vec<u8>,
}

/// An element of the current page, as the driver refers to it.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Browser {
    /// WebDriver's code of the Tab key.
    pub const TAB: &str = "\u{E004}";
    /// WebDriver's code of the Enter key.
    pub const ENTER: &str = "\u{E007}";

    /// Starts `chromedriver` on a free port and a headless Chromium session
    /// with a fresh profile and a `width` x `height` window. Failure
    /// artifacts go to `artifacts_dir()` (cleared now: what is there after
    /// the run belongs to this run).
    pub async fn start(width: u32, height: u32) -> Browser {
        Browser::start_in(Engine::Chromium, width, height).await
    }

    /// As [`Browser::start`], in `engine`.
    pub async fn start_in(engine: Engine, width: u32, height: u32) -> Browser {
        let artifacts = artifacts_dir();
        let _ = std::fs::remove_dir_all(&artifacts);
        let dir = tempfile::Builder::new()
            .prefix("infra-browser-")
            .tempdir()
            .expect("browser temp dir");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("reqwest client");
        // The port is free when picked; another process may take it before
        // the driver binds, so a driver that never answers is tried again.
        for _ in 0..3 {
            let port = super::free_port();
            let log =
                std::fs::File::create(dir.path().join("chromedriver.log")).expect("driver log");
            let driver = engine
                .driver_command(port)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start the {engine:?} driver ({e}): install {}",
                        engine.install_hint()
                    )
                });
            let base = format!("http://127.0.0.1:{port}");
            let mut driver = driver;
            if !driver_ready(&http, &base, &mut driver).await {
                let _ = driver.kill();
                let _ = driver.wait();
                continue;
            }
            let session = new_session(engine, &http, &base, dir.path(), width, height).await;
            let browser = Browser {
                http,
                session: format!("{base}/session/{session}"),
                driver,
                dir,
                artifacts,
                visits: Mutex::new(VecDeque::new()),
                visit_count: Mutex::new(0),
            };
            // Firefox takes no window size on its command line.
            browser.set_window_size(width, height).await;
            return browser;
        }
        let log = std::fs::read_to_string(dir.path().join("chromedriver.log")).unwrap_or_default();
        panic!("chromedriver did not answer on /status; its log:\n{log}");
    }

    /// Navigates to `url` (the driver waits for the page's load event) and
    /// keeps a screenshot of it for a failure report.
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
        self.record_visit().await;
    }

    /// The page's URL now.
    pub async fn url(&self) -> String {
        let url = self.command("GET", "/url", Value::Null).await;
        url.as_str().expect("the URL is a string").to_owned()
    }

    /// Waits until the page's path is `path` (with its query, if `path`
    /// has one) and it has loaded, then keeps a screenshot of it for a
    /// failure report: for a page a click or a form led to.
    pub async fn wait_path(&self, path: &str) {
        let here = if path.contains('?') {
            "location.pathname + location.search"
        } else {
            "location.pathname"
        };
        let js = format!(
            "return {here} === {} && document.readyState === 'complete';",
            json!(path)
        );
        self.wait_js(&format!("the page {path}"), &js).await;
        self.record_visit().await;
    }

    /// The first element matching the CSS `selector`; panics if none does.
    pub async fn find(&self, selector: &str) -> Element<'_> {
        match self.try_find(selector).await {
            Some(element) => element,
            None => panic!("no element {selector} on {}", self.url().await),
        }
    }

    /// The first element matching the CSS `selector`, if any.
    pub async fn try_find(&self, selector: &str) -> Option<Element<'_>> {
        self.find_all(selector).await.into_iter().next()
    }

    /// Every element matching the CSS `selector`, in document order.
    pub async fn find_all(&self, selector: &str) -> Vec<Element<'_>> {
        let found = self
            .command(
                "POST",
                "/elements",
                json!({ "using": "css selector", "value": selector }),
            )
            .await;
        self.elements(found)
    }

    /// The first element matching `selector` whose text contains `text`;
    /// panics if none does.
    pub async fn find_by_text(&self, selector: &str, text: &str) -> Element<'_> {
        let js = "return Array.from(document.querySelectorAll(arguments[0]))\
                  .filter(e => e.textContent.includes(arguments[1]));";
        let found = self.script(js, json!([selector, text])).await;
        match self.elements(found).into_iter().next() {
            Some(element) => element,
            None => panic!(
                "no element {selector} with the text {text:?} on {}",
                self.url().await
            ),
        }
    }

    /// How many elements match the CSS `selector`.
    pub async fn count(&self, selector: &str) -> usize {
        let js = "return document.querySelectorAll(arguments[0]).length;";
        let n = self.script(js, json!([selector])).await;
        n.as_u64().expect("a count") as usize
    }

    /// Runs `js` (a function body; `arguments` are `args`) in the page and
    /// returns what it returns (elements as `{ELEMENT_KEY: id}`).
    pub async fn script(&self, js: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": js, "args": args }),
        )
        .await
    }

    /// Runs `js` in the page with a callback as its last argument and
    /// returns the value it is called with (e.g. after a `fetch`).
    pub async fn script_async(&self, js: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/async",
            json!({ "script": js, "args": args }),
        )
        .await
    }

    /// Polls `js` until it returns a truthy value and returns that value;
    /// panics, naming `what` and the page, after `PAGE_TIMEOUT`.
    pub async fn wait_js(&self, what: &str, js: &str) -> Value {
        let probe = || async move {
            let value = self.script(js, json!([])).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            truthy.then_some(value)
        };
        match eventually(PAGE_TIMEOUT, probe).await {
            Some(value) => value,
            None => panic!("waited {PAGE_TIMEOUT:?} for {what} on {}", self.url().await),
        }
    }

    /// Polls `probe` until it answers `Some`; panics, naming `what` and the
    /// page, after `PAGE_TIMEOUT`.
    pub async fn wait_for<T, F: Future<Output = Option<T>>>(
        &self,
        what: &str,
        probe: impl FnMut() -> F,
    ) -> T {
        match eventually(PAGE_TIMEOUT, probe).await {
            Some(value) => value,
            None => panic!("waited {PAGE_TIMEOUT:?} for {what} on {}", self.url().await),
        }
    }

    /// Resizes the window (the viewport follows: headless has no chrome).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// Presses and releases `key` (a character, or a WebDriver key code
    /// such as `Browser::TAB`), as a keyboard user does.
    pub async fn press_key(&self, key: &str) {
        let actions = json!({ "actions": [{
            "type": "key",
            "id": "keyboard",
            "actions": [
                { "type": "keyDown", "value": key },
                { "type": "keyUp", "value": key },
            ],
        }]});
        self.command("POST", "/actions", actions).await;
    }

    /// Presses Tab: focus moves to the next focusable element.
    pub async fn press_tab(&self) {
        self.press_key(Browser::TAB).await;
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        let source = self.command("GET", "/source", Value::Null).await;
        source.as_str().unwrap_or_default().to_owned()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 PNG"))
            .expect("the screenshot is base64")
    }

    /// Keeps a screenshot of the page as it is now among the last
    /// `VISITS_KEPT` visits, written out only if the test fails.
    pub async fn record_visit(&self) {
        let (url, png) = (self.url().await, self.screenshot().await);
        let number = {
            let mut count = self.visit_count.lock().expect("visit count");
            *count += 1;
            *count
        };
        let mut visits = self.visits.lock().expect("visits");
        if visits.len() == VISITS_KEPT {
            visits.pop_front();
        }
        visits.push_back(Visit { number, url, png });
    }

    fn elements(&self, found: Value) -> Vec<Element<'_>> {
        found
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| Element {
                        browser: self,
                        id: element_id(e),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One WebDriver command on the session; its `value`. Panics with the
    /// driver's error (and the page's URL when there is one).
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        match send(&self.http, method, &format!("{}{path}", self.session), body).await {
            Ok(value) => value,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    /// Writes the failure artifacts: the page now (PNG, HTML, URL), the
    /// kept visits, the driver's log. Best effort: the test already failed.
    async fn save_artifacts(&self, http: &reqwest::Client) {
        if let Err(e) = std::fs::create_dir_all(&self.artifacts) {
            eprintln!("cannot create {}: {e}", self.artifacts.display());
            return;
        }
        let dir = &self.artifacts;
        let base = &self.session;
        if let Ok(Value::String(png)) =
            send(http, "GET", &format!("{base}/screenshot"), Value::Null).await
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(png)
        {
            let _ = std::fs::write(dir.join("failure.png"), bytes);
        }
        if let Ok(Value::String(html)) =
            send(http, "GET", &format!("{base}/source"), Value::Null).await
        {
            let _ = std::fs::write(dir.join("failure.html"), html);
        }
        if let Ok(Value::String(url)) = send(http, "GET", &format!("{base}/url"), Value::Null).await
        {
            let _ = std::fs::write(dir.join("failure-url.txt"), format!("{url}\n"));
        }
        let visits = std::mem::take(&mut *self.visits.lock().unwrap_or_else(|e| e.into_inner()));
        let mut index = String::new();
        for visit in visits {
            let name = format!("visit-{:02}.png", visit.number);
            let _ = std::fs::write(dir.join(&name), &visit.png);
            index.push_str(&format!("{name} {}\n", visit.url));
        }
        let _ = std::fs::write(dir.join("visits.txt"), index);
        let _ = std::fs::copy(
            self.dir.path().join("chromedriver.log"),
            dir.join("chromedriver.log"),
        );
        eprintln!("browser artifacts: {}", dir.display());
    }
}

impl Drop for Browser {
    /// Saves the failure artifacts if the test is panicking, ends the
    /// session, then kills the driver and whatever it started. The async
    /// part runs on a thread and runtime of its own, with a client of its
    /// own: a `Drop` cannot await, and the test's runtime, which drives the
    /// pooled connections of `self.http`, is blocked in this drop.
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let this = &*self;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let Ok(http) = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(30))
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if panicking {
                        this.save_artifacts(&http).await;
                    }
                    let end = send(&http, "DELETE", &this.session, Value::Null);
                    let _ = tokio::time::timeout(Duration::from_secs(10), end).await;
                });
            });
        });
        kill_tree_below(self.driver.id() as i32);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    /// Clicks it (scrolled into view first, as a user would).
    pub async fn click(&self) {
        self.command("POST", "/click", json!({})).await;
    }

    /// Its rendered text (what a user reads), trimmed.
    pub async fn text(&self) -> String {
        let text = self.command("GET", "/text", Value::Null).await;
        text.as_str().unwrap_or_default().trim().to_owned()
    }

    /// An attribute's value, if set.
    pub async fn attr(&self, name: &str) -> Option<String> {
        let value = self
            .command("GET", &format!("/attribute/{name}"), Value::Null)
            .await;
        value.as_str().map(str::to_owned)
    }

    /// Clears the input and types `text` into it.
    pub async fn fill(&self, text: &str) {
        self.command("POST", "/clear", json!({})).await;
        self.command("POST", "/value", json!({ "text": text }))
            .await;
    }

    /// Submits its form (the element itself or the form it belongs to), as
    /// pressing Enter in it would.
    pub async fn submit(&self) {
        let js = "const e = arguments[0]; (e.form || e).requestSubmit();";
        self.browser.script(js, json!([self.reference()])).await;
    }

    /// The reference to pass this element to `Browser::script`.
    pub fn reference(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/element/{}{path}", self.id);
        self.browser.command(method, &path, body).await
    }
}

/// `value` of a WebDriver answer, or the driver's error as text.
async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Value,
) -> Result<Value, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = http.request(method.clone(), url);
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "{status}: {} ({})",
            value["error"].as_str().unwrap_or("?"),
            value["message"].as_str().unwrap_or("")
        ))
    }
}

/// Polls the driver's `/status` until it is ready; false if the driver
/// exits or does not answer within 30 s.
async fn driver_ready(
    http: &reqwest::Client,
    base: &str,
    driver: &mut std::process::Child,
) -> bool {
    let status = format!("{base}/status");
    let probe = || {
        let exited = matches!(driver.try_wait(), Ok(Some(_)));
        let status = status.clone();
        async move {
            if exited {
                return Some(false);
            }
            let ready = send(http, "GET", &status, Value::Null).await.ok()?;
            ready["ready"].as_bool().filter(|r| *r)
        }
    };
    eventually(Duration::from_secs(30), probe).await == Some(true)
}

/// Creates a session: headless `engine`, its profile under `dir`, a
/// `width` x `height` window; the session id.
async fn new_session(
    engine: Engine,
    http: &reqwest::Client,
    base: &str,
    dir: &Path,
    width: u32,
    height: u32,
) -> String {
    let capabilities = match engine {
        Engine::Chromium => chromium_capabilities(dir, width, height),
        Engine::Firefox => firefox_capabilities(),
    };
    let answer = send(http, "POST", &format!("{base}/session"), capabilities)
        .await
        .unwrap_or_else(|e| panic!("cannot start a {engine:?} session: {e}"));
    answer["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no sessionId in {answer}"))
        .to_owned()
}

/// Headless Chromium, its profile under `dir`, a `width` x `height` window.
fn chromium_capabilities(dir: &Path, width: u32, height: u32) -> Value {
    let profile = dir.join("profile");
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-quic".to_owned(),
        // The console is on loopback: no proxy from the environment.
        "--no-proxy-server".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
    ];
    json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "pageLoadStrategy": "normal",
        "goog:chromeOptions": {
            "binary": env_or("TEST_CHROMIUM", CHROMIUM),
            "args": args,
        },
    }}})
}

/// Headless Firefox on a fresh profile (geckodriver makes one), kept off
/// the network: no proxy (the console is on loopback), no updates,
/// telemetry, safe-browsing lists or captive-portal probes, which this
/// closed machine would refuse one by one.
fn firefox_capabilities() -> Value {
    json!({ "capabilities": { "alwaysMatch": {
        "browserName": "firefox",
        "pageLoadStrategy": "normal",
        "moz:firefoxOptions": {
            "binary": env_or("TEST_FIREFOX", FIREFOX),
            "args": ["-headless"],
            "prefs": {
                "network.proxy.type": 0,
                "app.update.auto": false,
                "app.update.enabled": false,
                "browser.shell.checkDefaultBrowser": false,
                "browser.safebrowsing.malware.enabled": false,
                "browser.safebrowsing.phishing.enabled": false,
                "browser.safebrowsing.downloads.enabled": false,
                "datareporting.policy.dataSubmissionEnabled": false,
                "toolkit.telemetry.enabled": false,
                "network.captive-portal-service.enabled": false,
                "network.connectivity-service.enabled": false,
                "extensions.update.enabled": false,
                "browser.newtabpage.enabled": false,
            },
        },
    }}})
}

fn element_id(reference: &Value) -> String {
    reference[ELEMENT_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("not an element reference: {reference}"))
        .to_owned()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `$INFRA_TEST_ARTIFACTS/console/<test>/`, by default under the build's
/// `target/test-artifacts/`; `<test>` is the test function's name (the
/// test thread's name without its module path).
pub fn artifacts_dir() -> PathBuf {
    let root = std::env::var_os("INFRA_TEST_ARTIFACTS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // CARGO_TARGET_TMPDIR is <target>/tmp, wherever the target is.
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("the target dir")
                .join("test-artifacts")
        });
    let thread = std::thread::current();
    let test = thread
        .name()
        .and_then(|n| n.rsplit("::").next())
        .unwrap_or("unnamed");
    root.join("console").join(test)
}
