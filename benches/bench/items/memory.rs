//! Item 3, memory: the worker's RSS idle and with 50 stub jobs held in
//! flight (each stub waits for a file before it prints its recap), and the
//! stubs' own, summed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{MIB, RECAP, ansible_dir, check_success, stub_settings};
use crate::rig::{self, Rig, Worker, request_id};
use crate::stats::{Figure, Target};

const ITEM: &str = "3 memory";
/// Jobs held in flight.
const JOBS: usize = 50;

/// Item 3: worker RSS idle and with 50 stub jobs in flight.
pub async fn memory(rig: &mut Rig, runs: usize) -> Vec<Figure> {
    let release = rig.path("release");
    let stub = held_stub(rig, &release);
    let dir = ansible_dir(rig, true);
    let mut figures = Figures::new();
    for run in 0..runs {
        let _ = std::fs::remove_file(&release);
        let mut worker = rig.worker(&stub_settings(64, &stub, &dir)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        figures.idle.runs.push(worker.rss_kib() as f64 / MIB);
        let mut results = worker.results().await;
        hold_in_flight(&mut worker, run).await;
        figures.busy.runs.push(worker.rss_kib() as f64 / MIB);
        let stubs_kib = rig::children_rss(worker.pid).1;
        figures.stubs.runs.push(stubs_kib as f64 / MIB);
        std::fs::write(&release, b"").expect("release");
        check_success("memory", &all_results(&mut results, &worker).await);
        let hwm_kib = rig::hwm_kib(worker.pid).unwrap_or(0);
        figures.hwm.runs.push(hwm_kib as f64 / MIB);
        eprintln!(
            "  memory run {}: idle {:.1} MiB, 50 in flight {:.1} MiB",
            run + 1,
            figures.idle.runs[run],
            figures.busy.runs[run]
        );
        worker.stop().await;
    }
    figures.into_vec()
}

/// Item 3's figures, one value per run each.
struct Figures {
    idle: Figure,
    busy: Figure,
    hwm: Figure,
    stubs: Figure,
}

impl Figures {
    fn new() -> Figures {
        let mib = |name: &str| Figure::new(ITEM, name, "MiB");
        Figures {
            idle: mib("worker RSS idle").target(Target::Below(20.0)),
            busy: mib("worker RSS, 50 jobs in flight").target(Target::Below(30.0)),
            hwm: mib("worker peak RSS (VmHWM) after the 50"),
            stubs: mib("the 50 stub children (sh + sleep), summed"),
        }
    }

    /// The figures in the table's order.
    fn into_vec(self) -> Vec<Figure> {
        vec![self.idle, self.busy, self.hwm, self.stubs]
    }
}

/// A stub that waits until `release` exists, then prints the recap: the
/// jobs stay in flight for as long as the item needs.
fn held_stub(rig: &Rig, release: &Path) -> PathBuf {
    rig.script(
        "stub-wait",
        &format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.1; done\n{RECAP}",
            release.display()
        ),
    )
}

/// Enqueues the 50 jobs and returns once the worker runs them all, and
/// half a second later: the RSS read next is that of 50 running jobs, not
/// of the last ones being started.
async fn hold_in_flight(worker: &mut Worker, run: usize) {
    for i in 0..JOBS {
        worker
            .enqueue(
                &request_id(&format!("m{run}"), i),
                &format!("10.78.0.{}", i + 1),
            )
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while rig::direct_children(worker.pid) < JOBS {
        assert!(
            Instant::now() < deadline,
            "50 jobs never in flight:\n{}",
            worker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The 50 results, once released (no latency: the item does not time them).
async fn all_results(
    results: &mut UnboundedReceiver<(Instant, Value)>,
    worker: &Worker,
) -> Vec<(f64, Value)> {
    let mut done = Vec::new();
    while done.len() < JOBS {
        match tokio::time::timeout(Duration::from_secs(120), results.recv()).await {
            Ok(Some((_, result))) => done.push((0.0, result)),
            _ => panic!("memory: results missing:\n{}", worker.log_tail()),
        }
    }
    done
}
