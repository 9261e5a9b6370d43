//! The worker's shared, multiplexed connection to Redis, and how it
//! follows a Sentinel failover.
//!
//! A `ConnectionManager` reconnects by itself, but always to the address it
//! was made for. After a failover that address is gone, or is a replica
//! that answers writes with `READONLY`. So with Sentinel, a command that
//! fails that way (or on a connection that cannot be made) sends the link
//! back to the Sentinels, once for all the commands that failed together,
//! and the next command goes to the master they name now. The failed
//! command itself fails: its caller retries as it would after any Redis
//! error, so a failover costs a delay and no job.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use super::QueueError;
use super::endpoint::Endpoint;

/// A connection that follows the master; cheap to clone, one underneath.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    config: ConnectionManagerConfig,
    current: Mutex<Current>,
    /// Held while the Sentinels are asked, so commands failing together
    /// ask once.
    relocating: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Current {
    /// Counts relocations: a failure seen on an older connection than the
    /// current one was already dealt with.
    generation: u64,
    conn: ConnectionManager,
    addr: String,
}

impl Link {
    /// Connects to the server the endpoint locates now.
    pub async fn open(
        endpoint: Endpoint,
        config: ConnectionManagerConfig,
    ) -> Result<Link, QueueError> {
        let (conn, addr) = endpoint.manage(config.clone()).await?;
        Ok(Link {
            inner: Arc::new(Inner {
                endpoint,
                config,
                current: Mutex::new(Current {
                    generation: 0,
                    conn,
                    addr,
                }),
                relocating: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The address of the server in use (`host:port`).
    pub fn addr(&self) -> String {
        self.current().addr
    }

    fn current(&self) -> Current {
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After `error` on the connection of `generation`: asks the Sentinels
    /// again if the error says the master may have moved.
    async fn after_error(&self, generation: u64, error: &RedisError) {
        if !self.inner.endpoint.follows_sentinels() || !master_may_have_moved(error) {
            return;
        }
        let _asking = self.inner.relocating.lock().await;
        let before = self.current();
        if before.generation != generation {
            return;
        }
        match self.inner.endpoint.manage(self.inner.config.clone()).await {
            Ok((conn, addr)) => {
                if addr != before.addr {
                    tracing::warn!(from = %before.addr, to = %addr, "the Redis master moved; following it");
                    crate::metrics::redis_master_changed();
                }
                *self
                    .inner
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Current {
                    generation: generation + 1,
                    conn,
                    addr,
                };
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "asking the Sentinels for the Redis master failed");
            }
        }
    }
}

/// A write refused by a replica, or a server that cannot be reached: what
/// a failover looks like from a client.
fn master_may_have_moved(error: &RedisError) -> bool {
    error.code() == Some("READONLY")
        || error.kind() == ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let Current {
                generation,
                mut conn,
                ..
            } = self.current();
            let reply = conn.req_packed_command(cmd).await;
            if let Err(e) = &reply {
                self.after_error(generation, e).await;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let Current {
                generation,
                mut conn,
                ..
            } = self.current();
            let reply = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &reply {
                self.after_error(generation, e).await;
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.current().conn.get_db()
    }
}
