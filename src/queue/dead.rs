//! The dead-letter stream `infra:dead` from the operator's side: reading the
//! letters `Queue::finish` wrote, and replaying one onto the queue it came
//! from. Payloads can be 10 MB, so listing trims them inside Redis.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{Names, QueueError, scripts};
use crate::config::RedisSettings;
use crate::job::JobKind;

/// One entry of `infra:dead`, as `Queue::finish` wrote it. A field the
/// entry lacks (or, for `request_id`, left empty) is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// The dead-letter stream's entry id.
    pub id: String,
    pub reason: Option<String>,
    /// The (prefixed) queue the entry was read from.
    pub stream: Option<String>,
    /// The entry's id in that queue.
    pub entry_id: Option<String>,
    pub request_id: Option<String>,
    /// The consumer that dead-lettered it.
    pub worker: Option<String>,
    /// RFC 3339, milliseconds, UTC.
    pub dead_at: Option<String>,
    /// The payload's first bytes, up to the cap `list` was given.
    pub payload: Option<Vec<u8>>,
    /// The whole payload's length in bytes.
    pub payload_size: Option<u64>,
}

impl DeadLetterEntry {
    /// True when `payload` holds less than the whole payload.
    pub fn payload_truncated(&self) -> bool {
        match (&self.payload, self.payload_size) {
            (Some(bytes), Some(size)) => (bytes.len() as u64) < size,
            _ => false,
        }
    }
}

/// A page of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    /// Oldest first.
    pub entries: Vec<DeadLetterEntry>,
    /// How many letters the stream holds in all.
    pub total: u64,
}

/// A dead letter put back on its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The (prefixed) queue it went to.
    pub stream: String,
    /// Its new entry id there.
    pub entry_id: String,
}

/// Why a replay did not happen; every variant but `Queue` is the
/// operator's to fix and changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("`{0}` is not a stream entry id (expected <milliseconds>-<sequence>)")]
    BadId(String),
    #[error("no dead letter with id `{0}`")]
    Unknown(String),
    #[error("dead letter `{0}` has no payload to replay")]
    NoPayload(String),
    #[error(
        "dead letter `{id}` came from `{stream}`, which is not a job queue of this configuration"
    )]
    NotAQueue { id: String, stream: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Reads and replays dead letters on a connection of its own; needs no
/// consumer group and creates none.
pub struct DeadLetters {
    conn: MultiplexedConnection,
    names: Names,
}

impl DeadLetters {
    /// Connects to `redis.url`; names get `redis.key_prefix`.
    pub async fn connect(settings: &RedisSettings) -> Result<DeadLetters, QueueError> {
        // A replay moves up to a 10 MB payload; the default 500 ms is short.
        let (conn, names) = super::connect_plain(settings, Duration::from_secs(30)).await?;
        Ok(DeadLetters { conn, names })
    }

    /// The names in use (prefix applied).
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The newest `count` letters, oldest first, each payload cut to its
    /// first `payload_cap` bytes (`payload_size` keeps the real length).
    pub async fn list(
        &self,
        count: usize,
        payload_cap: usize,
    ) -> Result<DeadLetterPage, QueueError> {
        type Raw = (u64, Vec<(String, Vec<Vec<u8>>, i64)>);
        let mut conn = self.conn.clone();
        let (total, raw): Raw = scripts::DEAD_LIST
            .key(self.names.dead_letters())
            .arg(count)
            .arg(payload_cap)
            .invoke_async(&mut conn)
            .await?;
        let mut entries: Vec<DeadLetterEntry> = raw.into_iter().map(entry).collect();
        entries.reverse();
        Ok(DeadLetterPage { entries, total })
    }

    /// Moves dead letter `id` back onto the queue it came from: its exact
    /// payload bytes as a new entry's `payload`, and the letter deleted, in
    /// one atomic step. Refuses an unknown id, a letter without payload and
    /// one whose stream is not a job queue under this prefix.
    pub async fn replay(&self, id: &str) -> Result<Replayed, ReplayError> {
        if !is_entry_id(id) {
            return Err(ReplayError::BadId(id.to_owned()));
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = scripts::DEAD_REPLAY
            .key(self.names.dead_letters())
            .key(self.names.queue(JobKind::Deploy))
            .key(self.names.queue(JobKind::Provision))
            .arg(id)
            .invoke_async(&mut conn)
            .await
            .map_err(QueueError::from)?;
        match reply.as_slice() {
            [status, stream, entry_id] if status == "replayed" => Ok(Replayed {
                stream: stream.clone(),
                entry_id: entry_id.clone(),
            }),
            [status] if status == "unknown" => Err(ReplayError::Unknown(id.to_owned())),
            [status] if status == "no_payload" => Err(ReplayError::NoPayload(id.to_owned())),
            [status, stream] if status == "not_a_queue" => Err(ReplayError::NotAQueue {
                id: id.to_owned(),
                stream: stream.clone(),
            }),
            other => unreachable!("the replay script answered {other:?}"),
        }
    }
}

/// A letter from the list script's `{id, fields, payload_size}`.
fn entry((id, flat, size): (String, Vec<Vec<u8>>, i64)) -> DeadLetterEntry {
    let mut letter = DeadLetterEntry {
        id,
        reason: None,
        stream: None,
        entry_id: None,
        request_id: None,
        worker: None,
        dead_at: None,
        payload: None,
        payload_size: u64::try_from(size).ok(),
    };
    let mut flat = flat.into_iter();
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        let text = || Some(String::from_utf8_lossy(&value).into_owned());
        match name.as_slice() {
            b"reason" => letter.reason = text(),
            b"stream" => letter.stream = text(),
            b"entry_id" => letter.entry_id = text(),
            b"request_id" => letter.request_id = text().filter(|id| !id.is_empty()),
            b"worker" => letter.worker = text(),
            b"dead_at" => letter.dead_at = text(),
            b"payload" => letter.payload = Some(value),
            _ => {}
        }
    }
    letter
}

/// `<milliseconds>-<sequence>`: a bare `<milliseconds>` would make
/// `XRANGE id id` match every entry of that millisecond.
fn is_entry_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    id.split_once('-')
        .is_some_and(|(ms, seq)| digits(ms) && digits(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_entry_ids_are_accepted() {
        assert!(is_entry_id("1700000000000-0"));
        assert!(is_entry_id("0-1"));
        assert!(!is_entry_id("1700000000000"));
        assert!(!is_entry_id("-"));
        assert!(!is_entry_id("+"));
        assert!(!is_entry_id("1-2-3"));
        assert!(!is_entry_id("abc-1"));
        assert!(!is_entry_id(""));
    }

    #[test]
    fn a_letter_keeps_its_fields_and_an_empty_request_id_is_none() {
        let flat = [
            ("reason", "port: must be 1-65535"),
            ("stream", "t:ansible:deploy:queue"),
            ("entry_id", "5-0"),
            ("request_id", ""),
            ("worker", "w-1"),
            ("dead_at", "2026-01-01T00:00:00.000Z"),
            ("payload", "{\"port\""),
        ]
        .iter()
        .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.as_bytes().to_vec()])
        .collect();
        let letter = entry(("9-0".to_owned(), flat, 10));
        assert_eq!(letter.id, "9-0");
        assert_eq!(letter.reason.as_deref(), Some("port: must be 1-65535"));
        assert_eq!(letter.stream.as_deref(), Some("t:ansible:deploy:queue"));
        assert_eq!(letter.request_id, None);
        assert_eq!(letter.payload.as_deref(), Some(&b"{\"port\""[..]));
        assert_eq!(letter.payload_size, Some(10));
        assert!(letter.payload_truncated());
    }

    #[test]
    fn a_letter_without_payload_has_no_size_and_is_not_truncated() {
        let letter = entry(("9-0".to_owned(), Vec::new(), -1));
        assert_eq!(letter.payload, None);
        assert_eq!(letter.payload_size, None);
        assert!(!letter.payload_truncated());
    }
}
