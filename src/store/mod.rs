//! Postgres: servers, pinned host keys and the job ledger. The only module
//! that runs SQL. Queries are checked at run time rather than with
//! `sqlx::query!` so a build never needs a live database or `.sqlx` data.

mod jobs;
mod lock;
mod servers;

pub use jobs::{Claim, JobRecord, JobState};
pub use lock::ServerLock;
pub use servers::{NewServer, Server, ServerStatus};

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::config::PostgresUrl;

/// A Postgres operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Db(sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("server `{0}` already exists")]
    ServerExists(String),
    /// A row holds what this version cannot read (a name outside the
    /// constraints): kept as an error, never guessed at.
    #[error("jobs ledger column `{column}`: {problem}")]
    Column {
        column: &'static str,
        problem: String,
    },
}

/// Every database error passes through here, so this is where they are
/// counted.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        crate::metrics::postgres_failed();
        StoreError::Db(e)
    }
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool of Postgres connections that reconnects by itself.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// Connections that hold server locks for as long as a job runs; one per
    /// job slot, so waiting for a server never starves the queries.
    locks: PgPool,
}

/// A pooled connection idle this long is pinged before use.
const PING_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Both pools' settings. By default sqlx pings every connection before it
/// hands it out: a round trip before each of a job's statements. A
/// connection in steady use has just answered; one idle for a while is
/// still pinged, and replaced if the ping fails. What is left is a
/// connection broken less than that long after its last answer: its next
/// statement fails, and the job path retries (ledger, lock) or records the
/// failure, as for any Postgres error.
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|_, _| Box::pin(count_connection()))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_AFTER_IDLE {
                    return Ok(true);
                }
                conn.ping().await?;
                Ok(true)
            })
        })
}

impl Store {
    /// A lazily connecting pool: a database that is down at start or blinks
    /// later costs a failed query, never the process.
    pub fn connect_lazy(url: &PostgresUrl, job_slots: usize) -> Store {
        let pool = pool_options()
            .max_connections(8)
            .connect_lazy_with(url.options().clone());
        let locks = pool_options()
            .max_connections(
                u32::try_from(job_slots)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1),
            )
            .min_connections(0)
            .connect_lazy_with(url.options().clone());
        Store { pool, locks }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Does the database answer?
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Pins the key of an unregistered deploy target; an existing pin wins.
    pub async fn pin_address_host_key(
        &self,
        address: &str,
        port: u16,
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO host_keys (address, ssh_port, host_key) VALUES ($1, $2, $3)
             ON CONFLICT (address, ssh_port) DO NOTHING",
        )
        .bind(address)
        .bind(i32::from(port))
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A new connection in either pool: after an outage, a reconnect.
async fn count_connection() -> Result<(), sqlx::Error> {
    crate::metrics::postgres_connected();
    Ok(())
}
