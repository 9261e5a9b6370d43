//! The one final result every job gets (CONTRACT.md section 3).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Which queue a job came from; decides result key and stream names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Deploy,
    Provision,
}

/// The contract's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// `{"code", "message", "details"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One host's line of the PLAY RECAP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedTask {
    pub host: String,
    pub task: String,
    pub message: String,
}

/// Where the job's time went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub queue_wait_ms: u64,
    pub preflight_ms: u64,
    pub playbook_ms: u64,
}

/// The published result; `extra` holds the kind-specific fields
/// (deploy: project_id, server_ip, port, url; provision: server_handle, server_status).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobResult {
    pub request_id: String,
    pub job: JobKind,
    pub status: &'static str,
    pub error: Option<JobError>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub attempt: u32,
    pub worker: String,
    pub output_tail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<BTreeMap<String, HostStats>>,
    pub failed_task: Option<FailedTask>,
    pub timings: Timings,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl JobKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Deploy => "deploy",
            JobKind::Provision => "provision",
        }
    }
}
impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        "internal"
    }
}
impl JobError {
    pub fn new(code: ErrorCode, message: String) -> JobError {
        JobError {
            code,
            message,
            details: Default::default(),
        }
    }
    pub fn with_detail(mut self, key: &str, value: serde_json::Value) -> JobError {
        self.details.insert(key.to_owned(), value);
        self
    }
}
