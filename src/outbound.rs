//! What every HTTP client that carries the worker's credentials to another
//! service shares (Vault, GitHub): a reqwest client that follows no
//! redirect and reads no proxy from the environment, the check that a URL
//! keeps clear text on this machine, and a JSON error that never quotes
//! the body it came from.

use std::time::Duration;

use reqwest::Url;

/// A client builder whose requests go to the URL asked for and nowhere
/// else: reqwest keeps custom credential headers (`X-Vault-Token`) and a
/// POST body on a redirect to another host or from https to http, and
/// would send everything through `HTTPS_PROXY`. Each request is cut after
/// `timeout`.
pub(crate) fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("infra-service/", env!("CARGO_PKG_VERSION")))
}

/// `localhost` or a loopback address: plain http to it stays on this
/// machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

/// Where a JSON answer broke, without serde's message, which can quote the
/// value it choked on (a token, a secret).
pub(crate) fn json_error_position(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_this_machine() {
        let loopback = |u: &str| is_loopback(&Url::parse(u).unwrap());
        assert!(loopback("http://127.0.0.1:8200"));
        assert!(loopback("http://[::1]:8200"));
        assert!(loopback("http://localhost:8200"));
        assert!(!loopback("http://10.0.0.5:8200"));
        assert!(!loopback("http://vault.internal"));
    }

    #[test]
    fn a_json_error_names_its_place_not_the_text() {
        let e = serde_json::from_str::<u32>("\"s3cr3t\"").unwrap_err();
        let shown = json_error_position(&e);
        assert!(shown.contains("line 1"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
