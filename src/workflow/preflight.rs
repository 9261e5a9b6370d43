//! Before any playbook: is the server there, does it take our key, is it
//! the machine whose host key we pinned? Failures become the contract's
//! SSH error codes; the first good contact pins the host key. The probe's
//! connection stays open in the run's ControlPath for the playbook to reuse
//! (one handshake per job); the workspace closes it if no playbook does.

use std::time::Duration;

use serde_json::json;

use super::Context;
use crate::ansible::{SshTarget, Workspace};
use crate::job::{ErrorCode, JobError};
use crate::ssh::{self, ProbeFailure, ProbeTarget, RetryPolicy};

/// The probe policy from the settings.
pub fn retry_policy(ctx: &Context) -> RetryPolicy {
    let ssh = &ctx.settings.ssh;
    RetryPolicy {
        attempts: ssh.attempts,
        base_delay: Duration::from_millis(ssh.retry_base_ms),
        max_delay: Duration::from_millis(ssh.retry_max_ms),
    }
}

/// Probes `target` through the workspace's key and known_hosts, retrying
/// network failures per `policy`; a success leaves its ControlMaster in the
/// workspace's ControlPath.
pub async fn reach(
    ctx: &Context,
    workspace: &Workspace,
    target: &SshTarget,
    policy: RetryPolicy,
) -> Result<(), JobError> {
    let probe = ProbeTarget {
        address: target.address.clone(),
        port: target.port,
        user: target.user.clone(),
        key_file: workspace.key_file(),
        known_hosts_file: workspace.known_hosts_path(),
        strict_host_key: target.known_hosts.is_some(),
        connect_timeout: Duration::from_secs(ctx.settings.ssh.connect_timeout_secs),
        control_path: Some(workspace.control_path()),
    };
    let (attempts, outcome) = ssh::probe_with_retries(&probe, policy).await;
    let Err(failure) = outcome else {
        return Ok(());
    };
    let code = match failure {
        ProbeFailure::AuthRejected => ErrorCode::SshAuthFailed,
        ProbeFailure::HostKeyChanged => ErrorCode::HostKeyMismatch,
        _ => ErrorCode::SshUnreachable,
    };
    let message = format!(
        "{}@{}:{}: {} (after {} attempt{})",
        target.user,
        target.address,
        target.port,
        failure.describe(),
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" }
    );
    Err(JobError::new(code, message)
        .with_detail("reason", failure.kind())
        .with_detail("attempts", json!(attempts)))
}
