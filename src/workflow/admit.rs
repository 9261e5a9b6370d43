//! Before a claimed job runs: whether the policy lets its deploy target
//! through, and where its ssh then connects. A refused target is an
//! invalid payload (a result with the contract's `target_not_allowed` and
//! a dead letter), decided before any secret is resolved or connection
//! made.

use super::{Context, preflight};
use crate::job::{DeployJob, InvalidPayload, Job, ProvisionJob};
use crate::policy::{ConnectTo, TARGET_NOT_ALLOWED};

/// A job the policy lets run, with what the policy fixed for it.
#[derive(Debug)]
pub enum Admitted<'a> {
    /// A deploy, and where its ssh connects.
    Deploy(&'a DeployJob, ConnectTo),
    /// A provision: its server is registered, so its target is the
    /// operator's own.
    Provision(&'a ProvisionJob),
}

/// `job`, admitted, or why its payload is refused.
pub async fn admit<'a>(ctx: &Context, job: &'a Job) -> Result<Admitted<'a>, InvalidPayload> {
    let deploy = match job {
        Job::Provision(job) => return Ok(Admitted::Provision(job)),
        Job::Deploy(job) => job,
    };
    let port = ctx.settings.ansible.ssh_port;
    let lookup = preflight::retry_policy(ctx);
    let target = ctx
        .policy
        .deploy_target(&deploy.server_ip, port, lookup, &ctx.store)
        .await;
    match target {
        Ok(connect) => Ok(Admitted::Deploy(deploy, connect)),
        Err(why) => Err(InvalidPayload::new(
            Some(deploy.request_id.clone()),
            format!("server_ip: {why}"),
        )
        .with_detail("reason", TARGET_NOT_ALLOWED)),
    }
}
