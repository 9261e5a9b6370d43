//! `/events/{request_id}`: a job's progress stream as Server-Sent Events,
//! one message per entry of `job:events:<request_id>` (the entry id as the
//! SSE id, from `Last-Event-ID` on), redacted; ends after `job_finished`
//! with an `end` event. Each client reads on a Redis connection of its
//! own, at most `MAX_EVENT_CLIENTS` at once, closed when the client leaves
//! or the console stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Failure, Shared, Viewer};
use crate::job::RequestId;
use crate::queue::Caller;

/// How long one read waits for an entry (the caller's longest block).
const BLOCK: Duration = Duration::from_secs(5);

/// Where to start without `Last-Event-ID`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StartQuery {
    after: Option<String>,
}

/// `<milliseconds>-<sequence>`, as stream entry ids are.
pub(crate) fn is_entry_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    id.split_once('-')
        .is_some_and(|(ms, seq)| digits(ms) && digits(seq))
}

/// The id to read after: `Last-Event-ID` (a reconnect), else `?after=`,
/// else the start.
pub(crate) fn start_after(headers: &HeaderMap, after: Option<&str>) -> String {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_entry_id(id))
        .or(after.filter(|id| is_entry_id(id)))
        .unwrap_or("0-0")
        .to_owned()
}

/// `GET /events/{request_id}`.
pub(crate) async fn events(
    State(console): State<Shared>,
    _viewer: Viewer,
    Path(request_id): Path<String>,
    Query(from): Query<StartQuery>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    RequestId::parse(&request_id).map_err(|_| Failure::not_found("That is not a request id."))?;
    let Ok(permit) = console.event_clients.clone().try_acquire_owned() else {
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many live followers; reload later.",
        ));
    };
    let caller = Caller::connect(&console.redis).await?;
    let after = start_after(&headers, from.after.as_deref());
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        follow(&console, caller, &request_id, after, tx).await;
        drop(permit);
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Reads the stream and sends each entry until `job_finished`, the client
/// leaving, a Redis failure or the stop. The connection is dropped (never
/// reused) after an abandoned blocking read.
async fn follow(
    console: &super::Console,
    caller: Caller,
    request_id: &str,
    mut after: String,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    loop {
        let read = tokio::select! {
            biased;
            () = console.stop.cancelled() => return,
            () = tx.closed() => return,
            read = caller.read_events(request_id, &after, BLOCK) => read,
        };
        let entries = match read {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error.message = %e, request_id, "console: following progress failed");
                return;
            }
        };
        for entry in entries {
            after = entry.id.clone();
            let text = entry
                .payload
                .as_deref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            let finished = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .is_some_and(|v| v.get("event").and_then(|e| e.as_str()) == Some("job_finished"));
            // SSE lines end at CR or LF; JSON text holds neither raw.
            let data = console.redactor.redact(&text).replace(['\r', '\n'], " ");
            let event = Event::default().id(entry.id).data(data);
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
            if finished {
                let _ = tx.send(Ok(Event::default().event("end").data("end"))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_is_last_event_id_then_after_then_the_beginning() {
        let mut headers = HeaderMap::new();
        assert_eq!(start_after(&headers, None), "0-0");
        assert_eq!(start_after(&headers, Some("5-1")), "5-1");
        assert_eq!(start_after(&headers, Some("$")), "0-0");
        headers.insert("last-event-id", "7-0".parse().unwrap());
        assert_eq!(start_after(&headers, Some("5-1")), "7-0");
        headers.insert("last-event-id", "junk".parse().unwrap());
        assert_eq!(start_after(&headers, None), "0-0");
    }
}
