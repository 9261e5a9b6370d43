//! The worker loop: read entries while slots are free, run each under a
//! slot, publish its result, ack. One step (`Worker::handle`) is public so
//! tests can drive it directly.

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
use crate::queue::{DeadLetter, Delivery, Queue};
use crate::store::JobStatus;
use crate::workflow::{self, Context, Report, millis};

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
}

/// Runs jobs from both queues with bounded concurrency.
#[derive(Clone)]
pub struct Worker {
    queue: Queue,
    ctx: Context,
}

/// Backoff after a failed read or publish.
const RETRY_DELAY: Duration = Duration::from_millis(500);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(10);

impl Worker {
    /// A worker taking jobs from `queue`.
    pub fn new(queue: Queue, ctx: Context) -> Worker {
        Worker { queue, ctx }
    }

    /// Reads and runs jobs until `shutdown` fires, then waits for the jobs
    /// already started.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let slots = Arc::new(Semaphore::new(self.ctx.settings.worker.concurrency));
        let jobs = TaskTracker::new();
        let mut reader = self.queue.reader().await?;
        let mut delay = RETRY_DELAY;
        tracing::info!(
            consumer = self.queue.consumer(),
            concurrency = self.ctx.settings.worker.concurrency,
            "worker started"
        );
        while let Some(mut permits) = free_slots(&slots, &shutdown).await {
            match reader.next(permits.len(), &shutdown).await {
                Ok(deliveries) => {
                    delay = RETRY_DELAY;
                    for delivery in deliveries {
                        let permit = permits.pop().expect("never more entries than slots");
                        let worker = self.clone();
                        jobs.spawn(async move {
                            worker.handle_guarded(delivery).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "reading the queues failed; reconnecting");
                    pause(delay, &shutdown).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                    if let Err(e) = reader.reconnect().await {
                        tracing::warn!(error.message = %e, "reconnecting the reader failed");
                    }
                }
            }
        }
        tracing::info!(
            running = jobs.len(),
            "stopped reading; waiting for running jobs"
        );
        jobs.close();
        jobs.wait().await;
        Ok(())
    }

    /// `handle` in a task of its own, so that a bug that panics costs one
    /// job an `internal` result and a dead letter, never the worker or the
    /// entry.
    async fn handle_guarded(&self, delivery: Delivery) {
        let worker = self.clone();
        let entry = delivery.clone();
        let Err(e) = tokio::spawn(async move { worker.handle(entry).await }).await else {
            return;
        };
        tracing::error!(entry_id = %delivery.entry_id, error.message = %e, "job handler panicked");
        let invalid = InvalidPayload::new(
            readable_request_id(&delivery),
            "internal error: the worker panicked while handling this entry",
        );
        let started_at = Utc::now();
        let dead = DeadLetter {
            reason: &invalid.reason,
            request_id: invalid.request_id.as_ref().map(|id| id.as_str()),
        };
        let result = invalid.request_id.as_ref().map(|id| {
            let report = Report::failed(JobError::new(ErrorCode::Internal, invalid.reason.clone()));
            build_result(
                &delivery,
                id.as_str(),
                self.queue.consumer(),
                started_at,
                report,
            )
        });
        self.publish(&delivery, result.as_ref(), Some(dead)).await;
    }

    /// One entry, start to ack: parse, run its workflow, publish, ack.
    pub async fn handle(&self, delivery: Delivery) -> Handled {
        let started_at = Utc::now();
        let parsed = parse(&delivery);
        let (request_id, report) = match parsed {
            Err(invalid) => {
                tracing::warn!(
                    stream = %delivery.stream,
                    entry_id = %delivery.entry_id,
                    reason = %invalid.reason,
                    "invalid payload"
                );
                return self.refuse(&delivery, &invalid, started_at).await;
            }
            Ok(job) => {
                let span = tracing::info_span!(
                    "job",
                    kind = delivery.kind.as_str(),
                    request_id = job.request_id(),
                    project_id = job.project_id().unwrap_or_default(),
                    attempt = delivery.delivery_count,
                );
                self.record_start(&delivery, &job).await;
                let report = self.run_job(&job).instrument(span).await;
                (job.request_id().to_owned(), report)
            }
        };
        let result = build_result(
            &delivery,
            &request_id,
            self.queue.consumer(),
            started_at,
            report,
        );
        let success = result.error.is_none();
        self.record_finish(&result).await;
        self.publish(&delivery, Some(&result), None).await;
        Handled::Published {
            request_id,
            success,
        }
    }

    /// The ledger is audit, not a gate: a database error is logged and the
    /// job goes on.
    async fn record_start(&self, delivery: &Delivery, job: &Job) {
        let recorded = self
            .ctx
            .store
            .job_started(
                delivery.kind.as_str(),
                job.request_id(),
                self.queue.consumer(),
                &delivery.entry_id,
                Some(job.target()),
            )
            .await;
        if let Err(e) = recorded {
            tracing::error!(error.message = %e, "recording the job start failed");
        }
    }

    async fn record_finish(&self, result: &JobResult) {
        let status = if result.error.is_none() {
            JobStatus::Success
        } else {
            JobStatus::Failed
        };
        let json = serde_json::to_value(result).expect("a result always serializes");
        let recorded = self
            .ctx
            .store
            .job_finished(
                result.job.as_str(),
                &result.request_id,
                status,
                result.error.as_ref().map(|e| e.code.as_str()),
                &json,
            )
            .await;
        if let Err(e) = recorded {
            tracing::error!(error.message = %e, request_id = %result.request_id, "recording the job result failed");
        }
    }

    async fn run_job(&self, job: &Job) -> Report {
        tracing::info!("job started");
        let report = match job {
            Job::Deploy(job) => workflow::deploy::run(&self.ctx, job).await,
            Job::Provision(job) => workflow::provision::run(&self.ctx, job).await,
        };
        match &report.error {
            None => tracing::info!("job succeeded"),
            Some(e) => {
                tracing::warn!(error.code = e.code.as_str(), error.message = %e.message, "job failed")
            }
        }
        report
    }

    /// An entry that breaks the contract: an `invalid_payload` result when a
    /// request id is readable, always a dead letter, then the ack.
    async fn refuse(
        &self,
        delivery: &Delivery,
        invalid: &InvalidPayload,
        started_at: chrono::DateTime<Utc>,
    ) -> Handled {
        let dead = DeadLetter {
            reason: &invalid.reason,
            request_id: invalid.request_id.as_ref().map(|id| id.as_str()),
        };
        let Some(request_id) = &invalid.request_id else {
            self.publish(delivery, None, Some(dead)).await;
            return Handled::DeadLettered;
        };
        let report = Report::failed(JobError::new(
            ErrorCode::InvalidPayload,
            invalid.reason.clone(),
        ));
        let result = build_result(
            delivery,
            request_id.as_str(),
            self.queue.consumer(),
            started_at,
            report,
        );
        self.publish(delivery, Some(&result), Some(dead)).await;
        Handled::Published {
            request_id: request_id.as_str().to_owned(),
            success: false,
        }
    }

    /// Publishes and acks, retrying until Redis takes it: a job's result is
    /// never dropped because Redis blinked.
    async fn publish(
        &self,
        delivery: &Delivery,
        result: Option<&JobResult>,
        dead: Option<DeadLetter<'_>>,
    ) {
        let json = result.map(|r| serde_json::to_string(r).expect("a result always serializes"));
        let result = result
            .zip(json.as_deref())
            .map(|(r, json)| (r.request_id.as_str(), json));
        let mut delay = RETRY_DELAY;
        loop {
            match self.queue.finish(delivery, result, dead.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error.message = %e, entry_id = %delivery.entry_id, "publishing the result failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
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
        status: if report.error.is_none() {
            "success"
        } else {
            "failed"
        },
        error: report.error,
        started_at,
        finished_at,
        duration_ms: millis((finished_at - started_at).to_std().unwrap_or_default()),
        attempt: delivery.delivery_count,
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
    let first = tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok()?,
        () = shutdown.cancelled() => return None,
    };
    let mut permits = vec![first];
    while let Ok(permit) = slots.clone().try_acquire_owned() {
        permits.push(permit);
    }
    Some(permits)
}

async fn pause(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shutdown.cancelled() => {}
    }
}
