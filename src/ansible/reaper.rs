//! Process-wide reaping of what playbook runs leave behind.
//!
//! The worker makes itself a child subreaper, so processes that leave a run
//! (Ansible's forks in sessions of their own, daemonized ssh ControlMasters)
//! are re-parented to it rather than to PID 1, which in a container may never
//! reap them; those that exit after their run ended are reaped here too.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::tree::{Family, stat};

/// Set once this process is a child subreaper: orphans come to us.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// True once [`become_subreaper`] succeeded.
pub(crate) fn is_subreaper() -> bool {
    SUBREAPER.load(Ordering::SeqCst)
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`).
///
/// Call once at worker start; it holds for the process's lifetime.
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
