//! The operator console over plain HTTP (the browser tests are
//! `console`): it refuses to start off loopback without a token, refuses
//! POSTs when read-only or without the CSRF token, wants a login when a
//! token is set, and shows payloads escaped and secret values masked.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::*;

const FORM: &str = "application/x-www-form-urlencoded";

/// `name=value`, the value percent-encoded, as a browser posts a form.
fn form_body(name: &str, value: &str) -> String {
    let encoded: String = value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{name}={encoded}")
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of the response's cookie `name`.
fn cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value of the first `name="csrf"` hidden input of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf input");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn a_console_off_loopback_without_a_token_refuses_to_start() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let (status, output) =
        TestConsole::refused(&redis, db.url(), &[("console.listen", json!("0.0.0.0:0"))]).await;
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("console.token_ref"), "{output}");
    assert!(output.contains("console.listen"), "{output}");
    assert!(!output.contains("console listening"), "{output}");
}

#[tokio::test]
async fn a_read_only_console_refuses_every_action() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let mut console = TestConsole::start(&redis, db.url(), &[]).await;
    let id = add_dead_letter(&redis, "port: must be 1-65535", "dead-1", "{}").await;
    add_server(&db, "vps-ro").await;

    // Without a login, a page reached under another name (DNS rebinding)
    // is refused; `localhost` is fine.
    for (host, status) in [
        ("console.attacker.example", StatusCode::MISDIRECTED_REQUEST),
        ("localhost", StatusCode::OK),
    ] {
        let page = client()
            .get(format!("{}/dead", console.url()))
            .header(reqwest::header::HOST, host)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), status, "Host: {host}");
    }

    let dead = client()
        .get(format!("{}/dead", console.url()))
        .send()
        .await
        .unwrap();
    let csrf_cookie = cookie(&dead, "console_csrf").expect("a csrf cookie");
    let page = dead.text().await.unwrap();
    assert!(page.contains(&format!("data-entry-id=\"{id}\"")), "{page}");
    assert!(!page.contains("data-action=\"replay\""), "{page}");

    for path in [
        format!("/dead/{id}/replay"),
        "/servers/vps-ro/reset-host-key".to_owned(),
    ] {
        let response = client()
            .post(format!("{}{path}", console.url()))
            .header(COOKIE, &csrf_cookie)
            .header(CONTENT_TYPE, FORM)
            .body(form_body("csrf", "whatever"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("read-only: console.allow_actions is false"),
            "{body}"
        );
    }
    assert_eq!(
        redis.queue().dead_letters().await.len(),
        1,
        "the letter is still there"
    );
    assert!(console.log_entries("console action").is_empty());
    console.kill().await;
    assert!(client().get(console.url()).send().await.is_err(), "killed");
}

#[tokio::test]
async fn an_action_without_the_csrf_token_is_refused_and_with_it_done_and_logged() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let console =
        TestConsole::start(&redis, db.url(), &[("console.allow_actions", json!(true))]).await;
    add_server(&db, "vps-act").await;
    let url = format!("{}/servers/vps-act/reset-host-key", console.url());

    let confirm = client().get(&url).send().await.unwrap();
    assert_eq!(confirm.status(), StatusCode::OK);
    let csrf_cookie = cookie(&confirm, "console_csrf").expect("a csrf cookie");
    let page = confirm.text().await.unwrap();
    assert!(page.contains("id=\"confirm\""), "{page}");
    let csrf = csrf_of(&page);

    let refusals = [
        ("no token", None, Some(csrf_cookie.clone())),
        ("a wrong token", Some("forged"), Some(csrf_cookie.clone())),
        ("no cookie", Some(csrf.as_str()), None),
    ];
    for (what, token, cookie) in refusals {
        let mut request = client().post(&url);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        if let Some(token) = token {
            request = request
                .header(CONTENT_TYPE, FORM)
                .body(form_body("csrf", token));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
    }
    assert!(console.log_entries("console action").is_empty());

    let done = client()
        .post(&url)
        .header(COOKIE, &csrf_cookie)
        .header(CONTENT_TYPE, FORM)
        .body(form_body("csrf", &csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let to = done.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(to.starts_with("/servers?"), "{to}");
    let list = client()
        .get(format!("{}{to}", console.url()))
        .header(COOKIE, &csrf_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("id=\"flash\""), "{list}");
    assert!(list.contains("host key reset"), "{list}");
    let logged = console.log_entries("console action");
    assert_eq!(logged.len(), 1, "{}", console.logs());
    assert_eq!(logged[0]["action"], "reset_host_key");
    assert_eq!(logged[0]["subject"], "vps-act");
    assert_eq!(logged[0]["who"], "loopback");
    assert!(
        logged[0]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test]
async fn with_a_token_every_page_needs_a_login() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let (console, token) = TestConsole::with_token(&redis, db.url()).await;
    let base = console.url();

    let page = client().get(format!("{base}/jobs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/login");
    let events = client()
        .get(format!("{base}/events/r1"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::UNAUTHORIZED);
    let post = client()
        .post(format!("{base}/dead/1-0/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);

    let form = client()
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("id=\"login-form\"") && form.contains("<label for=\"token\">"),
        "{form}"
    );
    let wrong = client()
        .post(format!("{base}/login"))
        .header(CONTENT_TYPE, FORM)
        .body(form_body("token", "not-it"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("id=\"login-error\""));

    let right = client()
        .post(format!("{base}/login"))
        .header(CONTENT_TYPE, FORM)
        .body(form_body("token", &token))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[LOCATION], "/");
    let session = cookie(&right, "console_session").expect("a session cookie");
    assert!(
        !session.contains(&token),
        "the cookie holds a session id, not the token"
    );
    let set = right.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let jobs = client()
        .get(format!("{base}/jobs"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(jobs.status(), StatusCode::OK);
    let body = jobs.text().await.unwrap();
    assert!(body.contains("id=\"jobs\""), "{body}");
    assert!(!body.contains(&token));
}

#[tokio::test]
async fn payloads_are_shown_escaped_and_secret_values_masked() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let (console, token) = TestConsole::with_token(&redis, db.url()).await;
    let base = console.url();
    let script = "<script>alert('x')</script>";
    let payload = json!({"request_id": "esc-1", "note": script, "leak": token}).to_string();
    add_dead_letter(&redis, &format!("bad {script}"), "dead-1", &payload).await;
    // A ledger row as a worker writes it (the console migrated the database).
    let mut pg = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    let result: Value = json!({"request_id": "esc-1", "job": "deploy", "status": "failed",
        "output_tail": format!("{script} token={token}")});
    sqlx::query(
        "INSERT INTO jobs (kind, request_id, status, error_code, result, payload, finished_at)
         VALUES ('deploy', 'esc-1', 'failed', 'playbook_failed', $1, $2, now())",
    )
    .bind(sqlx::types::Json(&result))
    .bind(sqlx::types::Json(
        json!({"request_id": "esc-1", "project_name": script}),
    ))
    .execute(&mut pg)
    .await
    .unwrap();

    let login = client()
        .post(format!("{base}/login"))
        .header(CONTENT_TYPE, FORM)
        .body(form_body("token", &token))
        .send()
        .await
        .unwrap();
    let session = cookie(&login, "console_session").unwrap();
    for path in ["/dead", "/jobs", "/jobs/deploy/esc-1", "/"] {
        let page = client()
            .get(format!("{base}{path}"))
            .header(COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        let body = page.text().await.unwrap();
        assert!(
            !body.contains("<script>"),
            "{path}: unescaped script\n{body}"
        );
        assert!(!body.contains(&token), "{path}: the token is shown\n{body}");
        if path != "/" {
            assert!(body.contains("&lt;script&gt;"), "{path}: {body}");
        }
        if path == "/dead" || path == "/jobs/deploy/esc-1" {
            assert!(body.contains("***"), "{path}: no mask\n{body}");
        }
    }
}
