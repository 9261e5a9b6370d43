//! SSH reachability: a real handshake and `true` on the target, classified
//! failures, and the retry policy for unreachable hosts. A probe made for a
//! playbook run leaves its connection behind as the run's ControlMaster, so
//! the playbook does not shake hands again.

use std::io::{Read, Seek};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::process::Command;

use crate::ansible::close_control_masters;

/// How to reach a host for a probe. Paths point into the job's private
/// directory.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Host name or IP address.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// The private key to offer, and only it; `None`: ssh's defaults.
    pub key_file: Option<PathBuf>,
    /// The run's own `known_hosts`, never the user's.
    pub known_hosts_file: PathBuf,
    /// `true`: the known_hosts file holds the pinned key and nothing else
    /// is accepted; `false`: accept and record a first key.
    pub strict_host_key: bool,
    /// ssh's `ConnectTimeout` (whole seconds, at least one).
    pub connect_timeout: Duration,
    /// The ControlPath (`<dir>/%C`) the playbook's ssh will use: a
    /// successful probe leaves its connection there as a ControlMaster
    /// (see [`MASTER_OPTIONS`]); `None`: the connection ends with the probe.
    pub control_path: Option<PathBuf>,
}

/// How a probe's ControlMaster is made: as `ssh_args` in `ansible.cfg`
/// makes the playbook's own (persistence, compression, keepalives), so a
/// playbook on the probe's connection sees the connection it would have
/// made. A test holds them to `ansible.cfg`.
pub const MASTER_OPTIONS: [&str; 5] = [
    "ControlMaster=auto",
    "ControlPersist=60s",
    "Compression=yes",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=4",
];

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeFailure {
    /// The name does not resolve.
    Dns,
    /// Nothing listens on the port.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The server rejected our key.
    AuthRejected,
    /// The server's key is not the pinned one.
    HostKeyChanged,
    /// Anything else ssh complained about (its last stderr line).
    Other(String),
}

impl ProbeFailure {
    /// Only network trouble is worth another try; a wrong key or a changed
    /// host key will not fix itself.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProbeFailure::Dns
                | ProbeFailure::Refused
                | ProbeFailure::TimedOut
                | ProbeFailure::Other(_)
        )
    }

    /// The short name used in results' `details`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeFailure::Dns => "dns",
            ProbeFailure::Refused => "refused",
            ProbeFailure::TimedOut => "timed_out",
            ProbeFailure::AuthRejected => "auth_rejected",
            ProbeFailure::HostKeyChanged => "host_key_changed",
            ProbeFailure::Other(_) => "other",
        }
    }

    /// A sentence for logs and results.
    pub fn describe(&self) -> String {
        match self {
            ProbeFailure::Dns => "the host name does not resolve".to_owned(),
            ProbeFailure::Refused => "connection refused".to_owned(),
            ProbeFailure::TimedOut => "connection timed out".to_owned(),
            ProbeFailure::AuthRejected => "the server rejected the SSH key".to_owned(),
            ProbeFailure::HostKeyChanged => {
                "the server's host key differs from the pinned one".to_owned()
            }
            ProbeFailure::Other(line) => line.clone(),
        }
    }
}

/// Reads ssh's stderr; ssh's exit code (255) says nothing more.
pub fn classify(stderr: &str) -> ProbeFailure {
    let has = |needle: &str| stderr.contains(needle);
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key verification failed")
        || has("No ED25519 host key is known")
        || has("host key for") && has("has changed")
    {
        ProbeFailure::HostKeyChanged
    } else if has("Could not resolve hostname") || has("Name or service not known") {
        ProbeFailure::Dns
    } else if has("Connection refused") {
        ProbeFailure::Refused
    } else if has("timed out") || has("Connection timed out") {
        ProbeFailure::TimedOut
    } else if has("Permission denied") || has("Too many authentication failures") {
        ProbeFailure::AuthRejected
    } else {
        let last = stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("ssh failed without a message");
        ProbeFailure::Other(last.trim().chars().take(300).collect())
    }
}

/// One SSH handshake and `true` on the target. With a control path, a
/// success leaves the connection open there; a failure leaves none.
pub async fn probe(target: &ProbeTarget) -> Result<(), ProbeFailure> {
    let outcome = handshake(target).await;
    if let (Err(_), Some(control_path)) = (&outcome, &target.control_path) {
        // A master made before `true` failed, or before the deadline struck,
        // must not serve the next try or the playbook. Its directory holds
        // no other: the playbook has not started.
        if let Some(dir) = control_path.parent() {
            close_control_masters(dir).await;
        }
    }
    outcome
}

/// The ssh command of a probe, run to its exit.
async fn handshake(target: &ProbeTarget) -> Result<(), ProbeFailure> {
    // A file, not a pipe: a ControlPersist master (an older ssh's at least)
    // keeps the stderr it was started with, so a pipe's EOF would come
    // only when the master exits.
    let mut stderr = tempfile::tempfile()
        .map_err(|e| ProbeFailure::Other(format!("cannot make ssh's stderr file: {e}")))?;
    let stderr_for_ssh = stderr
        .try_clone()
        .map_err(|e| ProbeFailure::Other(format!("cannot make ssh's stderr file: {e}")))?;
    let mut cmd = Command::new("ssh");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .args(["-F", "/dev/null", "-T"])
        .arg("-p")
        .arg(target.port.to_string())
        .arg("-l")
        .arg(&target.user)
        .args(ssh_options(target))
        .arg("--")
        .arg(&target.address)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_for_ssh)
        .kill_on_drop(true);
    let deadline = target.connect_timeout * 2 + Duration::from_secs(5);
    let status = match tokio::time::timeout(deadline, cmd.status()).await {
        Err(_) => return Err(ProbeFailure::TimedOut),
        Ok(Err(e)) => return Err(ProbeFailure::Other(format!("cannot run ssh: {e}"))),
        Ok(Ok(status)) => status,
    };
    if status.success() {
        return Ok(());
    }
    let mut text = Vec::new();
    // A few lines of ssh's in a file of our own: no reason to go off-thread.
    let read = stderr
        .rewind()
        .and_then(|()| stderr.take(64 * 1024).read_to_end(&mut text));
    if let Err(e) = read {
        return Err(ProbeFailure::Other(format!(
            "cannot read ssh's stderr: {e}"
        )));
    }
    Err(classify(&String::from_utf8_lossy(&text)))
}

/// The `-o` options of a probe: batch mode, the run's known_hosts only, key
/// authentication only.
fn ssh_options(target: &ProbeTarget) -> Vec<String> {
    let mut options = vec![
        "BatchMode=yes".to_owned(),
        format!("ConnectTimeout={}", target.connect_timeout.as_secs().max(1)),
        format!(
            "StrictHostKeyChecking={}",
            if target.strict_host_key {
                "yes"
            } else {
                "accept-new"
            }
        ),
        format!("UserKnownHostsFile={}", target.known_hosts_file.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "PasswordAuthentication=no".to_owned(),
        "KbdInteractiveAuthentication=no".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ];
    if let Some(key) = &target.key_file {
        options.push("IdentitiesOnly=yes".to_owned());
        options.push(format!("IdentityFile={}", key.display()));
    }
    if let Some(control_path) = &target.control_path {
        options.extend(MASTER_OPTIONS.map(str::to_owned));
        options.push(format!("ControlPath={}", control_path.display()));
    }
    options
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
}

/// The public half of a private key file, as an `authorized_keys` line.
pub async fn public_key_of(key_file: &std::path::Path) -> Result<String, String> {
    let output = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(key_file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    if !output.status.success() {
        // ssh-keygen's complaint names the file, never the key.
        return Err(format!(
            "not a usable private key: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// How often and how patiently an unreachable host is tried. Plain data so
/// tests can shrink the delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The pause before the first retry; doubles for each further one.
    pub base_delay: Duration,
    /// The longest pause between two tries.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The pause before try number `attempt` (1-based; the first try has none).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt - 2);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// One try and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// When the try started.
    pub at: DateTime<Utc>,
    /// `ok`, or the failure's [`ProbeFailure::kind`].
    pub outcome: String,
}

/// Probes until success, a failure not worth retrying, or the policy's
/// last try. Returns every attempt made, and the last failure if any.
pub async fn probe_with_retries(
    target: &ProbeTarget,
    policy: RetryPolicy,
) -> (Vec<Attempt>, Result<(), ProbeFailure>) {
    let mut attempts = Vec::new();
    let mut attempt = 1;
    loop {
        tokio::time::sleep(policy.delay_before(attempt)).await;
        let at = Utc::now();
        let outcome = probe(target).await;
        attempts.push(Attempt {
            at,
            outcome: match &outcome {
                Ok(()) => "ok".to_owned(),
                Err(failure) => failure.kind().to_owned(),
            },
        });
        if let Err(failure) = &outcome {
            crate::metrics::ssh_probe_failed(failure.kind());
        }
        match outcome {
            Ok(()) => return (attempts, Ok(())),
            Err(failure) if !failure.retryable() || attempt >= policy.attempts => {
                tracing::warn!(
                    attempt,
                    failure = failure.kind(),
                    "ssh probe failed; giving up"
                );
                return (attempts, Err(failure));
            }
            Err(failure) => {
                tracing::info!(
                    attempt,
                    failure = failure.kind(),
                    "ssh probe failed; will retry"
                );
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_messages_are_classified() {
        assert_eq!(
            classify("ssh: Could not resolve hostname nohost.invalid: Name or service not known"),
            ProbeFailure::Dns
        );
        assert_eq!(
            classify("ssh: connect to host 127.0.0.1 port 1: Connection refused"),
            ProbeFailure::Refused
        );
        assert_eq!(
            classify("ssh: connect to host 10.255.255.1 port 22: Connection timed out"),
            ProbeFailure::TimedOut
        );
        assert_eq!(
            classify("user@127.0.0.1: Permission denied (publickey)."),
            ProbeFailure::AuthRejected
        );
        assert_eq!(
            classify(
                "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed."
            ),
            ProbeFailure::HostKeyChanged
        );
        assert_eq!(
            classify("kex_exchange_identification: read: Connection reset by peer\n"),
            ProbeFailure::Other(
                "kex_exchange_identification: read: Connection reset by peer".into()
            )
        );
    }

    #[test]
    fn only_network_failures_are_retried() {
        assert!(ProbeFailure::Refused.retryable());
        assert!(ProbeFailure::TimedOut.retryable());
        assert!(ProbeFailure::Dns.retryable());
        assert!(!ProbeFailure::AuthRejected.retryable());
        assert!(!ProbeFailure::HostKeyChanged.retryable());
    }

    fn target(control_path: Option<&str>) -> ProbeTarget {
        ProbeTarget {
            address: "203.0.113.10".into(),
            port: 2222,
            user: "deploy".into(),
            key_file: None,
            known_hosts_file: "/tmp/ia-x/known_hosts".into(),
            strict_host_key: false,
            connect_timeout: Duration::from_secs(5),
            control_path: control_path.map(PathBuf::from),
        }
    }

    #[test]
    fn a_probe_for_a_run_leaves_a_master_in_its_control_path_and_others_none() {
        let for_run = ssh_options(&target(Some("/tmp/ia-x/cp/%C"))).join(" ");
        assert!(
            for_run.contains("-o ControlPath=/tmp/ia-x/cp/%C"),
            "{for_run}"
        );
        assert!(for_run.contains("-o ControlMaster=auto"), "{for_run}");
        assert!(for_run.contains("-o ControlPersist=60s"), "{for_run}");

        let alone = ssh_options(&target(None)).join(" ");
        assert!(!alone.contains("Control"), "{alone}");
    }

    #[test]
    fn the_probes_master_is_made_as_ansible_cfg_makes_the_playbooks() {
        let cfg = include_str!("../ansible/ansible.cfg");
        let ssh_args = cfg
            .lines()
            .find_map(|line| line.strip_prefix("ssh_args = "))
            .expect("ansible.cfg sets ssh_args");
        for option in MASTER_OPTIONS {
            let spelled = match option {
                "Compression=yes" => "-C".to_owned(),
                _ => format!("-o {option}"),
            };
            assert!(
                ssh_args
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains(&spelled),
                "ansible.cfg's ssh_args lack {spelled}: {ssh_args}"
            );
        }
    }

    #[test]
    fn the_delay_doubles_from_the_base_up_to_the_cap() {
        let policy = RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let delays: Vec<_> = (1..=5)
            .map(|a| policy.delay_before(a).as_millis())
            .collect();
        assert_eq!(delays, vec![0, 100, 200, 350, 350]);
    }
}
