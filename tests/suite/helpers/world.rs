//! The usual arrangement of a job test: one worker against one sshd, under
//! one Redis prefix.

use super::host::TestHost;
use super::redis::{Queue, TestRedis};
use super::worker::TestWorker;

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

/// A world on `host`.
pub async fn world_on(host: TestHost, playbook: &str, concurrency: usize) -> World {
    let redis = TestRedis::new().await;
    let worker = TestWorker::builder(&redis)
        .target(&host)
        .deploy_playbook(playbook)
        .concurrency(concurrency)
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
