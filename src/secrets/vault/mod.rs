//! The Vault (or OpenBao: same API) KV v2 client behind `vault:`
//! references. One `Vault` per worker, shared by its jobs: it logs in on
//! first use, so a worker whose Vault is down still runs every job that
//! names no Vault secret; it keeps its token alive in the background while
//! it lives; on a 403 it logs in once more and reads again.
//!
//! `reference` is the `vault:` syntax, `http` the API (TLS, headers,
//! retries), `auth` the login methods and renewal, `lease` when to renew or
//! log in again (pure), `kv` the read and `.env` text, `renew` the
//! background renewal.

mod auth;
mod http;
mod kv;
mod lease;
mod reference;
mod renew;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::VaultSettings;
use crate::secrets::resolve::{FailureReason, LocalSecrets, ResolveError};
use auth::{FileStamp, Grant, Login};
use http::Api;
use lease::Lease;

pub use http::{CaCert, VaultAddr, VaultAddrError};
pub use kv::{EnvLineError, Secret};
pub use reference::VaultRef;

/// Why a read gave no secret. Names paths and fields, never a value, and
/// keeps nothing of an answer body.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault has no secret at {path}")]
    NotFound { path: String },
    #[error("the latest version{} of {path} is deleted", version_label(.version))]
    Deleted { path: String, version: Option<u64> },
    #[error("the latest version{} of {path} is destroyed", version_label(.version))]
    Destroyed { path: String, version: Option<u64> },
    #[error("Vault refused to read {path} (HTTP 403, also after logging in again)")]
    Forbidden { path: String },
    #[error("Vault refused the {method} login (HTTP {status})")]
    LoginRefused { method: &'static str, status: u16 },
    #[error("{path} has no field `{field}`")]
    FieldMissing { path: String, field: String },
    #[error(
        "Vault did not answer {what} within vault.retry_secs (waited {waited:?}; last: {last})"
    )]
    Unavailable {
        what: String,
        waited: Duration,
        last: String,
    },
    #[error("Vault answered HTTP {status} to {what}")]
    Unexpected { what: String, status: u16 },
    #[error("Vault's answer to {what} (HTTP {status}) could not be read: {problem}")]
    BadAnswer {
        what: String,
        status: u16,
        problem: String,
    },
    #[error("the worker's Vault login credential: {0}")]
    Credential(Box<ResolveError>),
    #[error("cannot read the Kubernetes service-account token {path}: {source}")]
    Jwt {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Vault client setup: {0}")]
    Setup(String),
}

fn version_label(version: &Option<u64>) -> String {
    version.map(|v| format!(" ({v})")).unwrap_or_default()
}

impl VaultError {
    /// The contract's `details.reason`.
    pub fn reason(&self) -> FailureReason {
        match self {
            VaultError::NotFound { .. }
            | VaultError::Deleted { .. }
            | VaultError::Destroyed { .. } => FailureReason::NotFound,
            VaultError::Forbidden { .. } | VaultError::LoginRefused { .. } => {
                FailureReason::Forbidden
            }
            VaultError::FieldMissing { .. } => FailureReason::FieldMissing,
            // The worker's own setup or an answer it cannot use: nothing
            // the job could change, and an operator may fix it.
            VaultError::Unavailable { .. }
            | VaultError::Unexpected { .. }
            | VaultError::BadAnswer { .. }
            | VaultError::Credential(_)
            | VaultError::Jwt { .. }
            | VaultError::Setup(_) => FailureReason::Unavailable,
        }
    }
}

/// The worker's Vault client; clones share one token.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.inner.addr)
            .field("auth", &self.inner.login.method())
            .finish()
    }
}

struct Inner {
    api: Api,
    addr: VaultAddr,
    login: Login,
    /// Reads the login's own `env:`/`file:` references.
    local: LocalSecrets,
    retry: Duration,
    slot: Mutex<Slot>,
    /// Signalled on every login, so the renewer plans for the new token.
    changed: Arc<Notify>,
    renewer: OnceLock<()>,
    /// Cancelled when the last handle goes: the renewer stops.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The token, if logged in, and how many logins there were.
#[derive(Default)]
struct Slot {
    session: Option<Session>,
    logins: u64,
}

struct Session {
    token: SecretString,
    lease: Lease,
    /// Which login gave the token.
    generation: u64,
    stamp: Option<FileStamp>,
}

/// A token to use, and which login gave it.
struct Ticket {
    token: SecretString,
    generation: u64,
}

impl Session {
    fn ticket(&self) -> Ticket {
        Ticket {
            token: self.token.clone(),
            generation: self.generation,
        }
    }
}

impl Vault {
    /// The client `settings` describe, or `None` when `vault.addr` is
    /// unset. No I/O: the first read logs in.
    pub fn new(settings: &VaultSettings, local: LocalSecrets) -> Result<Option<Vault>, VaultError> {
        let Some(addr) = settings.addr.clone() else {
            return Ok(None);
        };
        if addr.is_cleartext_over_network() {
            tracing::warn!(
                vault.addr = addr.as_str(),
                "vault.addr is plain http to another machine: the token and every secret read cross the network in clear text"
            );
        }
        let auth = settings
            .auth
            .as_ref()
            .ok_or_else(|| VaultError::Setup("vault.auth is incomplete".to_owned()))?;
        let api = Api::new(
            addr.clone(),
            settings.ca_cert.as_ref(),
            settings.namespace.as_deref(),
            Duration::from_secs(settings.timeout_secs),
        )?;
        let inner = Inner {
            api,
            addr,
            login: Login::new(auth)?,
            local,
            retry: Duration::from_secs(settings.retry_secs),
            slot: Mutex::new(Slot::default()),
            changed: Arc::new(Notify::new()),
            renewer: OnceLock::new(),
            stop: CancellationToken::new(),
        };
        Ok(Some(Vault {
            inner: Arc::new(inner),
        }))
    }

    /// The latest version of the secret `reference` names. Transient
    /// failures are retried for `vault.retry_secs` in all; a 403 with a
    /// token Vault no longer accepts costs one new login and one more read
    /// (a 403 with a valid token is the ACL's answer, and final).
    #[tracing::instrument(name = "vault_read", skip_all, fields(secret = %reference.secret_path()))]
    pub async fn read(&self, reference: &VaultRef) -> Result<Secret, VaultError> {
        let deadline = Instant::now() + self.inner.retry;
        let api = &self.inner.api;
        let ticket = self.inner.ticket(deadline).await?;
        self.inner.start_renewer();
        match kv::read(api, &ticket.token, reference, deadline).await {
            Err(VaultError::Forbidden { path }) => {
                // A token Vault still knows was refused by its ACL: a new
                // login would change nothing, and each one costs (an AppRole
                // secret id may have a use limit).
                if auth::lookup_self(api, &ticket.token, deadline)
                    .await
                    .is_ok()
                {
                    return Err(VaultError::Forbidden { path });
                }
                tracing::info!("Vault refused the read and the token; logging in again");
                let ticket = self.inner.fresh_ticket(ticket.generation, deadline).await?;
                kv::read(api, &ticket.token, reference, deadline).await
            }
            other => other,
        }
    }
}

impl Inner {
    /// The current token; logs in first when there is none, it is spent,
    /// or (token auth) its file was rewritten.
    async fn ticket(self: &Arc<Self>, deadline: Instant) -> Result<Ticket, VaultError> {
        let mut slot = self.slot.lock().await;
        if let Some(session) = &slot.session
            && !session.lease.spent(Instant::now())
            && !self
                .login
                .token_file_changed(&self.local, session.stamp)
                .await
        {
            return Ok(session.ticket());
        }
        self.log_in(&mut slot, deadline).await
    }

    /// A token from a later login than `seen` (the one Vault refused):
    /// another caller's, or a new login's.
    async fn fresh_ticket(
        self: &Arc<Self>,
        seen: u64,
        deadline: Instant,
    ) -> Result<Ticket, VaultError> {
        let mut slot = self.slot.lock().await;
        if let Some(session) = &slot.session
            && session.generation != seen
            && !session.lease.spent(Instant::now())
        {
            return Ok(session.ticket());
        }
        self.log_in(&mut slot, deadline).await
    }

    /// Logs in (under the slot's lock, so concurrent callers wait for one
    /// login); the renewer then plans for the new token.
    async fn log_in(
        self: &Arc<Self>,
        slot: &mut Slot,
        deadline: Instant,
    ) -> Result<Ticket, VaultError> {
        let Grant {
            token,
            lease,
            stamp,
        } = self.login.login(&self.api, &self.local, deadline).await?;
        slot.logins += 1;
        tracing::info!(
            method = self.login.method(),
            ttl_secs = lease.ttl.as_secs(),
            renewable = lease.renewable,
            "logged in to Vault"
        );
        let session = Session {
            token,
            lease,
            generation: slot.logins,
            stamp,
        };
        let ticket = session.ticket();
        slot.session = Some(session);
        self.changed.notify_one();
        Ok(ticket)
    }

    /// Starts the background renewal, once. Called from `Vault::read`, not
    /// from a login: the renewer logs in itself.
    fn start_renewer(self: &Arc<Self>) {
        self.renewer.get_or_init(|| {
            tokio::spawn(renew::run(
                Arc::downgrade(self),
                self.changed.clone(),
                self.stop.clone(),
            ));
        });
    }
}
