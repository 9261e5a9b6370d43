//! `setup_ci` end to end: a real worker deploys to the test sshd, then gives
//! the repository's CI a key of its own through the real `ci_access` play
//! (with `ansible.become`, as for a sudo login) and the fake GitHub API.
//! The stored secrets are opened with PyNaCl and used as a workflow would:
//! `ssh` with the stored key, the stored known_hosts and nothing else.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use infra_service::ci::{CiReport, CiStatus};
use infra_service::job::{ErrorCode, JobResult, JobStatus};
use serde_json::{Value, json};

use crate::github_fake::{FakeConfig, FakeGithub};
use crate::helpers::{
    GITHUB_TOKEN_VAR, SshOutput, SystemUser, TestHost, TestRedis, World, files_text, fragments,
    stream_text, unique_request_id, valid_deploy_payload,
};

const REPO: &str = "acme/shop";

/// The secrets of contract section 7, in the order they are written.
const SECRETS: [&str; 7] = [
    "DEPLOY_HOST",
    "DEPLOY_PORT",
    "DEPLOY_USER",
    "DEPLOY_KNOWN_HOSTS",
    "DEPLOY_PROJECT_PATH",
    "DEPLOY_COMPOSE_FILES",
    "DEPLOY_SSH_KEY",
];

/// A worker aimed at a fresh sshd whose CI login is a user of the test's
/// own, writing to `fake`.
struct CiWorld {
    // Before `ci_user`: sshd and its sessions end before the account goes.
    w: World,
    fake: FakeGithub,
    ci_user: SystemUser,
    dir: tempfile::TempDir,
}

async fn ci_world(config: FakeConfig) -> CiWorld {
    let fake = FakeGithub::start(config).await;
    let ci_user = SystemUser::unique("ci");
    let host = TestHost::start().await;
    let real_play =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ansible/playbooks/ci_access.yml");
    let w = World::start(host, TestRedis::new().await, |worker| {
        worker
            .set("github.api_url", fake.api_url())
            // Short: a test's outage ends past the deadline quickly.
            .set("github.retry_secs", 3)
            .set("ansible.become", true)
            .set("ansible.ci_playbook", real_play.to_string_lossy())
            .set("ci.deploy_user", ci_user.name())
            .env(GITHUB_TOKEN_VAR, fake.config().token.clone())
    })
    .await;
    CiWorld {
        w,
        fake,
        ci_user,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn payload(w: &World, setup_ci: bool) -> Value {
    let mut payload = valid_deploy_payload(&unique_request_id("ci"), w.host.address(), 8080);
    payload["repo_full_name"] = json!(REPO);
    payload["project_name"] = json!("shop");
    payload["setup_ci"] = json!(setup_ci);
    payload
}

fn ci_of(result: &JobResult) -> CiReport {
    let ci = result
        .extra
        .get("ci")
        .unwrap_or_else(|| panic!("no ci: {result:?}"));
    serde_json::from_value(ci.clone()).unwrap()
}

/// What the repository holds, opened as GitHub would.
struct Stored {
    values: Vec<(&'static str, String)>,
}

impl Stored {
    fn read(fake: &FakeGithub) -> Stored {
        let values = SECRETS.map(|name| (name, fake.open_secret(REPO, name)));
        Stored {
            values: values.to_vec(),
        }
    }

    fn get(&self, name: &str) -> &str {
        let found = self.values.iter().find(|(n, _)| *n == name);
        &found.unwrap_or_else(|| panic!("no {name}")).1
    }
}

impl CiWorld {
    /// Fingerprints of the project's CI keys in the CI user's
    /// authorized_keys on the server, as `ssh-keygen -l` gives them.
    fn server_fingerprints(&self) -> Vec<String> {
        let home = self.ci_user.home().expect("the CI user exists");
        let text = std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap();
        text.lines()
            .filter(|line| line.ends_with(" infra-ci:shop"))
            .map(|line| {
                let public = line.split_whitespace().skip(1).take(2).collect::<Vec<_>>();
                let path = self.dir.path().join("server_key.pub");
                std::fs::write(&path, public.join(" ") + "\n").unwrap();
                fingerprint_of(&path)
            })
            .collect()
    }

    /// Runs `command` as `user` over SSH the way a workflow would, with the
    /// stored key and the stored known_hosts as the only ones trusted.
    async fn ssh_with(&self, stored: &Stored, user: &str, command: &str) -> SshOutput {
        let key = write_private(self.dir.path(), "deploy_key", stored.get("DEPLOY_SSH_KEY"));
        let known = write_private(
            self.dir.path(),
            "known_hosts",
            stored.get("DEPLOY_KNOWN_HOSTS"),
        );
        assert_eq!(stored.get("DEPLOY_HOST"), self.w.host.address());
        assert_eq!(stored.get("DEPLOY_PORT"), self.w.host.port().to_string());
        self.w.host.ssh_as(user, &key, &known, &[], command).await
    }
}

fn write_private(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `key` is in none of the places a job's words go (results, events, dead
/// letters, the worker's logs and its directory) nor in any file under
/// `/tmp`, where the worker's run directories are made.
async fn assert_key_nowhere(cw: &CiWorld, request_ids: &[&str], key: &str) {
    let w = &cw.w;
    let mut places: Vec<(String, String)> = Vec::new();
    for request_id in request_ids {
        let kind = infra_service::job::JobKind::Deploy;
        let result = w.queue.result_text(kind, request_id).await.unwrap();
        places.push((format!("result {request_id}"), result));
        let events = stream_text(w, &format!("job:events:{request_id}")).await;
        places.push((format!("events {request_id}"), events));
    }
    places.push((
        "deploy:results".into(),
        stream_text(w, "deploy:results").await,
    ));
    places.push(("dead letters".into(), stream_text(w, "infra:dead").await));
    places.push(("worker logs".into(), w.worker.logs()));
    let worker_dir = w.worker.config_path().parent().unwrap().to_owned();
    places.push(("the worker's directory".into(), files_text(&worker_dir)));
    places.push(("the target's records".into(), files_text(&w.host.out_dir())));
    for fragment in private_fragments(key) {
        for (place, text) in &places {
            assert!(
                !text.contains(fragment),
                "the CI private key is in the {place}"
            );
        }
        assert!(
            !tmp_holds(fragment, cw.dir.path()),
            "the CI private key is in a file under /tmp"
        );
    }
}

/// The lines of an OpenSSH private key that hold its private part: the
/// first two lines of every unencrypted ed25519 key are the same header
/// and the public key (the worker's own key shares the header).
fn private_fragments(key: &str) -> Vec<&str> {
    let body = fragments(key);
    assert!(body.len() > 2, "not an OpenSSH key: {} lines", body.len());
    body[2..].to_vec()
}

/// Whether a readable file under `/tmp` (but `except`, the test's own)
/// holds `needle`.
fn tmp_holds(needle: &str, except: &Path) -> bool {
    let mut pending = vec![PathBuf::from("/tmp")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if path.starts_with(except) || kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && entry.metadata().is_ok_and(|m| m.len() < 4 << 20)
                && std::fs::read(&path)
                    .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
            {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn setup_ci_gives_the_repository_a_restricted_key_of_its_own_a_failed_rotation_keeps_it_and_the_next_rotates_it()
 {
    // Arrange
    let cw = ci_world(FakeConfig::default()).await;
    let user = cw.ci_user.name().to_owned();

    // Act
    let first = payload(&cw.w, true);
    let result = cw.w.deploy(&first).await;

    // Assert: the deploy and CI succeeded, and the repository holds a key
    // that logs in as the CI user, checking the host key it was given.
    assert_eq!(result.status, JobStatus::Success, "{result:?}");
    let ci = ci_of(&result);
    assert_eq!(ci.status, CiStatus::Success, "{ci:?}");
    assert_eq!(ci.error, None);
    assert_eq!(ci.secrets, SECRETS);
    let stored = Stored::read(&cw.fake);
    assert_eq!(stored.get("DEPLOY_USER"), user);
    assert_eq!(stored.get("DEPLOY_PROJECT_PATH"), "/opt/services/shop");
    assert_eq!(
        stored.get("DEPLOY_COMPOSE_FILES"),
        "infra/compose.base.yml infra/compose.prod.yml"
    );
    let login = cw.ssh_with(&stored, &user, "id -un; id -Gn").await;
    assert!(login.success(), "{login:?}");
    let mut lines = login.stdout.lines();
    assert_eq!(lines.next(), Some(user.as_str()));
    let groups: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert!(groups.contains(&"docker"), "{groups:?}");
    for admin in ["sudo", "wheel", "admin", "root"] {
        assert!(!groups.contains(&admin), "{groups:?}");
    }
    let sudo = cw.ssh_with(&stored, &user, "sudo -n true").await;
    assert!(!sudo.success(), "the CI user could sudo: {sudo:?}");
    let as_root = cw.ssh_with(&stored, "root", "true").await;
    assert!(
        !as_root.success(),
        "the CI key logged in as root: {as_root:?}"
    );
    assert!(as_root.stderr.contains("Permission denied"), "{as_root:?}");
    let fingerprint = ssh_keygen_fingerprint(stored.get("DEPLOY_SSH_KEY"), cw.dir.path());
    assert_eq!(ci.key_fingerprint.as_deref(), Some(fingerprint.as_str()));

    assert_eq!(cw.server_fingerprints(), std::slice::from_ref(&fingerprint));

    // Act: a second setup_ci, GitHub failing the private key's PUT until
    // past the deadline.
    cw.fake.fail_secret("DEPLOY_SSH_KEY", Some(502));
    let second = payload(&cw.w, true);
    let unstored = cw.w.deploy(&second).await;

    // Assert: CI failed, the deploy did not, and CI still holds a key that
    // works: the first, beside the new one on the server.
    assert_eq!(unstored.status, JobStatus::Success, "{unstored:?}");
    let ci = ci_of(&unstored);
    assert_eq!(ci.status, CiStatus::Failed, "{ci:?}");
    assert_eq!(ci.secrets, SECRETS[..6]);
    assert_eq!(ci.key_fingerprint, None);
    let error = ci.error.unwrap();
    assert_eq!(error.code, ErrorCode::ProviderError);
    assert_eq!(error.details["reason"], "unavailable", "{error:?}");
    let unstored_fingerprint = error.details["key_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(unstored_fingerprint, fingerprint);
    assert_eq!(
        cw.server_fingerprints(),
        [fingerprint.clone(), unstored_fingerprint.clone()]
    );
    let kept = Stored::read(&cw.fake);
    assert_eq!(kept.get("DEPLOY_SSH_KEY"), stored.get("DEPLOY_SSH_KEY"));
    let kept_login = cw.ssh_with(&kept, &user, "id -un").await;
    assert!(
        kept_login.success(),
        "the stored key no longer logs in: {kept_login:?}"
    );

    // Act: a third setup_ci, GitHub well again, rotates the key.
    cw.fake.fail_secret("DEPLOY_SSH_KEY", None);
    let third = payload(&cw.w, true);
    let rotated = cw.w.deploy(&third).await;

    // Assert: only the newest key is left, and it logs in.
    assert_eq!(rotated.status, JobStatus::Success, "{rotated:?}");
    let ci = ci_of(&rotated);
    assert_eq!(ci.status, CiStatus::Success, "{ci:?}");
    assert_eq!(ci.error, None);
    let new = Stored::read(&cw.fake);
    assert_ne!(new.get("DEPLOY_SSH_KEY"), stored.get("DEPLOY_SSH_KEY"));
    let new_fingerprint = ssh_keygen_fingerprint(new.get("DEPLOY_SSH_KEY"), cw.dir.path());
    assert_eq!(
        ci.key_fingerprint.as_deref(),
        Some(new_fingerprint.as_str())
    );
    assert!(![&fingerprint, &unstored_fingerprint].contains(&&new_fingerprint));
    // The unstored key's private half was never seen: its line is gone.
    assert_eq!(cw.server_fingerprints(), [new_fingerprint]);
    let old_login = cw.ssh_with(&stored, &user, "true").await;
    assert!(
        !old_login.success(),
        "the old key still logs in: {old_login:?}"
    );
    let new_login = cw.ssh_with(&new, &user, "true").await;
    assert!(new_login.success(), "{new_login:?}");

    let ids = [
        first["request_id"].as_str().unwrap(),
        second["request_id"].as_str().unwrap(),
        third["request_id"].as_str().unwrap(),
    ];
    for key in [stored.get("DEPLOY_SSH_KEY"), new.get("DEPLOY_SSH_KEY")] {
        assert_key_nowhere(&cw, &ids, key).await;
    }
}

#[tokio::test]
async fn a_github_refusal_fails_ci_but_not_the_deploy_and_a_failed_deploy_skips_ci() {
    // Arrange: credentials without `secrets: write`.
    let cw = ci_world(FakeConfig {
        secrets_write: false,
        ..FakeConfig::default()
    })
    .await;

    // Act
    let refused = cw.w.deploy(&payload(&cw.w, true)).await;
    let mut broken = payload(&cw.w, true);
    broken["github_token_ref"] = json!("env:NO_SUCH_VARIABLE_FOR_CI_TEST");
    let failed = cw.w.deploy(&broken).await;

    // Assert
    assert_eq!(refused.status, JobStatus::Success, "{refused:?}");
    let ci = ci_of(&refused);
    assert_eq!(ci.status, CiStatus::Failed, "{ci:?}");
    assert_eq!(ci.key_fingerprint, None);
    assert!(ci.secrets.is_empty(), "{ci:?}");
    let error = ci.error.unwrap();
    assert_eq!(error.code, ErrorCode::ProviderError);
    assert_eq!(error.details["reason"], "forbidden");
    assert!(
        error.message.contains("secrets: write"),
        "{}",
        error.message
    );
    assert!(cw.fake.secret(REPO, "DEPLOY_SSH_KEY").is_none());

    assert_eq!(failed.status, JobStatus::Failed, "{failed:?}");
    assert_eq!(
        failed.error.as_ref().unwrap().code,
        ErrorCode::SecretUnresolved
    );
    assert_eq!(ci_of(&failed), CiReport::skipped());
}

/// `SHA256:...` of the private key `text`, as OpenSSH computes it.
fn ssh_keygen_fingerprint(text: &str, dir: &Path) -> String {
    fingerprint_of(&write_private(dir, "fingerprint_key", text))
}

/// `SHA256:...` of the key in `file` (private or public), by `ssh-keygen -l`.
fn fingerprint_of(file: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_owned()
}
