//! The warm controller in a running worker: jobs run forked from it (the
//! fixtures' Ansible dir links the shipped controller), and a controller
//! killed by SIGKILL is replaced for the next job.

use std::time::Duration;

use infra_service::job::JobStatus;

use crate::helpers::*;

/// The worker's child that runs the controller script, if any (a child
/// of any of the worker's threads).
fn controller_of(worker_pid: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{worker_pid}/task")).ok()?;
    tasks
        .flatten()
        .flat_map(|task| {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("infra_controller.py"))
        })
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
async fn deploys_run_warm_and_a_killed_controller_is_replaced_for_the_next_job() {
    // Arrange
    let w = world("deploy_digest.yml", 2).await;
    w.worker
        .wait_log("warm controller ready", 1, Duration::from_secs(60))
        .await;
    let first_controller = controller_of(w.worker.pid()).expect("a controller process");

    // Act: one job, then the controller killed, then another job.
    let first = w
        .deploy(&valid_deploy_payload(
            &unique_request_id("warm1"),
            w.host.address(),
            8080,
        ))
        .await;
    // SAFETY: kill(2) of the controller process found above.
    unsafe { libc::kill(first_controller, libc::SIGKILL) };
    w.worker
        .wait_log("warm controller ready", 2, Duration::from_secs(60))
        .await;
    let second = w
        .deploy(&valid_deploy_payload(
            &unique_request_id("warm2"),
            w.host.address(),
            8080,
        ))
        .await;

    // Assert
    assert_eq!(first.status, JobStatus::Success, "{first:#?}");
    assert_eq!(second.status, JobStatus::Success, "{second:#?}");
    assert_eq!(run_modes(&w), ["warm", "warm"]);
    let second_controller = controller_of(w.worker.pid()).expect("a new controller");
    assert_ne!(second_controller, first_controller);
}
