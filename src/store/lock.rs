//! One job per server at a time, across all workers: a Postgres advisory
//! lock held by a connection of its own for as long as the job runs. A
//! worker that dies loses its session and with it the lock.

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};

use super::{Store, StoreError};

/// Holds a server's lock until released or dropped.
pub struct ServerLock {
    conn: Option<PoolConnection<Postgres>>,
}

impl Store {
    /// Waits until no other job holds `server`, then holds it.
    pub async fn lock_server(&self, server: &str) -> Result<ServerLock, StoreError> {
        let mut lock = self.lock_connection().await?;
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(lock_name(server))
            .execute(lock.conn())
            .await?;
        Ok(lock)
    }

    /// [`Store::lock_server`] for a deploy target, with the host key pinned
    /// for it (a registered server's, else a deploy-time one), read under
    /// the lock; one round trip (`infra_lock_deploy_target`).
    pub async fn lock_deploy_target(
        &self,
        address: &str,
        port: u16,
    ) -> Result<(ServerLock, Option<String>), StoreError> {
        let mut lock = self.lock_connection().await?;
        let pinned = sqlx::query_scalar("SELECT infra_lock_deploy_target($1, $2, $3)")
            .bind(lock_name(address))
            .bind(address)
            .bind(i32::from(port))
            .fetch_one(lock.conn())
            .await?;
        Ok((lock, pinned))
    }

    /// A connection for a lock, guarded before the lock is asked for: if
    /// the wait is abandoned (the job cancelled) or fails, the guard's drop
    /// closes the session. Back in the pool, the session would take the
    /// lock once granted and keep it, shutting the server out for good.
    async fn lock_connection(&self) -> Result<ServerLock, StoreError> {
        Ok(ServerLock {
            conn: Some(self.locks.acquire().await?),
        })
    }
}

impl ServerLock {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken by release or drop")
    }

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
