//! `/jobs/{kind}/{request_id}`: one job's payload (references only),
//! result, output tail, failed task, timings and progress events. The
//! status is the ledger's, or the published result's when the ledger has
//! not caught up; while it runs, `console.js` follows `/events/...`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use crate::console::html::{self, Nav, esc, url_part};
use crate::console::{Console, Failure, Shared, Viewer};
use crate::job::{JobKind, RequestId};
use crate::queue::EventEntry;

/// The most progress events a static page shows.
const MAX_EVENTS: usize = 2_000;

/// `GET /jobs/{kind}/{request_id}`.
pub(crate) async fn page(
    State(console): State<Shared>,
    viewer: Viewer,
    Path((kind, request_id)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let kind = JobKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| Failure::not_found("No such job kind."))?;
    RequestId::parse(&request_id).map_err(|_| Failure::not_found("That is not a request id."))?;
    let row = console.store.job_row(kind, &request_id).await?;
    let finished_row = row
        .as_ref()
        .filter(|r| r.result.is_some() && r.finished_at.is_some());
    // The ledger is written after the result is published: ask Redis
    // while the ledger says running (or has no row).
    let result: Option<Value> = match finished_row {
        Some(row) => row.result.clone(),
        None => console
            .caller
            .result(kind, &request_id)
            .await?
            .and_then(|text| serde_json::from_str(&text).ok()),
    };
    let events = read_events(&console, &request_id).await?;
    if row.is_none() && result.is_none() && events.is_empty() {
        return Err(Failure::not_found(
            "Nothing is known of this job: not in the ledger, no result, no progress.",
        ));
    }
    let status = match result
        .as_ref()
        .and_then(|r| r.get("status"))
        .and_then(Value::as_str)
    {
        Some("success") => "success",
        Some(_) => "failed",
        None => "running",
    };
    let running = status == "running";
    let field = |key: &str| result.as_ref().and_then(|r| r.get(key));
    let payload = row.as_ref().and_then(|r| r.payload.as_ref()).map_or_else(
        || "not recorded".to_owned(),
        |payload| console.show_json(payload),
    );
    let result_text = result
        .as_ref()
        .map_or_else(|| "no result yet".to_owned(), |r| console.show_json(r));
    let output_tail = field("output_tail")
        .and_then(Value::as_str)
        .map_or_else(|| "-".to_owned(), |tail| console.show(tail));
    let failed_task = match field("failed_task").filter(|t| !t.is_null()) {
        Some(task) => format!(
            "<dl><dt>Host</dt><dd>{}</dd><dt>Task</dt><dd>{}</dd><dt>Message</dt><dd>{}</dd></dl>",
            console.show(task.get("host").and_then(Value::as_str).unwrap_or("-")),
            console.show(task.get("task").and_then(Value::as_str).unwrap_or("-")),
            console.show(task.get("message").and_then(Value::as_str).unwrap_or("-")),
        ),
        None => "<p>none</p>".to_owned(),
    };
    let timings = timings(&console, field("timings"), field("duration_ms"));
    let summary = summary(&console, kind, &request_id, status, row.as_ref());
    let last_id = events.last().map_or("0-0", |e| e.id.as_str());
    let items: String = events.iter().map(|e| event_item(&console, e)).collect();
    let live = if running {
        format!(
            " data-live=\"true\" data-source=\"/events/{}\" data-last-id=\"{}\"",
            url_part(&request_id),
            esc(last_id)
        )
    } else {
        String::new()
    };
    let body = format!(
        "{summary}\
         <section aria-labelledby=\"h-events\"><h2 id=\"h-events\">Progress</h2>\
         <ol id=\"events\" class=\"events\" aria-live=\"polite\"{live}>{items}</ol></section>\
         <section aria-labelledby=\"h-failed\"><h2 id=\"h-failed\">Failed task</h2><div id=\"failed-task\">{failed_task}</div></section>\
         <section aria-labelledby=\"h-timings\"><h2 id=\"h-timings\">Timings</h2>{timings}</section>\
         <section aria-labelledby=\"h-payload\"><h2 id=\"h-payload\">Payload (references only)</h2><pre id=\"payload\" tabindex=\"0\">{payload}</pre></section>\
         <section aria-labelledby=\"h-result\"><h2 id=\"h-result\">Result</h2><pre id=\"result\" tabindex=\"0\">{result_text}</pre></section>\
         <section aria-labelledby=\"h-tail\"><h2 id=\"h-tail\">Output tail</h2><pre id=\"output-tail\" tabindex=\"0\">{output_tail}</pre></section>"
    );
    let title = format!("Job {request_id}");
    Ok(html::respond(
        StatusCode::OK,
        html::page(&title, Some(Nav::Jobs), &body, Some(&viewer)),
        Some(&viewer),
    ))
}

fn summary(
    console: &Console,
    kind: JobKind,
    request_id: &str,
    status: &str,
    row: Option<&crate::store::JobRow>,
) -> String {
    let text = |v: Option<&str>| console.show(v.unwrap_or("-"));
    format!(
        "<dl class=\"summary\"><dt>Kind</dt><dd>{}</dd><dt>Request id</dt><dd>{}</dd>\
         <dt>Status</dt><dd><span id=\"job-status\" class=\"status status-{status}\">{status}</span></dd>\
         <dt>Target</dt><dd>{}</dd><dt>Worker</dt><dd>{}</dd><dt>Attempts</dt><dd>{}</dd>\
         <dt>Created</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl>",
        kind.as_str(),
        console.show(request_id),
        text(row.and_then(|r| r.target.as_deref())),
        text(row.and_then(|r| r.worker.as_deref())),
        row.map_or_else(|| "-".to_owned(), |r| r.attempts.to_string()),
        html::time(row.map(|r| r.created_at)),
        html::time(row.and_then(|r| r.started_at)),
        html::time(row.and_then(|r| r.finished_at)),
    )
}

fn timings(console: &Console, timings: Option<&Value>, duration: Option<&Value>) -> String {
    let ms = |key: &str| {
        timings
            .and_then(|t| t.get(key))
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))
    };
    format!(
        "<dl id=\"timings\"><dt>Waiting in the queue</dt><dd>{}</dd><dt>Preflight</dt><dd>{}</dd>\
         <dt>Playbook</dt><dd>{}</dd><dt>In all</dt><dd>{}</dd></dl>",
        ms("queue_wait_ms"),
        ms("preflight_ms"),
        ms("playbook_ms"),
        console.show(
            &duration
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))
        ),
    )
}

/// Every progress event so far, oldest first (at most [`MAX_EVENTS`]).
async fn read_events(console: &Console, request_id: &str) -> Result<Vec<EventEntry>, Failure> {
    let mut events: Vec<EventEntry> = Vec::new();
    loop {
        let after = events.last().map_or("0-0", |e| e.id.as_str()).to_owned();
        let batch = console
            .caller
            .read_events(request_id, &after, Duration::from_millis(1))
            .await?;
        let done = batch.len() < 100;
        events.extend(batch);
        if done || events.len() >= MAX_EVENTS {
            return Ok(events);
        }
    }
}

/// One `<li>` of the events list, as `console.js` makes them too.
fn event_item(console: &Console, entry: &EventEntry) -> String {
    let text = entry
        .payload
        .as_deref()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let event: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let get = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("");
    let seq = event.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let kind = get("event");
    let line = if kind == "job_finished" {
        format!("job finished: {} {}", get("status"), get("error_code"))
    } else {
        let mut line = format!("{kind}: {}", get("task"));
        if !get("host").is_empty() {
            line.push_str(&format!(" on {}", get("host")));
        }
        if event.get("changed").and_then(Value::as_bool) == Some(true) {
            line.push_str(" (changed)");
        }
        if !get("message").is_empty() {
            line.push_str(&format!(": {}", get("message")));
        }
        line
    };
    format!(
        "<li data-seq=\"{seq}\" data-event=\"{}\" data-id=\"{}\">{}</li>",
        console.show(kind),
        esc(&entry.id),
        console.show(line.trim())
    )
}
