//! What the operator console reads of the ledger and the servers: jobs
//! listed newest first under filters, one job in full, the last hour's
//! finished jobs counted by status and error code, servers by status.
//! Every filter is a bound parameter; no SQL is built from input.

use chrono::{DateTime, Utc};

use super::jobs::JobState;
use super::{Store, StoreError};
use crate::job::JobKind;

/// How many jobs a page of the listing holds.
pub const JOBS_PAGE_SIZE: u32 = 50;

/// What the jobs listing is narrowed to; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub kind: Option<JobKind>,
    pub status: Option<JobState>,
    pub error_code: Option<String>,
    pub request_id: Option<String>,
    /// A deploy's project: its id or its name.
    pub project: Option<String>,
    /// The target: a deploy's server address, a provision's handle.
    pub server: Option<String>,
}

/// One row of `jobs`, all of it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub kind: JobKind,
    pub request_id: String,
    pub status: JobState,
    pub attempts: i32,
    pub worker: Option<String>,
    pub entry_id: Option<String>,
    pub target: Option<String>,
    pub error_code: Option<String>,
    /// The result as stored.
    pub result: Option<serde_json::Value>,
    /// The parsed payload (references only); `None` for jobs claimed
    /// before the column existed, or recorded without a claim.
    pub payload: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A page of the listing.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobRow>,
    /// Whether a further page exists.
    pub more: bool,
}

/// How many jobs finished in a window with one status and error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCount {
    pub status: JobState,
    pub error_code: Option<String>,
    pub count: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    request_id: String,
    status: String,
    attempts: i32,
    worker: Option<String>,
    entry_id: Option<String>,
    target: Option<String>,
    error_code: Option<String>,
    result: Option<serde_json::Value>,
    payload: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for JobRow {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<JobRow, StoreError> {
        let kind = JobKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == row.kind)
            .ok_or_else(|| StoreError::Column {
                column: "kind",
                problem: format!("unknown kind `{}`", row.kind),
            })?;
        Ok(JobRow {
            kind,
            request_id: row.request_id,
            status: JobState::parse(&row.status)?,
            attempts: row.attempts,
            worker: row.worker,
            entry_id: row.entry_id,
            target: row.target,
            error_code: row.error_code,
            result: row.result,
            payload: row.payload,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

/// The columns of `Row`, for `concat!`.
macro_rules! job_columns {
    () => {
        "kind, request_id, status, attempts, worker, entry_id, target, error_code, \
         result, payload, created_at, started_at, finished_at"
    };
}

/// Rows to skip before page `page` (1-based; 0 counts as 1).
pub fn page_offset(page: u32) -> i64 {
    i64::from(page.max(1) - 1) * i64::from(JOBS_PAGE_SIZE)
}

impl Store {
    /// Page `page` (1-based) of the jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter, page: u32) -> Result<JobPage, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs
             WHERE ($1::text IS NULL OR kind = $1)
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR error_code = $3)
               AND ($4::text IS NULL OR request_id = $4)
               AND ($5::text IS NULL OR result->>'project_id' = $5
                    OR payload->>'project_id' = $5 OR payload->>'project_name' = $5)
               AND ($6::text IS NULL OR target = $6 OR result->>'server_handle' = $6
                    OR result->>'server_ip' = $6)
             ORDER BY created_at DESC, kind, request_id
             LIMIT $7 OFFSET $8"
        ))
        .bind(filter.kind.map(JobKind::as_str))
        .bind(filter.status.map(JobState::as_str))
        .bind(filter.error_code.as_deref())
        .bind(filter.request_id.as_deref())
        .bind(filter.project.as_deref())
        .bind(filter.server.as_deref())
        .bind(i64::from(JOBS_PAGE_SIZE) + 1)
        .bind(page_offset(page))
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > JOBS_PAGE_SIZE as usize;
        let jobs = rows
            .into_iter()
            .take(JOBS_PAGE_SIZE as usize)
            .map(JobRow::try_from)
            .collect::<Result<_, _>>()?;
        Ok(JobPage { jobs, more })
    }

    /// One job's row in full, if the ledger has it.
    pub async fn job_row(
        &self,
        kind: JobKind,
        request_id: &str,
    ) -> Result<Option<JobRow>, StoreError> {
        let row: Option<Row> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE kind = $1 AND request_id = $2"
        ))
        .bind(kind.as_str())
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(JobRow::try_from).transpose()
    }

    /// Jobs finished in the last hour, counted by status and error code,
    /// most frequent first.
    pub async fn finished_last_hour(&self) -> Result<Vec<FinishedCount>, StoreError> {
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT status, error_code, count(*) FROM jobs
             WHERE finished_at > now() - interval '1 hour' AND status <> 'running'
             GROUP BY status, error_code
             ORDER BY count(*) DESC, status, error_code",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(status, error_code, count)| {
                Ok(FinishedCount {
                    status: JobState::parse(&status)?,
                    error_code,
                    count,
                })
            })
            .collect()
    }

    /// How many servers have each status, by status.
    pub async fn servers_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT status, count(*) FROM servers GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_fifty_rows_apart_and_start_at_one() {
        assert_eq!(page_offset(0), 0);
        assert_eq!(page_offset(1), 0);
        assert_eq!(page_offset(2), 50);
        assert_eq!(page_offset(u32::MAX), i64::from(u32::MAX - 1) * 50);
    }
}
