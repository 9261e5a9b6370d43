//! `TestHost`: a real `sshd` on a loopback address, started by the test with
//! its own host key, client key and configuration in a temporary directory.
//! It stands in for a deployed server: the worker's `ansible-playbook` and the
//! test's own `run` reach it over SSH exactly as they would a VPS.
//!
//! Every session on it gets, through sshd's `SetEnv`:
//! - `PATH=<stub_bin_dir>:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
//!   so stub commands (a fake `docker`) shadow real ones;
//! - `INFRA_TEST_OUT=<out_dir>`, where the fixture playbooks write what they
//!   saw, so each test reads its own files.
//!
//! The login user is `infra-target` (shell `/bin/sh`, no rc files) when the
//! tests run as root, else the current user; as root it also gets
//! passwordless sudo that keeps the stub PATH (for `infra_become=true`).
//! Keys: the test's client key logs in as any user; each user's own
//! `~/.ssh/authorized_keys` counts too (a CI user made by a play). The
//! filesystem is this machine's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::procs::{descendants, kill_all};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
const TARGET_USER: &str = "infra-target";
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Root for `TARGET_USER` through sudo. Debian's `secure_path` would replace
/// the session's PATH (sudo otherwise keeps it: PATH is in the default
/// env_keep), hiding the stubs under become. Same text as `.ci/run` writes.
const TARGET_SUDOERS: &str = "/etc/sudoers.d/90-infra-target-test";
const TARGET_SUDOERS_TEXT: &str = "\
# infra-service tests: root for the test sshd login user (.ci/run, tests/suite/helpers/host.rs).
Defaults:infra-target !secure_path
Defaults:infra-target env_keep += \"INFRA_TEST_OUT\"
infra-target ALL=(ALL:ALL) NOPASSWD: ALL
";

/// How one `ssh` client run ended (see `TestHost::ssh_as`).
pub struct SshOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl SshOutput {
    /// Whether the remote command ran and exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Debug for SshOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ssh exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running sshd and everything needed to log in to it.
pub struct TestHost {
    dir: tempfile::TempDir,
    address: String,
    /// More loopback addresses the same sshd answers on, same port: several
    /// "servers" behind one key, for jobs the one-job-per-server rule must
    /// not serialize.
    also_on: Vec<String>,
    port: u16,
    user: String,
    sshd: Option<Child>,
}

impl TestHost {
    /// An sshd on a free port of 127.0.0.1.
    pub async fn start() -> TestHost {
        TestHost::start_on("127.0.0.1").await
    }

    /// An sshd on a free port of `address` (127.0.0.1 to 127.0.0.16).
    pub async fn start_on(address: &str) -> TestHost {
        TestHost::start_on_all(&[address]).await
    }

    /// One sshd on the same free port of each of `addresses` (127.0.0.1 to
    /// 127.0.0.16, and `::1` after the first); `address()` is the first.
    pub async fn start_on_all(addresses: &[&str]) -> TestHost {
        let addresses: Vec<String> = addresses.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || TestHost::start_blocking(&addresses))
            .await
            .expect("starting sshd panicked")
    }

    fn start_blocking(addresses: &[String]) -> TestHost {
        for (i, address) in addresses.iter().enumerate() {
            assert!(
                is_allowed_address(address) || i > 0 && address == "::1",
                "TestHost listens on 127.0.0.1-127.0.0.16 (and ::1 beside them), not {address}"
            );
        }
        let address = addresses[0].as_str();
        let user = login_user();
        let dir = tempfile::Builder::new()
            .prefix("infra-testhost-")
            .tempdir()
            .expect("temp dir for sshd");
        // The login user must traverse the dir to reach bin/ and out/; the
        // keys inside stay 0600 and root's.
        set_mode(dir.path(), 0o755);
        let mut host = TestHost {
            dir,
            address: address.to_owned(),
            also_on: addresses[1..].to_vec(),
            port: 0,
            user,
            sshd: None,
        };
        std::fs::create_dir(host.stub_bin_dir()).expect("stub bin dir");
        set_mode(&host.stub_bin_dir(), 0o755);
        std::fs::create_dir(host.out_dir()).expect("out dir");
        set_mode(&host.out_dir(), 0o1777);
        keygen(&host.dir.path().join("client_key"));
        std::fs::copy(
            host.dir.path().join("client_key.pub"),
            host.dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        keygen(&host.host_key_path());

        // A free port can be taken between our probe and sshd's bind when
        // tests run in parallel: pick another and try again.
        let mut last_error = String::new();
        for _ in 0..20 {
            host.port = free_port(address);
            match host.spawn_sshd() {
                Ok(()) => return host,
                Err(e) => last_error = e,
            }
        }
        panic!("sshd did not start on {address}: {last_error}");
    }

    /// The address sshd listens on (the job's `server_ip`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The port sshd listens on (the worker's `ansible.ssh_port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user (the worker's `ansible.ssh_user`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client private key file (OpenSSH format, 0600).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The client private key's text, to place in a worker's secrets dir.
    pub fn client_private_key_pem(&self) -> String {
        std::fs::read_to_string(self.client_key_path()).expect("client key")
    }

    /// The current host public key as `ssh-ed25519 AAAA...` (no comment).
    pub fn host_public_key(&self) -> String {
        let text = std::fs::read_to_string(self.host_key_path().with_extension("pub"))
            .expect("host public key");
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `known_hosts` line for this host: `[address]:port <host key>`.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[{}]:{} {}",
            self.address,
            self.port,
            self.host_public_key()
        )
    }

    /// First directory on the PATH of every SSH session: put stubs here.
    pub fn stub_bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Writes an executable stub command (e.g. a fake `docker`) into
    /// `stub_bin_dir`; `script` is the whole file, shebang included.
    pub fn add_stub(&self, name: &str, script: &str) -> PathBuf {
        let path = self.stub_bin_dir().join(name);
        std::fs::write(&path, script).expect("write stub");
        set_mode(&path, 0o755);
        path
    }

    /// `$INFRA_TEST_OUT` of every session: world-writable, this test's own.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// sshd's own log (`-e`), for diagnosing failed logins.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many connections sshd has accepted so far (its VERBOSE
    /// `Connection from` lines), the banner check at start included: a
    /// test compares the count before and after a job.
    pub fn connections(&self) -> usize {
        self.sshd_log().matches("Connection from ").count()
    }

    /// Opens one connection of the test's own to `address()` and reads the
    /// SSH banner: one more `Connection from` line, whose arrival in the
    /// log tells that connections accepted before it are counted too.
    pub async fn knock(&self) {
        let ip: std::net::IpAddr = self.address.parse().expect("an address");
        let addr = SocketAddr::new(ip, self.port);
        let answered = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .ok()?;
            let mut buf = [0u8; 8];
            stream.read_exact(&mut buf).ok()?;
            let _ = stream.write_all(b"SSH-2.0-probe\r\n");
            buf.starts_with(b"SSH-2.0").then_some(())
        })
        .await
        .expect("knock panicked");
        assert!(answered.is_some(), "sshd on {addr} did not answer");
    }

    /// Stops sshd and its sessions, replaces the host key, and starts it
    /// again on the same address and port.
    pub async fn restart_with_new_host_key(&mut self) {
        self.stop();
        let key = self.host_key_path();
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        keygen(&key);
        // The port was ours a moment ago; retry briefly should the kernel
        // still hold it, but never move: the worker's config names it.
        let mut last_error = String::new();
        for _ in 0..50 {
            match self.spawn_sshd() {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sshd did not restart on port {}: {last_error}", self.port);
    }

    /// Runs `command` on the host over SSH as `user()`, through its
    /// `/bin/sh`; panics unless it exits 0; returns its stdout.
    pub async fn run_ok(&self, command: &str) -> String {
        let out = tokio::process::Command::new("ssh")
            .args(self.ssh_args())
            .arg(format!("{}@{}", self.user, self.address))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("spawn ssh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{command}` failed on the test host ({}):\nstdout: {stdout}\nstderr: {}\nsshd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.sshd_log()
        );
        stdout
    }

    /// Runs `command` over SSH as `user` with the private key file
    /// `identity`, trusting only the host keys in `known_hosts`
    /// (`StrictHostKeyChecking=yes`, no config file, no agent, batch mode);
    /// `options` go before the destination (e.g. `-tt`). Never panics on a
    /// refused login or a failed command: the caller asserts either way.
    pub async fn ssh_as(
        &self,
        user: &str,
        identity: &Path,
        known_hosts: &Path,
        options: &[&str],
        command: &str,
    ) -> SshOutput {
        let out = tokio::process::Command::new("ssh")
            .arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(identity)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args([
                "-o",
                "IdentityAgent=none",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=10"])
            .args(options)
            .arg(format!("{user}@{}", self.address))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("spawn ssh");
        SshOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Options for an `ssh` client that trusts this host whatever its key.
    pub fn ssh_args(&self) -> Vec<String> {
        [
            "-i",
            &self.client_key_path().to_string_lossy(),
            "-p",
            &self.port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn host_key_path(&self) -> PathBuf {
        self.dir.path().join("host_key")
    }

    fn write_config(&self) -> PathBuf {
        let d = self.dir.path().display();
        let config = format!(
            "ListenAddress {addr}:{port}\n\
             HostKey {d}/host_key\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys .ssh/authorized_keys\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             LogLevel VERBOSE\n\
             MaxStartups 200\n\
             MaxSessions 200\n\
             Subsystem sftp internal-sftp\n\
             SetEnv PATH={bin}:{BASE_PATH} INFRA_TEST_OUT={out}\n",
            addr = self.address,
            port = self.port,
            bin = self.stub_bin_dir().display(),
            out = self.out_dir().display(),
        );
        let also: String = self
            .also_on
            .iter()
            .map(|addr| {
                // An IPv6 address is bracketed before its port.
                let addr = if addr.contains(':') {
                    format!("[{addr}]")
                } else {
                    addr.clone()
                };
                format!("ListenAddress {addr}:{}\n", self.port)
            })
            .collect();
        let path = self.dir.path().join("sshd_config");
        std::fs::write(&path, also + &config).expect("write sshd_config");
        path
    }

    /// Starts sshd in the foreground and waits for its SSH banner.
    fn spawn_sshd(&mut self) -> Result<(), String> {
        let config = self.write_config();
        let log_path = self.dir.path().join("sshd.log");
        let log = std::fs::File::create(&log_path).expect("sshd log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {SSHD}: {e} (install openssh-server)"))?;
        let addr: SocketAddr = format!("{}:{}", self.address, self.port)
            .parse()
            .expect("socket address");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "sshd exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            if banner_ok(addr) {
                self.sshd = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no SSH banner within 15 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the listener and every process it forked (the sessions, the
    /// commands they run), so no connection survives a restart.
    fn stop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            // Listener first, so it forks nothing new; then what it had forked
            // (found before it died, while they were still its children).
            let below = descendants(child.id() as i32);
            let _ = child.kill();
            kill_all(&below);
            let _ = child.wait();
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sshd log of {}:{} ---\n{}",
                self.address,
                self.port,
                self.sshd_log()
            );
        }
        self.stop();
    }
}

fn is_allowed_address(address: &str) -> bool {
    match address.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            let [a, b, c, d] = ip.octets();
            (a, b, c) == (127, 0, 0) && (1..=16).contains(&d)
        }
        Err(_) => false,
    }
}

fn free_port(address: &str) -> u16 {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {address}: {e}"))
}

fn banner_ok(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    let ok = stream.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0");
    // Say goodbye politely so sshd logs no protocol error.
    let _ = stream.write_all(b"SSH-2.0-probe\r\n");
    ok
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "infra-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The SSH login user, prepared once per test binary.
fn login_user() -> String {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return std::env::var("USER").unwrap_or_else(|_| {
                let out = Command::new("id").arg("-un").output().expect("id -un");
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            });
        }
        // sshd -D needs its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        ensure_target_user();
        ensure_target_sudo();
        TARGET_USER.to_owned()
    })
    .clone()
}

/// Creates `infra-target` (shell /bin/sh, a home) if missing, and makes sure
/// its account is not locked: with `UsePAM no`, sshd refuses a user whose
/// shadow password starts with `!`, which is what `useradd` leaves.
fn ensure_target_user() {
    let exists = || {
        Command::new("getent")
            .args(["passwd", TARGET_USER])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // Another test binary (or nextest process) may be creating it right now.
    for _ in 0..50 {
        if exists() {
            break;
        }
        let _ = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", "--password", "*"])
            .arg(TARGET_USER)
            .stderr(Stdio::null())
            .status();
        if !exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(exists(), "could not create the user {TARGET_USER}");
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let locked = shadow
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{TARGET_USER}:")))
        .is_some_and(|rest| rest.starts_with('!'));
    if locked {
        let _ = Command::new("usermod")
            .args(["--password", "*", TARGET_USER])
            .status();
    }
}

/// Writes `TARGET_SUDOERS` unless it already holds `TARGET_SUDOERS_TEXT`:
/// validated by `visudo -cf`, then renamed into place (sudo skips names with
/// a dot, so the temp file is never read half-written). Without sudo
/// installed there is nothing to configure: plays with become fail, saying so.
fn ensure_target_sudo() {
    if std::fs::read_to_string(TARGET_SUDOERS).is_ok_and(|text| text == TARGET_SUDOERS_TEXT) {
        return;
    }
    if !Path::new("/usr/sbin/visudo").exists() {
        eprintln!("sudo is not installed: plays with infra_become=true cannot run");
        return;
    }
    let tmp = format!("{TARGET_SUDOERS}.{}.tmp", std::process::id());
    std::fs::write(&tmp, TARGET_SUDOERS_TEXT).expect("write the sudoers file");
    set_mode(Path::new(&tmp), 0o440);
    let valid = Command::new("/usr/sbin/visudo")
        .args(["-c", "-q", "-f", &tmp])
        .status()
        .is_ok_and(|s| s.success());
    if !valid {
        let _ = std::fs::remove_file(&tmp);
        panic!("visudo rejects the test sudoers text:\n{TARGET_SUDOERS_TEXT}");
    }
    std::fs::rename(&tmp, TARGET_SUDOERS).expect("install the sudoers file");
}
