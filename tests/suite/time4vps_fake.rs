//! A fake Time4VPS User API on 127.0.0.1 for tests: the real paths under
//! `/api/`, methods, basic-auth check and answer shapes (see the module docs
//! of `infra_service::provider::time4vps` for where they come from), a task
//! that completes after N polls or never, and a record of every request.
//!
//! Two things the public sources do not show are chosen here: the HTTP status
//! of an error answer (401 for `wronglogin`, 404 for `Invalid task ID`, 400
//! for a missing `os`; the real client ignores it) and the text of the
//! missing-`os` message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::serve_on_loopback;

/// What the fake's reinstall task does when polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskBehaviour {
    /// Queued on the first poll, running after, completed on poll `n` (n >= 1).
    CompletesAfterPolls(u32),
    /// Running forever.
    NeverCompletes,
}

/// How a fake account behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The API user the fake accepts.
    pub username: String,
    /// The API password the fake accepts.
    pub password: String,
    /// The task id every reinstall answers (counted up per reinstall).
    pub first_task_id: u64,
    /// How reinstall tasks progress.
    pub task: TaskBehaviour,
    /// Answer every reinstall with this status and a non-API body.
    pub reinstall_status: Option<u16>,
    /// The first this-many task polls answer 502 with an HTML body.
    pub failing_polls: u32,
    /// A pause before every answer, to exercise request timeouts.
    pub answer_delay: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            username: "api-user@example.com".to_owned(),
            password: "fake-api-password-Zq81".to_owned(),
            first_task_id: 4711,
            task: TaskBehaviour::CompletesAfterPolls(2),
            reinstall_status: None,
            failing_polls: 0,
            answer_delay: Duration::ZERO,
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`...
    pub method: String,
    /// The path as sent, e.g. `/api/server/42/reinstall`.
    pub path: String,
    /// The basic-auth user, if an `Authorization: Basic` header was readable.
    pub auth_user: Option<String>,
    /// Whether user and password matched the account.
    pub auth_ok: bool,
    /// The JSON body, if there was one.
    pub body: Option<Value>,
}

#[derive(Debug, Default)]
struct Shared {
    requests: Vec<RecordedRequest>,
    /// task id -> (server id, polls so far)
    tasks: HashMap<u64, (u64, u32)>,
    next_task_id: u64,
    task_polls: u32,
}

#[derive(Clone)]
struct App {
    config: Arc<FakeConfig>,
    shared: Arc<Mutex<Shared>>,
}

/// A running fake; stops when dropped.
pub struct FakeTime4vps {
    addr: SocketAddr,
    config: Arc<FakeConfig>,
    shared: Arc<Mutex<Shared>>,
    server: JoinHandle<()>,
}

impl FakeTime4vps {
    /// Starts a fake with `config` on 127.0.0.1 and a free port.
    pub async fn start(config: FakeConfig) -> FakeTime4vps {
        let config = Arc::new(config);
        let shared = Arc::new(Mutex::new(Shared {
            next_task_id: config.first_task_id,
            ..Shared::default()
        }));
        let app = App {
            config: config.clone(),
            shared: shared.clone(),
        };
        let router = Router::new().fallback(handle).with_state(app);
        let (addr, server) = serve_on_loopback(router, "the fake Time4VPS API").await;
        FakeTime4vps {
            addr,
            config,
            shared,
            server,
        }
    }

    /// The API root to give the client, e.g. `http://127.0.0.1:PORT/api/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// The configuration the fake runs with (credentials included).
    pub fn config(&self) -> &FakeConfig {
        &self.config
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// The `POST server/{id}/reinstall` requests so far.
    pub fn reinstalls(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/reinstall"))
            .collect()
    }

    /// How many `GET server/{id}/task/{task_id}` requests arrived.
    pub fn task_polls(&self) -> u32 {
        self.shared.lock().unwrap().task_polls
    }
}

impl Drop for FakeTime4vps {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One handler for every path, so unknown requests are recorded too.
async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (auth_user, auth_password) = basic_auth(&headers);
    let auth_ok = auth_user.as_deref() == Some(app.config.username.as_str())
        && auth_password.as_deref() == Some(app.config.password.as_str());
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    app.shared.lock().unwrap().requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        auth_user,
        auth_ok,
        body: json_body.clone(),
    });

    if !app.config.answer_delay.is_zero() {
        tokio::time::sleep(app.config.answer_delay).await;
    }
    if !auth_ok {
        return api_error(StatusCode::UNAUTHORIZED, "wronglogin");
    }

    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["api", "server", id, "reinstall"]) => match id.parse() {
            Ok(server_id) => reinstall(&app, server_id, json_body),
            Err(_) => not_found(),
        },
        ("GET", ["api", "server", id, "task", task]) => match (id.parse(), task.parse()) {
            (Ok(server_id), Ok(task_id)) => task_result(&app, server_id, task_id),
            _ => not_found(),
        },
        _ => not_found(),
    }
}

fn reinstall(app: &App, server_id: u64, body: Option<Value>) -> Response {
    if let Some(status) = app.config.reinstall_status {
        let status = StatusCode::from_u16(status).expect("a valid status");
        return (status, "<html><body>Internal Server Error</body></html>").into_response();
    }
    let has_os = body
        .as_ref()
        .and_then(|b| b.get("os"))
        .and_then(Value::as_str)
        .is_some_and(|os| !os.is_empty());
    if !has_os {
        return api_error(StatusCode::BAD_REQUEST, "Operating System is required");
    }
    let mut shared = app.shared.lock().unwrap();
    let task_id = shared.next_task_id;
    shared.next_task_id += 1;
    shared.tasks.insert(task_id, (server_id, 0));
    json_answer(StatusCode::OK, json!({"task_id": task_id}))
}

fn task_result(app: &App, server_id: u64, task_id: u64) -> Response {
    let mut shared = app.shared.lock().unwrap();
    shared.task_polls += 1;
    if shared.task_polls <= app.config.failing_polls {
        return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
    }
    let Some((owner, polls)) = shared.tasks.get_mut(&task_id) else {
        return api_error(StatusCode::NOT_FOUND, "Invalid task ID");
    };
    if *owner != server_id {
        return api_error(StatusCode::NOT_FOUND, "Invalid task ID");
    }
    *polls += 1;
    let polls = *polls;
    let done = match app.config.task {
        TaskBehaviour::CompletesAfterPolls(n) => polls >= n,
        TaskBehaviour::NeverCompletes => false,
    };
    let (assigned, completed, results) = if done {
        (
            "2024-05-31T10:26:24+00:00",
            "2024-05-31T10:27:24+00:00",
            // Real reinstall results carry the new root password.
            "Server reinstalled. Password: fake-root-pw",
        )
    } else if polls <= 1 {
        ("", "", "")
    } else {
        ("2024-05-31T10:26:24+00:00", "", "")
    };
    json_answer(
        StatusCode::OK,
        json!({
            "name": "server_recreate",
            "activated": "2024-05-31T10:25:24+00:00",
            "assigned": assigned,
            "completed": completed,
            "results": results,
        }),
    )
}

/// The user and password of an `Authorization: Basic` header.
fn basic_auth(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
        None => (None, None),
    }
}

fn api_error(status: StatusCode, message: &str) -> Response {
    json_answer(status, json!({"error": [message]}))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

fn json_answer(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}
