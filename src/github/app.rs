//! Logging in as a GitHub App: an RS256 JWT signed with the App's private
//! key (read through the `Resolver` each time one is made, so a rotated key
//! file is picked up), the repository's installation, and an installation
//! token narrowed to that repository and `secrets: write`, cached per
//! repository until shortly before it expires. Writes to one repository
//! share one token request; writes to others never wait for it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

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
    tokens: TokenCache,
}

/// Installation tokens by repository, each in a slot of its own. The map's
/// lock is held only to find or add a slot, never across I/O; a slot's lock
/// is held while its token is minted (an installation lookup and a token
/// request, each of which may wait out a rate limit), so writes to one
/// repository share one mint and writes to others do not wait for it.
#[derive(Default)]
struct TokenCache {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

/// One repository's token, if one was minted and not forgotten.
type Slot = Arc<Mutex<Option<Installation>>>;

/// An installation token and when it stops working.
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
            tokens: TokenCache::default(),
        }
    }

    /// An installation token for `repo`: the cached one while it has more
    /// than the margin left, else a new one (or the one another write to
    /// `repo` is minting right now).
    pub async fn token(
        &self,
        api: &Api,
        repo: &RepoName,
        deadline: Instant,
    ) -> Result<SecretString, GithubError> {
        self.tokens
            .get_or_mint(repo.as_str(), || self.mint(api, repo, deadline))
            .await
    }

    /// Drops `repo`'s cached token: GitHub refused it (revoked, or the
    /// App's installation changed), so the next write mints a new one.
    pub async fn forget(&self, repo: &RepoName) {
        self.tokens.forget(repo.as_str()).await;
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

impl TokenCache {
    /// `repo`'s token while it is fresh, else the one `mint` makes, kept.
    /// One mint per repository at a time: a caller arriving during one
    /// waits for it and takes its token. A mint that fails or is dropped
    /// changes nothing cached, and the next caller waiting mints anew.
    async fn get_or_mint<F, Fut>(&self, repo: &str, mint: F) -> Result<SecretString, GithubError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Installation, GithubError>>,
    {
        let slot = self.slot(repo);
        let mut cached = slot.lock().await;
        if let Some(installation) = cached.as_ref()
            && !renew_due(installation.expires_at, Utc::now())
        {
            return Ok(installation.token.clone());
        }
        let minted = mint().await?;
        let token = minted.token.clone();
        *cached = Some(minted);
        Ok(token)
    }

    /// Empties `repo`'s slot. Waits for a mint in flight for `repo`, so a
    /// token it had just cached is dropped too: one mint too many, never a
    /// refused token kept, and never two mints for one repository at once.
    async fn forget(&self, repo: &str) {
        let slot = self.map().get(repo).cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    /// `repo`'s slot, added empty the first time.
    fn slot(&self, repo: &str) -> Slot {
        self.map().entry(repo.to_owned()).or_default().clone()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // Single lookups and inserts cannot leave the map half changed, so
        // a lock poisoned by a panic elsewhere is still good.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a token expiring at `expires_at` is too close to it to use.
fn renew_due(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expires_at - RENEW_MARGIN <= now
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// A token good for an hour, named by `n`.
    fn installation(n: usize) -> Installation {
        Installation {
            token: SecretString::from(format!("ghs_test{n}")),
            expires_at: Utc::now() + chrono::TimeDelta::hours(1),
        }
    }

    /// A mint that counts itself, takes a moment and makes a fresh token.
    async fn counted(mints: &AtomicUsize) -> Result<Installation, GithubError> {
        let n = mints.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(installation(n))
    }

    #[tokio::test]
    async fn callers_for_one_repository_at_once_share_one_mint() {
        let cache = TokenCache::default();
        let mints = AtomicUsize::new(0);

        let (a, b) = tokio::join!(
            cache.get_or_mint("o/r", || counted(&mints)),
            cache.get_or_mint("o/r", || counted(&mints)),
        );

        assert_eq!(mints.load(Ordering::SeqCst), 1);
        assert_eq!(a.unwrap().expose_secret(), "ghs_test1");
        assert_eq!(b.unwrap().expose_secret(), "ghs_test1");
    }

    #[tokio::test]
    async fn a_mint_in_flight_for_one_repository_holds_up_only_that_repository() {
        let cache = Arc::new(TokenCache::default());
        let started = Arc::new(Notify::new());
        let stuck = tokio::spawn({
            let (cache, started) = (cache.clone(), started.clone());
            async move {
                let mint = || async move {
                    started.notify_one();
                    std::future::pending().await
                };
                cache.get_or_mint("o/slow", mint).await
            }
        });
        started.notified().await;
        let mints = AtomicUsize::new(0);

        let other = tokio::time::timeout(
            Duration::from_secs(5),
            cache.get_or_mint("o/fast", || counted(&mints)),
        )
        .await;
        let same = tokio::time::timeout(
            Duration::from_millis(200),
            cache.get_or_mint("o/slow", || counted(&mints)),
        )
        .await;

        assert_eq!(other.unwrap().unwrap().expose_secret(), "ghs_test1");
        assert!(same.is_err(), "waited for the mint in flight");
        // A mint given up (its write cancelled) leaves nothing: the next
        // caller mints.
        stuck.abort();
        let _ = stuck.await;
        let after = cache.get_or_mint("o/slow", || counted(&mints)).await;
        assert_eq!(after.unwrap().expose_secret(), "ghs_test2");
    }

    #[tokio::test]
    async fn a_failed_mint_keeps_nothing_and_is_not_shared() {
        let cache = TokenCache::default();
        let mints = AtomicUsize::new(0);

        let failed = cache
            .get_or_mint("o/r", || async {
                Err(GithubError::Credentials("no key".to_owned()))
            })
            .await;
        let next = cache.get_or_mint("o/r", || counted(&mints)).await;

        assert!(failed.is_err());
        assert_eq!(next.unwrap().expose_secret(), "ghs_test1");
    }

    #[tokio::test]
    async fn a_cached_token_is_reused_until_forgotten_and_forgetting_touches_one_repository() {
        let cache = TokenCache::default();
        let mints = AtomicUsize::new(0);
        for repo in ["o/a", "o/b", "o/a", "o/b"] {
            cache.get_or_mint(repo, || counted(&mints)).await.unwrap();
        }
        assert_eq!(mints.load(Ordering::SeqCst), 2);

        cache.forget("o/a").await;
        cache.forget("o/never-seen").await;
        let a = cache.get_or_mint("o/a", || counted(&mints)).await.unwrap();
        let b = cache.get_or_mint("o/b", || counted(&mints)).await.unwrap();

        assert_eq!(a.expose_secret(), "ghs_test3");
        assert_eq!(b.expose_secret(), "ghs_test2");
    }

    #[tokio::test]
    async fn a_token_near_its_expiry_is_minted_anew() {
        let cache = TokenCache::default();
        let mints = AtomicUsize::new(0);
        let expiring = || async {
            Ok(Installation {
                token: SecretString::from("ghs_expiring"),
                expires_at: Utc::now() + chrono::TimeDelta::minutes(1),
            })
        };
        cache.get_or_mint("o/r", expiring).await.unwrap();

        let next = cache.get_or_mint("o/r", || counted(&mints)).await;

        assert_eq!(next.unwrap().expose_secret(), "ghs_test1");
    }

    #[test]
    fn a_token_is_renewed_within_five_minutes_of_its_expiry() {
        let now = Utc::now();
        assert!(!renew_due(now + chrono::TimeDelta::minutes(60), now));
        assert!(renew_due(now + chrono::TimeDelta::minutes(4), now));
        assert!(renew_due(now - chrono::TimeDelta::minutes(1), now));
    }
}
