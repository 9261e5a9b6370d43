//! The `jobs` ledger: one row per request id and kind.

use super::{Store, StoreError};

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

/// Whether a worker may run a job, from the ledger's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: nobody else is, and it has no final result.
    Run,
    /// It ran to the end before: this is its result.
    Finished(serde_json::Value),
    /// Another stream entry with the same request id is running it.
    RunningElsewhere { entry_id: String },
}

impl Store {
    /// Claims a job for `worker`. The same entry delivered again (taken
    /// over after a crash) may run again; a second entry with the same
    /// request id may not while the first is running or done.
    pub async fn claim_job(
        &self,
        kind: &str,
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
        .bind(kind)
        .bind(request_id)
        .bind(worker)
        .bind(entry_id)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(Claim::Run);
        }
        let (status, entry, result): (String, Option<String>, Option<serde_json::Value>) =
            sqlx::query_as(
                "SELECT status, entry_id, result FROM jobs WHERE kind = $1 AND request_id = $2",
            )
            .bind(kind)
            .bind(request_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(match (status.as_str(), result) {
            ("success" | "failed", Some(result)) => Claim::Finished(result),
            _ => Claim::RunningElsewhere {
                entry_id: entry.unwrap_or_default(),
            },
        })
    }

    /// Moves a running job to another entry when the one running it is
    /// gone without a result; false if someone else moved it first.
    pub async fn take_over_job(
        &self,
        kind: &str,
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
        .bind(kind)
        .bind(request_id)
        .bind(worker)
        .bind(entry_id)
        .bind(from_entry_id)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Records the final result; `status` is the result's own (`success`
    /// or `failed`).
    pub async fn job_finished(
        &self,
        kind: &str,
        request_id: &str,
        status: &str,
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
        .bind(status)
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
