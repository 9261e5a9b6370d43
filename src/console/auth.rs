//! Who is looking, and whether a POST is theirs: the login by token
//! (server-side sessions behind an HttpOnly, SameSite=Strict cookie), and
//! CSRF tokens (the session's; without a login, a per-process value the
//! page's cookie must repeat: double submit). Tokens are compared in
//! constant time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, FromRequestParts, OptionalFromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::html;
use super::{Failure, Shared};

/// The session cookie's name.
const SESSION_COOKIE: &str = "console_session";
/// The double-submit cookie's name (no login).
const CSRF_COOKIE: &str = "console_csrf";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The login token and the sessions it opened.
pub(crate) struct Auth {
    token: Option<SecretString>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The CSRF token of every page when there is no login.
    process_csrf: String,
}

struct Session {
    csrf: String,
    expires: Instant,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Who {
    /// No login is configured (loopback only).
    Loopback,
    /// A session opened with the token; the first characters of its id.
    Session(String),
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Loopback => f.write_str("loopback"),
            Who::Session(prefix) => write!(f, "token:{prefix}"),
        }
    }
}

/// A request allowed to see the console.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub(crate) who: Who,
    /// The CSRF token the page's forms carry.
    pub(crate) csrf: String,
    /// The double-submit cookie's value as the request sent it.
    cookie_csrf: Option<String>,
    /// Whether the response must set the double-submit cookie.
    set_csrf_cookie: bool,
    /// Whether there is a login (show a logout button).
    pub(crate) logged_in: bool,
}

impl Viewer {
    /// The `Set-Cookie` value the response carries, if any.
    pub(crate) fn set_cookie(&self) -> Option<String> {
        self.set_csrf_cookie.then(|| {
            format!(
                "{CSRF_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                self.csrf
            )
        })
    }

    /// Whether `form_csrf` is this viewer's CSRF token (and, without a
    /// login, the cookie repeats it).
    pub(crate) fn csrf_ok(&self, form_csrf: Option<&str>) -> bool {
        let Some(form) = form_csrf else {
            return false;
        };
        let form_ok = same(form, &self.csrf);
        match self.who {
            Who::Session(_) => form_ok,
            Who::Loopback => {
                form_ok
                    && self
                        .cookie_csrf
                        .as_deref()
                        .is_some_and(|cookie| same(cookie, &self.csrf))
            }
        }
    }
}

/// Constant-time equality of two secrets, whatever their lengths (their
/// digests are compared).
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(a.ct_eq(&b))
}

/// A fresh random token: 244 bits from the OS, as hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl Auth {
    pub(crate) fn new(token: Option<SecretString>) -> Auth {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
            process_csrf: random_token(),
        }
    }

    /// The viewer a request's cookies make, or `None` without a valid
    /// session while a login is required.
    fn viewer(&self, cookies: &str) -> Option<Viewer> {
        let cookie_csrf = cookie(cookies, CSRF_COOKIE).map(str::to_owned);
        if self.token.is_none() {
            let set = cookie_csrf.as_deref() != Some(self.process_csrf.as_str());
            return Some(Viewer {
                who: Who::Loopback,
                csrf: self.process_csrf.clone(),
                cookie_csrf,
                set_csrf_cookie: set,
                logged_in: false,
            });
        }
        let id = cookie(cookies, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        let session = sessions.get(id)?;
        Some(Viewer {
            who: Who::Session(id.chars().take(8).collect()),
            csrf: session.csrf.clone(),
            cookie_csrf,
            set_csrf_cookie: false,
            logged_in: true,
        })
    }

    /// A new session for a right token: its id; `None` for a wrong one.
    /// Whether a login by token is configured.
    pub(crate) fn has_login(&self) -> bool {
        self.token.is_some()
    }

    fn log_in(&self, token: &str) -> Option<String> {
        let expected = self.token.as_ref()?;
        if !same(token, expected.expose_secret()) {
            return None;
        }
        let id = random_token();
        let session = Session {
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.insert(id.clone(), session);
        Some(id)
    }

    fn log_out(&self, cookies: &str) {
        if let Some(id) = cookie(cookies, SESSION_COOKIE) {
            self.sessions.lock().expect("sessions lock").remove(id);
        }
    }
}

fn cookies(parts: &Parts) -> &str {
    parts
        .headers
        .get(header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// Without a session: pages redirect to the login, the event stream and
/// POSTs answer 401.
pub(crate) struct LoginRequired {
    redirect: bool,
}

impl IntoResponse for LoginRequired {
    fn into_response(self) -> Response {
        if self.redirect {
            Redirect::to("/login").into_response()
        } else {
            Failure::new(StatusCode::UNAUTHORIZED, "Log in first.").into_response()
        }
    }
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = LoginRequired;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Shared,
    ) -> Result<Viewer, LoginRequired> {
        console.auth.viewer(cookies(parts)).ok_or(LoginRequired {
            redirect: parts.method == Method::GET && !parts.uri.path().starts_with("/events/"),
        })
    }
}

impl OptionalFromRequestParts<Shared> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Shared,
    ) -> Result<Option<Viewer>, Self::Rejection> {
        Ok(console.auth.viewer(cookies(parts)))
    }
}

/// `GET /login`: the form; without a login configured, the overview.
pub(crate) async fn login_page(State(console): State<Shared>) -> Response {
    if console.auth.token.is_none() {
        return Redirect::to("/").into_response();
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let error = error.map_or(String::new(), |e| {
        format!(
            "<p id=\"login-error\" class=\"error\" role=\"alert\">{}</p>",
            html::esc(e)
        )
    });
    let body = format!(
        "{error}<form id=\"login-form\" method=\"post\" action=\"/login\">\
         <label for=\"token\">Console token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form>"
    );
    html::respond(status, html::page("Log in", None, &body, None), None)
}

/// The login form's fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: a right token opens a session and goes to the overview.
pub(crate) async fn login(
    State(console): State<Shared>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    if console.auth.token.is_none() {
        return Redirect::to("/").into_response();
    }
    let Some(id) = console.auth.log_in(&form.token) else {
        tracing::warn!(remote = %remote, "console login refused");
        return login_form(StatusCode::UNAUTHORIZED, Some("That token is not right."));
    };
    let who: String = id.chars().take(8).collect();
    tracing::info!(who = %format!("token:{who}"), remote = %remote, "console login");
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The logout form's fields.
#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub(crate) csrf: Option<String>,
}

/// `POST /logout`: ends the session.
pub(crate) async fn logout(
    State(console): State<Shared>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.ok().and_then(|Form(form)| form.csrf);
    if !viewer.csrf_ok(csrf.as_deref()) {
        return Failure::new(StatusCode::FORBIDDEN, "CSRF check failed.").render(Some(&viewer));
    }
    let cookies = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    console.auth.log_out(cookies);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("console_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "x"));
    }

    #[test]
    fn a_cookie_is_found_by_its_exact_name() {
        let header = "a=1; console_session=s1; xconsole_csrf=no; console_csrf=c2";
        assert_eq!(cookie(header, "console_session"), Some("s1"));
        assert_eq!(cookie(header, "console_csrf"), Some("c2"));
        assert_eq!(cookie(header, "b"), None);
    }

    #[test]
    fn without_a_login_the_form_and_the_cookie_must_both_carry_the_token() {
        let auth = Auth::new(None);
        let token = auth.process_csrf.clone();
        let fresh = auth.viewer("").unwrap();
        assert!(fresh.set_cookie().is_some());
        assert!(!fresh.csrf_ok(Some(&token)), "no cookie: refused");
        let viewer = auth.viewer(&format!("console_csrf={token}")).unwrap();
        assert!(viewer.set_cookie().is_none());
        assert!(viewer.csrf_ok(Some(&token)));
        assert!(!viewer.csrf_ok(Some("forged")));
        assert!(!viewer.csrf_ok(None));
        assert_eq!(viewer.who, Who::Loopback);
    }

    #[test]
    fn with_a_login_only_a_session_sees_and_its_own_token_passes() {
        let auth = Auth::new(Some(SecretString::from("s3cret-token")));
        assert!(auth.viewer("").is_none());
        assert!(auth.log_in("wrong").is_none());
        let id = auth.log_in("s3cret-token").unwrap();
        let viewer = auth.viewer(&format!("console_session={id}")).unwrap();
        assert!(viewer.csrf_ok(Some(&viewer.csrf.clone())));
        assert!(!viewer.csrf_ok(Some(&auth.process_csrf)));
        assert!(auth.viewer("console_session=guessed").is_none());
        auth.log_out(&format!("console_session={id}"));
        assert!(auth.viewer(&format!("console_session={id}")).is_none());
    }
}

/// Whether a `Host` header names this machine's loopback: `localhost`, a
/// 127.0.0.0/8 address or `[::1]`, any port.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod host_tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "127.0.0.1:9188",
            "127.3.4.5",
            "localhost:9188",
            "LOCALHOST",
            "[::1]:9188",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9188",
            "10.0.0.5:9188",
            "[fd00::1]:9188",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
