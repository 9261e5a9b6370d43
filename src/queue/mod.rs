//! Redis Streams: consumer groups, reading entries, publishing results,
//! dead letters and acks. Knows entries, names and payload bytes; does not
//! know what a deploy is.

mod dead;
mod names;
mod reader;

pub use dead::{DeadLetterEntry, DeadLetterPage, DeadLetters, ReplayError, Replayed};
pub use names::Names;
pub use reader::Reader;

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

use crate::config::RedisSettings;
use crate::job::JobKind;

/// Results and dead letters are kept this long (contract section 3).
pub const RESULT_TTL_SECS: u64 = 3600;
/// Approximate cap of the result and dead-letter streams.
pub const RESULT_STREAM_MAXLEN: usize = 100_000;

/// A Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis.url is not set")]
    NoUrl,
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

/// A copy of a refused entry for `infra:dead`.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub reason: &'a str,
    pub request_id: Option<&'a str>,
}

/// The shared, multiplexed side of Redis: everything except blocking reads.
#[derive(Clone)]
pub struct Queue {
    client: redis::Client,
    conn: ConnectionManager,
    names: Names,
    group: String,
    consumer: String,
    block_ms: u64,
}

impl Queue {
    /// Connects and makes sure both consumer groups exist.
    pub async fn connect(settings: &RedisSettings, consumer: String) -> Result<Queue, QueueError> {
        let url = settings.url.as_ref().ok_or(QueueError::NoUrl)?;
        let client = redis::Client::open(url.expose_secret())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let conn = client.get_connection_manager_with_config(config).await?;
        let queue = Queue {
            client,
            conn,
            names: Names::new(settings.key_prefix.clone()),
            group: settings.group.clone(),
            consumer,
            block_ms: settings.block_ms,
        };
        queue.ensure_groups().await?;
        Ok(queue)
    }

    /// The names in use (prefix applied).
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// This process's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM` for both queues; an
    /// existing group (BUSYGROUP) is fine.
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        for kind in [JobKind::Deploy, JobKind::Provision] {
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
    pub async fn reader(&self) -> Result<Reader, QueueError> {
        Reader::connect(
            self.client.clone(),
            self.names.clone(),
            self.group.clone(),
            self.consumer.clone(),
            self.block_ms,
        )
        .await
    }

    /// Publishes a final result (key with TTL, then the result stream) and
    /// acks the entry, in that order, in one transaction; optionally also
    /// copies the entry to the dead-letter stream before the ack.
    pub async fn finish(
        &self,
        delivery: &Delivery,
        result: Option<(&str, &str)>,
        dead: Option<DeadLetter<'_>>,
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some((request_id, json)) = result {
            pipe.cmd("SET")
                .arg(self.names.result_key(delivery.kind, request_id))
                .arg(json)
                .arg("EX")
                .arg(RESULT_TTL_SECS)
                .ignore();
            pipe.cmd("XADD")
                .arg(self.names.result_stream(delivery.kind))
                .arg("MAXLEN")
                .arg("~")
                .arg(RESULT_STREAM_MAXLEN)
                .arg("*")
                .arg("payload")
                .arg(json)
                .ignore();
        }
        if let Some(dead) = dead {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut xadd = redis::cmd("XADD");
            xadd.arg(self.names.dead_letters())
                .arg("MAXLEN")
                .arg("~")
                .arg(RESULT_STREAM_MAXLEN)
                .arg("*")
                .arg("reason")
                .arg(dead.reason)
                .arg("stream")
                .arg(&delivery.stream)
                .arg("entry_id")
                .arg(&delivery.entry_id)
                .arg("request_id")
                .arg(dead.request_id.unwrap_or(""))
                .arg("worker")
                .arg(&self.consumer)
                .arg("dead_at")
                .arg(now);
            if let Some(payload) = &delivery.payload {
                xadd.arg("payload").arg(payload.as_slice());
            }
            pipe.add_command(xadd).ignore();
        }
        pipe.cmd("XACK")
            .arg(&delivery.stream)
            .arg(&self.group)
            .arg(&delivery.entry_id)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Answers a liveness question: does Redis respond?
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = conn.ping().await?;
        Ok(())
    }
}
