//! Postgres: servers, pinned host keys and the job ledger. The only module
//! that runs SQL. Queries are checked at run time rather than with
//! `sqlx::query!` so a build never needs a live database or `.sqlx` data.

mod jobs;
mod lock;
mod servers;

pub use jobs::{Claim, JobRecord, JobStatus};
pub use lock::ServerLock;
pub use servers::{NewServer, Server, ServerStatus};

use std::time::Duration;

use secrecy::ExposeSecret;
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A Postgres operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres.url is not set")]
    NoUrl,
    #[error("postgres: {0}")]
    Db(sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("server `{0}` already exists")]
    ServerExists(String),
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

impl Store {
    /// A lazily connecting pool: a database that is down at start or blinks
    /// later costs a failed query, never the process.
    pub fn connect_lazy(url: Option<&SecretString>, job_slots: usize) -> Result<Store, StoreError> {
        let url = url.ok_or(StoreError::NoUrl)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|_, _| Box::pin(count_connection()))
            .connect_lazy(url.expose_secret())?;
        let locks = PgPoolOptions::new()
            .max_connections(
                u32::try_from(job_slots)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1),
            )
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|_, _| Box::pin(count_connection()))
            .connect_lazy(url.expose_secret())?;
        Ok(Store { pool, locks })
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

    /// Known host key lines for a deploy target that is not a registered
    /// server.
    pub async fn host_key_for(
        &self,
        address: &str,
        port: u16,
    ) -> Result<Option<String>, StoreError> {
        // A registered server's pin wins over a deploy-time pin of its address.
        let key = sqlx::query_scalar(
            "SELECT host_key FROM (
                 SELECT host_key, 0 AS rank FROM servers
                 WHERE public_ip = $1 AND ssh_port = $2 AND host_key IS NOT NULL
                 UNION ALL
                 SELECT host_key, 1 AS rank FROM host_keys WHERE address = $1 AND ssh_port = $2
             ) pins ORDER BY rank LIMIT 1",
        )
        .bind(address)
        .bind(i32::from(port))
        .fetch_optional(&self.pool)
        .await?;
        Ok(key)
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
