//! What one playbook run is asked to do and what comes of it: the target
//! host, the request ([`PlaybookRun`]), the outcome ([`PlaybookOutcome`])
//! and the failures to run at all ([`RunError`]). Plain data, no I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::events::EventSink;
use crate::job::{FailedTask, HostStats};

/// How to reach the one host of the run.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Inventory host name; keys `stats`.
    pub name: String,
    /// Host name or IP address ssh connects to.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private key text, written 0600 inside the run's private directory only.
    pub private_key: Option<SecretString>,
    /// Pinned `known_hosts` lines. When set, they are the only keys accepted
    /// (`StrictHostKeyChecking=yes`); when `None`, the first key seen is
    /// accepted (`accept-new`) into a file that lives only for this run.
    pub known_hosts: Option<String>,
}

/// Everything one playbook run needs.
#[derive(Debug)]
pub struct PlaybookRun {
    /// Relative to `ansible.dir` (or absolute).
    pub playbook: PathBuf,
    /// The one host the inventory names.
    pub target: SshTarget,
    /// A JSON object; written to a file and passed as `-e @file`.
    pub extra_vars: serde_json::Value,
    /// Secrets handed to the child as environment variables only.
    pub secret_env: Vec<(String, SecretString)>,
    /// How long the playbook may run before it is stopped.
    pub timeout: Duration,
    /// Where task progress goes while the playbook runs; `None`: not followed.
    pub events: Option<EventSink>,
}

/// What a finished (or killed) run left behind.
#[derive(Debug, Clone)]
pub struct PlaybookOutcome {
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// True when the run was stopped at its timeout.
    pub timed_out: bool,
    /// Last 64 KiB of stdout+stderr, redacted.
    pub output_tail: String,
    /// `None` if no PLAY RECAP was printed.
    pub stats: Option<BTreeMap<String, HostStats>>,
    /// The first failure that counts, if any.
    pub failed_task: Option<FailedTask>,
    /// From the spawn to the end of the cleanup.
    pub duration: Duration,
    /// What the play handed back with `set_stats` (run-wide, not per
    /// host); empty when it set none. Data from the server: check it.
    pub custom_stats: serde_json::Map<String, serde_json::Value>,
}

impl PlaybookOutcome {
    /// True when the playbook ran to the end with no failed or unreachable host
    /// (`ansible-playbook` exited 0 and was not stopped at its timeout).
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// Failures to run the playbook at all (not failures inside it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The private directory could not be made or written.
    #[error("preparing the run directory: {0}")]
    Workspace(#[source] std::io::Error),
    /// The binary could not be started.
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    /// The child could not be waited for.
    #[error("waiting for ansible-playbook: {0}")]
    Wait(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_means_exit_zero_within_the_timeout() {
        let outcome = |exit_code, timed_out| PlaybookOutcome {
            exit_code,
            timed_out,
            output_tail: String::new(),
            stats: None,
            failed_task: None,
            duration: Duration::ZERO,
            custom_stats: serde_json::Map::new(),
        };
        assert!(outcome(Some(0), false).succeeded());
        assert!(!outcome(Some(0), true).succeeded());
        assert!(!outcome(Some(2), false).succeeded());
        assert!(!outcome(None, false).succeeded());
    }
}
