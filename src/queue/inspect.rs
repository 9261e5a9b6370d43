//! The queues seen from outside, for the operator console: each queue's
//! length, its consumer group's pending entries and lag, and the group's
//! consumers (the workers) with their idle time. Reads only; needs no
//! consumer group and creates none.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};

use super::{Names, QueueError};
use crate::config::RedisSettings;
use crate::job::JobKind;

/// One job queue as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub kind: JobKind,
    /// The stream's name without the key prefix.
    pub name: String,
    /// `XLEN`: entries in the stream (acked ones included until trimmed).
    pub length: u64,
    /// The configured group's state; `None` when it does not exist (yet).
    pub group: Option<GroupInfo>,
}

/// The configured consumer group on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries delivered and not acked yet.
    pub pending: u64,
    /// Entries not delivered yet; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    pub consumers: Vec<ConsumerInfo>,
}

/// One consumer (a worker) of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    /// Milliseconds since its last read or claim.
    pub idle_ms: u64,
}

/// A read-only view of the queues on a connection of its own.
#[derive(Clone)]
pub struct Inspector {
    conn: MultiplexedConnection,
    names: Names,
    group: String,
}

impl Inspector {
    /// Connects to `redis.url`; names get `redis.key_prefix`, the group is
    /// `redis.group`.
    pub async fn connect(settings: &RedisSettings) -> Result<Inspector, QueueError> {
        let (conn, names) = super::connect_plain(settings, Duration::from_secs(5)).await?;
        Ok(Inspector {
            conn,
            names,
            group: settings.group.clone(),
        })
    }

    /// The names in use (prefix applied).
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Both queues, deploy first.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, QueueError> {
        let mut queues = Vec::new();
        for kind in JobKind::ALL {
            queues.push(self.queue(kind).await?);
        }
        Ok(queues)
    }

    async fn queue(&self, kind: JobKind) -> Result<QueueInfo, QueueError> {
        let mut conn = self.conn.clone();
        let stream = self.names.queue(kind);
        let length: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        let groups: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await;
        let group = match groups {
            Ok(reply) => reply.groups.into_iter().find(|g| g.name == self.group),
            // No stream yet: nobody enqueued or read since Redis started.
            Err(e) if e.code() == Some("ERR") => None,
            Err(e) => return Err(e.into()),
        };
        let group = match group {
            Some(group) => {
                let consumers: StreamInfoConsumersReply = redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&stream)
                    .arg(&self.group)
                    .query_async(&mut conn)
                    .await?;
                Some(GroupInfo {
                    pending: group.pending as u64,
                    lag: group.lag.map(|lag| lag as u64),
                    consumers: consumers
                        .consumers
                        .into_iter()
                        .map(|c| ConsumerInfo {
                            name: c.name,
                            pending: c.pending as u64,
                            idle_ms: c.idle as u64,
                        })
                        .collect(),
                })
            }
            None => None,
        };
        Ok(QueueInfo {
            kind,
            name: self.names.unprefixed(&stream).to_owned(),
            length,
            group,
        })
    }
}
