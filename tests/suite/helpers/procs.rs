//! Reading the process table from `/proc`: trees of processes (to clean up
//! after a killed worker or sshd) and command lines (to look for leaks).

/// Every process whose ancestry leads to `root` (not `root` itself).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for pid in pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: parse after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILLs `root`'s descendants.
pub fn kill_tree_below(root: i32) {
    kill_all(&descendants(root));
}

/// SIGKILLs each of `pids`, deepest (last found) first.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids.iter().rev() {
        // SAFETY: plain kill(2); a pid that already exited is harmless here.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// `(pid, argv joined by spaces)` of every process readable right now.
pub fn all_cmdlines() -> Vec<(i32, String)> {
    pids()
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some((pid, text))
        })
        .collect()
}

/// The argv of one process, joined by spaces; empty if it is gone.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// The warm controller's script, as it shows in the command line of the
/// controller and of every run forked from it.
const CONTROLLER_SCRIPT: &str = "infra_controller.py";

/// Whether `pid` is a playbook run: a cold `ansible-playbook`, or a run
/// forked from the warm controller (it keeps the controller's command line
/// but leads a session of its own, which the controller never does).
pub fn is_playbook_run(pid: i32) -> bool {
    let argv = cmdline(pid);
    argv.contains("ansible-playbook") || (argv.contains(CONTROLLER_SCRIPT) && leads_session(pid))
}

/// Whether `pid` is the warm controller itself (not a run forked from it).
pub fn is_warm_controller(pid: i32) -> bool {
    cmdline(pid).contains(CONTROLLER_SCRIPT) && !leads_session(pid)
}

/// The state letter of `/proc/<pid>/stat` (`Z` for a zombie); `None` once
/// the pid is gone.
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Whether `pid` is its session's leader.
fn leads_session(pid: i32) -> bool {
    stat_fields(pid).and_then(|fields| fields.get(3)?.parse().ok()) == Some(pid)
}

/// The fields of `/proc/<pid>/stat` after the command name: state ppid
/// pgrp session ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

/// Pids whose environment (`/proc/<pid>/environ`) contains `needle`.
pub fn pids_with_environ_containing(needle: &str) -> Vec<i32> {
    pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|raw| String::from_utf8_lossy(&raw).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) async fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends `signal` to a server of the test's own and waits `patience` for it
/// to exit; kills it and panics (naming `what`) if it does not.
pub(crate) async fn stop_server(
    mut child: std::process::Child,
    signal: i32,
    patience: std::time::Duration,
    what: &str,
) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    if wait_exit(&mut child, patience).await.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} ignored signal {signal} for {patience:?}");
    }
}

/// Waits until a just-spawned server answers `ready`, polling every `poll`
/// for at most `patience`. If it exits or never answers, it is reaped and
/// the error carries `log()`.
pub(crate) async fn await_ready<F: Future<Output = bool>>(
    mut child: std::process::Child,
    mut ready: impl FnMut() -> F,
    poll: std::time::Duration,
    patience: std::time::Duration,
    log: impl Fn() -> String,
) -> Result<std::process::Child, String> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if ready().await {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("exited ({exited:?}); log:\n{}", log()));
        }
        tokio::time::sleep(poll).await;
    }
}
