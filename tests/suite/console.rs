//! The operator console in a real browser (headless Chromium over
//! WebDriver; the plain-HTTP checks are `console_http`): a deploy shows on
//! Jobs and its page follows its progress live to the result; a dead letter
//! replays through its confirmation page; a read-only console shows and
//! accepts no action; a token console wants a login; every page is usable
//! at 1280 px and at 375 px, by keyboard, with labelled inputs and
//! readable contrast. Tests select only on what `console-design.md`
//! specifies (ids, `data-*` attributes, routes). A failing test leaves
//! screenshots under `target/test-artifacts/console/<test>/`.

use std::time::Duration;

use infra_service::job::JobStatus;
use serde_json::json;

use crate::helpers::*;

const DEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The nav links every page has.
const NAV: [&str; 4] = ["nav-overview", "nav-jobs", "nav-dead", "nav-servers"];

/// `[name="value"]`, the value quoted for CSS.
fn attr(name: &str, value: &str) -> String {
    format!("[{name}={}]", json!(value))
}

/// The entry ids of `infra:dead`, oldest first.
async fn dead_ids(queue: &Queue) -> Vec<String> {
    let entries = queue.stream_entries("infra:dead").await;
    entries.into_iter().map(|(id, _)| id).collect()
}

/// The page as a phone shows it: nothing wider than the viewport (tables
/// scroll inside their wrapper), and every nav link on screen.
async fn assert_fits_the_viewport(browser: &Browser, page: &str) {
    let js = "const doc = document.documentElement;\
              return {scroll: doc.scrollWidth, inner: window.innerWidth};";
    let widths = browser.script(js, json!([])).await;
    assert!(
        widths["scroll"].as_f64() <= widths["inner"].as_f64(),
        "{page} scrolls sideways at {widths}"
    );
    let js = "return arguments[0].map(id => {\
                const r = document.getElementById(id).getBoundingClientRect();\
                return {id, ok: r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= window.innerWidth};\
              }).filter(l => !l.ok).map(l => l.id);";
    let hidden = browser.script(js, json!([NAV])).await;
    assert_eq!(hidden, json!([]), "{page}: nav links off screen");
}

/// Every form control a user fills has a label (or an accessible name);
/// every table a caption and column headings with `scope="col"`.
async fn assert_labelled(browser: &Browser, page: &str) {
    let js = "return Array.from(document.querySelectorAll('input, select, textarea'))\
                .filter(e => e.type !== 'hidden')\
                .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')\
                             && !e.getAttribute('aria-labelledby'))\
                .map(e => e.outerHTML);";
    let unlabelled = browser.script(js, json!([])).await;
    assert_eq!(unlabelled, json!([]), "{page}: inputs without a label");
    let js = "return Array.from(document.querySelectorAll('table'))\
                .filter(t => !t.caption || t.caption.textContent.trim() === ''\
                             || Array.from(t.querySelectorAll('thead th'))\
                                  .some(th => th.getAttribute('scope') !== 'col'))\
                .map(t => t.id || t.outerHTML.slice(0, 80));";
    let bare = browser.script(js, json!([])).await;
    assert_eq!(
        bare,
        json!([]),
        "{page}: tables without caption or scoped headings"
    );
    let lang = browser
        .script("return document.documentElement.lang;", json!([]))
        .await;
    assert_eq!(lang, "en", "{page}");
}

/// Text contrast of at least 4.5:1 (3:1 for large text) against the
/// background it is drawn on, for every visible HTML element with text of
/// its own (WCAG 2 relative luminance).
async fn assert_readable_contrast(browser: &Browser, page: &str) {
    let js = r#"
        const parse = c => { const m = c.match(/[\d.]+/g) || [0, 0, 0, 0];
            return [+m[0], +m[1], +m[2], m.length > 3 ? +m[3] : 1]; };
        const lum = ([r, g, b]) => { const f = v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        const over = (top, under) => top.slice(0, 3).map((v, i) => v * top[3] + under[i] * (1 - top[3]));
        const background = el => { const layers = [];
            for (let e = el; e; e = e.parentElement) {
                const c = parse(getComputedStyle(e).backgroundColor);
                if (c[3] > 0) layers.push(c);
                if (c[3] === 1) break; }
            return layers.reverse().reduce((acc, c) => over(c, acc), [255, 255, 255]); };
        const failures = [];
        for (const el of document.body.querySelectorAll('*')) {
            if (el.namespaceURI !== 'http://www.w3.org/1999/xhtml') continue;
            const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
            const r = el.getBoundingClientRect();
            const style = getComputedStyle(el);
            if (!own || r.width === 0 || r.height === 0 || style.visibility === 'hidden') continue;
            const bg = background(el);
            const fg = over(parse(style.color), bg);
            const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
            const ratio = (hi + 0.05) / (lo + 0.05);
            const size = parseFloat(style.fontSize), bold = +style.fontWeight >= 700;
            const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
            if (ratio < need) failures.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}:1`);
        }
        return failures;"#;
    let failures = browser.script(js, json!([])).await;
    assert_eq!(
        failures,
        json!([]),
        "{page}: text below the contrast minimum"
    );
}

/// From a fresh load, Tab reaches the skip link first, then every nav
/// link, each with a visible focus indicator; Enter on the skip link moves
/// to `#main`.
async fn assert_keyboard_reachable(browser: &Browser, url: &str) {
    browser.goto(url).await;
    let focused = "const e = document.activeElement; const s = getComputedStyle(e);\
                   const ring = (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0)\
                                || s.boxShadow !== 'none';\
                   return {id: e.id, href: e.getAttribute('href'), tag: e.tagName,\
                           visible: e.matches(':focus-visible') && ring};";
    browser.press_tab().await;
    let first = browser.script(focused, json!([])).await;
    assert_eq!(
        first["href"], "#main",
        "{url}: the first Tab stop is {first}"
    );
    assert_eq!(first["visible"], true, "{url}: no visible focus on {first}");
    let mut reached = Vec::new();
    for _ in 0..20 {
        browser.press_tab().await;
        let now = browser.script(focused, json!([])).await;
        assert_eq!(now["visible"], true, "{url}: no visible focus on {now}");
        if let Some(id) = now["id"].as_str().filter(|id| NAV.contains(id)) {
            reached.push(id.to_owned());
        }
        if reached.len() == NAV.len() {
            break;
        }
    }
    assert_eq!(reached, NAV, "{url}: Tab order of the nav");
    // Back to the skip link (a fresh load), and through it.
    browser.goto(url).await;
    browser.press_tab().await;
    browser.press_key(Browser::ENTER).await;
    let js = "return location.hash === '#main' && document.activeElement.id === 'main';";
    browser
        .wait_js("focus on #main after the skip link", js)
        .await;
}

#[tokio::test]
async fn a_deploy_shows_on_jobs_and_its_page_follows_its_progress_live_to_success() {
    a_deploy_followed_live_in(Engine::Chromium).await;
}

/// The same in Firefox (headless Firefox ESR through geckodriver).
#[tokio::test]
async fn firefox_follows_a_deploy_live_to_success_too() {
    a_deploy_followed_live_in(Engine::Firefox).await;
}

/// A deploy on /jobs, opened, its events appended live, its final status
/// shown without a reload by the test, and its page at a phone's width.
async fn a_deploy_followed_live_in(engine: Engine) {
    // Arrange: a worker holding its deploy open until released, and a
    // console on the same Redis prefix and database.
    let db = TestDb::new().await;
    let world = World::start(TestHost::start().await, TestRedis::new().await, |w| {
        w.deploy_playbook("deploy_sleep.yml")
            .concurrency(1)
            .postgres_url(db.url())
    })
    .await;
    world
        .worker
        .wait_log("worker started", 1, START_TIMEOUT)
        .await;
    let console = TestConsole::start(
        &world.redis,
        db.url(),
        &[("console.allow_actions", json!(true))],
    )
    .await;
    let browser = Browser::start_in(engine, 1280, 800).await;
    let request_id = unique_request_id("live");
    let payload = valid_deploy_payload(&request_id, "127.0.0.1", 8080);

    // Act: enqueue; once its first task ran, find it on Jobs.
    world.queue.enqueue_deploy(&payload).await;
    let started = wait_sleepers_started(
        &world.host,
        std::slice::from_ref(&request_id),
        START_TIMEOUT,
    )
    .await;
    assert!(started, "the deploy did not start");
    let row = format!("#jobs tr{}", attr("data-request-id", &request_id));
    browser
        .wait_for("the job on /jobs", || async {
            browser.goto(&format!("{}/jobs", console.url())).await;
            browser.try_find(&row).await.map(|_| ())
        })
        .await;

    // Assert: listed as running, with a link to its page.
    let status = browser.find(&format!("{row} [data-col=\"status\"]")).await;
    assert_eq!(status.text().await, "running");
    browser.find(&format!("{row} a")).await.click().await;
    let job_path = format!("/jobs/deploy/{request_id}");
    browser.wait_path(&job_path).await;
    assert_eq!(browser.find("#job-status").await.text().await, "running");

    // Act: watch the list (a count kept in sessionStorage survives the
    // page's reload at the end), then let the playbook finish.
    let at_open = browser.count("#events li").await;
    let watch = "sessionStorage.setItem('appended', '0');\
                 new MutationObserver(records => {\
                   const added = records.flatMap(r => Array.from(r.addedNodes))\
                                        .filter(n => n.nodeName === 'LI').length;\
                   const before = Number(sessionStorage.getItem('appended'));\
                   sessionStorage.setItem('appended', String(before + added));\
                 }).observe(document.getElementById('events'), {childList: true});";
    browser.script(watch, json!([])).await;
    release_sleepers(&world.host);

    // Assert: events arrive while the page is open, then the final status
    // shows without a reload by the test.
    browser
        .wait_js(
            "progress events appended live",
            "return Number(sessionStorage.getItem('appended')) > 0;",
        )
        .await;
    browser
        .wait_js(
            "#job-status: success",
            "const s = document.getElementById('job-status');\
             return s && s.textContent.trim() === 'success';",
        )
        .await;
    browser.record_visit().await;
    let result = world
        .worker
        .wait_deploy_result(&world.queue, &request_id)
        .await;
    assert_eq!(result.status, JobStatus::Success, "{result:?}");
    assert!(browser.url().await.ends_with(&job_path));
    let events = browser
        .script(
            "return Array.from(document.querySelectorAll('#events li'))\
                    .map(li => [Number(li.dataset.seq), li.dataset.event]);",
            json!([]),
        )
        .await;
    let events = events.as_array().expect("a list").clone();
    assert!(events.len() > at_open, "{at_open} at open, now {events:?}");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e[0].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events out of order or twice: {events:?}"
    );
    assert!(events.iter().any(|e| e[1] == "runner_on_ok"), "{events:?}");
    assert!(
        browser
            .find("#result")
            .await
            .text()
            .await
            .contains(&request_id),
        "#result does not name the job"
    );

    // Assert: the job page on a phone's width.
    let phone = engine.narrowest_width();
    browser.set_window_size(phone, 812).await;
    browser
        .wait_js(
            &format!("a {phone} px viewport"),
            &format!("return window.innerWidth <= {phone};"),
        )
        .await;
    assert_fits_the_viewport(&browser, &job_path).await;
    assert_labelled(&browser, &job_path).await;
}

#[tokio::test]
async fn a_bad_payload_shows_in_dead_letters_and_its_replay_puts_it_back_on_its_queue() {
    // Arrange: a worker dead-letters a payload (valid but for its port),
    // then stops, so the replayed entry stays on the queue to be seen.
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let queue = redis.queue();
    let request_id = unique_request_id("dead");
    let payload = valid_deploy_payload(&request_id, "203.0.113.10", 0).to_string();
    let worker = TestWorker::builder(&redis)
        .postgres_url(db.url())
        .spawn()
        .await;
    let original = queue.enqueue_raw(&payload).await;
    let letters = queue.wait_dead_letters(1, DEAD_TIMEOUT).await;
    assert_eq!(letters.len(), 1, "no dead letter; logs:\n{}", worker.logs());
    worker.sigterm();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
    let dead_id = dead_ids(&queue).await.remove(0);
    let console =
        TestConsole::start(&redis, db.url(), &[("console.allow_actions", json!(true))]).await;
    let browser = Browser::start(1280, 800).await;

    // Act: find it on Dead letters.
    browser.goto(&format!("{}/dead", console.url())).await;
    let row = format!("#dead tr{}", attr("data-entry-id", &dead_id));
    let text = browser.find(&row).await.text().await;

    // Assert: its reason and request id are shown.
    assert!(text.contains("port"), "{text}");
    assert!(text.contains(&request_id), "{text}");

    // Act: replay it through its confirmation page.
    browser
        .find(&format!("{row} [data-action=\"replay\"]"))
        .await
        .click()
        .await;
    browser.wait_path(&format!("/dead/{dead_id}/replay")).await;
    let confirm = browser.find("#main").await.text().await;
    assert!(confirm.contains(&dead_id), "{confirm}");
    assert!(
        browser
            .find("form input[name=\"csrf\"]")
            .await
            .attr("type")
            .await
            .as_deref()
            == Some("hidden")
    );
    browser.find("#confirm").await.click().await;
    browser.wait_path("/dead").await;

    // Assert: the flash, the letter gone, and the exact payload back on
    // its queue as a new entry.
    let flash = browser.find("#flash").await.text().await;
    assert!(flash.contains("replayed"), "{flash}");
    assert!(browser.try_find(&row).await.is_none(), "{row} still listed");
    assert!(dead_ids(&queue).await.is_empty());
    let entries = queue.stream_entries("ansible:deploy:queue").await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (replayed_id, fields) = &entries[1];
    assert_ne!(replayed_id, &original);
    assert_eq!(fields.get("payload"), Some(&payload));
    assert!(flash.contains(replayed_id.as_str()), "{flash}");
    let actions = console.log_entries("console action");
    assert_eq!(actions.len(), 1, "{}", console.logs());
}

#[tokio::test]
async fn a_read_only_console_shows_no_action_and_refuses_posts_from_its_pages() {
    // Arrange: something to act on, a console with actions off.
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let queue = redis.queue();
    let dead_id = add_dead_letter(
        &redis,
        "port: must be 1-65535",
        "ro-1",
        "{\"request_id\":\"ro-1\"}",
    )
    .await;
    add_server(&db, "vps-ro").await;
    let console = TestConsole::start(&redis, db.url(), &[]).await;
    let browser = Browser::start(1280, 800).await;

    // Assert: no page offers an action.
    for path in ["/", "/jobs", "/dead", "/servers"] {
        browser.goto(&format!("{}{path}", console.url())).await;
        assert_eq!(browser.count("[data-action]").await, 0, "{path}");
        assert_eq!(browser.count("form[method=\"post\"]").await, 0, "{path}");
    }
    browser.goto(&format!("{}/dead", console.url())).await;
    browser
        .find(&format!("#dead tr{}", attr("data-entry-id", &dead_id)))
        .await;

    // Act: POST from the page's own context (its cookies, its origin), and
    // straight over HTTP.
    let post = "const [path, done] = [arguments[0], arguments[arguments.length - 1]];\
                fetch(path, {method: 'POST', body: new URLSearchParams({csrf: 'x'})})\
                  .then(r => r.text().then(body => done({status: r.status, body})))\
                  .catch(e => done({status: 0, body: String(e)}));";
    let mut refused = Vec::new();
    for path in [
        format!("/dead/{dead_id}/replay"),
        "/servers/vps-ro/reset-host-key".to_owned(),
    ] {
        let from_page = browser.script_async(post, json!([path])).await;
        let direct = reqwest::Client::new()
            .post(format!("{}{path}", console.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("csrf=x")
            .send()
            .await
            .expect("POST to the console");
        refused.push((path, from_page, direct.status().as_u16()));
    }

    // Assert: every POST answered 403 with the read-only page; nothing moved.
    for (path, from_page, direct) in &refused {
        assert_eq!(from_page["status"], 403, "{path}: {from_page}");
        let body = from_page["body"].as_str().unwrap_or_default();
        assert!(
            body.contains("read-only: console.allow_actions is false"),
            "{path}: {body}"
        );
        assert_eq!(*direct, 403, "{path}");
    }
    assert_eq!(dead_ids(&queue).await, vec![dead_id]);
    assert!(
        queue
            .stream_entries("ansible:deploy:queue")
            .await
            .is_empty()
    );
    assert!(console.log_entries("console action").is_empty());
}

#[tokio::test]
async fn a_console_with_a_token_wants_a_login_and_refuses_a_wrong_token() {
    // Arrange
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let (console, token) = TestConsole::with_token(&redis, db.url()).await;
    let browser = Browser::start(1280, 800).await;

    // Act: any page leads to the login form.
    browser.goto(&format!("{}/jobs", console.url())).await;
    browser.wait_path("/login").await;

    // Assert: a labelled token field.
    browser.find("#login-form").await;
    assert_labelled(&browser, "/login").await;
    let label = browser.find("label[for=\"token\"]").await.text().await;
    assert!(!label.is_empty(), "the token's label is empty");

    // Act: a wrong token.
    browser.find("#token").await.fill("not-the-token").await;
    browser.find("#token").await.submit().await;
    browser
        .wait_js(
            "the login error",
            "return document.getElementById('login-error');",
        )
        .await;
    browser.record_visit().await;
    assert!(
        browser.try_find("#queues").await.is_none(),
        "a wrong token got in"
    );

    // Act: the right one.
    browser.find("#token").await.fill(&token).await;
    browser.find("#token").await.submit().await;
    browser.wait_path("/").await;

    // Assert: Overview, and the session cookie is out of the page's reach
    // (HttpOnly) and not the token.
    assert_eq!(browser.find("h1").await.text().await, "Overview");
    browser.find("#queues").await;
    let cookies = browser.script("return document.cookie;", json!([])).await;
    assert!(
        !cookies.as_str().unwrap_or_default().contains(&token),
        "{cookies}"
    );
    assert!(!browser.source().await.contains(&token));
    browser.find("#nav-jobs").await.click().await;
    browser.wait_path("/jobs").await;
    browser.find("#jobs").await;
}

#[tokio::test]
async fn every_page_is_usable_at_1280_and_375_pixels_by_keyboard_with_labels() {
    every_page_is_usable_in(Engine::Chromium).await;
}

#[tokio::test]
async fn every_page_is_usable_in_firefox_too() {
    every_page_is_usable_in(Engine::Firefox).await;
}

/// Each page at 1280 and 375 px (Firefox: its narrowest window, 500 px):
/// fits, labelled, readable; the keyboard
/// reaches the skip link and the nav.
async fn every_page_is_usable_in(engine: Engine) {
    // Arrange: a letter with a long payload (a wide table), a server, a
    // console with actions (so its confirmation page exists).
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let long = format!(
        "{{\"request_id\":\"wide-1\",\"note\":\"{}\"}}",
        "x".repeat(250)
    );
    let dead_id = add_dead_letter(&redis, "port: must be 1-65535", "wide-1", &long).await;
    add_server(&db, "vps-wide-handle-for-a-narrow-screen").await;
    let console =
        TestConsole::start(&redis, db.url(), &[("console.allow_actions", json!(true))]).await;
    let pages = [
        "/".to_owned(),
        "/jobs".to_owned(),
        "/dead".to_owned(),
        "/servers".to_owned(),
        format!("/dead/{dead_id}/replay"),
    ];
    let browser = Browser::start_in(engine, 1280, 800).await;

    // Act / Assert: each page at 1280 px, then at a phone's width.
    for (width, height) in [(1280, 800), (engine.narrowest_width(), 812)] {
        browser.set_window_size(width, height).await;
        let js = format!("return window.innerWidth <= {width};");
        browser
            .wait_js(&format!("a {width} px viewport"), &js)
            .await;
        for path in &pages {
            let page = format!("{path} at {width} px");
            browser.goto(&format!("{}{path}", console.url())).await;
            browser.find("main#main h1").await;
            assert_fits_the_viewport(&browser, &page).await;
            assert_labelled(&browser, &page).await;
            assert_readable_contrast(&browser, &page).await;
        }
    }

    // Assert: the keyboard reaches the skip link and the nav on each page.
    browser.set_window_size(1280, 800).await;
    for path in &pages {
        assert_keyboard_reachable(&browser, &format!("{}{path}", console.url())).await;
    }
}

#[tokio::test]
async fn check_config_refuses_a_console_off_loopback_without_a_token() {
    // Arrange: a config whose console listens on every address, no token.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("infra.toml");
    std::fs::write(
        &config,
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\n\
         [postgres]\nurl = \"postgres://postgres@127.0.0.1/test\"\n\
         [console]\nlisten = \"192.0.2.10:9188\"\n",
    )
    .expect("write config");

    // Act
    let out = infra_service()
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run check-config");

    // Assert: exit 1, naming the key to set (`console_http` checks that
    // `console` itself refuses to start).
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("console.token_ref"), "{text}");
}
