//! The Time4VPS User API client: reinstall a server's OS, then wait for the
//! provider's task to finish.
//!
//! The endpoints and answers follow the provider's own PHP library,
//! `time4vps/time4vps-lib` (`src/Time4VPS/Base/Endpoint.php`,
//! `src/Time4VPS/API/Server.php`), and the API's swagger description
//! (`swagger.json` in `MrFiregore/time4vps-node`, "Time4VPS User API"
//! 4.20220303):
//!
//! - every call goes to `https://billing.time4vps.com/api/` with HTTP basic
//!   auth and JSON bodies;
//! - `POST server/{id}/reinstall` takes `{"os", "ssh_key", "script"}` (an OS
//!   code from `GET server/{id}/oses`, e.g. `ubuntu-22.04-x86_64`) and answers
//!   `{"task_id": N}`;
//! - `GET server/{id}/task/{task_id}` answers `{"name", "activated",
//!   "assigned", "completed", "results"}`; `assigned` and `completed` are
//!   empty strings until the task is picked up and finished;
//! - a failure is `{"error": [...]}`; `wronglogin` means bad credentials and
//!   `Invalid task ID` an unknown task. The PHP library never looks at the
//!   HTTP status, so neither does this client when the body has that shape.
//!
//! The task answer has no failure flag: a finished task is only "completed",
//! and whether the new OS works is for the caller's SSH probe to find out.

use std::fmt;
use std::time::Duration;

use reqwest::{RequestBuilder, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use serde_json::Value;
use tokio::time::Instant;

use crate::secrets::Redactor;

/// The production API root.
pub const DEFAULT_BASE_URL: &str = "https://billing.time4vps.com/api/";

/// How much of an unexpected answer body an error keeps.
const BODY_EXCERPT_LIMIT: usize = 300;

/// The error message the API gives for a task id it does not know
/// (`Server.php` `taskResult` turns it into `InvalidTaskException`).
const INVALID_TASK_MESSAGE: &str = "Invalid task ID";

/// An API root the client can join paths onto: an absolute `http(s)` URL
/// without credentials, its path ending in `/`. Parsed once, when the
/// settings load (`time4vps.base_url`).
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(Url);

/// `url::ParseError`, which reqwest does not re-export.
type UrlParseError = <Url as std::str::FromStr>::Err;

/// Why a text is not a usable API root.
#[derive(Debug, thiserror::Error)]
pub enum BaseUrlError {
    /// Not a URL at all, or a relative one.
    #[error("{0}")]
    Parse(UrlParseError),
    /// Another scheme than the API speaks.
    #[error("must be an http or https URL")]
    Scheme,
    /// A URL ends up in error messages; credentials come from secret
    /// references only.
    #[error("must not carry credentials (they come from time4vps.username_ref and password_ref)")]
    Credentials,
}

impl BaseUrl {
    /// Checks `text` and adds the trailing `/` the API paths are joined onto.
    pub fn parse(text: &str) -> Result<BaseUrl, BaseUrlError> {
        let mut url = Url::parse(text).map_err(BaseUrlError::Parse)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BaseUrlError::Scheme);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(BaseUrlError::Credentials);
        }
        if !url.path().ends_with('/') {
            // Without the slash, `join("server/..")` would drop the last segment (`api`).
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(BaseUrl(url))
    }

    /// The root as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// `path` (relative, no leading `/`) under the root.
    fn join(&self, path: &str) -> Result<Url, ProviderError> {
        self.0
            .join(path)
            .map_err(|e| ProviderError::Setup(format!("bad API path {path}: {e}")))
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for BaseUrl {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(self.as_str())
    }
}

/// A provider task, as returned by the asynchronous calls (reinstall, reboot...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a provider task stands.
///
/// The task's `results` text is deliberately not kept: for a reinstall
/// (`server_recreate`) it carries the new root password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Accepted, not yet assigned for execution (`assigned` is empty).
    Queued,
    /// Assigned and running (`completed` is empty).
    Running,
    /// `completed` holds the completion time.
    Completed,
}

/// How often to ask about a task and for how long: plain data, so tests can
/// use milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollPolicy {
    /// The pause before each question.
    pub interval: Duration,
    /// The longest wait for the task, counted from the first pause.
    pub deadline: Duration,
}

impl PollPolicy {
    /// A reinstall takes minutes; asking every 10 s costs nothing and 30 min
    /// is well past the slowest ones seen.
    pub const DEFAULT: PollPolicy = PollPolicy {
        interval: Duration::from_secs(10),
        deadline: Duration::from_secs(30 * 60),
    };

    /// The pause before the next question after `elapsed` of waiting, or
    /// `None` once the deadline has passed.
    pub fn next_delay(&self, elapsed: Duration) -> Option<Duration> {
        let left = self.deadline.checked_sub(elapsed)?;
        if left.is_zero() {
            return None;
        }
        Some(self.interval.min(left))
    }
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Everything that can go wrong talking to Time4VPS. Every variant is a
/// `provider_error` for the job; [`ProviderError::is_transient`] tells a
/// poller whether asking again can help.
///
/// No variant holds the credentials, and the provider's messages and answer
/// excerpts pass the client's [`Redactor`] (built over the credentials), so
/// `Display` and `Debug` are safe to log and publish.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The API answered `{"error": [...]}`; the provider's own messages.
    #[error("Time4VPS API error (HTTP {status}): {}", .messages.join("; "))]
    Api { status: u16, messages: Vec<String> },
    /// A non-2xx answer that is not the API's error shape.
    #[error("Time4VPS answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// One HTTP request took longer than the client's request timeout.
    #[error("Time4VPS request timed out after {0:?}")]
    RequestTimeout(Duration),
    /// The task was still not completed when the poll deadline passed.
    #[error("Time4VPS task {task_id} did not complete within {waited:?}{}", last_error_suffix(.last_error))]
    Deadline {
        task_id: TaskId,
        waited: Duration,
        last_error: Option<String>,
    },
    /// The request did not get an answer at all (DNS, refused, reset).
    #[error("could not reach Time4VPS: {0}")]
    Transport(String),
    /// A 2xx answer this client cannot read.
    #[error("malformed Time4VPS answer: {0}")]
    Malformed(String),
    /// The provider no longer knows the task (`Invalid task ID`), so the
    /// reinstall cannot be confirmed.
    #[error("Time4VPS task {task_id} failed: {message}")]
    TaskFailed { task_id: TaskId, message: String },
    /// The client could not be built (TLS backend), or an API path did not
    /// join onto the base URL.
    #[error("Time4VPS client setup: {0}")]
    Setup(String),
}

fn last_error_suffix(last_error: &Option<String>) -> String {
    match last_error {
        Some(e) => format!(" (last poll: {e})"),
        None => String::new(),
    }
}

impl ProviderError {
    /// The text for the result's `provider_error` message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Whether asking again later may succeed: timeouts, lost connections,
    /// 5xx and 429. An API error answer, a 4xx or a malformed answer will not
    /// change by waiting.
    pub fn is_transient(&self) -> bool {
        match self {
            ProviderError::RequestTimeout(_) | ProviderError::Transport(_) => true,
            ProviderError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A Time4VPS User API client for one account.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: BaseUrl,
    username: SecretString,
    password: SecretString,
    /// Hides both credentials in every text an error keeps from an answer.
    redactor: Redactor,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    // Written out so the credentials stay out even if a field type changes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url.as_str())
            .field("username", &"[REDACTED]")
            .field("password", &"[REDACTED]")
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `POST server/{id}/reinstall`. `script` (an init script id) is left out:
/// we configure servers with Ansible afterwards.
#[derive(Serialize)]
struct ReinstallBody<'a> {
    os: &'a str,
    ssh_key: &'a str,
}

#[derive(serde::Deserialize)]
struct TaskAnswer {
    #[serde(default)]
    assigned: Option<String>,
    #[serde(default)]
    completed: Option<String>,
}

impl Client {
    /// A client for `base_url` (normally [`DEFAULT_BASE_URL`]); every request
    /// gives up after `request_timeout`.
    pub fn new(
        base_url: BaseUrl,
        username: SecretString,
        password: SecretString,
        request_timeout: Duration,
    ) -> Result<Client, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .user_agent(concat!("infra-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Setup(crate::telemetry::error_chain(&e)))?;
        let redactor = Redactor::new([&username, &password]);
        Ok(Client {
            http,
            base_url,
            username,
            password,
            redactor,
            request_timeout,
        })
    }

    /// Starts reinstalling `server_id` with the OS code `os`, authorising
    /// `ssh_public_key` for root. Not retried: a second call would start a
    /// second reinstall.
    #[tracing::instrument(skip_all, fields(server_id = server_id, os = %os))]
    pub async fn reinstall(
        &self,
        server_id: u64,
        os: &str,
        ssh_public_key: &str,
    ) -> Result<TaskId, ProviderError> {
        let url = self.url(&format!("server/{server_id}/reinstall"))?;
        let body = ReinstallBody {
            os,
            ssh_key: ssh_public_key,
        };
        let answer: Value = self.send(self.http.post(url).json(&body)).await?;
        let task_id = parse_task_id(&answer).ok_or_else(|| {
            ProviderError::Malformed(format!(
                "no task_id in the reinstall answer: {}",
                self.excerpt(answer.to_string().as_bytes())
            ))
        })?;
        tracing::info!(%task_id, "reinstall started");
        Ok(task_id)
    }

    /// Asks where task `task_id` of `server_id` stands.
    #[tracing::instrument(skip_all, fields(server_id = server_id, task_id = %task_id))]
    pub async fn task(&self, server_id: u64, task_id: TaskId) -> Result<TaskState, ProviderError> {
        let url = self.url(&format!("server/{server_id}/task/{task_id}"))?;
        match self.send::<TaskAnswer>(self.http.get(url)).await {
            Ok(answer) => Ok(task_state(&answer)),
            Err(ProviderError::Api { messages, .. })
                if messages.first().map(String::as_str) == Some(INVALID_TASK_MESSAGE) =>
            {
                Err(ProviderError::TaskFailed {
                    task_id,
                    message: messages.join("; "),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Reinstalls `server_id` and waits until the provider reports the task
    /// completed, the task is lost, or `poll.deadline` passes.
    #[tracing::instrument(skip_all, fields(server_id = server_id, os = %os))]
    pub async fn reinstall_and_wait(
        &self,
        server_id: u64,
        os: &str,
        ssh_public_key: &str,
        poll: PollPolicy,
    ) -> Result<(), ProviderError> {
        let task_id = self.reinstall(server_id, os, ssh_public_key).await?;
        self.wait_for_task(server_id, task_id, poll).await
    }

    /// Polls task `task_id` every `poll.interval` until it completes. A
    /// transient failure of one poll is remembered and polling goes on (the
    /// reinstall is running whatever our connection does); any other error
    /// ends the wait.
    #[tracing::instrument(skip_all, fields(server_id = server_id, task_id = %task_id))]
    pub async fn wait_for_task(
        &self,
        server_id: u64,
        task_id: TaskId,
        poll: PollPolicy,
    ) -> Result<(), ProviderError> {
        let started = Instant::now();
        let deadline = started + poll.deadline;
        let mut last_error: Option<String> = None;
        let expired = |last_error: Option<String>| ProviderError::Deadline {
            task_id,
            waited: started.elapsed(),
            last_error,
        };
        loop {
            let Some(delay) = poll.next_delay(started.elapsed()) else {
                return Err(expired(last_error));
            };
            tokio::time::sleep(delay).await;
            let answer = tokio::time::timeout_at(deadline, self.task(server_id, task_id)).await;
            match answer {
                Err(_elapsed) => return Err(expired(last_error)),
                Ok(Ok(TaskState::Completed)) => {
                    tracing::info!(waited = ?started.elapsed(), "provider task completed");
                    return Ok(());
                }
                Ok(Ok(state)) => {
                    tracing::debug!(?state, "provider task not completed yet");
                    last_error = None;
                }
                Ok(Err(e)) if e.is_transient() => {
                    tracing::warn!(error.message = %e, "polling the provider task failed; asking again");
                    last_error = Some(e.message());
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        self.base_url.join(path)
    }

    /// Sends one authenticated request and reads a JSON answer, looking for
    /// the API's `{"error": [...]}` shape before the status, as the PHP
    /// library does.
    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ProviderError> {
        let response = request
            .basic_auth(
                self.username.expose_secret(),
                Some(self.password.expose_secret()),
            )
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if let Some(messages) = parse_error_answer(&body) {
            return Err(ProviderError::Api {
                status: status.as_u16(),
                messages: messages.iter().map(|m| self.redactor.redact(m)).collect(),
            });
        }
        if !status.is_success() {
            return Err(ProviderError::Status {
                status: status.as_u16(),
                body: self.excerpt(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| {
            // serde's message quotes values from the body.
            let problem = self.redactor.redact(&e.to_string());
            ProviderError::Malformed(format!("{problem}; body: {}", self.excerpt(&body)))
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::RequestTimeout(self.request_timeout)
        } else {
            ProviderError::Transport(crate::telemetry::error_chain(e))
        }
    }

    fn excerpt(&self, body: &[u8]) -> String {
        excerpt(body, &self.redactor)
    }
}

fn task_state(answer: &TaskAnswer) -> TaskState {
    let filled = |field: &Option<String>| field.as_deref().is_some_and(|s| !s.trim().is_empty());
    if filled(&answer.completed) {
        TaskState::Completed
    } else if filled(&answer.assigned) {
        TaskState::Running
    } else {
        TaskState::Queued
    }
}

/// `{"task_id": N}`; the PHP library casts with `(int)`, so a numeric string
/// is accepted too.
fn parse_task_id(answer: &Value) -> Option<TaskId> {
    let id = match answer.get("task_id") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    id.map(TaskId)
}

/// The messages of an `{"error": [...]}` answer, or `None` for any other
/// body. Non-string entries are kept as JSON text, as `Endpoint.php` does.
fn parse_error_answer(body: &[u8]) -> Option<Vec<String>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.as_object()?.get("error")?;
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let messages = match error {
        Value::Array(items) => items.iter().map(as_text).collect(),
        other => vec![as_text(other)],
    };
    Some(messages)
}

/// At most [`BODY_EXCERPT_LIMIT`] bytes of `body`, cut on a character
/// boundary, redacted in case a proxy echoes the request. Redacted before
/// the cut, so a credential straddling it cannot leave a fragment behind.
fn excerpt(body: &[u8], redactor: &Redactor) -> String {
    let text = redactor.redact(String::from_utf8_lossy(body).trim());
    let end = text.floor_char_boundary(BODY_EXCERPT_LIMIT);
    let mut cut = text[..end].to_owned();
    if end < text.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_delay_is_one_interval() {
        let policy = PollPolicy {
            interval: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
        };
        assert_eq!(
            policy.next_delay(Duration::ZERO),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn the_last_delay_stops_at_the_deadline() {
        let policy = PollPolicy {
            interval: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
        };
        assert_eq!(
            policy.next_delay(Duration::from_secs(55)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn there_is_no_delay_once_the_deadline_has_passed() {
        let policy = PollPolicy::DEFAULT;
        assert_eq!(policy.next_delay(policy.deadline), None);
        assert_eq!(
            policy.next_delay(policy.deadline + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn an_error_answer_keeps_the_providers_messages() {
        let messages = parse_error_answer(br#"{"error": ["wronglogin"]}"#);
        assert_eq!(messages, Some(vec!["wronglogin".to_owned()]));
    }

    #[test]
    fn an_error_answer_with_structured_entries_keeps_them_as_json() {
        let messages = parse_error_answer(br#"{"error": [{"os": "required"}]}"#);
        assert_eq!(messages, Some(vec![r#"{"os":"required"}"#.to_owned()]));
    }

    #[test]
    fn a_normal_answer_is_not_an_error_answer() {
        assert_eq!(parse_error_answer(br#"{"task_id": 7}"#), None);
        assert_eq!(parse_error_answer(b"<html>Bad Gateway</html>"), None);
    }

    #[test]
    fn a_task_id_may_be_a_number_or_a_numeric_string() {
        assert_eq!(
            parse_task_id(&serde_json::json!({"task_id": 42})),
            Some(TaskId(42))
        );
        assert_eq!(
            parse_task_id(&serde_json::json!({"task_id": "42"})),
            Some(TaskId(42))
        );
        assert_eq!(parse_task_id(&serde_json::json!({"id": 42})), None);
    }

    #[test]
    fn a_task_is_completed_only_when_completed_is_filled() {
        let state = |assigned: &str, completed: &str| {
            task_state(&TaskAnswer {
                assigned: Some(assigned.to_owned()),
                completed: Some(completed.to_owned()),
            })
        };
        assert_eq!(state("", ""), TaskState::Queued);
        assert_eq!(state("2018-05-31T10:26:24+00:00", ""), TaskState::Running);
        assert_eq!(
            state("2018-05-31T10:26:24+00:00", "2018-05-31T10:27:24+00:00"),
            TaskState::Completed
        );
    }

    #[test]
    fn an_excerpt_is_capped_on_a_character_boundary() {
        let body = format!("a{}", "é".repeat(BODY_EXCERPT_LIMIT));
        let cut = excerpt(body.as_bytes(), &Redactor::default());
        assert_eq!(
            cut,
            format!("a{}…", "é".repeat((BODY_EXCERPT_LIMIT - 1) / 2))
        );
    }

    #[test]
    fn a_short_excerpt_is_kept_whole() {
        let cut = excerpt(b"  <html>Bad Gateway</html>\n", &Redactor::default());
        assert_eq!(cut, "<html>Bad Gateway</html>");
    }

    fn redactor(values: &[&str]) -> Redactor {
        let secrets: Vec<SecretString> = values.iter().map(|v| SecretString::from(*v)).collect();
        Redactor::new(&secrets)
    }

    #[test]
    fn an_excerpt_hides_the_credentials_with_the_crates_mask() {
        let cut = excerpt(
            b"echo: Authorization for api-user / hunter2-pass",
            &redactor(&["api-user", "hunter2-pass"]),
        );
        assert_eq!(cut, "echo: Authorization for *** / ***");
    }

    #[test]
    fn a_password_straddling_the_cut_leaves_no_fragment() {
        let body = format!("{}hunter2-pass", "x".repeat(BODY_EXCERPT_LIMIT - 4));
        let cut = excerpt(body.as_bytes(), &redactor(&["hunter2-pass"]));
        assert!(!cut.contains("hunt"), "{cut}");
        assert_eq!(cut, format!("{}***", "x".repeat(BODY_EXCERPT_LIMIT - 4)));
    }

    #[test]
    fn only_timeouts_lost_connections_and_server_errors_are_transient() {
        assert!(ProviderError::RequestTimeout(Duration::from_secs(1)).is_transient());
        assert!(ProviderError::Transport("refused".into()).is_transient());
        assert!(
            ProviderError::Status {
                status: 502,
                body: String::new()
            }
            .is_transient()
        );
        assert!(
            !ProviderError::Status {
                status: 404,
                body: String::new()
            }
            .is_transient()
        );
        assert!(
            !ProviderError::Api {
                status: 401,
                messages: vec!["wronglogin".into()]
            }
            .is_transient()
        );
    }

    #[test]
    fn a_base_url_with_credentials_is_refused() {
        let result = BaseUrl::parse("https://user:pw@billing.time4vps.com/api/");
        assert!(matches!(result, Err(BaseUrlError::Credentials)));
    }

    #[test]
    fn a_base_url_must_be_absolute_http() {
        assert!(matches!(
            BaseUrl::parse("not a url"),
            Err(BaseUrlError::Parse(_))
        ));
        assert!(matches!(
            BaseUrl::parse("billing.time4vps.com/api/"),
            Err(BaseUrlError::Parse(_))
        ));
        assert!(matches!(
            BaseUrl::parse("mailto:ops@example.com"),
            Err(BaseUrlError::Scheme)
        ));
    }

    #[test]
    fn a_base_url_without_a_trailing_slash_keeps_its_last_segment() {
        let base = BaseUrl::parse("https://billing.time4vps.com/api").unwrap();
        assert_eq!(base.as_str(), "https://billing.time4vps.com/api/");
        assert_eq!(
            base.join("server/1/task/2").unwrap().as_str(),
            "https://billing.time4vps.com/api/server/1/task/2"
        );
    }

    #[test]
    fn a_base_url_with_a_trailing_slash_is_kept_as_given() {
        let base = BaseUrl::parse(DEFAULT_BASE_URL).unwrap();
        assert_eq!(base.as_str(), DEFAULT_BASE_URL);
        assert_eq!(
            base.join("server/7/oses").unwrap().as_str(),
            "https://billing.time4vps.com/api/server/7/oses"
        );
    }

    #[test]
    fn a_base_url_prints_as_its_text() {
        let base = BaseUrl::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(format!("{base:?}"), "\"http://127.0.0.1:8080/api/\"");
        assert_eq!(
            serde_json::to_string(&base).unwrap(),
            "\"http://127.0.0.1:8080/api/\""
        );
    }
}
