//! The warm Ansible controller (`ansible.controller = "warm"`): a run forked
//! from the controller must be indistinguishable from a cold
//! `ansible-playbook`, and the worker, not the controller, supervises it.
//!
//! Parity runs the fixture `parity.yml` through two workers, one per mode,
//! side by side: three jobs each (success with play stats, a failing task,
//! a timeout), six real playbook runs in all. A controller killed by SIGKILL
//! under two runs leaves them to finish, and is replaced for the next job
//! (the fixtures' Ansible dir links the shipped controller).

use std::collections::HashMap;
use std::time::Duration;

use infra_service::job::JobStatus;
use serde_json::Value;

use crate::helpers::*;

/// The fixture whose end the job's branch chooses.
const PARITY_PLAYBOOK: &str = "parity.yml";

/// The branches of `parity.yml`, one job each.
const BRANCHES: [&str; 3] = ["ok", "fail", "hang"];

/// What a worker in `mode` published for each of [`BRANCHES`], and the
/// events each job streamed, with what differs between any two runs (ids,
/// times, the host's address, the worker's name) replaced by placeholders.
async fn parity_run(mode: &str, project_id: &str) -> Vec<(Value, Vec<Value>)> {
    let w = World::start(TestHost::start().await, TestRedis::new().await, |worker| {
        worker
            .deploy_playbook(PARITY_PLAYBOOK)
            .concurrency(BRANCHES.len())
            .set("ansible.controller", mode)
            // Room for three cold runs side by side on a loaded machine;
            // the "hang" job waits this long.
            .set("worker.job_timeout_secs", 25)
            .set("worker.kill_grace_secs", 1)
    })
    .await;
    let payloads: Vec<Value> = BRANCHES
        .iter()
        .map(|branch| {
            let request_id = unique_request_id(&format!("parity-{mode}-{branch}"));
            let mut payload = valid_deploy_payload(&request_id, w.host.address(), 8080);
            payload["branch"] = (*branch).into();
            payload["project_id"] = project_id.into();
            payload
        })
        .collect();

    let results = w.deploy_all(&payloads).await;
    assert_eq!(run_modes(&w), [mode; BRANCHES.len()], "every run {mode}");

    let mut seen = Vec::new();
    for (payload, result) in payloads.iter().zip(results) {
        let request_id = payload["request_id"].as_str().unwrap();
        let placeholders = [
            (request_id, "<request_id>"),
            (w.host.address(), "<host>"),
            (result.worker.as_str(), "<worker>"),
        ];
        let result = normalized(&result.to_json(), &placeholders);
        let events = events_of(&w.queue, request_id)
            .await
            .iter()
            .map(|payload| normalized(payload, &placeholders))
            .collect();
        seen.push((result, events));
    }
    seen
}

/// `json` with each placeholder's text replaced and the fields that are
/// times or durations removed.
fn normalized(json: &str, placeholders: &[(&str, &str)]) -> Value {
    let mut text = json.to_owned();
    for (from, to) in placeholders {
        text = text.replace(from, to);
    }
    let mut value: Value = serde_json::from_str(&text).expect("JSON");
    if let Some(object) = value.as_object_mut() {
        for timing in ["started_at", "finished_at", "duration_ms", "timings"] {
            object.remove(timing);
        }
    }
    value
}

/// The payloads of a job's events stream, in order.
async fn events_of(queue: &Queue, request_id: &str) -> Vec<String> {
    let stream = format!("job:events:{request_id}");
    queue
        .stream_entries(&stream)
        .await
        .into_iter()
        .map(|(id, fields): (String, HashMap<String, String>)| {
            fields
                .get("payload")
                .unwrap_or_else(|| panic!("event {id} has no payload"))
                .clone()
        })
        .collect()
}

#[tokio::test]
async fn the_fixture_playbooks_give_the_same_results_and_events_warm_and_cold() {
    let project_id = uuid::Uuid::new_v4().to_string();

    let (cold, warm) = tokio::join!(
        parity_run("cold", &project_id),
        parity_run("warm", &project_id)
    );

    // The three ends are what the fixture asks for, so the comparison
    // compares something.
    let statuses: Vec<(&Value, &Value)> = cold
        .iter()
        .map(|(result, _)| (&result["status"], &result["error"]["code"]))
        .collect();
    assert_eq!(
        statuses,
        [
            (&Value::from("success"), &Value::Null),
            (&Value::from("failed"), &Value::from("playbook_failed")),
            (&Value::from("failed"), &Value::from("timeout")),
        ],
        "{cold:#?}"
    );
    assert_eq!(
        cold[1].0["failed_task"]["task"], "Fail on purpose",
        "{:#}",
        cold[1].0
    );
    for (branch, ((cold_result, cold_events), (warm_result, warm_events))) in
        BRANCHES.iter().zip(cold.iter().zip(&warm))
    {
        assert_eq!(
            warm_result, cold_result,
            "branch {branch}: the warm result differs from the cold one"
        );
        assert_eq!(
            warm_events, cold_events,
            "branch {branch}: the warm events differ from the cold ones"
        );
        assert!(
            cold_events.len() >= 4,
            "branch {branch}: too few events to compare: {cold_events:#?}"
        );
    }
}

/// The worker's warm controller process, if it runs.
fn controller_of(worker_pid: u32) -> Option<i32> {
    descendants(worker_pid as i32)
        .into_iter()
        .find(|&pid| is_warm_controller(pid))
}

/// The `controller` field of every "playbook started" line so far.
fn run_modes(w: &World) -> Vec<String> {
    w.worker
        .log_entries("playbook started")
        .iter()
        .map(|e| e["controller"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test]
async fn runs_in_flight_outlive_a_killed_controller_and_the_next_job_runs_on_a_new_one() {
    // Arrange: two jobs hold their playbooks open on the target.
    let w = world("deploy_sleep.yml", 2).await;
    let payload =
        |label: &str| valid_deploy_payload(&unique_request_id(label), w.host.address(), 8080);
    let in_flight = [payload("inflight1"), payload("inflight2")];
    for job in &in_flight {
        w.queue.enqueue_deploy(job).await;
    }
    let ids: Vec<String> = in_flight
        .iter()
        .map(|job| job["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        wait_sleepers_started(&w.host, &ids, START_TIMEOUT).await,
        "the two playbooks did not start:\n{}",
        w.worker.logs()
    );
    let first_controller = controller_of(w.worker.pid()).expect("a controller process");

    // Act: SIGKILL the controller under its two runs, then let them end.
    // SAFETY: kill(2) of the controller process found above.
    unsafe { libc::kill(first_controller, libc::SIGKILL) };
    w.worker
        .wait_log("warm controller ready", 2, Duration::from_secs(60))
        .await;
    release_sleepers(&w.host);
    let mut results = Vec::new();
    for id in &ids {
        results.push(w.worker.wait_deploy_result(&w.queue, id).await);
    }
    let next = w.deploy(&payload("after")).await;

    // Assert: both runs finished as if nothing happened; the next job ran
    // warm, forked by the new controller.
    for result in results.iter().chain([&next]) {
        assert_eq!(result.status, JobStatus::Success, "{result:#?}");
        assert!(
            result.output_tail.contains("Record the end time"),
            "{result:#?}"
        );
    }
    assert_eq!(run_modes(&w), ["warm", "warm", "warm"]);
    let second_controller = controller_of(w.worker.pid()).expect("a new controller");
    assert_ne!(second_controller, first_controller);
}
