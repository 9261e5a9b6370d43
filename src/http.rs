//! The HTTP side: `/metrics` (Prometheus text), `/healthz` (the process
//! runs) and `/readyz` (Redis and Postgres answer; which Redis server is
//! in use). Bound before anything else starts so health is visible while
//! the daemon waits for its services; served until the daemon has
//! drained. Owns no metric: it renders `metrics` and asks `queue` and
//! `store` through their pings.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;
use crate::store::Store;

/// How long `/readyz` and the scrape-time queue reads wait for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoints could not be served.
#[derive(Debug, thiserror::Error)]
#[error("http.listen {addr}: cannot listen: {source}")]
pub struct HttpError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The clients the endpoints ask. The queue arrives once Redis first
/// answers; until then Redis counts as not ready.
#[derive(Clone)]
pub struct Health {
    store: Store,
    queue: Arc<OnceLock<Queue>>,
}

impl Health {
    /// Health of a daemon whose queue is not connected yet.
    pub fn new(store: Store) -> Health {
        Health {
            store,
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// The queue is connected: from now on Redis is asked.
    pub fn set_queue(&self, queue: Queue) {
        let _ = self.queue.set(queue);
    }

    /// Redis answers; with the server in use (with Sentinel, the master).
    async fn redis(&self) -> (Result<(), String>, Option<String>) {
        let Some(queue) = self.queue.get() else {
            return (Err("not connected yet".to_owned()), None);
        };
        (within(queue.ping()).await, Some(queue.server()))
    }

    async fn postgres(&self) -> Result<(), String> {
        within(self.store.ping()).await
    }
}

/// A dependency's answer within [`PROBE_TIMEOUT`], its error as text.
pub(crate) async fn within<T, E: std::fmt::Display>(
    check: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// Binds `addr` and logs the address actually bound (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    tracing::info!(listen = %bound, "http listening");
    Ok(listener)
}

/// Serves the endpoints until `stop` fires.
pub async fn serve(listener: TcpListener, health: Health, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error.message = %e, "the http endpoints stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Health>) -> Response {
    let ((redis, redis_server), postgres) = tokio::join!(health.redis(), health.postgres());
    let ready = redis.is_ok() && postgres.is_ok();
    let verdict = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(why) => why.clone(),
    };
    let body = json!({
        "ready": ready,
        "redis": verdict(&redis),
        "redis_server": redis_server,
        "postgres": verdict(&postgres),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(health): State<Health>) -> Response {
    let backlog = match health.queue.get() {
        Some(queue) => within(queue.backlog())
            .await
            .inspect_err(
                |e| tracing::debug!(error.message = %e, "reading the queues' backlog failed"),
            )
            .ok(),
        None => None,
    };
    crate::metrics::set_backlog(backlog.as_deref());
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
        .into_response()
}
