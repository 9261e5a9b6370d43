//! CI deploy access (contract section 7): what a repository's GitHub
//! Actions needs to deploy to one server on its own. A key pair made for
//! the project (`key`), the server's pinned host key as CI must check it,
//! the secrets' names and values, and the result's `ci` object. Plain data,
//! no I/O: `workflow::ci` puts the key on the server and the secrets in
//! GitHub.

mod key;

pub use key::{CiKey, KeyError};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::{DeployJob, JobError};

/// Where projects live on a server: the deploy play's `services_root`,
/// unless the operator set another in `ansible.extra_vars`.
const SERVICES_ROOT: &str = "/opt/services";

/// The compose files CI deploys with: the deploy role's
/// `deploy_compose_files`, unless the operator set others.
const COMPOSE_FILES: [&str; 2] = ["infra/compose.base.yml", "infra/compose.prod.yml"];

/// The project's directory on the server, as the deploy play computes it
/// from `services_root` (the operator's, or the play's default).
fn project_path(operator_vars: &Map<String, Value>, job: &DeployJob) -> String {
    let root = operator_vars.get("services_root").and_then(Value::as_str);
    let root = root.unwrap_or(SERVICES_ROOT).trim_end_matches('/');
    format!("{root}/{}", job.project_name.as_str())
}

/// The compose files the deploy role uses (`deploy_compose_files`, the
/// operator's or the role's default), space-separated.
fn compose_files(operator_vars: &Map<String, Value>) -> String {
    let files = operator_vars
        .get("deploy_compose_files")
        .and_then(Value::as_array);
    match files {
        Some(files) => files
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        None => COMPOSE_FILES.join(" "),
    }
}

/// What CI gets for one project on one server.
pub struct Access<'a> {
    pub job: &'a DeployJob,
    /// The server's SSH port.
    pub ssh_port: u16,
    /// The CI login (`ci.deploy_user`).
    pub user: &'a str,
    /// `known_hosts` lines for `server_ip` ([`known_hosts_for`]).
    pub known_hosts: String,
    pub key: &'a CiKey,
    /// `ansible.extra_vars`: where the deploy put the project, if the
    /// operator moved it.
    pub operator_vars: &'a Map<String, Value>,
}

impl Access<'_> {
    /// The secrets of contract section 7, in the order they are written.
    /// `DEPLOY_SSH_KEY` comes last: until it is stored GitHub holds the old
    /// key, which the server still accepts, so a write that stops part-way
    /// leaves CI with a working pair; once it is stored, so is the rest.
    pub fn secrets(&self) -> Vec<(&'static str, SecretString)> {
        let plain = |text: String| SecretString::from(text);
        vec![
            ("DEPLOY_HOST", plain(self.job.server_ip.as_str().to_owned())),
            ("DEPLOY_PORT", plain(self.ssh_port.to_string())),
            ("DEPLOY_USER", plain(self.user.to_owned())),
            ("DEPLOY_KNOWN_HOSTS", plain(self.known_hosts.clone())),
            (
                "DEPLOY_PROJECT_PATH",
                plain(project_path(self.operator_vars, self.job)),
            ),
            (
                "DEPLOY_COMPOSE_FILES",
                plain(compose_files(self.operator_vars)),
            ),
            ("DEPLOY_SSH_KEY", self.key.private_openssh().clone()),
        ]
    }
}

/// The pinned host keys (`known_hosts` lines as ssh wrote them for the
/// address it connected to) rewritten for `host` on `port`: the name CI
/// connects to (`DEPLOY_HOST`), which may be a host name where the pin is
/// kept under its address. Marker lines (`@revoked`, `@cert-authority`)
/// are left out; `None` when no key is left.
pub fn known_hosts_for(host: &str, port: u16, pinned: &str) -> Option<String> {
    let pattern = if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    };
    let lines: Vec<String> = pinned
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('@'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (kind, key) = (fields.next()?, fields.next()?);
            Some(format!("{pattern} {kind} {key}\n"))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.concat())
}

/// `ci.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CiStatus {
    /// The secrets are stored and the key logs in.
    Success,
    /// CI access could not be set up; the deploy itself is not affected.
    Failed,
    /// The deploy failed, so nothing was set up.
    Skipped,
}

/// The result's `ci` object: `{"status", "secrets", "key_fingerprint",
/// "error"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiReport {
    pub status: CiStatus,
    /// The secrets stored, by name.
    pub secrets: Vec<String>,
    /// The fingerprint of the key stored in `DEPLOY_SSH_KEY`, when it was.
    pub key_fingerprint: Option<String>,
    /// Why CI access failed; with `success`, what is left to tidy up.
    pub error: Option<JobError>,
}

impl CiReport {
    /// `setup_ci` on a deploy that failed.
    pub fn skipped() -> CiReport {
        CiReport {
            status: CiStatus::Skipped,
            secrets: Vec::new(),
            key_fingerprint: None,
            error: None,
        }
    }

    /// The report as the result's `ci` value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a CI report always serializes")
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;

    fn job(server_ip: &str) -> DeployJob {
        crate::job::minimal_for_test("acme/My-App", server_ip)
    }

    #[test]
    fn the_secrets_are_the_contracts_with_the_private_key_written_last() {
        let key = CiKey::generate().unwrap();
        let job = job("203.0.113.10");
        let access = Access {
            job: &job,
            ssh_port: 2222,
            user: "ci",
            known_hosts: "[203.0.113.10]:2222 ssh-ed25519 AAAA\n".into(),
            key: &key,
            operator_vars: &Map::new(),
        };
        let secrets = access.secrets();
        let shown: Vec<(&str, &str)> = secrets
            .iter()
            .map(|(name, value)| (*name, value.expose_secret()))
            .collect();
        assert_eq!(
            &shown[..6],
            &[
                ("DEPLOY_HOST", "203.0.113.10"),
                ("DEPLOY_PORT", "2222"),
                ("DEPLOY_USER", "ci"),
                (
                    "DEPLOY_KNOWN_HOSTS",
                    "[203.0.113.10]:2222 ssh-ed25519 AAAA\n"
                ),
                ("DEPLOY_PROJECT_PATH", "/opt/services/my-app"),
                (
                    "DEPLOY_COMPOSE_FILES",
                    "infra/compose.base.yml infra/compose.prod.yml"
                ),
            ]
        );
        assert_eq!(shown[6].0, "DEPLOY_SSH_KEY");
        assert_eq!(shown[6].1, key.private_openssh().expose_secret());
    }

    #[test]
    fn the_project_path_and_compose_files_follow_the_operators_vars() {
        let job = job("203.0.113.10");
        let moved =
            json!({"services_root": "/srv/apps/", "deploy_compose_files": ["a.yml", "b.yml"]});
        let moved = moved.as_object().unwrap();
        assert_eq!(project_path(moved, &job), "/srv/apps/my-app");
        assert_eq!(compose_files(moved), "a.yml b.yml");
    }

    #[test]
    fn known_hosts_name_the_host_ci_connects_to_with_its_port() {
        let pinned = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza key-comment\n\
                      @revoked * ssh-rsa AAAAB3\n\
                      \n\
                      127.0.0.1 ecdsa-sha2-nistp256 AAAAE2V\n";
        assert_eq!(
            known_hosts_for("Deploy.Example.com", 2222, pinned).unwrap(),
            "[deploy.example.com]:2222 ssh-ed25519 AAAAC3Nza\n\
             [deploy.example.com]:2222 ecdsa-sha2-nistp256 AAAAE2V\n"
        );
        assert_eq!(
            known_hosts_for("2001:db8::1", 22, "|1|salt|hash ssh-ed25519 AAAA\n").unwrap(),
            "2001:db8::1 ssh-ed25519 AAAA\n"
        );
        assert_eq!(known_hosts_for("h", 22, "@revoked * ssh-rsa AAAA\n"), None);
        assert_eq!(known_hosts_for("h", 22, "junk\n"), None);
    }

    #[test]
    fn a_report_serializes_as_the_contracts_ci_object() {
        assert_eq!(
            CiReport::skipped().to_value(),
            json!({"status": "skipped", "secrets": [], "key_fingerprint": null, "error": null})
        );
    }
}
