//! The `jobs` ledger: one row per request id and kind, running or finished
//! with its result. The state is typed; a finished job's result is kept as
//! the text it was published with, to be republished as it is.

use sqlx::types::Json;

use super::{Store, StoreError};
use crate::job::{JobKind, JobResult, JobStatus, StoredResult};

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

    /// The column's CHECK constraint allows exactly the three values.
    pub(crate) fn parse(text: &str) -> Result<JobState, StoreError> {
        match text {
            "running" => Ok(JobState::Running),
            "success" => Ok(JobState::Finished(JobStatus::Success)),
            "failed" => Ok(JobState::Finished(JobStatus::Failed)),
            other => Err(StoreError::Column {
                column: "status",
                problem: format!("unknown state `{other}`"),
            }),
        }
    }
}

/// What the worker reads of a row of `jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub status: JobState,
    /// The stream entry that runs (or ran) it.
    pub entry_id: Option<String>,
    /// Set once it finished.
    pub result: Option<StoredResult>,
}

/// A row as Postgres gives it.
#[derive(sqlx::FromRow)]
struct Row {
    status: String,
    entry_id: Option<String>,
    result: Option<serde_json::Value>,
}

impl TryFrom<Row> for JobRecord {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<JobRecord, StoreError> {
        Ok(JobRecord {
            status: JobState::parse(&row.status)?,
            entry_id: row.entry_id,
            result: row.result.map(|json| StoredResult::new(json.to_string())),
        })
    }
}

/// Whether a worker may run a job, from the ledger's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: nobody else is, and it has no final result.
    Run,
    /// It ran to the end before: this is its result.
    Finished(StoredResult),
    /// Another stream entry with the same request id is running it.
    RunningElsewhere { entry_id: String },
}

impl Store {
    /// Claims a job for `worker`, keeping its `payload` (the parsed job's
    /// fields: references, never values). The same entry delivered again
    /// (taken over after a crash) may run again; a second entry with the
    /// same request id may not while the first is running or done.
    pub async fn claim_job(
        &self,
        kind: JobKind,
        request_id: &str,
        worker: &str,
        entry_id: &str,
        target: &str,
        payload: &serde_json::Value,
    ) -> Result<Claim, StoreError> {
        let claimed = sqlx::query(
            "INSERT INTO jobs (kind, request_id, status, worker, entry_id, target, payload, started_at)
             VALUES ($1, $2, 'running', $3, $4, $5, $6, now())
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
        .bind(Json(payload))
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
            (JobState::Finished(_), Some(result)) => Claim::Finished(result),
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
            "SELECT status, entry_id, result
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
}
