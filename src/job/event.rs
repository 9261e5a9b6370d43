//! One entry of a job's progress stream `job:events:<request_id>`
//! (CONTRACT.md section 3, "Progress events"): its JSON shape, shared by the
//! runner that makes task events, the worker that ends the stream with
//! `job_finished`, and the operator CLI that reads it.

use std::fmt;

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::result::{ErrorCode, JobStatus};

/// An entry's `event`: the callback plugin's name for a task event, or
/// `job_finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A task starts (for every host of the play at once).
    PlaybookOnTaskStart,
    /// A handler starts.
    PlaybookOnHandlerTaskStart,
    RunnerOnOk,
    RunnerOnFailed,
    RunnerOnSkipped,
    RunnerOnUnreachable,
    /// The last entry of every finished job's stream.
    JobFinished,
}

impl EventKind {
    /// The kinds a task event may carry, as the callback plugin writes them.
    pub const TASK_EVENTS: [EventKind; 6] = [
        EventKind::PlaybookOnTaskStart,
        EventKind::PlaybookOnHandlerTaskStart,
        EventKind::RunnerOnOk,
        EventKind::RunnerOnFailed,
        EventKind::RunnerOnSkipped,
        EventKind::RunnerOnUnreachable,
    ];

    /// The contract name, e.g. `runner_on_ok`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PlaybookOnTaskStart => "playbook_on_task_start",
            EventKind::PlaybookOnHandlerTaskStart => "playbook_on_handler_task_start",
            EventKind::RunnerOnOk => "runner_on_ok",
            EventKind::RunnerOnFailed => "runner_on_failed",
            EventKind::RunnerOnSkipped => "runner_on_skipped",
            EventKind::RunnerOnUnreachable => "runner_on_unreachable",
            EventKind::JobFinished => "job_finished",
        }
    }

    /// The task event a plugin line names, if it is one we pass on.
    pub fn task_event(name: &str) -> Option<EventKind> {
        EventKind::TASK_EVENTS
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Whether a task (or handler) starts here.
    pub fn is_task_start(self) -> bool {
        matches!(
            self,
            EventKind::PlaybookOnTaskStart | EventKind::PlaybookOnHandlerTaskStart
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `payload` of one progress entry. Task events carry `play` ..
/// `changed` (`host` and `changed` are `null` on a task start);
/// `job_finished` carries `status` and `error_code`. Every text in it is
/// redacted before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(
    title = "JobEvent",
    description = "One entry of a job's progress stream job:events:<request_id> (CONTRACT.md \
        section 3), field payload. Task events carry play, task, host and changed (host and \
        changed null on a task start); the last entry is job_finished with status and \
        error_code. Best effort: a gap in seq means events were dropped. Texts are redacted.",
    transform = event_shapes
)]
pub struct JobEvent {
    /// 1, 2, ... in the order the worker saw the events; a gap means events
    /// were dropped (the stream is best effort).
    pub seq: u64,
    pub event: EventKind,
    #[serde(default)]
    pub play: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub changed: Option<bool>,
    /// A failed or unreachable task's short message.
    #[serde(default)]
    pub message: Option<String>,
    /// A failure that `ignore_errors` let pass.
    #[serde(default)]
    pub ignored: bool,
    /// `job_finished` only.
    #[serde(default)]
    pub status: Option<JobStatus>,
    /// `job_finished` only: the result's error code, if it failed.
    #[serde(default)]
    pub error_code: Option<ErrorCode>,
}

/// The two shapes `JobEvent::to_json` writes: `job_finished` with
/// `status` and `error_code`, a task event with `play` .. `changed`.
fn event_shapes(schema: &mut Schema) {
    schema.insert(
        "if".into(),
        json!({"properties": {"event": {"const": "job_finished"}}}),
    );
    schema.insert(
        "then".into(),
        json!({
            "required": ["status", "error_code"],
            "properties": {"status": {"$ref": "#/$defs/JobStatus"}},
        }),
    );
    schema.insert(
        "else".into(),
        json!({"required": ["play", "task", "host", "changed"]}),
    );
}

impl JobEvent {
    /// An event of `kind` with every other field empty (and `seq` 0, until
    /// the sink numbers it).
    pub fn new(kind: EventKind) -> JobEvent {
        JobEvent {
            seq: 0,
            event: kind,
            play: None,
            task: None,
            host: None,
            changed: None,
            message: None,
            ignored: false,
            status: None,
            error_code: None,
        }
    }

    /// The stream's last entry for a job that ended with `status`.
    pub fn finished(seq: u64, status: JobStatus, error_code: Option<ErrorCode>) -> JobEvent {
        JobEvent {
            seq,
            status: Some(status),
            error_code,
            ..JobEvent::new(EventKind::JobFinished)
        }
    }

    /// Whether this is the stream's last entry.
    pub fn is_finish(&self) -> bool {
        self.event == EventKind::JobFinished
    }

    /// Whether a task (or handler) starts here.
    pub fn is_task_start(&self) -> bool {
        self.event.is_task_start()
    }

    /// The `payload` JSON: the contract's fields, `null` where empty; the
    /// optional ones (`message`, `ignored`) only when set.
    pub fn to_json(&self) -> String {
        let mut value = if self.is_finish() {
            json!({
                "seq": self.seq,
                "event": self.event,
                "status": self.status,
                "error_code": self.error_code,
            })
        } else {
            json!({
                "seq": self.seq,
                "event": self.event,
                "play": self.play,
                "task": self.task,
                "host": self.host,
                "changed": self.changed,
            })
        };
        if let Some(message) = &self.message {
            value["message"] = json!(message);
        }
        if self.ignored {
            value["ignored"] = json!(true);
        }
        value.to_string()
    }

    /// A stream entry's payload, if it is one.
    pub fn parse(payload: &[u8]) -> Option<JobEvent> {
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(event: &JobEvent) -> Value {
        serde_json::from_str(&event.to_json()).unwrap()
    }

    #[test]
    fn a_task_result_has_the_contracts_fields() {
        let event = JobEvent {
            seq: 7,
            play: Some("Deploy".into()),
            task: Some("Pull images".into()),
            host: Some("203.0.113.10".into()),
            changed: Some(true),
            ..JobEvent::new(EventKind::RunnerOnOk)
        };
        assert_eq!(
            json(&event),
            serde_json::json!({"seq": 7, "event": "runner_on_ok", "play": "Deploy",
                "task": "Pull images", "host": "203.0.113.10", "changed": true})
        );
        assert_eq!(JobEvent::parse(event.to_json().as_bytes()), Some(event));
    }

    #[test]
    fn a_task_start_has_null_host_and_changed() {
        let event = JobEvent {
            seq: 1,
            play: Some("p".into()),
            task: Some("t".into()),
            ..JobEvent::new(EventKind::PlaybookOnTaskStart)
        };
        let value = json(&event);
        assert_eq!(value["host"], Value::Null);
        assert_eq!(value["changed"], Value::Null);
        assert!(value.get("message").is_none() && value.get("ignored").is_none());
        assert!(event.is_task_start());
    }

    #[test]
    fn job_finished_carries_status_and_error_code_only() {
        let finished = JobEvent::finished(9, JobStatus::Failed, Some(ErrorCode::PlaybookFailed));
        let value = json(&finished);
        assert_eq!(
            value,
            serde_json::json!({"seq": 9, "event": "job_finished", "status": "failed",
                "error_code": "playbook_failed"})
        );
        assert_eq!(
            JobEvent::parse(finished.to_json().as_bytes()),
            Some(finished)
        );
        let success = json(&JobEvent::finished(3, JobStatus::Success, None));
        assert_eq!(success["error_code"], Value::Null);
    }

    #[test]
    fn every_event_kind_as_str_matches_its_json_name() {
        for kind in EventKind::TASK_EVENTS
            .into_iter()
            .chain([EventKind::JobFinished])
        {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(
                serde_json::from_value::<EventKind>(kind.as_str().into()).unwrap(),
                kind
            );
        }
    }

    #[test]
    fn only_the_plugins_task_events_are_task_events() {
        assert_eq!(
            EventKind::task_event("runner_on_failed"),
            Some(EventKind::RunnerOnFailed)
        );
        assert_eq!(EventKind::task_event("job_finished"), None);
        assert_eq!(EventKind::task_event("v2_playbook_on_stats"), None);
        assert!(EventKind::PlaybookOnHandlerTaskStart.is_task_start());
        assert!(!EventKind::RunnerOnOk.is_task_start());
    }

    #[test]
    fn a_payload_that_is_not_an_event_is_refused() {
        assert_eq!(JobEvent::parse(b"{\"event\": \"x\"}"), None);
        assert_eq!(JobEvent::parse(b"{\"seq\": 1, \"event\": \"x\"}"), None);
        assert_eq!(JobEvent::parse(b"not json"), None);
    }
}
