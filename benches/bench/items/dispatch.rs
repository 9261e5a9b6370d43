//! Item 1, dispatch overhead: one worker running a stub that prints a PLAY
//! RECAP, driven three ways per run (32 jobs kept in flight, one at a time,
//! an open loop at half the throughput), and the CPU each process spends
//! per job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{RECAP, ansible_dir, check_success, stub_settings};
use crate::rig::{self, Rig, Worker, closed_loop, millis, open_loop, request_id};
use crate::stats::{Figure, Target, median, percentile};

const ITEM: &str = "1 dispatch";
/// Jobs of the saturated phase.
const JOBS: usize = 2000;
/// Jobs the client keeps unanswered in the saturated phase, and the
/// worker's slots.
const IN_FLIGHT: usize = 32;
/// Jobs sent one at a time.
const ONE_BY_ONE: usize = 500;
/// Jobs of the open loop at half the throughput.
const HALF_LOAD: usize = 1000;

/// Item 1, on one worker at concurrency 32 per run: throughput with 32
/// jobs kept in flight, then the overhead per job, one job at a time and at
/// half that throughput.
///
/// With 32 jobs always in flight the worker is saturated, and each job's
/// latency is the time to get through the 31 ahead of it (Little's law:
/// 32 / throughput), not overhead; so overhead is measured where jobs do
/// not queue: latency minus the stub's own spawn-to-exit time.
pub async fn dispatch(rig: &mut Rig, runs: usize) -> Vec<Figure> {
    let stub = recap_stub(rig);
    let dir = ansible_dir(rig, true);
    let mut figures = Figures::new();
    for run in 0..runs {
        let stub_p50 = stub_spawn_to_exit(&stub).await;
        let mut worker = rig.worker(&stub_settings(IN_FLIGHT, &stub, &dir)).await;
        let (jobs_per_sec, mut failed) = figures.saturated(&mut worker, run).await;
        figures.stub_alone.runs.push(stub_p50);
        failed += figures.one_by_one(&mut worker, run, stub_p50).await;
        failed += figures
            .half_load(&mut worker, run, jobs_per_sec, stub_p50)
            .await;
        figures.failures.runs.push(failed as f64);
        worker.stop().await;
        figures.log_run(run, jobs_per_sec, stub_p50);
    }
    figures.into_vec()
}

/// Item 1's figures, one value per run each.
struct Figures {
    rate: Figure,
    p50: Figure,
    p99: Figure,
    stub_alone: Figure,
    seq50: Figure,
    seq99: Figure,
    half50: Figure,
    half99: Figure,
    failures: Figure,
    cpu_worker: Figure,
    cpu_stub: Figure,
    cpu_pg: Figure,
    cpu_redis: Figure,
    cpu_all: Figure,
}

impl Figures {
    fn new() -> Figures {
        let ms = |name: &str| Figure::new(ITEM, name, "ms");
        Figures {
            rate: Figure::new(ITEM, "jobs/s (2,000 stub jobs, 32 in flight)", "jobs/s")
                .target(Target::AtLeast(1000.0)),
            p50: ms("latency p50, 32 in flight (queueing: 32 / jobs/s)"),
            p99: ms("latency p99, 32 in flight"),
            stub_alone: ms("stub alone (spawn to exit, idle machine) p50"),
            seq50: ms("overhead p50, one job at a time (latency - stub)"),
            seq99: ms("overhead p99, one job at a time (latency - stub)")
                .target(Target::Below(5.0)),
            half50: ms("overhead p50 at half the throughput (open loop)"),
            half99: ms("overhead p99 at half the throughput (open loop)"),
            failures: Figure::new(ITEM, "failed jobs", "jobs"),
            cpu_worker: ms("CPU per job: worker process"),
            cpu_stub: ms("CPU per job: the stub child"),
            cpu_pg: ms("CPU per job: Postgres"),
            cpu_redis: ms("CPU per job: Redis"),
            cpu_all: ms("CPU per job: whole machine (others' work too)"),
        }
    }

    /// The figures in the table's order.
    fn into_vec(self) -> Vec<Figure> {
        vec![
            self.rate,
            self.p50,
            self.p99,
            self.stub_alone,
            self.seq50,
            self.seq99,
            self.half50,
            self.half99,
            self.failures,
            self.cpu_worker,
            self.cpu_stub,
            self.cpu_pg,
            self.cpu_redis,
            self.cpu_all,
        ]
    }

    /// 2,000 jobs with 32 kept in flight: throughput, latency (queueing at
    /// this load) and each process's CPU per job. Returns the jobs per
    /// second and the failed jobs.
    async fn saturated(&mut self, worker: &mut Worker, run: usize) -> (f64, usize) {
        let before = CpuCounters::before(worker.pid);
        let (wall, results) = closed_loop(
            worker,
            stub_jobs(&format!("d{run}"), JOBS),
            IN_FLIGHT,
            Duration::from_secs(120),
        )
        .await;
        self.push_cpu_per_job(&before, &CpuCounters::after(worker.pid));
        let jobs_per_sec = JOBS as f64 / wall.as_secs_f64();
        let latencies: Vec<f64> = results.iter().map(|(ms, _)| *ms).collect();
        self.rate.runs.push(jobs_per_sec);
        push_p50_p99(&latencies, &mut self.p50, &mut self.p99);
        (jobs_per_sec, check_success("dispatch", &results))
    }

    /// Each counter's growth over the phase, per job.
    fn push_cpu_per_job(&mut self, before: &CpuCounters, after: &CpuCounters) {
        let per_job = |ms: f64| ms / JOBS as f64;
        let runs = [
            (&mut self.cpu_all, after.machine - before.machine),
            (&mut self.cpu_pg, after.postgres - before.postgres),
            (&mut self.cpu_redis, after.redis - before.redis),
            (&mut self.cpu_worker, after.worker.0 - before.worker.0),
            (&mut self.cpu_stub, after.worker.1 - before.worker.1),
        ];
        for (figure, ms) in runs {
            figure.runs.push(per_job(ms));
        }
    }

    /// 500 jobs one at a time: the overhead where jobs do not queue.
    /// Returns the failed jobs.
    async fn one_by_one(&mut self, worker: &mut Worker, run: usize, stub_p50: f64) -> usize {
        let (_, results) = closed_loop(
            worker,
            stub_jobs(&format!("s{run}"), ONE_BY_ONE),
            1,
            Duration::from_secs(60),
        )
        .await;
        let (p50, p99) = (&mut self.seq50, &mut self.seq99);
        push_overhead("dispatch one by one", &results, stub_p50, p50, p99)
    }

    /// 1,000 jobs sent at half the throughput just measured, whatever comes
    /// back (an open loop): the overhead under load, where jobs seldom
    /// queue. Returns the failed jobs.
    async fn half_load(
        &mut self,
        worker: &mut Worker,
        run: usize,
        jobs_per_sec: f64,
        stub_p50: f64,
    ) -> usize {
        let gap = Duration::from_secs_f64(2.0 / jobs_per_sec);
        let results = open_loop(
            worker,
            stub_jobs(&format!("h{run}"), HALF_LOAD),
            gap,
            Duration::from_secs(60),
        )
        .await;
        let (p50, p99) = (&mut self.half50, &mut self.half99);
        push_overhead("dispatch at half load", &results, stub_p50, p50, p99)
    }

    /// One line of progress per run.
    fn log_run(&self, run: usize, jobs_per_sec: f64, stub_p50: f64) {
        eprintln!(
            "  dispatch run {}: {jobs_per_sec:.0} jobs/s; overhead one at a time p50 {:.2} ms, p99 {:.2} ms; at half load p99 {:.2} ms; stub {stub_p50:.2} ms",
            run + 1,
            self.seq50.runs[run],
            self.seq99.runs[run],
            self.half99.runs[run],
        );
    }
}

/// CPU time (ms) spent so far by the whole machine, Postgres, Redis and the
/// worker (its own, and its reaped children's: the stubs).
struct CpuCounters {
    machine: f64,
    postgres: f64,
    redis: f64,
    worker: (f64, f64),
}

impl CpuCounters {
    /// Read before the phase: the machine's last, so that the two scans of
    /// `/proc` for Postgres and Redis are not counted in its busy time.
    fn before(pid: u32) -> CpuCounters {
        let (postgres, redis) = (rig::cpu_ms_of("postgres"), rig::cpu_ms_of("redis-server"));
        CpuCounters {
            machine: rig::machine_busy_ms(),
            postgres,
            redis,
            worker: rig::cpu_ms(pid).unwrap_or_default(),
        }
    }

    /// Read after the phase: the machine's first, for the same reason.
    fn after(pid: u32) -> CpuCounters {
        let machine = rig::machine_busy_ms();
        CpuCounters {
            machine,
            postgres: rig::cpu_ms_of("postgres"),
            redis: rig::cpu_ms_of("redis-server"),
            worker: rig::cpu_ms(pid).unwrap_or_default(),
        }
    }
}

/// Pushes the p50 and p99 of the overhead, each result's latency minus the
/// stub's own spawn-to-exit time (what the worker adds around its child);
/// returns the failed jobs.
fn push_overhead(
    what: &str,
    results: &[(f64, Value)],
    stub_p50: f64,
    p50: &mut Figure,
    p99: &mut Figure,
) -> usize {
    let failed = check_success(what, results);
    let overhead: Vec<f64> = results.iter().map(|(ms, _)| ms - stub_p50).collect();
    push_p50_p99(&overhead, p50, p99);
    failed
}

fn push_p50_p99(values: &[f64], p50: &mut Figure, p99: &mut Figure) {
    p50.runs.push(percentile(values, 50.0));
    p99.runs.push(percentile(values, 99.0));
}

/// The dispatch stub: `recap_stub.c`, static and on x86_64 without a C
/// library (a shell script costs the machine four times the CPU to start,
/// and the item measures the worker, not `sh`); the script when there is
/// no C compiler.
fn recap_stub(rig: &Rig) -> PathBuf {
    let recap: String = RECAP
        .lines()
        .map(|line| line.trim_start_matches("echo '").trim_end_matches('\''))
        .map(|line| format!("{line}\\n"))
        .collect();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bench/recap_stub.c");
    let binary = rig.path("stub-ok");
    let mut cc = std::process::Command::new("cc");
    cc.args(["-O2", "-static", "-fno-stack-protector"]);
    if cfg!(target_arch = "x86_64") {
        cc.arg("-nostdlib");
    }
    let compiled = cc
        .arg(format!("-DRECAP=\"{recap}\""))
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .is_ok_and(|status| status.success());
    if compiled {
        return binary;
    }
    eprintln!("  no C stub (cc failed); the dispatch stub is a shell script");
    rig.script("stub-ok", &format!("#!/bin/sh\n{RECAP}"))
}

/// Jobs for the stub, one address each: the one-job-per-server lock must
/// not serialize them.
fn stub_jobs(label: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            (
                request_id(label, i),
                format!("10.77.{}.{}", i / 250, i % 250 + 1),
            )
        })
        .collect()
}

/// The stub's own spawn-to-exit time on an idle machine, median of 100.
async fn stub_spawn_to_exit(stub: &Path) -> f64 {
    let mut alone = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let out = tokio::process::Command::new(stub)
            .output()
            .await
            .expect("run stub");
        assert!(out.status.success());
        alone.push(millis(t.elapsed()));
    }
    median(&alone)
}
