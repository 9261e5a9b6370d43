//! Spawning and supervising one `ansible-playbook` child.
//!
//! Owns the child's command line (nothing secret in it), its environment
//! (cleared, then an allowlist, then the job's secrets), its end (on timeout
//! or when the run's future is dropped: SIGTERM to its process group and to
//! every process of its [`RunTree`], SIGKILL after the grace; after any end:
//! its ControlMasters told to exit, leftovers killed and reaped), and the
//! reading of its output into a [`PlaybookOutcome`], and the following of its
//! progress events (see `events`) while it runs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::Instant;

use super::events::{self, EventSink, EventTail};
use super::output::{LineReader, OutputTail, TAIL_BYTES};
use super::recap::RecapScanner;
use super::tree::{self, Proc, RunTree};
use super::workspace::Workspace;

use crate::config::AnsibleSettings;
use crate::job::{FailedTask, HostStats};
use crate::secrets::Redactor;

/// How to reach the one host of the run.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Inventory host name; keys `stats`.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key text, written 0600 inside the run's private directory only.
    pub private_key: Option<SecretString>,
    /// Pinned `known_hosts` lines. When set, they are the only keys accepted
    /// (`StrictHostKeyChecking=yes`); when `None`, the first key seen is
    /// accepted (`accept-new`) into a file that lives only for this run.
    pub known_hosts: Option<String>,
}

/// Everything one playbook run needs.
#[derive(Debug)]
pub struct PlaybookRun {
    /// Relative to `ansible.dir` (or absolute).
    pub playbook: PathBuf,
    pub target: SshTarget,
    /// A JSON object; written to a file and passed as `-e @file`.
    pub extra_vars: serde_json::Value,
    /// Secrets handed to the child as environment variables only.
    pub secret_env: Vec<(String, SecretString)>,
    pub timeout: Duration,
    /// Where task progress goes while the playbook runs; `None`: not followed.
    pub events: Option<EventSink>,
}

/// What a finished (or killed) run left behind.
#[derive(Debug, Clone)]
pub struct PlaybookOutcome {
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Last 64 KiB of stdout+stderr, redacted.
    pub output_tail: String,
    /// `None` if no PLAY RECAP was printed.
    pub stats: Option<BTreeMap<String, HostStats>>,
    pub failed_task: Option<FailedTask>,
    pub duration: Duration,
}

impl PlaybookOutcome {
    /// True when the playbook ran to the end with no failed or unreachable host
    /// (`ansible-playbook` exited 0 and was not stopped at its timeout).
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// Failures to run the playbook at all (not failures inside it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preparing the run directory: {0}")]
    Workspace(#[source] std::io::Error),
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for ansible-playbook: {0}")]
    Wait(#[source] std::io::Error),
}

/// Worker variables the child inherits by name (besides every `ANSIBLE_*`).
const INHERITED_VARS: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME"];

/// After the child exits, how long its pipes may stay open before we stop
/// reading (a process that left the group could hold them forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the events file is read while the playbook runs.
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// Runs playbooks with the configured binary and content directory.
#[derive(Debug, Clone)]
pub struct Runner {
    settings: AnsibleSettings,
    kill_grace: Duration,
    /// Stands in for the worker's environment in tests; `None` reads the real
    /// one at each run.
    worker_env: Option<Vec<(OsString, OsString)>>,
}

impl Runner {
    /// A runner for `settings`; a timed-out playbook gets `kill_grace` between
    /// SIGTERM and SIGKILL.
    pub fn new(settings: AnsibleSettings, kill_grace: Duration) -> Runner {
        Runner {
            settings,
            kill_grace,
            worker_env: None,
        }
    }

    /// Runs one playbook to its end, its timeout, or the drop of this future.
    #[tracing::instrument(skip_all, fields(
        playbook = %run.playbook.display(),
        host = %run.target.name,
        timeout_ms = run.timeout.as_millis() as u64,
    ))]
    pub async fn run(
        &self,
        run: PlaybookRun,
        redactor: &Redactor,
    ) -> Result<PlaybookOutcome, RunError> {
        let workspace = self.workspace(&run)?;
        self.run_observed(&workspace, run, redactor, |_, _| {})
            .await
    }

    /// The run's private directory, for a caller that needs its key and
    /// known_hosts before and after the playbook (SSH probe, host key pin).
    pub fn workspace(&self, run: &PlaybookRun) -> Result<Workspace, RunError> {
        let workspace =
            Workspace::create(&run.target, &run.extra_vars).map_err(RunError::Workspace)?;
        tracing::debug!(dir = %workspace.path().display(), "run directory ready");
        Ok(workspace)
    }

    /// [`Runner::run`] in a directory from [`Runner::workspace`] for the
    /// same `run`.
    pub async fn run_in(
        &self,
        workspace: &Workspace,
        run: PlaybookRun,
        redactor: &Redactor,
    ) -> Result<PlaybookOutcome, RunError> {
        self.run_observed(workspace, run, redactor, |_, _| {}).await
    }

    /// [`Runner::run_in`], telling `observe` the run directory and process
    /// group once the child started (tests check both are gone afterwards).
    async fn run_observed(
        &self,
        workspace: &Workspace,
        run: PlaybookRun,
        redactor: &Redactor,
        observe: impl FnOnce(&Path, i32),
    ) -> Result<PlaybookOutcome, RunError> {
        let started = Instant::now();
        let ansible_dir = std::path::absolute(&self.settings.dir).map_err(RunError::Workspace)?;
        let progress = self.follow_events(&run, &ansible_dir, workspace, redactor);

        let mut child = self
            .command(&run, &ansible_dir, workspace, progress.as_ref())
            .spawn()
            .map_err(|source| RunError::Spawn {
                bin: self.settings.playbook_bin.clone(),
                source,
            })?;
        let pgid = child_pgid(&child)?;
        let root = Proc::of(pgid)
            .ok_or_else(|| RunError::Wait(std::io::Error::other("the playbook is not in /proc")))?;
        // Declared after `child` so it is dropped first: the group is killed
        // while its leader's pid is still ours (not yet reaped).
        let mut guard = RunGuard {
            pgid,
            tree: Some(RunTree::new(root, workspace.path())),
            control_path_dir: workspace.control_path_dir(),
            kill_grace: self.kill_grace,
            armed: true,
        };
        observe(workspace.path(), pgid);
        tracing::info!(pid = pgid, "playbook started");

        let mut output = Output::new(&mut child, redactor.longest_needle());
        output.events = progress.map(|(_, tail)| tail);
        let tree = guard.tree.as_mut().expect("taken only on drop");
        let (status, timed_out) = supervise(
            &mut child,
            &mut output,
            pgid,
            tree,
            run.timeout,
            self.kill_grace,
        )
        .await?;
        // The playbook is gone. Its ControlMasters are asked to exit before
        // their sockets' directory goes; whatever else it left (in its group
        // or in sessions of their own) is killed and reaped.
        tree::close_control_masters(&workspace.control_path_dir()).await;
        let tree = guard.tree.as_mut().expect("taken only on drop");
        tree.collect(false);
        signal_group(pgid, libc::SIGKILL);
        tree.signal(libc::SIGKILL);
        tree.reap().await;
        reap_adopted(pgid).await;
        guard.armed = false;
        output.drain().await;
        // The plugin's last lines were written before the playbook exited.
        output.poll_events();

        let (stats, failed_task) = output.scanner.finish(redactor);
        let outcome = PlaybookOutcome {
            exit_code: status.code(),
            timed_out,
            output_tail: output.tail.finish(redactor),
            stats,
            failed_task,
            duration: started.elapsed(),
        };
        tracing::info!(
            exit_code = outcome.exit_code,
            timed_out,
            succeeded = outcome.succeeded(),
            duration_ms = outcome.duration.as_millis() as u64,
            failed_host = outcome.failed_task.as_ref().map(|f| f.host.as_str()),
            "playbook finished"
        );
        Ok(outcome)
    }

    /// When the run wants its progress and the plugin is installed: the
    /// plugin's directory and a tail of the run's new events file.
    fn follow_events(
        &self,
        run: &PlaybookRun,
        ansible_dir: &Path,
        workspace: &Workspace,
        redactor: &Redactor,
    ) -> Option<(EventsPlugin, EventTail)> {
        let sink = run.events.clone()?;
        let plugin_dir = ansible_dir.join(events::PLUGIN_DIR);
        if !plugin_dir
            .join(format!("{}.py", events::PLUGIN_NAME))
            .is_file()
        {
            tracing::debug!(dir = %plugin_dir.display(), "no events plugin; progress not followed");
            return None;
        }
        let followed = workspace.create_events_file().and_then(|file| {
            let tail = EventTail::open(&file, sink, redactor.clone())?;
            Ok((EventsPlugin { plugin_dir, file }, tail))
        });
        match followed {
            Ok(followed) => Some(followed),
            Err(e) => {
                // Progress is a convenience: the job runs without it.
                tracing::warn!(error.message = %e, "cannot create the events file; progress not followed");
                None
            }
        }
    }

    /// `<bin> -i inventory.json -e @vars.json <playbook>` in the Ansible dir,
    /// with a cleared environment.
    fn command(
        &self,
        run: &PlaybookRun,
        ansible_dir: &Path,
        workspace: &Workspace,
        progress: Option<&(EventsPlugin, EventTail)>,
    ) -> Command {
        let mut vars_arg = OsString::from("@");
        vars_arg.push(workspace.vars_path());
        let mut command = Command::new(&self.settings.playbook_bin);
        command
            .arg("-i")
            .arg(workspace.inventory_path())
            .arg("-e")
            .arg(vars_arg)
            .arg(ansible_dir.join(&run.playbook))
            .current_dir(ansible_dir)
            .env_clear()
            .envs(child_env(
                self.worker_env(),
                Some(ansible_dir.join("ansible.cfg")).filter(|cfg| cfg.is_file()),
                &workspace.control_path_dir(),
                progress.map(|(plugin, _)| plugin),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so the playbook and every fork are signalled together.
            .process_group(0)
            .kill_on_drop(true);
        // Secret values reach the child here and nowhere else.
        for (name, value) in &run.secret_env {
            command.env(name, value.expose_secret());
        }
        tracing::debug!(secret_env = run.secret_env.len(), "command prepared");
        command
    }

    fn worker_env(&self) -> Vec<(OsString, OsString)> {
        match &self.worker_env {
            Some(env) => env.clone(),
            None => std::env::vars_os().collect(),
        }
    }
}

/// Where the `infra_events` plugin is and the file it writes to.
#[derive(Debug)]
struct EventsPlugin {
    plugin_dir: PathBuf,
    file: PathBuf,
}

/// The child's environment, secrets aside: the allowlisted worker variables,
/// every `ANSIBLE_*` of the worker (operators tune Ansible that way), our
/// defaults where the operator set none, and, when progress is followed, the
/// events plugin added to (not replacing) the operator's callbacks.
fn child_env(
    worker_env: Vec<(OsString, OsString)>,
    ansible_cfg: Option<PathBuf>,
    control_path_dir: &Path,
    events: Option<&EventsPlugin>,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = worker_env
        .into_iter()
        .filter(|(name, _)| {
            name.to_str()
                .is_some_and(|name| INHERITED_VARS.contains(&name) || name.starts_with("ANSIBLE_"))
        })
        .collect();
    if let Some(cfg) = ansible_cfg {
        env.entry("ANSIBLE_CONFIG".into()).or_insert(cfg.into());
    }
    // Colour codes would break the recap parsing; retry files would litter.
    env.entry("ANSIBLE_NOCOLOR".into()).or_insert("1".into());
    env.entry("ANSIBLE_RETRY_FILES_ENABLED".into())
        .or_insert("0".into());
    // Output arrives as it happens, not in 4 KiB blocks at exit.
    env.insert("PYTHONUNBUFFERED".into(), "1".into());
    env.insert(
        "ANSIBLE_SSH_CONTROL_PATH_DIR".into(),
        control_path_dir.into(),
    );
    if let Some(events) = events {
        // A notification callback: the stdout callback, whose output the
        // recap scanner reads, stays whatever it was.
        append_list(
            &mut env,
            "ANSIBLE_CALLBACKS_ENABLED",
            ",",
            events::PLUGIN_NAME.as_ref(),
        );
        prepend_list(
            &mut env,
            "ANSIBLE_CALLBACK_PLUGINS",
            ":",
            events.plugin_dir.as_os_str(),
        );
        env.insert(events::EVENTS_FILE_VAR.into(), events.file.clone().into());
    }
    env
}

/// `name=item`, or `name=<old><sep>item` when the operator set it.
fn append_list(
    env: &mut BTreeMap<OsString, OsString>,
    name: &str,
    sep: &str,
    item: &std::ffi::OsStr,
) {
    let value = env.entry(name.into()).or_default();
    if !value.is_empty() {
        value.push(sep);
    }
    value.push(item);
}

/// `name=item`, or `name=item<sep><old>` when the operator set it.
fn prepend_list(
    env: &mut BTreeMap<OsString, OsString>,
    name: &str,
    sep: &str,
    item: &std::ffi::OsStr,
) {
    let mut value = OsString::from(item);
    if let Some(old) = env
        .get(std::ffi::OsStr::new(name))
        .filter(|old| !old.is_empty())
    {
        value.push(sep);
        value.push(old);
    }
    env.insert(name.into(), value);
}

fn child_pgid(child: &Child) -> Result<i32, RunError> {
    let pid = child.id().ok_or_else(|| {
        RunError::Wait(std::io::Error::other(
            "the child was reaped before its pid was read",
        ))
    })?;
    i32::try_from(pid).map_err(|_| RunError::Wait(std::io::Error::other("pid out of range")))
}

/// Waits for the child while reading its output. At `timeout`: collects the
/// run's processes, sends them and the group SIGTERM, and waits until all are
/// gone or `kill_grace` passed; then collects again and sends SIGKILL.
/// Returns the exit status and whether the timeout struck.
async fn supervise(
    child: &mut Child,
    output: &mut Output,
    pgid: i32,
    tree: &mut RunTree,
    timeout: Duration,
    kill_grace: Duration,
) -> Result<(ExitStatus, bool), RunError> {
    let mut phase = Phase::Running;
    let mut status = None;
    let mut events_tick = tokio::time::interval(EVENTS_POLL);
    events_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let alarm = tokio::time::sleep(timeout);
    tokio::pin!(alarm);
    loop {
        if let Some(status) = status {
            match phase {
                Phase::Running => return Ok((status, false)),
                Phase::Terminating if !tree.all_gone() => {}
                Phase::Terminating | Phase::Killed => return Ok((status, true)),
            }
        }
        tokio::select! {
            chunk = output.stdout.next_line(), if !output.stdout_done => output.take(chunk, Stream::Stdout),
            chunk = output.stderr.next_line(), if !output.stderr_done => output.take(chunk, Stream::Stderr),
            exited = child.wait(), if status.is_none() => status = Some(exited.map_err(RunError::Wait)?),
            _ = events_tick.tick(), if output.events.is_some() => output.poll_events(),
            // The playbook exited within its grace: look again whether its
            // other processes did too.
            () = tokio::time::sleep(tree::POLL), if status.is_some() => {}
            () = &mut alarm, if phase != Phase::Killed => {
                // Before any signal: a killed parent's children move away.
                tree.collect(status.is_none());
                phase = match phase {
                    Phase::Running => {
                        tracing::warn!(pgid, grace_ms = kill_grace.as_millis() as u64,
                            "playbook timed out; sending SIGTERM to its process group and every process of the run");
                        signal_group(pgid, libc::SIGTERM);
                        tree.signal(libc::SIGTERM);
                        alarm.as_mut().reset(Instant::now() + kill_grace);
                        Phase::Terminating
                    }
                    Phase::Terminating | Phase::Killed => {
                        tracing::warn!(pgid, "playbook outlived its grace; sending SIGKILL");
                        if status.is_none() {
                            // Only while the leader is unreaped is the id surely still ours.
                            signal_group(pgid, libc::SIGKILL);
                        }
                        tree.signal(libc::SIGKILL);
                        Phase::Killed
                    }
                };
            }
        }
    }
}

/// Where a timed-out run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Terminating,
    Killed,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Both pipes and what their lines feed (the tail and the recap scanner),
/// and the events file when progress is followed.
struct Output {
    stdout: LineReader<ChildStdout>,
    stderr: LineReader<ChildStderr>,
    stdout_done: bool,
    stderr_done: bool,
    tail: OutputTail,
    scanner: RecapScanner,
    events: Option<EventTail>,
}

impl Output {
    /// `margin`: the longest secret needle, kept beyond the tail until redaction.
    fn new(child: &mut Child, margin: usize) -> Output {
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Output {
            stdout: LineReader::new(stdout),
            stderr: LineReader::new(stderr),
            stdout_done: false,
            stderr_done: false,
            tail: OutputTail::new(TAIL_BYTES, margin),
            scanner: RecapScanner::new(),
            events: None,
        }
    }

    /// Hands on the progress events written since the last look.
    fn poll_events(&mut self) {
        if let Some(events) = &mut self.events {
            events.poll();
        }
    }

    fn take(&mut self, chunk: Option<Vec<u8>>, stream: Stream) {
        let Some(chunk) = chunk else {
            match stream {
                Stream::Stdout => self.stdout_done = true,
                Stream::Stderr => self.stderr_done = true,
            }
            return;
        };
        let text = String::from_utf8_lossy(&chunk);
        self.tail.push(&text);
        self.scanner
            .push_line(text.trim_end_matches('\n').trim_end_matches('\r'));
    }

    /// Reads what is left in the pipes, for at most [`DRAIN_TIMEOUT`].
    async fn drain(&mut self) {
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while !(self.stdout_done && self.stderr_done) {
                tokio::select! {
                    chunk = self.stdout.next_line(), if !self.stdout_done => self.take(chunk, Stream::Stdout),
                    chunk = self.stderr.next_line(), if !self.stderr_done => self.take(chunk, Stream::Stderr),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("playbook output still open after exit; a process left its group");
        }
    }
}

/// Ends the run unless disarmed: the drop of the `run` future (cancellation)
/// must not leave any of its processes running.
///
/// Here, at once: the run's processes are collected, they and the group get
/// SIGTERM, and the ControlMasters are told to exit (blocking, at most a few
/// seconds, while their sockets still exist). Tokio's `kill_on_drop` then
/// SIGKILLs the playbook itself. A thread of its own waits up to the grace,
/// SIGKILLs what is left and reaps it ([`tree::finish_cleanups`] waits for
/// it).
struct RunGuard {
    pgid: i32,
    /// Taken by the drop.
    tree: Option<RunTree>,
    control_path_dir: PathBuf,
    kill_grace: Duration,
    armed: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let Some(mut tree) = self.tree.take().filter(|_| self.armed) else {
            return;
        };
        let (pgid, kill_grace) = (self.pgid, self.kill_grace);
        tracing::warn!(pgid, "run abandoned; terminating its processes");
        // The future may have been dropped after tokio reaped the playbook.
        let unreaped = tree.root_unreaped();
        tree.collect(unreaped);
        if unreaped {
            signal_group(pgid, libc::SIGTERM);
        }
        tree.signal(libc::SIGTERM);
        tree::close_control_masters_blocking(&self.control_path_dir);
        tree::spawn_cleanup(move || {
            let deadline = std::time::Instant::now() + kill_grace;
            while !tree.all_gone() && std::time::Instant::now() < deadline {
                std::thread::sleep(tree::POLL);
            }
            // The playbook is SIGKILLed and reaped by tokio meanwhile, so its
            // group id is no longer ours to signal: pids only from here.
            tree.collect(false);
            if !tree.all_gone() {
                tracing::warn!(
                    pgid,
                    "processes of an abandoned run outlived the grace; sending SIGKILL"
                );
                tree.signal(libc::SIGKILL);
            }
            tree.reap_blocking();
            tree::reap_adopted_orphans();
        });
    }
}

/// Sends `signal` to every process of the group; false if none was left.
fn signal_group(pgid: i32, signal: libc::c_int) -> bool {
    // A negative pid addresses the group whose leader we spawned; that id
    // is not reused while any member (or the unreaped leader) exists.
    tree::send_signal(-pgid, signal)
}

/// Reaps members of the group that became our children: orphans are
/// re-parented to us when this process is a child subreaper (or PID 1).
/// Otherwise there are none and this returns at once.
async fn reap_adopted(pgid: i32) {
    for _ in 0..100 {
        let mut status = 0;
        // SAFETY: waitpid(2) writes only to `status`. It only reaps processes
        // of this run's group, whose leader tokio has already reaped, so no
        // `Child` handle is robbed of its status.
        let reaped = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        match reaped {
            0 => tokio::time::sleep(Duration::from_millis(10)).await,
            pid if pid > 0 => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Mutex, Once};

    use serde_json::json;
    use tempfile::TempDir;

    const TOKEN: &str = "ghp_TestTokenValue0123456789";

    /// Orphaned group members must come back to this test process to be
    /// reaped: here PID 1 may not reap, and a zombie still counts as a
    /// member for `kill(-pgid, 0)`.
    fn become_subreaper() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| tree::become_subreaper().expect("prctl(PR_SET_CHILD_SUBREAPER)"));
    }

    /// An Ansible dir holding `bin/fake-playbook` (the given shell body) and
    /// a runner that uses it.
    struct Fixture {
        dir: TempDir,
        runner: Runner,
    }

    impl Fixture {
        fn new(script_body: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("fake-playbook");
            std::fs::write(&bin, format!("#!/bin/sh\n{script_body}\n")).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            let settings = AnsibleSettings {
                dir: dir.path().to_owned(),
                playbook_bin: bin.to_string_lossy().into_owned(),
                deploy_playbook: "playbooks/deploy_project.yml".into(),
                provision_playbook: "playbooks/setup_server.yml".into(),
                recovery_playbook: "playbooks/recovery.yml".into(),
                ssh_port: 22,
                ssh_user: "root".into(),
                ssh_key_ref: None,
            };
            let runner = Runner::new(settings, Duration::from_millis(300));
            Fixture { dir, runner }
        }

        fn out(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Runs and returns the outcome, the run directory and the group id.
        async fn run(&self, run: PlaybookRun) -> (PlaybookOutcome, PathBuf, i32) {
            let seen = Mutex::new(None);
            let redactor = Redactor::new(run.secret_env.iter().map(|(_, v)| v));
            let workspace = self.runner.workspace(&run).unwrap();
            let outcome = self
                .runner
                .run_observed(&workspace, run, &redactor, |dir, pgid| {
                    *seen.lock().unwrap() = Some((dir.to_owned(), pgid));
                })
                .await
                .unwrap();
            drop(workspace);
            let (dir, pgid) = seen.into_inner().unwrap().unwrap();
            (outcome, dir, pgid)
        }
    }

    fn playbook_run(timeout: Duration) -> PlaybookRun {
        PlaybookRun {
            playbook: "playbooks/site.yml".into(),
            target: SshTarget {
                name: "web1".into(),
                address: "127.0.0.1".into(),
                port: 22,
                user: "deploy".into(),
                private_key: Some(SecretString::from("-----FAKE KEY-----")),
                known_hosts: None,
            },
            extra_vars: json!({"project_name": "demo"}),
            secret_env: vec![("DEPLOY_TOKEN".into(), SecretString::from(TOKEN))],
            timeout,
            events: None,
        }
    }

    fn group_is_gone(pgid: i32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        let rc = unsafe { libc::kill(-pgid, 0) };
        rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }

    #[tokio::test]
    async fn the_secret_reaches_the_env_but_not_the_argv_and_the_run_dir_is_removed() {
        let fx = Fixture::new("printf '%s\\n' \"$@\" > \"$PWD/argv\"; env > \"$PWD/env\"");
        let (outcome, run_dir, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        let argv = std::fs::read_to_string(fx.out("argv")).unwrap();
        let ansible_dir = fx.dir.path().display();
        let expected = format!(
            "-i\n{d}/inventory.json\n-e\n@{d}/vars.json\n{ansible_dir}/playbooks/site.yml\n",
            d = run_dir.display()
        );
        assert_eq!(argv, expected);
        assert!(!argv.contains(TOKEN));
        let env = std::fs::read_to_string(fx.out("env")).unwrap();
        assert!(env.lines().any(|l| l == format!("DEPLOY_TOKEN={TOKEN}")));
        assert!(!run_dir.exists(), "run dir left behind");
    }

    #[tokio::test]
    async fn the_environment_is_cleared_but_for_the_allowlist_and_ansible_vars() {
        let mut fx = Fixture::new("env > \"$PWD/env\"");
        std::fs::write(fx.out("ansible.cfg"), "[defaults]\n").unwrap();
        fx.runner.worker_env = Some(vec![
            ("PATH".into(), std::env::var_os("PATH").unwrap()),
            ("SOME_WORKER_VAR".into(), "leak".into()),
            ("ANSIBLE_FOO".into(), "bar".into()),
            ("ANSIBLE_NOCOLOR".into(), "0".into()),
        ]);
        let (_, run_dir, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        let env = std::fs::read_to_string(fx.out("env")).unwrap();
        let has = |line: &str| env.lines().any(|l| l == line);
        assert!(!env.contains("SOME_WORKER_VAR"), "{env}");
        assert!(has("ANSIBLE_FOO=bar"));
        assert!(has("ANSIBLE_NOCOLOR=0"), "the operator's choice wins");
        assert!(has("ANSIBLE_RETRY_FILES_ENABLED=0"));
        assert!(has("PYTHONUNBUFFERED=1"));
        let cfg = fx.out("ansible.cfg");
        assert!(has(&format!("ANSIBLE_CONFIG={}", cfg.display())));
        let cp = run_dir.join("cp");
        assert!(has(&format!(
            "ANSIBLE_SSH_CONTROL_PATH_DIR={}",
            cp.display()
        )));
    }

    #[test]
    fn followed_progress_adds_the_events_plugin_to_the_operators_callbacks() {
        let plugin = EventsPlugin {
            plugin_dir: "/srv/ansible/plugins/callback".into(),
            file: "/tmp/ia-x/events.jsonl".into(),
        };
        let get = |env: &BTreeMap<OsString, OsString>, name: &str| {
            env.get(std::ffi::OsStr::new(name))
                .map(|v| v.to_string_lossy().into_owned())
        };
        let plain = child_env(Vec::new(), None, Path::new("/cp"), Some(&plugin));
        assert_eq!(
            get(&plain, "ANSIBLE_CALLBACKS_ENABLED").as_deref(),
            Some("infra_events")
        );
        assert_eq!(
            get(&plain, "ANSIBLE_CALLBACK_PLUGINS").as_deref(),
            Some("/srv/ansible/plugins/callback")
        );
        assert_eq!(
            get(&plain, "INFRA_EVENTS_FILE").as_deref(),
            Some("/tmp/ia-x/events.jsonl")
        );
        assert_eq!(
            get(&plain, "ANSIBLE_STDOUT_CALLBACK"),
            None,
            "stdout callback untouched"
        );

        let operator = vec![
            ("ANSIBLE_CALLBACKS_ENABLED".into(), "timer".into()),
            ("ANSIBLE_CALLBACK_PLUGINS".into(), "/opt/cb".into()),
        ];
        let merged = child_env(operator, None, Path::new("/cp"), Some(&plugin));
        assert_eq!(
            get(&merged, "ANSIBLE_CALLBACKS_ENABLED").as_deref(),
            Some("timer,infra_events")
        );
        assert_eq!(
            get(&merged, "ANSIBLE_CALLBACK_PLUGINS").as_deref(),
            Some("/srv/ansible/plugins/callback:/opt/cb")
        );

        let off = child_env(Vec::new(), None, Path::new("/cp"), None);
        assert_eq!(get(&off, "ANSIBLE_CALLBACKS_ENABLED"), None);
        assert_eq!(get(&off, "INFRA_EVENTS_FILE"), None);
    }

    #[tokio::test]
    async fn variables_of_the_real_worker_environment_do_not_reach_the_child() {
        let fx = Fixture::new("env > \"$PWD/env\"");
        let (_, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        let env = std::fs::read_to_string(fx.out("env")).unwrap();
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, _)| n)
            .collect();
        for name in names {
            let ours = INHERITED_VARS.contains(&name)
                || name.starts_with("ANSIBLE_")
                || ["PYTHONUNBUFFERED", "DEPLOY_TOKEN", "PWD", "SHLVL", "_"].contains(&name);
            assert!(ours, "{name} leaked into the child");
        }
        assert!(std::env::vars_os().count() > 0);
    }

    #[tokio::test]
    async fn a_secret_echoed_by_the_child_shows_as_stars_in_the_tail() {
        let fx = Fixture::new(
            "echo \"token=$DEPLOY_TOKEN\"\n\
             printf 'x-access-token:%s' \"$DEPLOY_TOKEN\" | base64 -w0 >&2; echo >&2\n\
             exit 3",
        );
        let (outcome, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert_eq!(outcome.exit_code, Some(3));
        assert!(!outcome.succeeded());
        assert!(
            outcome.output_tail.contains("token=***"),
            "{}",
            outcome.output_tail
        );
        assert!(!outcome.output_tail.contains(TOKEN));
        use base64::Engine as _;
        let blob =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
        let middle = &blob[8..blob.len() - 8];
        assert!(
            !outcome.output_tail.contains(middle),
            "{}",
            outcome.output_tail
        );
    }

    #[tokio::test]
    async fn only_the_last_64_kib_are_kept_but_the_first_failure_is_not_lost() {
        let fx = Fixture::new(
            "echo 'TASK [early] ***'\n\
             echo 'fatal: [web1]: FAILED! => {\"msg\": \"early failure\"}'\n\
             seq 1 6000 | sed 's/^/line padding padding padding /'\n\
             echo 'PLAY RECAP ***'\n\
             echo 'web1 : ok=1 changed=0 unreachable=0 failed=1 skipped=0 rescued=0 ignored=0'\n\
             exit 2",
        );
        let (outcome, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        let tail = &outcome.output_tail;
        assert!(
            tail.len() <= TAIL_BYTES && tail.len() > TAIL_BYTES - 100,
            "{}",
            tail.len()
        );
        assert!(tail.ends_with("ignored=0\n"));
        assert!(tail.contains("padding 6000\n"));
        assert!(!tail.contains("padding 1\n") && !tail.contains("TASK [early]"));
        let failed = outcome.failed_task.unwrap();
        assert_eq!(
            (failed.task.as_str(), failed.message.as_str()),
            ("early", "early failure")
        );
        assert_eq!(outcome.stats.unwrap()["web1"].failed, 1);
    }

    #[tokio::test]
    async fn a_timed_out_group_is_terminated_then_killed_with_nothing_left() {
        become_subreaper();
        // Ignores SIGTERM (inherited by its children), so only SIGKILL works.
        let fx = Fixture::new("trap '' TERM\necho started\nsleep 30 &\nsleep 30");
        let (outcome, run_dir, pgid) = fx.run(playbook_run(Duration::from_millis(300))).await;

        assert!(outcome.timed_out && !outcome.succeeded());
        assert_eq!(outcome.exit_code, None, "killed by a signal");
        assert!(outcome.output_tail.contains("started"));
        assert!(outcome.duration >= Duration::from_millis(600));
        assert!(outcome.duration < Duration::from_secs(10));
        assert!(group_is_gone(pgid), "processes of group {pgid} remain");
        assert!(!run_dir.exists());
    }

    #[tokio::test]
    async fn dropping_the_run_future_kills_the_group_and_removes_the_run_dir() {
        become_subreaper();
        let fx = Fixture::new("sleep 30 &\nsleep 30");
        let seen = Mutex::new(None);
        let redactor = Redactor::default();
        let run = async {
            let run = playbook_run(Duration::from_secs(60));
            let workspace = fx.runner.workspace(&run).unwrap();
            fx.runner
                .run_observed(&workspace, run, &redactor, |d, p| {
                    *seen.lock().unwrap() = Some((d.to_owned(), p));
                })
                .await
        };
        let cancelled = tokio::time::timeout(Duration::from_millis(300), run).await;
        assert!(cancelled.is_err(), "the run should still have been going");

        let (run_dir, pgid) = seen.into_inner().unwrap().unwrap();
        assert!(!run_dir.exists());
        // Nobody awaits any more, so reap here what the guard killed.
        let mut gone = false;
        for _ in 0..200 {
            reap_adopted(pgid).await;
            if group_is_gone(pgid) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "processes of group {pgid} remain");
    }

    /// A fake playbook's body that leaves the playbook's session: one
    /// `setsid sleep` and a `setsid sh` with two sleeps of its own, all
    /// named by `marker` and ignoring SIGTERM (so only SIGKILL ends them).
    fn escaping_children(marker: &str) -> String {
        format!(
            "trap '' TERM\n\
             setsid sleep {marker} &\n\
             setsid sh -c 'sleep {marker} & sleep {marker}; :' &\n\
             echo started\n"
        )
    }

    /// A `sleep` argument no other process has: 300 s and a random fraction.
    fn unique_marker() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "300.{nanos:09}{}",
            uuid::Uuid::new_v4().as_u128() % 1_000_000
        )
    }

    /// Processes whose command line holds `marker`, with their session ids.
    fn with_marker(marker: &str) -> Vec<(Proc, i32)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.split(' ').any(|word| word.contains(marker))
                && let (Some(proc), Some(fields)) = (Proc::of(pid), stat_fields(pid))
            {
                found.push((proc, fields[3].parse().unwrap()));
            }
        }
        found
    }

    /// Fields 3.. of `/proc/<pid>/stat` (state, ppid, pgrp, session, ...).
    fn stat_fields(pid: i32) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    }

    /// Our children that are zombies (exited, not reaped).
    fn our_zombies() -> Vec<i32> {
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| stat_fields(pid).is_some_and(|f| f[0] == "Z" && f[1] == me))
            .collect()
    }

    /// Runs `run` while recording every process that carries `marker`.
    async fn run_watching<T>(
        marker: &str,
        run: impl std::future::Future<Output = T>,
    ) -> (T, Vec<(Proc, i32)>) {
        let mut seen = Vec::new();
        let watch = async {
            loop {
                for found in with_marker(marker) {
                    if !seen.contains(&found) {
                        seen.push(found);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let result = tokio::select! {
            result = run => result,
            () = watch => unreachable!(),
        };
        (result, seen)
    }

    /// The escaping children really ran, outside the playbook's session.
    fn assert_escaped(seen: &[(Proc, i32)], pgid: i32) {
        assert!(
            seen.len() >= 3,
            "expected 3 or 4 marked processes: {seen:?}"
        );
        assert!(
            seen.iter().all(|&(_, session)| session != pgid),
            "each left the playbook's session: {seen:?}"
        );
    }

    /// None of `seen` exists any more, not even as a zombie, and no child of
    /// ours is a zombie (after `settle`, for other tests' children).
    async fn assert_all_gone(seen: &[(Proc, i32)], settle: Duration) {
        let deadline = tokio::time::Instant::now() + settle;
        loop {
            let left: Vec<_> = seen
                .iter()
                .filter(|(p, _)| Proc::of(p.pid) == Some(*p))
                .collect();
            let zombies = our_zombies();
            if left.is_empty() && zombies.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("left: {left:?}; zombies among our children: {zombies:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_timed_out_run_kills_and_reaps_children_in_sessions_of_their_own() {
        become_subreaper();
        let marker = unique_marker();
        let fx = Fixture::new(&format!("{}sleep 30", escaping_children(&marker)));

        let ((outcome, _, pgid), seen) =
            run_watching(&marker, fx.run(playbook_run(Duration::from_millis(500)))).await;

        assert!(outcome.timed_out && !outcome.succeeded(), "{outcome:?}");
        assert!(outcome.output_tail.contains("started"));
        assert!(outcome.duration < Duration::from_secs(10));
        assert_escaped(&seen, pgid);
        // The run reaped them itself; the settle time is for zombies other
        // tests' runs have not reaped yet.
        assert!(
            seen.iter().all(|(p, _)| Proc::of(p.pid) != Some(*p)),
            "{seen:?}"
        );
        assert_all_gone(&seen, Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_daemon_left_by_a_successful_run_is_killed_and_reaped() {
        become_subreaper();
        let marker = unique_marker();
        // The pause lets the watcher see the children before the run ends.
        let fx = Fixture::new(&format!("{}sleep 0.5\nexit 0", escaping_children(&marker)));

        let ((outcome, _, pgid), seen) =
            run_watching(&marker, fx.run(playbook_run(Duration::from_secs(20)))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        assert_escaped(&seen, pgid);
        assert!(
            seen.iter().all(|(p, _)| Proc::of(p.pid) != Some(*p)),
            "{seen:?}"
        );
        assert_all_gone(&seen, Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_cancelled_run_kills_and_reaps_children_in_sessions_of_their_own() {
        become_subreaper();
        let marker = unique_marker();
        let fx = Fixture::new(&format!("{}sleep 30", escaping_children(&marker)));
        let pgid = Mutex::new(None);
        let redactor = Redactor::default();
        let run = async {
            let run = playbook_run(Duration::from_secs(60));
            let workspace = fx.runner.workspace(&run).unwrap();
            fx.runner
                .run_observed(&workspace, run, &redactor, |_, p| {
                    *pgid.lock().unwrap() = Some(p);
                })
                .await
        };

        let (cancelled, seen) = run_watching(
            &marker,
            tokio::time::timeout(Duration::from_millis(600), run),
        )
        .await;

        assert!(cancelled.is_err(), "the run should still have been going");
        assert_escaped(&seen, pgid.into_inner().unwrap().unwrap());
        // SIGTERM is ignored: SIGKILL comes after the 300 ms grace.
        assert!(tree::finish_cleanups(Duration::from_secs(5)).await);
        assert_all_gone(&seen, Duration::from_secs(2)).await;
    }

    #[test]
    fn success_means_exit_zero_within_the_timeout() {
        let outcome = |exit_code, timed_out| PlaybookOutcome {
            exit_code,
            timed_out,
            output_tail: String::new(),
            stats: None,
            failed_task: None,
            duration: Duration::ZERO,
        };
        assert!(outcome(Some(0), false).succeeded());
        assert!(!outcome(Some(0), true).succeeded());
        assert!(!outcome(Some(2), false).succeeded());
        assert!(!outcome(None, false).succeeded());
    }

    /// One real `ansible-playbook` run (about a second of CPU): inventory,
    /// vars, env secret, recap and failed task all line up, and the shipped
    /// callback plugin reports every task, redacted, in order.
    #[tokio::test]
    async fn a_real_playbook_run_gives_stats_the_failed_task_and_progress() {
        let fx = Fixture::new("");
        std::fs::create_dir(fx.out("playbooks")).unwrap();
        std::fs::create_dir_all(fx.out(events::PLUGIN_DIR)).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ansible")
            .join(events::PLUGIN_DIR)
            .join("infra_events.py");
        std::fs::copy(shipped, fx.out("plugins/callback/infra_events.py")).unwrap();
        std::fs::write(
            fx.out("playbooks/site.yml"),
            "- hosts: all\n  connection: local\n  gather_facts: false\n  tasks:\n\
             \x20   - name: greet\n      debug:\n        msg: \"hello {{ project_name }}\"\n\
             \x20   - name: ignored\n      fail:\n        msg: not counted\n      ignore_errors: true\n\
             \x20   - name: check the token\n      fail:\n        msg: \"bad token {{ lookup('env', 'DEPLOY_TOKEN') }}\"\n\
             \x20   - name: never reached\n      debug:\n        msg: unreachable\n",
        )
        .unwrap();
        let mut runner = fx.runner.clone();
        runner.settings.playbook_bin = "ansible-playbook".into();
        let fx = Fixture { runner, ..fx };
        let (sink, mut events) = events::channel(64);
        let run = PlaybookRun {
            events: Some(sink),
            ..playbook_run(Duration::from_secs(120))
        };

        let (outcome, _, _) = fx.run(run).await;

        assert_eq!(outcome.exit_code, Some(2), "{}", outcome.output_tail);
        assert!(
            outcome.output_tail.contains("hello demo"),
            "{}",
            outcome.output_tail
        );
        assert!(!outcome.output_tail.contains(TOKEN));
        let stats = outcome.stats.expect("a recap");
        let web1 = &stats["web1"];
        assert_eq!((web1.ok, web1.failed, web1.ignored), (2, 1, 1), "{web1:?}");
        let failed = outcome.failed_task.expect("a failed task");
        assert_eq!(failed.host, "web1");
        assert_eq!(failed.task, "check the token");
        assert_eq!(failed.message, "bad token ***");

        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            seen.push(event);
        }
        let steps: Vec<(u64, &str, &str)> = seen
            .iter()
            .map(|e| (e.seq, e.event.as_str(), e.task.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            steps,
            [
                (1, "playbook_on_task_start", "greet"),
                (2, "runner_on_ok", "greet"),
                (3, "playbook_on_task_start", "ignored"),
                (4, "runner_on_failed", "ignored"),
                (5, "playbook_on_task_start", "check the token"),
                (6, "runner_on_failed", "check the token"),
            ]
        );
        assert!(seen[3].ignored && !seen[5].ignored);
        assert_eq!(seen[1].host.as_deref(), Some("web1"));
        assert_eq!(seen[5].message.as_deref(), Some("bad token ***"));
        assert!(seen.iter().all(|e| !e.to_json().contains(TOKEN)));
        assert!(
            !outcome.output_tail.contains("infra_events"),
            "no plugin warning: {}",
            outcome.output_tail
        );
    }
}
