//! The deploy lifecycle of contract section 6, as `ansible/` implements it
//! (the `deploy` role's `action`s), run for real over SSH against a
//! `TestHost`. The `docker` stub's `compose up` starts a real HTTP listener
//! on the project's port for a healthy revision, none for one holding
//! `BROKEN`, one beside a restarting container for one holding
//! `BROKEN_CRASHLOOP`, and answers `HEALTH_STATUS` when the checkout has one;
//! a local bare repository holds one branch per kind of revision.
//!
//! What the worker reads back, the play's `set_stats`, is read here from the
//! default callback's `CUSTOM STATS` block (`ANSIBLE_SHOW_CUSTOM_STATS=1`):
//! ansible-core 2.19 ships no JSON stdout callback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const REPO: &str = "acme/lifecycle-app";
const PROJECT: &str = "lifecycle-app";
/// The project_id of the jobs, and one of another project.
const PROJECT_ID: &str = "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10";
const OTHER_PROJECT_ID: &str = "0b8e4d2c-7a41-4f3e-8c5d-2e9f6a1b7c30";
/// Branches of the bare repository: a healthy revision, one that never
/// listens, one whose service answers 500, one whose container crash-loops
/// behind a port that accepts connections (all children of the first).
const GOOD: &str = "main";
const BROKEN: &str = "broken";
const UNHEALTHY: &str = "unhealthy";
const CRASHLOOP: &str = "crashloop";
/// Seconds a deploy (and a rollback) waits until healthy: long enough for a
/// python listener to start on a busy machine; a run that must find no
/// health waits its own budget out, WAIT_UNHEALTHY.
const WAIT_HEALTHY: u32 = 20;
const WAIT_UNHEALTHY: u32 = 5;

/// A test host with the stubs, the bare repository and a services root of
/// the test's own.
struct Lifecycle {
    // Before `host`: dropping it stops the stub's listener, whose pid file
    // lives in the host's directory.
    stubs: StubState,
    host: TestHost,
    dir: tempfile::TempDir,
    port: u16,
    /// Commit of each branch, by name.
    commits: Vec<(&'static str, String)>,
    /// A value of the project's `.env` that only the "server" knows.
    secret: String,
}

impl Lifecycle {
    async fn new() -> Lifecycle {
        let (host, stubs, dir, commits) = stubbed_host("infra-lifecycle-", project_dirs).await;
        Lifecycle {
            stubs,
            host,
            dir,
            port: free_port(),
            commits,
            secret: format!("app{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn commit(&self, branch: &str) -> &str {
        self.commits
            .iter()
            .find_map(|(b, sha)| (*b == branch).then_some(sha.as_str()))
            .expect("a branch of the fixture repository")
    }

    fn project_dir(&self) -> PathBuf {
        self.dir.path().join("services").join(PROJECT)
    }

    fn env_text(&self) -> String {
        std::fs::read_to_string(self.project_dir().join(".env")).expect("the project's .env")
    }

    /// The job's extra vars for `action` of `branch`, `extra` merged in.
    fn vars(&self, action: &str, branch: &str, extra: Value) -> Value {
        let mut vars = json!({
            "request_id": unique_request_id("lifecycle"),
            "project_id": PROJECT_ID,
            "project_name": PROJECT,
            "repo_full_name": REPO,
            "branch": branch,
            "server_ip": self.host.address(),
            "modules": ["backend"],
            "service_port": self.port,
            "deploy_action": action,
            "services_root": self.dir.path().join("services"),
            "git_base_url": format!("file://{}", self.dir.path().join("git").display()),
            "deploy_wait_timeout": WAIT_HEALTHY,
            "deploy_rollback_wait_timeout": WAIT_HEALTHY,
            "deploy_health_interval": 1,
        });
        let map = vars.as_object_mut().unwrap();
        for (key, value) in extra.as_object().expect("extra vars are an object") {
            map.insert(key.clone(), value.clone());
        }
        vars
    }

    /// Runs the playbook with `vars`; `app_secret` is the `.env`'s
    /// APP_SECRET (through PROJECT_ENV, as the worker passes it).
    async fn run_with(&self, vars: &Value, app_secret: &str) -> PlaybookRun {
        let env = format!("APP_SECRET={app_secret}\nFEATURE_FLAGS=a,b\n");
        run_playbook(
            &self.host,
            "deploy_project.yml",
            vars,
            &[
                ("GITHUB_TOKEN", ""),
                ("PROJECT_ENV", &env),
                ("ANSIBLE_SHOW_CUSTOM_STATS", "1"),
            ],
            &[],
        )
        .await
    }

    async fn deploy(&self, branch: &str, extra: Value) -> PlaybookRun {
        self.run_with(&self.vars("deploy", branch, extra), &self.secret)
            .await
    }

    async fn action(&self, action: &str, extra: Value) -> PlaybookRun {
        self.run_with(&self.vars(action, GOOD, extra), &self.secret)
            .await
    }

    /// The project's port: `Some((status, body))` of `GET path`, `None`
    /// when nothing listens.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }

    /// The commit checked out in the project's directory.
    fn head(&self) -> String {
        let out = Command::new("git")
            .args(["-c", "safe.directory=*", "-C"])
            .arg(self.project_dir())
            .args(["rev-parse", "HEAD"])
            .output()
            .expect("run git");
        assert!(out.status.success(), "git rev-parse: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The play's run-wide `set_stats` data, from the `CUSTOM STATS` block.
fn custom_stats(run: &PlaybookRun) -> Value {
    let block = run
        .stdout
        .split("CUSTOM STATS:")
        .nth(1)
        .unwrap_or_else(|| panic!("no CUSTOM STATS block: {run:?}"));
    let line = block
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("RUN: "))
        .unwrap_or_else(|| panic!("no run-wide stats: {run:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("stats `{line}`: {e}"))
}

/// The custom stats, or an empty object when the play set none.
fn custom_stats_or_empty(run: &PlaybookRun) -> Value {
    if run.stdout.contains("CUSTOM STATS:") {
        custom_stats(run)
    } else {
        json!({})
    }
}

#[tokio::test]
async fn a_deploy_reports_its_revision_a_rerun_changes_nothing_and_a_broken_one_is_rolled_back_to_the_last_healthy_one()
 {
    // Arrange
    let fx = Lifecycle::new().await;
    let (good, unhealthy, broken) = (
        fx.commit(GOOD).to_owned(),
        fx.commit(UNHEALTHY).to_owned(),
        fx.commit(CRASHLOOP).to_owned(),
    );

    // Act: a first deploy, the same again; a deploy whose `up` fails after
    // its checkout (HEAD moves to a commit that never ran), then a revision
    // whose container crash-loops behind an open port; each of the last two
    // with another PROJECT_ENV.
    let first = fx.deploy(GOOD, json!({})).await;
    let first_answer = fx.get("/").await;
    let second = fx.deploy(GOOD, json!({})).await;
    let env_before = fx.env_text();
    let up_fail_secret = format!("upf{}", uuid::Uuid::new_v4().simple());
    fx.stubs.set("compose_up_fail", "");
    let up_failed = fx
        .run_with(&fx.vars("deploy", UNHEALTHY, json!({})), &up_fail_secret)
        .await;
    let head_after_up_failed = fx.head();
    std::fs::remove_file(fx.host.out_dir().join("stub-state/compose_up_fail")).unwrap();
    let broken_secret = format!("new{}", uuid::Uuid::new_v4().simple());
    let vars = fx.vars(
        "deploy",
        CRASHLOOP,
        json!({"deploy_wait_timeout": WAIT_UNHEALTHY}),
    );
    let third = fx.run_with(&vars, &broken_secret).await;

    // Assert: the first deploy.
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(
        custom_stats(&first),
        json!({"revision": good, "previous_revision": null})
    );
    assert_eq!(first_answer, Some((200, good.clone())));

    // The rerun: nothing changed, the previous revision is the same.
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(
        second.changed(),
        Some(0),
        "a rerun changed something: {second:?}"
    );
    assert_eq!(
        custom_stats(&second),
        json!({"revision": good, "previous_revision": good})
    );

    // The deploy whose `up` failed: it still reports both revisions, the
    // previous one being the one that passed its health check.
    assert_ne!(up_failed.code, 0, "{up_failed:?}");
    assert_eq!(
        custom_stats(&up_failed),
        json!({"revision": unhealthy, "previous_revision": good})
    );
    assert_eq!(head_after_up_failed, unhealthy);

    // The broken deploy: failed, rolled back to the last healthy revision
    // (not HEAD), which answers again with the .env it ran with.
    assert_ne!(third.code, 0, "{third:?}");
    assert_eq!(
        custom_stats(&third),
        json!({
            "revision": broken,
            "previous_revision": good,
            "rollback": {"performed": true, "revision": good, "status": "success"},
        })
    );
    assert_eq!(fx.get("/").await, Some((200, good.clone())));
    assert_eq!(fx.env_text(), env_before, "the .env was not restored");
    let env_mode = std::fs::metadata(fx.project_dir().join(".env"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(env_mode, 0o640);
    let output = third.output();
    for expected in [
        format!(
            "{PROJECT} {broken} failed its health check: \
             containers restarting or exited with an error: stub-backend-1"
        ),
        format!("Rolled back to {good}: healthy again."),
        "backend-1  | stub log line".to_owned(),
        // The broken revision's logs, with its .env values masked.
        format!("backend-1  | revision {broken}"),
        "starting with APP_SECRET=***".to_owned(),
    ] {
        assert!(output.contains(&expected), "no `{expected}`: {third:?}");
    }
    for secret in [&broken_secret, &up_fail_secret] {
        assert!(
            !output.contains(secret.as_str()),
            "the failure message shows a .env's secret"
        );
    }
}

#[tokio::test]
async fn a_broken_first_deploy_fails_with_the_compose_logs_and_no_rollback() {
    // Arrange
    let fx = Lifecycle::new().await;

    // Act
    let run = fx
        .deploy(BROKEN, json!({"deploy_wait_timeout": WAIT_UNHEALTHY}))
        .await;

    // Assert
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(
        custom_stats(&run),
        json!({"revision": fx.commit(BROKEN), "previous_revision": null}),
        "a first deploy has nothing to roll back to"
    );
    let output = run.output();
    for expected in [
        "failed its health check",
        "No rollback: no revision was deployed before (first deploy).",
        "backend-1  | stub log line",
    ] {
        assert!(output.contains(expected), "no `{expected}`: {run:?}");
    }
    assert_eq!(fx.get("/").await, None);
}

#[tokio::test]
async fn a_health_path_answering_500_is_not_healthy_and_the_deploy_rolls_back_to_one_answering_200()
{
    // Arrange
    let fx = Lifecycle::new().await;
    let health = json!({"health_path": "/healthz?probe=1"});
    let first = fx.deploy(GOOD, health.clone()).await;
    assert_eq!(first.code, 0, "{first:?}");

    // Act
    let mut extra = health.clone();
    extra["deploy_wait_timeout"] = json!(WAIT_UNHEALTHY);
    let run = fx.deploy(UNHEALTHY, extra).await;

    // Assert
    assert_ne!(run.code, 0, "{run:?}");
    let good = fx.commit(GOOD);
    assert_eq!(
        custom_stats(&run)["rollback"],
        json!({"performed": true, "revision": good, "status": "success"})
    );
    let url = format!("http://127.0.0.1:{}/healthz?probe=1", fx.port);
    assert!(
        run.output()
            .contains(&format!("{url} answered HTTP 500, not 2xx/3xx")),
        "{run:?}"
    );
    let requests = std::fs::read_to_string(fx.host.out_dir().join("stub-state/http_requests.log"))
        .unwrap_or_default();
    for expected in ["GET /healthz?probe=1 200", "GET /healthz?probe=1 500"] {
        assert!(
            requests.lines().any(|l| l == expected),
            "no `{expected}` among the health requests:\n{requests}"
        );
    }
    assert_eq!(fx.get("/healthz").await, Some((200, good.to_owned())));
}

#[tokio::test]
async fn stop_restart_logs_and_remove_act_on_a_deployed_project_of_their_own_project_only() {
    // Arrange: a deployed project, and a CI user with a key of this project
    // and one of another.
    let fx = Lifecycle::new().await;
    let deployed = fx.deploy(GOOD, json!({})).await;
    assert_eq!(deployed.code, 0, "{deployed:?}");
    let ci = SystemUser::unique("ci-life");
    let other_line = format!("restrict {} infra-ci:{PROJECT}-2", test_key('B'));
    let authorized_keys = create_ci_user(
        &ci,
        &[
            &format!("restrict {} infra-ci:{PROJECT}", test_key('A')),
            &other_line,
        ],
    );

    // Act: another project's job first.
    let foreign_stop = fx
        .action("stop", json!({"project_id": OTHER_PROJECT_ID}))
        .await;
    let after_foreign_stop = fx.get("/").await;
    let stop = fx.action("stop", json!({})).await;
    let after_stop = fx.get("/").await;
    let files_after_stop =
        ["infra/compose.base.yml", ".env", ".git"].map(|file| fx.project_dir().join(file).exists());
    let restart = fx.action("restart", json!({})).await;
    let after_restart = fx.get("/").await;
    let logs = fx.action("logs", json!({})).await;
    // The CI user's authorized_keys is its own: root edits it. The job names
    // the SSH port: the port closed is the one of the project's .env.
    let remove = fx
        .action(
            "remove",
            json!({"ci_user": ci.name(), "infra_become": true, "service_port": 22}),
        )
        .await;
    let after_remove = fx.get("/").await;

    // Assert: another project's job may not touch it.
    assert_ne!(foreign_stop.code, 0, "{foreign_stop:?}");
    assert!(
        foreign_stop.output().contains(&format!(
            "{PROJECT} belongs to another project (project_id {OTHER_PROJECT_ID}"
        )),
        "{foreign_stop:?}"
    );
    assert_eq!(after_foreign_stop, Some((200, fx.commit(GOOD).to_owned())));

    // stop leaves the files.
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(after_stop, None, "the port still answers after stop");
    assert_eq!(files_after_stop, [true; 3], "stop removed files");

    // restart brings it back.
    assert_eq!(restart.code, 0, "{restart:?}");
    assert_eq!(after_restart, Some((200, fx.commit(GOOD).to_owned())));

    // logs prints the tail with the .env's values masked.
    assert_eq!(logs.code, 0, "{logs:?}");
    assert!(
        logs.stdout.contains("backend-1  | stub log line"),
        "{logs:?}"
    );
    assert!(
        logs.stdout
            .contains("backend-1  | starting with APP_SECRET=***"),
        "{logs:?}"
    );
    assert!(!logs.output().contains(&fx.secret), "{logs:?}");

    // remove: containers, directory, port rule and this project's key gone.
    assert_eq!(remove.code, 0, "{remove:?}");
    assert_eq!(after_remove, None);
    assert!(
        !fx.project_dir().exists(),
        "the project directory is still there"
    );
    let keys = std::fs::read_to_string(&authorized_keys).unwrap();
    assert_eq!(keys.lines().collect::<Vec<_>>(), [other_line.as_str()]);

    // The actions run compose without the job's modules (the .env's
    // COMPOSE_PROFILES applies).
    let calls = fx.stubs.calls();
    let compose = |tail: &str| {
        let wanted = format!(
            "docker compose --project-name {PROJECT} --env-file {}/.env \
             -f infra/compose.base.yml -f infra/compose.prod.yml {tail}",
            fx.project_dir().display()
        );
        assert!(
            calls.contains(&wanted),
            "no `{wanted}` among the stub calls: {calls:#?}"
        );
    };
    compose("ps --quiet --status running --status restarting");
    compose("stop");
    compose("restart");
    compose("logs --no-color --tail 100");
    compose("down --volumes --remove-orphans");
    let port_rule = format!("{}/tcp", fx.port);
    let deletes: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("ufw delete"))
        .collect();
    assert_eq!(
        deletes,
        [&format!("ufw delete allow {port_rule}")],
        "remove closes the .env's port, and only it"
    );
    let rules = std::fs::read_to_string(fx.host.out_dir().join("stub-state/ufw_rules")).unwrap();
    assert!(!rules.lines().any(|r| r == port_rule), "{rules}");
}

#[tokio::test]
async fn stop_and_remove_of_an_absent_project_succeed_and_restart_and_logs_fail_as_not_deployed() {
    // Arrange: nothing deployed here; a CI user holding a key of a project
    // of that name (deployed on another server); remove names the SSH port.
    let fx = Lifecycle::new().await;
    let ci = SystemUser::unique("ci-none");
    let key_line = format!("restrict {} infra-ci:{PROJECT}", test_key('A'));
    let authorized_keys = create_ci_user(&ci, &[&key_line]);
    let absent_user = json!({"ci_user": ci.name(), "service_port": 22});

    // Act
    let stop = fx.action("stop", json!({})).await;
    let remove = fx.action("remove", absent_user).await;
    let restart = fx.action("restart", json!({})).await;
    let logs = fx.action("logs", json!({})).await;

    // Assert
    for run in [&stop, &remove] {
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run.changed(), Some(0), "{run:?}");
        assert_eq!(custom_stats_or_empty(run), json!({}), "{run:?}");
    }
    let calls = fx.stubs.calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("ufw")),
        "remove of an absent project touched UFW: {calls:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(&authorized_keys).unwrap(),
        format!("{key_line}\n"),
        "remove of a project not here revoked its CI key"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("docker compose")),
        "compose ran for an absent project: {calls:#?}"
    );
    for run in [&restart, &logs] {
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            run.output()
                .contains(&format!("{PROJECT} is not deployed on this server")),
            "{run:?}"
        );
    }
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): status and body, or `None`
/// when the connection is refused.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the listener answers within 10 s")
    .ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A syntactically valid ed25519 public key (type and base64) unique to `c`.
fn test_key(c: char) -> String {
    let filler: String = std::iter::repeat_n(c, 43).collect();
    format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{filler}")
}

/// The test's directory: the bare repository and an empty services root.
fn project_dirs(dir: &Path) -> Vec<(&'static str, String)> {
    let commits = bare_repository(dir);
    std::fs::create_dir(dir.join("services")).unwrap();
    commits
}

/// Creates the account `user` with `lines` in its `~/.ssh/authorized_keys`;
/// returns that file's path.
fn create_ci_user(user: &SystemUser, lines: &[&str]) -> PathBuf {
    let status = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", "--password", "*"])
        .arg(user.name())
        .status()
        .expect("run useradd");
    assert!(status.success(), "useradd {}", user.name());
    let ssh = user.home().expect("a home").join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let path = ssh.join("authorized_keys");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A bare repository `<dir>/git/<REPO>.git`: `GOOD` holds the compose files,
/// `BROKEN`, `UNHEALTHY` and `CRASHLOOP` each add one file to it (`BROKEN`,
/// `HEALTH_STATUS` 500, `BROKEN_CRASHLOOP`). Returns each branch's commit.
fn bare_repository(dir: &Path) -> Vec<(&'static str, String)> {
    let src = dir.join("src");
    let bare = dir.join("git").join(format!("{REPO}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    let mut commits = vec![(GOOD, compose_work_tree(&src, GOOD, "# production\n"))];
    for (branch, file, content) in [
        (BROKEN, "BROKEN", ""),
        (UNHEALTHY, "HEALTH_STATUS", "500\n"),
        (CRASHLOOP, "BROKEN_CRASHLOOP", ""),
    ] {
        git(&src, &["checkout", "-q", "-b", branch, GOOD]);
        std::fs::write(src.join(file), content).unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", branch]);
        commits.push((branch, git(&src, &["rev-parse", "HEAD"])));
    }
    git(&bare, &["init", "-q", "--bare", "-b", GOOD]);
    git(
        &src,
        &[
            "push",
            "-q",
            &bare.to_string_lossy(),
            GOOD,
            BROKEN,
            UNHEALTHY,
            CRASHLOOP,
        ],
    );
    commits
}

/// The same lifecycle through a real worker: what the play hands back with
/// `set_stats` becomes the result's `revision`, `previous_revision` and
/// `rollback`, and `logs` comes back in `output_tail` with the project's
/// secret masked.
#[tokio::test]
async fn through_the_worker_the_result_carries_the_revisions_the_rollback_and_masked_logs() {
    // Arrange: the real deploy playbook, the operator's extra vars pointing
    // it at the test's repository and services root.
    let host = TestHost::start().await;
    let dir = tempfile::Builder::new()
        .prefix("infra-lifecycle-")
        .tempdir()
        .unwrap();
    let commits = project_dirs(dir.path());
    let services = dir.path().join("services");
    give_to_login_user(&host, dir.path());
    let commit = |branch: &str| {
        let found = commits.iter().find(|(b, _)| *b == branch);
        found.expect("a branch of the fixture repository").1.clone()
    };
    let port = free_port();
    let playbook =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ansible/playbooks/deploy_project.yml");
    let git_base_url = format!("file://{}", dir.path().join("git").display());
    let w = World::start(host, TestRedis::new().await, |worker| {
        worker
            .set("ansible.deploy_playbook", playbook.to_string_lossy())
            .set(
                "ansible.extra_vars.services_root",
                services.to_string_lossy(),
            )
            .set("ansible.extra_vars.git_base_url", git_base_url)
            .set("ansible.extra_vars.deploy_wait_timeout", WAIT_HEALTHY)
            .set(
                "ansible.extra_vars.deploy_rollback_wait_timeout",
                WAIT_HEALTHY,
            )
            .set("ansible.extra_vars.deploy_health_interval", 1)
    })
    .await;
    // After `w`, so dropped before it: dropping it stops the stub's listener,
    // whose pid file goes with the host's directory.
    let _stubs = install_stubs(&w.host);
    let job = |branch: &str, action: &str| {
        let mut payload = valid_deploy_payload(&unique_request_id("life"), w.host.address(), port);
        payload["repo_full_name"] = json!(REPO);
        payload["project_id"] = json!(PROJECT_ID);
        payload["project_name"] = json!(PROJECT);
        payload["branch"] = json!(branch);
        payload["action"] = json!(action);
        payload
    };

    // Act: the broken revision crash-loops, which needs no wait to see.
    let first = w.deploy(&job(GOOD, "deploy")).await;
    let broken = w.deploy(&job(CRASHLOOP, "deploy")).await;
    let logs = w.deploy(&job(GOOD, "logs")).await;

    // Assert: a first deploy.
    assert_eq!(
        first.status,
        infra_service::job::JobStatus::Success,
        "{first:?}"
    );
    assert_eq!(first.extra["action"], "deploy");
    assert_eq!(first.extra["revision"], json!(commit(GOOD)));
    assert_eq!(first.extra["previous_revision"], Value::Null);
    assert!(first.extra.get("rollback").is_none());

    // A broken one: failed, rolled back, and says so.
    assert_eq!(
        broken.status,
        infra_service::job::JobStatus::Failed,
        "{broken:?}"
    );
    let error = broken.error.as_ref().unwrap();
    assert_eq!(error.code, infra_service::job::ErrorCode::PlaybookFailed);
    assert!(
        error.message.contains("failed its health check"),
        "{}",
        error.message
    );
    assert_eq!(broken.extra["revision"], json!(commit(CRASHLOOP)));
    assert_eq!(broken.extra["previous_revision"], json!(commit(GOOD)));
    assert_eq!(
        broken.extra["rollback"],
        json!({"performed": true, "revision": commit(GOOD), "status": "success"})
    );
    assert_eq!(http_get(port, "/").await, Some((200, commit(GOOD))));

    // Logs: the service's lines, its secret masked; no revision fields.
    assert_eq!(
        logs.status,
        infra_service::job::JobStatus::Success,
        "{logs:?}"
    );
    assert_eq!(logs.extra["action"], "logs");
    assert!(logs.extra.get("revision").is_none());
    let secret = w
        .worker
        .env_value(PROJECT_ENV_VAR)
        .lines()
        .find_map(|l| l.strip_prefix("APP_SECRET="));
    let secret = secret
        .expect("the test worker's .env has an APP_SECRET")
        .to_owned();
    assert!(
        logs.output_tail.contains("APP_SECRET=***"),
        "{}",
        logs.output_tail
    );
    assert!(!logs.output_tail.contains(&secret), "{}", logs.output_tail);
}
