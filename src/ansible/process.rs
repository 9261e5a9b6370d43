//! Spawning and supervising one `ansible-playbook` child.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::config::AnsibleSettings;
use crate::job::{FailedTask, HostStats};
use crate::secrets::Redactor;

/// How to reach the one host of the run.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Inventory host name; keys `stats`.
    pub name: String,
    pub address: String,
    pub port: u16,
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
    pub target: SshTarget,
    /// A JSON object; written to a file and passed as `-e @file`.
    pub extra_vars: serde_json::Value,
    /// Secrets handed to the child as environment variables only.
    pub secret_env: Vec<(String, SecretString)>,
    pub timeout: Duration,
}

/// What a finished (or killed) run left behind.
#[derive(Debug, Clone)]
pub struct PlaybookOutcome {
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Last 64 KiB of stdout+stderr, redacted.
    pub output_tail: String,
    /// `None` if no PLAY RECAP was printed.
    pub stats: Option<BTreeMap<String, HostStats>>,
    pub failed_task: Option<FailedTask>,
    pub duration: Duration,
}

impl PlaybookOutcome {
    /// True when the playbook ran to the end with no failed or unreachable host.
    pub fn succeeded(&self) -> bool {
        unimplemented!()
    }
}

/// Failures to run the playbook at all (not failures inside it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preparing the run directory: {0}")]
    Workspace(#[source] std::io::Error),
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for ansible-playbook: {0}")]
    Wait(#[source] std::io::Error),
}

/// Runs playbooks with the configured binary and content directory.
#[derive(Debug, Clone)]
pub struct Runner {
    settings: AnsibleSettings,
    kill_grace: Duration,
}

impl Runner {
    pub fn new(settings: AnsibleSettings, kill_grace: Duration) -> Runner {
        Runner {
            settings,
            kill_grace,
        }
    }

    /// Runs one playbook to its end, its timeout, or the drop of this future.
    pub async fn run(
        &self,
        _run: PlaybookRun,
        _redactor: &Redactor,
    ) -> Result<PlaybookOutcome, RunError> {
        let _ = (&self.settings, self.kill_grace);
        unimplemented!()
    }
}
