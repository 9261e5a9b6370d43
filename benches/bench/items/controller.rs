//! Item 5, the warm Ansible controller (issue 15): workers with
//! `ansible.controller = "warm"` against `"cold"`, alternating within each
//! run. CPU per job of the worker's process tree and the target's sshd, on
//! the no-op playbook (no SSH) and on the 2 s sleep over SSH; 16 sleep jobs
//! at concurrency 8, wall time; the Ansible processes' summed PSS while 8
//! of those jobs run. Each warm worker's controller start is measured on
//! its own, never inside a per-job figure.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MIB, ansible_dir, check_success, ssh_settings, ssh_worker};
use crate::host::TestHost;
use crate::rig::{self, Rig, Worker, closed_loop, request_id};
use crate::stats::{Figure, Target};

const ITEM: &str = "5 controller";
/// Jobs per CPU figure, one after another, after one that warms up.
const CPU_JOBS: usize = 5;
/// Jobs of the concurrency batch, and the worker's slots.
const BATCH: usize = 16;
const SLOTS: usize = 8;
/// What the worker logs once its controller has said `ready`.
const READY: &str = "warm controller ready";
/// A word of the controller's command line, which tells it from the runs
/// it forks (those take `ansible-playbook`'s argv).
const CONTROLLER_SCRIPT: &str = "infra_controller.py";

/// How a worker runs its playbooks: `ansible.controller`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Warm,
    Cold,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Warm => "warm",
            Mode::Cold => "cold",
        }
    }

    /// The order of a run: alternated, so a drift in load hits both.
    fn order(run: usize) -> [Mode; 2] {
        if run.is_multiple_of(2) {
            [Mode::Warm, Mode::Cold]
        } else {
            [Mode::Cold, Mode::Warm]
        }
    }
}

/// What every worker of the item shares: the target, the Ansible
/// directory, the target's sshd processes.
struct Bench<'a> {
    sshd: &'a TestHost,
    dir: &'a Path,
    sshd_pids: Vec<u32>,
}

/// Item 5: per run, warm against cold on the no-op playbook (CPU per job),
/// then on the 2 s sleep over SSH (CPU per job, the 16-job batch at
/// concurrency 8 and its PSS), each comparison on fresh workers.
pub async fn controller(rig: &mut Rig, sshd: &TestHost, runs: usize) -> Vec<Figure> {
    let dir = ansible_dir(rig, true);
    let bench = Bench {
        sshd,
        dir: &dir,
        // The bench's own sshd, child of this process: other sshds on the
        // machine (other test runs) are not the target's.
        sshd_pids: rig::children_named(std::process::id(), "sshd"),
    };
    assert!(!bench.sshd_pids.is_empty(), "the bench's sshd not found");
    let mut figures = Figures::new();
    for run in 0..runs {
        figures.noop(rig, &bench, run).await;
        figures.sleep(rig, &bench, run).await;
    }
    figures.into_vec()
}

/// CPU per job, ms: the worker's process tree and the target's sshd (and
/// what it runs for the job).
#[derive(Debug, Clone, Copy, Default)]
struct JobCpu {
    worker: f64,
    sshd: f64,
}

impl JobCpu {
    fn total(self) -> f64 {
        self.worker + self.sshd
    }
}

/// Item 5's figures, one value per run each.
struct Figures {
    start_cpu: Figure,
    start_wall: Figure,
    noop_cold: Figure,
    noop_warm: Figure,
    noop_ratio: Figure,
    sleep_cold: Figure,
    sleep_cold_sshd: Figure,
    sleep_warm: Figure,
    sleep_warm_sshd: Figure,
    sleep_ratio: Figure,
    wall_cold: Figure,
    wall_warm: Figure,
    wall_ratio: Figure,
    pss_cold: Figure,
    pss_warm: Figure,
    pss_ratio: Figure,
    wrong_mode: Figure,
    /// Runs the metrics counted under the other mode, this run so far.
    wrong_this_run: f64,
}

impl Figures {
    fn new() -> Figures {
        let f = |name: &str, unit| Figure::new(ITEM, name, unit);
        Figures {
            start_cpu: f(
                "warm: controller start (imports, plugins), CPU, once per worker",
                "ms",
            ),
            start_wall: f("warm: worker start to controller ready, wall", "s"),
            noop_cold: f("no-op, CPU per job, cold: worker tree + target sshd", "ms"),
            noop_warm: f("no-op, CPU per job, warm: worker tree + target sshd", "ms"),
            noop_ratio: f("no-op CPU per job, cold / warm (same run)", "x")
                .target(Target::AtLeast(4.0)),
            sleep_cold: f("2 s sleep over SSH, CPU per job, cold: worker tree", "ms"),
            sleep_cold_sshd: f(
                "2 s sleep over SSH, CPU per job, cold: target sshd tree",
                "ms",
            ),
            sleep_warm: f("2 s sleep over SSH, CPU per job, warm: worker tree", "ms"),
            sleep_warm_sshd: f(
                "2 s sleep over SSH, CPU per job, warm: target sshd tree",
                "ms",
            ),
            sleep_ratio: f("2 s sleep CPU per job (worker + sshd), cold / warm", "x"),
            wall_cold: f("16 x 2 s playbook, concurrency 8, cold: wall", "s"),
            wall_warm: f("16 x 2 s playbook, concurrency 8, warm: wall", "s"),
            wall_ratio: f("16 x 2 s at concurrency 8, speed-up warm vs cold", "x")
                .target(Target::AtLeast(1.4)),
            pss_cold: f(
                "Ansible processes' PSS, 8 jobs in flight, cold: summed",
                "MiB",
            ),
            pss_warm: f(
                "Ansible processes' PSS, 8 jobs in flight, warm: summed",
                "MiB",
            ),
            pss_ratio: f("Ansible processes' PSS, cold / warm", "x").target(Target::AtLeast(2.0)),
            wrong_mode: f("runs the metrics count under the other mode", "runs")
                .target(Target::Below(1.0)),
            wrong_this_run: 0.0,
        }
    }

    /// The figures in the table's order.
    fn into_vec(self) -> Vec<Figure> {
        vec![
            self.start_cpu,
            self.start_wall,
            self.noop_cold,
            self.noop_warm,
            self.noop_ratio,
            self.sleep_cold,
            self.sleep_cold_sshd,
            self.sleep_warm,
            self.sleep_warm_sshd,
            self.sleep_ratio,
            self.wall_cold,
            self.wall_warm,
            self.wall_ratio,
            self.pss_cold,
            self.pss_warm,
            self.pss_ratio,
            self.wrong_mode,
        ]
    }

    /// The no-op playbook's CPU per job, warm and cold, each on a worker
    /// of its own without the SSH preflight (the play connects nowhere).
    async fn noop(&mut self, rig: &mut Rig, bench: &Bench<'_>, run: usize) {
        self.wrong_this_run = 0.0;
        let mut cpu = [JobCpu::default(); 2];
        for mode in Mode::order(run) {
            let mut worker = self.start(rig, bench, mode, "noop.yml", 1).await;
            let label = format!("n{run}{}", mode.name());
            cpu[mode as usize] = cpu_per_job(&mut worker, bench, &label).await;
            self.check_mode(&worker, mode, CPU_JOBS + 1).await;
            worker.stop().await;
        }
        let [warm, cold] = cpu;
        eprintln!(
            "  no-op run {}: CPU per job cold {:.0} ms (sshd {:.0}), warm {:.0} ms (sshd {:.0})",
            run + 1,
            cold.total(),
            cold.sshd,
            warm.total(),
            warm.sshd
        );
        self.noop_cold.runs.push(cold.total());
        self.noop_warm.runs.push(warm.total());
        self.noop_ratio.runs.push(cold.total() / warm.total());
    }

    /// The 2 s sleep over SSH: CPU per job one at a time, then the 16-job
    /// batch at concurrency 8 with its PSS, warm and cold alternating, on
    /// one worker per mode (preflight on, as deployed).
    async fn sleep(&mut self, rig: &mut Rig, bench: &Bench<'_>, run: usize) {
        let order = Mode::order(run);
        let mut workers = Vec::new();
        for mode in order {
            workers.push((
                mode,
                self.start(rig, bench, mode, "sleep2.yml", SLOTS).await,
            ));
        }
        let mut cpu = [JobCpu::default(); 2];
        for (mode, worker) in &mut workers {
            let label = format!("s{run}{}", mode.name());
            cpu[*mode as usize] = cpu_per_job(worker, bench, &label).await;
        }
        let mut walls = [0.0; 2];
        let mut pss = [None; 2];
        for (mode, worker) in &mut workers {
            let (wall, peak) = batch(worker, *mode, run).await;
            walls[*mode as usize] = wall;
            pss[*mode as usize] = peak;
        }
        for (mode, worker) in workers {
            self.check_mode(&worker, mode, CPU_JOBS + 1 + BATCH).await;
            worker.stop().await;
        }
        let [warm, cold] = cpu;
        let [wall_warm, wall_cold] = walls;
        let mib = |p: Option<Pss>| p.map_or(f64::NAN, |p| p.kib as f64 / MIB);
        let [pss_warm, pss_cold] = pss.map(mib);
        eprintln!(
            "  sleep run {}: CPU per job cold {:.0}+{:.0} ms (worker+sshd), warm {:.0}+{:.0} ms; \
             16 jobs cold {wall_cold:.1} s, warm {wall_warm:.1} s",
            run + 1,
            cold.worker,
            cold.sshd,
            warm.worker,
            warm.sshd,
        );
        for mode in [Mode::Cold, Mode::Warm] {
            if let Some(p) = pss[mode as usize] {
                eprintln!(
                    "  PSS {}: {:.0} MiB in {} processes, the controller {:.0} MiB; \
                     the others' Private_Dirty {:.0} MiB",
                    mode.name(),
                    p.kib as f64 / MIB,
                    p.processes,
                    p.controller_kib as f64 / MIB,
                    p.dirty_kib as f64 / MIB,
                );
            }
        }
        self.sleep_cold.runs.push(cold.worker);
        self.sleep_cold_sshd.runs.push(cold.sshd);
        self.sleep_warm.runs.push(warm.worker);
        self.sleep_warm_sshd.runs.push(warm.sshd);
        self.sleep_ratio.runs.push(cold.total() / warm.total());
        self.wall_cold.runs.push(wall_cold);
        self.wall_warm.runs.push(wall_warm);
        self.wall_ratio.runs.push(wall_cold / wall_warm);
        self.pss_cold.runs.push(pss_cold);
        self.pss_warm.runs.push(pss_warm);
        self.pss_ratio.runs.push(pss_cold / pss_warm);
        self.wrong_mode.runs.push(self.wrong_this_run);
    }

    /// A worker in `mode` running `playbook` with `slots`; a warm one is
    /// returned once its controller is ready, its start measured.
    async fn start(
        &mut self,
        rig: &mut Rig,
        bench: &Bench<'_>,
        mode: Mode,
        playbook: &str,
        slots: usize,
    ) -> Worker {
        let mut settings = ssh_settings(rig, bench.sshd, slots, bench.dir, playbook);
        settings.push(("ansible.controller", rig::q(mode.name())));
        // The no-op connects nowhere: no probe either, as in item 4.
        settings.push(("ssh.preflight", (playbook != "noop.yml").to_string()));
        let started = Instant::now();
        let worker = ssh_worker(rig, bench.sshd, &settings).await;
        if mode == Mode::Warm {
            worker.wait_log(READY, Duration::from_secs(60)).await;
            let wall = started.elapsed().as_secs_f64();
            let controller = controller_pid(worker.pid)
                .unwrap_or_else(|| panic!("ready, but no controller:\n{}", worker.log_tail()));
            // Its own CPU and its reaped children's (the self-check's, if
            // it forks any): what being ready cost.
            let (own, reaped) = rig::cpu_ms(controller).unwrap_or_default();
            self.start_cpu.runs.push(own + reaped);
            self.start_wall.runs.push(wall);
        }
        worker
    }

    /// Counts the runs `worker`'s metrics put under the other mode than
    /// its own (a warm run that fell back to cold, or the reverse), and
    /// warns if its own mode does not count all `jobs`.
    async fn check_mode(&mut self, worker: &Worker, mode: Mode, jobs: usize) {
        let Some(runs) = runs_by_mode(&worker.metrics().await) else {
            eprintln!(
                "  no infra_playbook_runs_total in the {} worker's metrics",
                mode.name()
            );
            self.wrong_this_run = f64::NAN;
            return;
        };
        let (own, other) = match mode {
            Mode::Warm => (runs[0], runs[1]),
            Mode::Cold => (runs[1], runs[0]),
        };
        if own != jobs as f64 || other > 0.0 {
            eprintln!(
                "  the {} worker ran {own} runs {} and {other} otherwise, of {jobs} jobs",
                mode.name(),
                mode.name()
            );
        }
        self.wrong_this_run += other;
    }
}

/// One job to 127.0.0.1 to warm up (a warm worker's first run may still
/// find caches cold), then `CPU_JOBS` one after another: the CPU of the
/// worker's tree and of the target's sshd over those, per job.
async fn cpu_per_job(worker: &mut Worker, bench: &Bench<'_>, label: &str) -> JobCpu {
    one_after_another(worker, label, 1).await;
    let before = cpu_now(worker.pid, &bench.sshd_pids).await;
    one_after_another(worker, label, CPU_JOBS).await;
    let after = cpu_now(worker.pid, &bench.sshd_pids).await;
    let per_job = |a: f64, b: f64| (a - b) / CPU_JOBS as f64;
    JobCpu {
        worker: per_job(after.worker, before.worker),
        sshd: per_job(after.sshd, before.sshd),
    }
}

/// The CPU so far (ms) of the worker's tree and of the sshd's, once the
/// last run's processes have had time to exit and be reaped.
async fn cpu_now(worker: u32, sshd_pids: &[u32]) -> JobCpu {
    tokio::time::sleep(Duration::from_millis(500)).await;
    JobCpu {
        worker: rig::tree_cpu_ms(worker),
        sshd: sshd_pids.iter().map(|&pid| rig::tree_cpu_ms(pid)).sum(),
    }
}

/// `jobs` jobs to 127.0.0.1, each sent once the one before has its result.
async fn one_after_another(worker: &mut Worker, label: &str, jobs: usize) {
    let jobs = (0..jobs)
        .map(|i| (request_id(label, i), "127.0.0.1".to_owned()))
        .collect();
    let (_, results) = closed_loop(worker, jobs, 1, Duration::from_secs(120)).await;
    check_success(label, &results);
}

/// The 16 sleep jobs to 127.0.0.1-16, all sent at once to the worker's 8
/// slots, the Ansible processes' PSS sampled meanwhile; returns their wall
/// time, s, and the PSS peak with 8 runs in flight.
async fn batch(worker: &mut Worker, mode: Mode, run: usize) -> (f64, Option<Pss>) {
    let jobs = (0..BATCH)
        .map(|i| {
            (
                request_id(&format!("b{run}{}", mode.name()), i),
                format!("127.0.0.{}", i + 1),
            )
        })
        .collect();
    let (stop, sampler) = sample_pss(worker.pid);
    let (wall, results) = closed_loop(worker, jobs, BATCH, Duration::from_secs(600)).await;
    stop.cancel();
    let peak = sampler.await.expect("PSS sampler");
    check_success("controller batch", &results);
    (wall.as_secs_f64(), peak)
}

/// Summed PSS of the Ansible processes, and how many there were; of it,
/// the controller's PSS, and the pages the other processes wrote
/// (`Private_Dirty`: a fork's copies on write and its own allocations).
#[derive(Debug, Clone, Copy)]
struct Pss {
    kib: u64,
    processes: usize,
    controller_kib: u64,
    dirty_kib: u64,
}

/// Every 250 ms until cancelled, counts the runs in flight under `worker`
/// (Python processes whose parent is the worker or its controller, the
/// controller aside) and, when there are 8, sums the PSS of every Python
/// process below the worker (the controller, the runs, Ansible's forks);
/// returns the largest sum.
fn sample_pss(worker: u32) -> (CancellationToken, JoinHandle<Option<Pss>>) {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        let mut peak: Option<Pss> = None;
        while !token.is_cancelled() {
            let python: Vec<u32> = crate::procs::descendants(worker as i32)
                .into_iter()
                .map(|pid| pid as u32)
                .filter(|&pid| rig::is_python(pid))
                .collect();
            let controller = python
                .iter()
                .copied()
                .find(|&pid| is_controller(worker, pid));
            let runs = python
                .iter()
                .filter(|&&pid| Some(pid) != controller)
                .filter(|&&pid| {
                    rig::parent_of(pid).is_some_and(|p| p == worker || Some(p) == controller)
                })
                .count();
            if runs == SLOTS {
                let kib = python.iter().filter_map(|&pid| rig::pss_kib(pid)).sum();
                if peak.is_none_or(|p| kib > p.kib) {
                    let others = python.iter().filter(|&&pid| Some(pid) != controller);
                    peak = Some(Pss {
                        kib,
                        processes: python.len(),
                        controller_kib: controller.and_then(rig::pss_kib).unwrap_or(0),
                        dirty_kib: others
                            .filter_map(|&pid| rig::rollup_kib(pid, "Private_Dirty:"))
                            .sum(),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    });
    (stop, handle)
}

/// The worker's controller: its child running the controller script.
fn controller_pid(worker: u32) -> Option<u32> {
    crate::procs::descendants(worker as i32)
        .into_iter()
        .map(|pid| pid as u32)
        .find(|&pid| is_controller(worker, pid))
}

fn is_controller(worker: u32, pid: u32) -> bool {
    rig::parent_of(pid) == Some(worker)
        && crate::procs::cmdline(pid as i32).contains(CONTROLLER_SCRIPT)
}

/// The runs `/metrics` counts by mode, `[warm, cold]`; None without the
/// counter.
fn runs_by_mode(metrics: &str) -> Option<[f64; 2]> {
    let mut runs = [0.0; 2];
    let mut found = false;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("infra_playbook_runs_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(f64::NAN);
        found = true;
        if labels.contains(r#"controller="warm""#) {
            runs[0] += value;
        } else if labels.contains(r#"controller="cold""#) {
            runs[1] += value;
        }
    }
    found.then_some(runs)
}
