//! A real `sshd` on 127.0.0.1-16 standing in for sixteen servers, the way
//! `tests/suite/helpers/host.rs` starts one (trimmed to what the benchmark
//! needs). The login user is `infra-target` when run as root.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
const TARGET_USER: &str = "infra-target";

/// One sshd listening on the same port of several loopback addresses.
pub struct Sshd {
    dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    child: Child,
}

impl Sshd {
    /// Starts sshd on `addresses` (the first one picks the free port).
    pub fn start(addresses: &[String]) -> Sshd {
        let user = login_user();
        let dir = tempfile::Builder::new()
            .prefix("infra-bench-sshd-")
            .tempdir()
            .expect("temp dir for sshd");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod sshd dir");
        let d = dir.path();
        keygen(&d.join("client_key"));
        keygen(&d.join("host_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        for _ in 0..20 {
            let port = TcpListener::bind((addresses[0].as_str(), 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            let listen: String = addresses
                .iter()
                .map(|a| format!("ListenAddress {a}:{port}\n"))
                .collect();
            let config = format!(
                "{listen}HostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPrintMotd no\nPrintLastLog no\nMaxStartups 200\n\
                 MaxSessions 200\nSubsystem sftp internal-sftp\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
            let log = std::fs::File::create(d.join("sshd.log")).expect("sshd log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("run /usr/sbin/sshd (install openssh-server)");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                if banner_ok(&addresses[0], port) {
                    return Sshd {
                        dir,
                        port,
                        user,
                        child,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start: {}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
    }

    /// The client's private key (OpenSSH format).
    pub fn client_key(&self) -> String {
        std::fs::read_to_string(self.client_key_path()).expect("client key")
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn banner_ok(address: &str, port: u16) -> bool {
    let Ok(addr) = format!("{address}:{port}").parse() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 7];
    let ok = stream.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0";
    let _ = stream.write_all(b"SSH-2.0-probe\r\n");
    ok
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "infra-bench", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

/// `infra-target` as root (created and unlocked if needed, as the test
/// suite does), else the current user.
fn login_user() -> String {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return std::env::var("USER").expect("USER is set");
    }
    std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
    let exists = || {
        Command::new("getent")
            .args(["passwd", TARGET_USER])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !exists() {
        let _ = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", "--password", "*"])
            .arg(TARGET_USER)
            .status();
    }
    assert!(exists(), "could not create the user {TARGET_USER}");
    // sshd with `UsePAM no` refuses a locked (`!`) account.
    let _ = Command::new("usermod")
        .args(["--password", "*", TARGET_USER])
        .status();
    TARGET_USER.to_owned()
}
