//! Live task progress out of a run.
//!
//! The `infra_events` callback plugin (shipped in `ansible/plugins/callback/`)
//! appends one JSON line per task start and task result to `events.jsonl` in
//! the run's private directory, a file the runner creates and names in
//! `INFRA_EVENTS_FILE`. While the playbook runs, [`EventTail`] reads the new
//! lines, keeps only the known fields, redacts each text with the job's
//! `Redactor` and hands the event to an [`EventSink`], which numbers it and
//! passes it on without ever waiting: when the reader is behind, the event is
//! dropped and counted. A regular file rather than a FIFO: the plugin's
//! writes never block and never fail for want of a reader.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::job::{EventKind, JobEvent};
use crate::secrets::Redactor;

/// The variable naming the events file in the child's environment.
pub(crate) const EVENTS_FILE_VAR: &str = "INFRA_EVENTS_FILE";
/// The variable naming the file the plugin writes the play's `set_stats`
/// data to (a JSON object), once, when the playbook ends.
pub(crate) const STATS_FILE_VAR: &str = "INFRA_STATS_FILE";
/// The plugin's name, for `ANSIBLE_CALLBACKS_ENABLED`.
pub(crate) const PLUGIN_NAME: &str = "infra_events";
/// Where the plugin lives, relative to `ansible.dir`.
pub(crate) const PLUGIN_DIR: &str = "plugins/callback";

/// A line longer than this is not an event of ours: skipped whole.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// The most one poll reads, so a flood cannot hold the run's loop.
const MAX_READ_PER_POLL: usize = 1024 * 1024;

/// Where a run's events go: numbered, never waited for.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<JobEvent>,
    counters: Arc<Counters>,
}

/// The receiving end of an [`EventSink`]; ends once every sink is dropped.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<JobEvent>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// The last `seq` handed out.
    seq: AtomicU64,
    dropped: AtomicU64,
}

/// A sink and its stream, buffering at most `capacity` events.
pub fn channel(capacity: usize) -> (EventSink, EventStream) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let counters = Arc::new(Counters::default());
    (
        EventSink {
            tx,
            counters: counters.clone(),
        },
        EventStream { rx, counters },
    )
}

impl EventSink {
    /// Numbers `event` and passes it on, or drops it (counted) when the
    /// buffer is full or nobody listens.
    pub(crate) fn send(&self, mut event: JobEvent) {
        event.seq = self.counters.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if self.tx.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The numbering of one channel, readable after its stream is gone.
#[derive(Debug, Clone)]
pub struct EventCounts(Arc<Counters>);

impl EventStream {
    /// The next event; `None` once every sink is gone and the buffer is empty.
    pub async fn recv(&mut self) -> Option<JobEvent> {
        self.rx.recv().await
    }

    /// The channel's numbering.
    pub fn counts(&self) -> EventCounts {
        EventCounts(self.counters.clone())
    }
}

impl EventCounts {
    /// The `seq` the next event (such as `job_finished`) should carry.
    pub fn next_seq(&self) -> u64 {
        self.0.seq.load(Ordering::Relaxed) + 1
    }

    /// How many events were numbered but dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// One line as the plugin writes it; anything else in it is ignored.
#[derive(Deserialize)]
struct PluginLine {
    event: String,
    play: Option<String>,
    task: Option<String>,
    host: Option<String>,
    changed: Option<bool>,
    message: Option<String>,
    #[serde(default)]
    ignored: bool,
}

/// Follows one run's events file.
pub(crate) struct EventTail {
    file: File,
    partial: Vec<u8>,
    /// Inside an overlong line: skip to its end.
    skipping: bool,
    sink: EventSink,
    redactor: Redactor,
}

impl EventTail {
    /// Follows `path` from its start.
    pub(crate) fn open(path: &Path, sink: EventSink, redactor: Redactor) -> io::Result<EventTail> {
        Ok(EventTail {
            file: File::open(path)?,
            partial: Vec::new(),
            skipping: false,
            sink,
            redactor,
        })
    }

    /// Reads what was appended since the last poll and sends its complete
    /// lines. A local file: the read does not wait on anything but the disk.
    pub(crate) fn poll(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        let mut read = 0;
        while read < MAX_READ_PER_POLL {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    read += n;
                    self.take(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error.message = %e, "reading the events file failed");
                    break;
                }
            }
        }
    }

    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.partial.extend_from_slice(&bytes[..at]);
                self.line(&self.partial);
            }
            self.skipping = false;
            self.partial.clear();
            bytes = &bytes[at + 1..];
        }
        if !self.skipping {
            self.partial.extend_from_slice(bytes);
            if self.partial.len() > MAX_LINE_BYTES {
                self.partial.clear();
                self.skipping = true;
            }
        }
    }

    fn line(&self, line: &[u8]) {
        match parse_line(line, &self.redactor) {
            Some(event) => self.sink.send(event),
            None => tracing::debug!(bytes = line.len(), "skipped a line of the events file"),
        }
    }
}

/// A plugin line as a redacted event (not yet numbered); `None` if it is not
/// one of ours.
fn parse_line(line: &[u8], redactor: &Redactor) -> Option<JobEvent> {
    let line: PluginLine = serde_json::from_slice(line).ok()?;
    let event = EventKind::task_event(&line.event)?;
    let redact = |text: Option<String>| text.map(|t| redactor.redact(&t));
    Some(JobEvent {
        play: redact(line.play),
        task: redact(line.task),
        host: redact(line.host),
        changed: line.changed,
        message: redact(line.message),
        ignored: line.ignored,
        ..JobEvent::new(event)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::io::Write;

    const SECRET: &str = "ghp_EventsSecretValue0123";

    fn tail_of(dir: &tempfile::TempDir) -> (File, EventTail, EventStream) {
        let path = dir.path().join("events.jsonl");
        let writer = File::create(&path).unwrap();
        let (sink, stream) = channel(16);
        let redactor = Redactor::new([&SecretString::from(SECRET)]);
        (
            writer,
            EventTail::open(&path, sink, redactor).unwrap(),
            stream,
        )
    }

    fn drain(stream: &mut EventStream) -> Vec<JobEvent> {
        let mut out = Vec::new();
        while let Ok(event) = stream.rx.try_recv() {
            out.push(event);
        }
        out
    }

    #[test]
    fn lines_become_numbered_events_as_they_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut tail, mut stream) = tail_of(&dir);
        writer
            .write_all(b"{\"event\":\"playbook_on_task_start\",\"play\":\"p\",\"task\":\"t\",\"host\":null,\"changed\":null}\n{\"event\":\"runner_on_ok\",")
            .unwrap();
        tail.poll();
        let first = drain(&mut stream);
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(
            (first[0].seq, first[0].event.as_str()),
            (1, "playbook_on_task_start")
        );

        writer
            .write_all(b"\"play\":\"p\",\"task\":\"t\",\"host\":\"h\",\"changed\":true}\n")
            .unwrap();
        tail.poll();
        let second = drain(&mut stream);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].seq, 2);
        assert_eq!(second[0].host.as_deref(), Some("h"));
        assert_eq!(second[0].changed, Some(true));
        assert_eq!(stream.counts().next_seq(), 3);
    }

    #[test]
    fn every_text_is_redacted_and_unknown_fields_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut tail, mut stream) = tail_of(&dir);
        let line = serde_json::json!({
            "event": "runner_on_failed", "play": format!("play {SECRET}"),
            "task": format!("task {SECRET}"), "host": "h", "changed": false,
            "message": format!("bad token {SECRET}"), "ignored": true,
            "args": {"token": SECRET},
        });
        writeln!(writer, "{line}").unwrap();
        tail.poll();
        let events = drain(&mut stream);
        assert_eq!(events.len(), 1);
        let json = events[0].to_json();
        assert!(!json.contains(SECRET), "{json}");
        assert!(json.contains("bad token ***"), "{json}");
        assert!(!json.contains("args"), "{json}");
        assert!(events[0].ignored);
    }

    #[test]
    fn foreign_and_overlong_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut tail, mut stream) = tail_of(&dir);
        writeln!(writer, "not json").unwrap();
        writeln!(writer, "{{\"event\":\"job_finished\"}}").unwrap();
        let long = "x".repeat(MAX_LINE_BYTES * 2);
        writeln!(writer, "{{\"event\":\"runner_on_ok\",\"task\":\"{long}\"}}").unwrap();
        writeln!(writer, "{{\"event\":\"runner_on_ok\",\"task\":\"short\"}}").unwrap();
        tail.poll();
        let events = drain(&mut stream);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].task.as_deref(), Some("short"));
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        let (sink, mut stream) = channel(2);
        for _ in 0..5 {
            sink.send(JobEvent::new(EventKind::RunnerOnOk));
        }
        let kept = drain(&mut stream);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(stream.counts().dropped(), 3);
        assert_eq!(stream.counts().next_seq(), 6);
    }
}
