//! The Python client (`clients/python/`) against the real worker: its
//! pytest suite runs with the environment of two worlds, one running the
//! `deploy_digest.yml` fixture against a real sshd, one whose playbook is a
//! stub that answers at once (for 50 jobs awaited together).

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::*;

/// The whole pytest run, a failure guard only.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test]
async fn the_python_client_passes_its_tests_against_the_worker() {
    // Arrange: the real deploy world, and the fast one with a stub playbook.
    let w = world("deploy_digest.yml", 4).await;
    let fast = World::start(TestHost::start().await, TestRedis::new().await, |worker| {
        worker.stub_playbook().concurrency(16)
    })
    .await;
    let client_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/python");

    // Act
    let mut pytest = tokio::process::Command::new("python3");
    pytest
        .args([
            "-m",
            "pytest",
            "tests",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(&client_dir)
        .env("INFRA_TEST_REQUIRE_WORKER", "1")
        .env("INFRA_TEST_REDIS_URL", w.redis.url())
        .env("INFRA_TEST_KEY_PREFIX", w.redis.prefix())
        .env("INFRA_TEST_SERVER_IP", w.host.address())
        .env(
            "INFRA_TEST_GITHUB_TOKEN_REF",
            format!("env:{GITHUB_TOKEN_VAR}"),
        )
        .env("INFRA_TEST_SECRETS_REF", format!("env:{PROJECT_ENV_VAR}"))
        .env("INFRA_TEST_FAST_KEY_PREFIX", fast.redis.prefix())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PYTEST_TIMEOUT, pytest.output())
        .await
        .expect("pytest finished in time")
        .expect("python3 -m pytest runs (scripts/prepare test installs it)");

    // Assert: pytest passed, and the worker-backed tests ran, none skipped.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let logs = || {
        format!(
            "worker logs:\n{}\nfast worker logs:\n{}",
            tail(&w.worker.logs(), 40),
            tail(&fast.worker.logs(), 40)
        )
    };
    assert!(
        output.status.success(),
        "pytest failed ({}):\n{text}\n{}",
        output.status,
        logs()
    );
    // The summary, for `--nocapture`.
    println!("{}", text.lines().last().unwrap_or_default());
    let passed_against_worker = text
        .lines()
        .filter(|l| l.starts_with("PASSED tests/test_worker.py::"))
        .count();
    assert!(
        passed_against_worker > 60,
        "{passed_against_worker} passed:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("SKIPPED") && l.contains("test_worker.py")),
        "worker tests skipped:\n{text}"
    );
}
