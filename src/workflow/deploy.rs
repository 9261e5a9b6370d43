//! Deploying a project: resolve its secrets, run the deploy playbook against
//! `server_ip`, report.

use std::time::Instant;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::{Context, Report, millis, preflight, secret_error};
use crate::ansible::{EventSink, PlaybookRun, SshTarget, Workspace};
use crate::job::{DeployJob, ErrorCode, JobError};
use crate::secrets::{Redactor, ResolveError};

/// Environment variable the playbook reads the GitHub token from.
pub const GITHUB_TOKEN_ENV: &str = "GITHUB_TOKEN";
/// Environment variable the playbook reads the project's `.env` text from.
pub const PROJECT_ENV_ENV: &str = "PROJECT_ENV";

/// Runs one deploy job to its report; the playbook's task progress goes to
/// `events`.
#[tracing::instrument(name = "deploy", skip_all)]
pub async fn run(ctx: &Context, job: &DeployJob, events: Option<EventSink>) -> Report {
    let started = Instant::now();
    let report = Report {
        extra: result_fields(job),
        ..Report::default()
    };
    let secrets = match resolve_secrets(ctx, job).await {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::warn!(error.message = %e, "secret unresolved");
            return Report {
                extra: report.extra,
                ..Report::failed(secret_error(&e))
            };
        }
    };
    let port = ctx.settings.ansible.ssh_port;
    let (lock, pinned) = ctx.lock_deploy_target(job.server_ip.as_str(), port).await;
    let report = run_locked(ctx, pinned, job, &secrets, report, started, events).await;
    lock.release().await;
    report
}

/// The part of a deploy that touches the server, under its lock.
async fn run_locked(
    ctx: &Context,
    pinned: Option<String>,
    job: &DeployJob,
    secrets: &DeploySecrets,
    report: Report,
    started: Instant,
    events: Option<EventSink>,
) -> Report {
    let address = job.server_ip.as_str();
    let port = ctx.settings.ansible.ssh_port;
    let redactor = Redactor::new(secrets.values());
    let run = PlaybookRun {
        playbook: ctx.settings.ansible.deploy_playbook.clone(),
        target: SshTarget {
            name: address.to_owned(),
            address: address.to_owned(),
            port,
            user: ctx.settings.ansible.ssh_user.clone(),
            private_key: secrets.ssh_key.clone(),
            known_hosts: pinned.clone(),
        },
        extra_vars: job.extra_vars(),
        secret_env: secrets.env(),
        timeout: ctx.job_timeout(),
        events,
    };
    let workspace = match ctx.runner.workspace(&run) {
        Ok(workspace) => workspace,
        Err(e) => return internal(report, &e),
    };
    let probe = ctx.settings.ssh.preflight;
    if probe {
        let policy = preflight::retry_policy(ctx);
        if let Err(error) = preflight::reach(ctx, &workspace, &run.target, policy).await {
            return Report {
                error: Some(error),
                ..report
            };
        }
        if pinned.is_none() {
            pin_first_key(ctx, &workspace, address, port).await;
        }
    }
    let report = Report {
        preflight_ms: millis(started.elapsed()),
        ..report
    };
    match ctx.runner.run_in(&workspace, run, &redactor).await {
        Ok(outcome) => {
            // Without the probe, the playbook made the first contact.
            if !probe && pinned.is_none() && outcome.succeeded() {
                pin_first_key(ctx, &workspace, address, port).await;
            }
            report.with_playbook(outcome, ctx.job_timeout())
        }
        Err(e) => internal(report, &e),
    }
}

/// The playbook could not run at all.
fn internal(report: Report, e: &crate::ansible::RunError) -> Report {
    tracing::error!(error.message = %e, error.cause_chain = ?e, "playbook could not run");
    Report {
        error: Some(JobError::new(ErrorCode::Internal, e.to_string())),
        ..report
    }
}

/// Trust on first use for addresses that are not registered servers: the
/// key seen now is the one required from now on.
async fn pin_first_key(ctx: &Context, workspace: &Workspace, address: &str, port: u16) {
    let Some(lines) = workspace.known_hosts() else {
        return;
    };
    match ctx.store.pin_address_host_key(address, port, &lines).await {
        Ok(()) => tracing::info!(address, port, "host key pinned"),
        Err(e) => tracing::error!(error.message = %e, "pinning the host key failed"),
    }
}

/// The values a deploy needs, each held as a secret.
struct DeploySecrets {
    github_token: SecretString,
    project_env: Option<SecretString>,
    ssh_key: Option<SecretString>,
}

impl DeploySecrets {
    fn values(&self) -> impl Iterator<Item = &SecretString> {
        std::iter::once(&self.github_token)
            .chain(self.project_env.as_ref())
            .chain(self.ssh_key.as_ref())
    }

    /// What the playbook child gets in its environment. The key is not
    /// here: it reaches ssh as a 0600 file in the run's private directory.
    fn env(&self) -> Vec<(String, SecretString)> {
        let mut env = vec![(GITHUB_TOKEN_ENV.to_owned(), self.github_token.clone())];
        if let Some(project_env) = &self.project_env {
            env.push((PROJECT_ENV_ENV.to_owned(), project_env.clone()));
        }
        env
    }
}

async fn resolve_secrets(ctx: &Context, job: &DeployJob) -> Result<DeploySecrets, ResolveError> {
    let github_token = ctx.resolver.resolve(&job.github_token_ref).await?;
    let project_env = match &job.secrets_ref {
        Some(reference) => Some(ctx.resolver.resolve_env_file(reference).await?),
        None => None,
    };
    let ssh_key = match &ctx.settings.ansible.ssh_key_ref {
        Some(reference) => Some(ctx.resolver.resolve_str(reference).await?),
        None => None,
    };
    Ok(DeploySecrets {
        github_token,
        project_env,
        ssh_key,
    })
}

/// The deploy-only result fields: `project_id`, `server_ip`, `port`, `url`.
fn result_fields(job: &DeployJob) -> serde_json::Map<String, Value> {
    let host = job.server_ip.as_str();
    let url_host = job.server_ip.url_host();
    let Value::Object(fields) = json!({
        "project_id": job.project_id.to_string(),
        "server_ip": host,
        "port": job.port,
        "url": format!("http://{url_host}:{}", job.port),
    }) else {
        unreachable!("a json! object literal is an object")
    };
    fields
}
