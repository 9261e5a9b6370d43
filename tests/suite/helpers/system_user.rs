//! `SystemUser`: a login name made unique per test for a real account on
//! this machine (which is the `TestHost`'s filesystem), that a test or the
//! play it runs creates, removed with its home and any
//! `/etc/sudoers.d/90-infra-<name>` grant when the guard drops. Needs root.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A unique account name, deleted (`userdel -r`) on drop.
pub struct SystemUser {
    name: String,
}

impl SystemUser {
    /// A fresh name `<prefix>-<8 hex>` (`^[a-z_][a-z0-9_-]{0,31}$` for a
    /// short lowercase `prefix`) that no account has yet. The account itself
    /// is not created.
    pub fn unique(prefix: &str) -> SystemUser {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "tests that create system users run as root (as .ci/run does)"
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{prefix}-{}", &id[..8]);
        assert!(
            name.len() <= 32
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'),
            "not a valid login name: {name}"
        );
        assert!(passwd_entry(&name).is_none(), "{name} exists already");
        SystemUser { name }
    }

    /// The login name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account's home directory, once it exists.
    pub fn home(&self) -> Option<PathBuf> {
        passwd_entry(&self.name).and_then(|fields| fields.get(5).map(PathBuf::from))
    }

    /// The names of the account's groups, primary first (`id -nG`).
    pub fn groups(&self) -> Vec<String> {
        let out = Command::new("id")
            .arg("-nG")
            .arg(&self.name)
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The account's password field in /etc/shadow.
    pub fn shadow_password(&self) -> Option<String> {
        let shadow = std::fs::read_to_string("/etc/shadow").expect("read /etc/shadow");
        shadow.lines().find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(self.name.as_str()))
                .then(|| fields.next().unwrap_or_default().to_owned())
        })
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/90-infra-{}", self.name));
        if passwd_entry(&self.name).is_none() {
            return;
        }
        // userdel refuses while a process of the user runs: an sshd session
        // may still be exiting after its client returned.
        for attempt in 0..20 {
            let mut userdel = Command::new("userdel");
            if attempt == 19 {
                userdel.arg("--force");
            }
            let _ = userdel
                .arg("--remove")
                .arg(&self.name)
                .stderr(Stdio::null())
                .status();
            if passwd_entry(&self.name).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the test user {}", self.name);
    }
}

/// The fields of `name`'s passwd entry (name first), if any.
fn passwd_entry(name: &str) -> Option<Vec<String>> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .stderr(Stdio::null())
        .output()
        .expect("run getent");
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}
