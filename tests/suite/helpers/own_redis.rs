//! `OwnRedis`: a `redis-server` of one test's own, for tests that break
//! Redis (the shared one is never stopped). It keeps nothing on disk
//! (`--save "" --appendonly no`), so a restart loses every stream, group
//! and key, like a production Redis without persistence. It stops and
//! starts again on the same port, and is killed on drop. Extra arguments
//! (`--replicaof`) and a config file of its own (a Sentinel's, which the
//! Sentinel rewrites) make the servers of a `SentinelSet`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ports::free_stable_port;
use super::procs::{await_ready, stop_server};

/// How long a start or a stop may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// A `redis-server` child of the test on 127.0.0.1.
pub struct OwnRedis {
    dir: tempfile::TempDir,
    port: u16,
    /// TLS beside the plain port, when asked for.
    tls: Option<(u16, RedisTlsFiles)>,
    child: Option<Child>,
    /// Written to `<dir>/redis.conf` and given as the config file, when set.
    config: Option<String>,
    /// Given after the usual arguments.
    extra_args: Vec<String>,
}

/// What a TLS port serves with: the server's certificate and key, and the
/// CA whose certificates it accepts from clients (it asks for one).
#[derive(Clone)]
pub struct RedisTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl OwnRedis {
    /// Starts a server on a free port.
    pub async fn new() -> OwnRedis {
        OwnRedis::start_with(None, None, &[]).await
    }

    /// Starts a server that also serves TLS on a port of its own,
    /// demanding a client certificate there; the plain port stays for the
    /// test's own side.
    pub async fn with_tls(files: RedisTlsFiles) -> OwnRedis {
        OwnRedis::start_with(Some(files), None, &[]).await
    }

    /// Starts a server on a free port with `config` as its config file
    /// (kept in its own directory, so it may rewrite it) and `extra_args`
    /// after the usual arguments, e.g. `--replicaof 127.0.0.1 <port>` or
    /// `--sentinel`.
    pub async fn with(config: Option<String>, extra_args: &[&str]) -> OwnRedis {
        OwnRedis::start_with(None, config, extra_args).await
    }

    async fn start_with(
        tls: Option<RedisTlsFiles>,
        config: Option<String>,
        extra_args: &[&str],
    ) -> OwnRedis {
        let dir = tempfile::Builder::new()
            .prefix("infra-ownredis-")
            .tempdir()
            .expect("temp dir for redis-server");
        let mut redis = OwnRedis {
            dir,
            port: 0,
            tls: tls.map(|files| (0, files)),
            child: None,
            config,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        // Another test may bind the port between our probe and the server's
        // bind: pick another one then.
        let mut last_error = String::new();
        for _ in 0..10 {
            redis.port = free_stable_port();
            if let Some((port, _)) = &mut redis.tls {
                *port = free_stable_port();
            }
            match redis.spawn().await {
                Ok(()) => return redis,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`, for the worker and for `TestRedis::on`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port (a server made `with_tls`).
    pub fn tls_port(&self) -> u16 {
        self.tls.as_ref().expect("a server with TLS").0
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILLs the server: it goes without a word, as a crashed machine
    /// would (its clients' connections are reset, nothing is handed over).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGTERM; nothing is saved) and waits for its exit.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_server(child, libc::SIGTERM, PATIENCE, "redis-server").await;
        }
    }

    /// Starts the server again, empty, on the same port.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        // The port was ours a moment ago and lies outside the ephemeral
        // range; retry briefly should the kernel still hold it, but never
        // move: the worker's config names it.
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not start again on {}: {e}", self.port)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Spawns the server and waits until it answers PING; on failure the
    /// child is reaped and the log returned.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("redis log file");
        let mut command = Command::new("redis-server");
        if let Some(config) = &self.config {
            // Only before the first start: a Sentinel rewrites its file
            // with what it learned, and a restart should keep that.
            let path = self.dir.path().join("redis.conf");
            if !path.exists() {
                std::fs::write(&path, config).expect("write redis.conf");
            }
            // The config file must be the first argument.
            command.arg(path);
        }
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .args(["--protected-mode", "no", "--daemonize", "no"]);
        if let Some((port, files)) = &self.tls {
            command
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.client_ca)
                .args(["--tls-auth-clients", "yes"]);
        }
        let child = command
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        let port = self.port;
        let child = await_ready(
            child,
            || pong(port),
            Duration::from_millis(50),
            PATIENCE,
            || self.log(),
        )
        .await?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn pong(port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}
