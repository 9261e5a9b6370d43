//! Provisioning a server. Answered with a clear `internal` error until the
//! provisioning workflow lands.

use super::{Context, Report};
use crate::job::{ErrorCode, JobError, ProvisionJob};

/// Runs one provision job to its report.
pub async fn run(_ctx: &Context, job: &ProvisionJob) -> Report {
    let mut report = Report::failed(JobError::new(
        ErrorCode::Internal,
        "provisioning jobs are not implemented by this worker version".to_owned(),
    ));
    report.extra.insert(
        "server_handle".to_owned(),
        job.server_handle.as_str().into(),
    );
    report
}
