//! `/dead`: the dead letters, newest first, with reason, queue, request id
//! and a payload preview; a replay link when actions are allowed.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use crate::console::html::{self, Nav, esc, url_part};
use crate::console::{Console, Failure, Shared, Viewer};
use crate::queue::DeadLetterEntry;

/// How many letters the page lists.
const LIST_COUNT: usize = 200;
/// How much of each payload the list shows.
pub(crate) const PREVIEW_BYTES: usize = 300;

/// The flash a replay leaves.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    flash: Option<String>,
    id: Option<String>,
    entry: Option<String>,
}

/// `GET /dead`.
pub(crate) async fn page(
    State(console): State<Shared>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Result<Response, Failure> {
    let page = console.letters.list(LIST_COUNT, PREVIEW_BYTES).await?;
    let rows: String = page
        .entries
        .iter()
        .rev()
        .map(|letter| row(&console, letter))
        .collect();
    let rows = if rows.is_empty() {
        "<tr><td colspan=\"7\">No dead letters.</td></tr>".to_owned()
    } else {
        rows
    };
    let note = if (page.entries.len() as u64) < page.total {
        format!(
            "<p>Showing the newest {} of {} dead letters.</p>",
            page.entries.len(),
            page.total
        )
    } else {
        String::new()
    };
    let flash = match flash.flash.as_deref() {
        Some("replayed") => html::flash(&format!(
            "Dead letter {} replayed as entry {}.",
            flash.id.as_deref().unwrap_or("?"),
            flash.entry.as_deref().unwrap_or("?")
        )),
        _ => String::new(),
    };
    let body = format!(
        "{flash}{note}{}",
        html::table(
            "dead",
            "Dead letters, newest first",
            &[
                "Id",
                "Dead at",
                "Queue",
                "Request id",
                "Reason",
                "Payload",
                "Action"
            ],
            &rows
        )
    );
    Ok(html::respond(
        StatusCode::OK,
        html::page("Dead letters", Some(Nav::Dead), &body, Some(&viewer)),
        Some(&viewer),
    ))
}

/// The payload as text, redacted and escaped, with an ellipsis when cut.
pub(crate) fn payload_preview(console: &Console, letter: &DeadLetterEntry) -> String {
    match &letter.payload {
        None => "-".to_owned(),
        Some(bytes) => {
            let more = if letter.payload_truncated() {
                "…"
            } else {
                ""
            };
            format!("{}{more}", console.show(&String::from_utf8_lossy(bytes)))
        }
    }
}

fn row(console: &Console, letter: &DeadLetterEntry) -> String {
    let text = |v: Option<&str>| console.show(v.unwrap_or("-"));
    let stream = letter
        .stream
        .as_deref()
        .map(|s| console.letters.names().unprefixed(s));
    let action = if console.allow_actions {
        format!(
            "<a data-action=\"replay\" href=\"/dead/{}/replay\">Replay…</a>",
            url_part(&letter.id)
        )
    } else {
        String::new()
    };
    format!(
        "<tr data-entry-id=\"{id}\"><td data-col=\"id\">{id}</td><td data-col=\"dead_at\">{}</td>\
         <td data-col=\"stream\">{}</td><td data-col=\"request_id\">{}</td>\
         <td data-col=\"reason\">{}</td><td data-col=\"payload\"><code>{}</code></td>\
         <td data-col=\"action\">{action}</td></tr>",
        text(letter.dead_at.as_deref()),
        text(stream),
        text(letter.request_id.as_deref()),
        text(letter.reason.as_deref()),
        payload_preview(console, letter),
        id = esc(&letter.id),
    )
}
