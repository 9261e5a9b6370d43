//! A fake GitHub REST API on 127.0.0.1 for tests, following GitHub's
//! documentation of the endpoints the secrets client calls: a repository
//! (`{"full_name", "private", "permissions"}`, the PAT's role in it), the
//! Actions public key (`{"key_id", "key"}`), `PUT` of a secret (201
//! created, 204 updated, 422 for another `key_id`), the App's installation
//! lookup and
//! installation tokens (201 with `expires_at`), checked against an RS256
//! JWT it verifies with OpenSSL, not with the crate that signed it. It can
//! answer 403, 404, 429 with `retry-after`, a secondary limit's 403 without
//! headers and 5xx on demand (for every request, or for one secret's
//! `PUT`), can answer one path slowly, records every request (and when one
//! arrived), and keeps every sealed value for the test to open with PyNaCl.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use crypto_box::SecretKey;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::serve_on_loopback;

/// The key id the fake's repository key has (GitHub's are digit strings).
pub const KEY_ID: &str = "3380204578043523366";

/// The installation id every App lookup answers.
pub const INSTALLATION_ID: u64 = 4242;

/// A GitHub App the fake knows: its id and its public key (PEM).
#[derive(Debug, Clone)]
pub struct FakeApp {
    pub app_id: u64,
    pub public_pem: Vec<u8>,
    /// How long each installation token lives.
    pub token_lifetime: Duration,
}

/// How the fake account behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The one token (a PAT) the fake accepts besides installation tokens.
    pub token: String,
    /// `owner/repo` names that exist.
    pub repos: Vec<String>,
    /// `false`: the credentials lack `secrets: write` (403 on every `PUT`).
    pub secrets_write: bool,
    pub app: Option<FakeApp>,
    /// The PAT's role in a repository, by `owner/repo`; `Write` for one
    /// not named here.
    pub pat_roles: HashMap<String, Role>,
}

/// A token's role in a repository, as GitHub names them; it decides the
/// `permissions` a repository answer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Triage,
    Write,
    Maintain,
    Admin,
}

impl Role {
    /// The `permissions` object of `GET /repos/{owner}/{repo}`.
    fn permissions(self) -> Value {
        let at_least = |role: Role| self as u8 >= role as u8;
        json!({
            "admin": at_least(Role::Admin),
            "maintain": at_least(Role::Maintain),
            "push": at_least(Role::Write),
            "triage": at_least(Role::Triage),
            "pull": true,
        })
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            token: "ghp_fakePatToken7Hs2kQ".to_owned(),
            repos: vec!["acme/shop".to_owned()],
            secrets_write: true,
            app: None,
            pat_roles: HashMap::new(),
        }
    }
}

/// GitHub's message for a secondary rate limit that names no wait.
const SECONDARY_LIMIT_MESSAGE: &str = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:1111:2222:3333.";

/// An answer forced on the next request, whatever it asks.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// `status` (403 or 429) with `retry-after: secs`.
    RetryAfter { status: u16, secs: u64 },
    /// 403 with `x-ratelimit-remaining: 0`, reset `secs` from now.
    PrimaryLimit { secs: u64 },
    /// 403 with no rate limit header, only GitHub's secondary limit message.
    SecondaryLimit,
    /// A 5xx status.
    Server(u16),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// The whole `Authorization` header, if any.
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub api_version: Option<String>,
    /// What the fake answered.
    pub status: u16,
}

/// A secret as stored: the sealed value (base64) and the key id sent.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub encrypted_value: String,
    pub key_id: String,
}

#[derive(Default)]
struct Shared {
    requests: Vec<RecordedRequest>,
    secrets: HashMap<(String, String), StoredSecret>,
    failures: VecDeque<Failure>,
    /// Every request answers this 5xx while set.
    down: Option<u16>,
    /// The `PUT` of these secrets (by name) answers this 5xx.
    failing_secrets: HashMap<String, u16>,
    /// The path of every request, as it arrived (before any slowness).
    arrived: Vec<String>,
    /// Requests for these paths are answered only after this long.
    slow: HashMap<String, Duration>,
    /// Installation tokens minted: token -> expiry (epoch seconds).
    minted: HashMap<String, u64>,
    /// JWTs seen on App endpoints (to prove none leaks elsewhere).
    jwts: HashSet<String>,
}

#[derive(Clone)]
struct App {
    config: Arc<FakeConfig>,
    key: Arc<SecretKey>,
    shared: Arc<Mutex<Shared>>,
}

/// A running fake; stops when dropped.
pub struct FakeGithub {
    addr: SocketAddr,
    app: App,
    server: JoinHandle<()>,
}

impl FakeGithub {
    /// Starts a fake with `config` and a fresh repository key pair.
    pub async fn start(config: FakeConfig) -> FakeGithub {
        let app = App {
            config: Arc::new(config),
            key: Arc::new(SecretKey::generate(&mut crypto_box::aead::OsRng)),
            shared: Arc::new(Mutex::new(Shared::default())),
        };
        let router = Router::new().fallback(handle).with_state(app.clone());
        let (addr, server) = serve_on_loopback(router, "the fake GitHub API").await;
        FakeGithub { addr, app, server }
    }

    /// The API root to configure as `github.api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &FakeConfig {
        &self.app.config
    }

    /// The repository's private key, base64, for an independent decryption.
    pub fn private_key_b64(&self) -> String {
        STANDARD.encode(self.app.key.to_bytes())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.app.shared.lock().unwrap().requests.clone()
    }

    /// The secret `name` of `repo`, as last written.
    pub fn secret(&self, repo: &str, name: &str) -> Option<StoredSecret> {
        let shared = self.app.shared.lock().unwrap();
        shared
            .secrets
            .get(&(repo.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Opens the secret `name` of `repo` with PyNaCl, an implementation of
    /// libsodium's sealed boxes independent of ours: what GitHub would
    /// read. Panics unless it was stored, for the key the fake handed out.
    pub fn open_secret(&self, repo: &str, name: &str) -> String {
        let stored = self.secret(repo, name).expect("the secret was stored");
        assert_eq!(stored.key_id, KEY_ID);
        let script = "import sys, base64\n\
                      from nacl.public import PrivateKey, SealedBox\n\
                      key = PrivateKey(base64.b64decode(sys.argv[1]))\n\
                      sys.stdout.buffer.write(SealedBox(key).decrypt(base64.b64decode(sys.argv[2])))\n";
        let output = std::process::Command::new("python3")
            .args([
                "-c",
                script,
                &self.private_key_b64(),
                &stored.encrypted_value,
            ])
            .output()
            .expect("run python3 (PyNaCl is a test prerequisite)");
        assert!(
            output.status.success(),
            "PyNaCl could not open {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// How many installation tokens were minted.
    pub fn tokens_minted(&self) -> usize {
        self.app.shared.lock().unwrap().minted.len()
    }

    /// The installation tokens and JWTs the fake has seen.
    pub fn credentials_seen(&self) -> Vec<String> {
        let shared = self.app.shared.lock().unwrap();
        let minted = shared.minted.keys().cloned();
        minted.chain(shared.jwts.iter().cloned()).collect()
    }

    /// Revokes every installation token minted so far (they answer 401).
    pub fn revoke_tokens(&self) {
        let mut shared = self.app.shared.lock().unwrap();
        shared.minted.values_mut().for_each(|expiry| *expiry = 0);
    }

    /// Forces `failure` on the next request not yet forced.
    pub fn fail_next(&self, failure: Failure) {
        self.app.shared.lock().unwrap().failures.push_back(failure);
    }

    /// Every request for `path` (e.g. `/repos/acme/shop/installation`)
    /// waits `by` before it is answered.
    pub fn slow_down(&self, path: &str, by: Duration) {
        let mut shared = self.app.shared.lock().unwrap();
        shared.slow.insert(path.to_owned(), by);
    }

    /// Every request answers `status` (a 5xx) until set to `None`.
    pub fn set_down(&self, status: Option<u16>) {
        self.app.shared.lock().unwrap().down = status;
    }

    /// Every `PUT` of the secret `name` (of any repository) answers
    /// `status` (a 5xx) until set to `None`; other requests are answered
    /// as usual.
    pub fn fail_secret(&self, name: &str, status: Option<u16>) {
        let mut shared = self.app.shared.lock().unwrap();
        match status {
            Some(status) => shared.failing_secrets.insert(name.to_owned(), status),
            None => shared.failing_secrets.remove(name),
        };
    }

    /// Waits until a request for `path` has arrived (it may still be being
    /// answered); panics after ten seconds.
    pub async fn received(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.app.shared.lock().unwrap().arrived.clone();
            if arrived.iter().any(|p| p == path) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request for {path} arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One handler for every path, so unknown requests are recorded too.
async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = {
        let mut shared = app.shared.lock().unwrap();
        shared.arrived.push(uri.path().to_owned());
        shared.slow.get(uri.path()).copied()
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let response = answer(&app, &method, &uri, &headers, &body);
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    app.shared.lock().unwrap().requests.push(RecordedRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        authorization: text("authorization"),
        accept: text("accept"),
        api_version: text("x-github-api-version"),
        status: response.status().as_u16(),
    });
    response
}

fn answer(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(forced) = forced(app) {
        return forced;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["repos", owner, repo, "installation"]) => {
            installation(app, &bearer, &format!("{owner}/{repo}"))
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => access_token(app, &bearer, id),
        ("GET", ["repos", owner, repo]) => with_repo(app, &bearer, owner, repo, |full| {
            repository(app, &bearer, full)
        }),
        ("GET", ["repos", owner, repo, "actions", "secrets", "public-key"]) => {
            with_repo(app, &bearer, owner, repo, |_| public_key(app))
        }
        ("PUT", ["repos", owner, repo, "actions", "secrets", name]) => {
            with_repo(app, &bearer, owner, repo, |full| {
                put_secret(app, full, name, body)
            })
        }
        _ => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The next forced failure, or the outage.
fn forced(app: &App) -> Option<Response> {
    let mut shared = app.shared.lock().unwrap();
    if let Some(status) = shared.down {
        return Some(message(
            StatusCode::from_u16(status).unwrap(),
            "Server Error",
        ));
    }
    let failure = shared.failures.pop_front()?;
    let limited = |status: u16, extra: Vec<(&'static str, String)>| {
        let mut response = message(StatusCode::from_u16(status).unwrap(), "rate limited");
        for (name, value) in extra {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    };
    Some(match failure {
        Failure::RetryAfter { status, secs } => {
            limited(status, vec![("retry-after", secs.to_string())])
        }
        Failure::PrimaryLimit { secs } => limited(
            403,
            vec![
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", (now() + secs).to_string()),
            ],
        ),
        Failure::SecondaryLimit => message(StatusCode::FORBIDDEN, SECONDARY_LIMIT_MESSAGE),
        Failure::Server(status) => message(StatusCode::from_u16(status).unwrap(), "Server Error"),
    })
}

/// A repository endpoint: a known token and an existing repository.
fn with_repo(
    app: &App,
    bearer: &str,
    owner: &str,
    repo: &str,
    then: impl FnOnce(&str) -> Response,
) -> Response {
    let valid = bearer == app.config.token || {
        let shared = app.shared.lock().unwrap();
        shared
            .minted
            .get(bearer)
            .is_some_and(|expiry| *expiry > now())
    };
    if !valid {
        return message(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    let full = format!("{owner}/{repo}");
    if !app.config.repos.contains(&full) {
        return message(StatusCode::NOT_FOUND, "Not Found");
    }
    then(&full)
}

/// A repository as `GET /repos/{owner}/{repo}` shows it; `permissions`
/// are the PAT's role there (an installation token gets none: the fake's
/// App only ever writes secrets). One not in `repos` is 404 (`with_repo`).
fn repository(app: &App, bearer: &str, full: &str) -> Response {
    let mut answer = json!({
        "full_name": full,
        "name": full.split('/').nth(1),
        "private": true,
    });
    if bearer == app.config.token {
        let role = app
            .config
            .pat_roles
            .get(full)
            .copied()
            .unwrap_or(Role::Write);
        answer["permissions"] = role.permissions();
    }
    json_answer(StatusCode::OK, answer)
}

fn public_key(app: &App) -> Response {
    let key = STANDARD.encode(app.key.public_key().as_bytes());
    json_answer(StatusCode::OK, json!({"key_id": KEY_ID, "key": key}))
}

fn put_secret(app: &App, repo: &str, name: &str, body: &[u8]) -> Response {
    let failing = app
        .shared
        .lock()
        .unwrap()
        .failing_secrets
        .get(name)
        .copied();
    if let Some(status) = failing {
        return message(StatusCode::from_u16(status).unwrap(), "Server Error");
    }
    if !app.config.secrets_write {
        return message(
            StatusCode::FORBIDDEN,
            "Resource not accessible by personal access token",
        );
    }
    let body: Value = serde_json::from_slice(body).unwrap_or_default();
    let (Some(value), Some(key_id)) = (body["encrypted_value"].as_str(), body["key_id"].as_str())
    else {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request");
    };
    if key_id != KEY_ID || STANDARD.decode(value).is_err() {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "Bad key_id or value");
    }
    let stored = StoredSecret {
        encrypted_value: value.to_owned(),
        key_id: key_id.to_owned(),
    };
    let mut shared = app.shared.lock().unwrap();
    let key = (repo.to_owned(), name.to_owned());
    match shared.secrets.insert(key, stored) {
        None => StatusCode::CREATED.into_response(),
        Some(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

fn installation(app: &App, jwt: &str, repo: &str) -> Response {
    if let Err(problem) = verify_jwt(app, jwt) {
        return message(StatusCode::UNAUTHORIZED, problem);
    }
    if !app.config.repos.iter().any(|r| r == repo) {
        return message(StatusCode::NOT_FOUND, "Not Found");
    }
    json_answer(
        StatusCode::OK,
        json!({"id": INSTALLATION_ID, "app_id": app.config.app.as_ref().map(|a| a.app_id)}),
    )
}

fn access_token(app: &App, jwt: &str, id: &str) -> Response {
    if let Err(problem) = verify_jwt(app, jwt) {
        return message(StatusCode::UNAUTHORIZED, problem);
    }
    if id != INSTALLATION_ID.to_string() {
        return message(StatusCode::NOT_FOUND, "Not Found");
    }
    let lifetime = app.config.app.as_ref().unwrap().token_lifetime.as_secs();
    let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
    let expiry = now() + lifetime;
    app.shared
        .lock()
        .unwrap()
        .minted
        .insert(token.clone(), expiry);
    let expires_at = chrono::DateTime::from_timestamp(expiry as i64, 0).unwrap();
    json_answer(
        StatusCode::CREATED,
        json!({
            "token": token,
            "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "permissions": {"secrets": "write"},
        }),
    )
}

/// An RS256 JWT signed by the App's key, issued by its id, `iat` in the
/// past and `exp` at most ten minutes after it (GitHub's rules).
fn verify_jwt(app: &App, jwt: &str) -> Result<(), &'static str> {
    let fake_app = app.config.app.as_ref().ok_or("no App is configured")?;
    app.shared.lock().unwrap().jwts.insert(jwt.to_owned());
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, claims, signature] = parts.as_slice() else {
        return Err("A JSON web token could not be decoded");
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "bad base64url");
    let head: Value = serde_json::from_slice(&decode(head)?).map_err(|_| "bad header")?;
    if head["alg"] != "RS256" {
        return Err("the JWT must be RS256");
    }
    let public = openssl::pkey::PKey::public_key_from_pem(&fake_app.public_pem).unwrap();
    let mut verifier =
        openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &public).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    verifier.update(signed.as_bytes()).unwrap();
    if !verifier.verify(&decode(signature)?).unwrap_or(false) {
        return Err("the JWT's signature does not verify");
    }
    let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|_| "bad claims")?;
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(u64::MAX),
        claims["exp"].as_u64().unwrap_or(0),
    );
    let now = now();
    let iss = fake_app.app_id.to_string();
    if claims["iss"].as_str() != Some(iss.as_str()) {
        return Err("the JWT's iss is not this App");
    }
    if iat > now || exp <= now || exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    Ok(())
}

fn message(status: StatusCode, text: &str) -> Response {
    json_answer(
        status,
        json!({"message": text, "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn json_answer(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}
