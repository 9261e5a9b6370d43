//! Every metric the service exports, in one registry, each named `infra_*`.
//! Call sites record with one-line functions (`metrics::job_finished(..)`);
//! `http` renders the registry for `/metrics`. Queue depth is not recorded
//! as it changes: `http` reads it from Redis at scrape time and hands it to
//! `set_backlog`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::job::JobResult;
use crate::queue::Backlog;

/// Job duration buckets in seconds: a deploy takes seconds to minutes, a
/// provision with a reinstall up to the hour `worker.job_timeout_secs` allows.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// The `error_code` label of a job that succeeded.
pub const NO_ERROR: &str = "none";

/// What a status write that failed was writing (the `write` label).
#[derive(Debug, Clone, Copy)]
pub enum StatusWrite {
    /// A job's row in the jobs ledger at its end.
    JobLedger,
    /// A server's row during provisioning.
    ServerStatus,
}

impl StatusWrite {
    fn as_str(self) -> &'static str {
        match self {
            StatusWrite::JobLedger => "job_ledger",
            StatusWrite::ServerStatus => "server_status",
        }
    }
}

struct Metrics {
    registry: Registry,
    jobs_finished: IntCounterVec,
    job_duration: HistogramVec,
    jobs_in_flight: IntGauge,
    ssh_probe_failures: IntCounterVec,
    dead_letters: IntCounter,
    redis_reconnects: IntCounter,
    redis_master_changes: IntCounter,
    replica_waits_short: IntCounter,
    postgres_errors: IntCounter,
    postgres_connections: IntCounter,
    status_write_failures: IntCounterVec,
    stream_pending: IntGaugeVec,
    stream_lag: IntGaugeVec,
    playbook_runs: IntCounterVec,
    controller_restarts: IntCounter,
    controller_rss: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "infra_job_duration_seconds",
                "Time from taking a job to its result, by job kind.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("a valid metric");
        registry
            .register(Box::new(job_duration.clone()))
            .expect("unique name");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid metric");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let jobs_in_flight = gauge("infra_jobs_in_flight", "Jobs running in this worker.");
        Metrics {
            jobs_finished: counter_vec(
                "infra_jobs_finished_total",
                "Jobs this worker ran or refused with a result, by kind, status and error code (`none` on success); a repeated request answered from its stored result is not counted again.",
                &["kind", "status", "error_code"],
            ),
            job_duration,
            jobs_in_flight,
            ssh_probe_failures: counter_vec(
                "infra_ssh_probe_failures_total",
                "Failed SSH reachability probes (each try counts), by reason.",
                &["reason"],
            ),
            dead_letters: counter(
                "infra_dead_letters_total",
                "Entries this worker copied to the dead-letter stream.",
            ),
            redis_reconnects: counter(
                "infra_redis_reconnects_total",
                "Times the queue reader replaced a failed Redis connection.",
            ),
            redis_master_changes: counter(
                "infra_redis_master_changes_total",
                "Times the Sentinels named another Redis master than the one in use.",
            ),
            replica_waits_short: counter(
                "infra_redis_replica_waits_short_total",
                "Published results that fewer replicas than redis.wait_replicas acknowledged in time.",
            ),
            postgres_errors: counter(
                "infra_postgres_errors_total",
                "Postgres operations that failed.",
            ),
            postgres_connections: counter(
                "infra_postgres_connections_opened_total",
                "Postgres connections opened (pool growth and reconnects after an outage).",
            ),
            status_write_failures: counter_vec(
                "infra_status_write_failures_total",
                "Status writes to Postgres that failed (the job's result still went out), by what was written.",
                &["write"],
            ),
            stream_pending: gauge_vec(
                "infra_stream_pending_entries",
                "Entries delivered to the consumer group and not yet acked, per queue stream (read at scrape).",
                &["stream"],
            ),
            stream_lag: gauge_vec(
                "infra_stream_lag_entries",
                "Entries not yet delivered to the consumer group, per queue stream (read at scrape; Redis 7+).",
                &["stream"],
            ),
            playbook_runs: counter_vec(
                "infra_playbook_runs_total",
                "Playbook runs started, by how: forked from the warm controller or a fresh process.",
                &["controller"],
            ),
            controller_restarts: counter(
                "infra_ansible_controller_restarts_total",
                "Warm Ansible controllers started again after one exited, hung or did not come up.",
            ),
            controller_rss: gauge(
                "infra_ansible_controller_rss_bytes",
                "Resident memory of the warm Ansible controller, as of its last pong.",
            ),
            registry,
        }
    }
}

/// Counts a published result and observes its duration.
pub fn job_finished(result: &JobResult) {
    let m = &*METRICS;
    let kind = result.job.as_str();
    let code = result.error.as_ref().map_or(NO_ERROR, |e| e.code.as_str());
    m.jobs_finished
        .with_label_values(&[kind, result.status.as_str(), code])
        .inc();
    m.job_duration
        .with_label_values(&[kind])
        .observe(result.duration_ms as f64 / 1000.0);
}

/// Marks one job as running until the returned guard is dropped.
pub fn job_started() -> InFlight {
    METRICS.jobs_in_flight.inc();
    InFlight(())
}

/// A running job, counted in `infra_jobs_in_flight` while it lives.
#[must_use = "the job counts as running only while the guard lives"]
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.jobs_in_flight.dec();
    }
}

/// Counts one failed SSH probe; `reason` is `ProbeFailure::kind`.
pub fn ssh_probe_failed(reason: &str) {
    METRICS
        .ssh_probe_failures
        .with_label_values(&[reason])
        .inc();
}

/// Counts an entry written to the dead-letter stream.
pub fn dead_lettered() {
    METRICS.dead_letters.inc();
}

/// Counts a Redis connection replaced after a failure.
pub fn redis_reconnected() {
    METRICS.redis_reconnects.inc();
}

/// Counts a move to another Redis master (a Sentinel failover).
pub fn redis_master_changed() {
    METRICS.redis_master_changes.inc();
}

/// Counts a published result that reached fewer replicas than asked.
pub fn replica_wait_short() {
    METRICS.replica_waits_short.inc();
}

/// Counts a failed Postgres operation.
pub fn postgres_failed() {
    METRICS.postgres_errors.inc();
}

/// Counts a Postgres connection opened.
pub fn postgres_connected() {
    METRICS.postgres_connections.inc();
}

/// Counts a status write that failed.
pub fn status_write_failed(write: StatusWrite) {
    METRICS
        .status_write_failures
        .with_label_values(&[write.as_str()])
        .inc();
}

/// How a playbook run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Forked from the warm controller.
    Warm,
    /// A fresh `ansible-playbook` process.
    Cold,
}

impl RunMode {
    /// The `controller` label's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Warm => "warm",
            RunMode::Cold => "cold",
        }
    }
}

/// Counts a playbook run started `mode`.
pub fn playbook_started(mode: RunMode) {
    METRICS
        .playbook_runs
        .with_label_values(&[mode.as_str()])
        .inc();
}

/// Counts a restart of the warm controller.
pub fn controller_restarted() {
    METRICS.controller_restarts.inc();
}

/// The warm controller's resident memory, in bytes.
pub fn set_controller_rss(bytes: u64) {
    METRICS
        .controller_rss
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Replaces the per-stream gauges with what Redis said just now; `None`
/// (Redis did not answer) leaves no stale value behind.
pub fn set_backlog(backlog: Option<&[Backlog]>) {
    let m = &*METRICS;
    m.stream_pending.reset();
    m.stream_lag.reset();
    for stream in backlog.unwrap_or_default() {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.stream_pending
            .with_label_values(&[stream.stream.as_str()])
            .set(gauge(stream.pending));
        if let Some(lag) = stream.lag {
            m.stream_lag
                .with_label_values(&[stream.stream.as_str()])
                .set(gauge(lag));
        }
    }
}

/// The registry in Prometheus' text exposition format.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_infra_and_rendered_once_touched() {
        ssh_probe_failed("refused");
        dead_lettered();
        let text = render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("infra_"), "{line}");
        }
        assert!(text.contains("infra_ssh_probe_failures_total{reason=\"refused\"}"));
        assert!(text.contains("infra_dead_letters_total"));
    }

    #[test]
    fn the_in_flight_guard_gives_its_job_back_on_drop() {
        // The only test that starts jobs, so the gauge is ours.
        let before = METRICS.jobs_in_flight.get();
        let guard = job_started();
        assert_eq!(METRICS.jobs_in_flight.get(), before + 1);
        drop(guard);
        assert_eq!(METRICS.jobs_in_flight.get(), before);
    }

    #[test]
    fn a_missing_backlog_leaves_no_stale_gauge() {
        set_backlog(Some(&[Backlog {
            stream: "ansible:deploy:queue".to_owned(),
            pending: 3,
            lag: Some(7),
        }]));
        assert!(render().contains("infra_stream_lag_entries{stream=\"ansible:deploy:queue\"} 7"));
        set_backlog(None);
        assert!(!render().contains("infra_stream_pending_entries{"));
    }
}
