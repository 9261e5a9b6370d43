//! The Vault HTTP API at one address: its TLS roots, the namespace header,
//! the token header, per-request timeouts, and retrying what waiting can
//! fix (5xx, 429, no connection) until a deadline. Answer bodies are kept
//! in memory that is wiped when dropped, and are never logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode, Url};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::VaultError;
use crate::retry::Backoff;

/// The first pause after an answer that waiting may fix; it doubles up to
/// `retry::MAX_DELAY`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// `vault.addr`: an absolute `http(s)` URL without credentials, query or
/// fragment, its path ending in `/` (a Vault behind a path prefix works).
#[derive(Clone, PartialEq, Eq)]
pub struct VaultAddr(Url);

/// Why a text is not a usable Vault address.
#[derive(Debug, thiserror::Error)]
pub enum VaultAddrError {
    /// Not a URL at all, or a relative one.
    #[error("{0}")]
    Parse(String),
    /// Another scheme than the API speaks.
    #[error("must be an http or https URL")]
    Scheme,
    /// A URL ends up in messages, and every path is joined onto it.
    #[error("must not carry credentials, a query or a fragment")]
    Extra,
}

impl VaultAddr {
    /// Checks `text` and adds the trailing `/` that `v1/...` is joined onto.
    pub fn parse(text: &str) -> Result<VaultAddr, VaultAddrError> {
        let mut url = Url::parse(text).map_err(|e| VaultAddrError::Parse(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(VaultAddrError::Scheme);
        }
        let credentials = !url.username().is_empty() || url.password().is_some();
        if credentials || url.query().is_some() || url.fragment().is_some() {
            return Err(VaultAddrError::Extra);
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(VaultAddr(url))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Plain `http` to anything but this machine: tokens and secrets would
    /// cross the network in clear text.
    pub fn is_cleartext_over_network(&self) -> bool {
        self.0.scheme() == "http" && !crate::outbound::is_loopback(&self.0)
    }

    fn join(&self, path: &str) -> Result<Url, VaultError> {
        self.0
            .join(path)
            .map_err(|e| VaultError::Setup(format!("bad API path {path}: {e}")))
    }
}

impl fmt::Debug for VaultAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for VaultAddr {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(self.as_str())
    }
}

/// `vault.ca_cert`: the PEM file of a private CA, read and parsed when the
/// settings load. Its certificates are then the only roots trusted for
/// Vault, as `VAULT_CACERT` makes them for Vault's own CLI.
#[derive(Clone)]
pub struct CaCert {
    path: PathBuf,
    certs: Vec<reqwest::Certificate>,
}

impl CaCert {
    /// Reads every certificate of the PEM bundle at `path`; none is an error.
    pub fn load(path: &Path) -> Result<CaCert, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        Ok(CaCert {
            path: path.to_owned(),
            certs,
        })
    }

    /// Where the certificates were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.path, f)
    }
}

impl Serialize for CaCert {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(out)
    }
}

/// One API call: method, path under the address, and what it carries.
pub(crate) struct Call<'a> {
    method: Method,
    path: String,
    token: Option<&'a SecretString>,
    /// A JSON body; it may hold login credentials, so it is wiped on drop.
    body: Option<Zeroizing<Vec<u8>>>,
    /// What the call is for, in messages ("the read of secret/x").
    what: String,
}

impl<'a> Call<'a> {
    /// A `GET` of `path` (e.g. `v1/auth/token/lookup-self`).
    pub fn get(path: impl Into<String>, what: impl Into<String>) -> Call<'a> {
        Call::new(Method::GET, path, what)
    }

    /// A `POST` of `path`, with `body` serialized as JSON.
    pub fn post(
        path: impl Into<String>,
        what: impl Into<String>,
        body: &impl Serialize,
    ) -> Call<'a> {
        let mut call = Call::new(Method::POST, path, what);
        // Serializing our own request structs cannot fail.
        call.body = serde_json::to_vec(body).ok().map(Zeroizing::new);
        call
    }

    fn new(method: Method, path: impl Into<String>, what: impl Into<String>) -> Call<'a> {
        Call {
            method,
            path: path.into(),
            token: None,
            body: None,
            what: what.into(),
        }
    }

    /// Sends `token` as `X-Vault-Token`.
    pub fn token(mut self, token: &'a SecretString) -> Call<'a> {
        self.token = Some(token);
        self
    }
}

/// A final answer (not 5xx or 429): its status and its body, wiped on drop.
pub(crate) struct Reply {
    pub status: StatusCode,
    body: Zeroizing<Vec<u8>>,
    what: String,
}

impl Reply {
    /// The body as `T`. A parse error keeps only its position: serde's
    /// message can quote the value it choked on.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, VaultError> {
        serde_json::from_slice(&self.body).map_err(|e| VaultError::BadAnswer {
            what: self.what.clone(),
            status: self.status.as_u16(),
            problem: crate::outbound::json_error_position(&e),
        })
    }

    /// An answer the caller has no use for, as an error.
    pub fn unexpected(&self) -> VaultError {
        VaultError::Unexpected {
            what: self.what.clone(),
            status: self.status.as_u16(),
        }
    }
}

/// The client for one Vault address.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    addr: VaultAddr,
    namespace: Option<HeaderValue>,
}

impl Api {
    /// A client for `addr`, trusting `ca_cert` only when given, each request
    /// cut after `timeout`. No I/O.
    pub fn new(
        addr: VaultAddr,
        ca_cert: Option<&CaCert>,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Api, VaultError> {
        let mut builder = crate::outbound::client_builder(timeout);
        if let Some(ca) = ca_cert {
            builder = builder.tls_certs_only(ca.certs.iter().cloned());
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::Setup(crate::telemetry::error_chain(&e)))?;
        let namespace = namespace
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| VaultError::Setup("vault.namespace is not a valid header value".into()))?;
        Ok(Api {
            http,
            addr,
            namespace,
        })
    }

    /// Sends `call` until it gets a final answer; 5xx, 429, timeouts and
    /// lost connections are tried again, with backoff, until `deadline`,
    /// then the call is `Unavailable`.
    pub async fn call(&self, call: Call<'_>, deadline: Instant) -> Result<Reply, VaultError> {
        let url = self.addr.join(&call.path)?;
        let started = Instant::now();
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY);
        loop {
            let last = match self.once(&call, url.clone()).await {
                Ok(reply) if !waiting_may_fix(reply.status) => return Ok(reply),
                Ok(reply) => format!("HTTP {}", reply.status.as_u16()),
                Err(e) => crate::telemetry::error_chain(&e),
            };
            if Instant::now() >= deadline {
                return Err(VaultError::Unavailable {
                    what: call.what,
                    waited: started.elapsed(),
                    last,
                });
            }
            tracing::warn!(
                call = %call.what,
                error.message = %last,
                retry_in_ms = backoff.delay().as_millis() as u64,
                "Vault did not answer; retrying"
            );
            // Cut at the deadline: then one last try.
            let _ = tokio::time::timeout_at(deadline, backoff.wait()).await;
        }
    }

    async fn once(&self, call: &Call<'_>, url: Url) -> Result<Reply, reqwest::Error> {
        let mut request = self.http.request(call.method.clone(), url);
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace.clone());
        }
        if let Some(token) = call.token {
            // A token that is no header value cannot be sent; the server
            // then answers 403 as for any bad token.
            if let Ok(mut value) = HeaderValue::from_str(token.expose_secret()) {
                value.set_sensitive(true);
                request = request.header("X-Vault-Token", value);
            }
        }
        if let Some(body) = &call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let response = request.send().await?;
        let status = response.status();
        let body = Zeroizing::new(Vec::from(response.bytes().await?));
        Ok(Reply {
            status,
            body,
            what: call.what.clone(),
        })
    }
}

/// 5xx (a sealed or standby Vault answers 503) and 429 (rate limited).
fn waiting_may_fix(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_cleartext_unless_it_stays_on_this_machine() {
        let cleartext = |a: &str| VaultAddr::parse(a).unwrap().is_cleartext_over_network();
        assert!(cleartext("http://vault.internal:8200"));
        assert!(cleartext("http://10.0.0.5:8200"));
        assert!(!cleartext("https://vault.internal:8200"));
        assert!(!cleartext("http://127.0.0.1:8200"));
        assert!(!cleartext("http://[::1]:8200"));
        assert!(!cleartext("http://localhost:8200"));
    }

    #[test]
    fn an_address_gains_a_trailing_slash_and_keeps_its_prefix() {
        let addr = VaultAddr::parse("https://vault.internal:8200/prefix").unwrap();
        assert_eq!(addr.as_str(), "https://vault.internal:8200/prefix/");
        assert_eq!(
            addr.join("v1/secret/data/x").unwrap().as_str(),
            "https://vault.internal:8200/prefix/v1/secret/data/x"
        );
    }

    #[test]
    fn an_address_with_credentials_a_query_or_another_scheme_is_refused() {
        assert!(matches!(
            VaultAddr::parse("https://u:p@vault:8200"),
            Err(VaultAddrError::Extra)
        ));
        assert!(matches!(
            VaultAddr::parse("https://vault:8200/?x=1"),
            Err(VaultAddrError::Extra)
        ));
        assert!(matches!(
            VaultAddr::parse("unix:///run/vault.sock"),
            Err(VaultAddrError::Scheme)
        ));
        assert!(matches!(
            VaultAddr::parse("vault:8200"),
            Err(VaultAddrError::Scheme | VaultAddrError::Parse(_))
        ));
    }

    #[test]
    fn only_server_errors_and_rate_limits_are_worth_waiting_for() {
        assert!(waiting_may_fix(StatusCode::SERVICE_UNAVAILABLE));
        assert!(waiting_may_fix(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(waiting_may_fix(StatusCode::TOO_MANY_REQUESTS));
        assert!(!waiting_may_fix(StatusCode::FORBIDDEN));
        assert!(!waiting_may_fix(StatusCode::NOT_FOUND));
        assert!(!waiting_may_fix(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn a_parse_error_keeps_no_part_of_the_body() {
        let reply = Reply {
            status: StatusCode::OK,
            body: Zeroizing::new(br#"{"data": {"data": "s3cr3t-value"}}"#.to_vec()),
            what: "the read of kv/x".into(),
        };
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Shape {
            data: std::collections::BTreeMap<String, u64>,
        }
        let e = reply.json::<Shape>().unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }
}
