//! Process-wide reaping of what playbook runs leave behind.
//!
//! The worker makes itself a child subreaper, so processes that leave a run
//! (Ansible's forks in sessions of their own, daemonized ssh ControlMasters)
//! are re-parented to it rather than to PID 1, which in a container may never
//! reap them; a loop then reaps those that exit after their run ended, until
//! the drain is over (runs that end during the drain leave orphans too). The
//! `/proc` reads of each pass run off the async runtime.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::tree::{Family, stat};

/// How often adopted orphans are looked for.
const INTERVAL: Duration = Duration::from_secs(5);

/// Set once this process is a child subreaper: orphans come to us.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// True once [`become_subreaper`] succeeded.
pub(crate) fn is_subreaper() -> bool {
    SUBREAPER.load(Ordering::SeqCst)
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`).
///
/// Call once at worker start (or let [`start`] do it); it holds for the
/// process's lifetime.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        SUBREAPER.store(true, Ordering::SeqCst);
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes this process a child subreaper and reaps its adopted orphans every
/// few seconds until `stop` is cancelled; the task then ends. When the
/// subreaper cannot be set (logged), no orphan comes to us and the task ends
/// at once.
pub fn start(stop: CancellationToken) -> JoinHandle<()> {
    match become_subreaper() {
        Ok(()) => tokio::spawn(reap_until(stop, INTERVAL)),
        Err(e) => {
            tracing::warn!(error.message = %e, "cannot become a child subreaper; orphans of playbook runs may be left as zombies");
            tokio::spawn(async {})
        }
    }
}

/// Reaps adopted orphans every `interval` until `stop` is cancelled.
async fn reap_until(stop: CancellationToken, interval: Duration) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        // Reading /proc blocks; a pass is short, so it is awaited whole.
        if let Err(e) = tokio::task::spawn_blocking(reap_adopted_orphans).await {
            tracing::warn!(error.message = %e, "a pass of the orphan reaper failed");
        }
    }
}

/// Reaps zombies that were adopted by this (subreaper) process: children of
/// ours in a session other than ours. Tokio's own children (playbooks,
/// probes) share our session and are left to tokio; a process that ran
/// `setsid` (an Ansible fork, a daemonized ControlMaster) cannot be one of
/// them. Catches what exits on its own after a run's tree was collected.
/// Blocks on `/proc` reads.
pub(crate) fn reap_adopted_orphans() {
    let me = std::process::id() as i32;
    // SAFETY: getsid(0) only reads this process's session id.
    let my_session = unsafe { libc::getsid(0) };
    for pid in Family::now().children(me) {
        let Some(stat) = stat(pid) else { continue };
        if stat.ppid == me && stat.state == b'Z' && stat.session != my_session {
            // SAFETY: a non-blocking wait for one specific pid; no memory is shared.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::Path;
    use std::process::{Command, Stdio};

    #[tokio::test]
    async fn the_reaper_task_ends_when_the_stop_is_cancelled() {
        let stop = CancellationToken::new();
        let reaper = start(stop.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reaper.is_finished(), "the reaper stopped on its own");

        stop.cancel();

        let ended = tokio::time::timeout(Duration::from_secs(1), reaper).await;
        assert!(ended.is_ok(), "the reaper outlived its stop");
    }

    #[tokio::test]
    async fn a_loop_between_passes_ends_when_the_stop_is_cancelled() {
        let stop = CancellationToken::new();
        let reaper = tokio::spawn(reap_until(stop.clone(), Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(100)).await;

        stop.cancel();

        let ended = tokio::time::timeout(Duration::from_secs(1), reaper).await;
        assert!(ended.is_ok(), "the reaper outlived its stop");
    }

    /// A process in a session of its own whose parent exits at once comes
    /// to us; once it exits, the loop reaps it (else it stays a zombie).
    #[tokio::test]
    async fn an_adopted_orphan_that_exits_is_reaped() {
        become_subreaper().expect("prctl(PR_SET_CHILD_SUBREAPER)");
        let mut parent = Command::new("sh")
            .args(["-c", "setsid sleep 0.3 & echo $!"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut echoed = String::new();
        parent
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut echoed)
            .unwrap();
        parent.wait().unwrap();
        let orphan = Path::new("/proc").join(echoed.trim());
        assert!(orphan.exists(), "the orphan runs");
        let stop = CancellationToken::new();
        let reaper = tokio::spawn(reap_until(stop.clone(), Duration::from_millis(20)));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while orphan.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        reaper.await.unwrap();

        assert!(!orphan.exists(), "the orphan was left a zombie");
    }
}
