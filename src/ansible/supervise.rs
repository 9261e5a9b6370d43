//! Supervising a running playbook: its two pipes read concurrently into the
//! output tail and the recap scanner, its events file polled, its exit
//! waited for, and its timeout enforced (the steps of the stop are in
//! `stop`).

use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use super::events::EventTail;
use super::launch::{Launched, Pipe};
use super::output::{LineReader, OutputTail, TAIL_BYTES};
use super::recap::RecapScanner;
use super::run::RunError;
use super::stop::Phase;
use super::tree::{self, RunTree};

/// After the child exits, how long its pipes may stay open before we stop
/// reading (a process that left the group could hold them forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the events file is read while the playbook runs.
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// Waits for the child while reading its output. At `timeout`: collects the
/// run's processes, sends them and the group SIGTERM, and waits until all are
/// gone or `kill_grace` passed; then collects again and sends SIGKILL.
/// Returns the exit status and whether the timeout struck.
pub(super) async fn supervise(
    child: &mut Launched,
    output: &mut Output,
    pgid: i32,
    tree: &mut RunTree,
    timeout: Duration,
    kill_grace: Duration,
) -> Result<(ExitStatus, bool), RunError> {
    let mut phase = Phase::Running;
    let mut status = None;
    let mut events_tick = tokio::time::interval(EVENTS_POLL);
    events_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let alarm = tokio::time::sleep(timeout);
    tokio::pin!(alarm);
    loop {
        if let Some(status) = status {
            match phase {
                Phase::Running => return Ok((status, false)),
                Phase::Terminating if !tree.all_gone() => {}
                Phase::Terminating | Phase::Killed => return Ok((status, true)),
            }
        }
        tokio::select! {
            chunk = output.stdout.next_line(), if !output.stdout_done => output.take(chunk, Stream::Stdout),
            chunk = output.stderr.next_line(), if !output.stderr_done => output.take(chunk, Stream::Stderr),
            exited = child.wait(), if status.is_none() => status = Some(exited.map_err(RunError::Wait)?),
            _ = events_tick.tick(), if output.events.is_some() => output.poll_events(),
            // The playbook exited within its grace: look again whether its
            // other processes did too.
            () = tokio::time::sleep(tree::POLL), if status.is_some() => {}
            () = &mut alarm, if phase != Phase::Killed => {
                phase = phase.escalate(pgid, tree, status.is_none(), kill_grace);
                if phase == Phase::Terminating {
                    alarm.as_mut().reset(Instant::now() + kill_grace);
                }
            }
        }
    }
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Both pipes and what their lines feed (the tail and the recap scanner),
/// and the events file when progress is followed.
pub(super) struct Output {
    stdout: LineReader<Pipe>,
    stderr: LineReader<Pipe>,
    stdout_done: bool,
    stderr_done: bool,
    /// The last [`TAIL_BYTES`] of both pipes, raw until the end.
    pub(super) tail: OutputTail,
    /// The recap and the first failure, followed line by line.
    pub(super) scanner: RecapScanner,
    events: Option<EventTail>,
}

impl Output {
    /// Takes the child's pipes. `margin`: the longest secret needle, kept
    /// beyond the tail until redaction.
    pub(super) fn new(child: &mut Launched, margin: usize, events: Option<EventTail>) -> Output {
        let (stdout, stderr) = child.take_pipes();
        Output {
            stdout: LineReader::new(stdout),
            stderr: LineReader::new(stderr),
            stdout_done: false,
            stderr_done: false,
            tail: OutputTail::new(TAIL_BYTES, margin),
            scanner: RecapScanner::new(),
            events,
        }
    }

    /// Hands on the progress events written since the last look.
    pub(super) fn poll_events(&mut self) {
        if let Some(events) = &mut self.events {
            events.poll();
        }
    }

    /// Feeds one chunk to the tail and the scanner; `None` closes `stream`.
    fn take(&mut self, chunk: Option<Vec<u8>>, stream: Stream) {
        let Some(chunk) = chunk else {
            match stream {
                Stream::Stdout => self.stdout_done = true,
                Stream::Stderr => self.stderr_done = true,
            }
            return;
        };
        let text = String::from_utf8_lossy(&chunk);
        self.tail.push(&text);
        self.scanner
            .push_line(text.trim_end_matches('\n').trim_end_matches('\r'));
    }

    /// Reads what is left in the pipes, for at most [`DRAIN_TIMEOUT`].
    pub(super) async fn drain(&mut self) {
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while !(self.stdout_done && self.stderr_done) {
                tokio::select! {
                    chunk = self.stdout.next_line(), if !self.stdout_done => self.take(chunk, Stream::Stdout),
                    chunk = self.stderr.next_line(), if !self.stderr_done => self.take(chunk, Stream::Stderr),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("playbook output still open after exit; a process left its group");
        }
    }
}
