//! The warm controller: one long-lived Python process that imported Ansible
//! once and forks a child per run (`ansible/controller/infra_controller.py`).
//! Here: starting it with the run-independent part of a run's environment,
//! the ready handshake, pings, its restart with backoff when it exits or
//! hangs, the fall back to `cold` for good when its self-check fails, and
//! its stop after the drain. A [`Controller`] is shared by every run; a run
//! takes the [`Live`] connection of the moment, or runs cold without one.

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::env;
use super::frame::{self, FrameReader, FromController, ToController};
use super::warm;
use crate::config::AnsibleSettings;
use crate::metrics;

/// The controller script, relative to the Ansible dir.
pub(crate) const SCRIPT: &str = "controller/infra_controller.py";

/// At the stop, how long the controller may take to exit after its
/// channel closed before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A controller that was ready this long had no start problem: the next
/// restart waits the shortest delay again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// How long to wait before starting controller number `attempt + 1` after
/// a failure: plain data, so it is tested without a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// 1 s, doubling, at most 30 s.
    pub(crate) const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    /// The pause after `failures` failures in a row (0: the first).
    pub(crate) fn delay_for(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// How long the controller and its runs are given, and the pause before a
/// restart: plain data, so tests pass shorter ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) backoff: Backoff,
    /// How long the controller may take to import Ansible and check itself.
    pub(crate) ready_within: Duration,
    /// How often a ping is sent.
    pub(crate) ping_every: Duration,
    /// A ping unanswered this long means the controller hangs.
    pub(crate) pong_within: Duration,
    /// How long a run waits on the controller.
    pub(crate) run: warm::Deadlines,
}

impl Timing {
    /// 30 s to be ready, a ping every 5 s answered within 10 s, the
    /// default backoff and run deadlines.
    pub(crate) const DEFAULT: Timing = Timing {
        backoff: Backoff::DEFAULT,
        ready_within: Duration::from_secs(30),
        ping_every: Duration::from_secs(5),
        pong_within: Duration::from_secs(10),
        run: warm::Deadlines::DEFAULT,
    };
}

/// A connection to a ready controller: what a run needs to hand it a run.
#[derive(Clone)]
pub(crate) struct Live {
    /// The controller's pid.
    pub(crate) pid: u32,
    /// The channel's write side; the lock keeps frames whole.
    channel: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// Cancelled by a run that saw the controller hang: it is killed.
    hung: CancellationToken,
    /// How long a run waits on it.
    pub(crate) deadlines: warm::Deadlines,
}

impl Live {
    /// Sends one frame, `fds` attached.
    pub(crate) async fn send(
        &self,
        message: &ToController<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let bytes = frame::encode(message);
        let channel = self.channel.lock().await;
        frame::send(channel.as_ref(), &bytes, fds).await
    }

    /// A run got no answer in time: the controller is killed (alone, not
    /// its runs) and replaced.
    pub(crate) fn declare_hung(&self) {
        self.hung.cancel();
    }
}

/// Where the controller stands, as runs see it.
enum State {
    /// Importing Ansible: a run waits for it (see [`Controller::ready`]).
    Starting,
    /// Waiting to restart after a loss or a failed start: runs go cold.
    Down,
    Ready(Live),
    /// Its self-check failed (or it cannot start at all): cold for good.
    Unusable,
    /// Stopped after the drain.
    Stopped,
}

/// What the controller task shares with the runs.
struct Shared {
    state: Mutex<State>,
    /// Told of every change of `state`.
    changed: tokio::sync::Notify,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Controllers started after the first (the metric is process-wide).
    restarts: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn set(&self, state: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_waiters();
    }
}

/// The warm controller of one runner; clones share it. The last clone
/// dropped stops it.
#[derive(Clone)]
pub(crate) struct Controller {
    shared: Arc<Shared>,
    _stop_on_drop: Arc<DropGuard>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("pid", &self.pid())
            .finish()
    }
}

/// How to start one controller process.
#[derive(Debug, Clone)]
struct Spec {
    python: String,
    script: PathBuf,
    ansible_dir: PathBuf,
    env: env::EnvMap,
}

impl Controller {
    /// Starts the controller task (inside a tokio runtime) for `settings`,
    /// with the run-independent part of a run's environment.
    pub(crate) fn start(
        settings: &AnsibleSettings,
        worker_env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Controller {
        Controller::start_with(settings, worker_env, Timing::DEFAULT)
    }

    /// [`Controller::start`] with `timing` in place of the production one.
    pub(crate) fn start_with(
        settings: &AnsibleSettings,
        worker_env: impl IntoIterator<Item = (OsString, OsString)>,
        timing: Timing,
    ) -> Controller {
        let ansible_dir =
            std::path::absolute(&settings.dir).unwrap_or_else(|_| settings.dir.clone());
        let ansible_cfg = Some(ansible_dir.join("ansible.cfg")).filter(|cfg| cfg.is_file());
        let spec = Spec {
            python: settings.python.clone(),
            script: ansible_dir.join(SCRIPT),
            env: env::shared_env(worker_env, ansible_cfg.as_deref()),
            ansible_dir,
        };
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Starting),
            changed: tokio::sync::Notify::new(),
            stop: stop.clone(),
            task: Mutex::new(None),
            restarts: 0.into(),
        });
        let task = tokio::spawn(keep_running(shared.clone(), spec, timing));
        *shared.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Controller {
            shared,
            _stop_on_drop: Arc::new(stop.drop_guard()),
        }
    }

    /// The connection to a ready controller; `None` while it is starting
    /// or restarting, for good after a failed self-check or the stop.
    pub(crate) fn live(&self) -> Option<Live> {
        match &*self.shared.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Ready(live) => Some(live.clone()),
            _ => None,
        }
    }

    /// The connection to a ready controller, waiting up to `within` while
    /// one is starting; `None` when it is not ready by then, restarting
    /// after a loss, unusable or stopped. Waiting is no slower than a cold
    /// run, which pays the same import the controller is paying, and the
    /// first jobs of a new worker then run warm too.
    pub(crate) async fn ready(&self, within: Duration) -> Option<Live> {
        let deadline = Instant::now() + within;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: no change is missed.
            changed.as_mut().enable();
            match &*self.shared.state.lock().unwrap_or_else(|p| p.into_inner()) {
                State::Ready(live) => return Some(live.clone()),
                State::Starting => {}
                State::Down | State::Unusable | State::Stopped => return None,
            }
            tokio::time::timeout_at(deadline, changed).await.ok()?;
        }
    }

    /// The ready controller's pid.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.live().map(|live| live.pid)
    }

    /// How many controllers were started after the first.
    #[cfg(test)]
    pub(crate) fn restarts(&self) -> u64 {
        self.shared
            .restarts
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True once the controller will never be used (failed self-check).
    #[cfg(test)]
    pub(crate) fn is_unusable(&self) -> bool {
        matches!(
            *self.shared.state.lock().unwrap_or_else(|p| p.into_inner()),
            State::Unusable
        )
    }

    /// Closes the channel (the controller exits at once; its runs go on,
    /// supervised by their own futures), kills it if it does not, and
    /// ends the task. For the end of the drain.
    pub(crate) async fn stop(&self) {
        self.shared.stop.cancel();
        let task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(error.message = %e, "the controller task failed");
        }
    }
}

/// Why one controller process ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("the worker is stopping")]
    Stopped,
    #[error("the controller exited ({0})")]
    Exited(ExitStatus),
    #[error("the controller stopped answering")]
    Hung,
    #[error(transparent)]
    Channel(#[from] frame::FrameError),
    #[error("the controller closed its channel")]
    Closed,
}

/// Why a controller did not become ready.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// It will not work however often it is started: run cold for good.
    #[error("{0}")]
    Unusable(String),
    /// This one did not come up; the next may.
    #[error("{0}")]
    Failed(String),
    #[error("the worker is stopping")]
    Stopped,
}

/// The controller task: start, watch, restart with backoff, until the stop
/// or a failed self-check.
async fn keep_running(shared: Arc<Shared>, spec: Spec, timing: Timing) {
    let mut failures = 0;
    let mut started_before = false;
    loop {
        if started_before {
            shared
                .restarts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            metrics::controller_restarted();
        }
        started_before = true;
        shared.set(State::Starting);
        match start_one(&spec, &timing, &shared.stop).await {
            Ok((child, reader, live)) => {
                let ready_at = Instant::now();
                shared.set(State::Ready(live.clone()));
                let ended = watch(child, reader, &live, &timing, &shared.stop).await;
                shared.set(State::Down);
                if matches!(ended, Ended::Stopped) {
                    break;
                }
                tracing::warn!(pid = live.pid, error.message = %ended, "warm controller lost; runs go cold until it is back");
                if ready_at.elapsed() >= HEALTHY_AFTER {
                    failures = 0;
                }
            }
            Err(StartError::Stopped) => break,
            Err(StartError::Unusable(why)) => {
                tracing::warn!(error.message = %why, "the warm controller cannot be used; every playbook runs cold");
                shared.set(State::Unusable);
                return;
            }
            Err(StartError::Failed(why)) => {
                shared.set(State::Down);
                tracing::warn!(error.message = %why, "the warm controller did not start; runs go cold until it does");
            }
        }
        let delay = timing.backoff.delay_for(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    shared.set(State::Stopped);
}

/// Starts one controller and waits for its `ready`.
async fn start_one(
    spec: &Spec,
    timing: &Timing,
    stop: &CancellationToken,
) -> Result<(Child, FrameReader<OwnedReadHalf>, Live), StartError> {
    if !spec.script.is_file() {
        return Err(StartError::Unusable(format!(
            "{} is missing",
            spec.script.display()
        )));
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| StartError::Failed(format!("socketpair: {e}")))?;
    let mut child = Command::new(&spec.python)
        .arg(&spec.script)
        .current_dir(&spec.ansible_dir)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a signal to the worker's group is not its own.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StartError::Unusable(format!("{} not found: {e}", spec.python))
            }
            _ => StartError::Failed(format!("starting {}: {e}", spec.python)),
        })?;
    forward_output(&mut child);
    ours.set_nonblocking(true)
        .map_err(|e| StartError::Failed(e.to_string()))?;
    let ours = UnixStream::from_std(ours).map_err(|e| StartError::Failed(e.to_string()))?;
    let (read, write) = ours.into_split();
    let mut reader = FrameReader::new(read);
    let first = tokio::select! {
        biased;
        () = stop.cancelled() => return Err(StartError::Stopped),
        first = tokio::time::timeout(timing.ready_within, reader.next()) => first,
    };
    match first {
        Ok(Ok(Some(FromController::Ready {
            pid,
            ansible_version,
            python,
            preloaded,
        }))) => {
            tracing::info!(
                pid,
                ansible_version,
                python,
                preloaded,
                "warm controller ready"
            );
            let live = Live {
                pid,
                channel: Arc::new(tokio::sync::Mutex::new(write)),
                hung: CancellationToken::new(),
                deadlines: timing.run,
            };
            Ok((child, reader, live))
        }
        Ok(Ok(Some(FromController::Failed { error }))) => Err(StartError::Unusable(format!(
            "its self-check failed: {error}"
        ))),
        Ok(Ok(Some(other))) => Err(StartError::Failed(format!(
            "it spoke before it was ready: {other:?}"
        ))),
        Ok(Ok(None)) => Err(StartError::Failed(format!(
            "it exited before it was ready ({})",
            exit_of(&mut child).await
        ))),
        Ok(Err(e)) => Err(StartError::Failed(e.to_string())),
        Err(_) => Err(StartError::Failed(format!(
            "not ready within {} s",
            timing.ready_within.as_secs()
        ))),
    }
}

/// The child's exit status once its channel closed, briefly waited for.
async fn exit_of(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        _ => "still running".to_owned(),
    }
}

/// Logs the controller's stderr at warn (a traceback is worth seeing) and
/// its stdout, unused after the ready frame, at debug.
fn forward_output(child: &mut Child) {
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_lines(stderr, true));
    }
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(log_lines(stdout, false));
    }
}

async fn log_lines(pipe: impl AsyncRead + Unpin, warn: bool) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if warn {
            tracing::warn!(line, "warm controller stderr");
        } else {
            tracing::debug!(line, "warm controller stdout");
        }
    }
}

/// Watches a ready controller until it exits, hangs, breaks its channel
/// or the worker stops; then it is gone (exited or killed, and reaped).
async fn watch(
    mut child: Child,
    mut reader: FrameReader<OwnedReadHalf>,
    live: &Live,
    timing: &Timing,
    stop: &CancellationToken,
) -> Ended {
    let ended = watch_until_ended(&mut child, &mut reader, live, timing, stop).await;
    if matches!(ended, Ended::Stopped) {
        // EOF on its channel: it exits at once; its runs go on.
        let _ = live.channel.lock().await.shutdown().await;
        if tokio::time::timeout(EXIT_TIMEOUT, child.wait())
            .await
            .is_ok()
        {
            return ended;
        }
        tracing::warn!(
            pid = live.pid,
            "the warm controller did not exit at the stop; killing it"
        );
    }
    // SIGKILL to the controller alone: its runs are in sessions of their own.
    let _ = child.start_kill();
    let _ = child.wait().await;
    ended
}

async fn watch_until_ended(
    child: &mut Child,
    reader: &mut FrameReader<OwnedReadHalf>,
    live: &Live,
    timing: &Timing,
    stop: &CancellationToken,
) -> Ended {
    let mut seq = 0u64;
    let mut unanswered: Option<(u64, Instant)> = None;
    let mut tick = tokio::time::interval(timing.ping_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ended::Stopped,
            () = live.hung.cancelled() => return Ended::Hung,
            status = child.wait() => {
                return match status {
                    Ok(status) => Ended::Exited(status),
                    Err(e) => Ended::Channel(e.into()),
                };
            }
            message = reader.next() => match message {
                Ok(Some(FromController::Pong { seq: answered, rss_kb })) => {
                    if unanswered.is_some_and(|(sent, _)| sent == answered) {
                        unanswered = None;
                    }
                    metrics::set_controller_rss(rss_kb.saturating_mul(1024));
                }
                Ok(Some(other)) => tracing::warn!(?other, "unexpected frame from the warm controller; ignored"),
                Ok(None) => return Ended::Closed,
                Err(e) => return Ended::Channel(e),
            },
            _ = tick.tick() => {
                if let Some((_, sent_at)) = unanswered {
                    if sent_at.elapsed() >= timing.pong_within {
                        return Ended::Hung;
                    }
                    continue;
                }
                seq += 1;
                // A controller that does not even take a ping hangs too.
                let ping = ToController::Ping { seq };
                match tokio::time::timeout(timing.pong_within, live.send(&ping, &[])).await {
                    Ok(Ok(())) => unanswered = Some((seq, Instant::now())),
                    Ok(Err(e)) => return Ended::Channel(e.into()),
                    Err(_) => return Ended::Hung,
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_one_second_to_thirty() {
        let b = Backoff::DEFAULT;
        let delays: Vec<u64> = (0..7).map(|n| b.delay_for(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay_for(u32::MAX), Duration::from_secs(30));
    }
}
