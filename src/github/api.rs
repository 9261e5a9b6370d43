//! The GitHub REST API at one address: the headers every call carries, no
//! redirects and no proxy, and waiting out what waiting can fix until a
//! deadline: GitHub's rate limits (`retry-after`, `x-ratelimit-reset`, a
//! secondary limit named only in a 403's `message`) and its 5xx answers.
//! Answer bodies are wiped when dropped and never logged.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::GithubError;
use crate::retry::Backoff;

/// The public API's root.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// The REST API version every call asks for.
const API_VERSION: &str = "2022-11-28";

/// The first pause after a 5xx or a lost connection; it doubles up to
/// `retry::MAX_DELAY`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// GitHub's advice for a secondary rate limit that names no wait: "wait for
/// at least one minute before retrying".
const UNNAMED_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// Words in a 403's `message` that make it a rate limit, not a refusal
/// (matched ignoring ASCII case): GitHub's "You have exceeded a secondary
/// rate limit", and older GHES's "triggered an abuse detection mechanism".
const LIMIT_MESSAGES: [&str; 2] = ["secondary rate limit", "abuse detection"];

/// `github.api_url`: an absolute `http(s)` URL without credentials, query or
/// fragment, its path ending in `/` (GitHub Enterprise's `/api/v3/` works).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiUrl(Url);

/// Why a text is not a usable API root.
#[derive(Debug, thiserror::Error)]
pub enum ApiUrlError {
    /// Not a URL at all, or a relative one.
    #[error("{0}")]
    Parse(String),
    /// Another scheme than the API speaks.
    #[error("must be an http or https URL")]
    Scheme,
    /// Tokens and secret values would cross the network in clear text.
    #[error("must be https (plain http only to this machine)")]
    Cleartext,
    /// A URL ends up in messages, and every path is joined onto it.
    #[error("must not carry credentials, a query or a fragment")]
    Extra,
}

impl ApiUrl {
    /// Checks `text` and adds the trailing `/` that `repos/...` is joined onto.
    pub fn parse(text: &str) -> Result<ApiUrl, ApiUrlError> {
        let mut url = Url::parse(text).map_err(|e| ApiUrlError::Parse(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApiUrlError::Scheme);
        }
        if url.scheme() == "http" && !crate::outbound::is_loopback(&url) {
            return Err(ApiUrlError::Cleartext);
        }
        let credentials = !url.username().is_empty() || url.password().is_some();
        if credentials || url.query().is_some() || url.fragment().is_some() {
            return Err(ApiUrlError::Extra);
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(ApiUrl(url))
    }

    /// The root as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    fn join(&self, path: &str) -> Result<Url, GithubError> {
        self.0
            .join(path)
            .map_err(|e| GithubError::Setup(format!("bad API path {path}: {e}")))
    }
}

impl fmt::Debug for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for ApiUrl {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(self.as_str())
    }
}

/// One API call: method, path under the root, the bearer token, a body.
pub(crate) struct Call<'a> {
    method: Method,
    path: String,
    token: &'a SecretString,
    body: Option<Vec<u8>>,
    /// What the call is for, in messages ("the public key of o/r").
    pub what: String,
}

impl<'a> Call<'a> {
    /// A call of `method` on `path` (e.g. `repos/o/r/installation`).
    pub fn new(
        method: Method,
        path: String,
        token: &'a SecretString,
        what: impl Into<String>,
    ) -> Call<'a> {
        Call {
            method,
            path,
            token,
            body: None,
            what: what.into(),
        }
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: &impl Serialize) -> Call<'a> {
        // Serializing our own request structs cannot fail.
        self.body = serde_json::to_vec(body).ok();
        self
    }
}

/// An answer: its status and its body, wiped on drop (an installation
/// token travels in one). `Api::call` hands out only final ones.
pub(crate) struct Reply {
    pub status: StatusCode,
    body: Zeroizing<Vec<u8>>,
    what: String,
}

impl Reply {
    /// The body as `T`. A parse error keeps only its position: serde's
    /// message can quote the value it choked on.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, GithubError> {
        serde_json::from_slice(&self.body).map_err(|e| GithubError::Malformed {
            what: self.what.clone(),
            problem: crate::outbound::json_error_position(&e),
        })
    }
}

/// What an answer tells the caller to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A final answer, good or bad: the caller reads it.
    Final,
    /// Rate limited: try again after this wait, not sooner.
    Limited(Duration),
    /// 5xx: try again after the backoff.
    Down,
}

/// The client for one API root.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    root: ApiUrl,
}

impl Api {
    /// A client for `root`, each request cut after `timeout`. No I/O.
    pub fn new(root: ApiUrl, timeout: Duration) -> Result<Api, GithubError> {
        let http = crate::outbound::client_builder(timeout)
            .build()
            .map_err(|e| GithubError::Setup(crate::telemetry::error_chain(&e)))?;
        Ok(Api { http, root })
    }

    /// Sends `call` until it gets a final answer: a rate limit is waited
    /// out as GitHub asks, 5xx and lost connections with backoff, all until
    /// `deadline`; then `RateLimited` or `Unavailable`.
    pub async fn call(&self, call: Call<'_>, deadline: Instant) -> Result<Reply, GithubError> {
        let url = self.root.join(&call.path)?;
        let started = Instant::now();
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY);
        loop {
            let (limit, last) = match self.once(&call, url.clone()).await {
                Ok((reply, headers)) => match verdict(&reply, &headers, now_epoch()) {
                    Verdict::Final => return Ok(reply),
                    Verdict::Limited(wait) if Instant::now() + wait > deadline => {
                        return Err(GithubError::RateLimited {
                            what: call.what,
                            waited: started.elapsed(),
                            asked: wait,
                        });
                    }
                    Verdict::Limited(wait) => (Some(wait), "rate limited".to_owned()),
                    Verdict::Down => (None, format!("HTTP {}", reply.status.as_u16())),
                },
                Err(e) => (None, crate::telemetry::error_chain(&e)),
            };
            if Instant::now() >= deadline {
                return Err(GithubError::Unavailable {
                    what: call.what,
                    waited: started.elapsed(),
                    last,
                });
            }
            let pause = limit.unwrap_or(backoff.delay());
            tracing::warn!(
                call = %call.what,
                error.message = %last,
                retry_in_ms = pause.as_millis() as u64,
                "GitHub did not take the call yet; retrying"
            );
            match limit {
                // Known to end before the deadline.
                Some(wait) => tokio::time::sleep(wait).await,
                // Cut at the deadline: then one last try.
                None => {
                    let _ = tokio::time::timeout_at(deadline, backoff.wait()).await;
                }
            }
        }
    }

    async fn once(&self, call: &Call<'_>, url: Url) -> Result<(Reply, HeaderMap), reqwest::Error> {
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION);
        // A token that is no header value cannot be sent; GitHub then
        // answers 401 as for any bad token.
        let bearer = Zeroizing::new(format!("Bearer {}", call.token.expose_secret()));
        if let Ok(mut value) = HeaderValue::from_str(&bearer) {
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = &call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = Zeroizing::new(Vec::from(response.bytes().await?));
        let reply = Reply {
            status,
            body,
            what: call.what.clone(),
        };
        Ok((reply, headers))
    }
}

/// Seconds since the epoch, as `x-ratelimit-reset` counts them.
fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// GitHub's rules for "try again later": `retry-after` seconds (secondary
/// limits, on 403 or 429); `x-ratelimit-remaining: 0` until the
/// `x-ratelimit-reset` epoch second; a bare 429, or a 403 whose `message`
/// names a secondary limit, a minute; 5xx with backoff. Any other 403 is a
/// refusal, final.
fn verdict(reply: &Reply, headers: &HeaderMap, now: u64) -> Verdict {
    let status = reply.status;
    if status.is_server_error() {
        return Verdict::Down;
    }
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return Verdict::Final;
    }
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seconds) = number("retry-after") {
        // `retry-after: 0` must not turn into a loop of requests.
        return Verdict::Limited(Duration::from_secs(seconds).max(FIRST_RETRY_DELAY));
    }
    if number("x-ratelimit-remaining") == Some(0)
        && let Some(reset) = number("x-ratelimit-reset")
    {
        // The reset is a whole second; the wait to it is at least a moment.
        let wait = Duration::from_secs(reset.saturating_sub(now));
        return Verdict::Limited(wait.max(FIRST_RETRY_DELAY));
    }
    if status == StatusCode::TOO_MANY_REQUESTS || names_a_limit(&reply.body) {
        return Verdict::Limited(UNNAMED_LIMIT_WAIT);
    }
    Verdict::Final
}

/// Whether an error body's `message` says it is a rate limit. The message
/// is read into a `SecretString` (wiped on drop like the body it comes
/// from) and goes nowhere else; a body without one is no limit.
fn names_a_limit(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct ErrorAnswer {
        message: SecretString,
    }
    let Ok(answer) = serde_json::from_slice::<ErrorAnswer>(body) else {
        return false;
    };
    let message = answer.message.expose_secret().as_bytes();
    LIMIT_MESSAGES.iter().any(|words| {
        message
            .windows(words.len())
            .any(|w| w.eq_ignore_ascii_case(words.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode, body: &str) -> Reply {
        Reply {
            status,
            body: Zeroizing::new(body.as_bytes().to_vec()),
            what: "a test call".to_owned(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_is_honoured_on_403_and_429() {
        let h = headers(&[("retry-after", "7")]);
        for status in [StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS] {
            assert_eq!(
                verdict(&answer(status, ""), &h, 1000),
                Verdict::Limited(Duration::from_secs(7))
            );
        }
    }

    #[test]
    fn a_zero_retry_after_still_waits_a_moment() {
        let h = headers(&[("retry-after", "0")]);
        assert_eq!(
            verdict(&answer(StatusCode::TOO_MANY_REQUESTS, ""), &h, 1000),
            Verdict::Limited(FIRST_RETRY_DELAY)
        );
    }

    #[test]
    fn plain_http_is_accepted_only_to_this_machine() {
        assert!(ApiUrl::parse("http://127.0.0.1:8080/api").is_ok());
        assert!(ApiUrl::parse("http://localhost:8080").is_ok());
        assert!(matches!(
            ApiUrl::parse("http://github.example.com/api/v3"),
            Err(ApiUrlError::Cleartext)
        ));
        assert!(ApiUrl::parse("https://github.example.com/api/v3").is_ok());
    }

    #[test]
    fn an_exhausted_primary_limit_waits_until_its_reset() {
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1030"),
        ]);
        assert_eq!(
            verdict(&answer(StatusCode::FORBIDDEN, ""), &h, 1000),
            Verdict::Limited(Duration::from_secs(30))
        );
        // A reset already past still waits a moment, never zero.
        assert_eq!(
            verdict(&answer(StatusCode::FORBIDDEN, ""), &h, 2000),
            Verdict::Limited(FIRST_RETRY_DELAY)
        );
    }

    #[test]
    fn a_plain_403_is_a_refusal_and_a_bare_429_waits_a_minute() {
        let h = headers(&[("x-ratelimit-remaining", "4999")]);
        assert_eq!(
            verdict(&answer(StatusCode::FORBIDDEN, ""), &h, 0),
            Verdict::Final
        );
        assert_eq!(
            verdict(
                &answer(StatusCode::TOO_MANY_REQUESTS, ""),
                &HeaderMap::new(),
                0
            ),
            Verdict::Limited(UNNAMED_LIMIT_WAIT)
        );
    }

    #[test]
    fn a_403_naming_a_secondary_limit_waits_a_minute() {
        let none = HeaderMap::new();
        for message in [
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "You have exceeded a SECONDARY RATE LIMIT and have been temporarily blocked",
            "You have triggered an abuse detection mechanism. Please wait a few minutes before you try again.",
        ] {
            let body = serde_json::json!({"message": message}).to_string();
            assert_eq!(
                verdict(&answer(StatusCode::FORBIDDEN, &body), &none, 0),
                Verdict::Limited(UNNAMED_LIMIT_WAIT),
                "{message}"
            );
        }
    }

    #[test]
    fn a_403_with_another_message_or_none_is_a_refusal() {
        let none = HeaderMap::new();
        for body in [
            r#"{"message":"Resource not accessible by integration"}"#,
            r#"{"message":"Must have admin rights to Repository."}"#,
            r#"{"documentation_url":"https://docs.github.com/rest"}"#,
            // The words outside `message` do not count.
            r#"{"message":"Forbidden","hint":"secondary rate limit"}"#,
            "secondary rate limit, but not JSON",
            "",
        ] {
            assert_eq!(
                verdict(&answer(StatusCode::FORBIDDEN, body), &none, 0),
                Verdict::Final,
                "{body}"
            );
        }
    }

    #[test]
    fn headers_name_the_wait_before_a_message_does() {
        let h = headers(&[("retry-after", "7")]);
        let body = r#"{"message":"You have exceeded a secondary rate limit."}"#;
        assert_eq!(
            verdict(&answer(StatusCode::FORBIDDEN, body), &h, 0),
            Verdict::Limited(Duration::from_secs(7))
        );
    }

    #[test]
    fn server_errors_are_waited_out_and_other_answers_are_final() {
        let none = HeaderMap::new();
        assert_eq!(
            verdict(&answer(StatusCode::BAD_GATEWAY, ""), &none, 0),
            Verdict::Down
        );
        assert_eq!(
            verdict(&answer(StatusCode::SERVICE_UNAVAILABLE, ""), &none, 0),
            Verdict::Down
        );
        for status in [
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::NO_CONTENT,
            StatusCode::NOT_FOUND,
        ] {
            assert_eq!(verdict(&answer(status, ""), &none, 0), Verdict::Final);
        }
    }

    #[test]
    fn an_api_url_gains_a_trailing_slash_and_keeps_an_enterprise_prefix() {
        let url = ApiUrl::parse("https://ghe.example.com/api/v3").unwrap();
        assert_eq!(
            url.join("repos/o/r/installation").unwrap().as_str(),
            "https://ghe.example.com/api/v3/repos/o/r/installation"
        );
        assert!(matches!(
            ApiUrl::parse("https://t:x@api.github.com"),
            Err(ApiUrlError::Extra)
        ));
        assert!(matches!(
            ApiUrl::parse("ftp://api.github.com"),
            Err(ApiUrlError::Scheme)
        ));
    }
}
