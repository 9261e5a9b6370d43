//! The worker loop: read entries while slots are free, run each under a
//! slot (the step, `Worker::handle`, in `step`), and on shutdown a bounded
//! drain, then whatever still runs is killed and handed back to the group.
//! Beside it, a lease keeper renews the entries that are running. The jobs
//! ledger's part of a step (claim, repeats, record) is `ledger`'s.

mod leases;
mod ledger;
mod progress;
mod step;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::job::JobStatus;
use crate::queue::{Delivery, Queue};
use crate::retry::Backoff;
use crate::workflow::Context;
use leases::Leases;

/// Failures that stop the worker loop itself.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// A result was published, with its status, and the entry acked.
    Published {
        request_id: String,
        status: JobStatus,
    },
    /// No request id could be read: dead-lettered and acked, no result.
    DeadLettered,
    /// Stopped before its end (shutdown, or the entry was taken over by
    /// another worker); nothing published, nothing acked.
    Abandoned,
}

/// Runs jobs from both queues with bounded concurrency.
#[derive(Clone)]
pub struct Worker {
    queue: Queue,
    ctx: Context,
}

/// First wait after a failed read, publish or ledger write.
const RETRY_DELAY: Duration = Duration::from_millis(500);

impl Worker {
    /// A worker taking jobs from `queue`.
    pub fn new(queue: Queue, ctx: Context) -> Worker {
        Worker { queue, ctx }
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.ctx.settings.worker.lease_secs)
    }

    /// Reads and runs jobs until `shutdown` fires, then drains: running
    /// jobs get `worker.shutdown_grace_secs` to finish; the rest are killed
    /// and their entries handed back for another worker.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let slots = Arc::new(Semaphore::new(self.ctx.settings.worker.concurrency));
        let jobs = TaskTracker::new();
        let abort = CancellationToken::new();
        let leases = Leases::default();
        let keeper = tokio::spawn(leases.clone().keep(
            self.queue.clone(),
            self.lease(),
            abort.clone(),
        ));
        let mut reader = self.queue.reader(self.lease()).await?;
        let mut backoff = Backoff::new(RETRY_DELAY);
        tracing::info!(
            consumer = self.queue.consumer(),
            concurrency = self.ctx.settings.worker.concurrency,
            "worker started"
        );
        while let Some(mut permits) = free_slots(&slots, &shutdown).await {
            match reader.next(permits.len(), &shutdown).await {
                Ok(batch) => {
                    backoff.reset();
                    for vanished in batch.vanished {
                        if let Err(e) = self.queue.dead_letter_vanished(&vanished).await {
                            tracing::warn!(error.message = %e, "recording a vanished entry failed");
                        }
                    }
                    for delivery in batch.deliveries {
                        let permit = permits.pop().expect("never more entries than slots");
                        jobs.spawn(self.clone().run_one(
                            delivery,
                            permit,
                            leases.clone(),
                            abort.clone(),
                        ));
                    }
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "reading the queues failed; reconnecting");
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => continue,
                        () = backoff.wait() => {}
                    }
                    if let Err(e) = reader.reconnect().await {
                        tracing::warn!(error.message = %e, "reconnecting the reader failed");
                    }
                }
            }
        }
        self.drain(&jobs, &abort).await;
        abort.cancel();
        let _ = keeper.await;
        if let Err(e) = self.queue.retire_consumer().await {
            tracing::warn!(error.message = %e, "removing this consumer from the groups failed");
        }
        Ok(())
    }

    /// One entry in its slot, under its lease: handled to its end, or, if
    /// the drain's grace ran out, handed back to the group.
    async fn run_one(
        self,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        leases: Leases,
        abort: CancellationToken,
    ) {
        let Some(token) = leases.hold(&delivery, &abort) else {
            // Redis handed out an entry this worker is running: after a
            // failover whose new master never saw the first delivery (or an
            // abrupt loss of the master before it reached the replica), the
            // entry is new there. It is pending for this consumer again, so
            // the running job's result acks it; a second run would only do
            // the job twice.
            tracing::warn!(
                stream = %delivery.stream,
                entry_id = %delivery.entry_id,
                "an entry running here was delivered again; the running job answers it"
            );
            return;
        };
        let _in_flight = crate::metrics::job_started();
        let handled = self.handle_guarded(delivery.clone(), token).await;
        if handled == Handled::Abandoned && abort.is_cancelled() {
            self.hand_back(&delivery).await;
        }
        leases.release(&delivery);
        drop(permit);
    }

    async fn drain(&self, jobs: &TaskTracker, abort: &CancellationToken) {
        let grace = Duration::from_secs(self.ctx.settings.worker.shutdown_grace_secs);
        tracing::info!(
            running = jobs.len(),
            grace_secs = grace.as_secs(),
            "stopped reading; draining"
        );
        jobs.close();
        if tokio::time::timeout(grace, jobs.wait()).await.is_err() {
            tracing::warn!(
                running = jobs.len(),
                "grace period over; stopping the jobs still running"
            );
            abort.cancel();
            jobs.wait().await;
        }
    }

    /// Gives an entry we could not finish back to the group, so another
    /// worker takes it at once rather than after a lease.
    async fn hand_back(&self, delivery: &Delivery) {
        match self.queue.hand_back(delivery, self.lease()).await {
            Ok(()) => tracing::info!(entry_id = %delivery.entry_id, "entry handed back"),
            Err(e) => tracing::warn!(
                entry_id = %delivery.entry_id,
                error.message = %e,
                "handing the entry back failed; it is taken over after its lease"
            ),
        }
    }
}

/// Waits for at least one free slot and takes every free one; `None` once
/// shutdown fires.
async fn free_slots(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    // Biased, the stop first: a free slot must not win against it.
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return None,
        permit = slots.clone().acquire_owned() => permit.ok()?,
    };
    let mut permits = vec![first];
    while let Ok(permit) = slots.clone().try_acquire_owned() {
        permits.push(permit);
    }
    Some(permits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unbiased, `select!` picks at random between a free slot and the
    /// stop, so about every second call would take slots after shutdown;
    /// a thousand `None`s in a row are not luck.
    #[tokio::test]
    async fn free_slots_gives_none_after_shutdown_even_with_every_slot_free() {
        let slots = Arc::new(Semaphore::new(2));
        let shutdown = CancellationToken::new();
        shutdown.cancel();

        for call in 1..=1000 {
            let permits = free_slots(&slots, &shutdown).await;
            assert!(
                permits.is_none(),
                "call {call} took {} slot(s) after shutdown",
                permits.map_or(0, |p| p.len())
            );
        }
    }
}
