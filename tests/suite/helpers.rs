//! The harness every suite uses: real Redis (`TestRedis`, `Queue`), Postgres
//! (`TestDb`), sshd (`TestHost`) and worker binary (`TestWorker`), each made
//! unique per test, on `TEST_REDIS_URL` / `TEST_DATABASE_URL` or containers
//! (`OwnRedis`, `OwnPostgres` for a test that stops its server; `SentinelSet`
//! for a master, a replica and three Sentinels). A job runs to
//! its result, the library's `JobResult`, through `World::deploy` /
//! `World::provision` (or, enqueued first, `TestWorker::wait_deploy_result`);
//! other waits are `eventually` (only starting and stopping the harness's
//! own servers polls their child processes by hand).
//! `run_playbook` runs the real `ansible/` content against a `TestHost`;
//! `SystemUser` names (and finally removes) an account a play creates.
//! `TestConsole` is the operator console's binary; `Browser` a headless
//! Chromium over WebDriver that looks at it.

mod ansible_run;
mod browser;
mod console;
mod containers;
mod db;
mod fake_api;
mod host;
mod job_result;
mod leaks;
mod own_postgres;
mod own_redis;
mod payload;
mod pki;
mod playbooks;
mod poll;
mod ports;
mod procs;
mod redis;
mod sentinel;
mod system_user;
mod worker;
mod world;

pub use ansible_run::{
    PlaybookRun, StubState, compose_work_tree, free_port, git, give_to_login_user, install_stubs,
    login_user_dir, run_playbook, stubbed_host,
};
pub use browser::{Browser, Engine, artifacts_dir};
pub use console::{TestConsole, add_dead_letter, add_server};
pub use db::TestDb;
pub use fake_api::serve_on_loopback;
pub use host::{SshOutput, TestHost};
pub use job_result::JobResultExt;
pub use leaks::{files_text, fragments, stream_text};
pub use own_postgres::OwnPostgres;
pub use own_redis::{OwnRedis, RedisTlsFiles};
pub use payload::{unique_request_id, valid_deploy_payload};
pub use pki::{Issued, TestCa};
pub use playbooks::{
    FAILING_TASK, digest_record, fixtures_dir, release_sleepers, sha256_hex, sleep_ends,
    sleep_starts, wait_sleepers_started,
};
pub use poll::eventually;
pub(crate) use ports::free_stable_port;
pub use procs::{
    all_cmdlines, cmdline, descendants, is_playbook_run, is_warm_controller,
    pids_with_environ_containing, state,
};
pub use redis::{Queue, TestRedis};
pub use sentinel::SentinelSet;
pub use system_user::SystemUser;
pub use worker::{
    GITHUB_TOKEN_VAR, PROJECT_ENV_VAR, RESULT_TIMEOUT, SSH_KEY_REF, START_TIMEOUT, TestWorker,
    TestWorkerBuilder, ansible_playbook_bin, infra_service, tail,
};
pub use world::{World, world, world_on};
