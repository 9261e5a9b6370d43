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
//!
//! A failover does not break the old master's connections at once:
//! Sentinel demotes it seconds later (and until then it takes writes the
//! new master never sees). So links also move when told where the master
//! is now (`follow`: the reader asks before it claims, the queue after a
//! short `WAIT`), and a write and the `WAIT` for it share one [`Pinned`]
//! connection, so the `WAIT` asks about that write's server.

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

    /// Moves to `master` (where the Sentinels put the master now) if this
    /// link is elsewhere. A failover does not break the old master's
    /// connections at once: Sentinel demotes it seconds later, and until
    /// then it takes writes that its former replica, the new master, never
    /// sees. So the worker asks the Sentinels itself now and then (the
    /// reader) and after a short `WAIT`, and moves its links here.
    pub async fn follow(&self, master: &str) {
        let current = self.current();
        if current.addr != master {
            self.relocate(current.generation).await;
        }
    }

    /// After `error` on the connection of `generation`: asks the Sentinels
    /// again if the error says the master may have moved.
    async fn after_error(&self, generation: u64, error: &RedisError) {
        if !self.inner.endpoint.follows_sentinels() || !master_may_have_moved(error) {
            return;
        }
        self.relocate(generation).await;
    }

    /// Connects to the master the Sentinels name now, unless the
    /// connection of `generation` was replaced meanwhile.
    async fn relocate(&self, generation: u64) {
        let _asking = self.inner.relocating.lock().await;
        let before = self.current();
        if before.generation != generation {
            return;
        }
        match self.inner.endpoint.manage(self.inner.config.clone()).await {
            Ok((conn, addr)) => {
                if addr != before.addr {
                    tracing::info!(from = %before.addr, to = %addr, "a Redis link moved to the master");
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

/// A write refused by a replica, or by a master that lost its replicas
/// (`min-replicas-to-write`: an old master cut off by a failover), or a
/// server that cannot be reached: what a failover looks like from a client.
fn master_may_have_moved(error: &RedisError) -> bool {
    error.code() == Some("READONLY")
        || error.code() == Some("NOREPLICAS")
        || error.kind() == ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// The link's connection of one moment, held for commands that must go to
/// the same server: a write and the `WAIT` for its replicas (a `WAIT` sent
/// after the link moved would ask the new master about a write it never
/// had). Its errors still send the link back to the Sentinels.
pub struct Pinned {
    link: Link,
    generation: u64,
    conn: ConnectionManager,
    addr: String,
}

impl Pinned {
    /// The server this connection goes to (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Link {
    /// The connection in use now, for commands that must share it.
    pub fn pin(&self) -> Pinned {
        let Current {
            generation,
            conn,
            addr,
        } = self.current();
        Pinned {
            link: self.clone(),
            generation,
            conn,
            addr,
        }
    }
}

impl Pinned {
    /// Passes a reply on, after letting the link judge its error.
    async fn seen<T>(&self, reply: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &reply {
            self.link.after_error(self.generation, e).await;
        }
        reply
    }
}

impl ConnectionLike for Pinned {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.conn.req_packed_command(cmd).await;
            self.seen(reply).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let reply = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.seen(reply).await
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Each command on the connection in use when it is sent.
impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.pin().req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.pin()
                .req_packed_commands(pipeline, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.current().conn.get_db()
    }
}
