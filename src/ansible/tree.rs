//! Every process of one playbook run, wherever it went: found, signalled,
//! reaped.
//!
//! ansible-core 2.19 starts each fork in a session of its own and ssh
//! ControlPersist masters daemonize, so the playbook's process group is not
//! the run. A [`RunTree`] finds the run in `/proc`: the playbook's
//! descendants, plus every process that names the run's private directory
//! (in its environment or command line) or stayed in its group, and their
//! descendants. It signals them by pid checked against the start time, and
//! reaps those re-parented to this process (a subreaper, see `reaper`);
//! never with `waitpid(-1)`, which would steal statuses tokio waits for.
//!
//! Finding them walks child lists (`/proc/<pid>/task/<tid>/children`), not
//! the whole of `/proc`: as a subreaper, every process a run leaves behind
//! is a descendant of the playbook or of this process. Reading every
//! process's `stat` after each run cost more CPU than the rest of the job
//! (in the dispatch benchmark, `make bench`); the whole scan remains only
//! for a worker that could not become a subreaper, or a kernel without child
//! lists.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::reaper;

/// How long killed processes get to turn into zombies we can reap.
const REAP_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a waiting loop looks again.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// The pids of playbooks running now: tokio's children, never a leftover.
/// Other filters would reject them too, but only after reading their
/// `stat`, command line and environment, for every concurrent run at the
/// end of each run.
static ROOTS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// One process: a pid alone may be reused, a pid and a start time may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    /// Field 22 of `/proc/<pid>/stat`, in clock ticks since boot.
    start: u64,
}

impl Proc {
    /// The process that has `pid` now.
    pub(crate) fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|s| Proc {
            pid,
            start: s.start,
        })
    }

    /// A process that already exited and was reaped before it was looked
    /// at: it matches no process, now or later.
    pub(crate) fn exited(pid: i32) -> Proc {
        Proc {
            pid,
            start: u64::MAX,
        }
    }

    /// Its `/proc` record, if the pid still names this very process.
    fn stat(&self) -> Option<Stat> {
        stat(self.pid).filter(|s| s.start == self.start)
    }

    /// True while it exists and has not exited (a zombie has).
    pub(crate) fn is_running(&self) -> bool {
        self.stat().is_some_and(|s| !matches!(s.state, b'Z' | b'X'))
    }
}

/// What `/proc/<pid>/stat` says that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) state: u8,
    pub(super) ppid: i32,
    pub(super) pgrp: i32,
    pub(super) session: i32,
    pub(super) start: u64,
}

/// The `/proc` record of whatever process has `pid` now.
pub(super) fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `pid (comm) state ppid ... starttime ...`; `comm` may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    // Field 3 (state) is the first after the parenthesis.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(Stat {
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Who is whose child, as of one look.
pub(super) enum Family {
    /// The kernel's child lists (`/proc/<pid>/task/<tid>/children`).
    Lists,
    /// Without those (a kernel built without `CONFIG_PROC_CHILDREN`): every
    /// process's parent, from one scan of all of `/proc`.
    Scanned(HashMap<i32, Vec<i32>>),
}

impl Family {
    /// The kernel's child lists where it has them, else one scan of `/proc`.
    pub(super) fn now() -> Family {
        static LISTS: OnceLock<bool> = OnceLock::new();
        let lists = *LISTS.get_or_init(|| {
            let me = std::process::id();
            Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
        });
        if lists { Family::Lists } else { Family::scan() }
    }

    fn scan() -> Family {
        let mut parents: HashMap<i32, Vec<i32>> = HashMap::new();
        for pid in all_pids() {
            if let Some(stat) = stat(pid) {
                parents.entry(stat.ppid).or_default().push(pid);
            }
        }
        Family::Scanned(parents)
    }

    /// The children of `pid`: the union of its threads' child lists (a
    /// child belongs to the thread that forked it, an orphan to the thread
    /// that adopted it).
    pub(super) fn children(&self, pid: i32) -> Vec<i32> {
        if let Family::Scanned(parents) = self {
            return parents.get(&pid).cloned().unwrap_or_default();
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for task in tasks.filter_map(Result::ok) {
            let Ok(list) = std::fs::read(task.path().join("children")) else {
                continue;
            };
            found.extend(
                list.split(u8::is_ascii_whitespace)
                    .filter_map(|word| std::str::from_utf8(word).ok()?.parse::<i32>().ok()),
            );
        }
        found
    }

    /// Our children that are not running playbooks: processes adopted from
    /// runs, and tokio's other children (SSH probes). Every process in
    /// `/proc` when we are no subreaper, since orphans then go elsewhere.
    fn adopted(&self, me: i32) -> Vec<i32> {
        if !reaper::is_subreaper() {
            return all_pids();
        }
        let roots = ROOTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.children(me)
            .into_iter()
            .filter(|pid| !roots.contains(pid))
            .collect()
    }
}

/// Every pid in `/proc` now.
fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The processes of one run found so far.
#[derive(Debug)]
pub(crate) struct RunTree {
    /// The playbook: tokio's child, so never reaped (or listed) here.
    root: Proc,
    /// `<run dir>/`: a process whose command line or environment holds it
    /// belongs to the run (the ssh options name the run's known_hosts, a
    /// ControlMaster's title its socket, every child inherits
    /// `ANSIBLE_SSH_CONTROL_PATH_DIR`).
    marker: Vec<u8>,
    /// Every process found, the root aside.
    known: HashSet<Proc>,
}

impl RunTree {
    /// The run of playbook `root`, whose private directory is `run_dir`.
    pub(crate) fn new(root: Proc, run_dir: &Path) -> RunTree {
        ROOTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(root.pid);
        let mut marker = run_dir.as_os_str().as_bytes().to_vec();
        marker.push(b'/');
        RunTree {
            root,
            marker,
            known: HashSet::new(),
        }
    }

    /// Adds the run's processes alive now: descendants of the root (only
    /// while `root_unreaped`, since a reaped pid may be reused), of the ones
    /// already known, and of the leftovers: processes that started no
    /// earlier than the playbook and carry the marker or stayed in its
    /// group. Call it before signalling: a killed parent's children are
    /// re-parented away.
    pub(crate) fn collect(&mut self, root_unreaped: bool) {
        let me = std::process::id() as i32;
        let mut roots: Vec<i32> = self
            .known
            .iter()
            .filter(|p| p.is_running())
            .map(|p| p.pid)
            .collect();
        if root_unreaped && self.root_unreaped() {
            roots.push(self.root.pid);
        }
        let family = Family::now();
        roots.extend(
            family
                .adopted(me)
                .into_iter()
                .filter(|&pid| pid != me && pid != self.root.pid && self.is_leftover(pid)),
        );
        let mut seen = HashSet::new();
        while let Some(pid) = roots.pop() {
            if pid == me || !seen.insert(pid) {
                continue;
            }
            if pid != self.root.pid {
                let Some(proc) = Proc::of(pid) else { continue };
                self.known.insert(proc);
            }
            roots.extend(family.children(pid));
        }
    }

    /// A process the run left: started with or after the playbook, and in
    /// its group or marked. The start time is read first (one small file):
    /// only those are worth reading the command line and environment of.
    fn is_leftover(&self, pid: i32) -> bool {
        stat(pid).is_some_and(|s| {
            s.start >= self.root.start && (s.pgrp == self.root.pid || self.is_marked(pid))
        })
    }

    /// True while the playbook's pid is still its own (running or a zombie
    /// not yet reaped by tokio), so its process group id cannot be reused.
    pub(crate) fn root_unreaped(&self) -> bool {
        self.root.stat().is_some()
    }

    fn is_marked(&self, pid: i32) -> bool {
        let holds = |file: &str, needle: &[u8]| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .is_ok_and(|text| text.windows(needle.len()).any(|w| w == needle))
        };
        let mut assigned = b"=".to_vec();
        assigned.extend_from_slice(&self.marker);
        holds("cmdline", &self.marker) || holds("environ", &assigned)
    }

    /// Sends `signal` to every known process still running.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        for proc in self.known.iter().filter(|p| p.is_running()) {
            // The start time was checked just above; a pid freed and reused
            // in between is the one race left, and needs the whole pid
            // space to wrap.
            send_signal(proc.pid, signal);
        }
    }

    /// True when no known process runs any more.
    pub(crate) fn all_gone(&self) -> bool {
        !self.known.iter().any(Proc::is_running)
    }

    /// Reaps the known processes that are (or become) our children, waiting
    /// up to [`REAP_TIMEOUT`]. Blocks: for the cleanup thread.
    pub(crate) fn reap_blocking(&self) {
        let mut pending = self.known.clone();
        let deadline = Instant::now() + REAP_TIMEOUT;
        while !reap_step(&mut pending) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`RunTree::reap_blocking`] without blocking the runtime.
    pub(crate) async fn reap(&self) {
        let mut pending = self.known.clone();
        let deadline = Instant::now() + REAP_TIMEOUT;
        while !reap_step(&mut pending) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RunTree {
    fn drop(&mut self) {
        ROOTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.root.pid);
    }
}

/// `kill(target, signal)`: a pid, or a process group as `-pgid`; false if
/// nothing was there. Errors other than "no such process" are logged.
pub(crate) fn send_signal(target: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; callers check
    // that `target` still names their process or group.
    let sent = unsafe { libc::kill(target, signal) } == 0;
    if !sent {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(target, signal, error.message = %error, "sending a signal to a process of the run failed");
        }
    }
    sent
}

/// One pass of `waitpid(pid, WNOHANG)` over `pending`, dropping those reaped
/// or gone; true when none is left. A process whose parent is still another
/// process of the run stays pending: it comes to us when that one dies.
fn reap_step(pending: &mut HashSet<Proc>) -> bool {
    let me = std::process::id() as i32;
    let run: HashSet<i32> = pending.iter().map(|p| p.pid).collect();
    pending.retain(|proc| {
        let Some(stat) = proc.stat() else {
            return false;
        };
        if stat.ppid != me {
            // Someone else's to reap (PID 1 when we are no subreaper).
            return run.contains(&stat.ppid);
        }
        let mut status = 0;
        // SAFETY: waitpid(2) writes only to `status`. The pid is our child
        // with the start time we recorded, and not tokio's (the root is never
        // in the tree), so no `Child` handle is robbed of its status.
        let reaped = unsafe { libc::waitpid(proc.pid, &mut status, libc::WNOHANG) };
        reaped == 0
    });
    pending.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let mut line = b"4242 (a) b (c) S 17 4242 4242 0 -1 4194560".to_vec();
        line.extend_from_slice(b" 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 200\n");
        let stat = parse_stat(&line).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: b'S',
                ppid: 17,
                pgrp: 4242,
                session: 4242,
                start: 987654
            }
        );
    }

    #[test]
    fn a_truncated_stat_is_not_parsed() {
        assert_eq!(parse_stat(b"12 (sh) S 1 12"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    /// The kernel's child lists and the fallback scan of all of `/proc`
    /// (kernels without child lists) find the same children, including
    /// those of a child.
    #[test]
    fn child_lists_and_the_full_scan_agree() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Family::Lists.children(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchildren = Family::Lists.children(pid);
        let mine = Family::Lists.children(me);
        let scanned = Family::scan();
        // The sleep first: sh reaps it and exits, and no orphan is left to
        // be adopted by this process (a subreaper in other tests).
        for grandchild in &grandchildren {
            // SAFETY: kill(2) of the sleep this test started.
            unsafe { libc::kill(*grandchild, libc::SIGKILL) };
        }
        child.wait().unwrap();

        assert!(mine.contains(&pid), "the child is in our list");
        assert_eq!(grandchildren.len(), 1, "sh has one child, its sleep");
        assert_eq!(scanned.children(pid), grandchildren);
        assert!(scanned.children(me).contains(&pid));
    }

    #[test]
    fn this_process_is_found_with_a_stable_start_time() {
        let me = Proc::of(std::process::id() as i32).unwrap();
        assert!(me.is_running());
        assert_eq!(Proc::of(me.pid), Some(me));
        let reused = Proc {
            start: me.start + 1,
            ..me
        };
        assert!(
            !reused.is_running(),
            "a different start time is another process"
        );
    }
}
