//! The ops heartbeat file (the ops docs' convention
//! `./tmp/<service>.heartbeat`): touched every `heartbeat.interval_secs`
//! while Redis answers, so a supervisor that watches its mtime sees a worker
//! that is alive and connected, and a stale file otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::queue::Queue;

/// Touches `path` every `every` while `queue` answers, until `stop` fires.
/// Logs only changes (healthy, not), never every round.
pub async fn run(path: PathBuf, every: Duration, queue: Queue, stop: CancellationToken) {
    let mut healthy = None;
    loop {
        // The same bounded ping as /readyz.
        let now = crate::http::within(queue.ping())
            .await
            .map_err(|e| format!("Redis: {e}"))
            .and_then(|()| touch(&path).map_err(|e| format!("cannot touch the file: {e}")));
        match (&now, healthy) {
            (Ok(()), Some(true)) | (Err(_), Some(false)) => {}
            (Ok(()), _) => tracing::info!(path = %path.display(), "heartbeat touched"),
            (Err(why), _) => {
                tracing::warn!(path = %path.display(), reason = %why, "heartbeat not touched")
            }
        }
        healthy = Some(now.is_ok());
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Sets the file's mtime to now, creating it (and its directory) if missing.
fn touch(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_creates_the_file_and_its_directory_then_advances_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tmp/infra_service.heartbeat");
        touch(&path).unwrap();
        let first = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        touch(&path).unwrap();
        let second = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(second > first, "{first:?} -> {second:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
