//! What a job may name and where it may deploy (`CONTRACT.md` in the shared
//! folder, section 2, "What a job may name"): the operator's reference
//! patterns per payload field, the worker's own credentials that no job may
//! name whatever the patterns say, and the allowed deploy targets. Payloads
//! may be written by a language model, so none of this trusts them.

mod credentials;
mod pattern;
mod targets;

pub(crate) use credentials::credential_settings;
pub use pattern::RefPattern;
pub use targets::DeployTargets;

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{PolicySettings, Settings};
use crate::job::{DeployJob, SecretRef, ServerAddress};
use crate::retry;
use crate::secrets::ResolveError;
use crate::ssh::RetryPolicy;
use crate::store::Store;
use credentials::Credentials;
use targets::{Registered, Verdict};

/// The contract's `details.reason` of a deploy target outside the policy.
pub const TARGET_NOT_ALLOWED: &str = "target_not_allowed";

/// First wait after a failed read of the servers table: a Postgres outage
/// delays a deploy, it never lets one through unchecked.
const STORE_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Where a deploy's ssh connects, as the target check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectTo {
    /// To `server_ip` itself: no target policy, or the name is allowed as
    /// such (listed, or a registered server's).
    Name,
    /// To this address, checked; the name is never looked up again.
    Address(IpAddr),
    /// Nowhere: the host name did not resolve (the last error).
    Unresolved(String),
}

/// The policy, built once from the settings.
#[derive(Debug, Clone)]
pub struct Policy {
    settings: PolicySettings,
    credentials: Credentials,
}

impl Policy {
    /// The policy of `settings`, with the worker's credentials gathered.
    pub fn new(settings: &Settings) -> Policy {
        Policy {
            settings: settings.policy.clone(),
            credentials: Credentials::from_settings(settings),
        }
    }

    /// Says at start, once, which parts of the policy are unset.
    pub fn warn_if_unset(&self) {
        let mut unset = Vec::new();
        if self.settings.github_token_ref.is_none() {
            unset.push("policy.github_token_ref");
        }
        if self.settings.secrets_ref.is_none() {
            unset.push("policy.secrets_ref");
        }
        if !unset.is_empty() {
            tracing::warn!(
                unset = ?unset,
                "no reference policy set: jobs may name any secret the worker can read, except its own credentials"
            );
        }
        if self.settings.deploy_targets.is_none() {
            tracing::warn!(
                unset = "policy.deploy_targets",
                "no deploy target policy set: jobs may deploy to any host"
            );
        }
    }

    /// Refuses (`not_allowed`) a deploy's reference outside its field's
    /// patterns or reaching one of the worker's credentials; resolves
    /// nothing. A Postgres outage delays the check.
    pub async fn check_references(
        &self,
        job: &DeployJob,
        store: &Store,
    ) -> Result<(), ResolveError> {
        let fields = [
            (
                "github_token_ref",
                job.github_token_ref.as_ref(),
                &self.settings.github_token_ref,
            ),
            (
                "secrets_ref",
                job.secrets_ref.as_ref(),
                &self.settings.secrets_ref,
            ),
        ];
        for (field, reference, patterns) in fields {
            let (Some(reference), Some(patterns)) = (reference, patterns) else {
                continue;
            };
            let canonical = pattern::canonical(reference.as_str());
            if !canonical.is_some_and(|c| patterns.iter().any(|p| p.matches(&c))) {
                let why = format!("it matches no pattern of `policy.{field}`");
                return Err(not_allowed(field, reference, &why));
            }
        }
        let server_keys = retry::until_ok(
            "reading the servers' key references",
            STORE_RETRY_DELAY,
            || store.server_key_refs(),
        )
        .await;
        for (field, reference, _) in fields {
            let Some(reference) = reference else { continue };
            // A few metadata calls on a local directory: not worth a thread.
            if let Some(why) = self.credentials.named_by(reference.as_str(), &server_keys) {
                return Err(not_allowed(field, reference, why));
            }
        }
        Ok(())
    }

    /// Where a deploy to `server_ip` connects, or why it may not go there.
    /// A host name is looked up (tried as `lookup` says) only when the
    /// policy cannot judge it by name.
    pub async fn deploy_target(
        &self,
        server_ip: &ServerAddress,
        port: u16,
        lookup: RetryPolicy,
        store: &Store,
    ) -> Result<ConnectTo, String> {
        let Some(targets) = &self.settings.deploy_targets else {
            return Ok(ConnectTo::Name);
        };
        let registered = if targets.uses_registered() {
            let addresses =
                retry::until_ok("reading the registered servers", STORE_RETRY_DELAY, || {
                    store.registered_addresses()
                })
                .await;
            Registered::new(&addresses)
        } else {
            Registered::default()
        };
        match targets.judge(server_ip, &registered) {
            Verdict::Address(ip) => Ok(ConnectTo::Address(ip)),
            Verdict::Name => Ok(ConnectTo::Name),
            Verdict::Refused(why) => Err(why),
            Verdict::Lookup => match resolve(server_ip.as_str(), port, lookup).await {
                Ok(addresses) => targets
                    .judge_resolved(server_ip.as_str(), &addresses, &registered)
                    .map(ConnectTo::Address),
                Err(error) => Ok(ConnectTo::Unresolved(error)),
            },
        }
    }
}

fn not_allowed(field: &'static str, reference: &SecretRef, why: &str) -> ResolveError {
    ResolveError::NotAllowed {
        reference: reference.as_str().to_owned(),
        field,
        why: why.to_owned(),
    }
}

/// Every address `name` resolves to (IPv4-mapped ones as IPv4), in the
/// resolver's order, tried as an unreachable host is; the last error if
/// none answered.
async fn resolve(name: &str, port: u16, policy: RetryPolicy) -> Result<Vec<IpAddr>, String> {
    let mut attempt = 1;
    loop {
        tokio::time::sleep(policy.delay_before(attempt)).await;
        let error = match tokio::net::lookup_host((name, port)).await {
            Ok(found) => {
                let mut addresses: Vec<IpAddr> = Vec::new();
                for ip in found.map(|a| a.ip().to_canonical()) {
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                }
                if !addresses.is_empty() {
                    return Ok(addresses);
                }
                "no address".to_owned()
            }
            Err(e) => e.to_string(),
        };
        if attempt >= policy.attempts {
            return Err(error);
        }
        tracing::info!(attempt, error.message = %error, "looking up the deploy target failed; will retry");
        attempt += 1;
    }
}
