//! Resolving `env:` and `file:` references.

use std::path::{Component, Path, PathBuf};

use secrecy::SecretString;

use crate::job::SecretRef;

/// Why a reference gave no value, as the contract's `details.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    #[error("secret reference `{reference}`: cannot read {path}: {source}")]
    File {
        reference: String,
        path: PathBuf,
        source: std::io::Error,
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
            | ResolveError::File { reference, .. } => reference,
        }
    }

    /// The contract's `details.reason`.
    pub fn reason(&self) -> FailureReason {
        match self {
            ResolveError::UnsupportedScheme { .. } | ResolveError::Malformed { .. } => {
                FailureReason::Malformed
            }
            ResolveError::NotAllowed { .. } => FailureReason::NotAllowed,
            ResolveError::EnvMissing { .. } => FailureReason::NotFound,
            ResolveError::File { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => FailureReason::NotFound,
                std::io::ErrorKind::PermissionDenied => FailureReason::Forbidden,
                _ => FailureReason::Unavailable,
            },
        }
    }
}

/// Turns references into values.
#[derive(Debug, Clone)]
pub struct Resolver {
    secrets_dir: PathBuf,
}

impl Resolver {
    /// A resolver reading `file:` references under `secrets_dir`.
    pub fn new(secrets_dir: PathBuf) -> Resolver {
        Resolver { secrets_dir }
    }

    /// The value behind a reference kept as plain text (settings, the
    /// `servers` table), checked like one from a payload first.
    pub async fn resolve_str(&self, reference: &str) -> Result<SecretString, ResolveError> {
        let parsed = SecretRef::parse(reference).map_err(|_| ResolveError::Malformed {
            reference: reference.to_owned(),
            problem: "not a secret reference",
        })?;
        self.resolve(&parsed).await
    }

    /// The value behind `reference`.
    pub async fn resolve(&self, reference: &SecretRef) -> Result<SecretString, ResolveError> {
        let raw = reference.as_str();
        let reference_owned = || raw.to_owned();
        match raw.split_once(':') {
            Some(("env", name)) => resolve_env(name).ok_or_else(|| {
                if name.is_empty() {
                    ResolveError::Malformed {
                        reference: reference_owned(),
                        problem: "empty variable name",
                    }
                } else {
                    ResolveError::EnvMissing {
                        reference: reference_owned(),
                    }
                }
            }),
            Some(("file", name)) => {
                let relative =
                    checked_relative(name).map_err(|problem| ResolveError::Malformed {
                        reference: reference_owned(),
                        problem,
                    })?;
                let path = self.secrets_dir.join(relative);
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
}

fn resolve_env(name: &str) -> Option<SecretString> {
    if name.is_empty() {
        return None;
    }
    std::env::var(name).ok().map(SecretString::from)
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

    #[test]
    fn one_trailing_newline_is_not_part_of_the_value() {
        assert_eq!(strip_one_trailing_newline("tok\n".into()), "tok");
        assert_eq!(strip_one_trailing_newline("tok\r\n".into()), "tok");
        assert_eq!(strip_one_trailing_newline("a\nb\n\n".into()), "a\nb\n");
    }
}
