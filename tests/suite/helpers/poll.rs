//! Waiting for an event with a bound: a probe asked again and again until
//! it answers or a deadline passes. Tests wait on what they can observe (a
//! log line, a key, a row) rather than sleeping for "long enough".

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a probe is asked again.
const POLL: Duration = Duration::from_millis(100);

/// Asks `probe` every 100 ms until it answers `Some`; `None` once `timeout`
/// has passed without an answer (the caller says what was missing).
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(answer) = probe().await {
            return Some(answer);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}
