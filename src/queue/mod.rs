//! Redis Streams: consumer groups, reading entries, publishing results,
//! dead letters, acks and progress events; the operator side of enqueueing
//! and following a job (`operator`). Knows entries, names and payload bytes;
//! does not know what a deploy is.

mod caller;
mod dead;
mod endpoint;
mod inspect;
mod link;
mod names;
mod reader;
mod scripts;

pub use caller::{Caller, EventEntry};
pub use dead::{DeadLetterEntry, DeadLetterPage, DeadLetters, ReplayError};
pub use endpoint::Endpoint;
pub use inspect::{ConsumerInfo, GroupInfo, Inspector, QueueInfo};
pub use link::{Link, Pinned};
pub use names::Names;
pub use reader::Reader;

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::config::RedisSettings;
use crate::job::JobKind;

/// Results and dead letters are kept this long (contract section 3).
pub const RESULT_TTL_SECS: u64 = 3600;
/// Approximate cap of the result and dead-letter streams.
pub const RESULT_STREAM_MAXLEN: usize = 100_000;
/// Approximate cap of one job's progress stream (contract section 3).
pub const EVENTS_STREAM_MAXLEN: usize = 10_000;
/// A progress stream expires this long after its last entry, so an hour
/// after the job's end (and even when its worker died mid-job).
pub const EVENTS_TTL_SECS: u64 = 3600;

/// A connection for a one-shot command (no consumer group) and the names
/// under `redis.key_prefix`; replies may take up to `response_timeout`.
async fn connect_plain(
    settings: &RedisSettings,
    response_timeout: Duration,
) -> Result<(MultiplexedConnection, Names), QueueError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    let (conn, _) = Endpoint::new(settings).connect(&config).await?;
    Ok((conn, Names::new(settings.key_prefix.clone())))
}

/// Reads a published result's key: the one reader of results, behind
/// both the worker's `Queue::result` and the callers' `Caller::result`.
/// Gives the JSON as stored; `JobResult::from_json` parses it.
async fn read_result(
    mut conn: impl redis::aio::ConnectionLike + Send + Sync,
    names: &Names,
    kind: JobKind,
    request_id: &str,
) -> Result<Option<String>, QueueError> {
    Ok(conn.get(names.result_key(kind, request_id)).await?)
}

/// A job's result as published: its request id and JSON, and the
/// `job_finished` event that ends its progress stream, when it has one.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    pub request_id: &'a str,
    pub json: &'a str,
    pub finished_event: Option<&'a str>,
}

/// A Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The TLS handshake failed: an unknown CA, a certificate for another
    /// name, a server that asks for a client certificate.
    #[error(
        "redis: TLS to {addr} failed: {source} (check redis.ca_cert, redis.client_cert and that the host name in redis.url, or the address the Sentinels give, is one the server's certificate names)"
    )]
    Tls {
        addr: String,
        source: redis::RedisError,
    },
    #[error(
        "redis: {addr} refused the login: {source} (check redis.username and redis.password_ref)"
    )]
    Auth {
        addr: String,
        source: redis::RedisError,
    },
    #[error("redis: {key}: {source}")]
    Secret {
        key: &'static str,
        source: crate::secrets::ResolveError,
    },
    #[error(
        "redis: no Sentinel named a master `{master}` that confirms it (redis.sentinels, redis.sentinel_master): {tried}"
    )]
    NoMaster { master: String, tried: String },
}

/// One stream entry handed to this consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub kind: JobKind,
    pub stream: String,
    pub entry_id: String,
    /// The `payload` field, if the entry has one.
    pub payload: Option<Vec<u8>>,
    /// How many times Redis has delivered this entry, this time included.
    pub delivery_count: u32,
}

impl Delivery {
    /// When the producer added the entry: the millisecond part of its id.
    pub fn enqueued_at_ms(&self) -> Option<i64> {
        self.entry_id.split('-').next()?.parse().ok()
    }
}

/// What `Queue::finish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Published (when there was something to publish) and acked.
    Done,
    /// The entry was acked before: a retry after a lost reply, or another
    /// worker finished it.
    AlreadyFinished,
    /// Another consumer owns the entry now; nothing was written.
    NotOwner,
}

/// One queue's consumer group as Redis sees it (`XINFO GROUPS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub stream: String,
    /// Delivered to a consumer and not yet acked.
    pub pending: u64,
    /// Not yet delivered; `None` before Redis 7 or when Redis cannot tell.
    pub lag: Option<u64>,
}

/// A copy of a refused entry for `infra:dead`.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub reason: &'a str,
    pub request_id: Option<&'a str>,
}

/// The shared, multiplexed side of Redis: everything except blocking reads.
#[derive(Clone)]
pub struct Queue {
    endpoint: Endpoint,
    conn: Link,
    /// Where results are published; its own connection when they are
    /// `WAIT`ed for, since a `WAIT` holds up every command behind it.
    publisher: Link,
    wait: Option<ReplicaWait>,
    names: Names,
    group: String,
    consumer: String,
    block_ms: u64,
}

/// `redis.wait_replicas` and `redis.wait_timeout_ms`.
#[derive(Debug, Clone, Copy)]
struct ReplicaWait {
    replicas: u32,
    timeout_ms: u64,
}

impl Queue {
    /// Connects and makes sure both consumer groups exist.
    pub async fn connect(settings: &RedisSettings, consumer: String) -> Result<Queue, QueueError> {
        let endpoint = Endpoint::new(settings);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let conn = Link::open(endpoint.clone(), config.clone()).await?;
        let wait = (settings.wait_replicas > 0).then_some(ReplicaWait {
            replicas: settings.wait_replicas,
            timeout_ms: settings.wait_timeout_ms,
        });
        let publisher = match wait {
            // The WAIT's own timeout comes on top of the reply's.
            Some(wait) => {
                let config = config.set_response_timeout(Some(
                    Duration::from_secs(10) + Duration::from_millis(wait.timeout_ms),
                ));
                Link::open(endpoint.clone(), config).await?
            }
            None => conn.clone(),
        };
        let queue = Queue {
            endpoint,
            conn,
            publisher,
            wait,
            names: Names::new(settings.key_prefix.clone()),
            group: settings.group.clone(),
            consumer,
            block_ms: settings.block_ms,
        };
        queue.ensure_groups().await?;
        Ok(queue)
    }

    /// The Redis server in use (`host:port`): with Sentinel, the master
    /// last found.
    pub fn server(&self) -> String {
        self.conn.addr()
    }

    /// This process's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM` for both queues; an
    /// existing group (BUSYGROUP) is fine.
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        for kind in JobKind::ALL {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.names.queue(kind))
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A reader on a connection of its own, so its blocking waits never
    /// stall the commands other tasks send.
    pub async fn reader(&self, lease: Duration) -> Result<Reader, QueueError> {
        Reader::connect(self, lease).await
    }

    /// Publishes a final result (key with TTL, then the result stream) and
    /// the event that ends its progress stream, optionally copies the
    /// entry to the dead-letter stream, and acks, in that order and
    /// atomically, if this consumer still owns the entry.
    pub async fn finish(
        &self,
        delivery: &Delivery,
        result: Option<Publication<'_>>,
        dead: Option<DeadLetter<'_>>,
    ) -> Result<Finished, QueueError> {
        let request_id = result.map_or("", |r| r.request_id);
        let has_dead_letter = dead.is_some();
        let mut invocation = scripts::FINISH.prepare_invoke();
        invocation
            .key(&delivery.stream)
            .key(self.names.result_key(delivery.kind, request_id))
            .key(self.names.result_stream(delivery.kind))
            .key(self.names.dead_letters())
            .key(self.names.events(request_id))
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(&delivery.entry_id)
            .arg(result.map_or("", |r| r.json))
            .arg(RESULT_TTL_SECS)
            .arg(RESULT_STREAM_MAXLEN)
            .arg(result.and_then(|r| r.finished_event).unwrap_or(""))
            .arg(EVENTS_TTL_SECS)
            .arg(EVENTS_STREAM_MAXLEN);
        if let Some(dead) = dead {
            for (field, value) in self.dead_letter_fields(delivery, &dead) {
                invocation.arg(field).arg(value);
            }
        }
        // The write and the WAIT for it on one connection, to one server.
        let mut conn = self.publisher.pin();
        let mut outcome: i64 = invocation.invoke_async(&mut conn).await?;
        if outcome == 1 && result.is_some() && !self.wait_for_replicas(&mut conn).await {
            // No replica has it: under Sentinel, perhaps because this master
            // was just replaced, and will drop what it took when it is
            // demoted. Then publish again where the master is now (FINISH
            // is idempotent: a result that did reach it is not doubled).
            if self
                .follow_master()
                .await
                .is_some_and(|now| now != conn.addr())
            {
                let mut moved = self.publisher.pin();
                tracing::warn!(from = %conn.addr(), to = %moved.addr(), entry_id = %delivery.entry_id, "the result went to a replaced Redis master; publishing it again on the new one");
                outcome = invocation.invoke_async(&mut moved).await?;
                if outcome == 1 {
                    self.wait_for_replicas(&mut moved).await;
                }
            }
        }
        Ok(match outcome {
            1 if has_dead_letter => {
                crate::metrics::dead_lettered();
                Finished::Done
            }
            1 => Finished::Done,
            0 => Finished::AlreadyFinished,
            _ => Finished::NotOwner,
        })
    }

    /// With `redis.wait_replicas`: waits until that many replicas have
    /// what this connection wrote (the result just published), so a
    /// failover right after cannot lose it. Fewer in time is logged and
    /// counted, and answers false (the result is on the master, which may
    /// or may not be the master still); true without `wait_replicas`.
    async fn wait_for_replicas(&self, conn: &mut Pinned) -> bool {
        let Some(wait) = self.wait else {
            return true;
        };
        let acked: redis::RedisResult<u32> = redis::cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout_ms)
            .query_async(conn)
            .await;
        match acked {
            Ok(n) if n >= wait.replicas => true,
            Ok(n) => {
                crate::metrics::replica_wait_short();
                tracing::warn!(
                    replicas = n,
                    wanted = wait.replicas,
                    timeout_ms = wait.timeout_ms,
                    "a published result reached fewer replicas than redis.wait_replicas in time"
                );
                false
            }
            Err(e) => {
                crate::metrics::replica_wait_short();
                tracing::warn!(error.message = %e, "waiting for replicas after publishing a result failed");
                false
            }
        }
    }

    /// With Sentinel: moves the links to the master the Sentinels name
    /// now; its address, or `None` without Sentinel or an answer.
    async fn follow_master(&self) -> Option<String> {
        if !self.endpoint.follows_sentinels() {
            return None;
        }
        match self.endpoint.locate().await {
            Ok(located) => {
                self.conn.follow(&located.addr).await;
                self.publisher.follow(&located.addr).await;
                Some(located.addr)
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "asking the Sentinels for the Redis master failed");
                None
            }
        }
    }

    fn dead_letter_fields<'a>(
        &'a self,
        delivery: &'a Delivery,
        dead: &DeadLetter<'a>,
    ) -> Vec<(&'static str, Vec<u8>)> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut fields = vec![
            ("reason", dead.reason.as_bytes().to_vec()),
            ("stream", delivery.stream.as_bytes().to_vec()),
            ("entry_id", delivery.entry_id.as_bytes().to_vec()),
            (
                "request_id",
                dead.request_id.unwrap_or("").as_bytes().to_vec(),
            ),
            ("worker", self.consumer.as_bytes().to_vec()),
            ("dead_at", now.into_bytes()),
        ];
        if let Some(payload) = &delivery.payload {
            fields.push(("payload", payload.clone()));
        }
        fields
    }

    /// Records an entry that vanished (deleted or trimmed) while pending:
    /// nothing is left to run or ack, but an operator should know.
    pub async fn dead_letter_vanished(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let dead = DeadLetter {
            reason: "entry was deleted or trimmed from the stream before it was processed",
            request_id: None,
        };
        // FINISH writes the dead letter (the entry is neither pending nor in
        // the stream any more, so nothing else happens).
        self.finish(delivery, None, Some(dead)).await.map(drop)
    }

    /// Appends one progress event to `job:events:<request_id>` and pushes
    /// the stream's expiry an hour ahead.
    pub async fn append_event(&self, request_id: &str, payload: &str) -> Result<(), QueueError> {
        let stream = self.names.events(request_id);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(EVENTS_STREAM_MAXLEN)
            .arg("*")
            .arg("payload")
            .arg(payload)
            .ignore()
            .cmd("EXPIRE")
            .arg(&stream)
            .arg(EVENTS_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Keeps the leases of running entries fresh; returns those this
    /// consumer no longer owns (another worker took them over).
    pub async fn renew(
        &self,
        stream: &str,
        entry_ids: &[String],
    ) -> Result<Vec<String>, QueueError> {
        let mut invocation = scripts::RENEW.prepare_invoke();
        invocation.key(stream).arg(&self.group).arg(&self.consumer);
        for id in entry_ids {
            invocation.arg(id);
        }
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    /// Gives an unfinished entry back (shutdown): claiming it with a large
    /// idle time makes it reclaimable at once, and JUSTID does not count
    /// another delivery.
    pub async fn hand_back(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("XCLAIM")
            .arg(&delivery.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&delivery.entry_id)
            .arg("IDLE")
            .arg(
                u64::try_from(lease.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_mul(10),
            )
            .arg("JUSTID")
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether an entry is still pending (delivered and not acked).
    pub async fn is_pending(&self, stream: &str, entry_id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.group)
            .arg(entry_id)
            .arg(entry_id)
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(!reply.is_empty())
    }

    /// A published result's JSON, if its key still exists.
    pub async fn result(
        &self,
        kind: JobKind,
        request_id: &str,
    ) -> Result<Option<String>, QueueError> {
        read_result(self.conn.clone(), &self.names, kind, request_id).await
    }

    /// Leaves the groups tidy on a clean stop: this consumer is removed
    /// only when it has nothing pending, so no entry loses its owner.
    pub async fn retire_consumer(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        for kind in JobKind::ALL {
            let stream = self.names.queue(kind);
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&self.group)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&self.consumer)
                .query_async(&mut conn)
                .await?;
            if pending.is_empty() {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Pending entries and lag of this worker's group on both queues. A
    /// queue whose group does not exist (yet) is left out.
    pub async fn backlog(&self) -> Result<Vec<Backlog>, QueueError> {
        let mut conn = self.conn.clone();
        let mut backlog = Vec::new();
        for kind in JobKind::ALL {
            let stream = self.names.queue(kind);
            let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query_async(&mut conn)
                    .await;
            let groups = match groups {
                Ok(reply) => reply.groups,
                // No stream: Redis restarted empty and nobody read since.
                Err(e) if e.code() == Some("ERR") => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(group) = groups.into_iter().find(|g| g.name == self.group) {
                backlog.push(Backlog {
                    stream,
                    pending: group.pending as u64,
                    lag: group.lag.map(|lag| lag as u64),
                });
            }
        }
        Ok(backlog)
    }

    /// Answers a liveness question: does Redis respond?
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = conn.ping().await?;
        Ok(())
    }
}
