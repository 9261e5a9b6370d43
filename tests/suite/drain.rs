//! After SIGTERM a worker takes nothing: a job enqueued while it drains
//! stays in the stream, unread by it, for another worker.

use std::time::Duration;

use infra_service::job::JobStatus;

use crate::helpers::*;

const START_TIMEOUT: Duration = Duration::from_secs(60);

async fn wait_starts(host: &TestHost, request_id: &str) {
    let started = || async { (!sleep_starts(host, request_id).is_empty()).then_some(()) };
    eventually(START_TIMEOUT, started)
        .await
        .unwrap_or_else(|| panic!("{request_id} did not start"));
}

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
    wait_starts(&host, &running).await;

    leaving.sigterm();
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
        queue.pending_count("ansible:deploy:queue").await,
        0,
        "the late job is pending on the stopping worker"
    );

    let arriving = worker("arriving").spawn().await;
    let result = arriving.wait_deploy_result(&queue, &late).await;
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.worker, "arriving");
    assert_eq!(result.attempt, 1, "first delivery: never read before");
}
