//! Stopping and reaping one run's processes, on each of its three ends: the
//! timeout (SIGTERM to its process group and to every process of its
//! [`RunTree`], SIGKILL after the grace), the playbook's exit (its
//! ControlMasters told to exit, leftovers killed and reaped) and the drop of
//! the run's future ([`RunGuard`], finishing on a thread of its own that
//! [`finish_cleanups`] waits for).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::masters;
use super::reaper::reap_adopted_orphans;
use super::tree::{self, Proc, RunTree};
use super::workspace::Workspace;

/// Cleanups of abandoned runs still going on in their own threads.
static PENDING_CLEANUPS: AtomicUsize = AtomicUsize::new(0);

/// Where a timed-out run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Terminating,
    Killed,
}

impl Phase {
    /// The next step once the timeout (or then the grace) is up: SIGTERM to
    /// the group and every process of the run, then SIGKILL. The group is
    /// signalled only while `leader_unreaped`: only then is its id surely
    /// still ours.
    pub(super) fn escalate(
        self,
        pgid: i32,
        tree: &mut RunTree,
        leader_unreaped: bool,
        kill_grace: Duration,
    ) -> Phase {
        // Before any signal: a killed parent's children move away.
        tree.collect(leader_unreaped);
        match self {
            Phase::Running => {
                tracing::warn!(
                    pgid,
                    grace_ms = kill_grace.as_millis() as u64,
                    "playbook timed out; sending SIGTERM to its process group and every process of the run"
                );
                signal_group(pgid, libc::SIGTERM);
                tree.signal(libc::SIGTERM);
                Phase::Terminating
            }
            Phase::Terminating | Phase::Killed => {
                tracing::warn!(pgid, "playbook outlived its grace; sending SIGKILL");
                if leader_unreaped {
                    signal_group(pgid, libc::SIGKILL);
                }
                tree.signal(libc::SIGKILL);
                Phase::Killed
            }
        }
    }
}

/// Ends the run unless finished: the drop of the `run` future (cancellation)
/// must not leave any of its processes running.
///
/// Here, at once: the run's processes are collected, they and the group get
/// SIGTERM, and the ControlMasters are told to exit (blocking, at most a few
/// seconds, while their sockets still exist). Tokio's `kill_on_drop` then
/// SIGKILLs the playbook itself. A thread of its own waits up to the grace,
/// SIGKILLs what is left and reaps it ([`finish_cleanups`] waits for it).
pub(super) struct RunGuard {
    pgid: i32,
    /// Taken by the drop.
    tree: Option<RunTree>,
    control_path_dir: PathBuf,
    kill_grace: Duration,
    armed: bool,
}

impl RunGuard {
    /// Guards the run whose playbook `root` leads group `pgid` in `workspace`.
    pub(super) fn new(
        pgid: i32,
        root: Proc,
        workspace: &Workspace,
        kill_grace: Duration,
    ) -> RunGuard {
        RunGuard {
            pgid,
            tree: Some(RunTree::new(root, workspace.path(), workspace.created())),
            control_path_dir: workspace.control_path_dir(),
            kill_grace,
            armed: true,
        }
    }

    /// The run's processes found so far.
    pub(super) fn tree(&mut self) -> &mut RunTree {
        self.tree.as_mut().expect("taken only on drop")
    }

    /// After the playbook exited: its ControlMasters are asked to exit
    /// before their sockets' directory goes; whatever else it left (in its
    /// group or in sessions of their own) is killed and reaped. Disarms the
    /// guard.
    pub(super) async fn finish(&mut self) {
        masters::close_control_masters(&self.control_path_dir).await;
        let pgid = self.pgid;
        let tree = self.tree();
        tree.collect(false);
        signal_group(pgid, libc::SIGKILL);
        tree.signal(libc::SIGKILL);
        tree.reap().await;
        reap_group(pgid).await;
        self.armed = false;
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let Some(mut tree) = self.tree.take().filter(|_| self.armed) else {
            return;
        };
        let (pgid, kill_grace) = (self.pgid, self.kill_grace);
        tracing::warn!(pgid, "run abandoned; terminating its processes");
        // The future may have been dropped after tokio reaped the playbook.
        let unreaped = tree.root_unreaped();
        tree.collect(unreaped);
        if unreaped {
            signal_group(pgid, libc::SIGTERM);
        }
        tree.signal(libc::SIGTERM);
        masters::close_control_masters_blocking(&self.control_path_dir);
        spawn_cleanup(move || finish_abandoned(tree, pgid, kill_grace));
    }
}

/// The end of an abandoned run, on its cleanup thread: waits up to the grace
/// for its processes to go, SIGKILLs the rest and reaps them.
fn finish_abandoned(mut tree: RunTree, pgid: i32, kill_grace: Duration) {
    let deadline = std::time::Instant::now() + kill_grace;
    while !tree.all_gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(tree::POLL);
    }
    // The playbook is SIGKILLed and reaped by tokio meanwhile, so its group
    // id is no longer ours to signal: pids only from here.
    tree.collect(false);
    if !tree.all_gone() {
        tracing::warn!(
            pgid,
            "processes of an abandoned run outlived the grace; sending SIGKILL"
        );
        tree.signal(libc::SIGKILL);
    }
    tree.reap_blocking();
    reap_adopted_orphans();
}

/// Waits until the cleanups of abandoned (cancelled) runs have ended, for at
/// most `within`; false if some still go on. A daemon calls this after its
/// drain, before exiting, so their SIGKILL after the grace still happens.
pub async fn finish_cleanups(within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while PENDING_CLEANUPS.load(Ordering::SeqCst) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(tree::POLL).await;
    }
    true
}

/// Runs `cleanup` on a thread of its own, counted by [`finish_cleanups`]:
/// a dropped future cannot await its grace period.
fn spawn_cleanup(cleanup: impl FnOnce() + Send + 'static) {
    PENDING_CLEANUPS.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name("run-cleanup".into())
        .spawn(move || {
            cleanup();
            PENDING_CLEANUPS.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(error) = spawned {
        PENDING_CLEANUPS.fetch_sub(1, Ordering::SeqCst);
        tracing::error!(error.message = %error, "cannot start the cleanup of an abandoned run");
    }
}

/// Sends `signal` to every process of the group; false if none was left.
fn signal_group(pgid: i32, signal: libc::c_int) -> bool {
    // A negative pid addresses the group whose leader we spawned; that id
    // is not reused while any member (or the unreaped leader) exists.
    tree::send_signal(-pgid, signal)
}

/// Reaps members of the group that became our children: orphans are
/// re-parented to us when this process is a child subreaper (or PID 1).
/// Otherwise there are none and this returns at once.
pub(super) async fn reap_group(pgid: i32) {
    for _ in 0..100 {
        let mut status = 0;
        // SAFETY: waitpid(2) writes only to `status`. It only reaps processes
        // of this run's group, whose leader tokio has already reaped, so no
        // `Child` handle is robbed of its status.
        let reaped = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        match reaped {
            0 => tokio::time::sleep(Duration::from_millis(10)).await,
            pid if pid > 0 => continue,
            _ => return,
        }
    }
}
