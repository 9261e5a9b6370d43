//! The worker's own credentials, which no job may name whatever the
//! patterns say. They are gathered from the settings in one place
//! (`credential_settings`, `credential_files`) and compared with a job's
//! reference by what both resolve to: the same variable, the same file
//! (after symlinks, by device and inode), the same Vault secret.

use std::path::{Path, PathBuf};

use super::pattern::{path_form, vault_parts};
use crate::config::Settings;

/// Environment variables a job may never name, whatever their case (the
/// settings' `INFRA__` prefix is read case-insensitively): the worker's
/// settings, libpq's connection variables, Ansible's own, and the Vault and
/// OpenBao CLIs' (`VAULT_TOKEN`, `BAO_TOKEN`, ...).
pub(crate) const WORKER_ENV_PREFIXES: [&str; 5] = ["INFRA__", "PG", "ANSIBLE_", "VAULT_", "BAO_"];

/// Every setting that names a credential of the worker's own, by key. A
/// new login setting (a secret store's, a provider's) belongs here.
pub(crate) fn credential_settings(settings: &Settings) -> Vec<(&'static str, &str)> {
    let named = [
        ("ansible.ssh_key_ref", &settings.ansible.ssh_key_ref),
        ("time4vps.username_ref", &settings.time4vps.username_ref),
        ("time4vps.password_ref", &settings.time4vps.password_ref),
        ("redis.password_ref", &settings.redis.password_ref),
        ("redis.client_key_ref", &settings.redis.tls.client_key_ref),
        ("postgres.password_ref", &settings.postgres.password_ref),
        ("console.token_ref", &settings.console.token_ref),
    ];
    let vault = settings.vault.login_refs.iter();
    let github_app = settings.github.app.as_ref();
    named
        .into_iter()
        .filter_map(|(key, reference)| reference.as_deref().map(|r| (key, r)))
        .chain(vault.map(|(key, reference)| (*key, reference.as_str())))
        .chain(github_app.map(|app| ("github.app_private_key_ref", app.private_key_ref.as_str())))
        .collect()
}

/// Files holding credentials of the worker's own that no setting names as
/// a reference but that may lie in the secrets directory: libpq's password
/// file and client key (a compose file mounts them as secrets), and the
/// service-account token Vault's Kubernetes login sends.
pub(crate) fn credential_files(settings: &Settings) -> Vec<PathBuf> {
    let libpq = ["PGPASSFILE", "PGSSLKEY"]
        .into_iter()
        .filter_map(std::env::var_os)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    libpq
        .chain([settings.vault.kubernetes_jwt_path.clone()])
        .collect()
}

/// One credential, in the form a job's reference is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    Env(String),
    /// A file, wherever it is; compared after symlinks.
    File(PathBuf),
    /// The canonical `MOUNT/PATH` of a Vault secret: all its fields.
    Vault(String),
}

impl Credential {
    /// What a reference of the worker's (a setting, a server's key) names;
    /// `None` when no job reference could resolve to it.
    fn of_reference(reference: &str, secrets_dir: &Path) -> Option<Credential> {
        match reference.split_once(':')? {
            ("env", name) => Some(Credential::Env(name.to_owned())),
            // Joined as written: canonicalizing at check time follows it
            // wherever it leads then (a rotated Kubernetes secret).
            ("file", name) => Some(Credential::File(secrets_dir.join(name))),
            ("vault", rest) => vault_parts(rest).map(|(path, _)| Credential::Vault(path)),
            _ => None,
        }
    }
}

/// The worker's credentials known at start, and where `file:` references
/// live; a registered server's key is added at each check.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    fixed: Vec<Credential>,
    secrets_dir: PathBuf,
}

impl Credentials {
    /// Gathers them from the settings and the environment.
    pub(crate) fn from_settings(settings: &Settings) -> Credentials {
        let secrets_dir = settings.secrets.dir.clone();
        let mut fixed: Vec<Credential> = credential_settings(settings)
            .into_iter()
            .filter_map(|(_, reference)| Credential::of_reference(reference, &secrets_dir))
            .collect();
        fixed.extend(credential_files(settings).into_iter().map(Credential::File));
        Credentials { fixed, secrets_dir }
    }

    /// Why `reference` reaches one of the worker's credentials (these, or
    /// one of `more`: references kept elsewhere, the servers' keys), or
    /// `None` if it does not.
    pub(crate) fn named_by(&self, reference: &str, more: &[String]) -> Option<&'static str> {
        let extra = more
            .iter()
            .filter_map(|r| Credential::of_reference(r, &self.secrets_dir));
        let all: Vec<Credential> = self.fixed.iter().cloned().chain(extra).collect();
        match reference.split_once(':')? {
            ("env", name) => env_verdict(name, &all),
            ("file", name) => self.file_verdict(name, &all),
            ("vault", rest) => vault_verdict(rest, &all),
            _ => None,
        }
    }

    /// A `file:` reference, followed to the file it reads.
    fn file_verdict(&self, name: &str, all: &[Credential]) -> Option<&'static str> {
        // Climbing or absolute names are refused as malformed by the
        // resolver before any file is opened.
        path_form(name)?;
        let Ok(dir) = self.secrets_dir.canonicalize() else {
            return None; // no secrets directory: nothing can be read from it
        };
        let file = match self.secrets_dir.join(name).canonicalize() {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => return Some("cannot be checked against the worker's own credentials"),
        };
        if !file.starts_with(&dir) {
            return Some("leads outside the secrets directory");
        }
        let same = all.iter().any(|credential| match credential {
            Credential::File(path) => same_file(&file, path),
            _ => false,
        });
        same.then_some("is a credential of the worker's own")
    }
}

fn env_verdict(name: &str, all: &[Credential]) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    if WORKER_ENV_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        return Some(
            "names the worker's own configuration (INFRA__, PG*, ANSIBLE_*, VAULT_*, BAO_*)",
        );
    }
    all.contains(&Credential::Env(name.to_owned()))
        .then_some("is a credential of the worker's own")
}

fn vault_verdict(rest: &str, all: &[Credential]) -> Option<&'static str> {
    let Some((path, _)) = vault_parts(rest) else {
        return Some("cannot be compared with the worker's own credentials");
    };
    // Every field of the secret: a whole-secret read includes the one the
    // worker logs in with, and its other fields are the worker's too.
    all.contains(&Credential::Vault(path))
        .then_some("is a credential of the worker's own")
}

/// True when `file` (canonical) is `credential` after symlinks, or the
/// same inode under another name (a hard link, a bind mount).
fn same_file(file: &Path, credential: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(credential) = credential.canonicalize() else {
        return false;
    };
    if credential == file {
        return true;
    }
    match (std::fs::metadata(file), std::fs::metadata(&credential)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secrets dir holding the deploy key at `ssh/id_ed25519` and a
    /// project's `.env` at `projects/a.env`; the key is the one credential.
    fn arranged() -> (tempfile::TempDir, Credentials) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ssh")).unwrap();
        std::fs::create_dir_all(dir.path().join("projects")).unwrap();
        std::fs::write(dir.path().join("ssh/id_ed25519"), "KEY").unwrap();
        std::fs::write(dir.path().join("projects/a.env"), "A=1").unwrap();
        let secrets_dir = dir.path().to_owned();
        let fixed = vec![
            Credential::of_reference("file:ssh/id_ed25519", &secrets_dir).unwrap(),
            Credential::of_reference("env:DEPLOY_KEY", &secrets_dir).unwrap(),
            Credential::of_reference("vault:secret/infra/ssh#key", &secrets_dir).unwrap(),
        ];
        (dir, Credentials { fixed, secrets_dir })
    }

    #[test]
    fn the_deploy_key_is_refused_under_every_spelling() {
        let (_dir, credentials) = arranged();
        for spelling in [
            "file:ssh/id_ed25519",
            "file:ssh/./id_ed25519",
            "file:ssh//id_ed25519",
            "file:./ssh/id_ed25519",
            "file:ssh/id_ed25519/",
        ] {
            assert!(credentials.named_by(spelling, &[]).is_some(), "{spelling}");
        }
        assert_eq!(credentials.named_by("file:projects/a.env", &[]), None);
    }

    #[test]
    fn a_symlink_or_hard_link_to_the_deploy_key_is_refused() {
        let (dir, credentials) = arranged();
        std::os::unix::fs::symlink("../ssh/id_ed25519", dir.path().join("projects/link")).unwrap();
        std::fs::hard_link(
            dir.path().join("ssh/id_ed25519"),
            dir.path().join("projects/hard"),
        )
        .unwrap();
        assert!(credentials.named_by("file:projects/link", &[]).is_some());
        assert!(credentials.named_by("file:projects/hard", &[]).is_some());
    }

    #[test]
    fn a_symlink_leading_out_of_the_secrets_dir_is_refused() {
        let (dir, credentials) = arranged();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("projects/out")).unwrap();
        assert_eq!(
            credentials.named_by("file:projects/out", &[]),
            Some("leads outside the secrets directory")
        );
    }

    #[test]
    fn a_missing_or_malformed_file_is_left_to_the_resolver() {
        let (_dir, credentials) = arranged();
        assert_eq!(credentials.named_by("file:projects/missing", &[]), None);
        assert_eq!(credentials.named_by("file:../etc/passwd", &[]), None);
        assert_eq!(credentials.named_by("file:/etc/passwd", &[]), None);
    }

    #[test]
    fn a_registered_servers_key_is_refused() {
        let (dir, credentials) = arranged();
        std::fs::write(dir.path().join("projects/server.key"), "K2").unwrap();
        let servers = ["file:projects/server.key".to_owned()];
        assert!(
            credentials
                .named_by("file:projects//server.key", &servers)
                .is_some()
        );
        assert_eq!(credentials.named_by("file:projects/server.key", &[]), None);
    }

    #[test]
    fn the_workers_environment_is_refused_by_prefix_and_by_name() {
        let (_dir, credentials) = arranged();
        for name in [
            "env:INFRA__POSTGRES__URL",
            "env:PGPASSWORD",
            "env:PGPASSFILE",
            "env:ANSIBLE_CONFIG",
            "env:DEPLOY_KEY",
            "env:infra__postgres__url",
            "env:Infra__Redis__Url",
            "env:VAULT_TOKEN",
            "env:BAO_TOKEN",
        ] {
            assert!(credentials.named_by(name, &[]).is_some(), "{name}");
        }
        for name in ["env:GITHUB_TOKEN", "env:INFRA_X", "env:deploy_key"] {
            assert_eq!(credentials.named_by(name, &[]), None, "{name}");
        }
    }

    #[test]
    fn a_vault_credential_is_refused_with_any_field_and_spelling() {
        let (_dir, credentials) = arranged();
        for reference in [
            "vault:secret/infra/ssh#key",
            "vault:secret/infra/ssh",
            "vault:secret/infra/ssh#other",
            "vault:secret//infra/./ssh#key",
            "vault:secret/infra%2Fssh",
        ] {
            assert!(
                credentials.named_by(reference, &[]).is_some(),
                "{reference}"
            );
        }
        assert_eq!(credentials.named_by("vault:secret/projects/a", &[]), None);
    }

    fn settings_with(toml: &str) -> Settings {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        let required = "[redis]\nurl = \"redis://x\"\n[postgres]\nurl = \"postgres://x@y/z\"\n";
        std::io::Write::write_all(&mut file, format!("{required}{toml}").as_bytes()).unwrap();
        Settings::load(Some(file.path())).unwrap()
    }

    #[test]
    fn the_credentials_come_from_the_login_settings() {
        let mut settings = settings_with("");
        settings.ansible.ssh_key_ref = Some("file:deploy_key".into());
        settings.time4vps.password_ref = Some("env:T4V_PASSWORD".into());
        settings.postgres.password_ref = Some("file:postgres/password".into());
        settings.console.token_ref = Some("file:console/token".into());
        settings.github.app = Some(crate::config::GithubApp {
            app_id: 1,
            private_key_ref: "file:github/app.pem".into(),
        });
        let keys: Vec<&str> = credential_settings(&settings)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            keys,
            [
                "ansible.ssh_key_ref",
                "time4vps.password_ref",
                "postgres.password_ref",
                "console.token_ref",
                "github.app_private_key_ref"
            ]
        );
    }

    #[test]
    fn every_vault_login_given_is_a_credential_whatever_the_method() {
        // The method is a token, yet the AppRole secret id lies in the
        // secrets dir too: no job may name it either.
        let dir = tempfile::tempdir().unwrap();
        for file in ["vault/token", "vault/secret-id", "sa/token", "projects/app"] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let toml = format!(
            "[secrets]\ndir = {dir:?}\n[vault]\nauth = \"token\"\n\
             token_ref = \"file:vault/token\"\napprole_secret_id_ref = \"file:vault/secret-id\"\n\
             kubernetes_jwt_path = {jwt:?}\n",
            dir = dir.path(),
            jwt = dir.path().join("sa/token"),
        );
        let settings = settings_with(&toml);
        let keys: Vec<&str> = credential_settings(&settings)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, ["vault.token_ref", "vault.approle_secret_id_ref"]);
        let credentials = Credentials::from_settings(&settings);
        for reference in [
            "file:vault//secret-id",
            "file:vault/./token",
            "file:sa/token",
        ] {
            assert!(
                credentials.named_by(reference, &[]).is_some(),
                "{reference} names a credential"
            );
        }
        assert_eq!(credentials.named_by("file:projects/app", &[]), None);
    }
}
