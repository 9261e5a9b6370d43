//! The per-run private directory: inventory, extra vars, key file.
//!
//! One temporary directory (mode 0700) per playbook run holds everything the run must
//! not share: the inventory, the extra vars, the private key (0600 from
//! creation), `known_hosts`, `cp/` for SSH ControlPath sockets, and
//! `events.jsonl` for live progress. Dropping
//! the [`Workspace`] removes it, on every path: success, error, panic, or the
//! run's future being dropped; the ControlMasters still in `cp/` (the SSH
//! probe's, when no playbook ran after it) are told to exit first.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use serde_json::json;

use super::masters;
use super::run::SshTarget;
use super::tree;
use super::vars::unsafe_yaml;

/// Unix socket paths are limited to 108 bytes and ssh appends a 40-char hash
/// plus a temporary suffix under `cp/`, so a longer `$TMPDIR` is not used.
const MAX_BASE_DIR_LEN: usize = 32;

/// The run's private directory and the paths of the files in it.
#[derive(Debug)]
pub struct Workspace {
    /// Made by `tempfile`, removed by our own `Drop` (see there).
    dir: PathBuf,
    /// When it was made, in [`tree::boot_ticks_now`]'s ticks: the run's
    /// processes start no earlier.
    created: u64,
}

impl Workspace {
    /// Creates the directory and writes the files of the target: key,
    /// known_hosts, inventory. Each run writes its own extra vars
    /// ([`Workspace::write_extra_vars`]).
    pub(crate) fn create(target: &SshTarget) -> io::Result<Workspace> {
        let dir = tempfile::Builder::new()
            .prefix("ia-")
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(base_dir())?
            .keep();
        let workspace = Workspace {
            created: tree::boot_ticks_now(),
            dir,
        };
        DirBuilder::new()
            .mode(0o700)
            .create(workspace.control_path_dir())?;
        if let Some(key) = &target.private_key {
            write_private(
                &workspace.key_path(),
                &with_final_newline(key.expose_secret()),
            )?;
        }
        if let Some(lines) = &target.known_hosts {
            write_private(&workspace.known_hosts_path(), &with_final_newline(lines))?;
        }
        let inventory = workspace.inventory(target).to_string();
        write_private(&workspace.inventory_path(), &inventory)?;
        Ok(workspace)
    }

    /// When it was made ([`tree::boot_ticks_now`]).
    pub(crate) fn created(&self) -> u64 {
        self.created
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `inventory.json`, read by Ansible's yaml inventory plugin.
    pub(crate) fn inventory_path(&self) -> PathBuf {
        self.path().join("inventory.json")
    }

    /// `vars.yml`, passed as `-e @vars.yml`: every string `!unsafe`
    /// (see `vars`).
    pub(crate) fn vars_path(&self) -> PathBuf {
        self.path().join("vars.yml")
    }

    /// `events.jsonl`, where the `infra_events` plugin appends progress.
    pub(crate) fn events_path(&self) -> PathBuf {
        self.path().join("events.jsonl")
    }

    /// Creates the (empty, 0600) events file for a run whose progress is
    /// followed; the plugin only appends to it.
    pub(crate) fn create_events_file(&self) -> io::Result<PathBuf> {
        let path = self.events_path();
        // A second run in the same directory starts from an empty file.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        write_private(&path, "")?;
        Ok(path)
    }

    /// Where the plugin writes the play's `set_stats` data; emptied first,
    /// so a second run in the same directory reads only its own.
    pub(crate) fn reset_stats_file(&self) -> io::Result<PathBuf> {
        let path = self.path().join("stats.json");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(path),
        }
    }

    /// Where ssh keeps its ControlPath sockets for this run.
    pub(crate) fn control_path_dir(&self) -> PathBuf {
        self.path().join("cp")
    }

    /// The ControlPath of every ssh of the run, probe and playbook alike:
    /// `cp/%C`, which ssh expands to a hash of the local host name and the
    /// remote host, port and user, so the playbook finds the probe's master.
    pub fn control_path(&self) -> PathBuf {
        self.control_path_dir().join("%C")
    }

    /// Writes a run's extra vars, replacing the previous run's: a JSON
    /// object, written as YAML with every string `!unsafe`.
    pub(crate) fn write_extra_vars(&self, extra_vars: &serde_json::Value) -> io::Result<()> {
        if !extra_vars.is_object() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "extra vars must be a JSON object",
            ));
        }
        let path = self.vars_path();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        write_private(&path, &unsafe_yaml(extra_vars))
    }

    /// The private key file, if the target has a key.
    pub fn key_file(&self) -> Option<PathBuf> {
        Some(self.key_path()).filter(|path| path.exists())
    }

    /// The host keys ssh accepted or was given, as known_hosts lines.
    pub fn known_hosts(&self) -> Option<String> {
        std::fs::read_to_string(self.known_hosts_path())
            .ok()
            .filter(|text| !text.trim().is_empty())
    }

    fn key_path(&self) -> PathBuf {
        self.path().join("id_key")
    }

    /// The run's own known_hosts file.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.path().join("known_hosts")
    }

    /// `{"all":{"hosts":{name:{...}}}}` for the one target.
    fn inventory(&self, target: &SshTarget) -> serde_json::Value {
        let mut host = json!({
            "ansible_host": target.address,
            "ansible_port": target.port,
            "ansible_user": target.user,
            "ansible_ssh_common_args": self.ssh_common_args(target),
        });
        if target.private_key.is_some() {
            host["ansible_ssh_private_key_file"] = json!(self.key_path());
        }
        json!({"all": {"hosts": {target.name.as_str(): host}}})
    }

    /// Host keys live in the run's own file: accepted on first sight, or, when
    /// the caller pinned them, required to match. The ControlPath is named
    /// here, not left to `control_path` in ansible.cfg, so the probe's and
    /// the playbook's agree whatever the operator's configuration says.
    fn ssh_common_args(&self, target: &SshTarget) -> String {
        let strict = if target.known_hosts.is_some() {
            "yes"
        } else {
            "accept-new"
        };
        format!(
            "-o UserKnownHostsFile={} -o StrictHostKeyChecking={strict} \
             -o IdentitiesOnly=yes -o BatchMode=yes -o ControlPath={}",
            self.known_hosts_path().display(),
            self.control_path().display()
        )
    }
}

impl Drop for Workspace {
    /// Before `cp/` goes: a master left there (the probe's, when the job
    /// ended before any playbook) is asked to exit, or it would linger for
    /// its ControlPersist. Without sockets this is one `read_dir`.
    ///
    /// Removed here rather than by a `TempDir`, which gives up silently: a
    /// socket made while the directory was being removed (an ssh of a
    /// cancelled run still winding down) left the directory behind, `cp/`
    /// empty once that master exited. One more close and try.
    fn drop(&mut self) {
        for attempt in 1..=2 {
            masters::close_control_masters_blocking(&self.control_path_dir());
            match std::fs::remove_dir_all(self.path()) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if attempt == 2 => {
                    tracing::warn!(dir = %self.path().display(), error.message = %e, "cannot remove a run directory");
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
}

/// `$TMPDIR` when it is short and has no blanks (the ssh options above are
/// split on whitespace), else `/tmp`.
fn base_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    let text = tmp.to_string_lossy();
    if text.len() <= MAX_BASE_DIR_LEN && !text.contains(char::is_whitespace) {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

/// ssh refuses a key file without a final newline.
fn with_final_newline(text: &str) -> String {
    let mut owned = text.to_owned();
    if !owned.ends_with('\n') {
        owned.push('\n');
    }
    owned
}

/// Writes a new file that is 0600 from its creation: never readable by
/// others, not even between `open` and a later `chmod`.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // No fsync: the files live only as long as the run, and a child reads
    // them through the page cache; forcing them (the key among them) to
    // disk only blocked a runtime thread on I/O.
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::os::unix::fs::MetadataExt;

    fn target(key: Option<&str>, known_hosts: Option<&str>) -> SshTarget {
        SshTarget {
            name: "203.0.113.10".into(),
            address: "203.0.113.10".into(),
            port: 2222,
            user: "deploy".into(),
            private_key: key.map(SecretString::from),
            known_hosts: known_hosts.map(str::to_owned),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_directory_is_private_and_removed_on_drop() {
        let ws = Workspace::create(&target(None, None)).unwrap();
        let path = ws.path().to_owned();
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&ws.control_path_dir()), 0o700);
        assert!(path.to_string_lossy().len() < 48, "{}", path.display());
        drop(ws);
        assert!(!path.exists());
    }

    #[test]
    fn the_inventory_names_the_host_and_its_ssh_settings() {
        let ws = Workspace::create(&target(Some("KEY"), None)).unwrap();
        let inventory = read_json(&ws.inventory_path());
        let host = &inventory["all"]["hosts"]["203.0.113.10"];
        assert_eq!(host["ansible_host"], "203.0.113.10");
        assert_eq!(host["ansible_port"], 2222);
        assert_eq!(host["ansible_user"], "deploy");
        let key = ws.path().join("id_key");
        assert_eq!(host["ansible_ssh_private_key_file"], json!(key));
        let args = host["ansible_ssh_common_args"].as_str().unwrap();
        let known_hosts = ws.path().join("known_hosts");
        assert!(args.contains(&format!("UserKnownHostsFile={}", known_hosts.display())));
        assert!(args.contains("StrictHostKeyChecking=accept-new"));
        assert!(args.contains("IdentitiesOnly=yes") && args.contains("BatchMode=yes"));
        let control_path = ws.path().join("cp/%C");
        assert!(args.contains(&format!("ControlPath={}", control_path.display())));
        assert_eq!(ws.control_path(), control_path);
        assert!(!known_hosts.exists());
    }

    #[test]
    fn the_key_is_0600_and_ends_in_a_newline() {
        let ws = Workspace::create(&target(Some("-----KEY-----"), None)).unwrap();
        let key = ws.path().join("id_key");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(key).unwrap(), "-----KEY-----\n");
    }

    #[test]
    fn without_a_key_no_key_file_is_named_or_written() {
        let ws = Workspace::create(&target(None, None)).unwrap();
        let inventory = read_json(&ws.inventory_path());
        let host = &inventory["all"]["hosts"]["203.0.113.10"];
        assert!(host.get("ansible_ssh_private_key_file").is_none());
        assert!(!ws.path().join("id_key").exists());
    }

    #[test]
    fn pinned_host_keys_are_written_and_required() {
        let line = "203.0.113.10 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample";
        let ws = Workspace::create(&target(None, Some(line))).unwrap();
        let written = std::fs::read_to_string(ws.path().join("known_hosts")).unwrap();
        assert_eq!(written, format!("{line}\n"));
        let inventory = read_json(&ws.inventory_path());
        let args = inventory["all"]["hosts"]["203.0.113.10"]["ansible_ssh_common_args"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(args.contains("StrictHostKeyChecking=yes"), "{args}");
    }

    #[test]
    fn extra_vars_are_written_as_unsafe_yaml_and_must_be_an_object() {
        let vars = json!({"project_name": "my-project", "port": 8080});
        let ws = Workspace::create(&target(None, None)).unwrap();
        ws.write_extra_vars(&vars).unwrap();
        let written = std::fs::read_to_string(ws.vars_path()).unwrap();
        assert_eq!(written, super::unsafe_yaml(&vars));
        assert_eq!(mode(&ws.vars_path()), 0o600);
        let err = ws.write_extra_vars(&json!([1])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
