//! Outages: Redis or Postgres going away under a busy worker
//! costs a delay, never a job or a result. Each test breaks a server of its
//! own (`OwnRedis`, `OwnPostgres`), never the shared ones.

use std::collections::BTreeMap;
use std::time::Duration;

use infra_service::job::JobStatus;

use crate::helpers::*;

/// Four loopback addresses on one sshd: four servers to the worker, so the
/// one-job-per-server rule lets the four jobs run at once.
const SERVERS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// A short lease, so that lease renewals (every third of it) meet the
/// restarted, empty Redis while the jobs still run.
const LEASE_SECS: u64 = 6;

#[tokio::test]
async fn jobs_running_while_their_redis_restarts_empty_each_get_exactly_one_result() {
    // Arrange: four sleeping jobs running at once on a Redis of our own.
    let mut own = OwnRedis::new().await;
    let redis = TestRedis::on(&own.url()).await;
    let w = World::start(TestHost::start_on_all(&SERVERS).await, redis, |worker| {
        worker
            .deploy_playbook("deploy_sleep.yml")
            .concurrency(SERVERS.len())
            .set("worker.lease_secs", LEASE_SECS)
    })
    .await;
    let running: Vec<String> = (0..SERVERS.len())
        .map(|i| unique_request_id(&format!("outage{i}")))
        .collect();
    for (id, server) in running.iter().zip(SERVERS) {
        w.queue
            .enqueue_deploy(&valid_deploy_payload(id, server, 8080))
            .await;
    }
    assert!(
        wait_sleepers_started(&w.host, &running, START_TIMEOUT).await,
        "the jobs never all started; worker logs:\n{}",
        tail(&w.worker.logs(), 60)
    );

    // Act: Redis goes away and comes back with nothing (no persistence):
    // no streams, no group, no pending entries. The outage's length is part
    // of the scenario, not a wait for the worker: what the worker does
    // meanwhile (reads, renewals, progress events) is not the point here.
    own.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    own.start().await;
    w.queue.wait_until_reachable(Duration::from_secs(30)).await;
    // A job sent after the restart: the worker must find its queue again.
    let after = unique_request_id("after-restart");
    w.queue
        .enqueue_deploy(&valid_deploy_payload(&after, SERVERS[0], 8080))
        .await;
    // Part of the scenario, not a wait for an event: the jobs keep running
    // across more than one lease, so that renewals and reads meet the
    // empty Redis before any job ends.
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 2)).await;
    w.worker.assert_running().await;
    release_sleepers(&w.host);
    let mut all = running.clone();
    all.push(after.clone());
    let mut results = BTreeMap::new();
    for id in &all {
        let result = w.worker.wait_deploy_result(&w.queue, id).await;
        results.insert(id.clone(), result);
    }

    // Assert: one successful run and one result per job.
    for (id, result) in &results {
        assert_eq!(result.status, JobStatus::Success, "{id}: {result:#?}");
        assert_eq!(&result.request_id, id, "{result:#?}");
        assert_eq!(
            sleep_starts(&w.host, id).len(),
            1,
            "{id} started more than once"
        );
        assert_eq!(
            sleep_ends(&w.host, id).len(),
            1,
            "{id} ended more than once"
        );
    }
    let mut published: Vec<String> = w
        .queue
        .deploy_results_stream()
        .await
        .iter()
        .map(|r| r["request_id"].as_str().expect("request_id").to_owned())
        .collect();
    published.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(published, expected, "one deploy:results entry per job");
    assert_eq!(
        w.queue.pending_count("ansible:deploy:queue").await,
        0,
        "an entry is left pending"
    );
    w.worker.assert_running().await;
}

#[tokio::test]
async fn a_job_running_while_its_postgres_stops_still_publishes_its_result() {
    // Arrange: a sleeping job running, the ledger on a Postgres of our own.
    let mut pg = OwnPostgres::new().await;
    let pg_url = pg.url();
    let w = World::start(TestHost::start().await, TestRedis::new().await, |worker| {
        worker
            .postgres_url(&pg_url)
            .deploy_playbook("deploy_sleep.yml")
            .concurrency(1)
    })
    .await;
    let first = unique_request_id("pg-down");
    w.queue
        .enqueue_deploy(&valid_deploy_payload(&first, w.host.address(), 8080))
        .await;
    assert!(
        wait_sleepers_started(&w.host, std::slice::from_ref(&first), START_TIMEOUT).await,
        "the job never started; worker logs:\n{}",
        tail(&w.worker.logs(), 60)
    );

    // Act: Postgres stops (fast shutdown cuts the job's server lock session
    // too) while the job runs; then the job ends.
    pg.stop().await;
    release_sleepers(&w.host);
    let during = w.worker.wait_deploy_result(&w.queue, &first).await;
    w.worker.assert_running().await;
    pg.start().await;
    let second = unique_request_id("pg-back");
    let after = w
        .deploy(&valid_deploy_payload(&second, w.host.address(), 8080))
        .await;

    // Assert: both published and successful, each run once; the ledger is
    // written again once Postgres is back.
    assert_eq!(during.status, JobStatus::Success, "{during:#?}");
    assert_eq!(after.status, JobStatus::Success, "{after:#?}");
    for id in [&first, &second] {
        assert_eq!(
            sleep_starts(&w.host, id).len(),
            1,
            "{id} started more than once"
        );
    }
    let published: Vec<String> = w
        .queue
        .deploy_results_stream()
        .await
        .iter()
        .map(|r| r["request_id"].as_str().expect("request_id").to_owned())
        .collect();
    assert_eq!(published, vec![first.clone(), second.clone()]);
    let mut conn = pg.connect().await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs WHERE kind = 'deploy' AND request_id = $1")
            .bind(&second)
            .fetch_one(&mut conn)
            .await
            .expect("the second job's ledger row");
    assert_eq!(status, "success");
    assert_eq!(w.queue.pending_count("ansible:deploy:queue").await, 0);
    w.worker.assert_running().await;
}
