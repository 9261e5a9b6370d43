//! Which Redis server to talk to, and how: the server `redis.url` names,
//! or the master that a set of Sentinels names; over TLS with `rediss://`
//! (`redis.ca_cert`, a client certificate), logging in as `redis.username`
//! with the password behind `redis.password_ref`. Every connection the
//! worker and the operator commands open is made here, so each of them
//! follows a failover and speaks TLS the same way.
//!
//! A Sentinel answer is checked before it is used, as Sentinel's client
//! guidelines ask: the server it names must say `ROLE` master, or the next
//! Sentinel is asked. Secrets are read at each connect, never kept in the
//! settings, so a rotated password file is picked up by the next one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, TlsCertificates};
use secrecy::ExposeSecret;

use super::QueueError;
use crate::config::{RedisSettings, SentinelSettings};

/// How long one question to a Sentinel, or the master's `ROLE`, may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach the worker's Redis; cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    settings: RedisSettings,
    /// The master the Sentinels named last, shared by the clones (the
    /// queue's links and its reader each locate it): a move is logged and
    /// counted once, by whichever notices it first.
    last_master: Arc<Mutex<Option<String>>>,
}

/// A server located: its client and its address for messages and `/readyz`.
pub struct Located {
    pub client: redis::Client,
    pub addr: String,
}

impl Endpoint {
    pub fn new(settings: &RedisSettings) -> Endpoint {
        Endpoint {
            settings: settings.clone(),
            last_master: Arc::default(),
        }
    }

    /// Whether the server is found through Sentinels (and so may move).
    pub fn follows_sentinels(&self) -> bool {
        self.settings.sentinel.is_some()
    }

    /// The server to connect to now: the URL's, or the master the
    /// Sentinels name at this moment.
    pub async fn locate(&self) -> Result<Located, QueueError> {
        let info = self.login_info().await?;
        match &self.settings.sentinel {
            None => self.located(info).await,
            Some(sentinel) => {
                let located = self.ask_sentinels(sentinel, info).await?;
                self.note_master(&located.addr);
                Ok(located)
            }
        }
    }

    /// Logs and counts a master other than the one named before.
    fn note_master(&self, addr: &str) {
        let mut last = self
            .last_master
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = last.as_deref().filter(|before| *before != addr) {
            tracing::warn!(from = %before, to = %addr, "the Sentinels name another Redis master; following it");
            crate::metrics::redis_master_changed();
        }
        *last = Some(addr.to_owned());
    }

    /// Opens a multiplexed connection to the server [`locate`](Self::locate) finds.
    pub async fn connect(
        &self,
        config: &redis::AsyncConnectionConfig,
    ) -> Result<(redis::aio::MultiplexedConnection, String), QueueError> {
        let located = self.locate().await?;
        let conn = located
            .client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .map_err(|e| self.connect_error(&located.addr, e))?;
        Ok((conn, located.addr))
    }

    /// Opens a connection manager (it reconnects by itself, to the same
    /// address) to the server found now.
    pub async fn manage(
        &self,
        config: redis::aio::ConnectionManagerConfig,
    ) -> Result<(redis::aio::ConnectionManager, String), QueueError> {
        let located = self.locate().await?;
        let conn = located
            .client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| self.connect_error(&located.addr, e))?;
        Ok((conn, located.addr))
    }

    /// A failed connect, named for what the operator should look at.
    pub(super) fn connect_error(&self, addr: &str, source: RedisError) -> QueueError {
        // With TLS, a refused handshake (unknown CA, wrong host name) comes
        // back as a client-side error of the TLS library.
        if self.settings.url.is_tls() && source.kind() == ErrorKind::Client {
            return QueueError::Tls {
                addr: addr.to_owned(),
                source,
            };
        }
        if source.kind() == ErrorKind::AuthenticationFailed {
            return QueueError::Auth {
                addr: addr.to_owned(),
                source,
            };
        }
        QueueError::Redis(source)
    }

    /// The URL's connection settings with `redis.username` and the
    /// password behind `redis.password_ref` put in.
    async fn login_info(&self) -> Result<ConnectionInfo, QueueError> {
        let info = self.settings.url.info().clone();
        let mut login = info.redis_settings().clone();
        if let Some(username) = &self.settings.username {
            login = login.set_username(username);
        }
        if let Some(reference) = &self.settings.password_ref {
            let password = self.secret("redis.password_ref", reference).await?;
            login = login.set_password(password.expose_secret());
        }
        Ok(info.set_redis_settings(login))
    }

    async fn secret(
        &self,
        key: &'static str,
        reference: &str,
    ) -> Result<secrecy::SecretString, QueueError> {
        self.settings
            .secrets
            .resolve_str(reference)
            .await
            .map_err(|source| QueueError::Secret { key, source })
    }

    /// A client for `info`, with the TLS material when it is `rediss://`.
    async fn located(&self, info: ConnectionInfo) -> Result<Located, QueueError> {
        let addr = describe(info.addr());
        let client = match info.addr() {
            ConnectionAddr::TcpTls { .. } => {
                redis::Client::build_with_tls(info, self.certificates().await?)?
            }
            _ => redis::Client::open(info)?,
        };
        Ok(Located { client, addr })
    }

    /// The CA and client certificate as loaded with the settings, and the
    /// client key read from its reference now.
    async fn certificates(&self) -> Result<TlsCertificates, QueueError> {
        let tls = &self.settings.tls;
        let client_tls = match (&tls.client_cert, &tls.client_key_ref) {
            (Some(cert), Some(reference)) => {
                let key = self.secret("redis.client_key_ref", reference).await?;
                Some(redis::ClientTlsConfig {
                    client_cert: cert.pem().to_vec(),
                    client_key: key.expose_secret().as_bytes().to_vec(),
                })
            }
            _ => None,
        };
        Ok(TlsCertificates {
            client_tls,
            root_cert: tls.ca_cert.as_ref().map(|ca| ca.pem().to_vec()),
        })
    }

    /// Asks each Sentinel in turn for the master, and the master to confirm.
    async fn ask_sentinels(
        &self,
        sentinel: &SentinelSettings,
        login: ConnectionInfo,
    ) -> Result<Located, QueueError> {
        let mut tried = Vec::new();
        for (host, port) in &sentinel.nodes {
            match self.ask_one(host, *port, sentinel, &login).await {
                Ok(located) => return Ok(located),
                Err(why) => tried.push(format!("{host}:{port}: {why}")),
            }
        }
        Err(QueueError::NoMaster {
            master: sentinel.master.clone(),
            tried: tried.join("; "),
        })
    }

    async fn ask_one(
        &self,
        host: &str,
        port: u16,
        sentinel: &SentinelSettings,
        login: &ConnectionInfo,
    ) -> Result<Located, String> {
        // Sentinels speak TLS when the servers do; they take no login here.
        let sentinel_info = with_addr(login.clone(), host, port)
            .set_redis_settings(redis::RedisConnectionInfo::default());
        let asked = self
            .located(sentinel_info)
            .await
            .map_err(|e| e.to_string())?;
        let config = quick_config();
        let mut conn = asked
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.connect_error(&asked.addr, e).to_string())?;
        let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&sentinel.master)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let Some((master_host, master_port)) = answer else {
            return Err(format!(
                "does not know a master named `{}`",
                sentinel.master
            ));
        };
        let master = self
            .located(with_addr(login.clone(), &master_host, master_port))
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = master
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.connect_error(&master.addr, e).to_string())?;
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        match role_name(&role) {
            Some("master") => Ok(master),
            other => Err(format!(
                "named {} as master, which says it is {}",
                master.addr,
                other.unwrap_or("something else")
            )),
        }
    }
}

/// Timeouts for the short questions of a lookup.
fn quick_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT))
}

/// `info` pointed at `host:port`, TLS kept as it was.
fn with_addr(info: ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    info.set_addr(addr)
}

/// `host:port` for messages.
fn describe(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
        other => other.to_string(),
    }
}

/// The first element of a `ROLE` reply: `master`, `slave` or `sentinel`.
fn role_name(reply: &redis::Value) -> Option<&str> {
    let redis::Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        redis::Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_reply_names_its_role() {
        let master = redis::Value::Array(vec![
            redis::Value::BulkString(b"master".to_vec()),
            redis::Value::Int(0),
        ]);
        assert_eq!(role_name(&master), Some("master"));
        assert_eq!(role_name(&redis::Value::Nil), None);
    }

    #[test]
    fn an_address_keeps_tls_when_it_moves() {
        let info = crate::config::RedisUrl::parse("rediss://:pw@127.0.0.1:6380/2")
            .unwrap()
            .info()
            .clone();
        let moved = with_addr(info, "10.0.0.9", 7000);
        assert!(
            matches!(moved.addr(), ConnectionAddr::TcpTls { host, port: 7000, .. } if host == "10.0.0.9")
        );
        assert_eq!(moved.redis_settings().db(), 2);
        assert_eq!(describe(moved.addr()), "10.0.0.9:7000");
        assert_eq!(describe(&ConnectionAddr::Tcp("::1".into(), 1)), "[::1]:1");
    }
}
