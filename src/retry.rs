//! Waiting out an outage: try, log, wait, try again, the wait doubling up
//! to a cap. Every "a delay, never a lost job" loop goes through here.

use std::fmt::Display;
use std::time::Duration;

/// The longest wait between two tries.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// A wait that doubles each time, up to [`MAX_DELAY`].
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    delay: Duration,
    first: Duration,
}

impl Backoff {
    /// Starts at `first`.
    pub fn new(first: Duration) -> Backoff {
        Backoff {
            delay: first,
            first,
        }
    }

    /// The wait the next [`Backoff::wait`] will take.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Sleeps the current delay, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.delay = self.first;
    }
}

/// Tries `attempt` until it succeeds, logging each failure with `what`
/// (the step that failed), waiting from `first` on.
pub async fn until_ok<T, E: Display, F>(
    what: &str,
    first: Duration,
    mut attempt: impl FnMut() -> F,
) -> T
where
    F: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(first);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => tracing::warn!(
                error.message = %e,
                retry_in_ms = backoff.delay().as_millis() as u64,
                "{what} failed; retrying"
            ),
        }
        backoff.wait().await;
    }
}
