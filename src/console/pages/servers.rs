//! `/servers`: each server's status, last error and pinned host key's
//! fingerprint; a reset link when actions are allowed.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::console::html::{self, Nav, url_part};
use crate::console::{Console, Failure, Shared, Viewer};
use crate::store::Server;

/// The flash a reset leaves.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    flash: Option<String>,
    handle: Option<String>,
}

/// The fingerprints of pinned `known_hosts` lines, as `ssh-keygen -l`
/// prints them (`SHA256:<base64 of the key blob's digest, unpadded>`),
/// each after its key type; `None` when no line holds a key.
pub(crate) fn fingerprints(pinned: &str) -> Option<String> {
    let prints: Vec<String> = pinned
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('@'))
        .filter_map(|line| {
            // `host type key [comment]` as ssh writes them, or `type key`:
            // the key follows the first field that names a key type.
            let mut fields = line.split_whitespace();
            let kind = fields.by_ref().find(|f| is_key_type(f))?;
            let key = fields.next()?;
            let blob = STANDARD.decode(key).ok()?;
            Some(format!(
                "{kind} SHA256:{}",
                STANDARD_NO_PAD.encode(Sha256::digest(&blob))
            ))
        })
        .collect();
    (!prints.is_empty()).then(|| prints.join("\n"))
}

/// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, `sk-ssh-ed25519@openssh.com`, ...
fn is_key_type(field: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|p| field.starts_with(p))
}

/// `GET /servers`.
pub(crate) async fn page(
    State(console): State<Shared>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Result<Response, Failure> {
    let servers = console.store.servers().await?;
    let rows: String = servers.iter().map(|s| row(&console, s)).collect();
    let rows = if rows.is_empty() {
        "<tr><td colspan=\"7\">No servers registered.</td></tr>".to_owned()
    } else {
        rows
    };
    let flash = match flash.flash.as_deref() {
        Some("host-key-reset") => html::flash(&format!(
            "Done: host key reset for {}; the next provision pins the key it sees.",
            flash.handle.as_deref().unwrap_or("?")
        )),
        _ => String::new(),
    };
    let body = format!(
        "{flash}{}",
        html::table(
            "servers",
            "Registered servers",
            &[
                "Handle",
                "Address",
                "Status",
                "Last error",
                "Host key",
                "Updated",
                "Action"
            ],
            &rows
        )
    );
    Ok(html::respond(
        StatusCode::OK,
        html::page("Servers", Some(Nav::Servers), &body, Some(&viewer)),
        Some(&viewer),
    ))
}

fn row(console: &Console, server: &Server) -> String {
    let fingerprint = server
        .host_key
        .as_deref()
        .and_then(fingerprints)
        .unwrap_or_else(|| "none".to_owned());
    let action = if console.allow_actions {
        format!(
            "<a data-action=\"reset-host-key\" href=\"/servers/{}/reset-host-key\">Reset host key…</a>",
            url_part(&server.handle)
        )
    } else {
        String::new()
    };
    format!(
        "<tr data-handle=\"{handle}\"><th scope=\"row\" data-col=\"handle\">{handle}</th>\
         <td data-col=\"address\">{}:{}</td><td data-col=\"status\"><span class=\"status status-{status}\">{status}</span></td>\
         <td data-col=\"last_error\">{}</td><td data-col=\"host_key\"><code>{}</code></td>\
         <td data-col=\"updated\">{}</td><td data-col=\"action\">{action}</td></tr>",
        console.show(&server.public_ip),
        server.ssh_port,
        console.show(server.last_error.as_deref().unwrap_or("-")),
        console.show(&fingerprint),
        html::time(Some(server.updated_at)),
        handle = console.show(&server.handle),
        status = console.show(&server.status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -lf` of this key printed
    /// `256 SHA256:t6l3fQYuUyfuLZDjIgs5EdDgtD2fXrkicECUiamPhIs test (ED25519)`.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDWZoGij9llMeGvh0I3mg/2JhOOiVBkb0dA7eyW9XF9y";
    const PRINT: &str = "ssh-ed25519 SHA256:t6l3fQYuUyfuLZDjIgs5EdDgtD2fXrkicECUiamPhIs";

    #[test]
    fn a_pinned_key_reads_as_ssh_keygen_prints_it() {
        assert_eq!(fingerprints(KEY).as_deref(), Some(PRINT));
        let known_hosts = format!("[10.0.0.5]:2222 {KEY}\n");
        assert_eq!(fingerprints(&known_hosts).as_deref(), Some(PRINT));
        let two = format!("10.0.0.5 {KEY} comment\n10.0.0.5 {KEY}\n");
        assert_eq!(fingerprints(&two), Some(format!("{PRINT}\n{PRINT}")));
    }

    #[test]
    fn comments_markers_and_garbage_have_no_fingerprint() {
        assert_eq!(fingerprints(""), None);
        assert_eq!(
            fingerprints("# comment\n@revoked * ssh-ed25519 AAAA\n"),
            None
        );
        assert_eq!(fingerprints("not-a-key"), None);
    }
}
