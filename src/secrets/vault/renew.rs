//! The background renewal of the worker's Vault token: at two thirds of
//! each lease `renew-self`; a new login when Vault refuses the renewal or
//! the max TTL is near. It holds the client only weakly between steps (a
//! step holds it for at most `vault.retry_secs`) and stops when the last
//! `Vault` handle is dropped (with the worker's context).

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::auth::{self, Renewal};
use super::lease::Next;

/// The step due for the token of one login.
struct Plan {
    generation: u64,
    next: Next,
}

/// Runs until `stop`: sleeps until the current token's next step, or until
/// a login (`changed`) calls for a new plan.
pub(super) async fn run(vault: Weak<Inner>, changed: Arc<Notify>, stop: CancellationToken) {
    loop {
        let plan = match vault.upgrade() {
            Some(inner) => inner.plan().await,
            None => return,
        };
        let due = async {
            match plan.as_ref().map(|p| p.next) {
                Some(Next::Renew(at) | Next::Relogin(at)) => tokio::time::sleep_until(at).await,
                Some(Next::Nothing) | None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = changed.notified() => continue,
            () = due => {}
        }
        let (Some(inner), Some(plan)) = (vault.upgrade(), plan) else {
            return;
        };
        match plan.next {
            Next::Renew(_) => inner.renew(plan.generation).await,
            Next::Relogin(_) => inner.relogin(plan.generation).await,
            Next::Nothing => {}
        }
    }
}

impl Inner {
    /// The next step for the current token; `None` when not logged in.
    async fn plan(&self) -> Option<Plan> {
        let slot = self.slot.lock().await;
        slot.session.as_ref().map(|session| Plan {
            generation: session.generation,
            next: session.lease.next(),
        })
    }

    /// `renew-self`, retried while the token lives. A refusal means a new
    /// login; a Vault that stays away until the token dies means the next
    /// use logs in.
    async fn renew(self: &Arc<Self>, generation: u64) {
        let Some((token, lease)) = self.current(generation).await else {
            return;
        };
        // Bounded by `vault.retry_secs` as any read is: the renewer holds
        // the client while it tries, and must not keep it alive for the
        // rest of a long lease when Vault is away (the next use logs in).
        let retry_until = Instant::now() + self.retry;
        let deadline = lease.expires().map_or(retry_until, |e| e.min(retry_until));
        match auth::renew_self(&self.api, &token, &lease, deadline).await {
            Ok(Renewal::Renewed(renewed)) => {
                let mut slot = self.slot.lock().await;
                if let Some(session) = slot.session.as_mut()
                    && session.generation == generation
                {
                    session.lease = renewed;
                    tracing::debug!(
                        ttl_secs = renewed.ttl.as_secs(),
                        capped = renewed.capped,
                        "Vault token renewed"
                    );
                }
            }
            Ok(Renewal::Refused) => {
                tracing::info!("Vault refused to renew its token; logging in again");
                self.relogin(generation).await;
            }
            Ok(Renewal::Exhausted) => {
                tracing::info!("the Vault token reached its max TTL; logging in again");
                self.relogin(generation).await;
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "renewing the Vault token failed; the next use logs in again");
                self.forget(generation).await;
            }
        }
    }

    /// A new login replacing the token of `generation`, unless a caller
    /// already replaced it. A failure leaves no token: the next use tries.
    async fn relogin(self: &Arc<Self>, generation: u64) {
        let mut slot = self.slot.lock().await;
        let current = slot.session.as_ref().map(|s| s.generation);
        if current != Some(generation) {
            return;
        }
        let deadline = Instant::now() + self.retry;
        if let Err(e) = self.log_in(&mut slot, deadline).await {
            tracing::warn!(error.message = %e, "logging in to Vault again failed; the next use tries again");
            slot.session = None;
        }
    }

    async fn current(&self, generation: u64) -> Option<(secrecy::SecretString, super::Lease)> {
        let slot = self.slot.lock().await;
        let session = slot.session.as_ref()?;
        (session.generation == generation).then(|| (session.token.clone(), session.lease))
    }

    async fn forget(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.session.as_ref().map(|s| s.generation) == Some(generation) {
            slot.session = None;
        }
    }
}
