//! A local Vault stand-in on 127.0.0.1 (HTTP, or HTTPS with a CA made per
//! test): the documented API of the calls the worker makes, answered as
//! Vault answers them (Vault's HTTP API docs: `secret/kv/kv-v2`,
//! `auth/token`, `auth/approle`, `auth/kubernetes`), and a record of every
//! request.
//!
//! - KV v2 `GET /v1/<mount>/data/<path>[?version=N]`: `data.data` and
//!   `data.metadata` (`created_time`, `deletion_time`, `destroyed`,
//!   `version`); a deleted or destroyed version is a 404 whose body still
//!   carries the metadata; an absent secret a 404 with `{"errors": []}`.
//! - Tokens with TTLs that really expire: `lookup-self` (`ttl`,
//!   `issue_time`, `expire_time`, ...), `renew-self` (by the `increment`
//!   asked, else the token's TTL, capped at its max TTL with Vault's
//!   warning), both in Vault's answer envelope; an expired, revoked or
//!   unknown token gets 403 `permission denied` on everything.
//! - AppRole and Kubernetes logins (`POST /v1/auth/<mount>/login`) that
//!   check the credentials, the role and the JWT, and answer the first
//!   lease (capped at the max TTL) and the method's metadata.
//! - What a token without the root policy meets: a path no policy grants
//!   (an unmounted secrets engine or auth method, a denied secret) is 403
//!   `permission denied`, never a 404.
//! - Namespaces: a token issued in a namespace works only with that
//!   `X-Vault-Namespace`, and secrets live in one namespace.
//! - Faults on demand: sealed (503) for N requests or for good, any status
//!   for the next N requests, a denied path, refused renewals; and Vault
//!   down (`stop`: connection refused) and back on its port (`restart`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_native_tls::TlsAcceptor;

use crate::helpers::free_stable_port;

/// The policies every token of the fake carries.
const POLICIES: [&str; 2] = ["default", "infra"];
/// The service account a Kubernetes login stands for: name, namespace, uid.
const SERVICE_ACCOUNT: (&str, &str, &str) = (
    "infra-service",
    "infra",
    "4c1b2f6e-7a0d-4d5e-9b3c-2f8e6a1d0c97",
);

/// How the fake's auth methods and tokens behave.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The TTL of every token a login issues, and of each renewal that
    /// asks no `increment`.
    pub token_ttl: Duration,
    /// A token stops at `creation + max TTL` however often it is renewed;
    /// zero means no cap.
    pub token_max_ttl: Duration,
    pub renewable: bool,
    pub approle_mount: String,
    /// The AppRole role's name (the login's `metadata.role_name`).
    pub approle_role: String,
    pub role_id: String,
    pub secret_id: String,
    pub kubernetes_mount: String,
    pub kubernetes_role: String,
    pub kubernetes_jwt: String,
    /// The namespace logins happen in (`None`: the root namespace).
    pub namespace: Option<String>,
    /// The KV version 2 mounts.
    pub kv_mounts: Vec<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::ZERO,
            renewable: true,
            approle_mount: "approle".to_owned(),
            approle_role: "infra-service".to_owned(),
            role_id: "fake-role-id-8c1f".to_owned(),
            secret_id: "fake-secret-id-5e77a1".to_owned(),
            kubernetes_mount: "kubernetes".to_owned(),
            kubernetes_role: "infra-service".to_owned(),
            kubernetes_jwt: "eyJhbGciOiJSUzI1NiJ9.fake-service-account.sig".to_owned(),
            namespace: None,
            kv_mounts: vec!["secret".to_owned()],
        }
    }
}

/// One request the fake received. The token's value is never kept: the
/// `X-Vault-Token` header is recorded as the token's label (`token-1`, ...,
/// or `unknown`).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The token's label, if one was sent.
    pub token: Option<String>,
    pub namespace: Option<String>,
    /// The status the fake answered.
    pub status: u16,
    /// For a successful login: the label of the token it issued.
    pub issued: Option<String>,
}

impl Recorded {
    /// Path and query, as they appeared in the URL.
    pub fn url_text(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// Whether this was a KV v2 read, `GET /v1/<mount>/data/<path>`.
    pub fn is_kv_read(&self) -> bool {
        let segments: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        self.method == "GET"
            && segments.len() > 3
            && segments[0] == "v1"
            && segments[1] != "auth"
            && segments[2] == "data"
    }
}

struct Token {
    label: String,
    accessor: String,
    namespace: Option<String>,
    /// The API path that made it (`auth/approle/login`, ...), and the
    /// metadata its login attached, as `lookup-self` shows them.
    path: String,
    meta: Value,
    created: Instant,
    issued_at: DateTime<Utc>,
    expires: Instant,
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
    revoked: bool,
}

impl Token {
    /// Whole seconds left at `now`, truncated as Vault answers them.
    fn ttl_left(&self, now: Instant) -> u64 {
        self.expires.saturating_duration_since(now).as_secs()
    }
}

/// What a new token is made with.
struct NewToken {
    namespace: Option<String>,
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
    path: String,
    meta: Value,
}

struct Version {
    data: Value,
    created_time: String,
    deletion_time: Option<String>,
    destroyed: bool,
}

/// (namespace, mount, path)
type SecretKey = (Option<String>, String, String);

#[derive(Default)]
struct Shared {
    tokens: HashMap<String, Token>,
    secrets: HashMap<SecretKey, Vec<Version>>,
    denied: Vec<SecretKey>,
    /// The next requests answer this status, and how many.
    fault: Option<(u16, u32)>,
    refuse_renewals: bool,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
struct App {
    config: Arc<FakeConfig>,
    shared: Arc<Mutex<Shared>>,
}

/// The CA's directory and the acceptor of a TLS fake.
struct Tls {
    dir: tempfile::TempDir,
    acceptor: TlsAcceptor,
}

/// The serving task, and how to stop it.
struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running fake Vault; stops when dropped. Its port is below the
/// ephemeral range, so it is still free when the fake restarts.
pub struct FakeVault {
    addr: SocketAddr,
    tls: Option<Tls>,
    app: App,
    server: Option<Server>,
}

impl FakeVault {
    /// A fake on plain HTTP.
    pub async fn start(config: FakeConfig) -> FakeVault {
        FakeVault::start_with(config, None)
    }

    /// A fake on HTTPS, its certificate (for `127.0.0.1` and `localhost`)
    /// signed by a CA made now, whose PEM is at [`FakeVault::ca_pem`].
    pub async fn start_tls(config: FakeConfig) -> FakeVault {
        let dir = tempfile::tempdir().unwrap();
        let (acceptor, ca_pem) = tls::acceptor();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        FakeVault::start_with(config, Some(Tls { dir, acceptor }))
    }

    fn start_with(config: FakeConfig, tls: Option<Tls>) -> FakeVault {
        let listener = bind_free();
        let addr = listener.local_addr().unwrap();
        let app = App::new(config);
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let server = Some(serve(listener, &app, acceptor));
        FakeVault {
            addr,
            tls,
            app,
            server,
        }
    }

    /// Vault goes down: the port is closed (connection refused) and every
    /// open connection is closed, an answer in flight finished first.
    /// Tokens, secrets and the record are kept for [`FakeVault::restart`].
    pub async fn stop(&mut self) {
        let Some(Server { stop, mut task }) = self.server.take() else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            task.abort();
            panic!("the fake Vault did not stop within 10 s");
        }
    }

    /// Vault is back, on the same address, with the state it had.
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "the fake Vault is running");
        let listener = bind_again(self.addr.port()).await;
        let acceptor = self.tls.as_ref().map(|t| t.acceptor.clone());
        self.server = Some(serve(listener, &self.app, acceptor));
    }

    /// What `vault.addr` should say.
    pub fn addr(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate of a TLS fake, for `vault.ca_cert`.
    pub fn ca_pem(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.dir.path().join("ca.pem"))
    }

    /// The configuration it runs with (credentials included).
    pub fn config(&self) -> &FakeConfig {
        &self.app.config
    }

    /// Writes a new version of `path` (`MOUNT/PATH`) in the login namespace.
    pub fn put(&self, path: &str, data: Value) {
        let namespace = self.app.config.namespace.clone();
        self.put_in(namespace.as_deref(), path, data);
    }

    /// Writes a new version of `path` in `namespace`.
    pub fn put_in(&self, namespace: Option<&str>, path: &str, data: Value) {
        let key = secret_key(namespace, path);
        let mut shared = self.app.shared.lock().unwrap();
        shared.secrets.entry(key).or_default().push(Version {
            data,
            created_time: now_text(),
            deletion_time: None,
            destroyed: false,
        });
    }

    /// Soft-deletes the latest version of `path` (`vault kv delete`).
    pub fn delete_latest(&self, path: &str) {
        self.with_latest(path, |v| v.deletion_time = Some(now_text()));
    }

    /// Destroys the latest version of `path` (`vault kv destroy`).
    pub fn destroy_latest(&self, path: &str) {
        self.with_latest(path, |v| {
            v.destroyed = true;
            v.data = Value::Null;
        });
    }

    fn with_latest(&self, path: &str, change: impl FnOnce(&mut Version)) {
        let key = secret_key(self.app.config.namespace.as_deref(), path);
        let mut shared = self.app.shared.lock().unwrap();
        let versions = shared.secrets.get_mut(&key).expect("no such secret");
        change(versions.last_mut().unwrap());
    }

    /// The policy denies every token reads of `path`: 403.
    pub fn deny(&self, path: &str) {
        let key = secret_key(self.app.config.namespace.as_deref(), path);
        self.app.shared.lock().unwrap().denied.push(key);
    }

    /// A token made by an operator (for `vault.auth = "token"`), in the
    /// login namespace.
    pub fn issue_token(&self, ttl: Duration, max_ttl: Duration, renewable: bool) -> String {
        let mut shared = self.app.shared.lock().unwrap();
        let new = NewToken {
            namespace: self.app.config.namespace.clone(),
            ttl,
            max_ttl,
            renewable,
            path: "auth/token/create".to_owned(),
            meta: Value::Null,
        };
        issue(&mut shared, new)
    }

    /// Every token issued so far stops working.
    pub fn revoke_all(&self) {
        let mut shared = self.app.shared.lock().unwrap();
        for token in shared.tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// Every token but `kept` stops working.
    pub fn revoke_all_but(&self, kept: &str) {
        let mut shared = self.app.shared.lock().unwrap();
        for (value, token) in shared.tokens.iter_mut() {
            token.revoked = value != kept;
        }
    }

    /// From now on `renew-self` answers 403 (the tokens still work).
    pub fn refuse_renewals(&self) {
        self.app.shared.lock().unwrap().refuse_renewals = true;
    }

    /// The next `n` requests, whatever they are, answer 503 "Vault is sealed".
    pub fn seal_for(&self, n: u32) {
        self.fail_next(503, n);
    }

    /// Every request from now on answers 503 "Vault is sealed": a Vault
    /// nobody unseals.
    pub fn seal(&self) {
        self.fail_next(503, u32::MAX);
    }

    /// The next `n` requests answer `status` with Vault's error body.
    pub fn fail_next(&self, status: u16, n: u32) {
        self.app.shared.lock().unwrap().fault = Some((status, n));
    }

    /// The value of every token issued so far, to check that none leaked.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.app
            .shared
            .lock()
            .unwrap()
            .tokens
            .keys()
            .cloned()
            .collect()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.app.shared.lock().unwrap().requests.clone()
    }

    /// The requests whose path ends with `suffix` and that got `status`.
    pub fn answered(&self, suffix: &str, status: u16) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix) && r.status == status)
            .collect()
    }

    /// Every KV read (of any secret) that got `status`.
    pub fn reads_answered(&self, status: u16) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_kv_read() && r.status == status)
            .collect()
    }

    /// The token label of every successful KV read, in order.
    pub fn read_tokens(&self) -> Vec<String> {
        self.reads_answered(200)
            .into_iter()
            .map(|r| r.token.unwrap_or_default())
            .collect()
    }

    /// The token the last successful KV read used, and the one the newest
    /// login before that read issued: equal when the read used the
    /// freshest token, however many logins and renewals came before.
    pub fn last_read_and_newest_login(&self) -> (Option<String>, Option<String>) {
        let requests = self.requests();
        let Some(last) = requests
            .iter()
            .rposition(|r| r.is_kv_read() && r.status == 200)
        else {
            return (None, None);
        };
        let newest = requests[..last].iter().rev().find_map(|r| r.issued.clone());
        (requests[last].token.clone(), newest)
    }

    /// Successful logins of any method.
    pub fn logins(&self) -> usize {
        self.answered("/login", 200).len()
    }

    /// Successful `renew-self` calls.
    pub fn renewals(&self) -> usize {
        self.answered("/auth/token/renew-self", 200).len()
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.task.abort();
        }
    }
}

/// Serves `app` on `listener` (through TLS with `acceptor`) until stopped.
fn serve(listener: TcpListener, app: &App, acceptor: Option<TlsAcceptor>) -> Server {
    let router = app.router();
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(async move {
        // Graceful: idle keep-alive connections close too, so a stopped
        // fake refuses the client's next request instead of answering it
        // on a pooled connection.
        let served = match acceptor {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(acceptor) => {
                let listener = tls::Listener {
                    tcp: listener,
                    acceptor,
                };
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        served.expect("fake Vault failed");
    });
    Server { stop, task }
}

/// A listener on a free port below the ephemeral range: no outgoing
/// connection can take it while the fake is stopped.
fn bind_free() -> TcpListener {
    let mut last_error = None;
    for _ in 0..20 {
        match listen(free_stable_port()) {
            Ok(listener) => return listener,
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no port for the fake Vault: {last_error:?}");
}

/// The port the fake had, again; the kernel may hold it a moment.
async fn bind_again(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listen(port) {
            Ok(listener) => return listener,
            Err(e) if Instant::now() >= deadline => {
                panic!("the fake Vault cannot listen on port {port} again: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Connections of the last run left in TIME_WAIT must not keep a
    // restarted fake off its port.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

fn secret_key(namespace: Option<&str>, path: &str) -> SecretKey {
    let (mount, rest) = path.split_once('/').expect("MOUNT/PATH");
    (
        namespace.map(str::to_owned),
        mount.to_owned(),
        rest.to_owned(),
    )
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn issue(shared: &mut Shared, new: NewToken) -> String {
    let n = shared.tokens.len() + 1;
    let value = format!("hvs.fake{}", uuid::Uuid::new_v4().simple());
    let now = Instant::now();
    let first_lease = if new.max_ttl.is_zero() {
        new.ttl
    } else {
        new.ttl.min(new.max_ttl)
    };
    shared.tokens.insert(
        value.clone(),
        Token {
            label: format!("token-{n}"),
            accessor: format!("acc-{}", uuid::Uuid::new_v4().simple()),
            namespace: new.namespace,
            path: new.path,
            meta: new.meta,
            created: now,
            issued_at: Utc::now(),
            expires: now + first_lease,
            ttl: new.ttl,
            max_ttl: new.max_ttl,
            renewable: new.renewable,
            revoked: false,
        },
    );
    value
}

impl App {
    fn new(config: FakeConfig) -> App {
        App {
            config: Arc::new(config),
            shared: Arc::new(Mutex::new(Shared::default())),
        }
    }

    fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }
}

/// What one request looked like, as the routes need it.
struct Incoming<'a> {
    method: &'a Method,
    segments: Vec<&'a str>,
    query: Option<&'a str>,
    token: Option<&'a str>,
    namespace: Option<String>,
    body: Value,
}

/// One handler for every path, so every request is recorded.
async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let incoming = Incoming {
        method: &method,
        segments: uri.path().trim_matches('/').split('/').collect(),
        query: uri.query(),
        token: header_text("x-vault-token"),
        namespace: header_text("x-vault-namespace").map(str::to_owned),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let mut shared = app.shared.lock().unwrap();
    let (status, answer) = route(&app.config, &mut shared, &incoming);
    let recorded = record(&shared, &incoming, &uri, &headers, status, &answer);
    shared.requests.push(recorded);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// The record of one request: token values replaced by their labels.
fn record(
    shared: &Shared,
    incoming: &Incoming<'_>,
    uri: &Uri,
    headers: &HeaderMap,
    status: StatusCode,
    answer: &Value,
) -> Recorded {
    let label_of = |value: &str| {
        shared
            .tokens
            .get(value)
            .map_or_else(|| "unknown".to_owned(), |t| t.label.clone())
    };
    let label = incoming.token.map(label_of);
    let login = incoming.segments.last() == Some(&"login") && status == StatusCode::OK;
    let issued = login
        .then(|| answer["auth"]["client_token"].as_str().map(label_of))
        .flatten();
    Recorded {
        method: incoming.method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(name, value)| {
                let value = if name == "x-vault-token" {
                    label.clone().unwrap_or_default()
                } else {
                    value.to_str().unwrap_or("<binary>").to_owned()
                };
                (name.to_string(), value)
            })
            .collect(),
        token: label,
        namespace: incoming.namespace.clone(),
        status: status.as_u16(),
        issued,
    }
}

fn route(config: &FakeConfig, shared: &mut Shared, req: &Incoming<'_>) -> (StatusCode, Value) {
    if let Some((status, left)) = shared.fault.as_mut() {
        let status = StatusCode::from_u16(*status).unwrap();
        *left -= 1;
        if *left == 0 {
            shared.fault = None;
        }
        return (status, fault_body(status));
    }
    match (req.method.as_str(), req.segments.as_slice()) {
        ("POST" | "PUT", ["v1", "auth", mount @ .., "login"]) => {
            login(config, shared, req, &mount.join("/"))
        }
        ("GET", ["v1", "auth", "token", "lookup-self"]) => lookup_self(shared, req),
        ("POST" | "PUT", ["v1", "auth", "token", "renew-self"]) => renew_self(shared, req),
        ("GET", ["v1", mount, "data", path @ ..]) if *mount != "auth" && !path.is_empty() => {
            kv_read(config, shared, req, mount, &path.join("/"))
        }
        // A path no policy grants: a token without the root policy never
        // learns whether anything is mounted there.
        _ => permission_denied(),
    }
}

fn fault_body(status: StatusCode) -> Value {
    let message = match status.as_u16() {
        503 => "Vault is sealed",
        429 => "request path: rate limit quota exceeded",
        403 => "permission denied",
        _ => "",
    };
    let list: Vec<&str> = (!message.is_empty())
        .then_some(message)
        .into_iter()
        .collect();
    json!({ "errors": list })
}

fn errors(status: StatusCode, message: &str) -> (StatusCode, Value) {
    (status, json!({ "errors": [message] }))
}

fn permission_denied() -> (StatusCode, Value) {
    errors(StatusCode::FORBIDDEN, "permission denied")
}

/// Vault's answer around `data` or `auth`.
fn envelope(data: Value, auth: Value, warnings: Value) -> Value {
    json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": warnings, "auth": auth,
    })
}

/// The `auth` block of a login or renewal, its lease `lease` seconds.
fn auth_block(value: &str, token: &Token, lease: u64) -> Value {
    json!({
        "client_token": value,
        "accessor": token.accessor,
        "policies": POLICIES,
        "token_policies": POLICIES,
        "metadata": token.meta,
        "lease_duration": lease,
        "renewable": token.renewable,
        "entity_id": "", "token_type": "service", "orphan": true,
        "mfa_requirement": null, "num_uses": 0,
    })
}

/// The token of `req` (its value and state), if it is live in the
/// request's namespace.
fn live_token<'a>(shared: &'a mut Shared, req: &Incoming<'_>) -> Option<(String, &'a mut Token)> {
    let value = req.token?;
    let token = shared.tokens.get_mut(value)?;
    let live = !token.revoked && Instant::now() < token.expires && token.namespace == req.namespace;
    live.then(|| (value.to_owned(), token))
}

fn login(
    config: &FakeConfig,
    shared: &mut Shared,
    req: &Incoming<'_>,
    mount: &str,
) -> (StatusCode, Value) {
    // The methods are mounted in the configured namespace only: anywhere
    // else, as on any other mount, the login path is one no policy grants.
    if req.namespace != config.namespace {
        return permission_denied();
    }
    let text = |key: &str| {
        req.body
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let meta = if mount == config.approle_mount {
        if text("role_id") != config.role_id || text("secret_id") != config.secret_id {
            return errors(StatusCode::BAD_REQUEST, "invalid role or secret ID");
        }
        json!({"role_name": config.approle_role})
    } else if mount == config.kubernetes_mount {
        if text("role") != config.kubernetes_role {
            let message = format!("invalid role name \"{}\"", text("role"));
            return errors(StatusCode::BAD_REQUEST, &message);
        }
        if text("jwt") != config.kubernetes_jwt {
            return permission_denied();
        }
        let (name, namespace, uid) = SERVICE_ACCOUNT;
        json!({
            "role": config.kubernetes_role,
            "service_account_name": name,
            "service_account_namespace": namespace,
            "service_account_secret_name": "",
            "service_account_uid": uid,
        })
    } else {
        return permission_denied();
    };
    let new = NewToken {
        namespace: req.namespace.clone(),
        ttl: config.token_ttl,
        max_ttl: config.token_max_ttl,
        renewable: config.renewable,
        path: format!("auth/{mount}/login"),
        meta,
    };
    let value = issue(shared, new);
    let token = &shared.tokens[&value];
    // The first lease, whole: capped at the max TTL when that is shorter.
    let lease = (token.expires - token.created).as_secs();
    let auth = auth_block(&value, token, lease);
    (StatusCode::OK, envelope(Value::Null, auth, Value::Null))
}

fn lookup_self(shared: &mut Shared, req: &Incoming<'_>) -> (StatusCode, Value) {
    let Some((value, token)) = live_token(shared, req) else {
        return permission_denied();
    };
    let now = Instant::now();
    let expire_time = Utc::now() + token.expires.saturating_duration_since(now);
    let display_name = token.path.split('/').nth(1).unwrap_or("token");
    let data = json!({
        "accessor": token.accessor,
        "creation_time": token.issued_at.timestamp(),
        "creation_ttl": token.ttl.as_secs(),
        "display_name": display_name,
        "entity_id": "",
        "expire_time": expire_time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "explicit_max_ttl": token.max_ttl.as_secs(),
        // Vault answers the token itself here, as `id`.
        "id": value.as_str(),
        "issue_time": token.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "meta": token.meta,
        "num_uses": 0,
        "orphan": true,
        "path": token.path,
        "policies": POLICIES,
        "renewable": token.renewable,
        "ttl": token.ttl_left(now),
        "type": "service",
    });
    (StatusCode::OK, envelope(data, Value::Null, Value::Null))
}

fn renew_self(shared: &mut Shared, req: &Incoming<'_>) -> (StatusCode, Value) {
    let refuse = shared.refuse_renewals;
    let Some((value, token)) = live_token(shared, req) else {
        return permission_denied();
    };
    if refuse {
        return permission_denied();
    }
    if !token.renewable {
        return errors(StatusCode::BAD_REQUEST, "lease is not renewable");
    }
    let now = Instant::now();
    let wanted = increment(&req.body).unwrap_or(token.ttl);
    let mut expires = now + wanted;
    let mut warnings = Value::Null;
    if !token.max_ttl.is_zero() && expires > token.created + token.max_ttl {
        expires = token.created + token.max_ttl;
        warnings = json!([format!(
            "TTL of \"{}s\" exceeded the effective max_ttl of \"{}s\"; TTL value is capped accordingly",
            wanted.as_secs(),
            expires.saturating_duration_since(now).as_secs()
        )]);
    }
    token.expires = expires;
    let auth = auth_block(&value, token, token.ttl_left(now));
    (StatusCode::OK, envelope(Value::Null, auth, warnings))
}

/// A renewal's `increment`: seconds, as a number or a duration text
/// (`"90"`, `"90s"`, `"15m"`, `"1h"`); none or zero means the token's TTL.
fn increment(body: &Value) -> Option<Duration> {
    let secs = match body.get("increment")? {
        Value::Number(n) => n.as_u64()?,
        Value::String(text) => {
            let split = text
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(split);
            let scale = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return None,
            };
            number.parse::<u64>().ok()? * scale
        }
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn kv_read(
    config: &FakeConfig,
    shared: &mut Shared,
    req: &Incoming<'_>,
    mount: &str,
    path: &str,
) -> (StatusCode, Value) {
    if live_token(shared, req).is_none() {
        return permission_denied();
    }
    let key = (req.namespace.clone(), mount.to_owned(), path.to_owned());
    // Denied and unmounted alike: no policy of the token grants the path.
    if shared.denied.contains(&key) || !config.kv_mounts.iter().any(|m| m == mount) {
        return permission_denied();
    }
    let Some(versions) = shared.secrets.get(&key) else {
        return (StatusCode::NOT_FOUND, json!({"errors": []}));
    };
    let wanted = requested_version(req.query).filter(|v| *v > 0);
    let number = wanted.unwrap_or(versions.len());
    let Some(version) = number.checked_sub(1).and_then(|i| versions.get(i)) else {
        return (StatusCode::NOT_FOUND, json!({"errors": []}));
    };
    let gone = version.destroyed || version.deletion_time.is_some();
    let metadata = json!({
        "created_time": version.created_time,
        "custom_metadata": null,
        "deletion_time": version.deletion_time.clone().unwrap_or_default(),
        "destroyed": version.destroyed,
        "version": number,
    });
    let (status, data) = if gone {
        (StatusCode::NOT_FOUND, Value::Null)
    } else {
        (StatusCode::OK, version.data.clone())
    };
    let answer = envelope(
        json!({"data": data, "metadata": metadata}),
        Value::Null,
        Value::Null,
    );
    (status, answer)
}

fn requested_version(query: Option<&str>) -> Option<usize> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("version="))
        .and_then(|v| v.parse().ok())
}

/// The fake's HTTPS: a CA and a server certificate made with OpenSSL, and
/// a listener that completes each TLS handshake before axum sees the
/// connection.
mod tls {
    use crate::helpers::TestCa;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_native_tls::{TlsAcceptor, TlsStream, native_tls};

    /// Accepts TCP connections and completes their handshake.
    pub struct Listener {
        pub tcp: TcpListener,
        pub acceptor: TlsAcceptor,
    }

    impl axum::serve::Listener for Listener {
        type Io = TlsStream<TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                // A client that refuses our certificate ends its handshake.
                if let Ok(stream) = self.acceptor.accept(tcp).await {
                    return (stream, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// A TLS acceptor for `127.0.0.1`/`localhost`, and its CA's PEM.
    pub fn acceptor() -> (TlsAcceptor, Vec<u8>) {
        let ca = TestCa::new("fake-vault-ca");
        let server = ca.issue_loopback();
        let identity = native_tls::Identity::from_pkcs8(&server.cert_pem, &server.key_pem).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        (TlsAcceptor::from(acceptor), ca.pem())
    }
}

/// The fake itself, asked directly: it answers as the docs say.
mod selftest {
    use super::*;

    async fn get(fake: &FakeVault, path: &str, token: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", fake.addr()))
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A `POST` of `body`, with `token` when given.
    async fn post(fake: &FakeVault, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", fake.addr()))
            .json(&body);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    fn approle_body(fake: &FakeVault) -> Value {
        json!({"role_id": fake.config().role_id, "secret_id": fake.config().secret_id})
    }

    /// Seconds from now until an RFC 3339 time.
    fn secs_until(text: &Value) -> i64 {
        let at = DateTime::parse_from_rfc3339(text.as_str().unwrap()).unwrap();
        (at.with_timezone(&Utc) - Utc::now()).num_seconds()
    }

    #[tokio::test]
    async fn versions_are_read_by_number_and_a_deleted_latest_is_a_404_with_its_metadata() {
        let fake = FakeVault::start(FakeConfig::default()).await;
        let token = fake.issue_token(Duration::from_secs(60), Duration::ZERO, true);
        fake.put("secret/app", json!({"k": "one"}));
        fake.put("secret/app", json!({"k": "two"}));
        fake.delete_latest("secret/app");

        let (status, latest) = get(&fake, "/v1/secret/data/app", &token).await;
        let (_, first) = get(&fake, "/v1/secret/data/app?version=1", &token).await;
        let (missing, _) = get(&fake, "/v1/secret/data/other", &token).await;
        let (denied, _) = get(&fake, "/v1/secret/data/app", "hvs.wrong").await;

        assert_eq!(status, 404);
        assert_eq!(latest["data"]["data"], Value::Null);
        assert_eq!(latest["data"]["metadata"]["version"], 2);
        assert_ne!(latest["data"]["metadata"]["deletion_time"], "");
        assert_eq!(first["data"]["data"]["k"], "one");
        assert_eq!(missing, 404);
        assert_eq!(denied, 403);
        assert_eq!(fake.requests()[1].query.as_deref(), Some("version=1"));
        assert_eq!(fake.requests()[3].token.as_deref(), Some("unknown"));
    }

    #[tokio::test]
    async fn a_token_past_its_ttl_is_refused_and_renewal_stops_at_the_max_ttl() {
        let fake = FakeVault::start(FakeConfig::default()).await;
        let short = fake.issue_token(Duration::from_millis(300), Duration::ZERO, true);
        let issued = std::time::Instant::now();
        let capped = fake.issue_token(Duration::from_secs(60), Duration::from_secs(30), true);

        tokio::time::sleep(Duration::from_millis(400)).await;
        let (expired, _) = get(&fake, "/v1/auth/token/lookup-self", &short).await;
        let (_, renewed) = post(
            &fake,
            "/v1/auth/token/renew-self",
            Some(capped.as_str()),
            json!({}),
        )
        .await;

        assert_eq!(expired, 403);
        let lease = renewed["auth"]["lease_duration"].as_u64().unwrap();
        // What is left of the 30 s max_ttl, not the 60 s asked for; how
        // much is left depends on how long this machine took to get here.
        let taken = issued.elapsed().as_secs() + 1;
        assert!(
            (30u64.saturating_sub(taken)..=30).contains(&lease),
            "{renewed}"
        );
        assert!(renewed["warnings"][0].as_str().unwrap().contains("max_ttl"));
    }

    #[tokio::test]
    async fn a_path_no_policy_grants_is_403_permission_denied_for_a_login_or_a_read() {
        let fake = FakeVault::start(FakeConfig {
            namespace: Some("team-a".into()),
            ..FakeConfig::default()
        })
        .await;
        let token = fake.issue_token(Duration::from_secs(60), Duration::ZERO, true);
        fake.put("secret/locked", json!({"k": "v"}));
        fake.deny("secret/locked");
        let client = reqwest::Client::new();
        let in_team_a = |path: &str| {
            client
                .get(format!("{}{path}", fake.addr()))
                .header("X-Vault-Token", &token)
                .header("X-Vault-Namespace", "team-a")
        };

        let (unmounted_login, login_body) =
            post(&fake, "/v1/auth/userpass/login", None, json!({})).await;
        let (root_login, _) =
            post(&fake, "/v1/auth/approle/login", None, approle_body(&fake)).await;
        let unmounted_read = in_team_a("/v1/nomount/data/x").send().await.unwrap();
        let denied_read = in_team_a("/v1/secret/data/locked").send().await.unwrap();
        let (no_header, _) = get(&fake, "/v1/auth/token/lookup-self", &token).await;

        let denied = json!({"errors": ["permission denied"]});
        assert_eq!((unmounted_login, login_body), (403, denied.clone()));
        // The methods are mounted in team-a, not in the root namespace.
        assert_eq!(root_login, 403);
        assert_eq!(unmounted_read.status(), 403);
        assert_eq!(unmounted_read.json::<Value>().await.unwrap(), denied);
        assert_eq!(denied_read.status(), 403);
        // A namespaced token is refused without its namespace.
        assert_eq!(no_header, 403);
    }

    #[tokio::test]
    async fn a_login_answers_its_capped_lease_and_metadata_and_lookup_self_its_times() {
        let fake = FakeVault::start(FakeConfig {
            token_ttl: Duration::from_secs(60),
            token_max_ttl: Duration::from_secs(30),
            ..FakeConfig::default()
        })
        .await;
        let kubernetes = json!({"role": "infra-service", "jwt": fake.config().kubernetes_jwt});

        let (_, approle) = post(&fake, "/v1/auth/approle/login", None, approle_body(&fake)).await;
        let (_, k8s) = post(&fake, "/v1/auth/kubernetes/login", None, kubernetes).await;
        let token = approle["auth"]["client_token"].as_str().unwrap();
        let (_, lookup) = get(&fake, "/v1/auth/token/lookup-self", token).await;

        assert_eq!(approle["auth"]["lease_duration"], 30, "{approle}");
        assert_eq!(approle["auth"]["metadata"]["role_name"], "infra-service");
        assert_eq!(approle["lease_duration"], 0);
        assert!(approle["request_id"].is_string(), "{approle}");
        let meta = &k8s["auth"]["metadata"];
        assert_eq!(meta["role"], "infra-service", "{k8s}");
        for key in [
            "service_account_name",
            "service_account_namespace",
            "service_account_uid",
        ] {
            assert!(meta[key].as_str().is_some_and(|v| !v.is_empty()), "{k8s}");
        }
        let data = &lookup["data"];
        assert!(lookup["request_id"].is_string(), "{lookup}");
        assert_eq!(lookup["auth"], Value::Null);
        assert_eq!(data["path"], "auth/approle/login");
        assert!(
            (28..=30).contains(&data["ttl"].as_i64().unwrap()),
            "{lookup}"
        );
        assert!(
            (28..=30).contains(&secs_until(&data["expire_time"])),
            "{lookup}"
        );
        assert!(
            (-2..=0).contains(&secs_until(&data["issue_time"])),
            "{lookup}"
        );
        let created = data["creation_time"].as_i64().unwrap();
        assert!((Utc::now().timestamp() - created).abs() <= 2, "{lookup}");
        assert!(fake.requests()[0].issued.is_some());
    }

    #[tokio::test]
    async fn a_stopped_fake_refuses_connections_even_kept_alive_ones_and_restarts_as_it_was() {
        let mut fake = FakeVault::start(FakeConfig::default()).await;
        let token = fake.issue_token(Duration::from_secs(60), Duration::ZERO, true);
        fake.put("secret/app", json!({"k": "v"}));
        // One client throughout: its pooled connection must not outlive the stop.
        let client = reqwest::Client::new();
        let read = || {
            client
                .get(format!("{}/v1/secret/data/app", fake.addr()))
                .header("X-Vault-Token", &token)
                .send()
        };
        let before = read().await.unwrap().status();
        let addr = fake.addr();

        fake.stop().await;
        let read = || {
            client
                .get(format!("{addr}/v1/secret/data/app"))
                .header("X-Vault-Token", &token)
                .send()
        };
        let down = read().await.unwrap_err();
        fake.restart().await;
        let after = read().await.unwrap().status();

        assert_eq!(before, 200);
        assert!(down.is_connect(), "{down:?}");
        assert_eq!(after, 200, "the token and the secret survived the restart");
        assert_eq!(fake.addr(), addr);
        assert_eq!(fake.read_tokens(), ["token-1", "token-1"]);
    }

    #[tokio::test]
    async fn renew_self_honours_an_increment_and_answers_in_the_envelope() {
        let fake = FakeVault::start(FakeConfig::default()).await;
        let token = fake.issue_token(Duration::from_secs(3600), Duration::ZERO, true);
        let renew = "/v1/auth/token/renew-self";

        let (_, text) = post(
            &fake,
            renew,
            Some(token.as_str()),
            json!({"increment": "2m"}),
        )
        .await;
        let (_, number) = post(&fake, renew, Some(token.as_str()), json!({"increment": 90})).await;
        let (_, default) = post(&fake, renew, Some(token.as_str()), json!({})).await;
        let (_, lookup) = get(&fake, "/v1/auth/token/lookup-self", &token).await;

        assert_eq!(text["auth"]["lease_duration"], 120, "{text}");
        assert_eq!(number["auth"]["lease_duration"], 90, "{number}");
        assert_eq!(default["auth"]["lease_duration"], 3600, "{default}");
        assert_eq!(default["data"], Value::Null);
        assert_eq!(default["lease_id"], "");
        assert!(default["request_id"].is_string(), "{default}");
        assert_eq!(default["auth"]["renewable"], true);
        assert!((3598..=3600).contains(&lookup["data"]["ttl"].as_u64().unwrap()));
    }
}
