//! Deploying a project: check its references against the policy, resolve
//! its secrets, run the deploy playbook against `server_ip` (at the address
//! the target check fixed), report.

use std::time::Instant;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::ci::CiSetup;
use super::lifecycle::Lifecycle;
use super::{Context, Report, millis, preflight, secret_error};
use crate::ansible::{EventSink, PlaybookRun, SshTarget, Workspace};
use crate::ci::CiReport;
use crate::job::{DeployAction, DeployJob, ErrorCode, JobError};
use crate::policy::ConnectTo;
use crate::secrets::{Redactor, ResolveError};
use crate::ssh::ProbeFailure;

/// Environment variable the playbook reads the GitHub token from.
pub const GITHUB_TOKEN_ENV: &str = "GITHUB_TOKEN";
/// Environment variable the playbook reads the project's `.env` text from.
pub const PROJECT_ENV_ENV: &str = "PROJECT_ENV";

/// Runs one deploy job to its report, connecting as `connect` says; the
/// playbook's task progress goes to `events`. With `setup_ci`, a successful
/// deploy goes on to CI access (`workflow::ci`); the report's `ci` says how
/// that went, or that it was skipped.
#[tracing::instrument(name = "deploy", skip_all)]
pub async fn run(
    ctx: &Context,
    job: &DeployJob,
    connect: ConnectTo,
    events: Option<EventSink>,
) -> Report {
    let mut report = deploy(ctx, job, connect, events).await;
    // Asked for and not done (a failed deploy, or another action): skipped.
    if job.setup_ci && !report.extra.contains_key(CI_FIELD) {
        report
            .extra
            .insert(CI_FIELD.to_owned(), CiReport::skipped().to_value());
    }
    report
}

/// The deploy result's field for `setup_ci`.
const CI_FIELD: &str = "ci";

async fn deploy(
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
    let address = match connect_address(job, connect) {
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
    let (lock, pinned) = ctx.lock_deploy_target(&address, port).await;
    let target = SshTarget {
        name: job.server_ip.as_str().to_owned(),
        address,
        port,
        user: ctx.settings.ansible.ssh_user.clone(),
        private_key: secrets.ssh_key.clone(),
        known_hosts: pinned,
    };
    let report = run_locked(ctx, target, job, &secrets, report, started, events).await;
    lock.release().await;
    report
}

/// Where ssh connects, which is also what the server's lock and pinned
/// host key are keyed by: the address the target check fixed, or the name
/// itself, in one canonical spelling (`ServerAddress::canonical`), so that
/// `::ffff:203.0.113.10`, or a host name of the job's choosing resolving to
/// a registered server, meets that server's lock and pin. A host name that
/// did not resolve fails as the SSH probe reports one.
fn connect_address(job: &DeployJob, connect: ConnectTo) -> Result<String, JobError> {
    match connect {
        ConnectTo::Name => Ok(job.server_ip.canonical()),
        ConnectTo::Address(ip) => Ok(ip.to_canonical().to_string()),
        ConnectTo::Unresolved(why) => {
            let name = job.server_ip.as_str();
            Err(JobError::new(
                ErrorCode::SshUnreachable,
                format!("{name}: {} ({why})", ProbeFailure::Dns.describe()),
            )
            .with_detail("reason", ProbeFailure::Dns.kind()))
        }
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
    // Pins are kept under the address ssh connects to (see connect_address).
    let address = target.address.clone();
    let port = target.port;
    let pinned = target.known_hosts.is_some();
    let redactor = Redactor::new(secrets.values());
    let run = PlaybookRun {
        playbook: ctx.settings.ansible.deploy_playbook.clone(),
        target: target.clone(),
        extra_vars: playbook_vars(ctx, job),
        secret_env: secrets.env(),
        timeout: ctx.job_timeout(),
        events: events.clone(),
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
            pin_first_key(ctx, &workspace, &address, port).await;
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
                pin_first_key(ctx, &workspace, &address, port).await;
            }
            let lifecycle = Lifecycle::from_stats(&outcome.custom_stats);
            let mut report = report.with_playbook(outcome, ctx.job_timeout());
            lifecycle.report_into(job, &mut report.extra);
            let ci_token = secrets.github_token.as_ref().filter(|_| wants_ci(job));
            if let (Some(github_token), None) = (ci_token, &report.error) {
                let ci = CiSetup {
                    ctx,
                    job,
                    workspace: &workspace,
                    target,
                    github_token,
                    events,
                };
                let ci = ci.run().await;
                report.extra.insert(CI_FIELD.to_owned(), ci.to_value());
            }
            report
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

/// `setup_ci` asks for CI access after a `deploy`; other actions skip it.
fn wants_ci(job: &DeployJob) -> bool {
    job.setup_ci && job.action == DeployAction::Deploy
}

/// The playbook's extra vars: the job's, and the CI login whose keys
/// `remove` takes away.
fn playbook_vars(ctx: &Context, job: &DeployJob) -> Value {
    let mut vars = job.extra_vars();
    vars["ci_user"] = json!(ctx.settings.ci.deploy_user);
    vars
}

/// The values a job needs, each held as a secret.
struct DeploySecrets {
    action: DeployAction,
    /// Resolved for `deploy` only: the other actions clone nothing.
    github_token: Option<SecretString>,
    /// The `.env` a `deploy` writes; for `logs`, what to mask in them.
    project_env: Option<SecretString>,
    ssh_key: Option<SecretString>,
}

impl DeploySecrets {
    fn values(&self) -> impl Iterator<Item = &SecretString> {
        (self.github_token.iter())
            .chain(self.project_env.as_ref())
            .chain(self.ssh_key.as_ref())
    }

    /// What the playbook child gets in its environment: the token and the
    /// `.env` for a `deploy`, nothing for the other actions. The key is not
    /// here: it reaches ssh as a 0600 file in the run's private directory.
    fn env(&self) -> Vec<(String, SecretString)> {
        if self.action != DeployAction::Deploy {
            return Vec::new();
        }
        let token = self.github_token.iter().map(|t| (GITHUB_TOKEN_ENV, t));
        let project_env = self.project_env.iter().map(|e| (PROJECT_ENV_ENV, e));
        token
            .chain(project_env)
            .map(|(name, value)| (name.to_owned(), value.clone()))
            .collect()
    }
}

async fn resolve_secrets(ctx: &Context, job: &DeployJob) -> Result<DeploySecrets, ResolveError> {
    // Before anything is resolved: no secret store hears of a reference
    // the policy refuses.
    ctx.policy.check_references(job, &ctx.store).await?;
    let deploy = job.action == DeployAction::Deploy;
    let github_token = match (&job.github_token_ref, deploy) {
        (Some(reference), true) => Some(ctx.resolver.resolve(reference).await?),
        _ => None,
    };
    let project_env = match (&job.secrets_ref, deploy || job.action == DeployAction::Logs) {
        (Some(reference), true) => Some(ctx.resolver.resolve_env_file(reference).await?),
        _ => None,
    };
    let ssh_key = match &ctx.settings.ansible.ssh_key_ref {
        Some(reference) => Some(ctx.resolver.resolve_str(reference).await?),
        None => None,
    };
    Ok(DeploySecrets {
        action: job.action,
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
        "action": job.action.as_str(),
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
        crate::job::minimal_for_test("acme/app", server_ip)
    }

    #[test]
    fn ssh_connects_to_the_checked_address_or_the_name_in_its_canonical_spelling() {
        let ip = "::ffff:192.0.2.7".parse().unwrap();
        let by_address = connect_address(&job("deploy.example.com"), ConnectTo::Address(ip));
        assert_eq!(by_address.unwrap(), "192.0.2.7");
        let by_name = connect_address(&job("Deploy.Example.com."), ConnectTo::Name);
        assert_eq!(by_name.unwrap(), "deploy.example.com");
        let literal = connect_address(&job("2001:DB8:0::1"), ConnectTo::Name);
        assert_eq!(literal.unwrap(), "2001:db8::1");
    }

    #[test]
    fn a_host_name_that_did_not_resolve_fails_as_the_probe_reports_it() {
        let unresolved = ConnectTo::Unresolved("no such host".into());
        let error = connect_address(&job("nowhere.example"), unresolved).unwrap_err();
        assert_eq!(error.code, ErrorCode::SshUnreachable);
        assert_eq!(error.details["reason"], "dns");
        assert!(
            error.message.starts_with("nowhere.example: "),
            "{}",
            error.message
        );
    }
}
