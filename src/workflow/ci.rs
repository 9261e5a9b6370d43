//! `setup_ci` after a successful deploy (contract section 7): the
//! repository's CI gets a key of its own for the server, in the order that
//! never leaves CI without a working one. The new public key goes onto the
//! server first (the `ci_access` play, `add`), then the secrets into GitHub,
//! and only then the project's older keys come off (`retire`). Runs under
//! the deploy's server lock, in the deploy's run directory (its login key
//! and the host key ssh checked).

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use super::{Context, Report};
use crate::ansible::{EventSink, PlaybookRun, SshTarget, Workspace};
use crate::ci::{self, Access, CiKey, CiReport, CiStatus};
use crate::job::{DeployJob, ErrorCode, JobError};
use crate::secrets::Redactor;

/// What the CI step works with, all borrowed from the deploy.
pub struct CiSetup<'a> {
    pub ctx: &'a Context,
    pub job: &'a DeployJob,
    /// The deploy's run directory: its key, its known_hosts.
    pub workspace: &'a Workspace,
    /// How the deploy reached the server.
    pub target: SshTarget,
    /// The job's GitHub token (unused when a GitHub App is configured).
    pub github_token: &'a SecretString,
    /// Where the plays' task progress goes, as the deploy's did.
    pub events: Option<EventSink>,
}

/// The two ways the `ci_access` play is run here (`ci_action`).
#[derive(Debug, Clone, Copy)]
enum KeyAction {
    /// Add the new key beside whatever is there.
    Add,
    /// Remove the project's keys but the new one.
    Retire,
}

impl KeyAction {
    fn as_str(self) -> &'static str {
        match self {
            KeyAction::Add => "add",
            KeyAction::Retire => "retire",
        }
    }
}

impl CiSetup<'_> {
    /// Runs the three steps and says how far they got.
    #[tracing::instrument(name = "setup_ci", skip_all, fields(repo = %self.job.repo_full_name.as_str()))]
    pub async fn run(&self) -> CiReport {
        let report = self.steps().await;
        match &report.error {
            None => tracing::info!(fingerprint = ?report.key_fingerprint, "CI access set up"),
            Some(e) => tracing::warn!(
                status = ?report.status,
                error.code = %e.code,
                error.message = %e.message,
                "CI access not (fully) set up"
            ),
        }
        report
    }

    async fn steps(&self) -> CiReport {
        let key = match CiKey::generate() {
            Ok(key) => key,
            Err(e) => return failed(JobError::new(ErrorCode::Internal, e.to_string()), vec![]),
        };
        let known_hosts = match self.known_hosts() {
            Ok(lines) => lines,
            Err(error) => return failed(error, vec![]),
        };
        if let Err(error) = self.play(&key, KeyAction::Add).await {
            return failed(error, vec![]);
        }
        let access = Access {
            job: self.job,
            ssh_port: self.target.port,
            user: &self.ctx.settings.ci.deploy_user,
            known_hosts,
            key: &key,
            operator_vars: &self.ctx.settings.ansible.extra_vars,
        };
        let secrets = access.secrets();
        let repo = &self.job.repo_full_name;
        if let Err(partial) = self
            .ctx
            .github
            .write_secrets(repo, self.github_token, &secrets)
            .await
        {
            // The new key stays on the server beside the old one: GitHub
            // holds one of the two, and either logs in. The next setup_ci
            // retires whichever is left over.
            // The fingerprint lets an operator find the new key's line on
            // the server: it stays there until the next setup_ci.
            let error = JobError::new(ErrorCode::ProviderError, partial.error.to_string())
                .with_detail("reason", partial.error.reason())
                .with_detail("key_fingerprint", key.fingerprint());
            return failed(error, partial.written);
        }
        let names = secrets.iter().map(|(name, _)| (*name).to_owned()).collect();
        let leftover = self
            .play(&key, KeyAction::Retire)
            .await
            .err()
            .map(|e| JobError {
                message: format!(
                    "the new key is stored and works, but older CI keys of {} may still be \
                     in {}'s authorized_keys: {}",
                    self.job.project_name.as_str(),
                    access.user,
                    e.message
                ),
                ..e
            });
        CiReport {
            status: CiStatus::Success,
            secrets: names,
            key_fingerprint: Some(key.fingerprint().to_owned()),
            error: leftover,
        }
    }

    /// `DEPLOY_KNOWN_HOSTS`: the host key ssh checked for the deploy, for
    /// the name CI connects to.
    fn known_hosts(&self) -> Result<String, JobError> {
        let checked = self.workspace.known_hosts().unwrap_or_default();
        ci::known_hosts_for(self.job.server_ip.as_str(), self.target.port, &checked).ok_or_else(
            || {
                JobError::new(
                    ErrorCode::Internal,
                    format!(
                        "no host key of {} is known to give CI as DEPLOY_KNOWN_HOSTS",
                        self.job.server_ip.as_str()
                    ),
                )
            },
        )
    }

    /// One run of the `ci_access` play for `key`.
    async fn play(&self, key: &CiKey, action: KeyAction) -> Result<(), JobError> {
        let ctx = self.ctx;
        let extra_vars = json!({
            "request_id": self.job.request_id,
            "project_name": self.job.project_name,
            "ci_user": ctx.settings.ci.deploy_user,
            "ci_public_key": key.public(),
            "ci_action": action.as_str(),
        });
        let timeout = play_timeout(ctx.job_timeout());
        let run = PlaybookRun {
            playbook: ctx.settings.ansible.ci_playbook.clone(),
            target: self.target.clone(),
            extra_vars,
            secret_env: Vec::new(),
            timeout,
            events: self.events.clone(),
        };
        // The play never sees the private half; should it ever show up,
        // it is masked all the same.
        let redactor = Redactor::new([key.private_openssh()]);
        let outcome = ctx
            .runner
            .run_in(self.workspace, run, &redactor)
            .await
            .map_err(|e| JobError::new(ErrorCode::Internal, e.to_string()))?;
        match Report::default().with_playbook(outcome, timeout).error {
            None => Ok(()),
            // Its code (a timeout stays `timeout`) and details, with the step.
            Some(error) => Err(JobError {
                message: format!(
                    "the CI access play ({}): {}",
                    action.as_str(),
                    error.message
                ),
                ..error
            }
            .with_detail("step", action.as_str())),
        }
    }
}

/// The longest one `ci_access` play may run. It edits one account and one
/// file, a matter of seconds; one that runs longer is stuck (a hung SSH
/// session, a sudo prompt), and it runs under the deploy's server lock:
/// bounded by the whole job timeout (an hour by default) it would hold up
/// every job for that server for as long.
const CI_PLAY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The bound of one `ci_access` play: the job's, capped at
/// [`CI_PLAY_TIMEOUT`].
fn play_timeout(job_timeout: Duration) -> Duration {
    job_timeout.min(CI_PLAY_TIMEOUT)
}

/// CI access failed; `written` names the secrets stored before it did.
fn failed(error: JobError, written: Vec<String>) -> CiReport {
    CiReport {
        status: CiStatus::Failed,
        secrets: written,
        key_fingerprint: None,
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ci_play_is_bounded_by_ten_minutes_or_the_shorter_job_timeout() {
        assert_eq!(
            play_timeout(Duration::from_secs(3600)),
            Duration::from_secs(600)
        );
        assert_eq!(
            play_timeout(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}
