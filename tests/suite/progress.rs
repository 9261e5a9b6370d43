//! Live progress and the operator CLI: a job's playbook events in
//! `job:events:<request_id>`, `enqueue --wait` following them to the result,
//! and `status` reading a published result. Three real playbook runs.

use std::collections::HashMap;
use std::process::Output;

use infra_service::job::JobStatus;
use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::*;

/// A playbook that puts both secrets where a careless plugin would copy
/// them: a task name and a failure message (ignored, so the job succeeds).
const LEAKY_PLAYBOOK: &str = r#"---
- name: Progress fixture
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: hello

    - name: "Name the token {{ lookup('ansible.builtin.env', 'GITHUB_TOKEN') }}"
      ansible.builtin.debug:
        msg: named

    - name: Fail with the secrets in the message
      ansible.builtin.fail:
        msg: "token {{ lookup('ansible.builtin.env', 'GITHUB_TOKEN') }} env {{ lookup('ansible.builtin.env', 'PROJECT_ENV') }}"
      ignore_errors: true

    - name: Change something
      ansible.builtin.command: "true"
"#;

/// The parsed payloads of a job's events stream, read once its result is
/// out: `job_finished` is published with the result, in the same script,
/// so it must already end the stream.
async fn finished_events(queue: &Queue, request_id: &str) -> (Vec<String>, Vec<Value>) {
    let stream = format!("job:events:{request_id}");
    let entries = queue.stream_entries(&stream).await;
    let raw: Vec<String> = entries
        .iter()
        .map(|(id, fields): &(String, HashMap<String, String>)| {
            fields
                .get("payload")
                .unwrap_or_else(|| panic!("event {id} has no payload"))
                .clone()
        })
        .collect();
    let events: Vec<Value> = raw
        .iter()
        .map(|p| serde_json::from_str(p).expect("event payload is JSON"))
        .collect();
    assert!(
        events.last().is_some_and(|e| e["event"] == "job_finished"),
        "the result is out but {stream} does not end with job_finished: {events:#?}"
    );
    (raw, events)
}

/// Runs the binary with `args` and the worker's config as the last argument.
async fn cli(worker: &TestWorker, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::from(infra_service());
    command.args(args).arg(worker.config_path());
    tokio::time::timeout(RESULT_TIMEOUT, command.output())
        .await
        .expect("the CLI finished in time")
        .expect("run the CLI")
}

/// `enqueue deploy --wait` for a contract-valid job against the test host.
async fn enqueue_and_wait(w: &World, request_id: &str) -> Output {
    let payload = valid_deploy_payload(request_id, w.host.address(), 8080);
    let project_id = payload["project_id"].as_str().unwrap().to_owned();
    cli(
        &w.worker,
        &[
            "enqueue",
            "deploy",
            "--request-id",
            request_id,
            "--project-id",
            &project_id,
            "--repo",
            "acme/digest-test",
            "--server-ip",
            w.host.address(),
            "--port",
            "8080",
            "--module",
            "backend",
            "--github-token-ref",
            payload["github_token_ref"].as_str().unwrap(),
            "--secrets-ref",
            payload["secrets_ref"].as_str().unwrap(),
            "--wait",
            "--timeout",
            "150",
        ],
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_jobs_events_hold_its_tasks_in_order_end_with_job_finished_and_no_secret() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("progress.yml");
    std::fs::write(&playbook, LEAKY_PLAYBOOK).unwrap();
    let w = world(&playbook.to_string_lossy(), 4).await;
    let request_id = unique_request_id("progress");
    let payload = valid_deploy_payload(&request_id, w.host.address(), 8080);

    // Act
    let result = w.deploy(&payload).await;
    let (raw, events) = finished_events(&w.queue, &request_id).await;

    // Assert: every task starts, then reports for the host, in playbook order.
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    let steps: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let name = e["event"].as_str().unwrap().to_owned();
            let task = e["task"].as_str().unwrap_or("").to_owned();
            (name, task)
        })
        .collect();
    let expected = [
        ("playbook_on_task_start", "Say hello"),
        ("runner_on_ok", "Say hello"),
        ("playbook_on_task_start", "Name the token ***"),
        ("runner_on_ok", "Name the token ***"),
        (
            "playbook_on_task_start",
            "Fail with the secrets in the message",
        ),
        ("runner_on_failed", "Fail with the secrets in the message"),
        ("playbook_on_task_start", "Change something"),
        ("runner_on_ok", "Change something"),
        ("job_finished", ""),
    ];
    // A task name may be shown untemplated; either way no secret is in it.
    let normalized: Vec<(&str, &str)> = steps
        .iter()
        .map(|(e, t)| {
            let t = if t.starts_with("Name the token") {
                "Name the token ***"
            } else {
                t.as_str()
            };
            (e.as_str(), t)
        })
        .collect();
    assert_eq!(normalized, expected, "{events:#?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());

    // The contract's fields.
    let ok = &events[1];
    assert_eq!(ok["play"], "Progress fixture");
    assert_eq!(ok["host"], w.host.address());
    assert_eq!(ok["changed"], false);
    assert_eq!(events[0]["host"], Value::Null);
    assert_eq!(events[7]["changed"], true, "{:#}", events[7]);
    let failed = &events[5];
    assert_eq!(failed["ignored"], true, "{failed:#}");
    let message = failed["message"].as_str().expect("a failure message");
    assert!(message.starts_with("token *** env "), "{message}");
    let finished = events.last().unwrap();
    assert_eq!(finished["status"], "success");
    assert_eq!(finished["error_code"], Value::Null);

    // No secret value anywhere in the stream.
    let token = w.worker.github_token();
    let project_env = w.worker.env_value(PROJECT_ENV_VAR);
    let env_secret = project_env
        .lines()
        .find_map(|l| l.strip_prefix("APP_SECRET="))
        .unwrap();
    for payload in &raw {
        assert!(!payload.contains(token), "token in {payload}");
        assert!(!payload.contains(env_secret), "project env in {payload}");
    }

    // The stream expires about an hour after the job.
    let mut conn = w.redis.connection();
    let ttl: i64 = conn
        .ttl(w.queue.key(&format!("job:events:{request_id}")))
        .await
        .unwrap();
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");

    // `status` shows the published result.
    let status = cli(&w.worker, &["status", &request_id]).await;
    let stdout = text(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{stdout}{}",
        text(&status.stderr)
    );
    assert!(
        stdout.starts_with(&format!("deploy {request_id}: success")),
        "{stdout}"
    );
    let json = cli(&w.worker, &["status", &request_id, "--json"]).await;
    let shown: Value = serde_json::from_slice(&json.stdout).expect("status --json prints JSON");
    let published = w.queue.deploy_result_json(&request_id).await;
    assert_eq!(
        Some(shown),
        published,
        "status --json shows the result as published"
    );
    let unknown = cli(&w.worker, &["status", "never-enqueued"]).await;
    assert_eq!(unknown.status.code(), Some(4), "{}", text(&unknown.stdout));
}

#[tokio::test]
async fn enqueue_wait_prints_the_task_progress_and_exits_0_for_a_passing_playbook() {
    // Arrange
    let w = world("deploy_digest.yml", 4).await;
    let request_id = unique_request_id("wait-ok");

    // Act
    let out = enqueue_and_wait(&w, &request_id).await;

    // Assert
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let host = w.host.address();
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| *l == needle)
            .unwrap_or_else(|| panic!("no line {needle:?} in:\n{stdout}"))
    };
    let summary = lines
        .iter()
        .position(|l| l.starts_with(&format!("deploy {request_id}: success")))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let steps = [
        at("TASK [Find the output directory and PATH of the target]"),
        at(&format!(
            "[{host}] Find the output directory and PATH of the target: ok"
        )),
        at("TASK [Write the record]"),
        at(&format!("[{host}] Write the record: changed")),
        summary,
    ];
    assert!(steps.is_sorted(), "{steps:?} in:\n{stdout}");
    assert!(!stdout.contains(w.worker.github_token()));
}

#[tokio::test]
async fn enqueue_wait_exits_1_for_a_failing_playbook_naming_the_failed_task() {
    // Arrange
    let w = world("deploy_fail.yml", 4).await;
    let request_id = unique_request_id("wait-fail");

    // Act
    let out = enqueue_and_wait(&w, &request_id).await;

    // Assert
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let host = w.host.address();
    assert!(
        stdout.contains(&format!("[{host}] Succeed first: ok\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "[{host}] {FAILING_TASK}: failed: deploy_fail.yml stops here on purpose\n"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("Never reached"), "{stdout}");
    assert!(
        stdout.contains(&format!("deploy {request_id}: failed")),
        "{stdout}"
    );
    assert!(stdout.contains("error: playbook_failed: "), "{stdout}");
    let (_, events) = finished_events(&w.queue, &request_id).await;
    let finished = events.last().unwrap();
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["error_code"], "playbook_failed");
}
