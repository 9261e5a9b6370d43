//! What each job kind does, step by step. A workflow turns a parsed job into
//! a `Report`; it never talks to Redis (results go back through `worker`,
//! task progress through the `EventSink` the worker passes in).

mod admit;
pub mod ci;
pub mod deploy;
mod lifecycle;
pub mod preflight;
pub mod provision;

pub use admit::{Admitted, admit};

use std::sync::Arc;
use std::time::Duration;

use crate::ansible::{PlaybookOutcome, Runner};
use crate::config::Settings;
use crate::github::{GithubError, SecretsClient};
use crate::job::{ErrorCode, FailedTask, HostStats, JobError};
use crate::policy::Policy;
use crate::retry;
use crate::secrets::Resolver;
use crate::store::{ServerLock, Store};

use std::collections::BTreeMap;

/// The long-lived pieces every workflow uses.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub resolver: Resolver,
    pub runner: Runner,
    pub store: Store,
    /// What a job may name and where it may deploy.
    pub policy: Policy,
    /// Writes CI deploy secrets; one per worker, so a GitHub App's
    /// installation tokens are shared by every job.
    pub github: Arc<SecretsClient>,
}

impl Context {
    /// Builds the context from settings and the status store; fails only
    /// when no HTTP client for GitHub can be made (no TLS backend).
    pub fn new(settings: Arc<Settings>, store: Store) -> Result<Context, GithubError> {
        let resolver = Resolver::with_vault(settings.secrets.dir.clone(), &settings.vault);
        let github = SecretsClient::new(&settings.github, resolver.clone())?;
        Ok(Context {
            store,
            policy: Policy::new(&settings),
            runner: Runner::new(
                settings.ansible.clone(),
                Duration::from_secs(settings.worker.kill_grace_secs),
            ),
            resolver,
            github: Arc::new(github),
            settings,
        })
    }

    /// Waits until no other job, in any worker, works on `server`, and
    /// holds it until the lock is released or dropped. A Postgres outage
    /// means waiting longer, not failing.
    pub async fn lock_server(&self, server: &str) -> ServerLock {
        let what = format!("taking the lock of {server}");
        retry::until_ok(&what, LOCK_RETRY_DELAY, || self.store.lock_server(server)).await
    }

    /// [`Context::lock_server`] for a deploy target, with the host key
    /// pinned for it (see [`Store::lock_deploy_target`]).
    pub async fn lock_deploy_target(
        &self,
        address: &str,
        port: u16,
    ) -> (ServerLock, Option<String>) {
        let what = format!("taking the lock of {address}");
        retry::until_ok(&what, LOCK_RETRY_DELAY, || {
            self.store.lock_deploy_target(address, port)
        })
        .await
    }

    /// How long one playbook may run.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.worker.job_timeout_secs)
    }
}

/// First wait after a failed try to take a server's lock.
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a workflow did: the parts of the result that depend on the job.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub error: Option<JobError>,
    pub output_tail: String,
    pub stats: Option<BTreeMap<String, HostStats>>,
    pub failed_task: Option<FailedTask>,
    pub preflight_ms: u64,
    pub playbook_ms: u64,
    /// Kind-specific result fields.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// A report for a job that failed before any playbook ran.
    pub fn failed(error: JobError) -> Report {
        Report {
            error: Some(error),
            ..Report::default()
        }
    }

    /// Fills the playbook parts from a finished run and classifies it.
    pub fn with_playbook(mut self, outcome: PlaybookOutcome, timeout: Duration) -> Report {
        self.playbook_ms = millis(outcome.duration);
        self.error = playbook_error(&outcome, timeout);
        self.output_tail = outcome.output_tail;
        self.stats = outcome.stats;
        self.failed_task = outcome.failed_task;
        self
    }
}

fn playbook_error(outcome: &PlaybookOutcome, timeout: Duration) -> Option<JobError> {
    if outcome.timed_out {
        return Some(
            JobError::new(
                ErrorCode::Timeout,
                format!(
                    "playbook did not finish within {} s and was killed",
                    timeout.as_secs()
                ),
            )
            .with_detail("timeout_secs", timeout.as_secs()),
        );
    }
    if outcome.succeeded() {
        return None;
    }
    let message = match (&outcome.failed_task, outcome.exit_code) {
        (Some(task), _) => format!(
            "task `{}` failed on {}: {}",
            task.task, task.host, task.message
        ),
        // No failed task (a play that did not parse, a role not found):
        // what ansible-playbook said last is all there is to go on.
        (None, Some(code)) => format!(
            "ansible-playbook exited with code {code}: {}",
            last_lines(&outcome.output_tail, LINES_QUOTED)
        ),
        (None, None) => "ansible-playbook was killed by a signal".to_owned(),
    };
    let mut error = JobError::new(ErrorCode::PlaybookFailed, message);
    if let Some(code) = outcome.exit_code {
        error = error.with_detail("exit_code", code);
    }
    Some(error)
}

/// How many of the output's last lines a failure without a failed task
/// quotes.
const LINES_QUOTED: usize = 5;

/// The last `n` non-blank lines of `text` (already redacted), joined by
/// ` | `.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// `secret_unresolved`, naming the reference and never a value.
pub fn secret_error(e: &crate::secrets::ResolveError) -> JobError {
    JobError::new(ErrorCode::SecretUnresolved, e.to_string())
        .with_detail("reference", e.reference())
        .with_detail("reason", e.reason().as_str())
}

/// Whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_without_a_task_quotes_the_last_lines_of_output() {
        let text = "PLAY [x]\n\nERROR! the role 'ci_access' was not found\n  \nline 2\n";
        assert_eq!(
            last_lines(text, 2),
            "ERROR! the role 'ci_access' was not found | line 2"
        );
        assert_eq!(last_lines("", 5), "");
    }
}
