//! GitHub Actions repository secrets: the repository's public key, each
//! value sealed for it (`seal`) and written with `PUT`, one at a time, as a
//! GitHub App (`app`) when one is configured, else with the token the
//! caller passes. An App writes only to a repository the caller's token
//! may push to: the App reaches every repository it is installed on, the
//! job names the repository. `api` is the HTTP layer: headers, rate
//! limits, retries. No error carries a token, a JWT, a value or an answer
//! body.

mod api;
mod app;
mod seal;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::time::Instant;

pub use api::{ApiUrl, ApiUrlError, DEFAULT_API_URL};

use api::{Api, Call};
use app::AppLogin;
use seal::{PublicKeyAnswer, RepoKey};

use crate::config::GithubSettings;
use crate::job::RepoName;
use crate::secrets::{Redactor, Resolver};

/// Why secrets could not be written. Says what happened and what to fix;
/// never holds a credential, a value or an answer body.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// 403 that is no rate limit: the token or App lacks the permission.
    #[error("GitHub refused {what} (HTTP 403): the credentials lack `secrets: write` on {repo}")]
    Forbidden { what: String, repo: String },
    /// 404: GitHub answers so for a repository the credentials cannot see.
    #[error(
        "GitHub found nothing for {what} (HTTP 404): no repository {repo}, or the credentials have no access to it"
    )]
    NotFound { what: String, repo: String },
    /// With an App: the job's own token may not push to the repository
    /// (its `GET /repos/{owner}/{repo}` says so, or refuses), so the App,
    /// which could, does not write for it.
    #[error(
        "the job's GitHub token may not push to {repo} ({why}); the App writes secrets only for repositories the job's own token can push to"
    )]
    NotEntitled { repo: String, why: String },
    /// 401: a token that is wrong, expired or revoked, or a JWT refused.
    #[error("GitHub did not accept the credentials for {what} (HTTP 401)")]
    Unauthorized { what: String },
    /// GitHub asked for a wait that ends after the deadline.
    #[error(
        "GitHub rate-limited {what} past the deadline (asked to wait {asked:?} after {waited:?})"
    )]
    RateLimited {
        what: String,
        waited: Duration,
        asked: Duration,
    },
    /// 5xx or no connection until the deadline.
    #[error("GitHub was unavailable for {what} for {waited:?}: {last}")]
    Unavailable {
        what: String,
        waited: Duration,
        last: String,
    },
    /// An answer that is not what the documentation says.
    #[error("GitHub's answer to {what} is malformed: {problem}")]
    Malformed { what: String, problem: String },
    /// A status the documentation does not give for the call.
    #[error("GitHub answered {what} with HTTP {status}")]
    Unexpected { what: String, status: u16 },
    /// No usable credentials (the App's key could not be read or used).
    #[error("GitHub credentials: {0}")]
    Credentials(String),
    /// A name GitHub would refuse: letters, digits and `_`, no leading
    /// digit, no `GITHUB_` prefix.
    #[error("`{0}` is not a valid GitHub Actions secret name")]
    BadName(String),
    /// The client itself could not be made or used.
    #[error("the GitHub client: {0}")]
    Setup(String),
}

impl GithubError {
    /// One word for results' `details.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            GithubError::Forbidden { .. } => "forbidden",
            GithubError::NotFound { .. } => "not_found",
            GithubError::NotEntitled { .. } => "not_entitled",
            GithubError::Unauthorized { .. } => "unauthorized",
            GithubError::RateLimited { .. } => "rate_limited",
            GithubError::Unavailable { .. } => "unavailable",
            GithubError::Malformed { .. } => "malformed",
            GithubError::Unexpected { .. } => "unexpected",
            GithubError::Credentials(_) => "credentials",
            GithubError::BadName(_) => "bad_name",
            GithubError::Setup(_) => "setup",
        }
    }

    /// The same error with every free text passed through `redactor`.
    fn redacted(self, redactor: &Redactor) -> GithubError {
        match self {
            GithubError::Unavailable { what, waited, last } => GithubError::Unavailable {
                what,
                waited,
                last: redactor.redact(&last),
            },
            GithubError::Malformed { what, problem } => GithubError::Malformed {
                what,
                problem: redactor.redact(&problem),
            },
            GithubError::Credentials(text) => GithubError::Credentials(redactor.redact(&text)),
            GithubError::Setup(text) => GithubError::Setup(redactor.redact(&text)),
            other => other,
        }
    }
}

/// What a `PUT` did to one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// 201: the secret is new.
    Created,
    /// 204: an existing secret has a new value.
    Updated,
}

/// A write of several secrets that stopped: the ones stored before it, in
/// order, and why it stopped.
#[derive(Debug)]
pub struct PartialWrite {
    /// The names stored before the failure.
    pub written: Vec<String>,
    pub error: GithubError,
}

impl std::fmt::Display for PartialWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for PartialWrite {}

impl From<GithubError> for PartialWrite {
    fn from(error: GithubError) -> PartialWrite {
        PartialWrite {
            written: Vec::new(),
            error,
        }
    }
}

/// How the client proves who it is.
enum Login {
    /// Installation tokens of the App in `github.app_id`.
    App(AppLogin),
    /// The token each caller passes.
    Token,
}

/// Writes GitHub Actions secrets of repositories.
pub struct SecretsClient {
    api: Api,
    login: Login,
    retry: Duration,
}

impl SecretsClient {
    /// A client for `settings`; the App's key is read through `resolver`
    /// when a token is first needed. No I/O.
    pub fn new(
        settings: &GithubSettings,
        resolver: Resolver,
    ) -> Result<SecretsClient, GithubError> {
        let timeout = Duration::from_secs(settings.timeout_secs);
        let api = Api::new(settings.api_url.clone(), timeout)?;
        let login = match &settings.app {
            Some(app) => Login::App(AppLogin::new(app.clone(), resolver)),
            None => Login::Token,
        };
        Ok(SecretsClient {
            api,
            login,
            retry: Duration::from_secs(settings.retry_secs),
        })
    }

    /// Writes `secrets` (name, value) to `repo`, one at a time, in order,
    /// within `github.retry_secs` in all. `token` is used only when no App
    /// is configured. Stops at the first failure, saying which were stored.
    #[tracing::instrument(skip_all, fields(repo = %repo.as_str()))]
    pub async fn write_secrets(
        &self,
        repo: &RepoName,
        token: &SecretString,
        secrets: &[(&str, SecretString)],
    ) -> Result<Vec<Written>, PartialWrite> {
        for (name, _) in secrets {
            check_name(name)?;
        }
        let mut involved: Vec<SecretString> = secrets.iter().map(|(_, v)| v.clone()).collect();
        involved.push(token.clone());
        let deadline = Instant::now() + self.retry;
        let outcome = self
            .write_all(repo, token, secrets, deadline, &mut involved)
            .await;
        if let (
            Err(PartialWrite {
                error: GithubError::Unauthorized { .. },
                ..
            }),
            Login::App(app),
        ) = (&outcome, &self.login)
        {
            app.forget(repo).await;
        }
        outcome.map_err(|failed| PartialWrite {
            written: failed.written,
            error: failed.error.redacted(&Redactor::new(&involved)),
        })
    }

    async fn write_all(
        &self,
        repo: &RepoName,
        token: &SecretString,
        secrets: &[(&str, SecretString)],
        deadline: Instant,
        involved: &mut Vec<SecretString>,
    ) -> Result<Vec<Written>, PartialWrite> {
        let token = match &self.login {
            Login::App(app) => {
                // Before any token is minted: the App acts only for a job
                // whose own token could write there itself.
                self.check_entitled(repo, token, deadline).await?;
                app.token(&self.api, repo, deadline).await?
            }
            Login::Token => token.clone(),
        };
        involved.push(token.clone());
        let key = self.public_key(repo, &token, deadline).await?;
        let mut written = Vec::with_capacity(secrets.len());
        for (name, value) in secrets {
            match self.put(repo, &token, &key, name, value, deadline).await {
                Ok(done) => written.push(done),
                Err(error) => {
                    let names = secrets[..written.len()]
                        .iter()
                        .map(|(n, _)| (*n).to_owned());
                    return Err(PartialWrite {
                        written: names.collect(),
                        error,
                    });
                }
            }
        }
        Ok(written)
    }

    /// `Ok` when `token` may push to `repo`: `GET /repos/{owner}/{repo}`
    /// answers 200 with `permissions.push`, `maintain` or `admin`. Any
    /// other answer (read-only permissions, none given, 401, 404) refuses.
    async fn check_entitled(
        &self,
        repo: &RepoName,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<(), GithubError> {
        let what = format!("the job's token's access to {}", repo.as_str());
        let path = format!("repos/{}", repo.as_str());
        let reply = self
            .api
            .call(Call::new(Method::GET, path, token, what), deadline)
            .await?;
        let refused = |why: String| GithubError::NotEntitled {
            repo: repo.as_str().to_owned(),
            why,
        };
        match reply.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(refused("GitHub did not accept it: HTTP 401".to_owned()));
            }
            StatusCode::NOT_FOUND => {
                return Err(refused(
                    "the repository is missing or hidden from it: HTTP 404".to_owned(),
                ));
            }
            other => return Err(refused(format!("GitHub answered HTTP {}", other.as_u16()))),
        }
        let answer: RepoAnswer = reply.json()?;
        if answer.permissions.is_some_and(|p| p.can_push()) {
            Ok(())
        } else {
            Err(refused("its permissions there are below push".to_owned()))
        }
    }

    async fn public_key(
        &self,
        repo: &RepoName,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<RepoKey, GithubError> {
        let what = format!("the Actions public key of {}", repo.as_str());
        let path = format!("repos/{}/actions/secrets/public-key", repo.as_str());
        let call = Call::new(Method::GET, path, token, what.clone());
        let reply = self.api.call(call, deadline).await?;
        check_status(reply.status, &what, repo, &[StatusCode::OK])?;
        RepoKey::from_answer(reply.json::<PublicKeyAnswer>()?, &what)
    }

    async fn put(
        &self,
        repo: &RepoName,
        token: &SecretString,
        key: &RepoKey,
        name: &str,
        value: &SecretString,
        deadline: Instant,
    ) -> Result<Written, GithubError> {
        let what = format!("the secret {name} of {}", repo.as_str());
        let path = format!("repos/{}/actions/secrets/{name}", repo.as_str());
        let call = Call::new(Method::PUT, path, token, what.clone()).json(&key.seal(value)?);
        let reply = self.api.call(call, deadline).await?;
        let status = reply.status;
        check_status(
            status,
            &what,
            repo,
            &[StatusCode::CREATED, StatusCode::NO_CONTENT],
        )?;
        tracing::info!(
            secret = name,
            status = status.as_u16(),
            "wrote a GitHub Actions secret"
        );
        Ok(if status == StatusCode::CREATED {
            Written::Created
        } else {
            Written::Updated
        })
    }
}

impl std::fmt::Debug for SecretsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let login = match self.login {
            Login::App(_) => "app",
            Login::Token => "token",
        };
        f.debug_struct("SecretsClient")
            .field("login", &login)
            .finish()
    }
}

/// The part of `GET /repos/{owner}/{repo}` the App's check reads.
#[derive(Deserialize)]
struct RepoAnswer {
    /// What the caller's token may do there; GitHub gives it to a token
    /// that can see the repository.
    permissions: Option<RepoPermissions>,
}

/// `permissions` of a repository answer (`triage` and `pull` unread).
#[derive(Deserialize)]
struct RepoPermissions {
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    maintain: bool,
    #[serde(default)]
    push: bool,
}

impl RepoPermissions {
    /// Whether the token may write to the repository's contents.
    fn can_push(&self) -> bool {
        self.push || self.maintain || self.admin
    }
}

/// `Ok` for a status in `expected`, else the error that status means.
fn check_status(
    status: StatusCode,
    what: &str,
    repo: &RepoName,
    expected: &[StatusCode],
) -> Result<(), GithubError> {
    if expected.contains(&status) {
        return Ok(());
    }
    let what = what.to_owned();
    let repo = repo.as_str().to_owned();
    Err(match status {
        StatusCode::UNAUTHORIZED => GithubError::Unauthorized { what },
        StatusCode::FORBIDDEN => GithubError::Forbidden { what, repo },
        StatusCode::NOT_FOUND => GithubError::NotFound { what, repo },
        _ => GithubError::Unexpected {
            what,
            status: status.as_u16(),
        },
    })
}

/// GitHub's rules for secret names: `[A-Za-z0-9_]`, no leading digit, no
/// `GITHUB_` prefix (any case).
fn check_name(name: &str) -> Result<(), GithubError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.to_ascii_uppercase().starts_with("GITHUB_");
    if ok {
        Ok(())
    } else {
        Err(GithubError::BadName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_githubs_rules() {
        for good in ["DEPLOY_HOST", "DEPLOY_SSH_KEY", "_X", "a1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1ABC", "GITHUB_TOKEN", "github_x", "A-B", "A B", "Ä"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_status_becomes_the_error_that_says_what_to_fix() {
        let repo = RepoName::parse("o/r").unwrap();
        let e = check_status(StatusCode::FORBIDDEN, "x", &repo, &[StatusCode::OK]).unwrap_err();
        assert!(e.to_string().contains("secrets: write"), "{e}");
        let e = check_status(StatusCode::NOT_FOUND, "x", &repo, &[StatusCode::OK]).unwrap_err();
        assert!(matches!(e, GithubError::NotFound { .. }));
        let e = check_status(StatusCode::CONFLICT, "x", &repo, &[StatusCode::OK]).unwrap_err();
        assert!(matches!(e, GithubError::Unexpected { status: 409, .. }));
        assert!(
            check_status(
                StatusCode::NO_CONTENT,
                "x",
                &repo,
                &[StatusCode::NO_CONTENT]
            )
            .is_ok()
        );
    }

    #[test]
    fn push_maintain_or_admin_entitles_and_pull_or_triage_does_not() {
        let answer = |text: &str| serde_json::from_str::<RepoAnswer>(text).unwrap();
        for yes in [
            r#"{"permissions": {"admin": false, "maintain": false, "push": true, "triage": true, "pull": true}}"#,
            r#"{"permissions": {"maintain": true}}"#,
            r#"{"permissions": {"admin": true}}"#,
        ] {
            assert!(
                answer(yes).permissions.is_some_and(|p| p.can_push()),
                "{yes}"
            );
        }
        for no in [
            r#"{"permissions": {"admin": false, "maintain": false, "push": false, "triage": true, "pull": true}}"#,
            r#"{"full_name": "o/r", "private": false}"#,
        ] {
            assert!(
                !answer(no).permissions.is_some_and(|p| p.can_push()),
                "{no}"
            );
        }
    }

    #[test]
    fn free_text_in_an_error_is_redacted() {
        let secret = SecretString::from("ghs_s3cr3tTokenValue");
        let e = GithubError::Unavailable {
            what: "w".into(),
            waited: Duration::ZERO,
            last: "error near ghs_s3cr3tTokenValue".into(),
        };
        let text = e.redacted(&Redactor::new([&secret])).to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
