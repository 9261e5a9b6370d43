//! Postgres: servers, pinned host keys and the job ledger (and, in
//! `browse`, what the operator console reads of them). The only module
//! that runs SQL. Queries are checked at run time rather than with
//! `sqlx::query!` so a build never needs a live database or `.sqlx` data.

mod browse;
mod jobs;
mod lock;
mod servers;

pub use browse::{FinishedCount, JOBS_PAGE_SIZE, JobFilter, JobPage, JobRow, page_offset};
pub use jobs::{Claim, JobRecord, JobState};
pub use lock::ServerLock;
pub use servers::{NewServer, Server, ServerStatus};

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::{PostgresUrl, Settings};
use crate::secrets::{ResolveError, Resolver};

/// A Postgres operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Db(sqlx::Error),
    /// The TLS handshake (or the server's refusal of TLS) failed at the
    /// first connection: the message says which settings to check.
    #[error(
        "postgres: TLS to {endpoint} failed: {cause} (check postgres.ca_cert, \
         postgres.sslmode and the host name in postgres.url)"
    )]
    Tls { endpoint: String, cause: String },
    /// `postgres.password_ref` gave no value. Names the reference, never a
    /// value.
    #[error("postgres.password_ref: {0}")]
    Password(ResolveError),
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
    /// `host:port` (or the socket directory), for the errors that name it.
    endpoint: String,
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
    /// The store the settings describe: `postgres.password_ref` is read
    /// now, once (a changed password takes a restart, as with
    /// `PGPASSFILE`); then as [`Store::connect_lazy`].
    pub async fn open(settings: &Settings, job_slots: usize) -> Result<Store, StoreError> {
        let postgres = &settings.postgres;
        let mut options = postgres.url.options().clone();
        if let Some(reference) = &postgres.password_ref {
            let password = Resolver::new(settings.secrets.dir.clone())
                .resolve_str(reference)
                .await
                .map_err(StoreError::Password)?;
            options = options.password(password.expose_secret());
        }
        Ok(Store::with_options(options, job_slots))
    }

    /// A lazily connecting pool: a database that is down at start or blinks
    /// later costs a failed query, never the process.
    pub fn connect_lazy(url: &PostgresUrl, job_slots: usize) -> Store {
        Store::with_options(url.options().clone(), job_slots)
    }

    fn with_options(options: PgConnectOptions, job_slots: usize) -> Store {
        let endpoint = match options.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let pool = pool_options()
            .max_connections(8)
            .connect_lazy_with(options.clone());
        let locks = pool_options()
            .max_connections(
                u32::try_from(job_slots)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1),
            )
            .min_connections(0)
            .connect_lazy_with(options);
        Store {
            pool,
            locks,
            endpoint,
        }
    }

    /// Applies pending migrations. The first connection of every command
    /// and of the worker: a TLS failure here says which settings to check.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let ran = MIGRATOR.run(&self.pool).await;
        ran.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(sqlx::Error::Tls(cause)) => {
                self.tls_failed(&cause)
            }
            other => StoreError::Migrate(other),
        })
    }

    /// Does the database answer?
    pub async fn ping(&self) -> Result<(), StoreError> {
        let answered = sqlx::query("SELECT 1").execute(&self.pool).await;
        answered.map(drop).map_err(|e| match e {
            sqlx::Error::Tls(cause) => self.tls_failed(&cause),
            other => StoreError::from(other),
        })
    }

    /// A failed TLS handshake, naming the server and the settings to check.
    fn tls_failed(&self, cause: &dyn std::fmt::Display) -> StoreError {
        crate::metrics::postgres_failed();
        StoreError::Tls {
            endpoint: self.endpoint.clone(),
            cause: cause.to_string(),
        }
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
