//! The `jobs` ledger: one row per request id and kind.

use serde::Serialize;

use super::{Store, StoreError};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Success,
    Failed,
}

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRecord {
    pub kind: String,
    pub request_id: String,
    pub status: String,
    pub attempts: i32,
    pub worker: Option<String>,
    pub error_code: Option<String>,
    pub result: Option<serde_json::Value>,
}

impl Store {
    /// Records that `worker` started the job (another attempt if it ran before).
    pub async fn job_started(
        &self,
        kind: &str,
        request_id: &str,
        worker: &str,
        entry_id: &str,
        target: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (kind, request_id, status, worker, entry_id, target, started_at)
             VALUES ($1, $2, 'running', $3, $4, $5, now())
             ON CONFLICT (kind, request_id) DO UPDATE
             SET status = 'running', attempts = jobs.attempts + 1, worker = $3, entry_id = $4,
                 target = $5, started_at = now(), updated_at = now()",
        )
        .bind(kind)
        .bind(request_id)
        .bind(worker)
        .bind(entry_id)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the final result.
    pub async fn job_finished(
        &self,
        kind: &str,
        request_id: &str,
        status: JobStatus,
        error_code: Option<&str>,
        result: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (kind, request_id, status, error_code, result, finished_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (kind, request_id) DO UPDATE
             SET status = $3, error_code = $4, result = $5, finished_at = now(), updated_at = now()",
        )
        .bind(kind)
        .bind(request_id)
        .bind(match status {
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
        })
        .bind(error_code)
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The ledger row of a job, if any.
    pub async fn job(&self, kind: &str, request_id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT kind, request_id, status, attempts, worker, error_code, result
             FROM jobs WHERE kind = $1 AND request_id = $2",
        )
        .bind(kind)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
