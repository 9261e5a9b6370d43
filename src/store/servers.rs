//! The `servers` table: the source of truth for provisioning.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError};

/// The contract's server statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    New,
    Provisioning,
    Ready,
    Unreachable,
    Reinstalling,
    Recovering,
    Failed,
}

impl ServerStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::New => "new",
            ServerStatus::Provisioning => "provisioning",
            ServerStatus::Ready => "ready",
            ServerStatus::Unreachable => "unreachable",
            ServerStatus::Reinstalling => "reinstalling",
            ServerStatus::Recovering => "recovering",
            ServerStatus::Failed => "failed",
        }
    }
}

/// One row of `servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Server {
    pub handle: String,
    pub public_ip: String,
    pub ssh_port: i32,
    pub ssh_user: String,
    pub ssh_key_ref: String,
    pub provider: String,
    pub provider_server_id: Option<String>,
    pub status: String,
    pub last_error: Option<String>,
    pub host_key: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// What an operator registers.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub handle: String,
    pub public_ip: String,
    pub ssh_port: u16,
    pub ssh_user: String,
    pub ssh_key_ref: String,
    pub provider: String,
    pub provider_server_id: Option<String>,
}

/// The columns of `Server`, for `concat!` (sqlx wants static SQL).
macro_rules! server_columns {
    () => {
        "handle, public_ip, ssh_port, ssh_user, ssh_key_ref, provider, \
         provider_server_id, status, last_error, host_key, updated_at"
    };
}

impl Store {
    /// Registers a server with status `new`.
    pub async fn add_server(&self, server: &NewServer) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO servers (handle, public_ip, ssh_port, ssh_user, ssh_key_ref, provider, provider_server_id, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (handle) DO NOTHING",
        )
        .bind(&server.handle)
        .bind(&server.public_ip)
        .bind(i32::from(server.ssh_port))
        .bind(&server.ssh_user)
        .bind(&server.ssh_key_ref)
        .bind(&server.provider)
        .bind(&server.provider_server_id)
        .bind(ServerStatus::New.as_str())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::ServerExists(server.handle.clone()));
        }
        Ok(())
    }

    /// One server by handle.
    pub async fn server(&self, handle: &str) -> Result<Option<Server>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers WHERE handle = $1"
        ))
        .bind(handle)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// All servers, by handle.
    pub async fn servers(&self) -> Result<Vec<Server>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers ORDER BY handle"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every registered server's `public_ip`, for `registered` deploy
    /// targets.
    pub async fn registered_addresses(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT DISTINCT public_ip FROM servers")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every registered server's `ssh_key_ref`: credentials of the
    /// worker's own, which no job may name.
    pub async fn server_key_refs(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT ssh_key_ref FROM servers")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Removes a server; false if there was none.
    pub async fn remove_server(&self, handle: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM servers WHERE handle = $1")
            .bind(handle)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a status change and its reason (`None` clears the last error).
    pub async fn set_server_status(
        &self,
        handle: &str,
        status: ServerStatus,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE servers SET status = $2, last_error = $3, updated_at = now() WHERE handle = $1",
        )
        .bind(handle)
        .bind(status.as_str())
        .bind(last_error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Pins a server's host key unless one is pinned already.
    pub async fn pin_server_host_key(&self, handle: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE servers SET host_key = $2, updated_at = now() WHERE handle = $1 AND host_key IS NULL",
        )
        .bind(handle)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a server's pinned host key (after a legitimate change);
    /// false if there is no such server.
    pub async fn reset_server_host_key(&self, handle: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE servers SET host_key = NULL, updated_at = now() WHERE handle = $1")
                .bind(handle)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}
