//! One job per server at a time, across all workers: a Postgres advisory
//! lock held by a connection of its own for as long as the job runs. A
//! worker that dies loses its session and with it the lock.

use sqlx::Postgres;
use sqlx::pool::PoolConnection;

use super::{Store, StoreError};

/// Holds a server's lock until released or dropped.
pub struct ServerLock {
    conn: Option<PoolConnection<Postgres>>,
}

impl Store {
    /// Waits until no other job holds `server`, then holds it.
    pub async fn lock_server(&self, server: &str) -> Result<ServerLock, StoreError> {
        let mut conn = self.locks.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(lock_name(server))
            .execute(&mut *conn)
            .await?;
        Ok(ServerLock { conn: Some(conn) })
    }
}

impl ServerLock {
    /// Unlocks and returns the connection to the pool.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // Unsure of the session's state: close it, which unlocks.
                drop(conn.detach());
            }
        }
    }
}

impl Drop for ServerLock {
    /// A lock dropped without `release` (cancellation, panic) closes its
    /// session instead of going back to the pool still locked.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

fn lock_name(server: &str) -> String {
    format!("infra-service:server:{server}")
}
