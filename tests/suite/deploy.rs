//! Deploy jobs end to end: a DeployJob on `ansible:deploy:queue`
//! runs a fixture playbook against a real sshd, and its result appears at
//! `deploy:result:<request_id>` and in `deploy:results`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use infra_service::job::{ErrorCode, JobKind, JobStatus};
use serde_json::{Value, json};

use crate::helpers::*;

/// Eight loopback addresses on one sshd: eight servers to the worker, so
/// the one-job-per-server rule does not serialize jobs spread over them.
const SERVERS: [&str; 8] = [
    "127.0.0.1",
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
    "127.0.0.7",
    "127.0.0.8",
];

/// The fields every result carries (CONTRACT.md section 3), with their
/// types, read from the JSON as published; returns that JSON.
async fn assert_contract_fields(queue: &Queue, request_id: &str) -> Value {
    let result = queue
        .deploy_result_json(request_id)
        .await
        .unwrap_or_else(|| panic!("no result published for {request_id}"));
    assert_eq!(result["request_id"], request_id, "{result:#}");
    assert_eq!(result["job"], "deploy", "{result:#}");
    assert!(
        matches!(result["status"].as_str(), Some("success" | "failed")),
        "{result:#}"
    );
    for key in ["started_at", "finished_at"] {
        let text = result[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {result:#}"));
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{key} {text:?} is not RFC 3339: {e}"));
    }
    let started = chrono::DateTime::parse_from_rfc3339(result["started_at"].as_str().unwrap());
    let finished = chrono::DateTime::parse_from_rfc3339(result["finished_at"].as_str().unwrap());
    assert!(started.unwrap() <= finished.unwrap(), "{result:#}");
    assert!(result["duration_ms"].is_u64(), "{result:#}");
    assert!(
        result["attempt"].as_u64().is_some_and(|a| a >= 1),
        "{result:#}"
    );
    assert!(
        result["worker"].as_str().is_some_and(|w| !w.is_empty()),
        "{result:#}"
    );
    assert!(result["output_tail"].is_string(), "{result:#}");
    assert!(result.get("error").is_some(), "{result:#}");
    assert!(result.get("failed_task").is_some(), "{result:#}");
    for key in ["queue_wait_ms", "preflight_ms", "playbook_ms"] {
        assert!(result["timings"][key].is_u64(), "timings.{key}: {result:#}");
    }
    // A counter the library would read as 0 must still be written.
    let hosts = result.get("stats").and_then(Value::as_object);
    for (host, counters) in hosts.into_iter().flatten() {
        for key in ["ok", "changed", "failed", "unreachable", "skipped"] {
            assert!(counters[key].is_u64(), "stats.{host}.{key}: {result:#}");
        }
    }
    result
}

#[tokio::test]
async fn a_deploy_succeeds_with_every_contract_field_and_the_target_sees_the_token() {
    // Arrange
    let w = world("deploy_digest.yml", 4).await;
    let request_id = unique_request_id("digest");
    let payload = valid_deploy_payload(&request_id, w.host.address(), 8080);

    // Act
    let result = w.deploy(&payload).await;

    // Assert: the result.
    let published = assert_contract_fields(&w.queue, &request_id).await;
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert_eq!(result.error, None);
    assert_eq!(result.failed_task, None);
    assert_eq!(result.attempt, 1);
    assert!(result.output_tail.contains("PLAY RECAP"), "{result:#?}");
    let stats = result.stats.as_ref().expect("stats after a run");
    assert_eq!(stats.len(), 1, "one host: {result:#?}");
    let host_stats = stats.values().next().unwrap();
    assert!(host_stats.ok >= 2, "{result:#?}");
    assert_eq!(host_stats.failed, 0);
    assert_eq!(host_stats.unreachable, 0);
    assert_eq!(result.field("project_id"), &payload["project_id"]);
    assert_eq!(result.field("server_ip"), w.host.address());
    assert_eq!(result.field("port"), 8080);
    assert_eq!(
        result.field("url"),
        format!("http://{}:8080", w.host.address()).as_str()
    );

    // Assert: key TTL, and the same JSON on the results stream.
    let ttl = w.queue.deploy_result_ttl(&request_id).await;
    assert!((1..=3600).contains(&ttl), "TTL {ttl}");
    let streamed = w.queue.deploy_results_stream().await;
    assert_eq!(streamed, vec![published]);

    // Assert: what the playbook received, recorded on the target.
    let record = digest_record(&w.host, &request_id).expect("the playbook wrote its record");
    assert_eq!(record["token_sha256"], sha256_hex(w.worker.github_token()));
    assert_eq!(
        record["project_env_sha256"],
        sha256_hex(w.worker.env_value(PROJECT_ENV_VAR))
    );
    let vars = &record["vars"];
    for key in [
        "request_id",
        "project_id",
        "project_name",
        "repo_full_name",
        "branch",
        "server_ip",
        "modules",
    ] {
        assert_eq!(vars[key], payload[key], "extra var {key}: {record:#}");
    }
    assert_eq!(vars["service_port"], 8080, "{record:#}");
}

#[tokio::test]
async fn an_unresolvable_reference_fails_with_the_contracts_reason_before_any_run() {
    // Arrange: one reference names a variable the worker does not have,
    // another breaks the syntax.
    let w = world("deploy_digest.yml", 2).await;
    let missing = unique_request_id("missing-secret");
    let mut payload = valid_deploy_payload(&missing, w.host.address(), 8080);
    payload["github_token_ref"] = json!("env:INFRA_TEST_NO_SUCH_VARIABLE");
    let unknown = unique_request_id("unknown-scheme");
    let mut other = valid_deploy_payload(&unknown, w.host.address(), 8080);
    other["secrets_ref"] = json!("aws-sm:prod/app");

    // Act
    let missing_result = w.deploy(&payload).await;
    let unknown_result = w.deploy(&other).await;

    // Assert: secret_unresolved naming the reference, with its reason, and
    // no playbook ran.
    for (result, reference, reason) in [
        (
            &missing_result,
            "env:INFRA_TEST_NO_SUCH_VARIABLE",
            "not_found",
        ),
        (&unknown_result, "aws-sm:prod/app", "malformed"),
    ] {
        assert_eq!(
            result.code(),
            Some(ErrorCode::SecretUnresolved),
            "{result:#?}"
        );
        assert_eq!(result.detail("reference"), reference, "{result:#?}");
        assert_eq!(result.detail("reason"), reason, "{result:#?}");
        assert!(result.message().unwrap().contains(reference), "{result:#?}");
        let published = w.queue.deploy_result_json(&result.request_id).await;
        let published = published.expect("a published result");
        assert_eq!(published.get("stats"), None, "absent: {published:#}");
        assert!(digest_record(&w.host, &result.request_id).is_none());
    }
}

#[tokio::test]
async fn a_failing_playbook_is_reported_as_playbook_failed_naming_the_task() {
    // Arrange
    let w = world("deploy_fail.yml", 4).await;
    let request_id = unique_request_id("fail");
    let payload = valid_deploy_payload(&request_id, w.host.address(), 8080);

    // Act
    let result = w.deploy(&payload).await;

    // Assert
    assert_contract_fields(&w.queue, &request_id).await;
    assert_eq!(result.status, JobStatus::Failed, "{result:#?}");
    assert_eq!(
        result.code(),
        Some(ErrorCode::PlaybookFailed),
        "{result:#?}"
    );
    let tail = &result.output_tail;
    assert!(tail.contains(FAILING_TASK), "{tail}");
    assert!(tail.contains("PLAY RECAP"), "{tail}");
    let failed_task = result.failed_task.as_ref().expect("a failed task");
    assert_eq!(failed_task.task, FAILING_TASK, "{result:#?}");
    let host_stats = result
        .stats
        .as_ref()
        .and_then(|stats| stats.values().next())
        .expect("stats after a run");
    assert_eq!(host_stats.failed, 1, "{result:#?}");
    // A failed playbook is never retried automatically.
    assert_eq!(w.queue.deploy_results_stream().await.len(), 1);
}

/// One row of the bad-payload table.
struct BadPayload {
    label: &'static str,
    payload: Vec<u8>,
    /// Present in every payload (or its first bytes), to find its dead letter.
    marker: String,
    /// Set when a request id is readable: a result is then required.
    answered_as: Option<String>,
    /// The field the dead letter's reason must name, if one rule is broken.
    names_field: Option<&'static str>,
}

fn bad_payloads(server_ip: &str) -> Vec<BadPayload> {
    let id = |label: &str| unique_request_id(&format!("bad-{label}"));
    let with = |label: &'static str, field: &'static str, value: Value| {
        let request_id = id(field);
        let mut p = valid_deploy_payload(&request_id, server_ip, 8080);
        p[field] = value;
        BadPayload {
            label,
            payload: p.to_string().into_bytes(),
            marker: request_id.clone(),
            answered_as: Some(request_id),
            names_field: Some(field),
        }
    };
    let not_json = id("not-json");
    let not_object = id("not-object");
    let missing = id("missing-fields");
    let no_id = id("no-request-id");
    let huge = id("huge");
    let mut no_id_payload = valid_deploy_payload("x", server_ip, 8080);
    no_id_payload.as_object_mut().unwrap().remove("request_id");
    no_id_payload["note"] = json!(no_id);
    // request_id first, padding last, so the marker survives truncation.
    let huge_payload = format!(
        r#"{{"request_id":"{huge}","padding":"{}","server_ip":"{server_ip}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    vec![
        BadPayload {
            label: "not JSON",
            payload: format!("{{\"request_id\": \"{not_json}\", this is not json").into_bytes(),
            marker: not_json,
            answered_as: None,
            names_field: None,
        },
        BadPayload {
            label: "not an object",
            payload: json!([not_object]).to_string().into_bytes(),
            marker: not_object,
            answered_as: None,
            names_field: None,
        },
        BadPayload {
            label: "missing fields",
            payload: json!({ "request_id": missing }).to_string().into_bytes(),
            marker: missing.clone(),
            answered_as: Some(missing),
            names_field: None,
        },
        BadPayload {
            label: "missing request_id",
            payload: no_id_payload.to_string().into_bytes(),
            marker: no_id,
            answered_as: None,
            names_field: None,
        },
        with("repo ../x", "repo_full_name", json!("../x")),
        with("port 0", "port", json!(0)),
        with("port 70000", "port", json!(70000)),
        with("server_ip injection", "server_ip", json!("; rm -rf /")),
        with(
            "module with a space",
            "modules",
            json!(["backend", "tg bot"]),
        ),
        BadPayload {
            label: "10 MB payload",
            payload: huge_payload.into_bytes(),
            marker: huge,
            // Refused before parsing: a result is allowed, not required.
            answered_as: None,
            names_field: None,
        },
    ]
}

#[tokio::test]
async fn every_bad_payload_is_answered_and_dead_lettered_and_a_valid_job_still_succeeds() {
    // Arrange
    let w = world("deploy_digest.yml", 4).await;
    let cases = bad_payloads(w.host.address());
    let valid_id = unique_request_id("after-bad");

    // Act
    let mut entry_ids = Vec::new();
    for case in &cases {
        entry_ids.push(w.queue.enqueue_raw(&case.payload).await);
    }
    let valid = w
        .deploy(&valid_deploy_payload(&valid_id, w.host.address(), 8080))
        .await;
    let letters = w
        .queue
        .wait_dead_letters(cases.len(), Duration::from_secs(60))
        .await;

    // Assert: the worker went on.
    assert_eq!(valid.status, JobStatus::Success, "{valid:#?}");
    w.worker.assert_running().await;

    // Assert: one dead letter per bad payload, with its reason.
    let mentions = |letter: &HashMap<String, String>, needle: &str| {
        letter.values().any(|v| v.contains(needle))
    };
    assert!(
        !letters.iter().any(|l| mentions(l, &valid_id)),
        "the valid job was dead-lettered"
    );
    for (case, entry_id) in cases.iter().zip(&entry_ids) {
        let matching: Vec<_> = letters
            .iter()
            .filter(|l| mentions(l, &case.marker) || l.values().any(|v| v == entry_id))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{}: expected one dead letter, got {}",
            case.label,
            matching.len()
        );
        let reason = matching[0].get("reason").unwrap_or_else(|| {
            panic!(
                "{}: dead letter has no reason: {:?}",
                case.label,
                matching[0].keys()
            )
        });
        assert!(!reason.is_empty(), "{}: empty reason", case.label);
        if let Some(field) = case.names_field {
            assert!(
                reason.contains(field),
                "{}: reason {reason:?} does not name {field}",
                case.label
            );
        }
    }
    assert_eq!(letters.len(), cases.len(), "extra dead letters");

    // Assert: an invalid_payload result wherever a request id is readable.
    for case in &cases {
        let result = match &case.answered_as {
            Some(request_id) => Some(w.worker.wait_deploy_result(&w.queue, request_id).await),
            None => w.queue.deploy_result(&case.marker).await,
        };
        if let Some(result) = result {
            assert_eq!(
                result.status,
                JobStatus::Failed,
                "{}: {result:#?}",
                case.label
            );
            assert_eq!(
                result.code(),
                Some(ErrorCode::InvalidPayload),
                "{}: {result:#?}",
                case.label
            );
            assert_eq!(result.request_id, case.marker, "{}", case.label);
        }
    }
}

#[tokio::test]
async fn the_secret_never_appears_in_command_lines_logs_results_or_dead_letters() {
    // Arrange
    let w = world("deploy_sleep.yml", 1).await;
    let token = w.worker.github_token().to_owned();
    let request_id = unique_request_id("secret");
    let mut bad = valid_deploy_payload(&unique_request_id("secret-bad"), w.host.address(), 0);
    bad["note"] = json!("a dead letter that carries the token's reference");

    // Act: scan every process's argv while the playbook holds the token.
    w.queue.enqueue_raw(bad.to_string()).await;
    w.queue
        .enqueue_deploy(&valid_deploy_payload(&request_id, w.host.address(), 8080))
        .await;
    let mut leaks = BTreeSet::new();
    let mut saw_playbook = false;
    let mut saw_token_in_an_environment = false;
    let mut scans_while_running = 0;
    let worker = &w.worker;
    // Each probe is one scan; the wait ends after 30 scans while it ran.
    let scan = || {
        for (pid, argv) in all_cmdlines() {
            if argv.contains(&token) {
                leaks.insert(format!("{pid}: {argv}"));
            }
        }
        let running = descendants(worker.pid() as i32)
            .into_iter()
            .any(is_playbook_run);
        saw_playbook |= running;
        if running && !sleep_starts(&w.host, &request_id).is_empty() {
            saw_token_in_an_environment |= !pids_with_environ_containing(&token).is_empty();
            scans_while_running += 1;
        }
        let enough = scans_while_running >= 30;
        async move {
            worker.assert_running().await;
            enough.then_some(())
        }
    };
    eventually(RESULT_TIMEOUT, scan).await;
    release_sleepers(&w.host);
    let result = w.worker.wait_deploy_result(&w.queue, &request_id).await;

    // Assert: the scan looked at the right moment, and the token was in play.
    assert!(
        saw_playbook,
        "never saw the worker's ansible-playbook child"
    );
    assert!(
        scans_while_running >= 30,
        "only {scans_while_running} scans while it ran"
    );
    assert!(
        saw_token_in_an_environment,
        "the token was in no process's environment: was it resolved at all?"
    );
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    // Assert: and it leaked nowhere.
    assert!(leaks.is_empty(), "the token is in argv of: {leaks:#?}");
    assert!(
        !w.worker.logs().contains(&token),
        "the token is in the worker's logs"
    );
    let stored = w.queue.result_text(JobKind::Deploy, &request_id).await;
    assert!(
        !stored.expect("a stored result").contains(&token),
        "the token is in the result"
    );
    for streamed in w.queue.deploy_results_stream().await {
        assert!(
            !streamed.to_string().contains(&token),
            "the token is in deploy:results"
        );
    }
    let letters = w.queue.wait_dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1, "the bad payload was dead-lettered");
    for letter in letters {
        assert!(
            !letter.values().any(|v| v.contains(&token)),
            "the token is in infra:dead"
        );
    }
}

#[tokio::test]
async fn eight_sleeping_jobs_at_concurrency_eight_all_start_before_any_finishes() {
    // Arrange
    let w = world_on(
        TestHost::start_on_all(&SERVERS).await,
        "deploy_sleep.yml",
        8,
    )
    .await;
    let ids: Vec<String> = (0..8)
        .map(|i| unique_request_id(&format!("sleep{i}")))
        .collect();

    // Act
    for (id, server) in ids.iter().zip(SERVERS) {
        w.queue
            .enqueue_deploy(&valid_deploy_payload(id, server, 8080))
            .await;
    }
    // Released once all eight have started, or after a minute if they never
    // do; either way the timestamps decide.
    let all_started = wait_sleepers_started(&w.host, &ids, Duration::from_secs(60)).await;
    release_sleepers(&w.host);
    let mut results = Vec::new();
    for id in &ids {
        results.push(w.worker.wait_deploy_result(&w.queue, id).await);
    }

    // Assert
    for result in &results {
        assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    }
    let starts: Vec<f64> = ids
        .iter()
        .flat_map(|id| sleep_starts(&w.host, id))
        .collect();
    let ends: Vec<f64> = ids.iter().flat_map(|id| sleep_ends(&w.host, id)).collect();
    assert_eq!(starts.len(), 8, "one start per job");
    assert_eq!(ends.len(), 8, "one end per job");
    let last_start = starts.iter().cloned().fold(f64::MIN, f64::max);
    let first_end = ends.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "a job finished ({first_end}) before the last one started ({last_start}); \
         all started before release: {all_started}"
    );
}

#[tokio::test]
async fn two_workers_on_one_group_split_a_batch_and_run_each_job_once() {
    // Arrange: two slots each, so four jobs can only be running at once if
    // both workers took some.
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let host = TestHost::start_on_all(&SERVERS).await;
    let spawn = || {
        TestWorker::builder(&redis)
            .target(&host)
            .postgres_url(db.url())
            .deploy_playbook("deploy_sleep.yml")
            .concurrency(2)
            .spawn()
    };
    let (a, b) = (spawn().await, spawn().await);
    let queue = redis.queue();
    let ids: Vec<String> = (0..6)
        .map(|i| unique_request_id(&format!("split{i}")))
        .collect();

    // Act
    for (id, server) in ids.iter().zip(SERVERS) {
        queue
            .enqueue_deploy(&valid_deploy_payload(id, server, 8080))
            .await;
    }
    let four_at_once = {
        let (host, a, b, ids) = (&host, &a, &b, &ids);
        let four_running = move || async move {
            a.assert_running().await;
            b.assert_running().await;
            let started = ids
                .iter()
                .filter(|id| !sleep_starts(host, id).is_empty())
                .count();
            (started >= 4).then_some(started)
        };
        eventually(START_TIMEOUT, four_running).await
    };
    release_sleepers(&host);
    let mut results = Vec::new();
    for id in &ids {
        results.push(a.wait_deploy_result(&queue, id).await);
    }

    // Assert
    assert_eq!(
        four_at_once,
        Some(4),
        "four jobs running at once needs both workers"
    );
    let workers: BTreeSet<&str> = results.iter().map(|r| r.worker.as_str()).collect();
    assert!(
        !workers.contains(""),
        "a result names no worker: {results:#?}"
    );
    assert_eq!(workers.len(), 2, "results came from {workers:?}");
    for (id, result) in ids.iter().zip(&results) {
        assert_eq!(result.status, JobStatus::Success, "{result:#?}");
        assert_eq!(sleep_starts(&host, id).len(), 1, "{id} ran more than once");
        assert_eq!(sleep_ends(&host, id).len(), 1, "{id} ended more than once");
    }
    let published: Vec<String> = queue
        .deploy_results_stream()
        .await
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(published.len(), ids.len(), "one published result per job");
    assert_eq!(
        published.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "{published:?}"
    );
}

/// sshd's `Accepted publickey` lines (LogLevel VERBOSE): one per
/// authenticated connection.
fn authentications(host: &TestHost) -> usize {
    host.sshd_log().matches("Accepted publickey").count()
}

#[tokio::test]
async fn a_deploy_authenticates_once_its_playbook_reusing_the_probes_connection() {
    // Arrange
    let w = world("deploy_digest.yml", 1).await;
    let id = unique_request_id("onehandshake");
    let before = authentications(&w.host);

    // Act
    let result = w
        .deploy(&valid_deploy_payload(&id, w.host.address(), 8080))
        .await;

    // Assert: the probe authenticated, the playbook rode on its connection.
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    assert!(digest_record(&w.host, &id).is_some(), "the playbook ran");
    assert_eq!(
        authentications(&w.host) - before,
        1,
        "{}",
        w.host.sshd_log()
    );

    // Assert: the master went with the run.
    assert_no_ssh_left(&w.worker).await;
}

#[tokio::test]
async fn a_deploy_that_ends_after_the_probe_without_a_playbook_leaves_no_master() {
    // Arrange: the probe succeeds, then the playbook cannot start (cold:
    // a warm run does not start `playbook_bin`).
    let w = World::start(TestHost::start().await, TestRedis::new().await, |worker| {
        worker
            .set("ansible.controller", "cold")
            .set("ansible.playbook_bin", "/nonexistent/ansible-playbook")
    })
    .await;
    let id = unique_request_id("nomaster");
    let before = authentications(&w.host);

    // Act
    let result = w
        .deploy(&valid_deploy_payload(&id, w.host.address(), 8080))
        .await;

    // Assert: the probe's master is closed with the workspace, long before
    // its ControlPersist (60 s) would end it.
    assert_eq!(result.code(), Some(ErrorCode::Internal), "{result:#?}");
    assert_eq!(
        authentications(&w.host) - before,
        1,
        "{}",
        w.host.sshd_log()
    );
    assert_no_ssh_left(&w.worker).await;
}

/// Within a few seconds, no ssh process (a ControlMaster) and no zombie
/// is left below `worker`, a subreaper that adopts what its runs leave.
async fn assert_no_ssh_left(worker: &TestWorker) {
    let worker = worker.pid() as i32;
    let leftovers = || {
        descendants(worker)
            .into_iter()
            .filter(|&pid| state(pid) == Some('Z') || cmdline(pid).starts_with("ssh"))
            .map(|pid| (pid, state(pid), cmdline(pid)))
            .collect::<Vec<_>>()
    };
    let cleaned = eventually(Duration::from_secs(5), || async {
        leftovers().is_empty().then_some(())
    })
    .await;
    assert!(cleaned.is_some(), "left behind: {:?}", leftovers());
}

#[tokio::test]
async fn a_deploy_target_whose_host_key_changed_is_refused_with_host_key_mismatch() {
    // Arrange: the first deploy to an address pins the key it sees.
    let mut w = world("deploy_digest.yml", 1).await;
    let first = unique_request_id("tofu");
    let second = unique_request_id("mitm");
    let pinned = w
        .deploy(&valid_deploy_payload(&first, w.host.address(), 8080))
        .await;
    assert_eq!(pinned.status, JobStatus::Success, "{pinned:#?}");

    // Act: the same address now answers with another host key; a job
    // also names it in another spelling, hoping for a first contact.
    w.host.restart_with_new_host_key().await;
    let refused = w
        .deploy(&valid_deploy_payload(&second, w.host.address(), 8080))
        .await;
    let respelled = unique_request_id("respelled");
    let mapped = format!("::ffff:{}", w.host.address());
    let respelled_result = w
        .deploy(&valid_deploy_payload(&respelled, &mapped, 8080))
        .await;

    // Assert: both refused before any playbook ran against the impostor.
    for (id, result) in [(&second, &refused), (&respelled, &respelled_result)] {
        assert_eq!(result.status, JobStatus::Failed);
        assert_eq!(
            result.code(),
            Some(ErrorCode::HostKeyMismatch),
            "{result:#?}"
        );
        let published = w.queue.deploy_result_json(id).await;
        let published = published.expect("a published result");
        assert_eq!(published.get("stats"), None, "absent: {published:#}");
        assert!(digest_record(&w.host, id).is_none());
    }
}

#[tokio::test]
async fn with_ssh_preflight_off_a_deploy_to_a_host_where_nothing_listens_runs_its_playbook() {
    // Arrange: nothing listens on port 1 of 127.0.0.1, so a probe would end
    // in ssh_unreachable; the stub playbook never connects anywhere (the
    // world's sshd is on another port and never used).
    let w = World::start(TestHost::start().await, TestRedis::new().await, |worker| {
        worker.stub_playbook()
    })
    .await;
    let id = unique_request_id("nopreflight");

    // Act
    let result = w
        .deploy(&valid_deploy_payload(&id, "127.0.0.1", 8080))
        .await;

    // Assert
    assert_eq!(result.status, JobStatus::Success, "{result:#?}");
    let ok = result.stats.as_ref().and_then(|s| s.get("127.0.0.1"));
    assert_eq!(ok.map(|host| host.ok), Some(1), "{result:#?}");
}
