//! Deploying a project: check its references against the policy, resolve
//! its secrets, run the deploy playbook against `server_ip` (at the address
//! the target check fixed), report.

use std::time::Instant;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::{Context, Report, millis, preflight, secret_error};
use crate::ansible::{EventSink, PlaybookRun, SshTarget, Workspace};
use crate::job::{DeployJob, ErrorCode, JobError};
use crate::policy::ConnectTo;
use crate::secrets::{Redactor, ResolveError};
use crate::ssh::ProbeFailure;

/// Environment variable the playbook reads the GitHub token from.
pub const GITHUB_TOKEN_ENV: &str = "GITHUB_TOKEN";
/// Environment variable the playbook reads the project's `.env` text from.
pub const PROJECT_ENV_ENV: &str = "PROJECT_ENV";

/// Runs one deploy job to its report, connecting as `connect` says; the
/// playbook's task progress goes to `events`.
#[tracing::instrument(name = "deploy", skip_all)]
pub async fn run(
    ctx: &Context,
    job: &DeployJob,
    connect: ConnectTo,
    events: Option<EventSink>,
) -> Report {
    let started = Instant::now();
    let report = Report {
        extra: result_fields(job),
        ..Report::default()
    };
    let port = ctx.settings.ansible.ssh_port;
    let (address, alias) = match connect_address(job, connect, port) {
        Ok(found) => found,
        Err(error) => {
            return Report {
                error: Some(error),
                ..report
            };
        }
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
    let (lock, pinned) = ctx.lock_deploy_target(job.server_ip.as_str(), port).await;
    let target = SshTarget {
        name: job.server_ip.as_str().to_owned(),
        address,
        host_key_alias: alias,
        port,
        user: ctx.settings.ansible.ssh_user.clone(),
        private_key: secrets.ssh_key.clone(),
        known_hosts: pinned,
    };
    let report = run_locked(ctx, target, job, &secrets, report, started, events).await;
    lock.release().await;
    report
}

/// Where ssh connects and the name its host key is kept under, as the
/// target check fixed them; a host name that did not resolve fails as
/// the SSH probe reports one.
fn connect_address(
    job: &DeployJob,
    connect: ConnectTo,
    port: u16,
) -> Result<(String, Option<String>), JobError> {
    let name = job.server_ip.as_str();
    match connect {
        ConnectTo::Name => Ok((name.to_owned(), None)),
        ConnectTo::Address(ip) if ip.to_string() == name => Ok((name.to_owned(), None)),
        // ssh drops the port from a `HostKeyAlias`; spelled as ssh spells a
        // host on another port, the pin matches one made by connecting
        // to the name itself.
        ConnectTo::Address(ip) if port != 22 => {
            Ok((ip.to_string(), Some(format!("[{name}]:{port}"))))
        }
        ConnectTo::Address(ip) => Ok((ip.to_string(), Some(name.to_owned()))),
        ConnectTo::Unresolved(why) => Err(JobError::new(
            ErrorCode::SshUnreachable,
            format!("{name}: {} ({why})", ProbeFailure::Dns.describe()),
        )
        .with_detail("reason", ProbeFailure::Dns.kind())),
    }
}

/// The part of a deploy that touches the server, under its lock.
async fn run_locked(
    ctx: &Context,
    target: SshTarget,
    job: &DeployJob,
    secrets: &DeploySecrets,
    report: Report,
    started: Instant,
    events: Option<EventSink>,
) -> Report {
    // Pins are kept under the name the job gave, whatever address answers.
    let address = job.server_ip.as_str();
    let port = target.port;
    let pinned = target.known_hosts.is_some();
    let redactor = Redactor::new(secrets.values());
    let run = PlaybookRun {
        playbook: ctx.settings.ansible.deploy_playbook.clone(),
        target,
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
        if !pinned {
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
            if !probe && !pinned && outcome.succeeded() {
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
    // Before anything is resolved: no secret store hears of a reference
    // the policy refuses.
    ctx.policy.check_references(job, &ctx.store).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(server_ip: &str) -> DeployJob {
        let payload = json!({
            "request_id": "dep-1",
            "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
            "repo_full_name": "acme/app",
            "server_ip": server_ip,
            "port": 8080,
            "github_token_ref": "env:GITHUB_TOKEN",
        });
        DeployJob::parse(payload.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_checked_address_is_connected_to_and_keys_stay_under_the_name_as_ssh_spells_it() {
        let ip = "192.0.2.7".parse().unwrap();
        let by_address = |name, port| connect_address(&job(name), ConnectTo::Address(ip), port);
        assert_eq!(
            by_address("deploy.example.com", 22).unwrap(),
            (
                "192.0.2.7".to_owned(),
                Some("deploy.example.com".to_owned())
            )
        );
        assert_eq!(
            by_address("deploy.example.com", 2222).unwrap(),
            (
                "192.0.2.7".to_owned(),
                Some("[deploy.example.com]:2222".to_owned())
            )
        );
        assert_eq!(
            by_address("192.0.2.7", 2222).unwrap(),
            ("192.0.2.7".to_owned(), None)
        );
        assert_eq!(
            connect_address(&job("deploy.example.com"), ConnectTo::Name, 22).unwrap(),
            ("deploy.example.com".to_owned(), None)
        );
    }

    #[test]
    fn a_host_name_that_did_not_resolve_fails_as_the_probe_reports_it() {
        let unresolved = ConnectTo::Unresolved("no such host".into());
        let error = connect_address(&job("nowhere.example"), unresolved, 22).unwrap_err();
        assert_eq!(error.code, ErrorCode::SshUnreachable);
        assert_eq!(error.details["reason"], "dns");
        assert!(
            error.message.starts_with("nowhere.example: "),
            "{}",
            error.message
        );
    }
}
