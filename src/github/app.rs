//! Logging in as a GitHub App: an RS256 JWT signed with the App's private
//! key (read through the `Resolver` each time one is made, so a rotated key
//! file is picked up), the repository's installation, and an installation
//! token narrowed to that repository and `secrets: write`, cached per
//! repository until shortly before it expires.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::GithubError;
use super::api::{Api, Call};
use crate::config::GithubApp;
use crate::job::RepoName;
use crate::secrets::Resolver;

/// GitHub rejects an `iat` in its future; clocks drift, so the JWT says
/// it was issued this long ago (GitHub's own advice).
const JWT_BACKDATE_SECS: i64 = 60;

/// A JWT lives at most ten minutes; nine leaves room for clock drift.
const JWT_LIFETIME_SECS: i64 = 9 * 60;

/// An installation token is renewed this long before its `expires_at`, so
/// no call starts with a token about to lapse.
const RENEW_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The App and the installation tokens it has minted.
pub(crate) struct AppLogin {
    app: GithubApp,
    resolver: Resolver,
    /// By repository; the lock is held while a token is minted, so two
    /// writes at once never mint two.
    tokens: Mutex<HashMap<String, Installation>>,
}

/// An installation token and when it stops working.
#[derive(Clone)]
struct Installation {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

#[derive(Deserialize)]
struct InstallationAnswer {
    id: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

impl AppLogin {
    /// The App `app` describes; its key is read when a token is needed.
    pub fn new(app: GithubApp, resolver: Resolver) -> AppLogin {
        AppLogin {
            app,
            resolver,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// An installation token for `repo`: the cached one while it has more
    /// than the margin left, else a new one.
    pub async fn token(
        &self,
        api: &Api,
        repo: &RepoName,
        deadline: Instant,
    ) -> Result<SecretString, GithubError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(cached) = tokens.get(repo.as_str())
            && !renew_due(cached.expires_at, Utc::now())
        {
            return Ok(cached.token.clone());
        }
        let minted = self.mint(api, repo, deadline).await?;
        tokens.insert(repo.as_str().to_owned(), minted.clone());
        Ok(minted.token)
    }

    /// Drops `repo`'s cached token: GitHub refused it (revoked, or the
    /// App's installation changed), so the next write mints a new one.
    pub async fn forget(&self, repo: &RepoName) {
        self.tokens.lock().await.remove(repo.as_str());
    }

    /// JWT, installation, token: three steps, each a call of its own.
    async fn mint(
        &self,
        api: &Api,
        repo: &RepoName,
        deadline: Instant,
    ) -> Result<Installation, GithubError> {
        let jwt = self.jwt().await?;
        let what = format!("the App installation on {}", repo.as_str());
        let path = format!("repos/{}/installation", repo.as_str());
        let reply = api
            .call(Call::new(Method::GET, path, &jwt, what.clone()), deadline)
            .await?;
        super::check_status(reply.status, &what, repo, &[StatusCode::OK])?;
        let installation: InstallationAnswer = reply.json()?;

        let what = format!("an installation token for {}", repo.as_str());
        let path = format!("app/installations/{}/access_tokens", installation.id);
        // Narrowed: the token can touch this repository's secrets and
        // nothing else the App may reach.
        let body = serde_json::json!({
            "repositories": [repo.repo()],
            "permissions": {"secrets": "write"},
        });
        let call = Call::new(Method::POST, path, &jwt, what.clone()).json(&body);
        let reply = api.call(call, deadline).await?;
        super::check_status(reply.status, &what, repo, &[StatusCode::CREATED])?;
        let answer: TokenAnswer = reply.json()?;
        tracing::info!(repo = %repo.as_str(), installation = installation.id,
            expires_at = %answer.expires_at, "minted a GitHub App installation token");
        Ok(Installation {
            token: answer.token,
            expires_at: answer.expires_at,
        })
    }

    /// A fresh JWT: issued a minute ago, good for nine minutes.
    async fn jwt(&self) -> Result<SecretString, GithubError> {
        let reference = &self.app.private_key_ref;
        let pem = self
            .resolver
            .resolve_str(reference)
            .await
            .map_err(|e| GithubError::Credentials(e.to_string()))?;
        // The key's own parse error could quote it: a fixed message instead.
        let key = EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()).map_err(|_| {
            GithubError::Credentials(format!(
                "github.app_private_key_ref `{reference}` is not an RSA private key in PEM"
            ))
        })?;
        let now = Utc::now().timestamp();
        let claims = Claims {
            iat: now - JWT_BACKDATE_SECS,
            exp: now + JWT_LIFETIME_SECS,
            iss: self.app.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
            .map(SecretString::from)
            .map_err(|_| GithubError::Credentials("signing the App's JWT failed".to_owned()))
    }
}

/// Whether a token expiring at `expires_at` is too close to it to use.
fn renew_due(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expires_at - RENEW_MARGIN <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_within_five_minutes_of_its_expiry() {
        let now = Utc::now();
        assert!(!renew_due(now + chrono::TimeDelta::minutes(60), now));
        assert!(renew_due(now + chrono::TimeDelta::minutes(4), now));
        assert!(renew_due(now - chrono::TimeDelta::minutes(1), now));
    }
}
