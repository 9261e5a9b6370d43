//! The real content of `ansible/` run by hand against a `TestHost`, the way
//! the worker runs it but without the worker: `ansible-playbook` from the
//! `ansible/` directory with its `ansible.cfg`, an inventory for the host,
//! the job's variables as `-e @vars.json` and secrets in the environment.
//!
//! `install_stubs` puts `tests/fixtures/stubs/` first on the host's PATH; the
//! returned `StubState` reads what they recorded and sets the state files
//! they obey (see each stub's comments).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use super::host::TestHost;

/// `ansible/` of this repository, absolute.
fn ansible_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

/// How one `ansible-playbook` run ended and what it printed.
pub struct PlaybookRun {
    /// Exit code; -1 when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PlaybookRun {
    /// stdout then stderr: everything an operator (or a job's output tail)
    /// would see.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The `changed=` count of the single host's PLAY RECAP line.
    pub fn changed(&self) -> Option<u32> {
        let recap = self.stdout.split("PLAY RECAP").nth(1)?;
        recap
            .split_whitespace()
            .find_map(|field| field.strip_prefix("changed="))
            .and_then(|n| n.parse().ok())
    }
}

impl std::fmt::Debug for PlaybookRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ansible-playbook exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `ansible/playbooks/<playbook>` against `host` with `vars` as extra
/// vars, `env` added to the environment of `ansible-playbook` and `args`
/// (e.g. `--check`) before the playbook.
pub async fn run_playbook(
    host: &TestHost,
    playbook: &str,
    vars: &Value,
    env: &[(&str, &str)],
    args: &[&str],
) -> PlaybookRun {
    let work = tempfile::tempdir().expect("temp dir for the run");
    let inventory = work.path().join("inventory.ini");
    std::fs::write(
        &inventory,
        format!(
            "target ansible_host={} ansible_port={} ansible_user={} ansible_ssh_private_key_file={} \
             ansible_python_interpreter=/usr/bin/python3 \
             ansible_ssh_common_args='-o UserKnownHostsFile={}'\n",
            host.address(),
            host.port(),
            host.user(),
            host.client_key_path().display(),
            work.path().join("known_hosts").display()
        ),
    )
    .expect("write inventory");
    let vars_file = work.path().join("vars.json");
    std::fs::write(&vars_file, vars.to_string()).expect("write vars.json");

    let output = tokio::process::Command::new(super::ansible_playbook_bin())
        .arg("-i")
        .arg(&inventory)
        .arg("-e")
        .arg(format!("@{}", vars_file.display()))
        .args(args)
        .arg(ansible_dir().join("playbooks").join(playbook))
        .current_dir(ansible_dir())
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        // As the worker does: control sockets of this run only.
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", work.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run ansible-playbook");
    PlaybookRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A temporary directory the host's login user owns (and so may write in
/// and run git in), on this machine's filesystem like the host's.
pub fn login_user_dir(host: &TestHost) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("infra-content-")
        .tempdir()
        .expect("temp dir");
    give_to_login_user(host, dir.path());
    dir
}

/// A test host with the stubs first on its PATH, and a directory of the
/// test's own (named `<prefix>...`) that `fill` populates (a git remote, a
/// services root) before it goes to the host's login user: git refuses a
/// repository another user owns ("dubious ownership").
pub async fn stubbed_host<T>(
    prefix: &str,
    fill: impl FnOnce(&Path) -> T,
) -> (TestHost, StubState, tempfile::TempDir, T) {
    let host = TestHost::start().await;
    let stubs = install_stubs(&host);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir for the project");
    let filled = fill(dir.path());
    give_to_login_user(&host, dir.path());
    (host, stubs, dir, filled)
}

/// `git <args>` in `cwd`, as a test author; panics unless it succeeds;
/// returns its stdout, trimmed.
pub fn git(cwd: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A new work tree `src` on `branch` with the compose files a deploy reads
/// (`prod` is `infra/compose.prod.yml`), committed; returns the commit.
pub fn compose_work_tree(src: &Path, branch: &str, prod: &str) -> String {
    std::fs::create_dir_all(src.join("infra")).expect("the work tree");
    git(src, &["init", "-q", "-b", branch]);
    std::fs::write(
        src.join("infra/compose.base.yml"),
        "services:\n  backend:\n    image: ${BACKEND_IMAGE}\n    profiles: [backend]\n",
    )
    .expect("compose.base.yml");
    std::fs::write(src.join("infra/compose.prod.yml"), prod).expect("compose.prod.yml");
    git(src, &["add", "."]);
    git(src, &["commit", "-q", "-m", branch]);
    git(src, &["rev-parse", "HEAD"])
}

/// A free TCP port on 127.0.0.1, for a project's service.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `chown -R` of `path` to the host's login user; 0755 on `path` itself.
pub fn give_to_login_user(host: &TestHost, path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(host.user())
        .arg(path)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown -R {} {}",
        host.user(),
        path.display()
    );
}

/// Copies every stub of `tests/fixtures/stubs/` into the host's stub bin dir
/// and prepares their state directory (`$INFRA_TEST_OUT/stub-state`).
pub fn install_stubs(host: &TestHost) -> StubState {
    let stubs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stubs");
    for entry in std::fs::read_dir(&stubs).expect("read the stubs dir") {
        let path = entry.expect("stub entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let script = std::fs::read_to_string(&path).expect("read stub");
        host.add_stub(&name, &script);
    }
    let dir = host.out_dir().join("stub-state");
    std::fs::create_dir_all(&dir).expect("stub state dir");
    give_to_login_user(host, &dir);
    StubState {
        dir,
        user: host.user().to_owned(),
    }
}

/// The stubs' state directory: their call log and the files they obey.
/// Dropping it stops the listener a stub `docker compose up` started; drop
/// it before its `TestHost`, which removes the pid file with its directory.
pub struct StubState {
    dir: PathBuf,
    user: String,
}

impl StubState {
    /// Every stub call so far, one `"<tool> <args...>"` per line.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Everything the stubs wrote (call log, rules, server log), concatenated.
    pub fn all_text(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).expect("read stub state") {
            let bytes = std::fs::read(entry.expect("state entry").path()).unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&bytes));
            text.push('\n');
        }
        text
    }

    /// Writes the state file `name` (owned by the login user, so the stubs
    /// may replace or remove it).
    pub fn set(&self, name: &str, content: &str) {
        let path = self.dir.join(name);
        std::fs::write(&path, content).expect("write stub state file");
        let status = std::process::Command::new("chown")
            .arg(&self.user)
            .arg(&path)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {}", path.display());
    }

    /// Whether the state file `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
}

impl Drop for StubState {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("http_server.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|pid| *pid > 0) {
            // SAFETY: kill has no memory-safety preconditions; the pid is the
            // stub's own python listener.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}
