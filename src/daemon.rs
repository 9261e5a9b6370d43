//! Building the long-lived clients from settings and running the worker
//! until the stop signal, then draining. Beside the worker: the HTTP
//! endpoints (from the start) and the heartbeat (once Redis answers), both
//! stopped after the drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::{self, Health, HttpError};
use crate::queue::Queue;
use crate::retry;
use crate::store::Store;
use crate::worker::{Worker, WorkerError};
use crate::workflow::Context;

/// Why the daemon stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Github(#[from] crate::github::GithubError),
    /// The store could not be opened (`postgres.password_ref`).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Connects, runs the worker until `stop` resolves, and returns once the
/// running jobs have finished.
pub async fn run_until_stopped(
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // Processes that leave a playbook run (Ansible's forks in sessions of
    // their own, daemonized ssh ControlMasters) re-parent to us, not to PID 1
    // (which in a container may never reap), so each run can kill and reap
    // all it started; the reaper also reaps those that exit later. It stops
    // after the drain, when no run is left to leave any.
    let runs_over = CancellationToken::new();
    let reaper = crate::ansible::reaper::start(runs_over.clone());
    let result = run_worker(settings, stop).await;
    runs_over.cancel();
    if let Err(e) = reaper.await {
        tracing::warn!(error.message = %e, "the orphan reaper failed");
    }
    result
}

/// [`run_until_stopped`] but for the reaping of orphans.
async fn run_worker(
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let settings = Arc::new(settings);
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        stop.await;
        trigger.cancel();
    });

    let store = Store::open(&settings, settings.worker.concurrency).await?;
    let ctx = Context::new(settings.clone(), store.clone())?;
    ctx.policy.warn_if_unset();
    // HTTP and heartbeat outlive the drain; this guard stops them on every
    // way out of this function.
    let services = CancellationToken::new();
    let _stop_services = services.clone().drop_guard();
    let health = Health::new(store.clone());
    let listener = http::bind(settings.http.listen).await?;
    let server = tokio::spawn(http::serve(listener, health.clone(), services.clone()));
    let Some(queue) = connect(&settings, &store, &shutdown).await else {
        return Ok(());
    };
    health.set_queue(queue.clone());
    if let Some(path) = settings.heartbeat.file() {
        tokio::spawn(crate::heartbeat::run(
            path.to_owned(),
            Duration::from_secs(settings.heartbeat.interval_secs),
            queue.clone(),
            services.clone(),
        ));
    }
    // The worker owns the context; the controller is stopped through a
    // clone once no run is left to fork.
    let runner = ctx.runner.clone();
    let worker = Worker::new(queue, ctx);
    let ran = worker.run(shutdown).await;
    runner.stop_controller().await;
    ran?;
    stop_after_the_drain(&settings, services, server).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Applies the migrations, then connects to Redis, each retried until it
/// works; `None` if told to stop first.
async fn connect(
    settings: &Settings,
    store: &Store,
    shutdown: &CancellationToken,
) -> Option<Queue> {
    until_ok("applying the Postgres migrations", shutdown, || {
        store.migrate()
    })
    .await?;
    let consumer = settings.consumer_name();
    let connect = || Queue::connect(&settings.redis, consumer.clone());
    until_ok("connecting to Redis", shutdown, connect).await
}

/// Once the worker has drained: lets the last playbook runs finish dying,
/// then stops HTTP and the heartbeat.
async fn stop_after_the_drain(
    settings: &Settings,
    services: CancellationToken,
    server: tokio::task::JoinHandle<()>,
) {
    // Runs stopped at the end of the drain finish dying on threads of their
    // own; let them, so nothing outlives the worker.
    let kill_grace = Duration::from_secs(settings.worker.kill_grace_secs);
    if !crate::ansible::finish_cleanups(kill_grace + Duration::from_secs(5)).await {
        tracing::warn!("some playbook processes were still being stopped at exit");
    }
    services.cancel();
    // Open keep-alive connections may hold the server a moment; not longer.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
}

/// Dependencies may come up after us (compose, restarts): `attempt` is
/// retried with backoff, loudly, until it succeeds; `None` if told to stop
/// first.
async fn until_ok<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &CancellationToken,
    attempt: impl FnMut() -> F,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        value = retry::until_ok(what, Duration::from_millis(200), attempt) => Some(value),
    }
}
