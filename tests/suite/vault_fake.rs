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
//! - Tokens with TTLs that really expire: `lookup-self`, `renew-self`
//!   (extends by the token's TTL, capped at its max TTL, with Vault's
//!   warning); an expired, revoked or unknown token gets 403
//!   `permission denied` on everything.
//! - AppRole and Kubernetes logins (`POST /v1/auth/<mount>/login`) that
//!   check the credentials, the role and the JWT.
//! - Namespaces: a token issued in a namespace works only with that
//!   `X-Vault-Namespace`, and secrets live in one namespace.
//! - Faults on demand: sealed (503) or any status for the next N requests,
//!   a path the policy denies (403), refused renewals.

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
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// How the fake's auth methods and tokens behave.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The TTL of every token a login issues, and of each renewal.
    pub token_ttl: Duration,
    /// A token stops at `creation + max TTL` however often it is renewed;
    /// zero means no cap.
    pub token_max_ttl: Duration,
    pub renewable: bool,
    pub approle_mount: String,
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
}

impl Recorded {
    /// Path and query, as they appeared in the URL.
    pub fn url_text(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

struct Token {
    label: String,
    namespace: Option<String>,
    created: Instant,
    expires: Instant,
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
    revoked: bool,
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

/// A running fake Vault; stops when dropped.
pub struct FakeVault {
    addr: SocketAddr,
    tls: Option<tempfile::TempDir>,
    app: App,
    server: JoinHandle<()>,
}

impl FakeVault {
    /// A fake on plain HTTP.
    pub async fn start(config: FakeConfig) -> FakeVault {
        let listener = bind().await;
        let addr = listener.local_addr().unwrap();
        let app = App::new(config);
        let router = app.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("fake Vault stopped");
        });
        FakeVault {
            addr,
            tls: None,
            app,
            server,
        }
    }

    /// A fake on HTTPS, its certificate (for `127.0.0.1` and `localhost`)
    /// signed by a CA made now, whose PEM is at [`FakeVault::ca_pem`].
    pub async fn start_tls(config: FakeConfig) -> FakeVault {
        let dir = tempfile::tempdir().unwrap();
        let (acceptor, ca_pem) = tls::acceptor();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        let tcp = bind().await;
        let addr = tcp.local_addr().unwrap();
        let app = App::new(config);
        let router = app.router();
        let listener = tls::Listener { tcp, acceptor };
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("fake Vault stopped");
        });
        FakeVault {
            addr,
            tls: Some(dir),
            app,
            server,
        }
    }

    /// What `vault.addr` should say.
    pub fn addr(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate of a TLS fake, for `vault.ca_cert`.
    pub fn ca_pem(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|d| d.path().join("ca.pem"))
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
        let namespace = self.app.config.namespace.clone();
        issue(&mut shared, namespace, ttl, max_ttl, renewable)
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

    /// Successful logins of any method, `lookup-self` of a given token
    /// excepted.
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
        self.server.abort();
    }
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake Vault")
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

fn issue(
    shared: &mut Shared,
    namespace: Option<String>,
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
) -> String {
    let n = shared.tokens.len() + 1;
    let value = format!("hvs.fake{}", uuid::Uuid::new_v4().simple());
    let now = Instant::now();
    let first_lease = if max_ttl.is_zero() {
        ttl
    } else {
        ttl.min(max_ttl)
    };
    shared.tokens.insert(
        value.clone(),
        Token {
            label: format!("token-{n}"),
            namespace,
            created: now,
            expires: now + first_lease,
            ttl,
            max_ttl,
            renewable,
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
    let label = incoming.token.map(|t| {
        shared
            .tokens
            .get(t)
            .map_or_else(|| "unknown".to_owned(), |k| k.label.clone())
    });
    shared.requests.push(Recorded {
        method: method.to_string(),
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
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
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
        ("POST", ["v1", "auth", mount @ .., "login"]) => {
            login(config, shared, req, &mount.join("/"))
        }
        ("GET", ["v1", "auth", "token", "lookup-self"]) => lookup_self(shared, req),
        ("POST" | "PUT", ["v1", "auth", "token", "renew-self"]) => renew_self(shared, req),
        ("GET", ["v1", mount, "data", path @ ..]) if !path.is_empty() => {
            kv_read(config, shared, req, mount, &path.join("/"))
        }
        _ => errors(
            StatusCode::NOT_FOUND,
            &format!("no handler for route \"{}\"", req.segments.join("/")),
        ),
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
    let text = |key: &str| {
        req.body
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let method = if mount == config.approle_mount {
        if text("role_id") != config.role_id || text("secret_id") != config.secret_id {
            return errors(StatusCode::BAD_REQUEST, "invalid role or secret ID");
        }
        "approle"
    } else if mount == config.kubernetes_mount {
        if text("role") != config.kubernetes_role {
            let message = format!("invalid role name \"{}\"", text("role"));
            return errors(StatusCode::BAD_REQUEST, &message);
        }
        if text("jwt") != config.kubernetes_jwt {
            return permission_denied();
        }
        "kubernetes"
    } else {
        return errors(StatusCode::BAD_REQUEST, "no auth method mounted there");
    };
    if req.namespace != config.namespace {
        // The method is mounted in the configured namespace only.
        return errors(StatusCode::BAD_REQUEST, "no auth method mounted there");
    }
    let token = issue(
        shared,
        req.namespace.clone(),
        config.token_ttl,
        config.token_max_ttl,
        config.renewable,
    );
    let answer = json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "", "renewable": false, "lease_duration": 0, "data": null,
        "wrap_info": null, "warnings": null,
        "auth": {
            "client_token": token,
            "accessor": format!("acc-{}", shared.tokens.len()),
            "policies": ["default", "infra"],
            "token_policies": ["default", "infra"],
            "metadata": {"role_name": method},
            "lease_duration": config.token_ttl.as_secs(),
            "renewable": config.renewable,
            "entity_id": "", "token_type": "service", "orphan": true,
        }
    });
    (StatusCode::OK, answer)
}

fn lookup_self(shared: &mut Shared, req: &Incoming<'_>) -> (StatusCode, Value) {
    let Some((value, token)) = live_token(shared, req) else {
        return permission_denied();
    };
    let now = Instant::now();
    let answer = json!({
        "data": {
            "accessor": format!("acc-{}", token.label),
            "creation_ttl": token.ttl.as_secs(),
            "display_name": "token",
            "explicit_max_ttl": token.max_ttl.as_secs(),
            // Vault answers the token itself here, as `id`.
            "id": value.as_str(),
            "num_uses": 0,
            "orphan": true,
            "path": "auth/token/create",
            "policies": ["default", "infra"],
            "renewable": token.renewable,
            "ttl": token.expires.saturating_duration_since(now).as_secs(),
            "type": "service",
        }
    });
    (StatusCode::OK, answer)
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
    let mut expires = now + token.ttl;
    let mut warnings = Value::Null;
    if !token.max_ttl.is_zero() && expires > token.created + token.max_ttl {
        expires = token.created + token.max_ttl;
        warnings = json!([format!(
            "TTL of \"{}s\" exceeded the effective max_ttl of \"{}s\"; TTL value is capped accordingly",
            token.ttl.as_secs(),
            expires.saturating_duration_since(now).as_secs()
        )]);
    }
    token.expires = expires;
    let answer = json!({
        "warnings": warnings,
        "auth": {
            "client_token": value.as_str(),
            "policies": ["default", "infra"],
            // Whole seconds, truncated, as Vault answers.
            "lease_duration": expires.saturating_duration_since(now).as_secs(),
            "renewable": token.renewable,
        }
    });
    (StatusCode::OK, answer)
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
    if shared.denied.contains(&key) {
        return permission_denied();
    }
    if !config.kv_mounts.iter().any(|m| m == mount) {
        return errors(
            StatusCode::NOT_FOUND,
            &format!("no handler for route \"{mount}/data/{path}\""),
        );
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
    let data = if gone {
        Value::Null
    } else {
        version.data.clone()
    };
    let status = if gone {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let answer = json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": {"data": data, "metadata": metadata},
        "wrap_info": null, "warnings": null, "auth": null,
    });
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
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};
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
        let ca_key = key();
        let ca = certificate("fake-vault-ca", &ca_key, None, true);
        let server_key = key();
        let server = certificate("127.0.0.1", &server_key, Some((&ca, &ca_key)), false);
        let identity = native_tls::Identity::from_pkcs8(
            &server.to_pem().unwrap(),
            &server_key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        (TlsAcceptor::from(acceptor), ca.to_pem().unwrap())
    }

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    /// A certificate for `name`, signed by `issuer` (self-signed without).
    fn certificate(
        name: &str,
        key: &PKey<Private>,
        issuer: Option<(&X509, &PKey<Private>)>,
        ca: bool,
    ) -> X509 {
        let mut subject = X509NameBuilder::new().unwrap();
        subject.append_entry_by_text("CN", name).unwrap();
        let subject = subject.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let mut serial = BigNum::new().unwrap();
        serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&subject).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        if ca {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            let usage = KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build();
            b.append_extension(usage.unwrap()).unwrap();
        } else {
            let context = b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None);
            let names = SubjectAlternativeName::new()
                .ip("127.0.0.1")
                .dns("localhost")
                .build(&context)
                .unwrap();
            b.append_extension(names).unwrap();
        }
        let (issuer_name, signing_key) = match issuer {
            Some((cert, key)) => (cert.subject_name().to_owned().unwrap(), key),
            None => (subject, key),
        };
        b.set_issuer_name(&issuer_name).unwrap();
        b.sign(signing_key, MessageDigest::sha256()).unwrap();
        b.build()
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
        let capped = fake.issue_token(Duration::from_secs(60), Duration::from_secs(30), true);

        tokio::time::sleep(Duration::from_millis(400)).await;
        let (expired, _) = get(&fake, "/v1/auth/token/lookup-self", &short).await;
        let renewed: Value = reqwest::Client::new()
            .post(format!("{}/v1/auth/token/renew-self", fake.addr()))
            .header("X-Vault-Token", &capped)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();

        assert_eq!(expired, 403);
        let lease = renewed["auth"]["lease_duration"].as_u64().unwrap();
        assert!((29..=30).contains(&lease), "{renewed}");
        assert!(renewed["warnings"][0].as_str().unwrap().contains("max_ttl"));
    }
}
