//! Leases of the entries this worker is running: renewed every third of a
//! lease for as long as the job runs (however long, waiting for its server
//! included), and a job whose entry another worker took over is told to
//! stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::{Delivery, Queue};

/// The running entries, each with the token that stops its job.
#[derive(Clone, Default)]
pub(super) struct Leases {
    held: Arc<Mutex<HashMap<(String, String), CancellationToken>>>,
}

impl Leases {
    /// Starts renewing `delivery`; the token fires when its job must stop
    /// (the entry was lost, or `abort` fired). `None` if the entry is held
    /// already: it runs here, and was delivered again.
    pub(super) fn hold(
        &self,
        delivery: &Delivery,
        abort: &CancellationToken,
    ) -> Option<CancellationToken> {
        let key = (delivery.stream.clone(), delivery.entry_id.clone());
        let mut held = self.lock();
        if held.contains_key(&key) {
            return None;
        }
        let token = abort.child_token();
        held.insert(key, token.clone());
        Some(token)
    }

    /// Stops renewing `delivery` (its job ended).
    pub(super) fn release(&self, delivery: &Delivery) {
        self.lock()
            .remove(&(delivery.stream.clone(), delivery.entry_id.clone()));
    }

    /// Renews every held lease until `stop` fires. A Redis error skips one
    /// round: a lease is three rounds long.
    pub(super) async fn keep(self, queue: Queue, lease: Duration, stop: CancellationToken) {
        let every = lease / 3;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            for (stream, ids) in self.by_stream() {
                match queue.renew(&stream, &ids).await {
                    Ok(lost) => self.stop_lost(&stream, &lost),
                    Err(e) => tracing::warn!(error.message = %e, stream, "renewing leases failed"),
                }
            }
        }
    }

    fn by_stream(&self) -> HashMap<String, Vec<String>> {
        let mut streams: HashMap<String, Vec<String>> = HashMap::new();
        for (stream, id) in self.lock().keys() {
            streams.entry(stream.clone()).or_default().push(id.clone());
        }
        streams
    }

    fn stop_lost(&self, stream: &str, lost: &[String]) {
        let held = self.lock();
        for id in lost {
            tracing::warn!(stream, entry_id = %id, "another worker took this entry over; stopping its job here");
            if let Some(token) = held.get(&(stream.to_owned(), id.clone())) {
                token.cancel();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CancellationToken>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts and removes), so a poisoned lock is still usable.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobKind;

    fn delivery(entry_id: &str) -> Delivery {
        Delivery {
            kind: JobKind::Deploy,
            stream: "ansible:deploy:queue".to_owned(),
            entry_id: entry_id.to_owned(),
            payload: None,
            delivery_count: 1,
        }
    }

    #[test]
    fn an_entry_held_already_is_not_held_twice_until_released() {
        let (leases, abort) = (Leases::default(), CancellationToken::new());
        assert!(leases.hold(&delivery("1-0"), &abort).is_some());
        assert!(leases.hold(&delivery("1-0"), &abort).is_none());
        assert!(leases.hold(&delivery("2-0"), &abort).is_some());
        leases.release(&delivery("1-0"));
        assert!(leases.hold(&delivery("1-0"), &abort).is_some());
    }
}
