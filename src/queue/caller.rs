//! The callers' side of the queues, for the operator CLI: add a job entry,
//! read a result key, follow a job's progress stream. Needs Redis only.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};

use super::{Names, QueueError};
use crate::config::RedisSettings;
use crate::job::JobKind;

/// The longest `XREAD BLOCK` a caller asks for; the connection's response
/// timeout leaves room for it.
pub const MAX_BLOCK: Duration = Duration::from_secs(5);

/// One connection for enqueueing and following jobs.
pub struct Caller {
    conn: MultiplexedConnection,
    names: Names,
}

/// One entry of a progress stream: its id and `payload` bytes.
#[derive(Debug, Clone)]
pub struct EventEntry {
    pub id: String,
    pub payload: Option<Vec<u8>>,
}

impl Caller {
    /// Connects to the configured Redis.
    pub async fn connect(settings: &RedisSettings) -> Result<Caller, QueueError> {
        let response_timeout = MAX_BLOCK + Duration::from_secs(10);
        let (conn, names) = super::connect_plain(settings, response_timeout).await?;
        Ok(Caller { conn, names })
    }

    /// The names in use (prefix applied).
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// `XADD <queue> * payload <json>`, as producers do; the new entry's id.
    pub async fn enqueue(&self, kind: JobKind, payload: &str) -> Result<String, QueueError> {
        let mut conn = self.conn.clone();
        let id: String = redis::cmd("XADD")
            .arg(self.names.queue(kind))
            .arg("*")
            .arg("payload")
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(id)
    }

    /// A published result's JSON, if its key still exists.
    pub async fn result(
        &self,
        kind: JobKind,
        request_id: &str,
    ) -> Result<Option<String>, QueueError> {
        super::read_result(self.conn.clone(), &self.names, kind, request_id).await
    }

    /// Whether the job's progress stream exists (it ran or runs).
    pub async fn has_events(&self, request_id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.names.events(request_id)).await?)
    }

    /// Progress entries after `after` (`0-0` for all), waiting up to
    /// `block` (at most [`MAX_BLOCK`]) for the first; empty if none came.
    pub async fn read_events(
        &self,
        request_id: &str,
        after: &str,
        block: Duration,
    ) -> Result<Vec<EventEntry>, QueueError> {
        let block_ms = block.min(MAX_BLOCK).as_millis().max(1) as usize;
        let options = StreamReadOptions::default().block(block_ms).count(100);
        let mut conn = self.conn.clone();
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[self.names.events(request_id)], &[after], &options)
            .await?;
        let entries = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| EventEntry {
                payload: entry.get::<Vec<u8>>("payload"),
                id: entry.id,
            })
            .collect();
        Ok(entries)
    }
}
