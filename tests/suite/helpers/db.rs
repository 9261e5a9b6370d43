//! Postgres for tests: one server per test binary (`TEST_DATABASE_URL`, else
//! a container), and per test a fresh database `t_<uuid>`, dropped at the end.

use std::sync::OnceLock;

use reqwest::Url;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use super::containers;

static ADMIN_URL: OnceLock<String> = OnceLock::new();

fn admin_url() -> String {
    ADMIN_URL
        .get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => containers::postgres_url(),
        })
        .clone()
}

/// A database of one test's own.
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `t_<uuid>` on the shared server.
    pub async fn new() -> TestDb {
        let admin_url = admin_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to postgres at {admin_url}: {e}"));
        admin
            // The name is ours (`t_` and hex), so formatting it in is safe.
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = admin.close().await;
        let mut url = Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        TestDb {
            name,
            url: url.to_string(),
            admin_url,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of this database, for the worker's `postgres.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `infra-service servers <args>` against this database, as an
    /// operator runs it (no Redis needed); its stdout. Panics, with
    /// stderr, if the command fails.
    pub async fn servers_cli<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = tokio::process::Command::from(super::infra_service())
            .arg("servers")
            .args(args)
            .env("INFRA__REDIS__URL", "redis://127.0.0.1:1")
            .env("INFRA__POSTGRES__URL", &self.url)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "servers {:?}: {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh connection to this database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    /// How many sessions on this database wait for an advisory lock, as
    /// Postgres sees them: jobs blocked on a server's lock, but also a
    /// worker applying its migrations (sqlx takes one too), so wait for
    /// "worker started" first.
    pub async fn advisory_lock_waiters(&self) -> i64 {
        let mut conn = self.connect().await;
        let waiters = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count the advisory lock waiters");
        let _ = conn.close().await;
        waiters
    }
}

impl Drop for TestDb {
    /// Drops the database, best effort, on a thread of its own (a `Drop`
    /// cannot await, and the test's runtime may already be gone).
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    let _ = admin.execute(AssertSqlSafe(sql)).await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
