//! `OwnPostgres`: a throwaway PostgreSQL cluster of one test's own, for
//! tests that break Postgres (the shared server is never stopped):
//! `initdb` into a temporary directory, `postgres` on a free port of
//! 127.0.0.1 with its socket in that directory, trust auth. PostgreSQL
//! refuses to run as root, so under root both run as the `postgres` OS
//! user (through `setpriv`, which execs: the child is the postmaster). It
//! stops (fast shutdown) and starts again on the same port, keeping its
//! data, and is shut down on drop. `OwnPostgres::with_tls` starts one with
//! `ssl = on` that takes TLS connections only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::Issued;
use super::ports::free_stable_port;
use super::procs::{await_ready, stop_server};

/// How long initdb, a start or a stop may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// The OS user the cluster runs as when the tests run as root.
const OS_USER: &str = "postgres";

/// A running (or stopped) cluster and its postmaster.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// The `postgres` role's password, when TLS connections must give one.
    password: Option<String>,
    tls: bool,
}

impl OwnPostgres {
    /// Creates a cluster and starts it on a free port.
    pub async fn new() -> OwnPostgres {
        OwnPostgres::create(None, None).await
    }

    /// A cluster with `ssl = on` and `server`'s certificate, whose
    /// pg_hba.conf takes TCP connections over TLS only (`hostssl`, no
    /// `host` line): trusted, or with `password` (the `postgres` role's)
    /// checked by scram-sha-256.
    pub async fn with_tls(server: &Issued, password: Option<&str>) -> OwnPostgres {
        OwnPostgres::create(Some(server), password).await
    }

    async fn create(tls: Option<&Issued>, password: Option<&str>) -> OwnPostgres {
        let dir = tempfile::Builder::new()
            .prefix("infra-ownpg-")
            .tempdir()
            .expect("temp dir for postgres");
        if running_as_root() {
            chown_to_os_user(dir.path());
        }
        let mut pg = OwnPostgres {
            dir,
            port: 0,
            child: None,
            password: password.map(str::to_owned),
            tls: tls.is_some(),
        };
        pg.initdb().await;
        if let Some(server) = tls {
            pg.require_tls(server);
        }
        let mut last_error = String::new();
        for _ in 0..10 {
            pg.port = free_stable_port();
            match pg.spawn().await {
                Ok(()) => return pg,
                Err(e) => last_error = e,
            }
        }
        panic!("postgres did not start: {last_error}");
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on, for a test that writes its own URL.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh connection (over TLS, unverified, and with the password
    /// for a `with_tls` cluster).
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.admin_url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }

    /// What the harness itself connects with.
    fn admin_url(&self) -> String {
        if !self.tls {
            return self.url();
        }
        let password = self
            .password
            .as_deref()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!(
            "postgres://postgres{password}@127.0.0.1:{}/postgres?sslmode=require",
            self.port
        )
    }

    /// Fast shutdown (SIGINT: sessions are cut, no checkpoint wait), and
    /// waits for the postmaster to exit.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_server(child, libc::SIGINT, PATIENCE, "postgres").await;
        }
    }

    /// Starts the cluster again, data intact, on the same port.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "postgres is already running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("postgres did not start again on {}: {e}", self.port)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    async fn initdb(&self) {
        let mut command = as_os_user(&bin_dir().join("initdb"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(self.dir.path());
        if let Some(password) = &self.password {
            let file = self.dir.path().join("pwfile");
            std::fs::write(&file, password).expect("write the password file");
            if running_as_root() {
                chown_to_os_user(&file);
            }
            command.arg(format!("--pwfile={}", file.display()));
        }
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("initdb thread")
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `ssl = on` with `server`'s key pair (the key the `postgres` user's,
    /// 0600, as the server demands), and an hba that refuses plain TCP.
    fn require_tls(&self, server: &Issued) {
        let (cert, key) = server.write(self.dir.path(), "server");
        if running_as_root() {
            chown_to_os_user(&key);
        }
        let method = if self.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n");
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let conf = format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert.display(),
            key.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut file, conf.as_bytes()).expect("write postgresql.conf");
    }

    /// Spawns the postmaster and waits until it takes connections; on
    /// failure the child is reaped and the log returned.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("postgres log file");
        let mut command = as_os_user(&bin_dir().join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test database: durability buys nothing here.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = command
            .spawn()
            .map_err(|e| format!("spawning postgres: {e}"))?;
        let url = self.admin_url();
        let child = await_ready(
            child,
            || async { sqlx::PgConnection::connect(&url).await.is_ok() },
            Duration::from_millis(100),
            PATIENCE,
            || self.log(),
        )
        .await?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for OwnPostgres {
    /// Immediate shutdown (SIGQUIT), which takes the backends down too;
    /// SIGKILL if it lingers.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid (the postmaster: setpriv execs).
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// The PostgreSQL server binaries: `TEST_PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (`initdb` on PATH may be a wrapper).
fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("TEST_PG_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version: u32 = e.file_name().to_string_lossy().parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").is_file().then_some((version, bin))
            })
            .max();
        newest.map(|(_, bin)| bin).unwrap_or_else(|| {
            panic!("no /usr/lib/postgresql/<version>/bin/postgres; set TEST_PG_BIN_DIR")
        })
    })
    .clone()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` as a command, run as `postgres` when we are root.
fn as_os_user(program: &Path) -> Command {
    if !running_as_root() {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={OS_USER}"))
        .arg(format!("--regid={OS_USER}"))
        .arg("--init-groups")
        .arg("--")
        .arg(program);
    command
}

fn chown_to_os_user(path: &Path) {
    let status = Command::new("chown")
        .arg(format!("{OS_USER}:"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown {OS_USER} {} failed",
        path.display()
    );
}
