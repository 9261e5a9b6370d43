//! The one final result every job gets (CONTRACT.md section 3).
//!
//! Owns the result's JSON shape: field names, `null` versus absent, and the
//! timestamp format (RFC 3339, UTC, exactly milliseconds, `Z`), both ways:
//! a stored result (Redis key, jobs ledger) parses back into a `JobResult`.
//! Building a result's values is the worker's business.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::json;

use super::fields::InvalidPayload;

/// Which queue a job came from; decides result key and stream names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Deploy,
    Provision,
}

impl JobKind {
    /// Both kinds, deploy first.
    pub const ALL: [JobKind; 2] = [JobKind::Deploy, JobKind::Provision];

    /// The contract name: `deploy` or `provision`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Deploy => "deploy",
            JobKind::Provision => "provision",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contract's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidPayload,
    SecretUnresolved,
    ServerNotFound,
    SshUnreachable,
    SshAuthFailed,
    HostKeyMismatch,
    ProviderError,
    PlaybookFailed,
    Timeout,
    Cancelled,
    WorkerLost,
    Internal,
}

impl ErrorCode {
    /// Every code, in contract order.
    #[cfg(test)]
    const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidPayload,
        ErrorCode::SecretUnresolved,
        ErrorCode::ServerNotFound,
        ErrorCode::SshUnreachable,
        ErrorCode::SshAuthFailed,
        ErrorCode::HostKeyMismatch,
        ErrorCode::ProviderError,
        ErrorCode::PlaybookFailed,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::WorkerLost,
        ErrorCode::Internal,
    ];

    /// The contract name, e.g. `ssh_unreachable` (also a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::SecretUnresolved => "secret_unresolved",
            ErrorCode::ServerNotFound => "server_not_found",
            ErrorCode::SshUnreachable => "ssh_unreachable",
            ErrorCode::SshAuthFailed => "ssh_auth_failed",
            ErrorCode::HostKeyMismatch => "host_key_mismatch",
            ErrorCode::ProviderError => "provider_error",
            ErrorCode::PlaybookFailed => "playbook_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's outcome: `success` exactly when the result has no `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Success,
    Failed,
}

impl JobStatus {
    /// The status that goes with `error`: `Success` exactly when it is `None`.
    pub fn of(error: Option<&JobError>) -> JobStatus {
        match error {
            None => JobStatus::Success,
            Some(_) => JobStatus::Failed,
        }
    }

    /// The contract name: `success` or `failed` (also a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code", "message", "details"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobError {
    pub code: ErrorCode,
    /// What went wrong, for people; secret values never appear in it.
    pub message: String,
    /// More about it, e.g. `reason` (`dns`, `refused`, `timed_out` for SSH;
    /// `not_found`, `forbidden`, ... for a secret), the attempts made.
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl JobError {
    /// An error with empty `details`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds (or replaces) one entry of `details`.
    pub fn with_detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> JobError {
        self.details.insert(key.into(), value.into());
        self
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A refused payload's result error: `invalid_payload`, the reason as message.
impl From<&InvalidPayload> for JobError {
    fn from(invalid: &InvalidPayload) -> JobError {
        JobError::new(ErrorCode::InvalidPayload, invalid.reason.clone())
    }
}

/// One host's line of the PLAY RECAP.
///
/// Carries `rescued` and `ignored` beyond the contract example's five
/// counters: ansible's recap prints them, and extra fields are allowed. A
/// counter missing from a stored result reads as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "One host's line of the PLAY RECAP.")]
#[serde(default)]
pub struct HostStats {
    pub ok: u32,
    pub changed: u32,
    pub failed: u32,
    pub unreachable: u32,
    pub skipped: u32,
    pub rescued: u32,
    pub ignored: u32,
}

/// The first failed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FailedTask {
    pub host: String,
    pub task: String,
    /// Redacted: every resolved secret value replaced by `***`.
    pub message: String,
}

/// Where the job's time went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Timings {
    pub queue_wait_ms: u64,
    pub preflight_ms: u64,
    pub playbook_ms: u64,
}

/// A result as it was published or stored, kept as its text: a repeated
/// request is answered with exactly that, whichever version of the worker
/// wrote it. Only its status is read, leniently, to count it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    json: String,
    status: JobStatus,
}

impl StoredResult {
    /// `json` as stored; a status this version cannot read counts as
    /// `failed` (only `success` is a success), the text stays as it is.
    pub fn new(json: String) -> StoredResult {
        #[derive(Deserialize)]
        struct Status {
            status: JobStatus,
        }
        let status = serde_json::from_str::<Status>(&json).map_or(JobStatus::Failed, |s| s.status);
        StoredResult { json, status }
    }

    /// The text to publish again.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Its status, as read by `new`.
    pub fn status(&self) -> JobStatus {
        self.status
    }
}

/// The published result; `extra` holds the kind-specific fields
/// (deploy: project_id, server_ip, port, url; provision: server_handle, server_status).
///
/// `extra` must not reuse a fixed field's name: flattening would write the
/// key twice.
///
/// Reading is lenient where the contract lets results grow: every top-level
/// field a reader does not know lands in `extra` and is written back, and
/// the fields past the job's identity, status and times may be absent.
/// Nested unknown fields are not kept: a result to be passed on as it was
/// is a `StoredResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "JobResult",
    description = "The one final result of a job (CONTRACT.md section 3), at \
        deploy:result:<request_id> or provisioner:result:<request_id> (EX 3600) and on \
        deploy:results or provisioner:results. Readers should ignore fields they do not know: \
        the contract grows only by optional fields.",
    transform = result_fields
)]
pub struct JobResult {
    /// The job's request id.
    pub request_id: String,
    pub job: JobKind,
    /// success exactly when error is null.
    pub status: JobStatus,
    /// null on success.
    #[serde(default)]
    pub error: Option<JobError>,
    /// RFC 3339, UTC, exactly three fractional digits and Z.
    #[serde(serialize_with = "rfc3339_millis")]
    #[schemars(with = "String", extend("format" = "date-time", "pattern" = TIMESTAMP))]
    pub started_at: DateTime<Utc>,
    /// RFC 3339, UTC, exactly three fractional digits and Z.
    #[serde(serialize_with = "rfc3339_millis")]
    #[schemars(with = "String", extend("format" = "date-time", "pattern" = TIMESTAMP))]
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub duration_ms: u64,
    /// Which delivery of the entry ran it: 1, or more after a worker was lost.
    #[serde(default)]
    pub attempt: u32,
    /// The consumer that ran it (default <hostname>-<pid>).
    #[serde(default)]
    pub worker: String,
    /// At most the last 64 KiB of the playbook's output, every resolved secret value replaced
    /// by ***.
    #[serde(default)]
    pub output_tail: String,
    /// The per-host recap of the playbook, by host; absent if it never ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<BTreeMap<String, HostStats>>,
    /// The first failed task, or null.
    #[serde(default)]
    pub failed_task: Option<FailedTask>,
    #[serde(default)]
    pub timings: Timings,
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `started_at` and `finished_at` as `rfc3339_millis` writes them.
const TIMESTAMP: &str =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$(?!\\n)";

/// The kind-specific fields `extra` carries, as the contract lists them
/// (the workflows build them: `workflow::deploy`, `workflow::lifecycle`,
/// `ci`, `workflow::provision`); all optional, others allowed.
fn result_fields(schema: &mut Schema) {
    let sha = "^[0-9a-f]{40}$(?!\\n)";
    let deploy_only = json!({
        "project_id": {"type": "string", "format": "uuid",
            "description": "Deploy results: the job's project_id, lower case."},
        "action": {"enum": ["deploy", "restart", "stop", "remove", "logs"],
            "description": "Deploy results: the action run."},
        "server_ip": {"type": "string",
            "description": "Deploy results: the server the job connected to."},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535,
            "description": "Deploy results: the project's service port."},
        "url": {"type": "string", "description": "Deploy results: http://<server_ip>:<port>."},
        "revision": {"type": ["string", "null"], "pattern": sha,
            "description": "After a deploy: the commit deployed (40 hex), null when unknown."},
        "previous_revision": {"type": ["string", "null"], "pattern": sha,
            "description": "After a deploy: the commit running before, null on a first deploy."},
        "rollback": {
            "type": "object",
            "description": "When a failed deploy was rolled back (the job's status stays failed).",
            "properties": {
                "performed": {"type": "boolean"},
                "revision": {"type": "string", "pattern": sha},
                "status": {"enum": ["success", "failed"]},
            },
            "required": ["performed", "revision", "status"],
        },
        "ci": {
            "type": "object",
            "description": "When setup_ci was asked (contract section 7); a CI failure does not \
                make a successful deploy failed.",
            "properties": {
                "status": {"enum": ["success", "failed", "skipped"]},
                "secrets": {"type": "array", "items": {"type": "string"},
                    "description": "The repository secrets stored, by name (DEPLOY_HOST, ...)."},
                "key_fingerprint": {"type": ["string", "null"],
                    "description": "SHA256:... of the key stored in DEPLOY_SSH_KEY."},
                "error": {"anyOf": [{"$ref": "#/$defs/JobError"}, {"type": "null"}]},
            },
            "required": ["status", "secrets", "key_fingerprint", "error"],
        },
        "server_handle": {"type": "string",
            "description": "Provision results: the job's server_handle."},
        "server_status": {
            "enum": ["new", "provisioning", "ready", "unreachable", "reinstalling",
                "recovering", "failed", null],
            "description": "Provision results: the server's status afterwards, null if unknown.",
        },
    });
    let properties = schema
        .ensure_object()
        .entry("properties")
        .or_insert_with(|| json!({}));
    if let (Some(properties), serde_json::Value::Object(extra)) =
        (properties.as_object_mut(), deploy_only)
    {
        properties.extend(extra);
    }
    schema.insert("additionalProperties".into(), true.into());
    // `JobStatus::of`: success exactly when there is no error.
    schema.insert(
        "if".into(),
        json!({"properties": {"status": {"const": "success"}}}),
    );
    schema.insert(
        "then".into(),
        json!({"properties": {"error": {"type": "null"}}}),
    );
    schema.insert(
        "else".into(),
        json!({"properties": {"error": {"type": "object"}}}),
    );
}

impl JobResult {
    /// A stored result (a Redis key, the jobs ledger), parsed.
    pub fn from_json(text: &str) -> Result<JobResult, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The JSON that is published, stored and parsed back by `from_json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a result always serializes")
    }
}

/// `2026-11-23T10:00:00.123Z`: always three fractional digits (truncated,
/// not rounded) and `Z`, which chrono's default `+00:00` form is not.
fn rfc3339_millis<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::{Value, json};

    use super::*;

    /// The contract's result example, verbatim.
    const EXAMPLE: &str = r#"{
      "request_id": "dep-0c1d",
      "job": "deploy",
      "status": "success",
      "error": null,
      "started_at": "2026-11-23T10:00:00.123Z",
      "finished_at": "2026-11-23T10:01:12.456Z",
      "duration_ms": 72333,
      "attempt": 1,
      "worker": "worker-a-4242",
      "output_tail": "PLAY RECAP ... ok=12 changed=3 failed=0",
      "stats": {"203.0.113.10": {"ok": 12, "changed": 3, "failed": 0, "unreachable": 0, "skipped": 1}},
      "failed_task": null,
      "timings": {"queue_wait_ms": 40, "preflight_ms": 310, "playbook_ms": 71900},
      "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
      "server_ip": "203.0.113.10",
      "port": 8080,
      "url": "http://203.0.113.10:8080"
    }"#;

    fn at(h: u32, m: u32, s: u32, ms: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).unwrap()
            + chrono::Duration::milliseconds(ms.into())
    }

    /// The example's result, built the way the worker will build it.
    fn example_result() -> JobResult {
        let stats = HostStats {
            ok: 12,
            changed: 3,
            skipped: 1,
            ..HostStats::default()
        };
        let extra = json!({
            "project_id": "6f1c2a9e-2b7d-4d8e-9a51-0c7e5b8f3a10",
            "server_ip": "203.0.113.10",
            "port": 8080,
            "url": "http://203.0.113.10:8080",
        });
        JobResult {
            request_id: "dep-0c1d".into(),
            job: JobKind::Deploy,
            status: JobStatus::Success,
            error: None,
            started_at: at(10, 0, 0, 123),
            finished_at: at(10, 1, 12, 456),
            duration_ms: 72333,
            attempt: 1,
            worker: "worker-a-4242".into(),
            output_tail: "PLAY RECAP ... ok=12 changed=3 failed=0".into(),
            stats: Some(BTreeMap::from([("203.0.113.10".to_owned(), stats)])),
            failed_task: None,
            timings: Timings {
                queue_wait_ms: 40,
                preflight_ms: 310,
                playbook_ms: 71900,
            },
            extra: extra.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_stored_result_keeps_its_text_and_reads_only_its_status() {
        let newer = r#"{"status":"success","request_id":"r1","job":"deploy","novel":{"x":[1]}}"#;
        let stored = StoredResult::new(newer.to_owned());
        assert_eq!(stored.json(), newer);
        assert_eq!(stored.status(), JobStatus::Success);
        // A status a later version may add, or none at all, is no success.
        for text in [r#"{"status":"skipped"}"#, "{}", "not json"] {
            let stored = StoredResult::new(text.to_owned());
            assert_eq!(stored.status(), JobStatus::Failed, "{text}");
            assert_eq!(stored.json(), text);
        }
    }

    #[test]
    fn a_deploy_result_serializes_exactly_as_the_contract_example() {
        let mut expected: Value = serde_json::from_str(EXAMPLE).unwrap();
        // HostStats adds ansible's `rescued` and `ignored` counters to the
        // example's five; everything else must match name for name.
        let host = &mut expected["stats"]["203.0.113.10"];
        host["rescued"] = json!(0);
        host["ignored"] = json!(0);
        assert_eq!(serde_json::to_value(example_result()).unwrap(), expected);
    }

    #[test]
    fn timestamps_have_exactly_three_fractional_digits_and_z() {
        let text = serde_json::to_string(&example_result()).unwrap();
        assert!(
            text.contains(r#""started_at":"2026-11-23T10:00:00.123Z""#),
            "{text}"
        );
        let mut result = example_result();
        result.started_at = at(10, 0, 0, 0);
        result.finished_at = at(10, 0, 0, 0) + chrono::Duration::nanoseconds(999_999_999);
        let value = serde_json::to_value(result).unwrap();
        assert_eq!(value["started_at"], "2026-11-23T10:00:00.000Z");
        assert_eq!(value["finished_at"], "2026-11-23T10:00:00.999Z");
    }

    #[test]
    fn a_failed_result_carries_the_error_object_and_the_failed_task() {
        let mut result = example_result();
        result.error = Some(
            JobError::new(ErrorCode::SshUnreachable, "203.0.113.10:22 did not answer")
                .with_detail("reason", "timed_out")
                .with_detail("attempts", 3),
        );
        result.status = JobStatus::of(result.error.as_ref());
        result.failed_task = Some(FailedTask {
            host: "h".into(),
            task: "t".into(),
            message: "m".into(),
        });
        let value = serde_json::to_value(result).unwrap();
        assert_eq!(value["status"], "failed");
        assert_eq!(
            value["error"],
            json!({
                "code": "ssh_unreachable",
                "message": "203.0.113.10:22 did not answer",
                "details": {"reason": "timed_out", "attempts": 3},
            })
        );
        assert_eq!(
            value["failed_task"],
            json!({"host": "h", "task": "t", "message": "m"})
        );
    }

    #[test]
    fn stats_are_omitted_when_the_playbook_never_ran() {
        let mut result = example_result();
        result.stats = None;
        let value = serde_json::to_value(result).unwrap();
        assert!(value.get("stats").is_none());
        assert_eq!(value["failed_task"], Value::Null);
        assert_eq!(value["error"], Value::Null);
    }

    #[test]
    fn a_provision_result_carries_its_own_extra_fields() {
        let mut result = example_result();
        result.job = JobKind::Provision;
        result.extra = json!({"server_handle": "vps-1", "server_status": "ready"})
            .as_object()
            .unwrap()
            .clone();
        let value = serde_json::to_value(result).unwrap();
        assert_eq!(value["job"], "provision");
        assert_eq!(value["server_handle"], "vps-1");
        assert!(value.get("url").is_none());
    }

    #[test]
    fn every_error_code_as_str_matches_its_json_name() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "invalid_payload",
                "secret_unresolved",
                "server_not_found",
                "ssh_unreachable",
                "ssh_auth_failed",
                "host_key_mismatch",
                "provider_error",
                "playbook_failed",
                "timeout",
                "cancelled",
                "worker_lost",
                "internal",
            ]
        );
    }

    #[test]
    fn every_job_kind_and_status_as_str_matches_its_json_name() {
        for kind in JobKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for status in [JobStatus::Success, JobStatus::Failed] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn a_refused_payload_becomes_an_invalid_payload_error() {
        let invalid = InvalidPayload::new(None, "port: must be an integer 1-65535, got 0");
        let error = JobError::from(&invalid);
        assert_eq!(error.code, ErrorCode::InvalidPayload);
        assert_eq!(error.message, invalid.reason);
        assert!(error.details.is_empty());
    }

    #[test]
    fn status_is_success_exactly_without_an_error() {
        assert_eq!(JobStatus::of(None), JobStatus::Success);
        let error = JobError::new(ErrorCode::Internal, "x");
        assert_eq!(JobStatus::of(Some(&error)), JobStatus::Failed);
    }

    /// Parses `text` as a result, writes it back, and returns both forms.
    fn round_trip(text: &str) -> (JobResult, Value) {
        let result = JobResult::from_json(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let written: Value = serde_json::from_str(&result.to_json()).unwrap();
        (result, written)
    }

    #[test]
    fn the_contract_example_parses_and_is_written_back_with_the_two_extra_counters() {
        let (result, written) = round_trip(EXAMPLE);
        assert_eq!(result, example_result());
        let mut expected: Value = serde_json::from_str(EXAMPLE).unwrap();
        let host = &mut expected["stats"]["203.0.113.10"];
        host["rescued"] = json!(0);
        host["ignored"] = json!(0);
        assert_eq!(written, expected);
    }

    /// Results the worker publishes, one per shape the contract describes.
    fn published_shapes() -> Vec<JobResult> {
        let mut failed = example_result();
        failed.error = Some(
            JobError::new(ErrorCode::PlaybookFailed, "task `x` failed").with_detail("exit_code", 2),
        );
        failed.status = JobStatus::of(failed.error.as_ref());
        failed.failed_task = Some(FailedTask {
            host: "203.0.113.10".into(),
            task: "x".into(),
            message: "boom".into(),
        });
        failed.extra.extend(
            json!({
                "action": "deploy",
                "revision": "a".repeat(40),
                "previous_revision": null,
                "rollback": {"performed": true, "revision": "b".repeat(40), "status": "success"},
            })
            .as_object()
            .unwrap()
            .clone(),
        );
        let mut ci = example_result();
        ci.extra.insert(
            "ci".into(),
            json!({"status": "skipped", "secrets": [], "key_fingerprint": null, "error": null}),
        );
        let mut provision = example_result();
        provision.job = JobKind::Provision;
        provision.stats = None;
        provision.extra = json!({"server_handle": "vps-1", "server_status": "ready"})
            .as_object()
            .unwrap()
            .clone();
        let mut refused = provision.clone();
        refused.error = Some(JobError::new(ErrorCode::InvalidPayload, "no"));
        refused.status = JobStatus::Failed;
        refused.extra.clear();
        vec![example_result(), failed, ci, provision, refused]
    }

    #[test]
    fn every_published_shape_parses_back_to_itself_and_to_the_same_json() {
        for published in published_shapes() {
            let text = published.to_json();
            let (parsed, written) = round_trip(&text);
            assert_eq!(parsed, published);
            assert_eq!(written, serde_json::from_str::<Value>(&text).unwrap());
        }
    }

    #[test]
    fn unknown_fields_of_a_stored_result_are_kept_and_written_back() {
        let mut stored: Value = serde_json::from_str(EXAMPLE).unwrap();
        stored["added_by_a_later_version"] = json!({"nested": [1, 2]});
        stored["stats"]["203.0.113.10"]["rescued"] = json!(0);
        stored["stats"]["203.0.113.10"]["ignored"] = json!(0);
        let (result, written) = round_trip(&stored.to_string());
        assert_eq!(
            result.extra["added_by_a_later_version"],
            json!({"nested": [1, 2]})
        );
        assert_eq!(written, stored);
    }

    #[test]
    fn a_stored_result_without_the_optional_parts_still_parses() {
        let minimal = r#"{"request_id": "p-1", "job": "provision", "status": "failed",
            "error": {"code": "worker_lost", "message": "gone"},
            "started_at": "2026-11-23T10:00:00.123Z", "finished_at": "2026-11-23T10:00:01.000Z"}"#;
        let (result, _) = round_trip(minimal);
        assert_eq!(result.status, JobStatus::Failed);
        assert_eq!(result.error.unwrap().code, ErrorCode::WorkerLost);
        assert_eq!((result.stats, result.failed_task), (None, None));
    }

    #[test]
    fn a_result_with_a_status_or_code_outside_the_contract_is_refused() {
        let mut bad: Value = serde_json::from_str(EXAMPLE).unwrap();
        bad["status"] = json!("running");
        assert!(JobResult::from_json(&bad.to_string()).is_err());
        bad["status"] = json!("failed");
        bad["error"] = json!({"code": "oops", "message": "m", "details": {}});
        assert!(JobResult::from_json(&bad.to_string()).is_err());
    }
}
