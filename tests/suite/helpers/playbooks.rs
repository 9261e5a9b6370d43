//! The fixture playbooks of `tests/fixtures/ansible/` and what they leave
//! on a `TestHost`, under its `out_dir` (`$INFRA_TEST_OUT` on the target):
//! - `deploy_digest.yml`: `<request_id>.json`, the sha256 of `GITHUB_TOKEN`
//!   and `PROJECT_ENV`, the job's extra vars, the target PATH;
//! - `deploy_fail.yml`: fails in the task `Fail on purpose`;
//! - `deploy_sleep.yml`: appends `date +%s.%N` to `<request_id>.start`,
//!   waits (the token in that command's environment only) until the file
//!   `release` exists (at most 60 s), then appends to `<request_id>.end`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::host::TestHost;
use super::poll::eventually;

/// The task `deploy_fail.yml` fails in.
pub const FAILING_TASK: &str = "Fail on purpose";

/// `tests/fixtures/ansible`, absolute: a worker's `ansible.dir`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ansible")
}

/// Lower-case hex sha256, as Ansible's `hash('sha256')` prints it.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `deploy_digest.yml` recorded for `request_id`, if it ran.
pub fn digest_record(host: &TestHost, request_id: &str) -> Option<Value> {
    let path = host.out_dir().join(format!("{request_id}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).expect("digest record is JSON"))
}

/// The start timestamps `deploy_sleep.yml` recorded for `request_id`, one
/// per run (so its length counts the runs).
pub fn sleep_starts(host: &TestHost, request_id: &str) -> Vec<f64> {
    timestamps(host, &format!("{request_id}.start"))
}

/// The end timestamps `deploy_sleep.yml` recorded for `request_id`.
pub fn sleep_ends(host: &TestHost, request_id: &str) -> Vec<f64> {
    timestamps(host, &format!("{request_id}.end"))
}

/// Lets every `deploy_sleep.yml` run on `host` finish its wait.
pub fn release_sleepers(host: &TestHost) {
    std::fs::write(host.out_dir().join("release"), b"").expect("write release file");
}

/// Waits until each of `request_ids` has recorded a start; false on timeout.
pub async fn wait_sleepers_started(
    host: &TestHost,
    request_ids: &[String],
    timeout: Duration,
) -> bool {
    let all_started = move || async move {
        request_ids
            .iter()
            .all(|id| !sleep_starts(host, id).is_empty())
            .then_some(())
    };
    eventually(timeout, all_started).await.is_some()
}

fn timestamps(host: &TestHost, file: &str) -> Vec<f64> {
    std::fs::read_to_string(host.out_dir().join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|e| panic!("bad timestamp {l:?} in {file}: {e}"))
        })
        .collect()
}
