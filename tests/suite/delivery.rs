//! Delivery guarantees, with real worker processes: a killed
//! worker's job is finished by another, a job delivered too often is given
//! up, a repeated request runs once, one job per server at a time, hung
//! playbooks are killed at their timeout, and SIGTERM drains.

use std::time::Duration;

use infra_service::job::{ErrorCode, JobStatus};
use serde_json::Value;

use crate::helpers::*;

/// What a worker logs when it takes an entry whose request already runs.
const RUNNING_ELSEWHERE: &str = "the same request is running elsewhere; waiting for its result";

/// Workers that share one Redis prefix, one database and one sshd.
struct Fleet {
    redis: TestRedis,
    db: TestDb,
    host: TestHost,
    queue: Queue,
}

async fn fleet(addresses: &[&str]) -> Fleet {
    let redis = TestRedis::new().await;
    let queue = redis.queue();
    Fleet {
        db: TestDb::new().await,
        host: TestHost::start_on_all(addresses).await,
        queue,
        redis,
    }
}

impl Fleet {
    /// A worker on the sleeping fixture with a 2 s lease.
    fn worker(&self, consumer: &str) -> TestWorkerBuilder {
        TestWorker::builder(&self.redis)
            .target(&self.host)
            .postgres_url(self.db.url())
            .deploy_playbook("deploy_sleep.yml")
            .consumer(consumer)
            .set("worker.lease_secs", 2)
    }

    async fn enqueue(&self, request_id: &str, server: &str) -> String {
        self.queue
            .enqueue_deploy(&valid_deploy_payload(request_id, server, 8080))
            .await
    }

    async fn wait_starts(&self, request_id: &str, runs: usize) {
        let started = move || async move {
            (sleep_starts(&self.host, request_id).len() >= runs).then_some(())
        };
        eventually(START_TIMEOUT, started)
            .await
            .unwrap_or_else(|| panic!("{request_id} did not start {runs} time(s)"));
    }

    /// Waits until no entry of the deploy queue is pending: every job
    /// taken was answered and acked.
    async fn wait_all_acked(&self) {
        let acked = move || async move { (self.pending().await == 0).then_some(()) };
        eventually(RESULT_TIMEOUT, acked)
            .await
            .unwrap_or_else(|| panic!("an entry stays pending"));
    }

    /// Creates the group and delivers the deploy queue to `consumer`, a
    /// worker that will never answer; returns the stream and a connection.
    async fn deliver_to_ghost(&self, consumer: &str) -> (String, redis::aio::ConnectionManager) {
        let stream = self.queue.key("ansible:deploy:queue");
        let mut conn = self.redis.connection();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("infra-service")
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("infra-service")
            .arg(consumer)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        (stream, conn)
    }

    /// Entries of the deploy queue delivered and not yet acked.
    async fn pending(&self) -> u64 {
        self.queue.pending_count("ansible:deploy:queue").await
    }

    async fn results_for(&self, request_id: &str) -> Vec<Value> {
        self.queue
            .deploy_results_stream()
            .await
            .into_iter()
            .filter(|r| r["request_id"] == request_id)
            .collect()
    }

    /// Waits until `deploy:results` holds `count` results for `request_id`.
    async fn wait_results(&self, request_id: &str, count: usize) -> Option<Vec<Value>> {
        let enough = move || async move {
            let results = self.results_for(request_id).await;
            (results.len() >= count).then_some(results)
        };
        eventually(RESULT_TIMEOUT, enough).await
    }
}

#[tokio::test]
async fn a_job_of_a_killed_worker_is_finished_by_another_after_its_lease() {
    // Arrange: worker A has the job running.
    let f = fleet(&["127.0.0.1"]).await;
    let a = f.worker("worker-a").spawn().await;
    let id = unique_request_id("killed");
    f.enqueue(&id, "127.0.0.1").await;
    f.wait_starts(&id, 1).await;
    let b = f.worker("worker-b").spawn().await;

    // Act: A dies mid-job; B takes the entry over after the lease.
    a.sigkill();
    f.wait_starts(&id, 2).await;
    release_sleepers(&f.host);
    let result = b.wait_deploy_result(&f.queue, &id).await;
    // B acks only after publishing: once nothing is pending, every result
    // there will be is out (A died without a word).
    f.wait_all_acked().await;

    // Assert
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.worker, "worker-b");
    assert_eq!(result.attempt, 2);
    assert_eq!(f.results_for(&id).await.len(), 1, "exactly one result");
}

#[tokio::test]
async fn an_entry_delivered_more_than_the_limit_is_given_up_as_worker_lost() {
    // Arrange: an entry that "crashed" three consumers already.
    let f = fleet(&["127.0.0.1"]).await;
    let id = unique_request_id("cursed");
    let entry = f.enqueue(&id, "127.0.0.1").await;
    let (stream, mut conn) = f.deliver_to_ghost("ghost-1").await;
    for ghost in ["ghost-2", "ghost-3"] {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg("infra-service")
            .arg(ghost)
            .arg(0)
            .arg(&entry)
            .arg("IDLE")
            .arg(600_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    // Act: a live worker finds it idle and would deliver it a fourth time.
    let w = f
        .worker("survivor")
        .set("worker.max_deliveries", 3)
        .spawn()
        .await;
    let result = w.wait_deploy_result(&f.queue, &id).await;

    // Assert
    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(result.code(), Some(ErrorCode::WorkerLost), "{result:#?}");
    assert_eq!(result.attempt, 4);
    let dead = f.queue.dead_letters().await;
    assert!(
        dead.iter()
            .any(|d| d["request_id"] == id && d["reason"].contains("delivered 4 times")),
        "{dead:?}"
    );
    assert!(sleep_starts(&f.host, &id).is_empty(), "never run again");
    assert_eq!(f.pending().await, 0);
}

#[tokio::test]
async fn the_same_request_id_twice_runs_once_and_gets_the_same_result() {
    // Arrange
    let f = fleet(&["127.0.0.1"]).await;
    let w = f.worker("solo").concurrency(2).spawn().await;
    let id = unique_request_id("twice");

    // Act: a duplicate while the first runs, and another after it finished.
    f.enqueue(&id, "127.0.0.1").await;
    f.wait_starts(&id, 1).await;
    f.enqueue(&id, "127.0.0.1").await;
    w.wait_log(RUNNING_ELSEWHERE, 1, START_TIMEOUT).await;
    release_sleepers(&f.host);
    let first = w.wait_deploy_result(&f.queue, &id).await;
    f.wait_results(&id, 2)
        .await
        .expect("the duplicate got no result");
    f.enqueue(&id, "127.0.0.1").await;
    f.wait_results(&id, 3)
        .await
        .expect("the late repeat got no result");

    // Assert: one run, three answers that are the stored JSON, nothing
    // pending.
    assert_eq!(first.status, JobStatus::Success, "{first:#?}");
    assert_eq!(sleep_starts(&f.host, &id).len(), 1, "one run");
    let stored = f.queue.deploy_result_json(&id).await.expect("a result key");
    for published in f.results_for(&id).await {
        assert_eq!(published, stored);
    }
    assert_eq!(f.pending().await, 0);
}

/// (start, end) of each run of `request_id`.
fn interval(host: &TestHost, request_id: &str) -> (f64, f64) {
    let starts = sleep_starts(host, request_id);
    let ends = sleep_ends(host, request_id);
    assert_eq!((starts.len(), ends.len()), (1, 1), "{request_id} ran once");
    (starts[0], ends[0])
}

#[tokio::test]
async fn two_jobs_for_one_server_on_two_workers_never_overlap() {
    // Arrange
    let f = fleet(&["127.0.0.1"]).await;
    let a = f.worker("lock-a").spawn().await;
    let b = f.worker("lock-b").spawn().await;
    // Both past their migrations, whose advisory lock would count as a
    // waiter below.
    for worker in [&a, &b] {
        worker.wait_log("worker started", 1, START_TIMEOUT).await;
    }
    let (first, second) = (unique_request_id("same-1"), unique_request_id("same-2"));

    // Act: both queued for one server; one starts and holds it, the other
    // is taken and waits for the server's lock in Postgres (or, wrongly,
    // starts too).
    f.enqueue(&first, "127.0.0.1").await;
    f.enqueue(&second, "127.0.0.1").await;
    let (host, db, ids) = (&f.host, &f.db, [first.as_str(), second.as_str()]);
    let one_runs_one_waits = move || async move {
        let running = ids
            .iter()
            .filter(|id| !sleep_starts(host, id).is_empty())
            .count();
        let waiting = db.advisory_lock_waiters().await > 0;
        (running == 2 || running == 1 && waiting).then_some(())
    };
    eventually(START_TIMEOUT, one_runs_one_waits)
        .await
        .expect("no job ran while the other waited for the server");
    release_sleepers(&f.host);
    for id in [&first, &second] {
        let result = a.wait_deploy_result(&f.queue, id).await;
        assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    }

    // Assert: one interval ends before the other begins.
    let (s1, e1) = interval(&f.host, &first);
    let (s2, e2) = interval(&f.host, &second);
    assert!(
        e1 <= s2 || e2 <= s1,
        "overlap: [{s1}, {e1}] and [{s2}, {e2}]"
    );
}

#[tokio::test]
async fn jobs_for_two_servers_on_two_workers_run_at_the_same_time() {
    let f = fleet(&["127.0.0.2", "127.0.0.3"]).await;
    let a = f.worker("pair-a").concurrency(1).spawn().await;
    let _b = f.worker("pair-b").concurrency(1).spawn().await;
    let (left, right) = (unique_request_id("left"), unique_request_id("right"));

    f.enqueue(&left, "127.0.0.2").await;
    f.enqueue(&right, "127.0.0.3").await;
    let both = wait_sleepers_started(&f.host, &[left.clone(), right.clone()], START_TIMEOUT).await;
    release_sleepers(&f.host);
    for id in [&left, &right] {
        a.wait_deploy_result(&f.queue, id).await;
    }

    assert!(both, "both started before either was released");
    let (s1, e1) = interval(&f.host, &left);
    let (s2, e2) = interval(&f.host, &right);
    assert!(
        s1 < e2 && s2 < e1,
        "no overlap: [{s1}, {e1}] and [{s2}, {e2}]"
    );
}

/// The process group the worker logged for the playbook of `request_id`.
fn playbook_pgid(worker: &TestWorker, request_id: &str) -> i32 {
    worker
        .log_entries("playbook started")
        .iter()
        .filter(|entry| entry.to_string().contains(request_id))
        .find_map(|entry| entry["pid"].as_i64())
        .map(|pid| pid as i32)
        .unwrap_or_else(|| {
            panic!(
                "no 'playbook started' line for {request_id} in:\n{}",
                worker.logs()
            )
        })
}

/// Live processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields[2].parse::<i32>() == Ok(pgid) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

#[tokio::test]
async fn a_hung_playbook_is_killed_at_its_timeout_with_nothing_of_it_left() {
    let f = fleet(&["127.0.0.1"]).await;
    let w = f
        .worker("timeout")
        .set("worker.job_timeout_secs", 12)
        .set("worker.kill_grace_secs", 1)
        .spawn()
        .await;
    let id = unique_request_id("hung");

    f.enqueue(&id, "127.0.0.1").await;
    let result = w.wait_deploy_result(&f.queue, &id).await;

    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(result.code(), Some(ErrorCode::Timeout), "{result:#?}");
    assert!(
        result.output_tail.contains("Record the start time"),
        "output so far: {result:#?}"
    );
    assert_eq!(sleep_starts(&f.host, &id).len(), 1, "it had started");
    let pgid = playbook_pgid(&w, &id);
    assert!(
        group_members(pgid).is_empty(),
        "left in group {pgid}: {:?}",
        group_members(pgid)
    );
    // The warm controller stays: it is the worker's, not the run's.
    let children: Vec<String> = descendants(w.pid() as i32)
        .into_iter()
        .filter(|&pid| !is_warm_controller(pid))
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            format!("{pid}: {stat} {}", cmdline(pid))
        })
        .collect();
    assert!(
        children.is_empty(),
        "the worker still has children: {children:#?}"
    );
    release_sleepers(&f.host);
}

#[tokio::test]
async fn sigterm_lets_a_running_job_finish_within_the_grace_period_and_exits_0() {
    let f = fleet(&["127.0.0.1"]).await;
    let w = f
        .worker("graceful")
        .set("worker.shutdown_grace_secs", 60)
        .spawn()
        .await;
    let id = unique_request_id("drain");
    f.enqueue(&id, "127.0.0.1").await;
    f.wait_starts(&id, 1).await;

    w.sigterm();
    w.wait_log("stopped reading; draining", 1, START_TIMEOUT)
        .await;
    // Draining, not stopping: the job's playbook still runs (a stop that
    // cut the job short would have killed it), and so does the worker. Its
    // end file cannot tell: the fixture writes none before the release.
    let playbook_runs = descendants(w.pid() as i32).into_iter().any(is_playbook_run);
    assert!(playbook_runs, "the job's playbook is gone:\n{}", w.logs());
    w.assert_running().await;
    release_sleepers(&f.host);
    let status = w.wait_exit(RESULT_TIMEOUT).await;

    assert_eq!(status.code(), Some(0));
    let result = f
        .queue
        .deploy_result(&id)
        .await
        .expect("published before exit");
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(f.pending().await, 0);
}

#[tokio::test]
async fn sigterm_with_a_job_longer_than_the_grace_hands_it_to_another_worker() {
    let f = fleet(&["127.0.0.1"]).await;
    let a = f
        .worker("leaving")
        .set("worker.shutdown_grace_secs", 1)
        .spawn()
        .await;
    let id = unique_request_id("handback");
    f.enqueue(&id, "127.0.0.1").await;
    f.wait_starts(&id, 1).await;

    a.sigterm();
    let status = a.wait_exit(RESULT_TIMEOUT).await;
    let pending_after_exit = f.pending().await;
    let published_after_exit = f.queue.deploy_result(&id).await;
    let b = f.worker("arriving").spawn().await;
    f.wait_starts(&id, 2).await;
    release_sleepers(&f.host);
    let result = b.wait_deploy_result(&f.queue, &id).await;

    assert_eq!(status.code(), Some(0));
    assert_eq!(pending_after_exit, 1, "left pending for another worker");
    assert_eq!(published_after_exit, None, "no result for a killed job");
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.worker, "arriving");
    assert_eq!(result.attempt, 2);
    assert!(a.logs().contains("entry handed back"), "{}", a.logs());
}

#[tokio::test]
async fn an_entry_deleted_while_pending_is_reported_as_a_dead_letter() {
    // Arrange: a dead consumer's entry, then deleted from the stream.
    let f = fleet(&["127.0.0.1"]).await;
    let id = unique_request_id("vanished");
    let entry = f.enqueue(&id, "127.0.0.1").await;
    let (stream, mut conn) = f.deliver_to_ghost("ghost").await;
    let _: () = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();

    // Act: a live worker's takeover finds only the id.
    let _w = f.worker("janitor").spawn().await;
    let dead = f.queue.wait_dead_letters(1, Duration::from_secs(30)).await;

    // Assert
    assert_eq!(dead[0]["entry_id"], entry, "{dead:?}");
    assert!(dead[0]["reason"].contains("deleted or trimmed"), "{dead:?}");
    assert!(sleep_starts(&f.host, &id).is_empty());
    assert_eq!(f.pending().await, 0);
}
