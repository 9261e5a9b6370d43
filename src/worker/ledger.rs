//! The jobs ledger's part of a step: claiming a request id before it runs,
//! waiting for another entry's run of the same request, answering a repeat
//! with the stored result, and recording each final result (retried in the
//! background while Postgres is down). A request id runs at most once to a
//! final result; this is where that holds.

use std::time::Duration;

use super::{Handled, RETRY_DELAY, Worker};
use crate::job::{Job, JobResult, StoredResult};
use crate::queue::{Delivery, Publication};
use crate::retry::{self, Backoff};
use crate::store::{Claim, JobRecord, JobState, Store};

/// Background tries of a ledger write that failed (about 10 minutes).
const LEDGER_RETRIES: u32 = 64;
/// How often a duplicate request checks whether the first one finished.
const DUPLICATE_POLL: Duration = Duration::from_secs(1);

impl Worker {
    /// Claims the request for this entry. `None`: this entry runs it.
    /// Otherwise the result it already has: it ran before, or another entry
    /// runs it now (then once that run ends).
    pub(super) async fn claim(&self, delivery: &Delivery, job: &Job) -> Option<StoredResult> {
        match self.ask_ledger(delivery, job).await {
            Claim::Run => None,
            Claim::Finished(result) => Some(result),
            Claim::RunningElsewhere { entry_id } => {
                self.await_other(delivery, job, &entry_id).await
            }
        }
    }

    /// Asks the ledger, waiting out a Postgres outage: a delay, never a
    /// lost or doubled job.
    async fn ask_ledger(&self, delivery: &Delivery, job: &Job) -> Claim {
        let payload = job.to_payload();
        retry::until_ok("claiming the job in the ledger", RETRY_DELAY, || {
            self.ctx.store.claim_job(
                delivery.kind,
                job.request_id(),
                self.queue.consumer(),
                &delivery.entry_id,
                job.target(),
                &payload,
            )
        })
        .await
    }

    /// Another entry with the same request id is running: wait for its
    /// result. `None` when that entry is gone without one, and this entry
    /// took the job over.
    async fn await_other(
        &self,
        delivery: &Delivery,
        job: &Job,
        other: &str,
    ) -> Option<StoredResult> {
        tracing::info!(
            other_entry = other,
            "the same request is running elsewhere; waiting for its result"
        );
        loop {
            tokio::time::sleep(DUPLICATE_POLL).await;
            match self.ctx.store.job(delivery.kind, job.request_id()).await {
                Ok(Some(JobRecord {
                    status: JobState::Finished(_),
                    result: Some(result),
                    ..
                })) => return Some(result),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error.message = %e, "the jobs ledger is unavailable; still waiting");
                    continue;
                }
            }
            let Ok(false) = self.queue.is_pending(&delivery.stream, other).await else {
                continue;
            };
            // The other entry was acked: its result is in Redis even if the
            // ledger missed it; or it vanished, and the job is ours.
            if let Ok(Some(text)) = self.queue.result(delivery.kind, job.request_id()).await {
                return Some(StoredResult::new(text));
            }
            let moved = self
                .ctx
                .store
                .take_over_job(
                    delivery.kind,
                    job.request_id(),
                    self.queue.consumer(),
                    &delivery.entry_id,
                    other,
                )
                .await;
            if let Ok(true) = moved {
                return None;
            }
        }
    }

    /// Answers a repeated request with its stored result as it was
    /// stored, without running.
    pub(super) async fn republish(
        &self,
        delivery: &Delivery,
        job: &Job,
        result: &StoredResult,
    ) -> Handled {
        tracing::info!("request already answered; publishing its result again");
        let publication = Publication {
            request_id: job.request_id(),
            json: result.json(),
            finished_event: None,
        };
        self.publish_json(delivery, Some(publication), None).await;
        Handled::Published {
            request_id: job.request_id().to_owned(),
            status: result.status(),
        }
    }

    /// The ledger is audit and idempotency, not a gate for the result: when
    /// Postgres is down the result goes out anyway, and the ledger write is
    /// retried in the background for a while (a repeated request id is
    /// answered from the Redis result key meanwhile).
    pub(super) async fn record_finish(&self, result: &JobResult) {
        let Err(e) = self.ctx.store.job_finished(result).await else {
            return;
        };
        crate::metrics::status_write_failed(crate::metrics::StatusWrite::JobLedger);
        tracing::error!(error.message = %e, request_id = %result.request_id, "recording the job result failed; retrying in the background");
        tokio::spawn(record_later(self.ctx.store.clone(), result.clone()));
    }
}

/// The background part of `record_finish`.
async fn record_later(store: Store, result: JobResult) {
    let mut backoff = Backoff::new(RETRY_DELAY);
    for _ in 0..LEDGER_RETRIES {
        backoff.wait().await;
        if store.job_finished(&result).await.is_ok() {
            tracing::info!(request_id = %result.request_id, "job result recorded after a retry");
            return;
        }
    }
    tracing::error!(request_id = %result.request_id, "giving up recording the job result");
}
