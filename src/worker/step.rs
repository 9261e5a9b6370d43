//! One entry, start to ack: the step the loop runs for each entry
//! (`Worker::handle`). Parse, refuse (a failed result and a dead letter)
//! or run the job's workflow, build its result, publish it with the ack.
//! Whether a job runs at all is the ledger's call (`ledger`).

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::progress::Progress;
use super::{Handled, RETRY_DELAY, Worker};
use crate::job::{
    ErrorCode, InvalidPayload, Job, JobError, JobResult, JobStatus, RequestId, Timings,
    readable_request_id,
};
use crate::queue::{DeadLetter, Delivery, Finished, Publication};
use crate::retry;
use crate::workflow::{self, Admitted, Report, millis};

impl Worker {
    /// `handle` in a task of its own, so that a bug that panics costs one
    /// job an `internal` result and a dead letter, never the worker or the
    /// entry.
    pub(super) async fn handle_guarded(
        &self,
        delivery: Delivery,
        token: CancellationToken,
    ) -> Handled {
        let worker = self.clone();
        let entry = delivery.clone();
        let e = match tokio::spawn(async move { worker.handle(entry, token).await }).await {
            Ok(handled) => return handled,
            Err(e) => e,
        };
        tracing::error!(entry_id = %delivery.entry_id, error.message = %e, "job handler panicked");
        let request_id = readable_request_id(
            delivery.kind,
            delivery.payload.as_deref(),
            &delivery.entry_id,
        );
        let invalid = InvalidPayload::new(
            request_id,
            "internal error: the worker panicked while handling this entry",
        );
        self.fail_entry(&delivery, &invalid, ErrorCode::Internal, true)
            .await
    }

    /// One entry, start to ack: parse, claim, run its workflow, publish, ack.
    /// `token` fires when the job must stop (shutdown, or lost lease).
    pub async fn handle(&self, delivery: Delivery, token: CancellationToken) -> Handled {
        let started_at = Utc::now();
        let job = match Job::parse(
            delivery.kind,
            delivery.payload.as_deref(),
            &delivery.entry_id,
        ) {
            Ok(job) => job,
            Err(invalid) => {
                tracing::warn!(
                    stream = %delivery.stream,
                    entry_id = %delivery.entry_id,
                    reason = %invalid.reason,
                    "invalid payload"
                );
                return self
                    .fail_entry(&delivery, &invalid, ErrorCode::InvalidPayload, false)
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
                    .fail_entry(&delivery, &lost, ErrorCode::WorkerLost, true)
                    .await;
            }
            tokio::select! {
                biased;
                () = token.cancelled() => {
                    tracing::warn!("job stopped before its end; its entry stays pending");
                    Handled::Abandoned
                }
                handled = self.claim_and_run(&delivery, &job, started_at) => handled,
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the job unless it was answered before (or is answered by
    /// another entry meanwhile): then that result is published again. A
    /// deploy target the policy refuses is answered like an invalid
    /// payload, and recorded: the request has its one final result.
    async fn claim_and_run(
        &self,
        delivery: &Delivery,
        job: &Job,
        started_at: DateTime<Utc>,
    ) -> Handled {
        if let Some(earlier) = self.claim(delivery, job).await {
            return self.republish(delivery, job, &earlier).await;
        }
        let admitted = match workflow::admit(&self.ctx, job).await {
            Ok(admitted) => admitted,
            Err(refused) => {
                tracing::warn!(reason = %refused.reason, "deploy target not allowed");
                return self
                    .fail_entry(delivery, &refused, ErrorCode::InvalidPayload, true)
                    .await;
            }
        };
        tracing::info!("job started");
        let (events, progress) = Progress::start(&self.queue, job.request_id());
        let report = match admitted {
            Admitted::Deploy(job, connect) => {
                workflow::deploy::run(&self.ctx, job, connect, Some(events)).await
            }
            Admitted::Provision(job) => {
                workflow::provision::run(&self.ctx, job, Some(events)).await
            }
        };
        match &report.error {
            None => tracing::info!("job succeeded"),
            Some(e) => {
                tracing::warn!(error.code = e.code.as_str(), error.message = %e.message, "job failed")
            }
        }
        let result = self.build_result(delivery, job.request_id(), started_at, report);
        crate::metrics::job_finished(&result);
        // The ledger write and the last progress events go out side by
        // side; the result then goes with the event that ends the stream.
        let ((), finished) = tokio::join!(self.record_finish(&result), progress.close(&result));
        self.publish(delivery, Some(&result), Some(&finished), None)
            .await;
        Handled::Published {
            status: result.status,
            request_id: result.request_id,
        }
    }

    /// An entry that is not run (breaks the contract or the policy,
    /// delivered too often, or crashed the handler): a failed result when a
    /// request id is readable, always a dead letter, then the ack. With
    /// `record`, the result is also the request's entry in the jobs ledger
    /// (a payload that did not parse has none).
    async fn fail_entry(
        &self,
        delivery: &Delivery,
        why: &InvalidPayload,
        code: ErrorCode,
        record: bool,
    ) -> Handled {
        let dead = DeadLetter {
            reason: &why.reason,
            request_id: why.request_id.as_ref().map(|id| id.as_str()),
        };
        let Some(request_id) = &why.request_id else {
            self.publish(delivery, None, None, Some(dead)).await;
            return Handled::DeadLettered;
        };
        let report = Report::failed(JobError {
            details: why.details.clone(),
            ..JobError::new(code, why.reason.clone())
        });
        let result = self.build_result(delivery, request_id.as_str(), Utc::now(), report);
        crate::metrics::job_finished(&result);
        if record {
            self.record_finish(&result).await;
        }
        self.publish(delivery, Some(&result), None, Some(dead))
            .await;
        Handled::Published {
            request_id: request_id.as_str().to_owned(),
            status: JobStatus::Failed,
        }
    }

    /// Publishes `result` (with the event that ends its progress stream)
    /// and/or a dead letter, and acks.
    pub(super) async fn publish(
        &self,
        delivery: &Delivery,
        result: Option<&JobResult>,
        finished_event: Option<&str>,
        dead: Option<DeadLetter<'_>>,
    ) {
        let json = result.map(JobResult::to_json);
        let publication = result.zip(json.as_deref()).map(|(r, json)| Publication {
            request_id: &r.request_id,
            json,
            finished_event,
        });
        self.publish_json(delivery, publication, dead).await;
    }

    /// Publishes and acks, retrying until Redis takes it: a job's result is
    /// never dropped because Redis blinked.
    pub(super) async fn publish_json(
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

    /// The result of the entry's job, run (or refused) by this worker.
    fn build_result(
        &self,
        delivery: &Delivery,
        request_id: &str,
        started_at: DateTime<Utc>,
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
            status: JobStatus::of(report.error.as_ref()),
            error: report.error,
            started_at,
            finished_at,
            duration_ms: millis((finished_at - started_at).to_std().unwrap_or_default()),
            attempt: delivery.delivery_count.max(1),
            worker: self.queue.consumer().to_owned(),
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
}
