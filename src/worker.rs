//! The worker loop: read entries while slots are free, run each under a
//! slot, publish its result, ack. Beside it, a lease keeper renews the
//! entries that are running; on shutdown, a bounded drain, then whatever
//! still runs is killed and handed back to the group.

mod leases;
mod progress;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::job::{
    DeployJob, ErrorCode, InvalidPayload, JobError, JobKind, JobResult, ProvisionJob, RequestId,
    Timings,
};
use crate::queue::{DeadLetter, Delivery, Finished, Publication, Queue};
use crate::retry::{self, Backoff};
use crate::store::Claim;
use crate::workflow::{self, Context, Report, millis};
use leases::Leases;
use progress::Progress;

/// Failures that stop the worker loop itself.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// A result was published (success or failure) and the entry acked.
    Published { request_id: String, success: bool },
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
/// Background tries of a ledger write that failed (about 10 minutes).
const LEDGER_RETRIES: u32 = 64;
/// How often a duplicate request checks whether the first one finished.
const DUPLICATE_POLL: Duration = Duration::from_secs(1);

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
                        () = shutdown.cancelled() => {}
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
        let token = leases.hold(&delivery, &abort);
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

    /// `handle` in a task of its own, so that a bug that panics costs one
    /// job an `internal` result and a dead letter, never the worker or the
    /// entry.
    async fn handle_guarded(&self, delivery: Delivery, token: CancellationToken) -> Handled {
        let worker = self.clone();
        let entry = delivery.clone();
        let e = match tokio::spawn(async move { worker.handle(entry, token).await }).await {
            Ok(handled) => return handled,
            Err(e) => e,
        };
        tracing::error!(entry_id = %delivery.entry_id, error.message = %e, "job handler panicked");
        let invalid = InvalidPayload::new(
            readable_request_id(&delivery),
            "internal error: the worker panicked while handling this entry",
        );
        self.fail_entry(&delivery, &invalid, ErrorCode::Internal)
            .await
    }

    /// One entry, start to ack: parse, claim, run its workflow, publish, ack.
    /// `token` fires when the job must stop (shutdown, or lost lease).
    pub async fn handle(&self, delivery: Delivery, token: CancellationToken) -> Handled {
        let started_at = Utc::now();
        let job = match parse(&delivery) {
            Ok(job) => job,
            Err(invalid) => {
                tracing::warn!(
                    stream = %delivery.stream,
                    entry_id = %delivery.entry_id,
                    reason = %invalid.reason,
                    "invalid payload"
                );
                return self
                    .fail_entry(&delivery, &invalid, ErrorCode::InvalidPayload)
                    .await;
            }
        };
        let span = tracing::info_span!(
            "job",
            kind = delivery.kind.as_str(),
            request_id = job.request_id(),
            project_id = job.project_id().unwrap_or_default(),
            attempt = delivery.delivery_count,
        );
        async {
            let limit = self.ctx.settings.worker.max_deliveries;
            if delivery.delivery_count > limit {
                let lost = InvalidPayload::new(
                    RequestId::parse(job.request_id()).ok(),
                    format!(
                        "delivered {} times (limit {limit}): its workers kept dying; not run again",
                        delivery.delivery_count
                    ),
                );
                return self
                    .fail_entry(&delivery, &lost, ErrorCode::WorkerLost)
                    .await;
            }
            tokio::select! {
                handled = self.claim_and_run(&delivery, &job, started_at) => handled,
                () = token.cancelled() => {
                    tracing::warn!("job stopped before its end; its entry stays pending");
                    Handled::Abandoned
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the job unless the ledger says it ran or runs elsewhere; in
    /// those cases its result is published again once there is one.
    async fn claim_and_run(
        &self,
        delivery: &Delivery,
        job: &Job,
        started_at: chrono::DateTime<Utc>,
    ) -> Handled {
        match self.claim(delivery, job).await {
            Claim::Run => {}
            Claim::Finished(result) => {
                return self.republish(delivery, job, &result.to_string()).await;
            }
            Claim::RunningElsewhere { entry_id } => {
                if let Some(result) = self.await_other(delivery, job, &entry_id).await {
                    return self.republish(delivery, job, &result).await;
                }
            }
        }
        tracing::info!("job started");
        let (events, progress) = Progress::start(&self.queue, job.request_id());
        let report = match job {
            Job::Deploy(job) => workflow::deploy::run(&self.ctx, job, Some(events)).await,
            Job::Provision(job) => workflow::provision::run(&self.ctx, job, Some(events)).await,
        };
        match &report.error {
            None => tracing::info!("job succeeded"),
            Some(e) => {
                tracing::warn!(error.code = e.code.as_str(), error.message = %e.message, "job failed")
            }
        }
        let result = build_result(
            delivery,
            job.request_id(),
            self.queue.consumer(),
            started_at,
            report,
        );
        crate::metrics::job_finished(&result);
        // The ledger write and the last progress events go out side by
        // side; the result then goes with the event that ends the stream.
        let ((), finished) = tokio::join!(self.record_finish(&result), progress.close(&result));
        let success = result.error.is_none();
        self.publish(delivery, Some(&result), Some(&finished), None)
            .await;
        Handled::Published {
            request_id: result.request_id,
            success,
        }
    }

    /// Asks the ledger, waiting out a Postgres outage: a delay, never a
    /// lost or doubled job.
    async fn claim(&self, delivery: &Delivery, job: &Job) -> Claim {
        retry::until_ok("claiming the job in the ledger", RETRY_DELAY, || {
            self.ctx.store.claim_job(
                delivery.kind.as_str(),
                job.request_id(),
                self.queue.consumer(),
                &delivery.entry_id,
                job.target(),
            )
        })
        .await
    }

    /// Another entry with the same request id is running: wait for its
    /// result. `None` when that entry is gone without one, and this entry
    /// took the job over.
    async fn await_other(&self, delivery: &Delivery, job: &Job, other: &str) -> Option<String> {
        tracing::info!(
            other_entry = other,
            "the same request is running elsewhere; waiting for its result"
        );
        loop {
            tokio::time::sleep(DUPLICATE_POLL).await;
            match self
                .ctx
                .store
                .job(delivery.kind.as_str(), job.request_id())
                .await
            {
                Ok(Some(record)) if record.status != "running" => {
                    if let Some(result) = record.result {
                        return Some(result.to_string());
                    }
                }
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
            if let Ok(Some(result)) = self.queue.result(delivery.kind, job.request_id()).await {
                return Some(result);
            }
            let moved = self
                .ctx
                .store
                .take_over_job(
                    delivery.kind.as_str(),
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

    /// Answers a repeated request with the stored result, without running.
    async fn republish(&self, delivery: &Delivery, job: &Job, result: &str) -> Handled {
        tracing::info!("request already answered; publishing its result again");
        let publication = Publication {
            request_id: job.request_id(),
            json: result,
            finished_event: None,
        };
        self.publish_json(delivery, Some(publication), None).await;
        let success = serde_json::from_str::<serde_json::Value>(result)
            .is_ok_and(|r| r["status"] == "success");
        Handled::Published {
            request_id: job.request_id().to_owned(),
            success,
        }
    }

    /// An entry that is not run (breaks the contract, delivered too often,
    /// or crashed the handler): a failed result when a request id is
    /// readable, always a dead letter, then the ack.
    async fn fail_entry(
        &self,
        delivery: &Delivery,
        why: &InvalidPayload,
        code: ErrorCode,
    ) -> Handled {
        let dead = DeadLetter {
            reason: &why.reason,
            request_id: why.request_id.as_ref().map(|id| id.as_str()),
        };
        let Some(request_id) = &why.request_id else {
            self.publish(delivery, None, None, Some(dead)).await;
            return Handled::DeadLettered;
        };
        let report = Report::failed(JobError::new(code, why.reason.clone()));
        let result = build_result(
            delivery,
            request_id.as_str(),
            self.queue.consumer(),
            Utc::now(),
            report,
        );
        crate::metrics::job_finished(&result);
        if code != ErrorCode::InvalidPayload {
            self.record_finish(&result).await;
        }
        self.publish(delivery, Some(&result), None, Some(dead))
            .await;
        Handled::Published {
            request_id: request_id.as_str().to_owned(),
            success: false,
        }
    }

    /// The ledger is audit and idempotency, not a gate for the result: when
    /// Postgres is down the result goes out anyway, and the ledger write is
    /// retried in the background for a while (a repeated request id is
    /// answered from the Redis result key meanwhile).
    async fn record_finish(&self, result: &JobResult) {
        let status = result.status;
        let json = serde_json::to_value(result).expect("a result always serializes");
        let kind = result.job.as_str();
        let request_id = result.request_id.clone();
        let code = result.error.as_ref().map(|e| e.code.as_str());
        let store = self.ctx.store.clone();
        let first = store
            .job_finished(kind, &request_id, status, code, &json)
            .await;
        let Err(e) = first else {
            return;
        };
        crate::metrics::status_write_failed(crate::metrics::StatusWrite::JobLedger);
        tracing::error!(error.message = %e, request_id = %request_id, "recording the job result failed; retrying in the background");
        tokio::spawn(async move {
            let mut backoff = Backoff::new(RETRY_DELAY);
            for _ in 0..LEDGER_RETRIES {
                backoff.wait().await;
                if store
                    .job_finished(kind, &request_id, status, code, &json)
                    .await
                    .is_ok()
                {
                    tracing::info!(request_id = %request_id, "job result recorded after a retry");
                    return;
                }
            }
            tracing::error!(request_id = %request_id, "giving up recording the job result");
        });
    }

    async fn publish(
        &self,
        delivery: &Delivery,
        result: Option<&JobResult>,
        finished_event: Option<&str>,
        dead: Option<DeadLetter<'_>>,
    ) {
        let json = result.map(|r| serde_json::to_string(r).expect("a result always serializes"));
        let publication = result.zip(json.as_deref()).map(|(r, json)| Publication {
            request_id: &r.request_id,
            json,
            finished_event,
        });
        self.publish_json(delivery, publication, dead).await;
    }

    /// Publishes and acks, retrying until Redis takes it: a job's result is
    /// never dropped because Redis blinked.
    async fn publish_json(
        &self,
        delivery: &Delivery,
        result: Option<Publication<'_>>,
        dead: Option<DeadLetter<'_>>,
    ) {
        let finished = retry::until_ok("publishing the result", RETRY_DELAY, || {
            self.queue.finish(delivery, result, dead.clone())
        })
        .await;
        if finished == Finished::NotOwner {
            tracing::warn!(entry_id = %delivery.entry_id, "another worker took this entry over; its result is theirs to publish");
        }
    }
}

/// A parsed job of either kind.
enum Job {
    Deploy(DeployJob),
    Provision(ProvisionJob),
}

impl Job {
    fn request_id(&self) -> &str {
        match self {
            Job::Deploy(job) => job.request_id.as_str(),
            Job::Provision(job) => job.request_id.as_str(),
        }
    }

    /// The server the job acts on.
    fn target(&self) -> &str {
        match self {
            Job::Deploy(job) => job.server_ip.as_str(),
            Job::Provision(job) => job.server_handle.as_str(),
        }
    }

    fn project_id(&self) -> Option<String> {
        match self {
            Job::Deploy(job) => Some(job.project_id.to_string()),
            Job::Provision(_) => None,
        }
    }
}

fn parse(delivery: &Delivery) -> Result<Job, InvalidPayload> {
    let Some(payload) = &delivery.payload else {
        return Err(InvalidPayload {
            request_id: None,
            reason: "entry has no `payload` field".to_owned(),
        });
    };
    match delivery.kind {
        JobKind::Deploy => DeployJob::parse(payload).map(Job::Deploy),
        JobKind::Provision => ProvisionJob::parse(payload, &delivery.entry_id).map(Job::Provision),
    }
}

/// The request id of an entry whose handling failed, if its payload has one
/// (a provision job without one goes by its entry id).
fn readable_request_id(delivery: &Delivery) -> Option<RequestId> {
    let payload: serde_json::Value = serde_json::from_slice(delivery.payload.as_deref()?).ok()?;
    match payload.get("request_id").and_then(|id| id.as_str()) {
        Some(id) => RequestId::parse(id).ok(),
        None if delivery.kind == JobKind::Provision => RequestId::parse(&delivery.entry_id).ok(),
        None => None,
    }
}

fn build_result(
    delivery: &Delivery,
    request_id: &str,
    worker: &str,
    started_at: chrono::DateTime<Utc>,
    report: Report,
) -> JobResult {
    let finished_at = Utc::now();
    let queue_wait_ms = delivery
        .enqueued_at_ms()
        .map(|enqueued| (started_at.timestamp_millis() - enqueued).max(0) as u64)
        .unwrap_or(0);
    JobResult {
        request_id: request_id.to_owned(),
        job: delivery.kind,
        status: JobResult::status_for(report.error.as_ref()),
        error: report.error,
        started_at,
        finished_at,
        duration_ms: millis((finished_at - started_at).to_std().unwrap_or_default()),
        attempt: delivery.delivery_count.max(1),
        worker: worker.to_owned(),
        output_tail: report.output_tail,
        stats: report.stats,
        failed_task: report.failed_task,
        timings: Timings {
            queue_wait_ms,
            preflight_ms: report.preflight_ms,
            playbook_ms: report.playbook_ms,
        },
        extra: report.extra,
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
