//! `make bench`: the worker's dispatch overhead, concurrency, memory,
//! Ansible's cost per job, and the warm controller against cold runs,
//! measured against the real release binary, the local Redis and
//! Postgres, and a local sshd.
//!
//! Prints a Markdown table (the README's Performance section) and writes
//! every run's values to `<target>/bench/results.json`. Each figure is the
//! median of several runs, with its min-max spread; ratios are taken within
//! one run, never across runs.
//!
//! Usage: `cargo bench --bench bench [-- ITEM...]`, ITEM one of `dispatch`,
//! `concurrency`, `memory`, `ansible`, `controller` (default: all).
//! `BENCH_RUNS` (3) sets the runs per figure, `BENCH_SAMPLES` (15) the no-op samples;
//! `BENCH_KEEP=1` keeps the worker configs and logs; `BENCH_REDIS_URL`, `BENCH_DATABASE_URL` and `BENCH_ANSIBLE_PLAYBOOK`
//! override the local defaults.
//!
//! Layout: `rig` (Redis, Postgres, worker processes, timing results),
//! `host` (the stand-in servers: the test suite's sshd host), `items` (the
//! five measurements, one module each), `stats` (medians, spread, targets,
//! the table).

mod items;
mod rig;
mod stats;

// The stand-in servers: the test suite's sshd host, shared rather than
// copied (a bench cannot import the suite's crate).
// The bench uses only some of what these suite modules offer the tests.
#[allow(dead_code)]
#[path = "../../tests/suite/helpers/host.rs"]
mod host;
// Likewise: only what `host` and the rig call of the process helpers.
#[allow(dead_code)]
#[path = "../../tests/suite/helpers/procs.rs"]
mod procs;

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use stats::Figure;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (make test)
    // builds this target too and runs it without: a 6-minute benchmark has
    // no place in the test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmarks run with `make bench` (cargo bench); skipped under cargo test");
        return;
    }
    let wanted = Wanted::from_args();
    let runs = env_usize("BENCH_RUNS", 3);
    let samples = env_usize("BENCH_SAMPLES", 15);
    let started = Instant::now();
    let mut rig = rig::Rig::new().await;
    let mut figures = measure(&mut rig, &wanted, runs, samples).await;
    rig.cleanup().await;

    // Items in their numbered order, whatever order they ran in.
    figures.sort_by_key(|f| f.item);
    let table = stats::table(&figures);
    let elapsed = started.elapsed().as_secs_f64();
    println!("\n{table}");
    println!("({runs} runs per figure, {samples} no-op samples; {elapsed:.0} s in all)");
    let out = write_results(&figures, runs, samples, elapsed);
    println!("results: {}", out.display());
}

/// The items named on the command line; none named means all.
struct Wanted(Vec<String>);

impl Wanted {
    fn from_args() -> Wanted {
        // Anything else than flags is an item name.
        Wanted(
            std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
        )
    }

    fn has(&self, item: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|w| w == item)
    }
}

/// Runs the wanted items, each on workers of its own; the stand-in servers
/// start only if an item runs real playbooks.
async fn measure(rig: &mut rig::Rig, wanted: &Wanted, runs: usize, samples: usize) -> Vec<Figure> {
    let mut figures = Vec::new();
    if wanted.has("dispatch") {
        eprintln!("item 1: dispatch overhead");
        figures.extend(items::dispatch(rig, runs).await);
    }
    let sshd =
        start_sshd(wanted.has("concurrency") || wanted.has("ansible") || wanted.has("controller"))
            .await;
    if let Some(sshd) = &sshd
        && wanted.has("concurrency")
    {
        eprintln!("item 2: concurrency (and the Ansible children's memory)");
        figures.extend(items::concurrency(rig, sshd, runs).await);
    }
    if wanted.has("memory") {
        eprintln!("item 3: memory");
        figures.extend(items::memory(rig, runs).await);
    }
    if let Some(sshd) = &sshd
        && wanted.has("ansible")
    {
        eprintln!("item 4: Ansible's cost per job");
        figures.extend(items::ansible_cost(rig, sshd, samples, runs).await);
    }
    if let Some(sshd) = &sshd
        && wanted.has("controller")
    {
        eprintln!("item 5: the warm controller against cold runs");
        figures.extend(items::controller(rig, sshd, runs).await);
    }
    figures
}

/// The stand-in servers, 127.0.0.1 to 127.0.0.16 on one sshd, if `needed`.
async fn start_sshd(needed: bool) -> Option<host::TestHost> {
    if !needed {
        return None;
    }
    let servers: Vec<String> = (1..=16).map(|i| format!("127.0.0.{i}")).collect();
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    Some(host::TestHost::start_on_all(&servers).await)
}

/// Writes every figure's runs, with the machine's state, to
/// `<target>/bench/results.json`; returns the file's path.
fn write_results(figures: &[Figure], runs: usize, samples: usize, elapsed: f64) -> PathBuf {
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).expect("bench output dir");
    let out = out_dir.join("results.json");
    let report = json!({
        "when": chrono::Utc::now().to_rfc3339(),
        "runs": runs,
        "samples": samples,
        "elapsed_secs": elapsed,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json"))
        .expect("write results.json");
    out
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The Cargo target directory: this binary is `<target>/<profile>/deps/bench-*`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| "target".into())
}
