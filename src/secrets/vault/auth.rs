//! Getting a Vault token (`vault.auth`): a given token (`token`, from an
//! `env:` or `file:` reference, its lease looked up), an AppRole login or a
//! Kubernetes login; and renewing a token (`renew-self`). Credentials are
//! read at every login, so a rotated file or secret id is picked up.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::VaultError;
use super::http::{Api, Call};
use super::lease::Lease;
use crate::config::VaultAuth;
use crate::job::SecretRef;
use crate::secrets::resolve::LocalSecrets;

/// How this worker logs in, from the checked settings.
#[derive(Debug, Clone)]
pub(crate) enum Login {
    Token {
        token_ref: SecretRef,
    },
    AppRole {
        role_id_ref: SecretRef,
        secret_id_ref: SecretRef,
        mount: String,
    },
    Kubernetes {
        role: String,
        jwt_path: PathBuf,
        mount: String,
    },
}

/// A token and its lease, fresh from a login.
pub(crate) struct Grant {
    pub token: SecretString,
    pub lease: Lease,
    /// For a token read from a file: the file as it was then.
    pub stamp: Option<FileStamp>,
}

/// Enough of a file's metadata to tell that it was rewritten (a Vault
/// Agent sink writes a new file and renames it over the old one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

/// What renewing a token came to.
pub(crate) enum Renewal {
    Renewed(Lease),
    /// Vault will not renew it (expired, revoked, not renewable).
    Refused,
    /// Renewed to a lease of 0 s: its max TTL is under a second away.
    Exhausted,
}

impl Login {
    /// The login `auth` describes (its references were checked with the
    /// settings).
    pub fn new(auth: &VaultAuth) -> Result<Login, VaultError> {
        let reference = |key: &str, text: &str| {
            SecretRef::parse(text).map_err(|e| VaultError::Setup(format!("vault.{key}: {e}")))
        };
        Ok(match auth {
            VaultAuth::Token { token_ref } => Login::Token {
                token_ref: reference("token_ref", token_ref)?,
            },
            VaultAuth::Approle {
                role_id_ref,
                secret_id_ref,
                mount,
            } => Login::AppRole {
                role_id_ref: reference("approle_role_id_ref", role_id_ref)?,
                secret_id_ref: reference("approle_secret_id_ref", secret_id_ref)?,
                mount: mount.clone(),
            },
            VaultAuth::Kubernetes {
                role,
                jwt_path,
                mount,
            } => Login::Kubernetes {
                role: role.clone(),
                jwt_path: jwt_path.clone(),
                mount: mount.clone(),
            },
        })
    }

    /// The method's name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Login::Token { .. } => "token",
            Login::AppRole { .. } => "approle",
            Login::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Gets a token, retrying what waiting can fix until `deadline`.
    pub async fn login(
        &self,
        api: &Api,
        local: &LocalSecrets,
        deadline: Instant,
    ) -> Result<Grant, VaultError> {
        match self {
            Login::Token { token_ref } => {
                let stamp = self.stamp(local).await;
                let token = credential(local, token_ref).await?;
                let lease = lookup_self(api, &token, deadline).await?;
                Ok(Grant {
                    token,
                    lease,
                    stamp,
                })
            }
            Login::AppRole {
                role_id_ref,
                secret_id_ref,
                mount,
            } => {
                let role_id = credential(local, role_id_ref).await?;
                let secret_id = credential(local, secret_id_ref).await?;
                let body = AppRoleBody {
                    role_id: role_id.expose_secret(),
                    secret_id: secret_id.expose_secret(),
                };
                log_in(api, "approle", mount, &body, deadline).await
            }
            Login::Kubernetes {
                role,
                jwt_path,
                mount,
            } => {
                let jwt = read_jwt(jwt_path).await?;
                let body = KubernetesBody {
                    role,
                    jwt: jwt.expose_secret(),
                };
                log_in(api, "kubernetes", mount, &body, deadline).await
            }
        }
    }

    /// For a token read from a file: whether the file is no longer the one
    /// read at `stamp` (then the token is read again before its next use).
    pub async fn token_file_changed(&self, local: &LocalSecrets, stamp: Option<FileStamp>) -> bool {
        match self {
            Login::Token { .. } => self.stamp(local).await != stamp,
            _ => false,
        }
    }

    async fn stamp(&self, local: &LocalSecrets) -> Option<FileStamp> {
        let Login::Token { token_ref } = self else {
            return None;
        };
        let path = local.file_path(token_ref)?;
        let metadata = tokio::fs::metadata(path).await.ok()?;
        Some(FileStamp {
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

/// `GET auth/token/lookup-self`: the lease of a token we were given.
pub(crate) async fn lookup_self(
    api: &Api,
    token: &SecretString,
    deadline: Instant,
) -> Result<Lease, VaultError> {
    let call = Call::get("v1/auth/token/lookup-self", "the token lookup").token(token);
    let reply = api.call(call, deadline).await?;
    match reply.status.as_u16() {
        200 => {
            // The answer also holds the token itself (`data.id`): only the
            // lease is read, and the body is wiped with the reply.
            let answer: LookupAnswer = reply.json()?;
            // 0 is "never expires" only without an expire time: a token in
            // its last second says 0 too.
            let dying = answer.data.ttl == 0 && answer.data.expire_time.is_some();
            let ttl = Duration::from_secs(if dying { 1 } else { answer.data.ttl });
            Ok(Lease::new(Instant::now(), ttl, answer.data.renewable))
        }
        400 | 401 | 403 => Err(VaultError::LoginRefused {
            method: "token",
            status: reply.status.as_u16(),
        }),
        _ => Err(reply.unexpected()),
    }
}

/// `POST auth/token/renew-self`, by the token's own increment.
pub(crate) async fn renew_self(
    api: &Api,
    token: &SecretString,
    previous: &Lease,
    deadline: Instant,
) -> Result<Renewal, VaultError> {
    let call = Call::post("v1/auth/token/renew-self", "the token renewal", &Empty {}).token(token);
    let reply = api.call(call, deadline).await?;
    match reply.status.as_u16() {
        200 => {
            let auth = auth_block(reply.json()?)?;
            // Whole seconds, truncated: a token less than a second from
            // its max TTL comes back with 0, which is not "never expires".
            if auth.lease_duration == 0 {
                return Ok(Renewal::Exhausted);
            }
            let ttl = Duration::from_secs(auth.lease_duration);
            Ok(Renewal::Renewed(previous.renewed(
                Instant::now(),
                ttl,
                auth.renewable,
            )))
        }
        400 | 401 | 403 => Ok(Renewal::Refused),
        _ => Err(reply.unexpected()),
    }
}

/// `POST auth/<mount>/login` with `body`.
async fn log_in(
    api: &Api,
    method: &'static str,
    mount: &str,
    body: &impl Serialize,
    deadline: Instant,
) -> Result<Grant, VaultError> {
    let path = format!("v1/auth/{mount}/login");
    let call = Call::post(path, format!("the {method} login"), body);
    let reply = api.call(call, deadline).await?;
    match reply.status.as_u16() {
        200 => {
            let auth = auth_block(reply.json()?)?;
            let ttl = Duration::from_secs(auth.lease_duration);
            Ok(Grant {
                token: auth.client_token,
                lease: Lease::new(Instant::now(), ttl, auth.renewable),
                stamp: None,
            })
        }
        // Vault answers 400 for a wrong role or secret id, 403 for a
        // refused JWT.
        400 | 401 | 403 => Err(VaultError::LoginRefused {
            method,
            status: reply.status.as_u16(),
        }),
        _ => Err(reply.unexpected()),
    }
}

fn auth_block(answer: AuthAnswer) -> Result<AuthBlock, VaultError> {
    answer.auth.ok_or_else(|| VaultError::BadAnswer {
        what: "a login or renewal".to_owned(),
        status: 200,
        problem: "no `auth` block".to_owned(),
    })
}

/// One of the worker's own login credentials (an `env:` or `file:`
/// reference, checked with the settings).
async fn credential(
    local: &LocalSecrets,
    reference: &SecretRef,
) -> Result<SecretString, VaultError> {
    local
        .resolve(reference)
        .await
        .map_err(|e| VaultError::Credential(Box::new(e)))
}

/// The service-account token; kubelet rotates the file, so it is read at
/// every login.
async fn read_jwt(path: &PathBuf) -> Result<SecretString, VaultError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(SecretString::from(Zeroizing::new(text).trim())),
        Err(source) => Err(VaultError::Jwt {
            path: path.clone(),
            source,
        }),
    }
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct AppRoleBody<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(Serialize)]
struct KubernetesBody<'a> {
    role: &'a str,
    jwt: &'a str,
}

#[derive(Deserialize)]
struct AuthAnswer {
    auth: Option<AuthBlock>,
}

#[derive(Deserialize)]
struct AuthBlock {
    client_token: SecretString,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupAnswer {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    /// `null` for a token that never expires (a root token).
    #[serde(default)]
    expire_time: Option<String>,
    #[serde(default)]
    renewable: bool,
}
