//! The stop signal: a future that resolves on SIGTERM or SIGINT.

use tokio::signal::unix::{self, SignalKind};

/// Resolves when the process is asked to stop.
pub async fn signal() {
    let mut term = match unix::signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::error!(error.message = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
