//! Taking new entries from both queues without ever holding more than the
//! worker can start.
//!
//! `XREADGROUP ... COUNT n` on two streams can hand out up to `2n` entries,
//! and an entry handed out but not started is a job stuck in limbo. So the
//! reader claims with non-blocking per-stream reads whose counts add up to
//! exactly the free slots (one Lua script, [`scripts::TAKE`]), and waits
//! for new work with a plain `XREAD BLOCK` from each stream's newest id,
//! which claims nothing and so can be abandoned at any time (shutdown)
//! without stranding an entry.
//!
//! Entries whose worker died are taken over the same way: every so often
//! `XAUTOCLAIM` claims entries idle longer than the lease, again no more
//! than there are free slots.
//!
//! A wait abandoned for the stop leaves its `XREAD BLOCK` outstanding on the
//! connection, and Redis answers a blocked client's next command only after
//! the block ends, typically because a new entry arrived: a `TAKE` sent
//! behind it would claim exactly the entry a stopping worker must leave. So
//! an abandoned wait closes its connection, and a stopped reader sends
//! nothing.
//!
//! With Sentinel, the reader asks the Sentinels where the master is before
//! it claims, at most once per [`MASTER_CHECK_EVERY`], and moves there (and
//! moves the queue's links) when the master moved: a replaced master keeps
//! taking reads and writes until Sentinel demotes it, seconds after the
//! failover, and an entry claimed there is claimed nowhere the new master
//! knows of.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply};
use tokio_util::sync::CancellationToken;

use super::{Delivery, Endpoint, Link, Names, Queue, QueueError, scripts};
use crate::job::JobKind;

/// How often, at most, the reader asks the Sentinels where the master is.
pub const MASTER_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Reads entries for one consumer on a dedicated connection.
pub struct Reader {
    /// Asked again at each reconnect: with Sentinel, that follows the master.
    endpoint: Endpoint,
    /// `None` after a wait was abandoned for the stop; opened again if the
    /// reader is used after all (tests do; the worker does not).
    conn: Option<MultiplexedConnection>,
    /// The server `conn` is connected to (`host:port`).
    addr: String,
    /// The queue's links, moved with the reader when the master moved.
    links: Vec<Link>,
    /// When the Sentinels last confirmed the master (with Sentinel only).
    last_master_check: Option<Instant>,
    names: Names,
    group: String,
    consumer: String,
    block_ms: u64,
    /// Alternates which queue is served first, so a busy one cannot starve
    /// the other.
    provision_first: bool,
    lease: Duration,
    last_reclaim: Option<Instant>,
    /// XAUTOCLAIM scan position per queue.
    cursors: PerQueue<String>,
}

/// What one read produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entries to run: new ones, and ones taken over from dead workers.
    pub deliveries: Vec<Delivery>,
    /// Pending entries that no longer exist in their stream (deleted or
    /// trimmed); nothing to run, only to report.
    pub vanished: Vec<Delivery>,
}

impl Reader {
    /// A reader for `queue`'s consumer, on a connection of its own; it
    /// moves `queue`'s links with it when the master moves.
    pub(super) async fn connect(queue: &Queue, lease: Duration) -> Result<Reader, QueueError> {
        let (conn, addr) = Self::open(&queue.endpoint, queue.block_ms).await?;
        Ok(Reader {
            endpoint: queue.endpoint.clone(),
            conn: Some(conn),
            addr,
            links: vec![queue.conn.clone(), queue.publisher.clone()],
            last_master_check: None,
            names: queue.names.clone(),
            group: queue.group.clone(),
            consumer: queue.consumer.clone(),
            block_ms: queue.block_ms,
            provision_first: false,
            lease,
            last_reclaim: None,
            cursors: PerQueue::new("0-0"),
        })
    }

    /// Dead workers' entries are looked for twice per lease.
    fn reclaim_every(&self) -> Duration {
        self.lease / 2
    }

    fn reclaim_due(&self) -> bool {
        self.last_reclaim
            .is_none_or(|at| at.elapsed() >= self.reclaim_every())
    }

    /// The reply to a `BLOCK` wait arrives only after the block time, so the
    /// response timeout must be longer (redis-rs' default of 500 ms would drop
    /// the reply).
    async fn open(
        endpoint: &Endpoint,
        block_ms: u64,
    ) -> Result<(MultiplexedConnection, String), QueueError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(
                Duration::from_millis(block_ms) + Duration::from_secs(10),
            ));
        endpoint.connect(&config).await
    }

    /// Replaces a connection that failed.
    pub async fn reconnect(&mut self) -> Result<(), QueueError> {
        let (conn, addr) = Self::open(&self.endpoint, self.block_ms).await?;
        self.conn = Some(conn);
        self.addr = addr;
        self.last_master_check = Some(Instant::now());
        crate::metrics::redis_reconnected();
        Ok(())
    }

    /// The connection, opened again if an abandoned wait closed it.
    async fn conn(&mut self) -> Result<&mut MultiplexedConnection, QueueError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let (conn, addr) = Self::open(&self.endpoint, self.block_ms).await?;
                self.addr = addr;
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// With Sentinel, once per [`MASTER_CHECK_EVERY`]: asks where the
    /// master is and, if it moved, moves the links and this reader there
    /// before anything is claimed on the old one.
    async fn follow_master(&mut self) -> Result<(), QueueError> {
        let due = self
            .last_master_check
            .is_none_or(|at| at.elapsed() >= MASTER_CHECK_EVERY);
        if !self.endpoint.follows_sentinels() || !due {
            return Ok(());
        }
        self.last_master_check = Some(Instant::now());
        let master = match self.endpoint.locate().await {
            Ok(located) => located.addr,
            // The server in use may well be fine: carry on with it.
            Err(e) => {
                tracing::warn!(error.message = %e, "asking the Sentinels for the Redis master failed");
                return Ok(());
            }
        };
        for link in &self.links {
            link.follow(&master).await;
        }
        if master != self.addr {
            tracing::info!(from = %self.addr, to = %master, "the reader moves to the master");
            self.reconnect().await?;
        }
        Ok(())
    }

    /// Up to `max` entries to run; empty after waiting (at most `block_ms`)
    /// with nothing new, or as soon as `cancel` fires. Once `cancel` has
    /// fired it starts no further claim and no wait: it returns what it
    /// claimed before.
    pub async fn next(
        &mut self,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<Batch, QueueError> {
        if cancel.is_cancelled() {
            return Ok(Batch::default());
        }
        self.follow_master().await?;
        let order = if self.provision_first {
            [JobKind::Provision, JobKind::Deploy]
        } else {
            JobKind::ALL
        };
        self.provision_first = !self.provision_first;

        let mut batch = Batch::default();
        if self.reclaim_due() {
            self.reclaim_all(order, max, &mut batch, cancel).await?;
        }
        // Checked before every claiming round trip: what was claimed before
        // the stop is returned (and run or handed back), nothing after it.
        if cancel.is_cancelled() {
            return Ok(batch);
        }
        // With the newest ids as of the take: anything added after them
        // wakes the wait below, anything before them was taken.
        let room = max - batch.deliveries.len();
        let newest = self.take(order, room, &mut batch).await?;
        if batch.deliveries.is_empty() && batch.vanished.is_empty() {
            self.wait(&newest, cancel).await?;
        }
        Ok(batch)
    }

    /// One round of take-overs, queue by queue, while there is room and
    /// the stop has not fired.
    async fn reclaim_all(
        &mut self,
        order: [JobKind; 2],
        max: usize,
        batch: &mut Batch,
        cancel: &CancellationToken,
    ) -> Result<(), QueueError> {
        for kind in order {
            let room = max - batch.deliveries.len();
            if cancel.is_cancelled() {
                return Ok(());
            }
            if room > 0 {
                self.reclaim(kind, room, batch).await?;
            }
        }
        // Slots to spare: the scan is through; otherwise look again as soon
        // as slots free up.
        if batch.deliveries.len() < max {
            self.last_reclaim = Some(Instant::now());
        }
        Ok(())
    }

    /// Waits for an entry newer than `newest`, until the next take-over
    /// round is due (at most `block_ms`), or the stop.
    async fn wait(
        &mut self,
        newest: &PerQueue<String>,
        cancel: &CancellationToken,
    ) -> Result<(), QueueError> {
        let until_reclaim = self.last_reclaim.map_or(Duration::ZERO, |at| {
            self.reclaim_every().saturating_sub(at.elapsed())
        });
        let block = Duration::from_millis(self.block_ms)
            .min(until_reclaim)
            .max(Duration::from_millis(1));
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                // Its XREAD BLOCK is still outstanding: nothing may be
                // sent behind it.
                self.conn = None;
            }
            waited = self.wait_for_new(newest, block) => waited?,
        }
        Ok(())
    }

    /// Takes over entries idle longer than the lease, with their delivery
    /// counts, and reports the ids Redis says were deleted meanwhile.
    async fn reclaim(
        &mut self,
        kind: JobKind,
        count: usize,
        batch: &mut Batch,
    ) -> Result<(), QueueError> {
        let stream = self.names.queue(kind);
        let reply = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(&self.cursors[kind])
            .arg("COUNT")
            .arg(count)
            .query_async::<StreamAutoClaimReply>(self.conn().await?)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                self.recreate_group(&stream).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.cursors[kind] = reply.next_stream_id;
        for id in reply.deleted_ids {
            tracing::warn!(stream, entry_id = %id, "pending entry vanished from its stream");
            batch.vanished.push(Delivery {
                kind,
                stream: stream.clone(),
                entry_id: id,
                payload: None,
                delivery_count: 0,
            });
        }
        if reply.claimed.is_empty() {
            return Ok(());
        }
        let counts = self.delivery_counts(&stream, &reply.claimed).await?;
        for (entry, count) in reply.claimed.into_iter().zip(counts) {
            tracing::info!(stream, entry_id = %entry.id, delivery = count, "took over an entry from a silent worker");
            batch.deliveries.push(delivery(kind, &stream, entry, count));
        }
        Ok(())
    }

    async fn delivery_counts(
        &mut self,
        stream: &str,
        entries: &[StreamId],
    ) -> Result<Vec<u32>, QueueError> {
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let replies: Vec<Vec<(String, String, u64, u64)>> =
            pipe.query_async(self.conn().await?).await?;
        Ok(replies
            .into_iter()
            .map(|reply| {
                reply.first().map_or(1, |(_, _, _, count)| {
                    u32::try_from(*count).unwrap_or(u32::MAX)
                })
            })
            .collect())
    }

    /// New entries for `room` slots, served in `order`, and the newest id
    /// of each queue (deploy, provision); one script, one round trip.
    async fn take(
        &mut self,
        order: [JobKind; 2],
        room: usize,
        batch: &mut Batch,
    ) -> Result<PerQueue<String>, QueueError> {
        let streams = order.map(|kind| self.names.queue(kind));
        let replies: Vec<(String, String, StreamRangeReply)> = scripts::TAKE
            .key(&streams[0])
            .key(&streams[1])
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(room)
            .invoke_async(self.conn().await?)
            .await?;
        let mut newest = PerQueue::new("0-0");
        for ((kind, stream), (id, state, taken)) in order.into_iter().zip(streams).zip(replies) {
            newest[kind] = id;
            if state == "nogroup" {
                // Redis restarted without persistence: the group is gone.
                self.recreate_group(&stream).await?;
                continue;
            }
            batch.deliveries.extend(
                taken
                    .ids
                    .into_iter()
                    .map(|entry| delivery(kind, &stream, entry, 1)),
            );
        }
        Ok(newest)
    }

    async fn recreate_group(&mut self, stream: &str) -> Result<(), QueueError> {
        tracing::warn!(stream, group = %self.group, "consumer group missing; recreating it");
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(self.conn().await?)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn wait_for_new(
        &mut self,
        newest: &PerQueue<String>,
        block: Duration,
    ) -> Result<(), QueueError> {
        let _: Option<redis::Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(JobKind::ALL.map(|kind| self.names.queue(kind)).as_slice())
            .arg(JobKind::ALL.map(|kind| newest[kind].as_str()).as_slice())
            .query_async(self.conn().await?)
            .await?;
        Ok(())
    }
}

/// One value per queue, indexed by its kind.
#[derive(Debug)]
struct PerQueue<T>([T; 2]);

impl PerQueue<String> {
    fn new(value: &str) -> PerQueue<String> {
        PerQueue([value.to_owned(), value.to_owned()])
    }
}

impl<T> std::ops::Index<JobKind> for PerQueue<T> {
    type Output = T;
    fn index(&self, kind: JobKind) -> &T {
        &self.0[slot(kind)]
    }
}

impl<T> std::ops::IndexMut<JobKind> for PerQueue<T> {
    fn index_mut(&mut self, kind: JobKind) -> &mut T {
        &mut self.0[slot(kind)]
    }
}

fn slot(kind: JobKind) -> usize {
    match kind {
        JobKind::Deploy => 0,
        JobKind::Provision => 1,
    }
}

/// A stream entry as the worker sees it.
pub(super) fn delivery(
    kind: JobKind,
    stream: &str,
    entry: StreamId,
    delivery_count: u32,
) -> Delivery {
    let payload = entry.map.get("payload").and_then(|value| match value {
        redis::Value::BulkString(bytes) => Some(bytes.clone()),
        redis::Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    });
    Delivery {
        kind,
        stream: stream.to_owned(),
        entry_id: entry.id,
        payload,
        delivery_count,
    }
}
