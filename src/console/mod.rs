//! The operator console (`infra-service console`): server-rendered pages
//! over the queues (`queue::Inspector`, `DeadLetters`, `Caller`), the jobs
//! ledger and the servers (`store`), with live progress by Server-Sent
//! Events. Read-only unless `console.allow_actions`; a login whenever
//! `console.token_ref` is set; every text shown is redacted and escaped.
//!
//! `auth` owns sessions, the login and CSRF; `html` the layout and
//! escaping; `pages` one module per page; `actions` the confirmations and
//! POSTs; `sse` the event stream; `assets` the CSS and JS in the binary.

mod actions;
mod assets;
mod auth;
mod html;
mod pages;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::queue::{Caller, DeadLetters, Inspector, QueueError};
use crate::secrets::{Redactor, ResolveError, Resolver};
use crate::store::{Store, StoreError};

pub(crate) use auth::Viewer;

/// How many SSE clients may follow jobs at once (one Redis connection each).
const MAX_EVENT_CLIENTS: usize = 64;

/// Why the console could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console.token_ref: {0}")]
    Token(ResolveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("console.listen {addr}: cannot listen: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("console: serving failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler reads: the clients, the redactor, the rules.
pub(crate) struct Console {
    store: Store,
    inspector: Inspector,
    letters: DeadLetters,
    caller: Caller,
    redis: crate::config::RedisSettings,
    redactor: Redactor,
    auth: auth::Auth,
    allow_actions: bool,
    event_clients: Arc<Semaphore>,
    stop: CancellationToken,
}

type Shared = Arc<Console>;

impl Console {
    /// `text` as it may be shown: every known secret value masked, then
    /// HTML-escaped.
    pub(crate) fn show(&self, text: &str) -> String {
        html::esc(&self.redactor.redact(text))
    }

    /// A JSON value, pretty-printed, redacted and escaped.
    pub(crate) fn show_json(&self, value: &serde_json::Value) -> String {
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        self.show(&text)
    }
}

/// Connects to Postgres and Redis, binds `console.listen`, logs `console
/// listening` and serves until `stop` resolves.
pub async fn run(
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let resolver = Resolver::new(settings.secrets.dir.clone());
    let token = match &settings.console.token_ref {
        Some(reference) => Some(
            resolver
                .resolve_str(reference)
                .await
                .map_err(ConsoleError::Token)?,
        ),
        None => None,
    };
    let redactor = Redactor::new(&known_values(&settings, &resolver, token.as_ref()).await);
    let store = Store::open(&settings, 0).await?;
    store.migrate().await?;
    let inspector = Inspector::connect(&settings.redis).await?;
    let letters = DeadLetters::connect(&settings.redis).await?;
    let caller = Caller::connect(&settings.redis).await?;
    let addr = settings.console.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen { addr, source })?;
    let cancel = CancellationToken::new();
    let console = Arc::new(Console {
        store,
        inspector,
        letters,
        caller,
        redis: settings.redis.clone(),
        redactor,
        auth: auth::Auth::new(token),
        allow_actions: settings.console.allow_actions,
        event_clients: Arc::new(Semaphore::new(MAX_EVENT_CLIENTS)),
        stop: cancel.clone(),
    });
    tracing::info!(
        listen = %bound,
        allow_actions = settings.console.allow_actions,
        login = settings.console.token_ref.is_some(),
        "console listening"
    );
    let app = router(console).into_make_service_with_connect_info::<SocketAddr>();
    let stopping = cancel.clone();
    tokio::spawn(async move {
        stop.await;
        tracing::info!("console stopping");
        stopping.cancel();
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(ConsoleError::Serve)
}

/// The values the console can know and must never show: its token and
/// every `env:`/`file:` credential of the worker's it can read.
async fn known_values(
    settings: &Settings,
    resolver: &Resolver,
    token: Option<&SecretString>,
) -> Vec<SecretString> {
    let mut values: Vec<SecretString> = token.cloned().into_iter().collect();
    for (_, reference) in crate::policy::credential_settings(settings) {
        let local = reference.starts_with("env:") || reference.starts_with("file:");
        if local && let Ok(value) = resolver.resolve_str(reference).await {
            values.push(value);
        }
    }
    values
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/jobs", get(pages::jobs::page))
        .route("/jobs/{kind}/{request_id}", get(pages::job::page))
        .route("/dead", get(pages::dead::page))
        .route(
            "/dead/{id}/replay",
            get(actions::confirm_replay).post(actions::replay),
        )
        .route("/servers", get(pages::servers::page))
        .route(
            "/servers/{handle}/reset-host-key",
            get(actions::confirm_reset_host_key).post(actions::reset_host_key),
        )
        .route("/events/{request_id}", get(sse::events))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", axum::routing::post(auth::logout))
        .route("/assets/console.css", get(assets::css))
        .route("/assets/console.js", get(assets::js))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            loopback_names_only,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// Without a login, only requests that name a loopback host are served: a
/// web page whose own name an attacker re-points at 127.0.0.1 (DNS
/// rebinding) reaches the console with its own name as `Host`, and must
/// not read it through the operator's browser.
async fn loopback_names_only(
    State(console): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if console.auth.has_login() || auth::is_loopback_host(host) {
        return next.run(request).await;
    }
    Failure::new(
        StatusCode::MISDIRECTED_REQUEST,
        "This console answers to loopback names only (127.0.0.1, localhost, [::1]); \
         set console.token_ref to serve other names.",
    )
    .render(None)
}

async fn not_found(viewer: Option<Viewer>) -> Response {
    Failure::not_found("No such page.").render(viewer.as_ref())
}

/// No framing, no referrer, nothing cached, scripts and styles from here
/// only (no inline script: the page's JS is `/assets/console.js`).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A request that ends in an error page: its status and what to say.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, message)
    }

    /// A dependency failed: logged here, once, and shown as 502.
    pub(crate) fn upstream(e: &dyn std::error::Error) -> Failure {
        tracing::error!(error.message = %e, error.cause_chain = ?e, "console: a query failed");
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "A query to Redis or Postgres failed; the console's log says why.",
        )
    }

    /// The error page (the nav only when the viewer is known).
    pub(crate) fn render(&self, viewer: Option<&Viewer>) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "<p class=\"error\" id=\"error\">{}</p>",
            html::esc(&self.message)
        );
        html::respond(self.status, html::page(title, None, &body, viewer), viewer)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::upstream(&e)
    }
}

impl From<QueueError> for Failure {
    fn from(e: QueueError) -> Failure {
        Failure::upstream(&e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        self.render(None)
    }
}
