//! One entry of a job's progress stream `job:events:<request_id>`
//! (CONTRACT.md section 3, "Progress events"): its JSON shape, shared by the
//! runner that makes task events, the worker that ends the stream with
//! `job_finished`, and the operator CLI that reads it.

use serde::Deserialize;
use serde_json::json;

/// A task starts (for every host of the play at once).
pub const TASK_START: &str = "playbook_on_task_start";
/// A handler starts.
pub const HANDLER_TASK_START: &str = "playbook_on_handler_task_start";
/// The event names a task event may carry, as the callback plugin writes them.
pub const TASK_EVENTS: [&str; 6] = [
    TASK_START,
    HANDLER_TASK_START,
    "runner_on_ok",
    "runner_on_failed",
    "runner_on_skipped",
    "runner_on_unreachable",
];
/// The last entry of every finished job's stream.
pub const JOB_FINISHED: &str = "job_finished";

/// The `payload` of one progress entry. Task events carry `play` ..
/// `changed` (`host` and `changed` are `null` on a task start);
/// `job_finished` carries `status` and `error_code`. Every text in it is
/// redacted before it is made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct JobEvent {
    /// 1, 2, ... in the order the worker saw the events; a gap means events
    /// were dropped (the stream is best effort).
    pub seq: u64,
    pub event: String,
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
    /// `job_finished` only: `success` or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    /// `job_finished` only: the result's error code, if it failed.
    #[serde(default)]
    pub error_code: Option<String>,
}

impl JobEvent {
    /// The stream's last entry for a job that ended with `status`.
    pub fn finished(seq: u64, status: &str, error_code: Option<&str>) -> JobEvent {
        JobEvent {
            seq,
            event: JOB_FINISHED.to_owned(),
            status: Some(status.to_owned()),
            error_code: error_code.map(str::to_owned),
            ..JobEvent::default()
        }
    }

    /// Whether this is the stream's last entry.
    pub fn is_finish(&self) -> bool {
        self.event == JOB_FINISHED
    }

    /// Whether a task (or handler) starts here.
    pub fn is_task_start(&self) -> bool {
        self.event == TASK_START || self.event == HANDLER_TASK_START
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
            event: "runner_on_ok".into(),
            play: Some("Deploy".into()),
            task: Some("Pull images".into()),
            host: Some("203.0.113.10".into()),
            changed: Some(true),
            ..JobEvent::default()
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
            event: TASK_START.into(),
            play: Some("p".into()),
            task: Some("t".into()),
            ..JobEvent::default()
        };
        let value = json(&event);
        assert_eq!(value["host"], Value::Null);
        assert_eq!(value["changed"], Value::Null);
        assert!(value.get("message").is_none() && value.get("ignored").is_none());
        assert!(event.is_task_start());
    }

    #[test]
    fn job_finished_carries_status_and_error_code_only() {
        let value = json(&JobEvent::finished(9, "failed", Some("playbook_failed")));
        assert_eq!(
            value,
            serde_json::json!({"seq": 9, "event": "job_finished", "status": "failed",
                "error_code": "playbook_failed"})
        );
        let success = json(&JobEvent::finished(3, "success", None));
        assert_eq!(success["error_code"], Value::Null);
    }

    #[test]
    fn a_payload_that_is_not_an_event_is_refused() {
        assert_eq!(JobEvent::parse(b"{\"event\": \"x\"}"), None);
        assert_eq!(JobEvent::parse(b"not json"), None);
    }
}
