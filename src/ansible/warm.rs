//! One run forked by the warm controller: its three pipes (stdout, stderr,
//! status) made here and handed over with the run's frame; the `pid` line
//! that makes it a run of ours; its exit seen through a pidfd (it is not
//! our child while the controller lives) and its code from the status
//! pipe's `exit` line. Whatever goes wrong before the `pid` line is a
//! [`NotWarm`]: the run goes cold and nothing is lost.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::controller::Live;
use super::frame::ToController;

/// How long a run waits on the controller: plain data, so tests pass
/// shorter ones (through the controller's `Timing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// How long the controller may take to fork a run (its `pid` line).
    pub(crate) pid: Duration,
    /// After a hung controller was killed, how long its fork may still take
    /// to say `pid` (or everyone to close the status pipe).
    pub(crate) after_kill: Duration,
}

impl Deadlines {
    /// 10 s for the fork, 30 s after a kill.
    pub(crate) const DEFAULT: Deadlines = Deadlines {
        pid: Duration::from_secs(10),
        after_kill: Duration::from_secs(30),
    };
}

/// The longest status line: `pid`, `exit` and `error` lines are short.
const MAX_STATUS_LINE: usize = 4096;

/// What the controller is asked to run: the cold run's argv and
/// environment, as the design's JSON wants them (UTF-8).
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) id: &'a str,
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) cwd: &'a str,
}

/// Why a run did not start warm; it then starts cold.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotWarm {
    #[error("making the run's pipes: {0}")]
    Pipes(#[source] io::Error),
    #[error("the controller could not fork the run: {0}")]
    Refused(String),
    #[error("the status pipe closed before a pid: no run child exists")]
    NoChild,
    #[error("the controller hung and no run child appeared")]
    Hung,
    #[error("unexpected status from the controller: {0:?}")]
    Garbled(String),
    #[error("reading the status pipe: {0}")]
    Status(#[source] io::Error),
}

/// One line of the status pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatusLine {
    /// The forked run's pid (its process group and session id too).
    Pid(i32),
    /// Its exit code, written just before it exits.
    Exit(i32),
    /// The controller's: fork failed.
    Error(String),
}

impl StatusLine {
    /// `pid N`, `exit N` (0..=255) or `error <message>`; else `None`.
    pub(crate) fn parse(line: &str) -> Option<StatusLine> {
        let (word, rest) = line.split_once(' ')?;
        match word {
            "pid" => rest.parse().ok().filter(|&p| p > 0).map(StatusLine::Pid),
            "exit" => rest
                .parse()
                .ok()
                .filter(|c| (0..=255).contains(c))
                .map(StatusLine::Exit),
            "error" => Some(StatusLine::Error(rest.to_owned())),
            _ => None,
        }
    }
}

/// The exit status a cold run would have shown: `exit N` from the status
/// lines, else killed by a signal.
pub(crate) fn exit_status(lines: &[StatusLine]) -> ExitStatus {
    let code = lines.iter().rev().find_map(|line| match line {
        StatusLine::Exit(code) => Some(*code),
        _ => None,
    });
    match code {
        Some(code) => ExitStatus::from_raw(code << 8),
        None => ExitStatus::from_raw(libc::SIGKILL),
    }
}

/// A running warm run; dropping it unexited SIGKILLs it (as tokio's
/// `kill_on_drop` does for a cold one).
#[derive(Debug)]
pub(crate) struct WarmChild {
    pid: i32,
    /// Readable once the run exited, whoever its parent; `None` when it had
    /// already exited and been reaped by the time we looked.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: StatusPipe,
    exit: Option<ExitStatus>,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
}

impl WarmChild {
    /// The run's pid, which is also its process group's.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the run's exit; cancel-safe.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        if let Some(pidfd) = &self.pidfd {
            // Not cleared: an exited process's pidfd stays readable.
            let _exited = pidfd.readable().await?;
        }
        // The `exit` line was written before the exit: it is in the pipe.
        let status = exit_status(&self.status.lines_now());
        self.exit = Some(status);
        Ok(status)
    }
}

impl Drop for WarmChild {
    fn drop(&mut self) {
        if self.exit.is_none()
            && let Some(pidfd) = &self.pidfd
        {
            // The pidfd names this very process, even if its pid was reused.
            let _ = pidfd_send_signal(pidfd.get_ref(), libc::SIGKILL);
        }
    }
}

/// Hands the run to the controller and waits for its `pid` line.
pub(crate) async fn start(live: &Live, request: &Request<'_>) -> Result<WarmChild, NotWarm> {
    let (stdout_rx, stdout_tx) = pipe_cloexec().map_err(NotWarm::Pipes)?;
    let (stderr_rx, stderr_tx) = pipe_cloexec().map_err(NotWarm::Pipes)?;
    let (status_rx, status_tx) = pipe_cloexec().map_err(NotWarm::Pipes)?;
    let message = ToController::Run {
        id: request.id,
        argv: request.argv,
        env: request.env,
        cwd: request.cwd,
    };
    let fds = [stdout_tx.as_fd(), stderr_tx.as_fd(), status_tx.as_fd()];
    let deadlines = live.deadlines;
    let sent = tokio::time::timeout(deadlines.pid, live.send(&message, &fds)).await;
    // Ours closed now: only the controller and its fork hold them, so EOF
    // on status means no run child exists.
    drop((stdout_tx, stderr_tx, status_tx));
    let mut status = StatusPipe::new(status_rx).map_err(NotWarm::Status)?;
    let first = match sent {
        Ok(Ok(())) => first_line(&mut status, live).await?,
        Ok(Err(e)) => {
            // A broken channel: the frame may be half out; whatever holds
            // the fds now decides.
            tracing::warn!(error.message = %e, "sending a run to the warm controller failed");
            after_kill(&mut status, deadlines).await?
        }
        Err(_) => {
            live.declare_hung();
            after_kill(&mut status, deadlines).await?
        }
    };
    let pid = match first {
        StatusLine::Pid(pid) => pid,
        StatusLine::Error(message) => return Err(NotWarm::Refused(message)),
        StatusLine::Exit(_) => return Err(NotWarm::Garbled("exit before pid".into())),
    };
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => Some(watch_exit(fd).map_err(NotWarm::Status)?),
        // Exited and reaped already: its `exit` line tells the rest.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
        Err(e) => return Err(NotWarm::Status(e)),
    };
    Ok(WarmChild {
        pid,
        pidfd,
        status,
        exit: None,
        stdout: Some(pipe::Receiver::from_owned_fd(stdout_rx).map_err(NotWarm::Status)?),
        stderr: Some(pipe::Receiver::from_owned_fd(stderr_rx).map_err(NotWarm::Status)?),
    })
}

/// The first status line within the `pid` deadline; past it the controller
/// hangs: it is killed, and the run's fate read after that.
async fn first_line(status: &mut StatusPipe, live: &Live) -> Result<StatusLine, NotWarm> {
    match tokio::time::timeout(live.deadlines.pid, status.next_line()).await {
        Ok(line) => parse_first(line),
        Err(_) => {
            tracing::warn!(
                pid = live.pid,
                "the warm controller did not fork a run in time; killing it"
            );
            live.declare_hung();
            after_kill(status, live.deadlines).await
        }
    }
}

/// After the controller was killed (or its channel broke): a `pid` line
/// if it had forked the run, EOF if not.
async fn after_kill(status: &mut StatusPipe, deadlines: Deadlines) -> Result<StatusLine, NotWarm> {
    match tokio::time::timeout(deadlines.after_kill, status.next_line()).await {
        Ok(line) => parse_first(line),
        Err(_) => Err(NotWarm::Hung),
    }
}

fn parse_first(line: io::Result<Option<String>>) -> Result<StatusLine, NotWarm> {
    match line.map_err(NotWarm::Status)? {
        None => Err(NotWarm::NoChild),
        Some(line) => StatusLine::parse(&line).ok_or(NotWarm::Garbled(line)),
    }
}

/// The read end of the status pipe, split into lines.
#[derive(Debug)]
struct StatusPipe {
    rx: pipe::Receiver,
    buf: Vec<u8>,
    eof: bool,
}

impl StatusPipe {
    fn new(fd: OwnedFd) -> io::Result<StatusPipe> {
        Ok(StatusPipe {
            rx: pipe::Receiver::from_owned_fd(fd)?,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// The next whole line, without its `\n`; `None` at EOF.
    async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
            if self.eof {
                return Ok(None);
            }
            self.rx.readable().await?;
            self.read_available()?;
        }
    }

    /// The lines already written, without waiting (the run has exited; a
    /// process it left may still hold the pipe open).
    fn lines_now(&mut self) -> Vec<StatusLine> {
        if let Err(e) = self.read_available() {
            tracing::warn!(error.message = %e, "reading a warm run's status pipe");
        }
        let mut lines = Vec::new();
        while let Ok(Some(line)) = self.take_line() {
            match StatusLine::parse(&line) {
                Some(parsed) => lines.push(parsed),
                None => tracing::warn!(line, "unexpected line on a warm run's status pipe"),
            }
        }
        lines
    }

    /// Reads what the pipe holds now into the buffer.
    fn read_available(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 512];
        while !self.eof {
            match self.rx.try_read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn take_line(&mut self) -> io::Result<Option<String>> {
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_STATUS_LINE {
                return Err(io::Error::other("a status line is far too long"));
            }
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..=end);
        Ok(Some(line))
    }
}

/// A pipe whose two ends are closed on exec (as `std::io::pipe` makes
/// them): no other child the worker starts meanwhile may hold a run's write
/// end (its EOF would never come).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let (reader, writer) = io::pipe()?;
    Ok((reader.into(), writer.into()))
}

/// `pidfd_open(2)`: a handle on process `pid` that turns readable when it
/// exits and signals only it, never a process that reused its pid.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Registers a pidfd with the runtime: readable once its process exits.
fn watch_exit(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is open and moves into the `AsyncFd`, which
    // alone closes it, so the fd stays the same for the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// `pidfd_send_signal(2)`.
fn pidfd_send_signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: integers and a null siginfo, as the syscall allows.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_pid_exit_or_error() {
        assert_eq!(StatusLine::parse("pid 4242"), Some(StatusLine::Pid(4242)));
        assert_eq!(StatusLine::parse("exit 2"), Some(StatusLine::Exit(2)));
        assert_eq!(
            StatusLine::parse("error fork: Resource temporarily unavailable"),
            Some(StatusLine::Error(
                "fork: Resource temporarily unavailable".into()
            ))
        );
        for bad in [
            "pid", "pid 0", "pid -3", "pid x", "exit 256", "exit -1", "hello 1", "",
        ] {
            assert_eq!(StatusLine::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_exit_line_gives_the_code_and_none_means_killed() {
        let exited = exit_status(&[StatusLine::Pid(7), StatusLine::Exit(2)]);
        assert_eq!(exited.code(), Some(2));
        let killed = exit_status(&[StatusLine::Pid(7)]);
        assert_eq!(
            (killed.code(), killed.signal()),
            (None, Some(libc::SIGKILL))
        );
    }

    #[tokio::test]
    async fn a_pidfd_turns_readable_when_a_process_that_is_not_our_child_exits() {
        // sh forks a sleep, prints its pid and exits: the sleep is sh's
        // child (then init's or a subreaper's), never ours directly.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 0.5 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pidfd = watch_exit(pidfd_open(pid).unwrap()).unwrap();

        let early = tokio::time::timeout(Duration::from_millis(100), pidfd.readable()).await;
        assert!(early.is_err(), "readable before the exit");
        let exited = tokio::time::timeout(Duration::from_secs(5), pidfd.readable()).await;
        assert!(exited.is_ok(), "not readable after the exit");
        super::super::reaper::reap_adopted_orphans();
    }
}
