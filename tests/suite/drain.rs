//! After SIGTERM a worker takes nothing: a job enqueued while it drains
//! stays in the stream, unread by it, for another worker. End to end with
//! a real worker, and on the library's `Reader` alone, where the stop and
//! the blocking wait it abandons can be watched from Redis's side.

use std::time::Duration;

use infra_service::config::{RedisSettings, RedisUrl};
use infra_service::job::JobStatus;
use infra_service::queue::Delivery;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// The deploy queue, unprefixed.
const DEPLOY_QUEUE: &str = "ansible:deploy:queue";

#[tokio::test]
async fn a_job_enqueued_after_sigterm_is_left_for_another_worker() {
    let redis = TestRedis::new().await;
    let queue = redis.queue();
    let db = TestDb::new().await;
    let host = TestHost::start().await;
    let worker = |consumer: &str| {
        TestWorker::builder(&redis)
            .target(&host)
            .postgres_url(db.url())
            .deploy_playbook("deploy_sleep.yml")
            .consumer(consumer)
            .concurrency(2)
            .set("worker.shutdown_grace_secs", 60)
            // A long blocking wait: the signal lands while it is
            // outstanding, and the late job arrives before it would end.
            .set("redis.block_ms", 10_000)
    };
    let leaving = worker("leaving").spawn().await;
    let running = unique_request_id("running");
    queue
        .enqueue_deploy(&valid_deploy_payload(&running, host.address(), 8080))
        .await;
    assert!(
        wait_sleepers_started(&host, std::slice::from_ref(&running), START_TIMEOUT).await,
        "{running} did not start:\n{}",
        leaving.logs()
    );

    leaving.sigterm();
    // Only a signal the worker has taken must keep the late job from it,
    // however slow the machine.
    leaving.wait_log("SIGTERM received", 1, START_TIMEOUT).await;
    // The scenario as reported: the late job comes a second after the
    // signal, while the first job still runs and a slot is free.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = unique_request_id("late");
    queue
        .enqueue_deploy(&valid_deploy_payload(&late, host.address(), 8080))
        .await;
    release_sleepers(&host);
    let status = leaving.wait_exit(RESULT_TIMEOUT).await;

    assert_eq!(status.code(), Some(0), "{}", leaving.logs());
    let first = queue.deploy_result(&running).await.expect("drained job");
    assert_eq!(first.status, JobStatus::Success, "{first:#?}");
    assert_eq!(queue.deploy_result(&late).await, None, "late job answered");
    assert!(
        sleep_starts(&host, &late).is_empty(),
        "the stopping worker ran the late job:\n{}",
        leaving.logs()
    );
    assert_eq!(
        queue.pending_count(DEPLOY_QUEUE).await,
        0,
        "the late job is pending on the stopping worker"
    );

    let arriving = worker("arriving").spawn().await;
    let result = arriving.wait_deploy_result(&queue, &late).await;
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.worker, "arriving");
    assert_eq!(result.attempt, 1, "first delivery: never read before");
}

/// Clients Redis holds in a blocking command (`INFO clients`).
async fn blocked_clients(redis: &TestRedis) -> u64 {
    let mut conn = redis.connection();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in INFO clients:\n{info}"))
}

/// Waits until Redis holds `count` blocked clients; false on timeout.
async fn wait_blocked_clients(redis: &TestRedis, count: u64, timeout: Duration) -> bool {
    let reached = || async { (blocked_clients(redis).await == count).then_some(()) };
    eventually(timeout, reached).await.is_some()
}

/// The entry ids of a reader's batch (its payloads would bury them).
fn entry_ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.entry_id.as_str()).collect()
}

/// A stop abandons the reader's blocking wait and closes its connection,
/// so Redis unblocks at once; a stopped reader claims nothing, and the
/// reader works again on a fresh connection. The Redis is the test's own,
/// so every blocked client on it is this reader's.
#[tokio::test]
async fn a_stopped_reader_closes_its_blocking_wait_and_claims_nothing() {
    // Arrange: a reader whose wait would block for a minute.
    let own = OwnRedis::new().await;
    let redis = TestRedis::on(&own.url()).await;
    let settings = RedisSettings {
        block_ms: 60_000,
        ..RedisSettings::plain(
            RedisUrl::parse(&own.url()).expect("redis url"),
            "infra-service",
            redis.prefix(),
        )
    };
    let library = infra_service::queue::Queue::connect(&settings, "stopping".to_owned())
        .await
        .expect("queue");
    // A lease this long keeps the look for dead workers' entries from
    // cutting the wait short.
    let mut reader = library
        .reader(Duration::from_secs(600))
        .await
        .expect("reader");
    let stop = CancellationToken::new();
    let waiting = tokio::spawn({
        let stop = stop.clone();
        async move {
            let batch = reader.next(1, &stop).await;
            (reader, batch)
        }
    });
    assert!(
        wait_blocked_clients(&redis, 1, START_TIMEOUT).await,
        "the reader never blocked waiting for entries"
    );

    // Act: stop while it waits.
    stop.cancel();
    let (mut reader, batch) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("next() returns as soon as it is stopped")
        .expect("the reader's task");

    // Assert: nothing read, and Redis let go of the wait long before the
    // minute it was asked to block.
    let batch = batch.expect("an empty batch, not an error");
    assert_eq!(entry_ids(&batch.deliveries), [] as [&str; 0]);
    assert_eq!(entry_ids(&batch.vanished), [] as [&str; 0]);
    assert!(
        wait_blocked_clients(&redis, 0, Duration::from_secs(10)).await,
        "the abandoned wait still blocks on Redis: its connection stayed open"
    );

    // Act: a job arrives; the reader is asked again with the stop still on.
    let queue = redis.queue();
    let entry = queue
        .enqueue_deploy(&valid_deploy_payload(
            &unique_request_id("after-stop"),
            "203.0.113.10",
            8080,
        ))
        .await;
    let stopped = reader.next(1, &stop).await.expect("an empty batch");

    // Assert: a stopped reader claims nothing.
    assert_eq!(entry_ids(&stopped.deliveries), [] as [&str; 0]);
    assert_eq!(queue.pending_count(DEPLOY_QUEUE).await, 0, "claimed");

    // Act: asked without a stop, on the connection it opens again.
    let fresh = reader
        .next(1, &CancellationToken::new())
        .await
        .expect("a batch");

    // Assert: it takes the entry.
    assert_eq!(entry_ids(&fresh.deliveries), [entry.as_str()]);
    assert_eq!(queue.pending_count(DEPLOY_QUEUE).await, 1);
}
