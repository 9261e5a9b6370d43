//! `TestWorker`: the real `infra-service worker` binary, started with a TOML
//! config made unique for one test (its key prefix, its secrets dir, its
//! sshd), its stdout and stderr captured in a file the test can read.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use infra_service::job::JobResult;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::db::TestDb;
use super::host::TestHost;
use super::playbooks::fixtures_dir;
use super::poll::eventually;
use super::procs::kill_tree_below;
use super::redis::{Queue, TestRedis};

/// Env var the default payload's `github_token_ref` (`env:...`) names.
pub const GITHUB_TOKEN_VAR: &str = "GITHUB_TOKEN_FOR_TEST";
/// Env var the default payload's `secrets_ref` (`env:...`) names.
pub const PROJECT_ENV_VAR: &str = "PROJECT_ENV_FOR_TEST";
/// The client key's reference, under the worker's own secrets dir.
pub const SSH_KEY_REF: &str = "file:ssh/id_ed25519";
/// How long a test waits for a job's result: a failure guard only (a real
/// playbook takes seconds), so generous for a loaded machine.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a test waits for a job to start or a worker to log a line: a
/// failure guard only, so generous for a loaded machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running worker process; killed (with what it spawned) on drop.
pub struct TestWorker {
    child: Mutex<Child>,
    pid: u32,
    dir: tempfile::TempDir,
    /// The worker's `TMPDIR`, where its runs make their private directories:
    /// removed with the test even when the worker was SIGKILLed mid-run (a
    /// killed worker cannot remove its runs' keys itself).
    _tmp: tempfile::TempDir,
    env: BTreeMap<String, String>,
    /// The worker's own database when the test gave none; dropped after the
    /// worker is killed.
    _db: Option<TestDb>,
}

/// Settings and environment for one `TestWorker`; every key can be overridden.
pub struct TestWorkerBuilder {
    /// `section.key` -> value, rendered as TOML.
    settings: BTreeMap<String, Value>,
    env: BTreeMap<String, String>,
    secret_files: Vec<(PathBuf, Vec<u8>)>,
}

impl TestWorker {
    /// Defaults for a test: the test's Redis prefix, the fixture Ansible
    /// dir with `deploy_digest.yml`, concurrency 4, JSON logs at debug, and
    /// random values for `GITHUB_TOKEN_FOR_TEST` and `PROJECT_ENV_FOR_TEST`.
    pub fn builder(redis: &TestRedis) -> TestWorkerBuilder {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let mut b = TestWorkerBuilder {
            settings: BTreeMap::new(),
            env: BTreeMap::new(),
            secret_files: Vec::new(),
        };
        b = b
            .set("redis.url", redis.url())
            .set("redis.key_prefix", redis.prefix())
            .set("redis.block_ms", 500)
            .set("worker.concurrency", 4)
            .set("worker.job_timeout_secs", 300)
            // An unreachable host gives up in well under a second.
            .set("ssh.retry_base_ms", 50)
            .set("ssh.retry_max_ms", 400)
            .set("ssh.connect_timeout_secs", 5)
            .set("worker.kill_grace_secs", 2)
            .set("ansible.dir", fixtures_dir().to_string_lossy())
            .set("ansible.playbook_bin", ansible_playbook_bin())
            .set("ansible.deploy_playbook", "deploy_digest.yml")
            .set("log.format", "json")
            .set("log.level", "info,infra_service=debug")
            .env(GITHUB_TOKEN_VAR, format!("ghp_test{tag}"))
            .env(
                PROJECT_ENV_VAR,
                format!("APP_ENV=test\nAPP_SECRET=s{tag}\n"),
            );
        b
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The value the worker was given for an environment variable.
    pub fn env_value(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("worker env has no {name}"))
    }

    /// The `GITHUB_TOKEN_FOR_TEST` value: what the playbook should see as
    /// `GITHUB_TOKEN`.
    pub fn github_token(&self) -> &str {
        self.env_value(GITHUB_TOKEN_VAR)
    }

    /// The config file the worker was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Everything the worker printed on stdout and stderr so far.
    pub fn logs(&self) -> String {
        let raw = std::fs::read(self.dir.path().join("worker.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Sends SIGTERM (a clean stop).
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL: the worker dies without a word.
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, signal);
        }
    }

    /// Waits for the process to exit; panics (with its logs) after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.lock().await;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.expect("wait for worker"),
            Err(_) => panic!(
                "worker still running after {timeout:?}; logs:\n{}",
                self.logs()
            ),
        }
    }

    /// `None` while running, else its exit status.
    pub async fn try_exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().await.try_wait().expect("try_wait worker")
    }

    /// Panics (with the logs) if the worker has exited.
    pub async fn assert_running(&self) {
        if let Some(status) = self.try_exit_status().await {
            panic!("worker exited with {status}; logs:\n{}", self.logs());
        }
    }

    /// Waits for `request_id`'s deploy result (`deploy:result:<id>`), the
    /// one way tests wait for a deploy, parsed as `Queue::deploy_result`
    /// parses; panics early, with the logs, if the worker dies, and after
    /// `RESULT_TIMEOUT`.
    pub async fn wait_deploy_result(&self, queue: &Queue, request_id: &str) -> JobResult {
        self.wait_result(request_id, move || queue.deploy_result(request_id))
            .await
    }

    /// Waits for `request_id`'s provision result
    /// (`provisioner:result:<id>`), as `wait_deploy_result` does.
    pub async fn wait_provision_result(&self, queue: &Queue, request_id: &str) -> JobResult {
        self.wait_result(request_id, move || queue.provision_result(request_id))
            .await
    }

    async fn wait_result<F: Future<Output = Option<JobResult>>>(
        &self,
        request_id: &str,
        fetch: impl Fn() -> F,
    ) -> JobResult {
        let fetch = &fetch;
        let probe = move || async move {
            let result = fetch().await;
            if result.is_none() {
                self.assert_running().await;
            }
            result
        };
        eventually(RESULT_TIMEOUT, probe).await.unwrap_or_else(|| {
            panic!(
                "no result for {request_id} within {RESULT_TIMEOUT:?}; worker logs:\n{}",
                tail(&self.logs(), 60)
            )
        })
    }

    /// The worker's JSON log lines whose `message` is `message`, oldest
    /// first (lines that are not JSON are skipped).
    pub fn log_entries(&self, message: &str) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["message"] == message)
            .collect()
    }

    /// Waits until the worker has logged `message` at least `count` times
    /// and returns those lines; panics, with the logs, if the worker exits
    /// first or `timeout` passes.
    pub async fn wait_log(&self, message: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let probe = move || async move {
            let entries = self.log_entries(message);
            if entries.len() >= count {
                return Some(entries);
            }
            self.assert_running().await;
            None
        };
        eventually(timeout, probe).await.unwrap_or_else(|| {
            panic!(
                "the worker did not log {message:?} {count} time(s) within {timeout:?}; logs:\n{}",
                tail(&self.logs(), 60)
            )
        })
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- worker {} logs (last 80 lines) ---\n{}",
                self.pid,
                tail(&self.logs(), 80)
            );
        }
        // kill_on_drop SIGKILLs the worker only; its playbook children would
        // be orphaned and run on, so take them down first.
        kill_tree_below(self.pid as i32);
    }
}

impl TestWorkerBuilder {
    /// Sets any config key, `section.key`, e.g. `set("worker.concurrency", 8)`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        assert!(key.contains('.'), "config keys are section.key, not {key}");
        self.settings.insert(key.to_owned(), value.into());
        self
    }

    /// Points SSH at `host`: `ansible.ssh_port`, `ansible.ssh_user`, and its
    /// client key at `file:ssh/id_ed25519` in the worker's secrets dir.
    pub fn target(self, host: &TestHost) -> Self {
        self.set("ansible.ssh_port", host.port())
            .set("ansible.ssh_user", host.user())
            .set("ansible.ssh_key_ref", SSH_KEY_REF)
            .secret_file("ssh/id_ed25519", host.client_private_key_pem())
    }

    /// `worker.concurrency`.
    pub fn concurrency(self, n: usize) -> Self {
        self.set("worker.concurrency", n)
    }

    /// `ansible.deploy_playbook`: a fixture name or an absolute path.
    pub fn deploy_playbook(self, playbook: &str) -> Self {
        self.set("ansible.deploy_playbook", playbook)
    }

    /// `redis.consumer`.
    pub fn consumer(self, name: &str) -> Self {
        self.set("redis.consumer", name)
    }

    /// `postgres.url`.
    pub fn postgres_url(self, url: &str) -> Self {
        self.set("postgres.url", url)
    }

    /// An environment variable of the worker process.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.insert(name.to_owned(), value.into());
        self
    }

    /// A file under the worker's `secrets.dir` (for `file:` references).
    pub fn secret_file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.secret_files
            .push((PathBuf::from(name), contents.into()));
        self
    }

    /// Writes the config and secrets, and starts `infra-service worker`.
    pub async fn spawn(self) -> TestWorker {
        let dir = tempfile::Builder::new()
            .prefix("infra-testworker-")
            .tempdir()
            .expect("worker temp dir");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).expect("secrets dir");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))
            .expect("chmod secrets dir");
        for (name, contents) in &self.secret_files {
            write_secret(&secrets, name, contents);
        }
        let mut settings = self.settings;
        let db = if settings.contains_key("postgres.url") {
            None
        } else {
            let db = TestDb::new().await;
            settings.insert("postgres.url".to_owned(), Value::from(db.url()));
            Some(db)
        };
        settings
            .entry("secrets.dir".to_owned())
            .or_insert_with(|| Value::from(secrets.to_string_lossy()));
        // Neither the default heartbeat file (relative to the test's cwd,
        // shared by every worker) nor the default metrics port (one per host).
        settings
            .entry("heartbeat.path".to_owned())
            .or_insert_with(|| Value::from(dir.path().join("heartbeat").to_string_lossy()));
        settings
            .entry("http.listen".to_owned())
            .or_insert_with(|| Value::from("127.0.0.1:0"));
        let config = dir.path().join("config.toml");
        std::fs::write(&config, render_toml(&settings)).expect("write config");

        let log_path = dir.path().join("worker.log");
        let log = std::fs::File::create(&log_path).expect("worker log");
        // A short path: the worker puts its runs elsewhere when TMPDIR is
        // too long for ssh's ControlPath sockets.
        let tmp = tempfile::Builder::new()
            .prefix("itw-")
            .tempdir()
            .expect("worker TMPDIR");
        let mut command = Command::from(infra_service());
        command
            .arg("worker")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .kill_on_drop(true)
            .env("TMPDIR", tmp.path())
            .envs(&self.env);
        let child = command.spawn().expect("spawn infra-service worker");
        let pid = child.id().expect("worker pid");
        TestWorker {
            child: Mutex::new(child),
            pid,
            dir,
            _tmp: tmp,
            env: self.env,
            _db: db,
        }
    }
}

fn write_secret(dir: &Path, name: &Path, contents: &[u8]) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("secret subdir");
    }
    std::fs::write(&path, contents).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod secret");
}

/// `section.key = value` pairs as TOML tables. JSON string escapes are valid
/// TOML basic-string escapes, so `Value`'s rendering serves for scalars.
pub(super) fn render_toml(settings: &BTreeMap<String, Value>) -> String {
    let mut sections: BTreeMap<&str, Vec<(&str, &Value)>> = BTreeMap::new();
    for (key, value) in settings {
        let (section, name) = key.split_once('.').expect("section.key");
        sections.entry(section).or_default().push((name, value));
    }
    let mut out = String::new();
    for (section, entries) in sections {
        out.push_str(&format!("[{section}]\n"));
        for (name, value) in entries {
            out.push_str(&format!("{name} = {value}\n"));
        }
        out.push('\n');
    }
    out
}

/// The binary under test (this build's `infra-service`, or
/// `TEST_WORKER_BIN`: a release build, or a stand-in while checking the
/// suite itself), without the test's own `INFRA__*`, `ANSIBLE_CONFIG` or
/// `RUST_LOG`: only what the test sets configures it.
pub fn infra_service() -> std::process::Command {
    let bin = std::env::var("TEST_WORKER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_infra-service").to_owned());
    let mut command = std::process::Command::new(bin);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("INFRA__") || name == "ANSIBLE_CONFIG" || name == "RUST_LOG" {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// The `ansible-playbook` the worker runs. `TEST_ANSIBLE_PLAYBOOK` wins;
/// else the one on PATH, with a pyenv shim resolved to the real script (the
/// shim costs a bash and a `pyenv exec` on every run).
pub fn ansible_playbook_bin() -> String {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("TEST_ANSIBLE_PLAYBOOK") {
            return bin;
        }
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.join("ansible-playbook"))
            .find(|p| p.is_file());
        match on_path {
            Some(path) if path.to_string_lossy().contains("/shims/") => {
                std::process::Command::new("pyenv")
                    .args(["which", "ansible-playbook"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_else(|| path.to_string_lossy().into_owned())
            }
            Some(path) => path.to_string_lossy().into_owned(),
            None => "ansible-playbook".to_owned(),
        }
    })
    .clone()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
