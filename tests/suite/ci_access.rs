//! `ansible/playbooks/ci_access.yml` run for real (`infra_become=true`, sudo
//! on the test host) against a `TestHost`, creating a real CI account per
//! test (`SystemUser`). What counts is what sshd does afterwards: which key
//! logs in as whom, with a known_hosts holding only the host's key.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;

const PROJECT: &str = "my-app";
/// Another project whose name starts with `PROJECT`: its lines must survive.
const OTHER_PROJECT_LINE: &str = "restrict ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherProjectKeyOtherProjectKeyOtherProj infra-ci:my-app-2";
/// A line nobody tagged (added by hand): never touched.
const UNTAGGED_LINE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUntaggedKeyUntaggedKeyUntaggedKeyUntagged admin@laptop";

/// A test host, the CI account's name and this test's key pairs.
struct CiFixture {
    // Before `user`: sshd and its sessions end before the account goes.
    host: TestHost,
    user: SystemUser,
    dir: tempfile::TempDir,
    known_hosts: PathBuf,
}

/// One key pair made by `ssh-keygen`.
struct KeyPair {
    private: PathBuf,
    /// `ssh-ed25519 AAAA...`, no comment: the form the worker passes.
    public: String,
}

impl CiFixture {
    async fn new() -> CiFixture {
        assert!(
            Path::new("/usr/bin/sudo").exists(),
            "ci_access.yml runs with become through sudo: install it (see .ci/run)"
        );
        let host = TestHost::start().await;
        let user = SystemUser::unique("ci-test");
        let dir = tempfile::tempdir().expect("temp dir for keys");
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, host.known_hosts_line() + "\n").expect("known_hosts");
        CiFixture {
            host,
            user,
            dir,
            known_hosts,
        }
    }

    fn keygen(&self, name: &str) -> KeyPair {
        let private = self.dir.path().join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci@test", "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .status()
            .expect("run ssh-keygen");
        assert!(status.success(), "ssh-keygen {name}");
        let text = std::fs::read_to_string(private.with_extension("pub")).unwrap();
        let public = text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        KeyPair { private, public }
    }

    async fn ci_access(&self, action: &str, key: &KeyPair) -> PlaybookRun {
        let vars = json!({
            "ci_user": self.user.name(),
            "project_name": PROJECT,
            "ci_public_key": key.public,
            "ci_action": action,
            "ci_access_project_dir": self.project_dir(),
            "infra_become": true,
        });
        run_playbook(&self.host, "ci_access.yml", &vars, &[], &[]).await
    }

    /// `command` over SSH as `user` with `key`, host key checked strictly.
    async fn ssh(&self, user: &str, key: &Path, options: &[&str], command: &str) -> SshOutput {
        self.host
            .ssh_as(user, key, &self.known_hosts, options, command)
            .await
    }

    /// Asserts that `key` logs in as the CI user.
    async fn assert_logs_in(&self, key: &KeyPair) {
        let out = self
            .ssh(self.user.name(), &key.private, &[], "id -un")
            .await;
        assert!(out.success(), "{} must log in: {out:?}", key.public);
        assert_eq!(out.stdout.trim(), self.user.name());
    }

    /// Asserts that sshd refuses `key` for `user`.
    async fn assert_refused(&self, user: &str, key: &KeyPair) {
        let out = self.ssh(user, &key.private, &[], "true").await;
        assert!(
            !out.success() && out.stderr.contains("Permission denied"),
            "{} must not log in as {user}: {out:?}",
            key.public
        );
    }

    /// The project's checkout on the "server": in the test's own directory.
    fn project_dir(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// A deployed project's `.env` as a deploy leaves it: root's, 0640.
    fn write_project_env(&self) -> PathBuf {
        // The CI user must traverse the test's directory to reach it.
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(self.project_dir()).unwrap();
        let env = self.project_dir().join(".env");
        std::fs::write(&env, "POSTGRES_PASSWORD=for-compose-only\n").unwrap();
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o640)).unwrap();
        env
    }

    fn authorized_keys_path(&self) -> PathBuf {
        self.user
            .home()
            .expect("the CI user exists")
            .join(".ssh/authorized_keys")
    }

    fn authorized_keys(&self) -> Vec<String> {
        std::fs::read_to_string(self.authorized_keys_path())
            .expect("read authorized_keys")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn line_for(&self, key: &KeyPair) -> String {
        format!("restrict {} infra-ci:{PROJECT}", key.public)
    }

    /// Mode, owner uid and group gid of `path` itself (a link is not
    /// followed).
    fn mode_and_owner(path: &Path) -> (u32, u32, u32) {
        let meta =
            std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
    }

    /// The CI user's uid.
    fn uid(&self) -> u32 {
        self.id("-u")
    }

    /// `id <flag> <user>` as a number.
    fn id(&self, flag: &str) -> u32 {
        let out = Command::new("id")
            .args([flag, self.user.name()])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// The CI user's own files: its home, `.ssh` and `authorized_keys` are
    /// root's (it cannot point them elsewhere), `.docker` is its own.
    fn assert_ssh_files_are_roots(&self) {
        let home = self.user.home().expect("the CI user exists");
        let ssh_dir = home.join(".ssh");
        assert_eq!(CiFixture::mode_and_owner(&home), (0o755, 0, 0), "home");
        assert_eq!(CiFixture::mode_and_owner(&ssh_dir), (0o755, 0, 0), ".ssh");
        assert_eq!(
            CiFixture::mode_and_owner(&self.authorized_keys_path()),
            (0o644, 0, 0),
            "authorized_keys"
        );
        assert_eq!(
            CiFixture::mode_and_owner(&home.join(".docker")),
            (0o700, self.uid(), self.id("-g")),
            ".docker"
        );
    }
}

#[tokio::test]
async fn add_makes_a_docker_only_user_whose_restricted_key_logs_in_and_a_rerun_changes_nothing() {
    // Arrange
    let fx = CiFixture::new().await;
    let key = fx.keygen("key1");
    let env = fx.write_project_env();

    // Act
    let first = fx.ci_access("add", &key).await;
    let second = fx.ci_access("add", &key).await;

    // Assert
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.changed().is_some_and(|n| n > 0), "{first:?}");
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(
        second.changed(),
        Some(0),
        "a rerun changed something: {second:?}"
    );

    let name = fx.user.name();
    assert_eq!(fx.user.groups(), [name, "docker"], "groups of {name}");
    assert_eq!(fx.user.shadow_password().as_deref(), Some("*"));
    assert!(fx.uid() != 0);
    assert_eq!(fx.authorized_keys(), [fx.line_for(&key)]);
    fx.assert_ssh_files_are_roots();

    fx.assert_logs_in(&key).await;
    fx.assert_refused("root", &key).await;
    // `docker compose` as the CI user reads the project's .env.
    let env_text = fx
        .ssh(name, &key.private, &[], &format!("cat {}", env.display()))
        .await;
    assert!(env_text.success(), "{env_text:?}");
    assert_eq!(env_text.stdout, "POSTGRES_PASSWORD=for-compose-only\n");
    assert_eq!(CiFixture::mode_and_owner(&env), (0o640, 0, fx.id("-g")));
    let sudo = fx.ssh(name, &key.private, &[], "sudo -n true").await;
    assert!(!sudo.success(), "the CI user must not sudo: {sudo:?}");

    // `restrict` forbids a pty (a forced `-tt` then gives up); the test's
    // own unrestricted key gets one, so the check can tell the difference.
    let tty = fx.ssh(name, &key.private, &["-tt"], "tty").await;
    assert!(
        !tty.stdout.contains("/dev/pts/") && tty.stderr.contains("PTY allocation request failed"),
        "{tty:?}"
    );
    let control = fx
        .ssh(fx.host.user(), &fx.host.client_key_path(), &["-tt"], "tty")
        .await;
    assert!(control.stdout.contains("/dev/pts/"), "{control:?}");
}

#[tokio::test]
async fn rotation_retires_only_the_projects_old_key_and_revoke_removes_only_the_projects_lines() {
    // Arrange: an account that exists already, locked (`!`), with sudo as
    // its primary group and as another, a sudo grant, another project's key
    // and an untagged key, its SSH files its own.
    let fx = CiFixture::new().await;
    let name = fx.user.name().to_owned();
    let status = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", "--password", "!"])
        .args(["--gid", "sudo", "--groups", "sudo", &name])
        .status()
        .expect("run useradd");
    assert!(status.success(), "useradd {name}");
    let grant = format!("/etc/sudoers.d/90-infra-{name}");
    std::fs::write(&grant, format!("{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")).unwrap();
    std::fs::set_permissions(&grant, std::fs::Permissions::from_mode(0o440)).unwrap();
    let home = fx.user.home().unwrap();
    std::fs::create_dir(home.join(".ssh")).unwrap();
    std::fs::write(
        fx.authorized_keys_path(),
        format!("{OTHER_PROJECT_LINE}\n{UNTAGGED_LINE}\n"),
    )
    .unwrap();
    let chown = Command::new("chown")
        .args(["-R", &format!("{name}:"), &home.to_string_lossy()])
        .status()
        .unwrap();
    assert!(chown.success());
    let (key1, key2) = (fx.keygen("key1"), fx.keygen("key2"));

    // Act + Assert: add the first key.
    let add1 = fx.ci_access("add", &key1).await;
    assert_eq!(add1.code, 0, "{add1:?}");
    // Its own group first: sudo is neither primary nor supplementary.
    assert_eq!(fx.user.groups(), [name.as_str(), "docker"]);
    fx.assert_ssh_files_are_roots();
    assert_eq!(fx.user.shadow_password().as_deref(), Some("*"));
    assert!(!Path::new(&grant).exists(), "the sudo grant survived");
    fx.assert_logs_in(&key1).await;
    let sudo = fx.ssh(&name, &key1.private, &[], "sudo -n true").await;
    assert!(!sudo.success(), "the CI user must not sudo: {sudo:?}");

    // Rotation: the new key first, then the old one retired.
    let add2 = fx.ci_access("add", &key2).await;
    assert_eq!(add2.code, 0, "{add2:?}");
    fx.assert_logs_in(&key1).await;
    fx.assert_logs_in(&key2).await;
    // The new key's line without options, as a hand edit leaves it: `add`
    // counts it as the key's line, so retire must keep it.
    let bare = format!("{} infra-ci:{PROJECT}", key2.public);
    let text = std::fs::read_to_string(fx.authorized_keys_path()).unwrap();
    let text = text.replace(&fx.line_for(&key2), &bare);
    std::fs::write(fx.authorized_keys_path(), text).unwrap();
    let retire = fx.ci_access("retire", &key2).await;
    assert_eq!(retire.code, 0, "{retire:?}");
    fx.assert_refused(&name, &key1).await;
    fx.assert_logs_in(&key2).await;
    assert_eq!(
        fx.authorized_keys(),
        [
            OTHER_PROJECT_LINE.to_owned(),
            UNTAGGED_LINE.to_owned(),
            bare
        ],
        "retire removed the kept key's line"
    );
    assert_eq!(
        CiFixture::mode_and_owner(&fx.authorized_keys_path()),
        (0o644, 0, 0),
        "retire rewrote authorized_keys with another mode or owner"
    );

    // Revoke: the project's lines go, nothing else.
    let revoke = fx.ci_access("revoke", &key2).await;
    assert_eq!(revoke.code, 0, "{revoke:?}");
    fx.assert_refused(&name, &key2).await;
    assert_eq!(
        fx.authorized_keys(),
        [OTHER_PROJECT_LINE.to_owned(), UNTAGGED_LINE.to_owned()]
    );
}

#[tokio::test]
async fn add_refuses_an_authorized_keys_that_links_elsewhere_and_leaves_the_target_alone() {
    // Arrange: an existing account whose authorized_keys is its own symlink
    // to a file of the test's (as it could point one at root's).
    let fx = CiFixture::new().await;
    let name = fx.user.name().to_owned();
    let status = Command::new("useradd")
        .args([
            "--create-home",
            "--shell",
            "/bin/sh",
            "--password",
            "*",
            &name,
        ])
        .status()
        .expect("run useradd");
    assert!(status.success(), "useradd {name}");
    let home = fx.user.home().unwrap();
    std::fs::create_dir(home.join(".ssh")).unwrap();
    let target = fx.dir.path().join("roots_authorized_keys");
    std::fs::write(&target, format!("{UNTAGGED_LINE}\n")).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&target, fx.authorized_keys_path()).unwrap();
    let chown = Command::new("chown")
        .args(["-hR", &format!("{name}:"), &home.to_string_lossy()])
        .status()
        .unwrap();
    assert!(chown.success());
    let key = fx.keygen("key1");

    // Act
    let add = fx.ci_access("add", &key).await;

    // Assert
    assert_ne!(add.code, 0, "add wrote through a symlink: {add:?}");
    assert!(add.output().contains("is a symlink"), "{add:?}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        format!("{UNTAGGED_LINE}\n")
    );
    assert_eq!(CiFixture::mode_and_owner(&target), (0o600, 0, 0));
    fx.assert_refused(&name, &key).await;
}
