//! Turning a reference into a value: `env:` and `file:` here
//! (`LocalSecrets`), `vault:` through the worker's `Vault`. A job field
//! that takes one value asks `resolve`; `secrets_ref`, whose value is
//! `.env` text, asks `resolve_env_file`, where a whole Vault secret becomes
//! `KEY=VALUE` lines.

use std::path::{Component, Path, PathBuf};

use secrecy::SecretString;

use super::vault::{EnvLineError, Vault, VaultError, VaultRef};
use crate::config::VaultSettings;
use crate::job::SecretRef;

/// Why a reference gave no value, as the contract's `details.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// No such variable, file or secret.
    NotFound,
    /// The secret store (or the file system) refused.
    Forbidden,
    /// The secret exists but has no such field.
    FieldMissing,
    /// The secret store did not answer in time.
    Unavailable,
    /// The reference itself is wrong (scheme, syntax).
    Malformed,
    /// The worker's policy does not let a job name it.
    NotAllowed,
}

impl FailureReason {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NotFound => "not_found",
            FailureReason::Forbidden => "forbidden",
            FailureReason::FieldMissing => "field_missing",
            FailureReason::Unavailable => "unavailable",
            FailureReason::Malformed => "malformed",
            FailureReason::NotAllowed => "not_allowed",
        }
    }
}

/// Why a reference gave no value. Names the reference, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("secret reference `{reference}` uses an unsupported scheme")]
    UnsupportedScheme { reference: String },
    #[error("secret reference `{reference}` is malformed: {problem}")]
    Malformed {
        reference: String,
        problem: &'static str,
    },
    #[error("secret reference `{reference}` is not allowed in `{field}`: {why}")]
    NotAllowed {
        reference: String,
        field: &'static str,
        why: String,
    },
    #[error("secret reference `{reference}`: environment variable is not set")]
    EnvMissing { reference: String },
    /// The message names the reference, not the path: results go to the
    /// orchestrator, which has no business learning the worker's layout.
    #[error("secret reference `{reference}`: cannot read it: {source}")]
    File {
        reference: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret reference `{reference}`: Vault is not configured (vault.addr is unset)")]
    VaultNotConfigured { reference: String },
    #[error("secret reference `{reference}`: {source}")]
    Vault {
        reference: String,
        source: VaultError,
    },
    #[error("secret reference `{reference}`: {source}")]
    EnvLine {
        reference: String,
        source: EnvLineError,
    },
}

impl ResolveError {
    /// The reference that failed, for the result's `details`.
    pub fn reference(&self) -> &str {
        match self {
            ResolveError::UnsupportedScheme { reference }
            | ResolveError::Malformed { reference, .. }
            | ResolveError::NotAllowed { reference, .. }
            | ResolveError::EnvMissing { reference }
            | ResolveError::File { reference, .. }
            | ResolveError::VaultNotConfigured { reference }
            | ResolveError::Vault { reference, .. }
            | ResolveError::EnvLine { reference, .. } => reference,
        }
    }

    /// The contract's `details.reason`.
    pub fn reason(&self) -> FailureReason {
        match self {
            ResolveError::UnsupportedScheme { .. }
            | ResolveError::Malformed { .. }
            | ResolveError::EnvLine { .. } => FailureReason::Malformed,
            ResolveError::VaultNotConfigured { .. } => FailureReason::Unavailable,
            ResolveError::Vault { source, .. } => source.reason(),
            ResolveError::NotAllowed { .. } => FailureReason::NotAllowed,
            ResolveError::EnvMissing { .. } => FailureReason::NotFound,
            ResolveError::File { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => FailureReason::NotFound,
                std::io::ErrorKind::PermissionDenied => FailureReason::Forbidden,
                // Not text: the file is no secret value (or a directory).
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::IsADirectory => {
                    FailureReason::Malformed
                }
                _ => FailureReason::Unavailable,
            },
        }
    }
}

/// Turns references into values.
#[derive(Debug, Clone)]
pub struct Resolver {
    local: LocalSecrets,
    vault: VaultAccess,
}

/// What `vault:` references resolve through.
#[derive(Debug, Clone)]
enum VaultAccess {
    /// `vault.addr` is unset.
    NotConfigured,
    Client(Vault),
    /// The client could not be built; every `vault:` reference fails
    /// `unavailable` with this.
    Broken(String),
}

/// How many values the caller wants from a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// One value: a `vault:` reference must name its `#FIELD`.
    One,
    /// `.env` text: a whole Vault secret becomes `KEY=VALUE` lines.
    EnvFile,
}

impl Resolver {
    /// A resolver reading `file:` references under `secrets_dir`, without
    /// Vault.
    pub fn new(secrets_dir: PathBuf) -> Resolver {
        Resolver {
            local: LocalSecrets::new(secrets_dir),
            vault: VaultAccess::NotConfigured,
        }
    }

    /// A resolver that also reads `vault:` references as `vault`
    /// describes (no I/O: Vault is first asked by the first such read).
    pub fn with_vault(secrets_dir: PathBuf, vault: &VaultSettings) -> Resolver {
        let local = LocalSecrets::new(secrets_dir);
        let vault = match Vault::new(vault, local.clone()) {
            Ok(Some(client)) => VaultAccess::Client(client),
            Ok(None) => VaultAccess::NotConfigured,
            Err(e) => {
                tracing::error!(error.message = %e, "the Vault client cannot be built; vault: references will fail");
                VaultAccess::Broken(e.to_string())
            }
        };
        Resolver { local, vault }
    }

    /// The value behind a reference kept as plain text (settings, the
    /// `servers` table), checked like one from a payload first.
    pub async fn resolve_str(&self, reference: &str) -> Result<SecretString, ResolveError> {
        self.resolve(&parse_kept(reference)?).await
    }

    /// The one value behind `reference` (a token, a key, a password).
    pub async fn resolve(&self, reference: &SecretRef) -> Result<SecretString, ResolveError> {
        self.resolve_as(reference, Want::One).await
    }

    /// The `.env` text behind `reference`: an `env:` or `file:` value, or
    /// a Vault field, as it is; a whole Vault secret as sorted `KEY=VALUE`
    /// lines (a value with a line break is refused as `malformed`).
    pub async fn resolve_env_file(
        &self,
        reference: &SecretRef,
    ) -> Result<SecretString, ResolveError> {
        self.resolve_as(reference, Want::EnvFile).await
    }

    async fn resolve_as(
        &self,
        reference: &SecretRef,
        want: Want,
    ) -> Result<SecretString, ResolveError> {
        match reference.as_str().split_once(':') {
            Some(("vault", rest)) => self.resolve_vault(reference.as_str(), rest, want).await,
            _ => self.local.resolve(reference).await,
        }
    }

    async fn resolve_vault(
        &self,
        reference: &str,
        rest: &str,
        want: Want,
    ) -> Result<SecretString, ResolveError> {
        let reference_owned = || reference.to_owned();
        let parsed = VaultRef::parse(rest).map_err(|problem| ResolveError::Malformed {
            reference: reference_owned(),
            problem,
        })?;
        if want == Want::One && parsed.field().is_none() {
            return Err(ResolveError::Malformed {
                reference: reference_owned(),
                problem: "this field takes one value: name it with #FIELD",
            });
        }
        let vault_error = |source| ResolveError::Vault {
            reference: reference_owned(),
            source,
        };
        let client = match &self.vault {
            VaultAccess::Client(client) => client,
            VaultAccess::NotConfigured => {
                return Err(ResolveError::VaultNotConfigured {
                    reference: reference_owned(),
                });
            }
            VaultAccess::Broken(problem) => {
                return Err(vault_error(VaultError::Setup(problem.clone())));
            }
        };
        let secret = client.read(&parsed).await.map_err(vault_error)?;
        match parsed.field() {
            Some(field) => secret.into_field(field).ok_or_else(|| {
                vault_error(VaultError::FieldMissing {
                    path: parsed.secret_path(),
                    field: field.to_owned(),
                })
            }),
            None => secret.env_text().map_err(|source| ResolveError::EnvLine {
                reference: reference_owned(),
                source,
            }),
        }
    }
}

/// Resolves `env:` and `file:` references: what needs no server. The Vault
/// client reads its own login credentials through it too.
#[derive(Debug, Clone)]
pub struct LocalSecrets {
    secrets_dir: PathBuf,
}

impl LocalSecrets {
    /// Reads `file:` references under `secrets_dir`.
    pub fn new(secrets_dir: PathBuf) -> LocalSecrets {
        LocalSecrets { secrets_dir }
    }

    /// [`resolve`](Self::resolve) for a reference kept as plain text (a
    /// setting).
    pub async fn resolve_str(&self, reference: &str) -> Result<SecretString, ResolveError> {
        self.resolve(&parse_kept(reference)?).await
    }

    /// The value of an `env:` or `file:` reference; any other scheme is
    /// refused as unsupported.
    pub async fn resolve(&self, reference: &SecretRef) -> Result<SecretString, ResolveError> {
        let raw = reference.as_str();
        let reference_owned = || raw.to_owned();
        match raw.split_once(':') {
            Some(("env", name)) => resolve_env(name).ok_or_else(|| {
                if !is_variable_name(name) {
                    ResolveError::Malformed {
                        reference: reference_owned(),
                        problem: "not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    }
                } else {
                    ResolveError::EnvMissing {
                        reference: reference_owned(),
                    }
                }
            }),
            Some(("file", _)) => {
                let path = self.file_path_checked(raw)?;
                let text = tokio::fs::read_to_string(&path).await.map_err(|source| {
                    ResolveError::File {
                        reference: reference_owned(),
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok(SecretString::from(strip_one_trailing_newline(text)))
            }
            _ => Err(ResolveError::UnsupportedScheme {
                reference: reference_owned(),
            }),
        }
    }

    /// The file a `file:` reference reads, if it is one and a valid one.
    pub fn file_path(&self, reference: &SecretRef) -> Option<PathBuf> {
        match reference.as_str().split_once(':') {
            Some(("file", _)) => self.file_path_checked(reference.as_str()).ok(),
            _ => None,
        }
    }

    fn file_path_checked(&self, raw: &str) -> Result<PathBuf, ResolveError> {
        let name = raw.split_once(':').map_or("", |(_, name)| name);
        let relative = checked_relative(name).map_err(|problem| ResolveError::Malformed {
            reference: raw.to_owned(),
            problem,
        })?;
        Ok(self.secrets_dir.join(relative))
    }
}

/// A reference kept as text, checked like one from a payload.
fn parse_kept(reference: &str) -> Result<SecretRef, ResolveError> {
    SecretRef::parse(reference).map_err(|_| ResolveError::Malformed {
        reference: reference.to_owned(),
        problem: "not a secret reference",
    })
}

fn resolve_env(name: &str) -> Option<SecretString> {
    if !is_variable_name(name) {
        return None;
    }
    std::env::var(name).ok().map(SecretString::from)
}

/// A shell variable name. Anything else is refused before the lookup:
/// libc's `getenv("VAR=abc")` answers with the rest of `VAR`'s value when
/// it starts with `abc=`, a read of part of a variable by another name.
pub(crate) fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A `file:` name must stay inside the secrets directory.
fn checked_relative(name: &str) -> Result<&Path, &'static str> {
    if name.is_empty() {
        return Err("empty file name");
    }
    let path = Path::new(name);
    for component in path.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err("`..` is not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed");
            }
            Component::CurDir => return Err("`.` components are not allowed"),
        }
    }
    Ok(path)
}

/// Secret files written with `echo` end in a newline that is not part of
/// the value; a token with a trailing newline breaks HTTP headers.
fn strip_one_trailing_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_name_is_a_variable_name_or_nothing() {
        assert!(is_variable_name("GITHUB_TOKEN"));
        assert!(is_variable_name("_x1"));
        for name in ["", "1X", "PATH=/usr", "A-B", "A B", "É"] {
            assert!(!is_variable_name(name), "{name}");
        }
    }

    #[test]
    fn file_names_must_stay_inside_the_secrets_dir() {
        assert!(checked_relative("github/token").is_ok());
        assert_eq!(
            checked_relative("/etc/shadow"),
            Err("absolute paths are not allowed")
        );
        assert_eq!(checked_relative("../x"), Err("`..` is not allowed"));
        assert_eq!(checked_relative("a/../../x"), Err("`..` is not allowed"));
        assert_eq!(checked_relative(""), Err("empty file name"));
    }

    #[tokio::test]
    async fn each_failure_has_the_contracts_reason() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = Resolver::new(dir.path().to_owned());
        let reason = |reference: &'static str| {
            let resolver = resolver.clone();
            async move { resolver.resolve_str(reference).await.unwrap_err().reason() }
        };
        assert_eq!(
            reason("env:INFRA_TEST_UNSET_VARIABLE").await,
            FailureReason::NotFound
        );
        assert_eq!(reason("file:missing").await, FailureReason::NotFound);
        assert_eq!(reason("file:../x").await, FailureReason::Malformed);
        assert_eq!(reason("aws-sm:prod/x").await, FailureReason::Malformed);
        assert_eq!(reason("no scheme").await, FailureReason::Malformed);
        let refused = ResolveError::NotAllowed {
            reference: "env:PGPASSWORD".into(),
            field: "github_token_ref",
            why: "names the worker's own configuration".into(),
        };
        assert_eq!(refused.reason(), FailureReason::NotAllowed);
        assert_eq!(refused.reference(), "env:PGPASSWORD");
        assert_eq!(FailureReason::FieldMissing.as_str(), "field_missing");
        assert_eq!(
            serde_json::to_value(FailureReason::NotAllowed).unwrap(),
            "not_allowed"
        );
    }

    fn vault_settings(addr: Option<&str>) -> VaultSettings {
        VaultSettings {
            addr: addr.map(|a| crate::secrets::vault::VaultAddr::parse(a).unwrap()),
            ca_cert: None,
            namespace: None,
            timeout_secs: 1,
            retry_secs: 0,
            auth: Some(crate::config::VaultAuth::Token {
                token_ref: "env:INFRA_TEST_UNSET_VAULT_TOKEN".into(),
            }),
            login_refs: Vec::new(),
            kubernetes_jwt_path: std::path::PathBuf::new(),
        }
    }

    #[tokio::test]
    async fn a_vault_reference_without_vault_configured_is_unavailable_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = Resolver::with_vault(dir.path().to_owned(), &vault_settings(None));
        let e = resolver
            .resolve_str("vault:secret/x#token")
            .await
            .unwrap_err();
        assert_eq!(e.reason(), FailureReason::Unavailable);
        assert!(e.to_string().contains("Vault is not configured"), "{e}");
        assert_eq!(e.reference(), "vault:secret/x#token");
    }

    #[tokio::test]
    async fn a_one_value_field_given_a_whole_vault_secret_is_malformed_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: a request would fail `unavailable`.
        let settings = vault_settings(Some("http://127.0.0.1:9"));
        let resolver = Resolver::with_vault(dir.path().to_owned(), &settings);
        let e = resolver.resolve_str("vault:secret/x").await.unwrap_err();
        assert_eq!(e.reason(), FailureReason::Malformed);
        assert!(e.to_string().contains("#FIELD"), "{e}");
        let e = resolver.resolve_str("vault:secret//x#f").await.unwrap_err();
        assert_eq!(e.reason(), FailureReason::Malformed);
    }

    #[tokio::test]
    async fn env_and_file_references_read_as_env_files_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.env"), "A=1\nB=2\n").unwrap();
        let resolver = Resolver::new(dir.path().to_owned());
        let reference = SecretRef::parse("file:app.env").unwrap();
        let text = resolver.resolve_env_file(&reference).await.unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&text), "A=1\nB=2");
    }

    #[test]
    fn one_trailing_newline_is_not_part_of_the_value() {
        assert_eq!(strip_one_trailing_newline("tok\n".into()), "tok");
        assert_eq!(strip_one_trailing_newline("tok\r\n".into()), "tok");
        assert_eq!(strip_one_trailing_newline("a\nb\n\n".into()), "a\nb\n");
    }
}
