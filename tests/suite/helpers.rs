//! The harness every suite uses: real Redis (`TestRedis`, `Queue`), real
//! Postgres (`TestDb`), a real sshd standing in for a server (`TestHost`),
//! and the real worker binary (`TestWorker`), each made unique per test;
//! `run_playbook` runs the real `ansible/` content against a `TestHost`.
//! Services come from `TEST_REDIS_URL` / `TEST_DATABASE_URL` when set, else
//! from containers started once per test binary. A test that stops Redis or
//! Postgres starts a server of its own instead (`OwnRedis`, `OwnPostgres`).

// Parts of the harness serve suites of later issues.
#![allow(dead_code, unused_imports)]

mod ansible_run;
mod containers;
mod db;
mod host;
mod own_postgres;
mod own_redis;
mod payload;
mod playbooks;
mod ports;
mod procs;
mod redis;
mod worker;
mod world;

pub use ansible_run::{
    PlaybookRun, StubState, ansible_dir, give_to_login_user, install_stubs, login_user_dir,
    run_playbook,
};
pub use db::TestDb;
pub use host::{RunOutput, TestHost};
pub use own_postgres::OwnPostgres;
pub use own_redis::OwnRedis;
pub use payload::{unique_request_id, valid_deploy_payload};
pub use playbooks::{
    FAILING_TASK, digest_record, fixtures_dir, release_sleepers, sha256_hex, sleep_ends,
    sleep_starts, wait_sleepers_started,
};
pub use procs::{all_cmdlines, cmdline, descendants, pids_with_environ_containing};
pub use redis::{Queue, TestRedis};
pub use worker::{
    GITHUB_TOKEN_VAR, PROJECT_ENV_VAR, SSH_KEY_REF, TestWorker, TestWorkerBuilder,
    ansible_playbook_bin, tail, worker_bin,
};
pub use world::{World, world, world_on};
