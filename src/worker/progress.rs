//! A job's progress on its way to `job:events:<request_id>`: the events its
//! run hands out are appended while it runs, and `job_finished` ends the
//! stream, published with the result. Best effort by design: a slow or
//! failing Redis costs events (dropped and logged), never the job, its
//! result, or more than a few seconds of its slot.

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::ansible::{EventCounts, EventSink, EventStream, event_channel};
use crate::job::{JobEvent, JobResult};
use crate::queue::Queue;

/// Events waiting for Redis; beyond this the runner drops new ones.
const BUFFER: usize = 1024;
/// The most one append may take before its event is given up.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);
/// After the result: how long the events still buffered may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The forwarding of one job's events.
pub(super) struct Progress {
    counts: EventCounts,
    forwarder: JoinHandle<()>,
}

impl Progress {
    /// Starts forwarding; the sink goes to the job's workflow.
    pub(super) fn start(queue: &Queue, request_id: &str) -> (EventSink, Progress) {
        let (sink, stream) = event_channel(BUFFER);
        let counts = stream.counts();
        let forwarder =
            tokio::spawn(forward(queue.clone(), request_id.to_owned(), stream).in_current_span());
        let progress = Progress { counts, forwarder };
        (sink, progress)
    }

    /// Once the workflow is done (its sink is gone with it): lets the
    /// buffered events go out, within a bound, and gives the `job_finished`
    /// event, which goes out with the result (`Queue::finish`) and sets the
    /// stream to expire in an hour.
    pub(super) async fn close(mut self, result: &JobResult) -> String {
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut self.forwarder)
            .await
            .is_err()
        {
            self.forwarder.abort();
            tracing::warn!("progress events still queued after the job; dropped");
        }
        let dropped = self.counts.dropped();
        if dropped > 0 {
            tracing::warn!(dropped, "progress events were dropped (Redis behind)");
        }
        JobEvent::finished(
            self.counts.next_seq(),
            result.status,
            result.error.as_ref().map(|e| e.code),
        )
        .to_json()
    }
}

/// Appends events in order until the workflow drops its sink.
async fn forward(queue: Queue, request_id: String, mut stream: EventStream) {
    let mut failed = 0u64;
    while let Some(event) = stream.recv().await {
        if !append(&queue, &request_id, &event).await {
            failed += 1;
        }
    }
    if failed > 0 {
        tracing::warn!(failed, "progress events could not be appended");
    }
}

/// One append, bounded in time; false (logged at debug) if it failed.
async fn append(queue: &Queue, request_id: &str, event: &JobEvent) -> bool {
    let appended = tokio::time::timeout(
        APPEND_TIMEOUT,
        queue.append_event(request_id, &event.to_json()),
    )
    .await;
    match appended {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(seq = event.seq, error.message = %e, "appending a progress event failed");
            false
        }
        Err(_) => {
            tracing::debug!(seq = event.seq, "appending a progress event timed out");
            false
        }
    }
}
