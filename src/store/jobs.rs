//! The `jobs` ledger: one row per request id and kind, running or finished
//! with its result. Takes and gives typed values; the text columns hold the
//! contract's spellings.

use serde::de::{DeserializeOwned, IntoDeserializer};
use sqlx::types::Json;

use super::{Store, StoreError};
use crate::job::{ErrorCode, JobKind, JobResult, JobStatus};

/// Where a job stands in the ledger (the `status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// A worker claimed it and has not recorded a result yet.
    Running,
    /// It ran to a result with this status.
    Finished(JobStatus),
}

impl JobState {
    /// The column value: `running`, `success` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Finished(status) => status.as_str(),
        }
    }

    fn parse(text: &str) -> Result<JobState, StoreError> {
        match text {
            "running" => Ok(JobState::Running),
            other => column("status", other).map(JobState::Finished),
        }
    }
}

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub kind: JobKind,
    pub request_id: String,
    pub status: JobState,
    pub attempts: i32,
    pub worker: Option<String>,
    /// The stream entry that runs (or ran) it.
    pub entry_id: Option<String>,
    pub error_code: Option<ErrorCode>,
    /// Set once it finished.
    pub result: Option<JobResult>,
}

/// A row as Postgres gives it, before its text columns are read as types.
#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    request_id: String,
    status: String,
    attempts: i32,
    worker: Option<String>,
    entry_id: Option<String>,
    error_code: Option<String>,
    result: Option<serde_json::Value>,
}

impl TryFrom<Row> for JobRecord {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<JobRecord, StoreError> {
        let result = row
            .result
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::Column {
                column: "result",
                problem: e.to_string(),
            })?;
        Ok(JobRecord {
            kind: column("kind", &row.kind)?,
            request_id: row.request_id,
            status: JobState::parse(&row.status)?,
            attempts: row.attempts,
            worker: row.worker,
            entry_id: row.entry_id,
            error_code: row
                .error_code
                .map(|code| column("error_code", &code))
                .transpose()?,
            result,
        })
    }
}

/// A text column holding one of the contract's names (`deploy`,
/// `success`, `ssh_unreachable`, ...), read as its type.
fn column<T: DeserializeOwned>(column: &'static str, text: &str) -> Result<T, StoreError> {
    T::deserialize(text.into_deserializer()).map_err(|e: serde::de::value::Error| {
        StoreError::Column {
            column,
            problem: e.to_string(),
        }
    })
}

/// Whether a worker may run a job, from the ledger's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: nobody else is, and it has no final result.
    Run,
    /// It ran to the end before: this is its result.
    Finished(Box<JobResult>),
    /// Another stream entry with the same request id is running it.
    RunningElsewhere { entry_id: String },
}

impl Store {
    /// Claims a job for `worker`. The same entry delivered again (taken
    /// over after a crash) may run again; a second entry with the same
    /// request id may not while the first is running or done.
    pub async fn claim_job(
        &self,
        kind: JobKind,
        request_id: &str,
        worker: &str,
        entry_id: &str,
        target: &str,
    ) -> Result<Claim, StoreError> {
        let claimed = sqlx::query(
            "INSERT INTO jobs (kind, request_id, status, worker, entry_id, target, started_at)
             VALUES ($1, $2, 'running', $3, $4, $5, now())
             ON CONFLICT (kind, request_id) DO UPDATE
             SET attempts = jobs.attempts + 1, worker = $3, started_at = now(), updated_at = now()
             WHERE jobs.status = 'running' AND jobs.entry_id = $4
             RETURNING attempts",
        )
        .bind(kind.as_str())
        .bind(request_id)
        .bind(worker)
        .bind(entry_id)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(Claim::Run);
        }
        let record = self
            .job(kind, request_id)
            .await?
            .ok_or(StoreError::Column {
                column: "request_id",
                problem: format!("the row of {kind} {request_id} vanished while claiming it"),
            })?;
        Ok(match (record.status, record.result) {
            (JobState::Finished(_), Some(result)) => Claim::Finished(Box::new(result)),
            _ => Claim::RunningElsewhere {
                entry_id: record.entry_id.unwrap_or_default(),
            },
        })
    }

    /// Moves a running job to another entry when the one running it is
    /// gone without a result; false if someone else moved it first.
    pub async fn take_over_job(
        &self,
        kind: JobKind,
        request_id: &str,
        worker: &str,
        entry_id: &str,
        from_entry_id: &str,
    ) -> Result<bool, StoreError> {
        let moved = sqlx::query(
            "UPDATE jobs SET entry_id = $4, worker = $3, attempts = attempts + 1,
                 started_at = now(), updated_at = now()
             WHERE kind = $1 AND request_id = $2 AND status = 'running' AND entry_id = $5",
        )
        .bind(kind.as_str())
        .bind(request_id)
        .bind(worker)
        .bind(entry_id)
        .bind(from_entry_id)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Records a final result, with its kind, status and error code.
    pub async fn job_finished(&self, result: &JobResult) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (kind, request_id, status, error_code, result, finished_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (kind, request_id) DO UPDATE
             SET status = $3, error_code = $4, result = $5, finished_at = now(), updated_at = now()",
        )
        .bind(result.job.as_str())
        .bind(&result.request_id)
        .bind(JobState::Finished(result.status).as_str())
        .bind(result.error.as_ref().map(|e| e.code.as_str()))
        .bind(Json(result))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The ledger row of a job, if any.
    pub async fn job(
        &self,
        kind: JobKind,
        request_id: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT kind, request_id, status, attempts, worker, entry_id, error_code, result
             FROM jobs WHERE kind = $1 AND request_id = $2",
        )
        .bind(kind.as_str())
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(JobRecord::try_from).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_column_value() {
        for state in [
            JobState::Running,
            JobState::Finished(JobStatus::Success),
            JobState::Finished(JobStatus::Failed),
        ] {
            assert_eq!(JobState::parse(state.as_str()).unwrap(), state);
        }
        assert!(JobState::parse("done").is_err());
    }

    #[test]
    fn text_columns_read_as_the_contracts_names() {
        assert_eq!(
            column::<JobKind>("kind", "provision").unwrap(),
            JobKind::Provision
        );
        assert_eq!(
            column::<ErrorCode>("error_code", "ssh_auth_failed").unwrap(),
            ErrorCode::SshAuthFailed
        );
        let err = column::<ErrorCode>("error_code", "oops").unwrap_err();
        assert!(err.to_string().contains("error_code"), "{err}");
    }
}
