//! `TestConsole`: the real `infra-service console` binary, started with a
//! TOML config made for one test (its Redis key prefix, the test's
//! database, `console.listen = 127.0.0.1:0`), its output captured in a file;
//! the bound address is read from its "console listening" log line.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::db::TestDb;
use super::poll::eventually;
use super::redis::TestRedis;
use super::worker::{START_TIMEOUT, infra_service, render_toml, tail};

/// A running console process; killed on drop.
pub struct TestConsole {
    child: Option<Child>,
    dir: tempfile::TempDir,
    url: String,
}

impl TestConsole {
    /// Starts `infra-service console` on the test's Redis prefix and
    /// `db_url`, with `settings` (`section.key`, value) over the defaults
    /// (`console.listen = 127.0.0.1:0`, JSON logs); waits until it listens.
    pub async fn start(redis: &TestRedis, db_url: &str, settings: &[(&str, Value)]) -> TestConsole {
        TestConsole::start_with_env(redis, db_url, settings, &[]).await
    }

    /// A console that wants a login: `console.token_ref` names an `env:`
    /// variable holding a fresh random token; the console and the token.
    pub async fn with_token(redis: &TestRedis, db_url: &str) -> (TestConsole, String) {
        let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
        let console = TestConsole::start_with_env(
            redis,
            db_url,
            &[(
                "console.token_ref",
                Value::from("env:CONSOLE_TOKEN_FOR_TEST"),
            )],
            &[("CONSOLE_TOKEN_FOR_TEST", &token)],
        )
        .await;
        (console, token)
    }

    /// As [`TestConsole::start`], with environment variables for the
    /// process (e.g. the one an `env:` `console.token_ref` names).
    pub async fn start_with_env(
        redis: &TestRedis,
        db_url: &str,
        settings: &[(&str, Value)],
        env: &[(&str, &str)],
    ) -> TestConsole {
        let (dir, mut child) = spawn(redis, db_url, settings, env);
        let log = dir.path().join("console.log");
        let read_logs =
            || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let mut exited = None;
        let found = eventually(START_TIMEOUT, || {
            let listen = listen_address(&read_logs());
            if listen.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            let answer = match (&listen, exited) {
                (Some(listen), _) => Some(Some(listen.clone())),
                (None, Some(_)) => Some(None),
                (None, None) => None,
            };
            async move { answer }
        })
        .await;
        let Some(Some(listen)) = found else {
            panic!(
                "the console did not log \"console listening\" (exit: {exited:?}); logs:\n{}",
                tail(&read_logs(), 60)
            );
        };
        TestConsole {
            child: Some(child),
            dir,
            url: format!("http://{listen}"),
        }
    }

    /// Runs `infra-service console` expecting it to refuse to start: its
    /// exit status and everything it printed. Panics if it is still
    /// running after a while.
    pub async fn refused(
        redis: &TestRedis,
        db_url: &str,
        settings: &[(&str, Value)],
    ) -> (ExitStatus, String) {
        let (dir, mut child) = spawn(redis, db_url, settings, &[]);
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("the console should have exited")
            .expect("wait for the console");
        let logs = std::fs::read(dir.path().join("console.log")).unwrap_or_default();
        (status, String::from_utf8_lossy(&logs).into_owned())
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything the console printed so far.
    pub fn logs(&self) -> String {
        let raw = std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// The JSON log lines whose `message` is `message`, oldest first.
    pub fn log_entries(&self, message: &str) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["message"] == message)
            .collect()
    }

    /// Stops the console (SIGKILL) and waits for it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for TestConsole {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- console logs ---\n{}", tail(&self.logs(), 80));
        }
    }
}

/// Writes the config and starts the process, output into `console.log`.
fn spawn(
    redis: &TestRedis,
    db_url: &str,
    settings: &[(&str, Value)],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Child) {
    let dir = tempfile::Builder::new()
        .prefix("infra-testconsole-")
        .tempdir()
        .expect("console temp dir");
    let mut all: BTreeMap<String, Value> = BTreeMap::new();
    all.insert("redis.url".into(), redis.url().into());
    all.insert("redis.key_prefix".into(), redis.prefix().into());
    all.insert("postgres.url".into(), db_url.into());
    all.insert("console.listen".into(), "127.0.0.1:0".into());
    all.insert("log.format".into(), "json".into());
    all.insert("log.level".into(), "info".into());
    all.insert(
        "secrets.dir".into(),
        dir.path().join("secrets").to_string_lossy().into(),
    );
    all.insert(
        "heartbeat.path".into(),
        dir.path().join("heartbeat").to_string_lossy().into(),
    );
    for (key, value) in settings {
        assert!(key.contains('.'), "config keys are section.key, not {key}");
        all.insert((*key).to_owned(), value.clone());
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, render_toml(&all)).expect("write console config");
    let log = std::fs::File::create(dir.path().join("console.log")).expect("console log");
    let mut command = Command::from(infra_service());
    command
        .arg("console")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().expect("spawn infra-service console");
    (dir, child)
}

/// The `listen` field of the first "console listening" JSON line.
fn listen_address(logs: &str) -> Option<String> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["message"] == "console listening")
        .and_then(|entry| entry["listen"].as_str().map(str::to_owned))
}

/// Registers a server (address 10.0.0.5) through the CLI, as an operator
/// does.
pub async fn add_server(db: &TestDb, handle: &str) {
    db.servers_cli(&[
        "add",
        handle,
        "--address",
        "10.0.0.5",
        "--key-ref",
        "file:ssh/none",
    ])
    .await;
}

/// Adds a dead letter to `infra:dead` under the test's prefix, field for
/// field as `Queue::finish` writes one (from the deploy queue); its id.
pub async fn add_dead_letter(
    redis: &TestRedis,
    reason: &str,
    request_id: &str,
    payload: &str,
) -> String {
    use redis::AsyncCommands;
    let queue = redis.queue();
    let mut conn = redis.connection();
    conn.xadd(
        queue.key("infra:dead"),
        "*",
        &[
            ("reason", reason),
            ("stream", queue.key("ansible:deploy:queue").as_str()),
            ("entry_id", "1-0"),
            ("request_id", request_id),
            ("worker", "w-1"),
            ("dead_at", "2026-01-01T00:00:00.000Z"),
            ("payload", payload),
        ],
    )
    .await
    .expect("XADD dead letter")
}
