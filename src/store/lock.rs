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
    /// Known host key lines for a deploy target that is not a registered
    /// server, read on the lock's own connection: under the lock (a pin
    /// made by a job on the same server is seen), and on a connection that
    /// has just answered.
    pub async fn host_key_for(
        &mut self,
        address: &str,
        port: u16,
    ) -> Result<Option<String>, StoreError> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken by release or drop");
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
        .fetch_optional(&mut **conn)
        .await?;
        Ok(key)
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
