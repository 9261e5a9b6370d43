//! The five measurements of `make bench` (README, "Performance"), one
//! module each, and what they share: the stub's PLAY RECAP, the Ansible
//! directories and the workers' settings. Each item returns its figures;
//! every figure holds one value per run, and ratios are taken within a run.

mod ansible;
mod concurrency;
mod controller;
mod dispatch;
mod memory;

pub use ansible::ansible_cost;
pub use concurrency::concurrency;
pub use controller::controller;
pub use dispatch::dispatch;
pub use memory::memory;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::host::TestHost;
use crate::rig::{Rig, Worker, q};

/// What the stubs print: a successful PLAY RECAP, as `sh` lines.
const RECAP: &str = "echo 'PLAY RECAP *********************************************************'\n\
    echo 'localhost : ok=1 changed=0 unreachable=0 failed=0 skipped=0 rescued=0 ignored=0'\n";
/// KiB (what `/proc` reports) per MiB (what the table shows).
const MIB: f64 = 1024.0;

/// A worker's settings, as `Rig::worker` takes them.
type Settings = Vec<(&'static str, String)>;

/// The repository's `ansible/ansible.cfg`, as shipped.
fn shipped_cfg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/ansible.cfg")
}

/// An Ansible directory with the bench playbooks, with the shipped
/// ansible.cfg and warm controller (`controller/`, where a worker starts it
/// from) or neither (Ansible's defaults).
fn ansible_dir(rig: &Rig, shipped: bool) -> PathBuf {
    let dir = rig.path(if shipped {
        "ansible-shipped"
    } else {
        "ansible-defaults"
    });
    std::fs::create_dir_all(&dir).expect("ansible dir");
    let playbooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ansible");
    for entry in std::fs::read_dir(playbooks).expect("benches/ansible") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy playbook");
    }
    if shipped {
        std::fs::copy(shipped_cfg(), dir.join("ansible.cfg")).expect("copy ansible.cfg");
        let controller = Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/controller");
        copy_tree(&controller, &dir.join("controller"));
    }
    dir
}

/// Copies the files under `from` (if it exists) to `to`, subdirectories
/// included.
fn copy_tree(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    std::fs::create_dir_all(to).expect("create dir");
    for entry in entries {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// What every item sets: the worker's slots, the program it runs as
/// `ansible-playbook`, and the playbook a deploy runs.
fn run_settings(concurrency: usize, bin: &str, dir: &Path, playbook: &str) -> Settings {
    vec![
        ("worker.concurrency", concurrency.to_string()),
        ("ansible.playbook_bin", q(bin)),
        ("ansible.dir", q(&dir.to_string_lossy())),
        ("ansible.deploy_playbook", q(playbook)),
    ]
}

/// A worker running `stub` for every job, without the SSH preflight: the
/// probe is a real `ssh ... true` and would measure SSH, not the worker.
fn stub_settings(concurrency: usize, stub: &Path, dir: &Path) -> Settings {
    let mut settings = run_settings(concurrency, &stub.to_string_lossy(), dir, "noop.yml");
    settings.push(("ssh.preflight", "false".into()));
    // A stub is not Ansible: the warm controller would not run it.
    settings.push(("ansible.controller", q("cold")));
    settings
}

/// A worker running the real `ansible-playbook` over SSH to `sshd`, in the
/// default `ansible.controller` (warm) on the same interpreter.
fn ssh_settings(
    rig: &Rig,
    sshd: &TestHost,
    concurrency: usize,
    dir: &Path,
    playbook: &str,
) -> Settings {
    let mut settings = ssh_target(sshd);
    settings.extend(run_settings(
        concurrency,
        &rig.ansible_playbook,
        dir,
        playbook,
    ));
    settings.push(("ansible.python", q(&rig.python)));
    settings
}

/// Settings pointing a worker at `sshd` with its client key.
fn ssh_target(sshd: &TestHost) -> Settings {
    vec![
        ("ansible.ssh_port", sshd.port().to_string()),
        ("ansible.ssh_user", q(sshd.user())),
        ("ansible.ssh_key_ref", q("file:ssh/id_ed25519")),
        ("ssh.retry_base_ms", "100".into()),
        ("ssh.connect_timeout_secs", "10".into()),
    ]
}

/// Starts a worker with `settings` and gives it `sshd`'s client key, under
/// the name `ssh_target` refers to (a secret is read when a job needs it).
async fn ssh_worker(rig: &mut Rig, sshd: &TestHost, settings: &[(&str, String)]) -> Worker {
    let worker = rig.worker(settings).await;
    Worker::secret(
        &worker.dir,
        "ssh/id_ed25519",
        &sshd.client_private_key_pem(),
    );
    worker
}

/// Counts the results that are not a success, and reports the first: a
/// figure measured over failing jobs would be a figure of the failure.
fn check_success(what: &str, results: &[(f64, Value)]) -> usize {
    let failed: Vec<&Value> = results
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["status"] != "success")
        .collect();
    if let Some(first) = failed.first() {
        eprintln!(
            "{what}: {} of {} jobs failed; first: {}",
            failed.len(),
            results.len(),
            first["error"]
        );
    }
    failed.len()
}
