//! The two things the console can change: replaying a dead letter (as
//! `dead replay` does) and forgetting a server's pinned host key (as
//! `servers reset-host-key` does). Each is a GET confirmation page holding
//! a POST form with a CSRF token; only with `console.allow_actions`; every
//! one done is logged with who, what and from where.

use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::CsrfForm;
use super::html::{self, Nav, esc, url_part};
use super::pages::dead::payload_preview;
use super::{Console, Failure, Shared, Viewer};
use crate::queue::ReplayError;

/// What a POST must pass before it acts: actions allowed, then its CSRF
/// token. (The login is the `Viewer` extractor's.)
fn permit(console: &Console, viewer: &Viewer, csrf: Option<&str>) -> Result<(), Failure> {
    if !console.allow_actions {
        return Err(read_only());
    }
    if !viewer.csrf_ok(csrf) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "CSRF check failed: reload the page and try again.",
        ));
    }
    Ok(())
}

/// The form's CSRF token; a missing or unreadable form has none.
fn csrf(form: Result<Form<CsrfForm>, FormRejection>) -> Option<String> {
    form.ok().and_then(|Form(form)| form.csrf)
}

fn read_only() -> Failure {
    Failure::new(
        StatusCode::FORBIDDEN,
        "read-only: console.allow_actions is false",
    )
}

/// The confirmation form: a POST to `action` with the CSRF token.
fn confirm_form(viewer: &Viewer, action: &str, button: &str, cancel: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"confirm\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button id=\"confirm\" type=\"submit\">{}</button> <a href=\"{cancel}\">Cancel</a></form>",
        esc(action),
        esc(&viewer.csrf),
        esc(button)
    )
}

/// `GET /dead/{id}/replay`: what the replay will do, and the button.
pub(crate) async fn confirm_replay(
    State(console): State<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    if !console.allow_actions {
        return Err(read_only());
    }
    // The list script is the one reader of letters; a replay is rare.
    let page = console
        .letters
        .list(10_000, super::pages::dead::PREVIEW_BYTES)
        .await?;
    let letter =
        page.entries.iter().find(|l| l.id == id).ok_or_else(|| {
            Failure::not_found("No dead letter with that id (replayed already?).")
        })?;
    let queue = letter
        .stream
        .as_deref()
        .map_or("-", |s| console.letters.names().unprefixed(s));
    let action = format!("/dead/{}/replay", url_part(&id));
    let body = format!(
        "<p>Replaying puts this letter's exact payload back on <code>{}</code> as a new entry, \
         and deletes the letter, in one step. A worker then runs it like any new job.</p>\
         <dl class=\"summary\"><dt>Id</dt><dd>{}</dd><dt>Request id</dt><dd>{}</dd>\
         <dt>Reason</dt><dd>{}</dd><dt>Payload</dt><dd><code>{}</code></dd></dl>{}",
        console.show(queue),
        esc(&letter.id),
        console.show(letter.request_id.as_deref().unwrap_or("-")),
        console.show(letter.reason.as_deref().unwrap_or("-")),
        payload_preview(&console, letter),
        confirm_form(&viewer, &action, "Replay this dead letter", "/dead"),
    );
    Ok(html::respond(
        StatusCode::OK,
        html::page(
            "Replay a dead letter",
            Some(Nav::Dead),
            &body,
            Some(&viewer),
        ),
        Some(&viewer),
    ))
}

/// `POST /dead/{id}/replay`.
pub(crate) async fn replay(
    State(console): State<Shared>,
    viewer: Viewer,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Failure> {
    permit(&console, &viewer, csrf(form).as_deref())?;
    let replayed = console.letters.replay(&id).await.map_err(|e| match e {
        ReplayError::Queue(e) => Failure::from(e),
        ReplayError::Unknown(_) => Failure::not_found(e.to_string()),
        e => Failure::new(StatusCode::CONFLICT, e.to_string()),
    })?;
    tracing::info!(
        action = "dead_replay",
        who = %viewer.who,
        subject = %id,
        remote = %remote,
        stream = %console.letters.names().unprefixed(&replayed.stream),
        entry_id = %replayed.entry_id,
        "console action"
    );
    let to = format!(
        "/dead?flash=replayed&id={}&entry={}",
        url_part(&id),
        url_part(&replayed.entry_id)
    );
    Ok(Redirect::to(&to).into_response())
}

/// `GET /servers/{handle}/reset-host-key`: what the reset does, and the
/// button.
pub(crate) async fn confirm_reset_host_key(
    State(console): State<Shared>,
    viewer: Viewer,
    Path(handle): Path<String>,
) -> Result<Response, Failure> {
    if !console.allow_actions {
        return Err(read_only());
    }
    let server = console
        .store
        .server(&handle)
        .await?
        .ok_or_else(|| Failure::not_found("No server with that handle."))?;
    let fingerprint = server
        .host_key
        .as_deref()
        .and_then(super::pages::servers::fingerprints)
        .unwrap_or_else(|| "none".to_owned());
    let action = format!("/servers/{}/reset-host-key", url_part(&handle));
    let body = format!(
        "<p>Resetting forgets the host key pinned for <strong>{}</strong> ({}:{}). \
         The next provision trusts and pins whatever key the server shows then: do this only \
         after a legitimate change (a reinstall, a new key).</p>\
         <dl class=\"summary\"><dt>Pinned key</dt><dd><code>{}</code></dd></dl>{}",
        console.show(&server.handle),
        console.show(&server.public_ip),
        server.ssh_port,
        console.show(&fingerprint),
        confirm_form(&viewer, &action, "Reset the host key", "/servers"),
    );
    Ok(html::respond(
        StatusCode::OK,
        html::page("Reset a host key", Some(Nav::Servers), &body, Some(&viewer)),
        Some(&viewer),
    ))
}

/// `POST /servers/{handle}/reset-host-key`.
pub(crate) async fn reset_host_key(
    State(console): State<Shared>,
    viewer: Viewer,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(handle): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Failure> {
    permit(&console, &viewer, csrf(form).as_deref())?;
    if !console.store.reset_server_host_key(&handle).await? {
        return Err(Failure::not_found("No server with that handle."));
    }
    tracing::info!(
        action = "reset_host_key",
        who = %viewer.who,
        subject = %handle,
        remote = %remote,
        "console action"
    );
    let to = format!("/servers?flash=host-key-reset&handle={}", url_part(&handle));
    Ok(Redirect::to(&to).into_response())
}
