//! The contract's job, result and progress event types (CONTRACT.md
//! sections 1 and 3). Pure: no I/O. A stream entry's payload becomes a
//! `DeployJob` or `ProvisionJob` only through `parse`, so later code can rely
//! on every rule holding; `Job` is either, as a queue entry becomes one.
//! `schema` states the same rules as JSON Schema for other languages.

mod deploy;
mod entry;
mod event;
mod fields;
mod payload;
mod provision;
mod result;
pub mod schema;

pub use deploy::DeployJob;
#[cfg(test)]
pub(crate) use deploy::minimal_for_test;
pub use entry::{Job, readable_request_id};
pub use event::{EventKind, JobEvent};
pub use fields::{
    DeployAction, HealthPath, InvalidPayload, RepoName, RequestId, SecretRef, ServerAddress,
    ServerHandle,
};
pub use provision::ProvisionJob;
pub use result::{
    ErrorCode, FailedTask, HostStats, JobError, JobKind, JobResult, JobStatus, StoredResult,
    Timings,
};

/// Payloads larger than this are refused before JSON parsing.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
