//! The run's ssh ControlMasters, told to exit (`ssh -O exit`) through the
//! sockets in its private directory: a ControlPersist master daemonizes and
//! would otherwise outlive its run. One blocking implementation (a `Drop`
//! needs it), which the async form runs off the runtime.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long `ssh -O exit` may take before it is killed.
const SSH_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the ControlMaster behind each socket in `dir` to exit, so none
/// outlives its run: `ssh -O exit -o ControlPath=<socket> x`. The blocking
/// form on a thread of its own: one way of doing it, not two.
pub(crate) async fn close_control_masters(dir: &Path) {
    let dir = dir.to_owned();
    if let Err(e) = tokio::task::spawn_blocking(move || close_control_masters_blocking(&dir)).await
    {
        tracing::warn!(error.message = %e, "closing the ControlMasters failed");
    }
}

/// [`close_control_masters`] for a `Drop`: blocks, at most
/// [`SSH_EXIT_TIMEOUT`] in all. A command that cannot start ends the
/// spawning, never the wait for those already started.
pub(crate) fn close_control_masters_blocking(dir: &Path) {
    let mut running = Vec::new();
    for socket in sockets(dir) {
        match ssh_exit(&socket).spawn() {
            Ok(child) => running.push((socket, child)),
            Err(error) => {
                tracing::warn!(error.message = %error, "cannot run ssh -O exit");
                break;
            }
        }
    }
    let deadline = Instant::now() + SSH_EXIT_TIMEOUT;
    for (socket, mut child) in running {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(child.try_wait(), Ok(None)) {
            tracing::warn!(socket = %socket.display(), "ssh -O exit hung; killed");
            let _ = child.kill();
        }
        let status = child.wait();
        tracing::debug!(socket = %socket.display(), ?status, "ssh -O exit");
    }
}

/// The Unix sockets in `dir` (ssh's ControlPath sockets).
fn sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_socket()))
        .map(|entry| entry.path())
        .collect()
}

/// `ssh -O exit` for one socket, without any configuration of the worker's.
fn ssh_exit(socket: &Path) -> std::process::Command {
    let mut control_path = std::ffi::OsString::from("ControlPath=");
    control_path.push(socket);
    let mut command = std::process::Command::new("ssh");
    command
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-O", "exit", "-o"])
        .arg(control_path)
        .arg("x")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for ControlMasters that never answer: `ssh -O exit` must
    /// reach each socket and be given up on after its timeout.
    #[tokio::test]
    async fn every_control_socket_is_asked_to_exit_within_the_timeout() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let listeners: Vec<_> = ["a", "b"]
            .iter()
            .map(|name| std::os::unix::net::UnixListener::bind(dir.path().join(name)).unwrap())
            .collect();
        std::fs::write(dir.path().join("not-a-socket"), "").unwrap();
        let contacted: Vec<_> = listeners
            .into_iter()
            .map(|listener| std::thread::spawn(move || listener.accept().is_ok()))
            .collect();

        let started = Instant::now();
        close_control_masters(dir.path()).await;

        assert!(started.elapsed() < SSH_EXIT_TIMEOUT + Duration::from_secs(1));
        for thread in contacted {
            assert!(thread.join().unwrap(), "a socket was not contacted");
        }
    }
}
