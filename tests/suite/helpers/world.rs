//! The usual arrangement of a job test: one worker against one sshd, under
//! one Redis prefix, and the one way such a test runs a job to its result
//! (`World::deploy`, `World::provision`).

use infra_service::job::JobResult;
use serde_json::Value;

use super::host::TestHost;
use super::redis::{Queue, TestRedis};
use super::worker::{TestWorker, TestWorkerBuilder};

/// One worker against one sshd, under one Redis prefix. Fields drop in
/// order: the worker first, Redis cleanup last.
pub struct World {
    pub worker: TestWorker,
    pub host: TestHost,
    pub redis: TestRedis,
    pub queue: Queue,
}

/// A world on a fresh sshd, running `playbook` with `concurrency` slots.
pub async fn world(playbook: &str, concurrency: usize) -> World {
    world_on(TestHost::start().await, playbook, concurrency).await
}

/// A world on `host`, running `playbook` with `concurrency` slots.
pub async fn world_on(host: TestHost, playbook: &str, concurrency: usize) -> World {
    World::start(host, TestRedis::new().await, |worker| {
        worker.deploy_playbook(playbook).concurrency(concurrency)
    })
    .await
}

impl World {
    /// A worker under `redis`'s prefix aimed at `host` (its port, user and
    /// client key), with the test defaults, then whatever `configure` sets.
    pub async fn start(
        host: TestHost,
        redis: TestRedis,
        configure: impl FnOnce(TestWorkerBuilder) -> TestWorkerBuilder,
    ) -> World {
        let worker = configure(TestWorker::builder(&redis).target(&host))
            .spawn()
            .await;
        let queue = redis.queue();
        World {
            worker,
            host,
            redis,
            queue,
        }
    }

    /// Enqueues a DeployJob and returns its published result.
    pub async fn deploy(&self, payload: &Value) -> JobResult {
        self.queue.enqueue_deploy(payload).await;
        self.worker
            .wait_deploy_result(&self.queue, request_id(payload))
            .await
    }

    /// Enqueues every DeployJob first, then returns their results in order:
    /// the jobs run side by side.
    pub async fn deploy_all(&self, payloads: &[Value]) -> Vec<JobResult> {
        for payload in payloads {
            self.queue.enqueue_deploy(payload).await;
        }
        let mut results = Vec::new();
        for payload in payloads {
            let waited = self
                .worker
                .wait_deploy_result(&self.queue, request_id(payload));
            results.push(waited.await);
        }
        results
    }

    /// Enqueues a ProvisionJob and returns its published result.
    pub async fn provision(&self, payload: &Value) -> JobResult {
        self.queue.enqueue_provision(payload).await;
        self.worker
            .wait_provision_result(&self.queue, request_id(payload))
            .await
    }
}

fn request_id(payload: &Value) -> &str {
    payload["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a job to wait for needs a request_id: {payload}"))
}
