//! `enqueue` and `status`: a job built from flags and checked by the same
//! parsers the worker uses, put on its queue; its progress stream followed
//! to its result; a result read back. Redis only.
//!
//! Exit codes (returned as `Ok(code)`; Redis failures and timeouts are
//! errors, exit 2): see [`EXIT_SUCCESS`] .. [`EXIT_UNKNOWN`].

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::OperatorError;
use crate::cli::{EnqueueDeploy, EnqueueJob, EnqueueProvision, StatusArgs};
use crate::config::Settings;
use crate::job::{DeployJob, EventKind, JobEvent, JobKind, JobResult, JobStatus, ProvisionJob};
use crate::queue::Caller;

/// The job succeeded (or, without `--wait`, was enqueued).
pub const EXIT_SUCCESS: u8 = 0;
/// The job failed (or the flags did not make a valid job: a usage error).
pub const EXIT_FAILED: u8 = 1;
/// `status`: no result yet, but the job has progress events (it runs).
pub const EXIT_RUNNING: u8 = 3;
/// `status`: neither a result nor progress in Redis.
pub const EXIT_UNKNOWN: u8 = 4;

/// After the result key appears without `job_finished`: how long the last
/// progress events may still take.
const RESULT_GRACE: Duration = Duration::from_millis(1500);
/// After `job_finished`: how long its result key may take to be readable.
const FINISH_GRACE: Duration = Duration::from_secs(3);
/// Each blocking read of the progress stream; the result key is checked
/// between reads.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// `enqueue deploy|provision`.
pub async fn enqueue(settings: &Settings, job: EnqueueJob) -> Result<u8, OperatorError> {
    let (kind, payload, request_id) = match &job {
        EnqueueJob::Deploy(args) => deploy_payload(args)?,
        EnqueueJob::Provision(args) => provision_payload(args)?,
    };
    let common = job.common();
    let caller = Caller::connect(&settings.redis).await?;
    let entry_id = caller.enqueue(kind, &payload.to_string()).await?;
    // Without one in the payload, the worker goes by the entry id.
    let request_id = request_id.unwrap_or_else(|| entry_id.clone());
    let queue = caller.names().queue(kind);
    if !common.wait {
        if common.json {
            print_json(&json!({
                "job": kind.as_str(),
                "request_id": request_id,
                "stream": queue,
                "entry_id": entry_id,
            }));
        } else {
            println!(
                "enqueued {kind} {request_id} as entry {entry_id} on {}",
                caller.names().unprefixed(&queue)
            );
        }
        return Ok(EXIT_SUCCESS);
    }
    let mut view = View::new(common.json);
    view.note(&format!(
        "enqueued {kind} {request_id} as entry {entry_id}; waiting for its result"
    ));
    let deadline = Instant::now() + Duration::from_secs(common.timeout);
    let followed = follow(&caller, kind, &request_id, deadline, &mut view).await;
    view.done();
    let stored = followed?;
    Ok(print_result(kind, &request_id, &stored, common.json))
}

/// `status <request_id>`.
pub async fn status(settings: &Settings, args: StatusArgs) -> Result<u8, OperatorError> {
    let kinds: &[JobKind] = match &args.kind {
        Some(kind) => std::slice::from_ref(kind),
        None => &JobKind::ALL,
    };
    let caller = Caller::connect(&settings.redis).await?;
    for &kind in kinds {
        if let Some(text) = caller.result(kind, &args.request_id).await? {
            return Ok(print_result(
                kind,
                &args.request_id,
                &Stored::parse(text),
                args.json,
            ));
        }
    }
    let (state, code, note) = if caller.has_events(&args.request_id).await? {
        (
            "running",
            EXIT_RUNNING,
            "no result yet; progress events exist",
        )
    } else {
        (
            "unknown",
            EXIT_UNKNOWN,
            "no result and no progress in Redis: queued, never enqueued, or expired (kept an hour)",
        )
    };
    if args.json {
        print_json(&json!({"request_id": args.request_id, "state": state}));
    } else {
        println!("{}: {state} ({note})", args.request_id);
    }
    Ok(code)
}

/// The DeployJob the flags describe, checked by `DeployJob::parse`.
fn deploy_payload(args: &EnqueueDeploy) -> Result<(JobKind, Value, Option<String>), OperatorError> {
    let mut payload = json!({
        "request_id": args.request_id,
        "project_id": args.project_id,
        "repo_full_name": args.repo_full_name,
        "branch": args.branch,
        "server_ip": args.server_ip,
        "port": args.port,
        "modules": args.modules,
        "action": args.action.as_str(),
    });
    if let Some(reference) = &args.github_token_ref {
        payload["github_token_ref"] = json!(reference);
    }
    if let Some(path) = &args.health_path {
        payload["health_path"] = json!(path.as_str());
    }
    if let Some(name) = &args.project_name {
        payload["project_name"] = json!(name);
    }
    if let Some(reference) = &args.secrets_ref {
        payload["secrets_ref"] = json!(reference);
    }
    if args.setup_ci {
        payload["setup_ci"] = json!(true);
    }
    DeployJob::parse(payload.to_string().as_bytes())
        .map_err(|e| OperatorError::Usage(format!("not a valid deploy job: {}", e.reason)))?;
    Ok((JobKind::Deploy, payload, Some(args.request_id.clone())))
}

/// The ProvisionJob the flags describe, checked by `ProvisionJob::parse`.
fn provision_payload(
    args: &EnqueueProvision,
) -> Result<(JobKind, Value, Option<String>), OperatorError> {
    let mut payload = json!({
        "server_handle": args.server_handle,
        "force_reinstall": args.force_reinstall,
        "is_recovery": args.is_recovery,
    });
    if let Some(id) = &args.request_id {
        payload["request_id"] = json!(id);
    }
    // A stand-in entry id: the real one exists only after the XADD.
    ProvisionJob::parse(payload.to_string().as_bytes(), "0-1")
        .map_err(|e| OperatorError::Usage(format!("not a valid provision job: {}", e.reason)))?;
    Ok((JobKind::Provision, payload, args.request_id.clone()))
}

/// Shows the progress stream until the job's end and returns its result.
/// The end is `job_finished` (then the result is read), or a result key
/// without it (a job refused before running, a request answered again):
/// then after a short grace for late events.
async fn follow(
    caller: &Caller,
    kind: JobKind,
    request_id: &str,
    deadline: Instant,
    view: &mut View,
) -> Result<Stored, OperatorError> {
    let mut after = "0-0".to_owned();
    let mut result: Option<(String, Instant)> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(OperatorError::Timeout(format!(
                "no result for {request_id} in time; the job may still finish (see `status {request_id}`)"
            )));
        }
        let block = READ_BLOCK.min(deadline - now);
        let mut finished = false;
        for entry in caller.read_events(request_id, &after, block).await? {
            after = entry.id;
            let Some(event) = entry.payload.as_deref().and_then(JobEvent::parse) else {
                continue;
            };
            if event.is_finish() {
                finished = true;
            } else {
                view.event(&event);
            }
        }
        if finished {
            return wait_result(caller, kind, request_id).await;
        }
        match &result {
            Some((text, seen)) if seen.elapsed() >= RESULT_GRACE => {
                return Ok(Stored::parse(text.clone()));
            }
            Some(_) => {}
            None => {
                result = caller
                    .result(kind, request_id)
                    .await?
                    .map(|text| (text, Instant::now()));
            }
        }
    }
}

/// The result after `job_finished`, which the worker appends only once the
/// result is published.
async fn wait_result(
    caller: &Caller,
    kind: JobKind,
    request_id: &str,
) -> Result<Stored, OperatorError> {
    let give_up = Instant::now() + FINISH_GRACE;
    loop {
        if let Some(text) = caller.result(kind, request_id).await? {
            return Ok(Stored::parse(text));
        }
        if Instant::now() >= give_up {
            return Err(OperatorError::Timeout(format!(
                "{request_id} finished but its result is not readable (expired?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A result key's value: a result, or text this version cannot read as one
/// (shown as it is, and taken for a failure).
enum Stored {
    Result(Box<JobResult>),
    Unreadable { text: String, problem: String },
}

impl Stored {
    fn parse(text: String) -> Stored {
        match JobResult::from_json(&text) {
            Ok(result) => Stored::Result(Box::new(result)),
            Err(e) => Stored::Unreadable {
                text,
                problem: e.to_string(),
            },
        }
    }
}

/// Prints a result (as published with `--json`, else a summary) and returns
/// the exit code its status means.
fn print_result(kind: JobKind, request_id: &str, stored: &Stored, as_json: bool) -> u8 {
    let result = match stored {
        Stored::Result(result) => result,
        Stored::Unreadable { text, problem } => {
            if as_json {
                let raw = serde_json::from_str(text)
                    .unwrap_or_else(|_| json!({"status": "failed", "raw": text}));
                print_json(&raw);
            } else {
                println!("{kind} {request_id}: unreadable result ({problem}); --json shows it");
            }
            return EXIT_FAILED;
        }
    };
    if as_json {
        println!("{}", super::to_json(result));
    } else {
        print!("{}", summary(kind, request_id, result));
        let _ = std::io::stdout().flush();
    }
    match result.status {
        JobStatus::Success => EXIT_SUCCESS,
        JobStatus::Failed => EXIT_FAILED,
    }
}

/// A few lines a person reads: status, error, per-host recap, where to look.
fn summary(kind: JobKind, request_id: &str, result: &JobResult) -> String {
    let mut out = format!(
        "{kind} {request_id}: {} in {:.1} s",
        result.status,
        result.duration_ms as f64 / 1000.0
    );
    if !result.worker.is_empty() {
        out.push_str(&format!(
            " (worker {}, attempt {})",
            result.worker, result.attempt
        ));
    }
    out.push('\n');
    if let Some(error) = &result.error {
        out.push_str(&format!("  error: {}: {}\n", error.code, error.message));
    }
    for (host, s) in result.stats.iter().flatten() {
        out.push_str(&format!(
            "  {host}: ok={} changed={} failed={} unreachable={} skipped={}\n",
            s.ok, s.changed, s.failed, s.unreachable, s.skipped
        ));
    }
    for key in ["url", "server_status"] {
        if let Some(value) = result.extra.get(key).and_then(Value::as_str) {
            out.push_str(&format!("  {key}: {value}\n"));
        }
    }
    out
}

fn print_json(value: &Value) {
    println!("{}", super::to_json(value));
}

/// A task event as one line: `TASK [name]` for a start, else
/// `[host] task: ok|changed|failed|skipped|unreachable[: message]`.
fn event_line(event: &JobEvent) -> String {
    let task = event.task.as_deref().unwrap_or("-");
    if event.is_task_start() {
        return format!("TASK [{task}]");
    }
    let outcome = match event.event {
        EventKind::RunnerOnOk if event.changed == Some(true) => "changed",
        EventKind::RunnerOnOk => "ok",
        EventKind::RunnerOnFailed if event.ignored => "failed (ignored)",
        EventKind::RunnerOnFailed => "failed",
        EventKind::RunnerOnSkipped => "skipped",
        EventKind::RunnerOnUnreachable => "unreachable",
        other => other.as_str(),
    };
    let mut line = format!(
        "[{}] {task}: {outcome}",
        event.host.as_deref().unwrap_or("-")
    );
    if let Some(message) = event.message.as_deref().and_then(|m| m.lines().next()) {
        line.push_str(": ");
        line.push_str(message.trim());
    }
    line
}

/// Where progress goes: a spinner naming the running task with results
/// printed above it on a terminal; plain lines otherwise. With `--json`
/// progress goes to stderr, keeping stdout for the result.
enum View {
    Spinner(ProgressBar),
    Lines { stderr: bool },
}

impl View {
    fn new(json: bool) -> View {
        let terminal = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        if !terminal {
            return View::Lines { stderr: json };
        }
        let target = if json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::stdout()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("a valid template"),
        );
        bar.set_message("waiting for a worker");
        bar.enable_steady_tick(Duration::from_millis(120));
        View::Spinner(bar)
    }

    fn note(&self, text: &str) {
        match self {
            View::Spinner(bar) => bar.println(text),
            View::Lines { stderr: true } => eprintln!("{text}"),
            View::Lines { stderr: false } => println!("{text}"),
        }
    }

    fn event(&mut self, event: &JobEvent) {
        match self {
            View::Spinner(bar) if event.is_task_start() => {
                bar.set_message(event.task.clone().unwrap_or_default());
            }
            View::Spinner(bar) => bar.println(event_line(event)),
            View::Lines { .. } => self.note(&event_line(event)),
        }
    }

    fn done(&self) {
        if let View::Spinner(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::EnqueueCommon;
    use crate::job::{DeployAction, HealthPath};

    fn event(kind: EventKind) -> JobEvent {
        JobEvent {
            seq: 1,
            play: Some("Deploy".into()),
            task: Some("Pull images".into()),
            host: Some("10.0.0.1".into()),
            changed: Some(false),
            ..JobEvent::new(kind)
        }
    }

    #[test]
    fn each_event_reads_as_one_line() {
        assert_eq!(
            event_line(&event(EventKind::PlaybookOnTaskStart)),
            "TASK [Pull images]"
        );
        assert_eq!(
            event_line(&event(EventKind::RunnerOnOk)),
            "[10.0.0.1] Pull images: ok"
        );
        let changed = JobEvent {
            changed: Some(true),
            ..event(EventKind::RunnerOnOk)
        };
        assert_eq!(event_line(&changed), "[10.0.0.1] Pull images: changed");
        let failed = JobEvent {
            message: Some("no space left\nmore".into()),
            ..event(EventKind::RunnerOnFailed)
        };
        assert_eq!(
            event_line(&failed),
            "[10.0.0.1] Pull images: failed: no space left"
        );
        assert_eq!(
            event_line(&event(EventKind::RunnerOnSkipped)),
            "[10.0.0.1] Pull images: skipped"
        );
    }

    fn deploy_args(port: u32) -> EnqueueDeploy {
        EnqueueDeploy {
            request_id: "dep-1".into(),
            project_id: "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10".into(),
            project_name: None,
            repo_full_name: "acme/app".into(),
            branch: "main".into(),
            server_ip: "203.0.113.10".into(),
            port,
            modules: vec!["backend".into()],
            github_token_ref: Some("env:GH".into()),
            action: DeployAction::Deploy,
            health_path: None,
            secrets_ref: None,
            setup_ci: false,
            common: EnqueueCommon {
                wait: false,
                timeout: 60,
                json: false,
                config: Default::default(),
            },
        }
    }

    #[test]
    fn flags_make_a_contract_payload_the_worker_accepts() {
        let (kind, payload, id) = deploy_payload(&deploy_args(8080)).unwrap();
        assert_eq!(kind, JobKind::Deploy);
        assert_eq!(id.as_deref(), Some("dep-1"));
        assert_eq!(payload["repo_full_name"], "acme/app");
        assert_eq!(payload["modules"], json!(["backend"]));
        assert!(payload.get("secrets_ref").is_none());
        assert!(payload.get("setup_ci").is_none());
        let with_ci = EnqueueDeploy {
            setup_ci: true,
            ..deploy_args(8080)
        };
        assert_eq!(deploy_payload(&with_ci).unwrap().1["setup_ci"], true);
    }

    #[test]
    fn an_action_other_than_deploy_needs_no_token_and_a_deploy_does() {
        let restart = EnqueueDeploy {
            action: DeployAction::Restart,
            github_token_ref: None,
            health_path: Some(HealthPath::parse("/healthz").unwrap()),
            ..deploy_args(8080)
        };
        let (_, payload, _) = deploy_payload(&restart).unwrap();
        assert_eq!(payload["action"], "restart");
        assert_eq!(payload["health_path"], "/healthz");
        assert!(payload.get("github_token_ref").is_none());
        let tokenless = EnqueueDeploy {
            github_token_ref: None,
            ..deploy_args(8080)
        };
        let err = deploy_payload(&tokenless).unwrap_err();
        assert!(err.to_string().contains("github_token_ref"), "{err}");
    }

    #[test]
    fn flags_that_break_a_rule_are_refused_before_anything_is_enqueued() {
        let err = deploy_payload(&deploy_args(70000)).unwrap_err();
        assert!(
            matches!(err, OperatorError::Usage(ref m) if m.contains("port")),
            "{err}"
        );
    }

    #[test]
    fn a_summary_names_the_error_and_each_host() {
        let result = json!({
            "request_id": "dep-1", "job": "deploy", "status": "failed",
            "started_at": "2026-11-23T10:00:00.000Z", "finished_at": "2026-11-23T10:00:01.500Z",
            "duration_ms": 1500, "worker": "w-1", "attempt": 1,
            "error": {"code": "playbook_failed", "message": "task `x` failed"},
            "stats": {"h1": {"ok": 2, "changed": 1, "failed": 1, "unreachable": 0, "skipped": 0}},
            "url": "http://h1:8080",
        });
        let result = JobResult::from_json(&result.to_string()).unwrap();
        let text = summary(JobKind::Deploy, "dep-1", &result);
        assert!(
            text.starts_with("deploy dep-1: failed in 1.5 s (worker w-1, attempt 1)\n"),
            "{text}"
        );
        assert!(
            text.contains("error: playbook_failed: task `x` failed"),
            "{text}"
        );
        assert!(text.contains("h1: ok=2 changed=1 failed=1"), "{text}");
        assert!(text.contains("url: http://h1:8080"), "{text}");
    }

    #[test]
    fn a_result_key_this_version_cannot_read_exits_1() {
        let stored = Stored::parse("not json".to_owned());
        assert!(matches!(stored, Stored::Unreadable { .. }));
        assert_eq!(
            print_result(JobKind::Deploy, "dep-1", &stored, false),
            EXIT_FAILED
        );
    }
}
