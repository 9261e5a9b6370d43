//! The worker's step, `Worker::handle`, called directly: entries are read
//! as the worker's own consumer would get them, handled one by one, and
//! what the step returns is checked against what a caller then sees in
//! Redis (result, dead letter, ack) and what ran (the progress stream).

use std::sync::Arc;

use infra_service::config::Settings;
use infra_service::job::{ErrorCode, JobKind, JobResult, JobStatus};
use infra_service::queue::Delivery;
use infra_service::store::Store;
use infra_service::worker::{Handled, Worker};
use infra_service::workflow::Context;
use redis::streams::StreamReadReply;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// The worker's consumer name in the group.
const CONSUMER: &str = "handle-step";
/// The deploy queue, unprefixed.
const DEPLOY_QUEUE: &str = "ansible:deploy:queue";
/// `worker.max_deliveries` in the test's config; not the default, so the
/// step is seen to follow the file.
const MAX_DELIVERIES: u32 = 2;

/// A worker built in-process on the test's Redis prefix and database.
struct Step {
    worker: Worker,
    settings: Arc<Settings>,
    store: Store,
    redis: TestRedis,
    queue: Queue,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

/// Settings loaded from a config file, and the store, queue and context
/// made from them as `infra-service worker` makes its own; no loop, HTTP or
/// heartbeat around them.
async fn step() -> Step {
    // `Settings::load` reads `INFRA__*` over the file; the harness strips
    // them from the worker processes it starts, but this one is in-process.
    let stray: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .filter(|name| name.starts_with("INFRA__"))
        .collect();
    assert!(
        stray.is_empty(),
        "unset {stray:?}: they would override this test's config"
    );
    let (redis, db) = (TestRedis::new().await, TestDb::new().await);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let text = format!(
        "[redis]\nurl = {:?}\nkey_prefix = {:?}\nconsumer = {CONSUMER:?}\n\
         [postgres]\nurl = {:?}\n[secrets]\ndir = {:?}\n\
         [worker]\nmax_deliveries = {MAX_DELIVERIES}\n",
        redis.url(),
        redis.prefix(),
        db.url(),
        dir.path().to_string_lossy(),
    );
    std::fs::write(&config, text).unwrap();
    let settings = Arc::new(Settings::load(Some(&config)).expect("valid settings"));
    let store = Store::connect_lazy(&settings.postgres.url, settings.worker.concurrency);
    store.migrate().await.expect("migrate");
    let queue = infra_service::queue::Queue::connect(&settings.redis, CONSUMER.to_owned())
        .await
        .expect("queue");
    let ctx = Context::new(settings.clone(), store.clone()).expect("context");
    Step {
        worker: Worker::new(queue, ctx),
        settings,
        store,
        queue: redis.queue(),
        redis,
        _db: db,
        _dir: dir,
    }
}

impl Step {
    /// Adds `payload` to the deploy queue and takes it, as the worker's
    /// reader would: delivered once, to this consumer.
    async fn deliver(&self, payload: &[u8]) -> Delivery {
        let stream = self.queue.key(DEPLOY_QUEUE);
        self.queue.enqueue_to(DEPLOY_QUEUE, payload).await;
        let mut conn = self.redis.connection();
        let reply: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("infra-service")
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("XREADGROUP");
        let entry = &reply.keys[0].ids[0];
        Delivery {
            kind: JobKind::Deploy,
            stream,
            entry_id: entry.id.clone(),
            payload: entry.get("payload"),
            delivery_count: 1,
        }
    }

    async fn handle(&self, delivery: Delivery) -> Handled {
        self.worker.handle(delivery, CancellationToken::new()).await
    }

    /// The step for an entry whose job must stop before it starts.
    async fn handle_stopped(&self, delivery: Delivery) -> Handled {
        let stopped = CancellationToken::new();
        stopped.cancel();
        self.worker.handle(delivery, stopped).await
    }

    /// The request's progress stream: only a run writes one.
    async fn progress(&self, request_id: &str) -> usize {
        let stream = format!("job:events:{request_id}");
        self.queue.stream_entries(&stream).await.len()
    }
}

fn payload(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[tokio::test]
async fn an_entry_that_breaks_a_rule_is_answered_invalid_payload_dead_lettered_and_acked() {
    // Arrange
    let s = step().await;
    let id = unique_request_id("step-bad");
    let mut bad = valid_deploy_payload(&id, "203.0.113.10", 8080);
    bad["port"] = json!(0);
    let delivery = s.deliver(&payload(&bad)).await;

    // Act
    let handled = s.handle(delivery).await;

    // Assert
    assert_eq!(
        handled,
        Handled::Published {
            request_id: id.clone(),
            status: JobStatus::Failed
        }
    );
    let result = s.queue.deploy_result(&id).await.expect("a result");
    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(
        result.code(),
        Some(ErrorCode::InvalidPayload),
        "{result:#?}"
    );
    assert!(
        result.message().is_some_and(|m| m.starts_with("port")),
        "{result:#?}"
    );
    let dead = s.queue.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["request_id"], id);
    assert_eq!(s.queue.pending_count(DEPLOY_QUEUE).await, 0);
    assert_eq!(s.progress(&id).await, 0, "nothing ran");
}

#[tokio::test]
async fn an_entry_without_a_readable_request_id_is_dead_lettered_and_acked_without_a_result() {
    // Arrange
    let s = step().await;
    let delivery = s.deliver(b"{not json").await;

    // Act
    let handled = s.handle(delivery).await;

    // Assert
    assert_eq!(handled, Handled::DeadLettered);
    let dead = s.queue.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"], "{not json");
    assert_eq!(dead[0]["request_id"], "");
    assert!(s.queue.deploy_results_stream().await.is_empty());
    assert_eq!(s.queue.pending_count(DEPLOY_QUEUE).await, 0);
}

/// The first entry is given up (delivered past the limit), which records
/// its `worker_lost` result in the ledger; a second entry with the same
/// request id gets that result again, and runs nothing.
#[tokio::test]
async fn a_repeated_request_id_is_answered_with_its_stored_result_without_running() {
    // Arrange
    let s = step().await;
    let id = unique_request_id("step-again");
    let job = payload(&valid_deploy_payload(&id, "203.0.113.10", 8080));
    let mut first = s.deliver(&job).await;
    first.delivery_count = s.settings.worker.max_deliveries + 1;
    let given_up = s.handle(first).await;
    let stored = s.queue.deploy_result(&id).await.expect("a first result");
    let stored_json = s.queue.deploy_result_json(&id).await.unwrap();

    // Act
    let second = s.deliver(&job).await;
    let handled = s.handle(second).await;

    // Assert
    let expected = Handled::Published {
        request_id: id.clone(),
        status: JobStatus::Failed,
    };
    assert_eq!((&given_up, &handled), (&expected, &expected));
    assert_eq!(stored.code(), Some(ErrorCode::WorkerLost), "{stored:#?}");
    let published = s.queue.deploy_results_stream().await;
    assert_eq!(published, [stored_json.clone(), stored_json]);
    assert_eq!(s.progress(&id).await, 0, "nothing ran");
    assert_eq!(s.queue.pending_count(DEPLOY_QUEUE).await, 0);
}

#[tokio::test]
async fn a_request_that_succeeded_before_is_answered_success_from_the_ledger() {
    // Arrange: a success recorded by an earlier run, whose key has expired.
    let s = step().await;
    let id = unique_request_id("step-done");
    let earlier = json!({
        "request_id": id, "job": "deploy", "status": "success", "error": null,
        "started_at": "2026-11-23T10:00:00.123Z", "finished_at": "2026-11-23T10:01:12.456Z",
        "duration_ms": 72333, "attempt": 1, "worker": "earlier-1", "output_tail": "PLAY RECAP",
        "failed_task": null, "timings": {"queue_wait_ms": 40, "preflight_ms": 310, "playbook_ms": 71900},
        "url": "http://203.0.113.10:8080", "added_by_a_later_version": [1, 2],
    });
    let result = JobResult::from_json(&earlier.to_string()).unwrap();
    s.store.job_finished(&result).await.unwrap();
    let delivery = s
        .deliver(&payload(&valid_deploy_payload(&id, "203.0.113.10", 8080)))
        .await;

    // Act
    let handled = s.handle(delivery).await;

    // Assert
    assert_eq!(
        handled,
        Handled::Published {
            request_id: id.clone(),
            status: JobStatus::Success
        }
    );
    // Republished as stored, field for field, the unknown one included.
    assert_eq!(s.queue.deploy_result_json(&id).await, Some(earlier));
    assert_eq!(s.progress(&id).await, 0, "nothing ran");
    assert_eq!(s.queue.pending_count(DEPLOY_QUEUE).await, 0);
}

#[tokio::test]
async fn a_job_stopped_before_it_starts_is_abandoned_unanswered_and_left_pending() {
    // Arrange
    let s = step().await;
    let id = unique_request_id("step-stopped");
    let delivery = s
        .deliver(&payload(&valid_deploy_payload(&id, "203.0.113.10", 8080)))
        .await;

    // Act
    let handled = s.handle_stopped(delivery).await;

    // Assert: nothing answered, nothing run, the entry kept for another
    // worker.
    assert_eq!(handled, Handled::Abandoned);
    assert_eq!(s.queue.deploy_result(&id).await, None);
    assert!(s.queue.deploy_results_stream().await.is_empty());
    assert_eq!(s.progress(&id).await, 0, "nothing ran");
    assert_eq!(s.queue.pending_count(DEPLOY_QUEUE).await, 1);
}
