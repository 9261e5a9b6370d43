//! Metrics, health and the heartbeat: `/metrics` counts what the
//! worker did with the right labels, `/readyz` follows the worker's Redis
//! (a `redis-server` of the test's own, never the shared one), and the
//! heartbeat file's mtime advances while the worker runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use infra_service::job::{ErrorCode, JobStatus};
use serde_json::Value;

use crate::helpers::*;

/// `http://<addr>` of the worker's endpoints, from its "http listening"
/// log line (the tests bind port 0).
pub(crate) async fn http_base(worker: &TestWorker) -> String {
    let lines = worker
        .wait_log("http listening", 1, Duration::from_secs(60))
        .await;
    let listen = lines[0]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("\"http listening\" names no address: {}", lines[0]));
    format!("http://{listen}")
}

/// `/metrics` as `name{sorted labels}` -> value.
pub(crate) async fn scrape(base: &str) -> BTreeMap<String, f64> {
    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("metrics body");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            (normalize(series), value.parse().expect("a number"))
        })
        .collect()
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`, so lookups ignore label order.
fn normalize(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

pub(crate) fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    *metrics
        .get(&normalize(series))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics:#?}"))
}

pub(crate) async fn get_status(url: &str) -> (u16, String) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn metrics_count_one_success_and_one_failure_with_their_kind_status_and_error_code() {
    // Arrange: a worker on 127.0.0.1's sshd; nothing listens on 127.0.0.2.
    let w = world("deploy_digest.yml", 4).await;
    let base = http_base(&w.worker).await;
    let good = unique_request_id("metrics-ok");
    let bad = unique_request_id("metrics-down");

    // Act
    let ok = w
        .deploy(&valid_deploy_payload(&good, w.host.address(), 8080))
        .await;
    let failed = w
        .deploy(&valid_deploy_payload(&bad, "127.0.0.2", 8080))
        .await;

    // Assert: the results are what the metrics should say.
    assert_eq!(ok.status, JobStatus::Success, "{ok:#?}");
    assert_eq!(failed.status, JobStatus::Failed, "{failed:#?}");
    assert_eq!(
        failed.code(),
        Some(ErrorCode::SshUnreachable),
        "{failed:#?}"
    );
    let probes = failed
        .detail("attempts")
        .as_array()
        .expect("attempts in the details")
        .len();

    // Assert: exactly those two jobs, each under its own labels.
    let m = scrape(&base).await;
    let finished = |status: &str, code: &str| {
        format!(
            r#"infra_jobs_finished_total{{error_code="{code}",kind="deploy",status="{status}"}}"#
        )
    };
    assert_eq!(value(&m, &finished("success", "none")), 1.0);
    assert_eq!(value(&m, &finished("failed", "ssh_unreachable")), 1.0);
    let all_finished: f64 = m
        .iter()
        .filter(|(series, _)| series.starts_with("infra_jobs_finished_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(all_finished, 2.0, "{m:#?}");
    assert_eq!(
        value(&m, r#"infra_job_duration_seconds_count{kind="deploy"}"#),
        2.0
    );
    assert_eq!(
        value(&m, r#"infra_ssh_probe_failures_total{reason="refused"}"#),
        probes as f64
    );
    assert_eq!(value(&m, "infra_dead_letters_total"), 0.0);
    // Read from Redis at scrape time: both entries are acked.
    let stream = w.queue.key("ansible:deploy:queue");
    assert_eq!(
        value(
            &m,
            &format!(r#"infra_stream_pending_entries{{stream="{stream}"}}"#)
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"infra_stream_lag_entries{{stream="{stream}"}}"#)
        ),
        0.0
    );
    // The job's task ends just after its result is published.
    let base = base.as_str();
    let none_in_flight =
        || async move { (value(&scrape(base).await, "infra_jobs_in_flight") == 0.0).then_some(()) };
    eventually(Duration::from_secs(10), none_in_flight)
        .await
        .expect("a job still counts as in flight");
    assert_eq!(get_status(&format!("{base}/healthz")).await.0, 200);
}

/// Polls `/readyz` until it answers `want`; returns that answer's body.
async fn wait_readyz(worker: &TestWorker, base: &str, want: u16, within: Duration) -> String {
    let url = format!("{base}/readyz");
    let url = url.as_str();
    let answers = move || async move {
        let (status, body) = get_status(url).await;
        if status == want {
            return Some(body);
        }
        worker.assert_running().await;
        None
    };
    match eventually(within, answers).await {
        Some(body) => body,
        None => {
            let (status, body) = get_status(url).await;
            panic!("/readyz still {status} ({body}) after {within:?}, wanted {want}")
        }
    }
}

#[tokio::test]
async fn readyz_fails_while_the_workers_redis_is_stopped_and_recovers_after() {
    // Arrange: the worker's Redis is ours to stop.
    let mut own = OwnRedis::new().await;
    let redis = TestRedis::new().await;
    let worker = TestWorker::builder(&redis)
        .set("redis.url", own.url())
        .spawn()
        .await;
    let base = http_base(&worker).await;
    let body = wait_readyz(&worker, &base, 200, Duration::from_secs(60)).await;
    let ready: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(ready["redis"], "ok", "{body}");
    assert_eq!(ready["postgres"], "ok", "{body}");

    // Act: stop Redis.
    own.stop().await;

    // Assert: not ready, naming Redis; still alive.
    let body = wait_readyz(&worker, &base, 503, Duration::from_secs(15)).await;
    let down: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(down["ready"], false, "{body}");
    assert_ne!(down["redis"], "ok", "{body}");
    assert_eq!(down["postgres"], "ok", "{body}");
    assert_eq!(get_status(&format!("{base}/healthz")).await.0, 200);

    // Act: start it again where it was.
    own.start().await;

    // Assert: ready again.
    wait_readyz(&worker, &base, 200, Duration::from_secs(60)).await;
    worker.assert_running().await;
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

#[tokio::test]
async fn the_heartbeat_files_mtime_advances_while_the_worker_runs() {
    // Arrange: a heartbeat in a directory that does not exist yet.
    let dir = tempfile::tempdir().expect("heartbeat dir");
    let path = dir.path().join("tmp/infra_service.heartbeat");
    let redis = TestRedis::new().await;
    let worker = TestWorker::builder(&redis)
        .set("heartbeat.path", path.to_string_lossy())
        .set("heartbeat.interval_secs", 1)
        .spawn()
        .await;

    // Act: wait for the first touch.
    let (path, worker) = (&path, &worker);
    let touched = move || async move {
        let at = mtime(path);
        if at.is_none() {
            worker.assert_running().await;
        }
        at
    };
    let first = eventually(Duration::from_secs(60), touched)
        .await
        .unwrap_or_else(|| panic!("no heartbeat file at {path:?}"));

    // Assert: touched again and again, each time within 2.5 intervals.
    let mut last = first;
    for touch in 1..=2 {
        let advanced = move || async move {
            let now = mtime(path).expect("the heartbeat file stays");
            (now > last).then_some(now)
        };
        last = eventually(Duration::from_millis(2500), advanced)
            .await
            .unwrap_or_else(|| panic!("mtime did not advance after touch {touch}: {last:?}"));
        worker.assert_running().await;
    }
}
