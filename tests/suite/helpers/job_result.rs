//! Reading a published `JobResult` in assertions: its error's code, message
//! and details, and the kind-specific fields the library keeps in `extra`
//! (`server_handle`, `server_status`, `url`, ...).

use infra_service::job::{ErrorCode, JobResult};
use serde_json::Value;

/// `Null`, for what a result does not carry, as indexing a `Value` gives.
static NULL: Value = Value::Null;

/// Short reads of a `JobResult`'s optional parts.
pub trait JobResultExt {
    /// The error's code; `None` for a success.
    fn code(&self) -> Option<ErrorCode>;
    /// The error's message; `None` for a success.
    fn message(&self) -> Option<&str>;
    /// `error.details[name]`; `Null` without an error or such a detail.
    fn detail(&self, name: &str) -> &Value;
    /// A kind-specific field (`extra[name]`); `Null` when absent.
    fn field(&self, name: &str) -> &Value;
}

impl JobResultExt for JobResult {
    fn code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|error| error.code)
    }

    fn message(&self) -> Option<&str> {
        self.error.as_ref().map(|error| error.message.as_str())
    }

    fn detail(&self, name: &str) -> &Value {
        self.error
            .as_ref()
            .and_then(|error| error.details.get(name))
            .unwrap_or(&NULL)
    }

    fn field(&self, name: &str) -> &Value {
        self.extra.get(name).unwrap_or(&NULL)
    }
}
