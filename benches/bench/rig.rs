//! The benchmark's world: the local Redis and Postgres (one database per
//! `make bench`), real worker processes (the release binary) with a config
//! written per start and a key prefix of their own, and the client side
//! that enqueues jobs and times their results.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The worker binary `cargo bench` built with the release profile.
pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_infra-service");
/// The variable the payloads' `github_token_ref` names.
const TOKEN_VAR: &str = "BENCH_GITHUB_TOKEN";

/// Redis, Postgres and a scratch directory shared by every item.
pub struct Rig {
    pub redis_url: String,
    admin_url: String,
    db_name: String,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    pub ansible_playbook: String,
    /// The interpreter of `ansible_playbook` (its `#!` line): the warm
    /// controller's `ansible.python`, so both modes run the same Python.
    pub python: String,
    /// A directory on a tmpfs for the workers' run directories, if any.
    tmpfs: Option<tempfile::TempDir>,
    starts: u32,
}

impl Rig {
    pub async fn new() -> Rig {
        let redis_url = env_or("BENCH_REDIS_URL", "redis://127.0.0.1:6379");
        let admin_url = env_or(
            "BENCH_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let db_name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("postgres at {admin_url}: {e}"));
        // The name is ours (`bench_` and hex).
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{db_name}""#)))
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        let (base, _) = admin_url.rsplit_once('/').expect("a database URL");
        let db_url = format!("{base}/{db_name}");
        let dir = tempfile::Builder::new()
            .prefix("infra-bench-")
            .tempdir()
            .expect("bench temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod bench dir");
        let ansible_playbook = ansible_playbook();
        Rig {
            python: interpreter_of(&ansible_playbook),
            ansible_playbook,
            redis_url,
            admin_url,
            db_name,
            db_url,
            dir,
            tmpfs: tempfile::Builder::new()
                .prefix("iab-")
                .tempdir_in("/dev/shm")
                .ok(),
            starts: 0,
        }
    }

    /// Drops the run's database; keeps the scratch directory (configs,
    /// worker logs) when `BENCH_KEEP` is set.
    pub async fn cleanup(self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("kept {}", self.dir.keep().display());
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                    self.db_name
                )))
                .await;
        }
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an executable script.
    pub fn script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod script");
        path
    }

    /// Starts a worker with the bench defaults plus `settings` (TOML lines
    /// `section.key = value`, later ones win), and waits until it reads.
    pub async fn worker(&mut self, settings: &[(&str, String)]) -> Worker {
        self.starts += 1;
        let prefix = format!(
            "bench:{}:{}:",
            &uuid::Uuid::new_v4().simple().to_string()[..8],
            self.starts
        );
        let dir = self.worker_dir();
        let mut all: Vec<(&str, String)> = self.defaults(&prefix, &dir);
        all.extend(settings.iter().cloned());
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&all)).expect("write config");
        let log_path = dir.join("worker.log");
        let child = self
            .worker_command(&config, &dir, &log_path)
            .spawn()
            .expect("spawn infra-service worker");
        let pid = child.id().expect("worker pid");
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let worker = Worker {
            child,
            pid,
            prefix,
            log_path,
            dir,
            con: client
                .get_multiplexed_async_connection()
                .await
                .expect("redis"),
            client,
        };
        worker
            .wait_log("worker started", Duration::from_secs(60))
            .await;
        worker
    }

    /// A directory of its own for the next worker (config, log, secrets).
    fn worker_dir(&self) -> PathBuf {
        let dir = self.path(&format!("worker{}", self.starts));
        std::fs::create_dir_all(dir.join("secrets")).expect("worker dir");
        std::fs::set_permissions(dir.join("secrets"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod secrets");
        dir
    }

    /// The settings every bench worker starts from: this rig's Redis (keys
    /// under `prefix`) and database, secrets in `dir`, no heartbeat file,
    /// any free port for HTTP, JSON logs.
    fn defaults(&self, prefix: &str, dir: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("redis.url", q(&self.redis_url)),
            ("redis.key_prefix", q(prefix)),
            ("postgres.url", q(&self.db_url)),
            ("secrets.dir", q(&dir.join("secrets").to_string_lossy())),
            ("http.listen", q("127.0.0.1:0")),
            ("heartbeat.path", q("")),
            ("log.format", q("json")),
            ("worker.job_timeout_secs", "300".into()),
        ]
    }

    /// `infra-service worker --config config`, logging to `log_path`, with
    /// none of the caller's overrides (`INFRA__*`, `ANSIBLE_*`, `RUST_LOG`):
    /// the config file alone decides.
    fn worker_command(&self, config: &Path, dir: &Path, log_path: &Path) -> Command {
        let log = std::fs::File::create(log_path).expect("worker log");
        let mut command = Command::new(WORKER_BIN);
        command
            .arg("worker")
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("INFRA__") || name.starts_with("ANSIBLE_") || name == "RUST_LOG" {
                command.env_remove(name.as_ref());
            }
        }
        command.env(TOKEN_VAR, "ghp_bench_token_not_a_secret");
        // Run directories on a tmpfs, as in the compose stack (its worker's
        // /tmp is one); on disk, creating and removing them is a tenth of
        // the machine's CPU per stub job.
        if let Some(tmp) = &self.tmpfs {
            command.env("TMPDIR", tmp.path());
        }
        command
    }
}

/// `settings` as TOML, one table per section; a key set twice keeps its
/// last value.
fn config_toml(settings: &[(&str, String)]) -> String {
    let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (key, value) in settings {
        let (section, name) = key.split_once('.').expect("section.key");
        let lines = sections.entry(section).or_default();
        lines.retain(|l| !l.starts_with(&format!("{name} =")));
        lines.push(format!("{name} = {value}"));
    }
    sections
        .iter()
        .map(|(section, lines)| format!("[{section}]\n{}\n", lines.join("\n")))
        .collect()
}

/// A quoted TOML string.
pub fn q(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// A running `infra-service worker` and a client of its queues.
pub struct Worker {
    child: Child,
    pub pid: u32,
    prefix: String,
    log_path: PathBuf,
    pub dir: PathBuf,
    client: redis::Client,
    con: MultiplexedConnection,
}

impl Worker {
    /// Writes a secret file under the worker's `secrets.dir`.
    pub fn secret(dir: &Path, name: &str, text: &str) {
        let path = dir.join("secrets").join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("secret dir");
        std::fs::write(&path, text).expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod secret");
    }

    /// Waits until the worker's log contains `needle`; panics after `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker never logged {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds one deploy job; returns when Redis has it.
    pub async fn enqueue(&mut self, request_id: &str, server_ip: &str) {
        let payload = json!({
            "request_id": request_id,
            "project_id": uuid::Uuid::new_v4().to_string(),
            "repo_full_name": "acme/bench",
            "server_ip": server_ip,
            "port": 8080,
            "github_token_ref": format!("env:{TOKEN_VAR}"),
        })
        .to_string();
        let queue = format!("{}ansible:deploy:queue", self.prefix);
        let _: String = self
            .con
            .xadd(queue, "*", &[("payload", payload)])
            .await
            .expect("XADD");
    }

    /// Every result published on `deploy:results` from now on, with the
    /// moment it was read, from a connection of its own.
    pub async fn results(&self) -> mpsc::UnboundedReceiver<(Instant, Value)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut con = self
            .client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let stream = format!("{}deploy:results", self.prefix);
        // From the newest id now, not `$`: an `XREAD ... $` that times out
        // and is sent again misses what was added in between.
        let newest: StreamRangeReply = con
            .xrevrange_count(&stream, "+", "-", 1)
            .await
            .expect("XREVRANGE");
        let mut last = newest
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone());
        tokio::spawn(async move {
            loop {
                let options = StreamReadOptions::default().count(1000).block(200);
                let reply: Option<StreamReadReply> =
                    match con.xread_options(&[&stream], &[&last], &options).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            eprintln!("reading results: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                let now = Instant::now();
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last = entry.id.clone();
                    let payload: String = entry.get("payload").unwrap_or_default();
                    let result = serde_json::from_str(&payload).unwrap_or(Value::Null);
                    if tx.send((now, result)).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// The worker's `/metrics` text, from the address its log gives
    /// (`http listening`); empty if it cannot be read.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let Some(addr) = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"] == "http listening")
            .and_then(|line| line["listen"].as_str().map(str::to_owned))
        else {
            return String::new();
        };
        let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
            return String::new();
        };
        let request = "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n";
        let mut response = String::new();
        if stream.write_all(request.as_bytes()).await.is_err()
            || stream.read_to_string(&mut response).await.is_err()
        {
            return String::new();
        }
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// VmRSS of the worker process, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the drain; SIGKILL after 30 s.
    pub async fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.forget().await;
    }

    /// Removes every key under the worker's prefix: queues and result
    /// streams do not expire, and a `make bench` leaves hundreds of MiB.
    async fn forget(&mut self) {
        let mut keys: Vec<String> = Vec::new();
        match self.con.scan_match(format!("{}*", self.prefix)).await {
            Ok(mut iter) => {
                while let Some(Ok(key)) = iter.next_item().await {
                    keys.push(key);
                }
            }
            Err(e) => {
                eprintln!("listing the bench's Redis keys: {e}");
                return;
            }
        }
        for batch in keys.chunks(1000) {
            if let Err(e) = self.con.unlink::<_, ()>(batch).await {
                eprintln!("removing the bench's Redis keys: {e}");
                return;
            }
        }
    }

    /// The worker's log, for diagnosing a failed run.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Enqueues `jobs` (request id, server) keeping at most `in_flight` of them
/// unanswered, and returns each job's enqueue→result latency (ms) and its
/// result, in completion order, plus the wall time of the whole batch.
pub async fn closed_loop(
    worker: &mut Worker,
    jobs: Vec<(String, String)>,
    in_flight: usize,
    timeout: Duration,
) -> (Duration, Vec<(f64, Value)>) {
    let mut results = worker.results().await;
    let total = jobs.len();
    let mut pending = jobs.into_iter();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut done = Vec::with_capacity(total);
    let started = Instant::now();
    for (id, server) in pending.by_ref().take(in_flight) {
        sent.insert(id.clone(), Instant::now());
        worker.enqueue(&id, &server).await;
    }
    while done.len() < total {
        let next = tokio::time::timeout(timeout, results.recv()).await;
        let Ok(Some((at, result))) = next else {
            panic!(
                "{} of {total} results after {timeout:?}; worker log:\n{}",
                done.len(),
                worker.log_tail()
            );
        };
        let id = result["request_id"].as_str().unwrap_or_default().to_owned();
        let Some(enqueued) = sent.remove(&id) else {
            continue;
        };
        done.push((millis(at - enqueued), result));
        if let Some((id, server)) = pending.next() {
            sent.insert(id.clone(), Instant::now());
            worker.enqueue(&id, &server).await;
        }
    }
    (started.elapsed(), done)
}

/// Enqueues `jobs` one every `gap` whatever comes back (an open loop: the
/// load does not slow down when the worker does), then waits for every
/// result; returns each job's enqueue→result latency (ms) and its result.
pub async fn open_loop(
    worker: &mut Worker,
    jobs: Vec<(String, String)>,
    gap: Duration,
    timeout: Duration,
) -> Vec<(f64, Value)> {
    let mut results = worker.results().await;
    let total = jobs.len();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut done = Vec::with_capacity(total);
    let mut answer = |at: Instant, result: Value, sent: &mut HashMap<String, Instant>| {
        let id = result["request_id"].as_str().unwrap_or_default();
        if let Some(enqueued) = sent.remove(id) {
            done.push((millis(at - enqueued), result));
        }
    };
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (id, server) in jobs {
        tick.tick().await;
        sent.insert(id.clone(), Instant::now());
        worker.enqueue(&id, &server).await;
        while let Ok((at, result)) = results.try_recv() {
            answer(at, result, &mut sent);
        }
    }
    while !sent.is_empty() {
        let next = tokio::time::timeout(timeout, results.recv()).await;
        let Ok(Some((at, result))) = next else {
            panic!(
                "{} of {total} results after {timeout:?}; worker log:\n{}",
                total - sent.len(),
                worker.log_tail()
            );
        };
        answer(at, result, &mut sent);
    }
    done
}

/// Fractional milliseconds.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A request id unique to this benchmark run.
pub fn request_id(label: &str, i: usize) -> String {
    format!(
        "{label}-{i}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The real `ansible-playbook`, past any pyenv shim, so the worker and the
/// bare runs start the same program.
fn ansible_playbook() -> String {
    if let Ok(bin) = std::env::var("BENCH_ANSIBLE_PLAYBOOK") {
        return bin;
    }
    let pyenv = std::process::Command::new("pyenv")
        .args(["which", "ansible-playbook"])
        .output();
    if let Ok(out) = pyenv
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    "ansible-playbook".to_owned()
}

/// The interpreter a Python script's `#!` line names (`/usr/bin/env
/// python3` gives `python3`); `python3` if there is none.
fn interpreter_of(script: &str) -> String {
    let resolved = which(script).unwrap_or_else(|| script.into());
    let text = std::fs::read(&resolved).unwrap_or_default();
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let Some(shebang) = first.strip_prefix("#!") else {
        return "python3".to_owned();
    };
    let mut words = shebang.split_whitespace();
    match words.next() {
        Some(env) if env.ends_with("/env") => words.next().unwrap_or("python3").to_owned(),
        Some(interpreter) => interpreter.to_owned(),
        None => "python3".to_owned(),
    }
}

/// `program` looked up on PATH, unless it is a path already.
fn which(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Some(program.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// VmRSS of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// VmHWM (peak RSS) of `pid`, KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    kib_in(pid, "status", field)
}

/// The KiB of `field` (`VmRSS:`, `Pss:`, ...) in `/proc/<pid>/<file>`.
fn kib_in(pid: u32, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Every process below `pid` (the playbooks and theirs): count and summed
/// VmRSS, KiB.
pub fn children_rss(pid: u32) -> (usize, u64) {
    let below = crate::procs::descendants(pid as i32);
    let total = below.iter().filter_map(|&pid| rss_kib(pid as u32)).sum();
    (below.len(), total)
}

/// How many children `pid` has: one per playbook in flight.
pub fn direct_children(pid: u32) -> usize {
    parents().iter().filter(|(_, ppid)| *ppid == pid).count()
}

/// CPU time of `pid` in ms: its own (user + system), and that of its
/// reaped children.
pub fn cpu_ms(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After ')': state is field 3, so utime (14) is index 11 here.
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    let tick = 1000.0 / clock_ticks();
    Some(((f[0] + f[1]) * tick, (f[2] + f[3]) * tick))
}

/// CPU time (ms) of this process's children that it has reaped.
pub fn reaped_cpu_ms() -> f64 {
    // SAFETY: getrusage(2) writes only into `usage`.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Summed CPU time (ms) of every process whose name is `comm`.
pub fn cpu_ms_of(comm: &str) -> f64 {
    parents()
        .iter()
        .filter(|&&(pid, _)| comm_is(pid, comm))
        .filter_map(|(pid, _)| cpu_ms(*pid))
        .map(|(own, _)| own)
        .sum()
}

/// Busy CPU time of the whole machine (every core), ms.
pub fn machine_busy_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle, iowait.
    let busy: f64 =
        f.iter().take(8).sum::<f64>() - f.get(3).unwrap_or(&0.0) - f.get(4).unwrap_or(&0.0);
    busy * 1000.0 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (pid, parent pid) of every process.
fn parents() -> Vec<(u32, u32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect()
}

/// CPU time (ms) of `root` and of every process below it: each live one's
/// own and that of the children it reaped (which holds, in turn, what those
/// had reaped). A process is counted once: live, or in its reaper's total.
/// Read when the tree is quiet: a process reaped during the scan may be
/// missed or counted twice.
pub fn tree_cpu_ms(root: u32) -> f64 {
    std::iter::once(root as i32)
        .chain(crate::procs::descendants(root as i32))
        .filter_map(|pid| cpu_ms(pid as u32))
        .map(|(own, reaped)| own + reaped)
        .sum()
}

/// The children of `parent` whose name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    parents()
        .into_iter()
        .filter(|&(pid, ppid)| ppid == parent && comm_is(pid, comm))
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether `pid`'s name (`/proc/<pid>/comm`) is `comm`.
pub fn comm_is(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
}

/// The parent of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the last ')' (the name may hold spaces).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` runs a Python interpreter (its executable's name starts
/// with `python`): `ansible-playbook` is a Python script, so its process's
/// executable is the interpreter, as are its forks and the controller's.
pub fn is_python(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        exe.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("python"))
    })
}

/// Proportional set size of `pid`, KiB (`/proc/<pid>/smaps_rollup`): each
/// page shared by n processes counts 1/n in each, so a sum over processes
/// counts it once, unlike RSS.
pub fn pss_kib(pid: u32) -> Option<u64> {
    rollup_kib(pid, "Pss:")
}

/// One field (`Pss:`, `Private_Dirty:`, ...) of `/proc/<pid>/smaps_rollup`,
/// KiB.
pub fn rollup_kib(pid: u32, field: &str) -> Option<u64> {
    kib_in(pid, "smaps_rollup", field)
}
