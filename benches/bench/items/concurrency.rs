//! Item 2, concurrency: 16 jobs of a 2 s playbook over SSH to 16 loopback
//! servers, at concurrency 1 and 8; at 8, also the memory of the worker and
//! of its real `ansible-playbook` children (figures of item 3).

use std::path::Path;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MIB, ansible_dir, check_success, ssh_settings, ssh_worker};
use crate::host::TestHost;
use crate::rig::{self, Rig, closed_loop, q, request_id};
use crate::stats::{Figure, Target};

const ITEM: &str = "2 concurrency";
/// The memory figures this item measures belong to item 3.
const MEMORY: &str = "3 memory";

/// Item 2: 16 jobs of a 2 s playbook over 16 loopback servers, at
/// concurrency 1 and 8, alternating within each run. Also samples the
/// real `ansible-playbook` children's memory at concurrency 8.
pub async fn concurrency(rig: &mut Rig, sshd: &TestHost, runs: usize) -> Vec<Figure> {
    let dir = ansible_dir(rig, true);
    let mut figures = Figures::new();
    for run in 0..runs {
        let mut walls = [0.0; 2];
        // Alternate which goes first, so a drift in load hits both.
        let order: [usize; 2] = if run % 2 == 0 { [1, 8] } else { [8, 1] };
        for concurrency in order {
            let secs = figures.batch(rig, sshd, &dir, concurrency).await;
            eprintln!("  concurrency {concurrency}, run {}: {secs:.1} s", run + 1);
            walls[usize::from(concurrency == 8)] = secs;
        }
        figures.one.runs.push(walls[0]);
        figures.eight.runs.push(walls[1]);
        figures.ratio.runs.push(walls[0] / walls[1]);
    }
    figures.into_vec()
}

/// Item 2's figures, and the memory ones it measures for item 3.
struct Figures {
    one: Figure,
    eight: Figure,
    ratio: Figure,
    worker_peak: Figure,
    children: Figure,
    per_job: Figure,
}

impl Figures {
    fn new() -> Figures {
        let mib = |name: &str| Figure::new(MEMORY, name, "MiB");
        Figures {
            one: Figure::new(ITEM, "16 x 2 s playbook, concurrency 1: wall", "s"),
            eight: Figure::new(ITEM, "16 x 2 s playbook, concurrency 8: wall", "s"),
            ratio: Figure::new(ITEM, "speed-up, concurrency 8 vs 1 (same run)", "x")
                .target(Target::AtLeast(2.9)),
            worker_peak: mib("worker RSS at concurrency 8 (real playbooks), peak"),
            children: mib("Ansible children at concurrency 8 (real playbooks): peak RSS, summed"),
            per_job: mib("Ansible children at concurrency 8: peak RSS / 8 playbooks"),
        }
    }

    /// The figures in the table's order.
    fn into_vec(self) -> Vec<Figure> {
        vec![
            self.one,
            self.eight,
            self.ratio,
            self.worker_peak,
            self.children,
            self.per_job,
        ]
    }

    /// The 16 jobs on a fresh worker with `concurrency` slots, the memory
    /// sampled meanwhile at 8; returns their wall time, s.
    async fn batch(
        &mut self,
        rig: &mut Rig,
        sshd: &TestHost,
        dir: &Path,
        concurrency: usize,
    ) -> f64 {
        let mut settings = ssh_settings(rig, sshd, concurrency, dir, "sleep2.yml");
        // Cold, as the reference figures were: a fresh warm worker would run
        // its first jobs cold until its controller is ready, a mix. Warm at
        // concurrency 8 is item 5's.
        settings.push(("ansible.controller", q("cold")));
        let mut worker = ssh_worker(rig, sshd, &settings).await;
        let jobs = (0..16)
            .map(|i| {
                (
                    request_id(&format!("c{concurrency}"), i),
                    format!("127.0.0.{}", i + 1),
                )
            })
            .collect();
        let sampler = (concurrency == 8).then(|| sample_memory(worker.pid));
        let (wall, results) = closed_loop(&mut worker, jobs, 16, Duration::from_secs(600)).await;
        if let Some((stop, handle)) = sampler {
            stop.cancel();
            self.push_peaks(handle.await.expect("sampler"));
        }
        worker.stop().await;
        check_success("concurrency", &results);
        wall.as_secs_f64()
    }

    /// The peaks `sample_memory` found (KiB), and the jobs in flight then.
    fn push_peaks(&mut self, (worker_max, children_max, count_at_max): (u64, u64, usize)) {
        self.worker_peak.runs.push(worker_max as f64 / MIB);
        self.children.runs.push(children_max as f64 / MIB);
        // 16 jobs for 8 slots: at the peak, 8 playbooks run.
        self.per_job.runs.push(children_max as f64 / MIB / 8.0);
        eprintln!("  {count_at_max} direct children of the worker at the peak");
    }
}

/// Samples the worker's RSS and its descendants' summed RSS every 100 ms
/// until cancelled; returns the peaks (KiB) and the number of jobs in
/// flight (direct children) at the children's peak.
fn sample_memory(pid: u32) -> (CancellationToken, JoinHandle<(u64, u64, usize)>) {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        let (mut worker_max, mut children_max, mut jobs_at_max) = (0, 0, 0);
        while !token.is_cancelled() {
            worker_max = worker_max.max(rig::rss_kib(pid).unwrap_or(0));
            let (_, total) = rig::children_rss(pid);
            if total > children_max {
                children_max = total;
                jobs_at_max = rig::direct_children(pid);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (worker_max, children_max, jobs_at_max)
    });
    (stop, handle)
}
