//! The public face of a playbook run: [`Runner`] prepares the run's private
//! directory, starts `ansible-playbook` (its command line holds nothing
//! secret; its environment comes from `env`; its own process group) and
//! sees it through: supervised (`supervise`), stopped and reaped (`stop`),
//! its output turned into a [`PlaybookOutcome`].

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use super::controller::Controller;
use super::env::{self, EnvMap, EventsPlugin, RunPaths};
use super::events::{self, EventSink, EventTail};
use super::launch::Launched;
use super::run::{PlaybookOutcome, PlaybookRun, RunError};
use super::stop::RunGuard;
use super::supervise::{Output, supervise};
use super::tree::Proc;
use super::warm;
use super::workspace::Workspace;

use crate::config::{AnsibleSettings, ControllerMode};
use crate::metrics;
use crate::secrets::Redactor;

/// How long a run waits for a controller that is starting (at the worker's
/// start, or restarting) before it runs cold.
const WAIT_FOR_STARTING_CONTROLLER: Duration = Duration::from_secs(15);

/// Runs playbooks with the configured binary and content directory.
#[derive(Debug, Clone)]
pub struct Runner {
    settings: AnsibleSettings,
    kill_grace: Duration,
    /// Stands in for the worker's environment in tests; `None` reads the real
    /// one at each run.
    worker_env: Option<Vec<(OsString, OsString)>>,
    /// The warm controller runs fork from, when `ansible.controller` is
    /// `warm`; shared by every clone.
    controller: Option<Controller>,
}

impl Runner {
    /// A runner for `settings`; a timed-out playbook gets `kill_grace` between
    /// SIGTERM and SIGKILL. With `ansible.controller = "warm"` it starts the
    /// warm controller: call it inside the tokio runtime.
    pub fn new(settings: AnsibleSettings, kill_grace: Duration) -> Runner {
        let controller = (settings.controller == ControllerMode::Warm)
            .then(|| Controller::start(&settings, std::env::vars_os()));
        Runner {
            settings,
            kill_grace,
            worker_env: None,
            controller,
        }
    }

    /// The warm controller's pid while it is ready (tests kill it).
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().and_then(Controller::pid)
    }

    /// Waits up to `within` for the warm controller to be ready; false if
    /// it is not (cold mode, restarting, or unusable).
    pub async fn wait_for_controller(&self, within: Duration) -> bool {
        match &self.controller {
            Some(controller) => controller.ready(within).await.is_some(),
            None => false,
        }
    }

    /// Stops the warm controller (after the drain): its channel closes and
    /// it exits; runs still going are not touched.
    pub async fn stop_controller(&self) {
        if let Some(controller) = &self.controller {
            controller.stop().await;
        }
    }

    /// The run's private directory, for a caller that needs its key and
    /// known_hosts before and after the playbook (SSH probe, host key pin).
    pub fn workspace(&self, run: &PlaybookRun) -> Result<Workspace, RunError> {
        let workspace = Workspace::create(&run.target).map_err(RunError::Workspace)?;
        tracing::debug!(dir = %workspace.path().display(), "run directory ready");
        Ok(workspace)
    }

    /// Runs one playbook to its end, its timeout, or the drop of this
    /// future, in a directory from [`Runner::workspace`] for the same `run`.
    #[tracing::instrument(skip_all, fields(
        playbook = %run.playbook.display(),
        host = %run.target.name,
        timeout_ms = run.timeout.as_millis() as u64,
    ))]
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
        workspace
            .write_extra_vars(&run.extra_vars)
            .map_err(RunError::Workspace)?;
        let (plugin, events) = plugin_for(run.events.clone(), &ansible_dir, workspace, redactor);
        let mut child = self
            .launch(&run, &ansible_dir, workspace, plugin.as_ref())
            .await?;
        let pgid = child_pgid(&child)?;
        let root = match (Proc::of(pgid), &child) {
            (Some(root), _) => root,
            // A warm run may have exited and been reaped by the controller
            // already; its exit code is on its status pipe.
            (None, Launched::Warm(_)) => Proc::exited(pgid),
            (None, Launched::Cold(_)) => {
                return Err(RunError::Wait(std::io::Error::other(
                    "the playbook is not in /proc",
                )));
            }
        };
        // Declared after `child` so it is dropped first: the group is killed
        // while its leader's pid is still ours (not yet reaped).
        let mut guard = RunGuard::new(pgid, root, workspace, self.kill_grace);
        observe(workspace.path(), pgid);
        let mode = child.mode();
        metrics::playbook_started(mode);
        tracing::info!(pid = pgid, controller = mode.as_str(), "playbook started");

        let mut output = Output::new(&mut child, redactor.longest_needle(), events);
        let (status, timed_out) = supervise(
            &mut child,
            &mut output,
            pgid,
            guard.tree(),
            run.timeout,
            self.kill_grace,
        )
        .await?;
        guard.finish().await;
        output.drain().await;
        // The plugin's last lines were written before the playbook exited.
        output.poll_events();
        let custom_stats = plugin.map(|p| read_stats(&p.stats)).unwrap_or_default();
        Ok(outcome_of(
            output,
            status,
            timed_out,
            started,
            custom_stats,
            redactor,
        ))
    }

    /// Starts `<bin> -i inventory.json [-e <operator's>] -e @vars.yml
    /// [-e <become>] <playbook>` in the Ansible dir, in a process group of
    /// its own: forked by the warm controller when it is ready, else cold.
    async fn launch(
        &self,
        run: &PlaybookRun,
        ansible_dir: &Path,
        workspace: &Workspace,
        plugin: Option<&EventsPlugin>,
    ) -> Result<Launched, RunError> {
        let ansible_cfg = Some(ansible_dir.join("ansible.cfg")).filter(|cfg| cfg.is_file());
        let control_path_dir = workspace.control_path_dir();
        let paths = RunPaths {
            ansible_cfg: ansible_cfg.as_deref(),
            control_path_dir: &control_path_dir,
            events: plugin,
        };
        let args = self.args(run, ansible_dir, workspace);
        let env = env::child_env(self.worker_env(), paths, &run.secret_env);
        tracing::debug!(secret_env = run.secret_env.len(), "command prepared");
        let live = match &self.controller {
            Some(controller) => controller.ready(WAIT_FOR_STARTING_CONTROLLER).await,
            None => None,
        };
        if let Some(live) = live {
            match self
                .start_warm(&live, &args, &env, ansible_dir, workspace)
                .await
            {
                Ok(child) => return Ok(Launched::Warm(child)),
                Err(e) => {
                    tracing::warn!(error.message = %e, "the warm controller did not start the run; running it cold");
                }
            }
        }
        self.spawn_cold(&args, env, ansible_dir).map(Launched::Cold)
    }

    /// The arguments after the program's name, the same warm or cold.
    fn args(&self, run: &PlaybookRun, ansible_dir: &Path, workspace: &Workspace) -> Vec<OsString> {
        let mut vars_arg = OsString::from("@");
        vars_arg.push(workspace.vars_path());
        let mut args = vec!["-i".into(), workspace.inventory_path().into()];
        args.extend(
            operator_vars(&self.settings)
                .into_iter()
                .map(OsString::from),
        );
        args.extend(["-e".into(), vars_arg]);
        args.extend(become_vars(&self.settings).into_iter().map(OsString::from));
        args.push(ansible_dir.join(&run.playbook).into());
        args
    }

    /// Hands the run to the warm controller: argv[0] is the cold program's
    /// name, the rest and the environment exactly the cold run's.
    async fn start_warm(
        &self,
        live: &super::controller::Live,
        args: &[OsString],
        env: &EnvMap,
        ansible_dir: &Path,
        workspace: &Workspace,
    ) -> Result<warm::WarmChild, warm::NotWarm> {
        let utf8 = |s: &std::ffi::OsStr| {
            s.to_str()
                .map(str::to_owned)
                .ok_or_else(|| warm::NotWarm::Garbled(format!("not UTF-8: {}", s.display())))
        };
        let argv = std::iter::once(Ok(self.settings.playbook_bin.clone()))
            .chain(args.iter().map(|a| utf8(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env
            .iter()
            .map(|(k, v)| Ok((utf8(k)?, utf8(v)?)))
            .collect::<Result<_, warm::NotWarm>>()?;
        let cwd = utf8(ansible_dir.as_os_str())?;
        let id = workspace
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let request = warm::Request {
            id: &id,
            argv: &argv,
            env: &env,
            cwd: &cwd,
        };
        warm::start(live, &request).await
    }

    /// A fresh `ansible-playbook` process.
    fn spawn_cold(
        &self,
        args: &[OsString],
        env: EnvMap,
        ansible_dir: &Path,
    ) -> Result<tokio::process::Child, RunError> {
        let mut command = Command::new(&self.settings.playbook_bin);
        command
            .args(args)
            .current_dir(ansible_dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so the playbook and every fork are signalled together.
            .process_group(0)
            .kill_on_drop(true);
        command.spawn().map_err(|source| RunError::Spawn {
            bin: self.settings.playbook_bin.clone(),
            source,
        })
    }

    /// The worker's environment, or the one a test put in its place.
    fn worker_env(&self) -> Vec<(OsString, OsString)> {
        match &self.worker_env {
            Some(env) => env.clone(),
            None => std::env::vars_os().collect(),
        }
    }
}

/// When the run wants its progress and the plugin is installed: the
/// The `infra_events` plugin for this run, when the Ansible dir has it: it
/// always writes the play's `set_stats` data; with a `sink`, it also
/// appends task progress to a file that the returned tail follows.
fn plugin_for(
    sink: Option<EventSink>,
    ansible_dir: &Path,
    workspace: &Workspace,
    redactor: &Redactor,
) -> (Option<EventsPlugin>, Option<EventTail>) {
    let plugin_dir = ansible_dir.join(events::PLUGIN_DIR);
    if !plugin_dir
        .join(format!("{}.py", events::PLUGIN_NAME))
        .is_file()
    {
        tracing::debug!(dir = %plugin_dir.display(), "no events plugin; no progress, no stats");
        return (None, None);
    }
    let stats = match workspace.reset_stats_file() {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error.message = %e, "cannot prepare the stats file; events plugin off");
            return (None, None);
        }
    };
    let followed = sink.map(|sink| {
        workspace.create_events_file().and_then(|file| {
            let tail = EventTail::open(&file, sink, redactor.clone())?;
            Ok((file, tail))
        })
    });
    let (file, tail) = match followed {
        Some(Ok((file, tail))) => (Some(file), Some(tail)),
        Some(Err(e)) => {
            // Progress is a convenience: the job runs without it.
            tracing::warn!(error.message = %e, "cannot create the events file; progress not followed");
            (None, None)
        }
        None => (None, None),
    };
    let plugin = EventsPlugin {
        plugin_dir,
        file,
        stats,
    };
    (Some(plugin), tail)
}

/// The longest stats file read back: revisions and a rollback are a few
/// hundred bytes; anything far larger is not ours.
const MAX_STATS_BYTES: u64 = 64 * 1024;

/// The `set_stats` data the plugin wrote, or nothing (no file: the play
/// ended before its stats, or set none).
fn read_stats(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let Ok(meta) = std::fs::metadata(path) else {
        return serde_json::Map::new();
    };
    if meta.len() > MAX_STATS_BYTES {
        tracing::warn!(
            len = meta.len(),
            "the playbook's stats are far larger than ours; ignored"
        );
        return serde_json::Map::new();
    }
    match std::fs::read(path).map(|bytes| serde_json::from_slice(&bytes)) {
        Ok(Ok(serde_json::Value::Object(stats))) => stats,
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the playbook's stats are not a JSON object; ignored");
            serde_json::Map::new()
        }
        Err(_) => serde_json::Map::new(),
    }
}

/// `-e <ansible.extra_vars as JSON>` when the operator set any; before the
/// job's file, so a job's own fields stay its own (the operator's are
/// other names: `services_root`, `git_base_url`). The operator's are
/// trusted: they may be templates.
fn operator_vars(settings: &AnsibleSettings) -> Vec<String> {
    if settings.extra_vars.is_empty() {
        return Vec::new();
    }
    let vars = serde_json::Value::Object(settings.extra_vars.clone());
    vec!["-e".to_owned(), vars.to_string()]
}

/// `-e {"infra_become": true}` when `ansible.become` is set: every playbook
/// takes its `become` from that variable. Nothing secret, so argv is fine.
fn become_vars(settings: &AnsibleSettings) -> Vec<&'static str> {
    if settings.become_root {
        vec!["-e", r#"{"infra_become": true}"#]
    } else {
        Vec::new()
    }
}

/// The playbook's pid, which is also its process group's id.
fn child_pgid(child: &Launched) -> Result<i32, RunError> {
    child.pid().ok_or_else(|| {
        RunError::Wait(std::io::Error::other(
            "the child was reaped before its pid was read",
        ))
    })
}

/// What the run came to, its texts redacted; logged.
fn outcome_of(
    output: Output,
    status: ExitStatus,
    timed_out: bool,
    started: Instant,
    custom_stats: serde_json::Map<String, serde_json::Value>,
    redactor: &Redactor,
) -> PlaybookOutcome {
    let (stats, failed_task) = output.scanner.finish(redactor);
    let outcome = PlaybookOutcome {
        exit_code: status.code(),
        timed_out,
        output_tail: output.tail.finish(redactor),
        stats,
        failed_task,
        duration: started.elapsed(),
        custom_stats,
    };
    tracing::info!(
        exit_code = outcome.exit_code,
        timed_out,
        succeeded = outcome.succeeded(),
        duration_ms = outcome.duration.as_millis() as u64,
        failed_host = outcome.failed_task.as_ref().map(|f| f.host.as_str()),
        "playbook finished"
    );
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::{Mutex, Once};

    use secrecy::SecretString;

    use serde_json::json;
    use tempfile::TempDir;

    use super::super::controller::{Backoff, Timing};
    use super::super::env::INHERITED_VARS;
    use super::super::output::TAIL_BYTES;
    use super::super::run::SshTarget;
    use super::super::stop::{finish_cleanups, reap_group};
    use super::super::{events, reaper};

    const TOKEN: &str = "ghp_TestTokenValue0123456789";

    /// Orphaned group members must come back to this test process to be
    /// reaped: here PID 1 may not reap, and a zombie still counts as a
    /// member for `kill(-pgid, 0)`.
    fn become_subreaper() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| reaper::become_subreaper().expect("prctl(PR_SET_CHILD_SUBREAPER)"));
    }

    /// An Ansible dir holding `bin/fake-playbook` (the given shell body) and
    /// a runner that uses it.
    struct Fixture {
        dir: TempDir,
        runner: Runner,
    }

    /// Writes a script through a child process, never through a file
    /// descriptor of this one: another test thread forking while this
    /// process held the file open for writing would keep that descriptor
    /// in its child until the child execs, and running the script in that
    /// window fails with ETXTBSY ("Text file busy"). Seen in CI.
    fn write_executable(path: &Path, text: &str) {
        use std::io::Write;
        let mut writer = std::process::Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writer
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(
            writer.wait().unwrap().success(),
            "writing {}",
            path.display()
        );
    }

    impl Fixture {
        fn new(script_body: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("fake-playbook");
            write_executable(&bin, &format!("#!/bin/sh\n{script_body}\n"));
            let settings = AnsibleSettings {
                dir: dir.path().to_owned(),
                playbook_bin: bin.to_string_lossy().into_owned(),
                deploy_playbook: "playbooks/deploy_project.yml".into(),
                provision_playbook: "playbooks/setup_server.yml".into(),
                recovery_playbook: "playbooks/recovery.yml".into(),
                ci_playbook: "playbooks/ci_access.yml".into(),
                ssh_port: 22,
                ssh_user: "root".into(),
                become_root: false,
                ssh_key_ref: None,
                extra_vars: serde_json::Map::new(),
                // A fake script is not Ansible: no warm controller.
                controller: ControllerMode::Cold,
                python: "python3".into(),
            };
            let runner = Runner::new(settings, Duration::from_millis(300));
            Fixture { dir, runner }
        }

        /// [`Fixture::new`] with the warm controller: the test stand-in
        /// (`tests/fixtures/warm_stand_in.py`, no Ansible) in `mode`
        /// (`ok`, `fail`, `hang`), or no controller script at all (`None`).
        async fn warm(script_body: &str, mode: Option<&str>) -> Fixture {
            Fixture::warm_timed(script_body, mode, Timing::DEFAULT).await
        }

        /// [`Fixture::warm`] with the controller's deadlines and backoff
        /// `timing` instead of the production ones.
        async fn warm_timed(script_body: &str, mode: Option<&str>, timing: Timing) -> Fixture {
            let fx = Fixture::new(script_body);
            if let Some(mode) = mode {
                let dir = fx.out("controller");
                std::fs::create_dir(&dir).unwrap();
                let stand_in =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/warm_stand_in.py");
                std::fs::copy(stand_in, dir.join("infra_controller.py")).unwrap();
                std::fs::write(dir.join("mode"), mode).unwrap();
            }
            // What `Runner::new` does in warm mode, with `timing`.
            let mut runner = fx.runner.clone();
            runner.settings.controller = ControllerMode::Warm;
            let controller = Controller::start_with(&runner.settings, std::env::vars_os(), timing);
            runner.controller = Some(controller);
            Fixture { runner, ..fx }
        }

        fn out(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Runs and returns the outcome, the run directory and the group id.
        async fn run(&self, run: PlaybookRun) -> (PlaybookOutcome, PathBuf, i32) {
            run_on(&self.runner, run).await
        }

        /// A fixture for the real `ansible-playbook`: `playbook` as
        /// `playbooks/site.yml`, the shipped events plugin and the shipped
        /// warm controller (used by a runner from [`Fixture::real_runner`]).
        fn real(playbook: &str) -> Fixture {
            let fx = Fixture::new("");
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible");
            std::fs::create_dir(fx.out("playbooks")).unwrap();
            std::fs::write(fx.out("playbooks/site.yml"), playbook).unwrap();
            std::fs::create_dir_all(fx.out(events::PLUGIN_DIR)).unwrap();
            let plugin = Path::new(events::PLUGIN_DIR).join("infra_events.py");
            std::fs::copy(shipped.join(&plugin), fx.dir.path().join(&plugin)).unwrap();
            std::fs::create_dir(fx.out("controller")).unwrap();
            let script = super::super::controller::SCRIPT;
            std::fs::copy(shipped.join(script), fx.out(script)).unwrap();
            fx
        }

        /// A runner of the real `ansible-playbook` on this fixture's dir,
        /// warm (its controller ready) or cold.
        async fn real_runner(&self, warm: bool) -> Runner {
            let mut settings = self.runner.settings.clone();
            settings.playbook_bin = "ansible-playbook".into();
            if warm {
                settings.controller = ControllerMode::Warm;
            }
            let runner = Runner::new(settings, Duration::from_millis(300));
            assert_eq!(
                runner.wait_for_controller(Duration::from_secs(60)).await,
                warm,
                "the warm controller is ready exactly when asked for"
            );
            runner
        }
    }

    /// Runs on `runner` and returns the outcome, the run directory and the
    /// group id.
    async fn run_on(runner: &Runner, run: PlaybookRun) -> (PlaybookOutcome, PathBuf, i32) {
        let seen = Mutex::new(None);
        let redactor = Redactor::new(run.secret_env.iter().map(|(_, v)| v));
        let workspace = runner.workspace(&run).unwrap();
        let outcome = runner
            .run_observed(&workspace, run, &redactor, |dir, pgid| {
                *seen.lock().unwrap() = Some((dir.to_owned(), pgid));
            })
            .await
            .unwrap();
        drop(workspace);
        let (dir, pgid) = seen.into_inner().unwrap().unwrap();
        (outcome, dir, pgid)
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

    /// [`group_is_gone`] for a warm run: its leader, the controller's child,
    /// is reaped by the controller a moment after it exited (a zombie still
    /// counts as a member), so this waits up to 2 s for that.
    async fn warm_group_is_gone(pgid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !group_is_gone(pgid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn the_secret_reaches_the_env_but_not_the_argv_and_the_run_dir_is_removed() {
        let fx = Fixture::new("printf '%s\\n' \"$@\" > \"$PWD/argv\"; env > \"$PWD/env\"");
        let (outcome, run_dir, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        let argv = std::fs::read_to_string(fx.out("argv")).unwrap();
        let ansible_dir = fx.dir.path().display();
        let expected = format!(
            "-i\n{d}/inventory.json\n-e\n@{d}/vars.yml\n{ansible_dir}/playbooks/site.yml\n",
            d = run_dir.display()
        );
        assert_eq!(argv, expected);
        assert!(!argv.contains(TOKEN));
        let env = std::fs::read_to_string(fx.out("env")).unwrap();
        assert!(env.lines().any(|l| l == format!("DEPLOY_TOKEN={TOKEN}")));
        assert!(!run_dir.exists(), "run dir left behind");
    }

    #[tokio::test]
    async fn operator_vars_come_before_the_jobs_and_become_after() {
        let mut fx = Fixture::new("printf '%s\\n' \"$@\" > \"$PWD/argv\"");
        fx.runner.settings.become_root = true;
        fx.runner.settings.extra_vars = json!({"git_base_url": "https://ghe.example.com"})
            .as_object()
            .unwrap()
            .clone();
        let (outcome, run_dir, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        let argv = std::fs::read_to_string(fx.out("argv")).unwrap();
        let expected = format!(
            "-i\n{d}/inventory.json\n-e\n{{\"git_base_url\":\"https://ghe.example.com\"}}\n\
             -e\n@{d}/vars.yml\n-e\n{{\"infra_become\": true}}\n",
            d = run_dir.display()
        );
        assert!(argv.starts_with(&expected), "{argv}");
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
        assert!(
            cancelled.is_err(),
            "the run should still have been going: {cancelled:?}"
        );

        let (run_dir, pgid) = seen.into_inner().unwrap().unwrap();
        assert!(!run_dir.exists());
        // Nobody awaits any more, so reap here what the guard killed.
        let mut gone = false;
        for _ in 0..200 {
            reap_group(pgid).await;
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
        assert!(finish_cleanups(Duration::from_secs(5)).await);
        assert_all_gone(&seen, Duration::from_secs(2)).await;
    }

    /// One real `ansible-playbook` run (about a second of CPU): inventory,
    /// vars, env secret, recap and failed task all line up, and the shipped
    /// callback plugin reports every task, redacted, in order.
    #[tokio::test]
    async fn a_real_playbook_run_gives_stats_the_failed_task_and_progress() {
        real_playbook_run(false).await;
    }

    /// The same through the shipped warm controller.
    #[tokio::test]
    async fn a_real_warm_playbook_run_gives_the_same_stats_failed_task_and_progress() {
        real_playbook_run(true).await;
    }

    async fn real_playbook_run(warm: bool) {
        let fx = Fixture::real(
            "- hosts: all\n  connection: local\n  gather_facts: false\n  tasks:\n\
             \x20   - name: greet\n      debug:\n        msg: \"hello {{ project_name }} on {{ branch }}\"\n\
             \x20   - name: hand back a revision\n      set_stats:\n        per_host: false\n        aggregate: false\n        data:\n          revision: \"{{ project_name }}-1\"\n\
             \x20   - name: ignored\n      fail:\n        msg: not counted\n      ignore_errors: true\n\
             \x20   - name: check the token\n      fail:\n        msg: \"bad token {{ lookup('env', 'DEPLOY_TOKEN') }}\"\n\
             \x20   - name: never reached\n      debug:\n        msg: unreachable\n",
        );
        let runner = fx.real_runner(warm).await;
        let warm_before = warm_runs();
        let fx = Fixture { runner, ..fx };
        let (sink, mut events) = events::channel(64);
        // A payload's value that is a template is data, never run.
        let pwned = fx.out("pwned");
        let branch = format!("{{{{ lookup('pipe', 'touch {}') }}}}", pwned.display());
        let run = PlaybookRun {
            events: Some(sink),
            extra_vars: json!({"project_name": "demo", "branch": branch}),
            ..playbook_run(Duration::from_secs(120))
        };

        let (outcome, _, _) = fx.run(run).await;

        assert_eq!(outcome.exit_code, Some(2), "{}", outcome.output_tail);
        assert!(
            outcome
                .output_tail
                .contains(&format!("hello demo on {branch}")),
            "{}",
            outcome.output_tail
        );
        assert!(!pwned.exists(), "a job's value was rendered as a template");
        assert!(!outcome.output_tail.contains(TOKEN));
        let stats = outcome.stats.expect("a recap");
        let web1 = &stats["web1"];
        assert_eq!((web1.ok, web1.failed, web1.ignored), (3, 1, 1), "{web1:?}");
        // A play that fails after set_stats still hands its data back.
        assert_eq!(
            serde_json::Value::Object(outcome.custom_stats.clone()),
            json!({"revision": "demo-1"})
        );
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
                (3, "playbook_on_task_start", "hand back a revision"),
                (4, "runner_on_ok", "hand back a revision"),
                (5, "playbook_on_task_start", "ignored"),
                (6, "runner_on_failed", "ignored"),
                (7, "playbook_on_task_start", "check the token"),
                (8, "runner_on_failed", "check the token"),
            ]
        );
        assert!(seen[5].ignored && !seen[7].ignored);
        assert_eq!(seen[1].host.as_deref(), Some("web1"));
        assert_eq!(seen[7].message.as_deref(), Some("bad token ***"));
        assert!(seen.iter().all(|e| !e.to_json().contains(TOKEN)));
        assert!(
            !outcome.output_tail.contains("infra_events"),
            "no plugin warning: {}",
            outcome.output_tail
        );
        if warm {
            assert!(warm_runs() > warm_before, "the run did not go warm");
        }
    }

    /// Warm runs counted so far (by every test of this process).
    fn warm_runs() -> u64 {
        crate::metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix("infra_playbook_runs_total{controller=\"warm\"} "))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// A playbook that writes to `report` what its run sees (two secrets,
    /// settings as the config and the ssh plugin read them, the Ansible and
    /// ssh environment, the CLI's defaults) and its ancestors, after it
    /// touched `mine` and waited for `theirs` (so two runs really overlap).
    const ISOLATION_PLAYBOOK: &str = r#"- hosts: all
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    env_cmd: "env | grep -E '^(ANSIBLE|ISO|INFRA)_' | sort"
    ancestors_cmd: "p=$$; while [ \"$p\" -gt 1 ]; do echo $p; p=$(ps -o ppid= -p $p | tr -d ' '); done"
  tasks:
    - name: say this run started
      file:
        path: "{{ mine }}"
        state: touch
    - name: wait for the other run
      wait_for:
        path: "{{ theirs }}"
        timeout: 60
    - name: write down what this run sees
      copy:
        dest: "{{ report }}"
        content: "{{ seen | to_nice_json }}"
      vars:
        seen:
          iso_a: "{{ lookup('env', 'ISO_A') }}"
          iso_b: "{{ lookup('env', 'ISO_B') }}"
          timeout: "{{ lookup('config', 'DEFAULT_TIMEOUT') }}"
          ssh_timeout: "{{ lookup('config', 'timeout', plugin_type='connection', plugin_name='ssh') }}"
          control_path_dir: "{{ lookup('config', 'control_path_dir', plugin_type='connection', plugin_name='ssh') | replace(inventory_dir, '<run>') }}"
          forks: "{{ lookup('config', 'DEFAULT_FORKS') }}"
          cli_forks: "{{ ansible_forks }}"
          callbacks: "{{ lookup('config', 'CALLBACKS_ENABLED') }}"
          callback_paths: "{{ lookup('config', 'DEFAULT_CALLBACK_PLUGIN_PATH') }}"
          host_key_checking: "{{ lookup('config', 'HOST_KEY_CHECKING') }}"
          nocolor: "{{ lookup('config', 'ANSIBLE_NOCOLOR') }}"
          config_file: "{{ ansible_config_file }}"
          python: "{{ ansible_playbook_python }}"
          cwd: "{{ lookup('pipe', 'pwd') }}"
          env: "{{ lookup('pipe', env_cmd) | replace(inventory_dir, '<run>') }}"
          ancestors: "{{ lookup('pipe', ancestors_cmd).split() | map('int') | list }}"
"#;

    /// Two concurrent runs, then a third: A (`ISO_A` and `ANSIBLE_TIMEOUT=7`
    /// of its own), B (`ISO_B`) and C (no secrets): the reports of A, B, C.
    async fn isolation_runs(fx: &Fixture, runner: &Runner, phase: &str) -> [serde_json::Value; 3] {
        let dir = fx.out(phase);
        std::fs::create_dir(&dir).unwrap();
        let job = |name: &str, theirs: &str, secrets: &[(&str, &str)]| PlaybookRun {
            extra_vars: json!({
                "report": dir.join(format!("{name}.json")),
                "mine": dir.join(format!("{name}.started")),
                "theirs": dir.join(format!("{theirs}.started")),
            }),
            secret_env: secrets
                .iter()
                .map(|&(k, v)| (k.to_owned(), SecretString::from(v)))
                .collect(),
            ..playbook_run(Duration::from_secs(120))
        };
        let a = job(
            "a",
            "b",
            &[("ISO_A", "secret-of-a"), ("ANSIBLE_TIMEOUT", "7")],
        );
        let b = job("b", "a", &[("ISO_B", "secret-of-b")]);
        let c = job("c", "c", &[]);

        let ((a, _, _), (b, _, _)) = tokio::join!(run_on(runner, a), run_on(runner, b));
        let (c, _, _) = run_on(runner, c).await;

        for (name, outcome) in [("a", a), ("b", b), ("c", c)] {
            assert!(outcome.succeeded(), "{phase} {name}: {outcome:?}");
        }
        ["a", "b", "c"].map(|name| {
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        })
    }

    /// Six real `ansible-playbook` runs (about a second of CPU each, less
    /// warm): what a warm run sees is what the cold run of the same job
    /// sees, its own secrets and settings only, whatever ran beside it or
    /// before it on the same controller.
    #[tokio::test]
    async fn concurrent_warm_runs_see_only_their_own_secrets_and_settings_as_cold_ones_do() {
        let fx = Fixture::real(ISOLATION_PLAYBOOK);
        let shipped_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/ansible.cfg");
        std::fs::copy(shipped_cfg, fx.out("ansible.cfg")).unwrap();
        let warm = fx.real_runner(true).await;
        let controller = warm.controller_pid().unwrap();
        let warm_before = warm_runs();

        let warm_seen = isolation_runs(&fx, &warm, "warm").await;
        let warm_after = warm_runs();
        let cold_seen = isolation_runs(&fx, &fx.real_runner(false).await, "cold").await;

        assert!(warm_after - warm_before >= 3, "not every run went warm");
        let ancestors = |seen: &serde_json::Value| -> Vec<u64> {
            serde_json::from_value(seen["ancestors"].clone()).unwrap()
        };
        for (name, (warm, cold)) in ["a", "b", "c"].iter().zip(warm_seen.iter().zip(&cold_seen)) {
            assert!(
                ancestors(warm).contains(&u64::from(controller)),
                "{name} ran warm: {warm:#}"
            );
            assert!(!ancestors(cold).contains(&u64::from(controller)));
            let (mut warm, mut cold) = (warm.clone(), cold.clone());
            warm["ancestors"].take();
            cold["ancestors"].take();
            assert_eq!(warm, cold, "{name}: warm (left) against cold (right)");
        }
        let [a, b, c] = &warm_seen;
        let cfg = fx.out("ansible.cfg").display().to_string();
        assert_eq!(a["config_file"], json!(cfg));
        assert_eq!(
            (&a["iso_a"], &a["iso_b"]),
            (&json!("secret-of-a"), &json!(""))
        );
        assert_eq!(
            (&b["iso_a"], &b["iso_b"]),
            (&json!(""), &json!("secret-of-b"))
        );
        assert_eq!((&c["iso_a"], &c["iso_b"]), (&json!(""), &json!("")));
        // ansible.cfg says 30; A's own ANSIBLE_TIMEOUT says 7, for A alone.
        assert_eq!((&a["timeout"], &a["ssh_timeout"]), (&json!(7), &json!(7)));
        for other in [b, c] {
            assert_eq!(
                (&other["timeout"], &other["ssh_timeout"]),
                (&json!(30), &json!(30))
            );
            assert!(
                !other["env"].as_str().unwrap().contains("ANSIBLE_TIMEOUT"),
                "{other:#}"
            );
        }
        assert_eq!(a["control_path_dir"], json!("<run>/cp"));
        assert_eq!(c["callbacks"], json!(["infra_events"]));
        assert_eq!((&c["forks"], &c["cli_forks"]), (&json!(10), &json!(10)));
    }

    /// What a fake playbook sees of itself: argv, environment, cwd,
    /// output on both pipes and an exit code, with the run directory
    /// (different for each run) written as `<run>`.
    const SELF_REPORT: &str =
        "printf '%s\\n' \"$0\" \"$@\"\nenv | sort\npwd\necho to-stderr >&2\nexit 3";

    /// The stdout lines of [`SELF_REPORT`], the run directory as `<run>`;
    /// its one stderr line is checked apart, since the two pipes are read
    /// side by side and may interleave either way, warm or cold.
    fn normalized(outcome: &PlaybookOutcome, run_dir: &Path) -> String {
        assert!(
            outcome.output_tail.contains("to-stderr"),
            "{}",
            outcome.output_tail
        );
        outcome
            .output_tail
            .replace(&run_dir.display().to_string(), "<run>")
            .lines()
            // The shell's own bookkeeping, which differs by parent.
            .filter(|l| !l.starts_with("SHLVL=") && !l.starts_with("_=") && *l != "to-stderr")
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn a_warm_run_sees_the_same_argv_env_cwd_pipes_and_exit_as_a_cold_one() {
        let cold = Fixture::new(SELF_REPORT);
        let warm = Fixture::warm(SELF_REPORT, Some("ok")).await;
        assert!(
            warm.runner
                .wait_for_controller(Duration::from_secs(10))
                .await
        );
        let warm_before = warm_runs();

        let (cold_outcome, cold_dir, _) = cold.run(playbook_run(Duration::from_secs(20))).await;
        let (warm_outcome, warm_dir, pgid) = warm.run(playbook_run(Duration::from_secs(20))).await;

        assert!(warm_runs() > warm_before, "the run did not go warm");
        assert_eq!(warm_outcome.exit_code, Some(3));
        assert_eq!(cold_outcome.exit_code, Some(3));
        let (cold_text, warm_text) = (
            normalized(&cold_outcome, &cold_dir),
            normalized(&warm_outcome, &warm_dir),
        );
        // The fixtures' own directories differ; the rest must not.
        let warm_text = warm_text.replace(&warm.dir.path().display().to_string(), "<dir>");
        let cold_text = cold_text.replace(&cold.dir.path().display().to_string(), "<dir>");
        assert_eq!(warm_text, cold_text);
        assert!(warm_text.contains("DEPLOY_TOKEN=***"));
        assert!(!warm_dir.exists());
        assert!(warm_group_is_gone(pgid).await);
    }

    #[tokio::test]
    async fn without_a_controller_script_runs_go_cold() {
        let fx = Fixture::warm("echo cold-anyway", None).await;

        assert!(!fx.runner.wait_for_controller(Duration::from_secs(5)).await);
        let (outcome, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        assert!(outcome.output_tail.contains("cold-anyway"));
    }

    #[tokio::test]
    async fn a_failed_self_check_leaves_the_runner_cold_for_good() {
        let fx = Fixture::warm("echo cold-anyway", Some("fail")).await;

        assert!(!fx.runner.wait_for_controller(Duration::from_secs(10)).await);
        let controller = fx.runner.controller.as_ref().unwrap();
        assert!(controller.is_unusable());
        let (outcome, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(
            controller.restarts(),
            0,
            "no restart after a failed self-check"
        );
    }

    #[tokio::test]
    async fn a_killed_controller_leaves_its_runs_their_results_and_is_replaced() {
        become_subreaper();
        let fx = Fixture::warm("sleep 1\necho done\nexit 4", Some("ok")).await;
        assert!(fx.runner.wait_for_controller(Duration::from_secs(10)).await);
        let first = fx.runner.controller_pid().unwrap();

        let run = fx.run(playbook_run(Duration::from_secs(20)));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            // SAFETY: kill(2) of the controller this test started.
            unsafe { libc::kill(first as i32, libc::SIGKILL) };
        };
        let ((outcome, _, pgid), ()) = tokio::join!(run, kill);

        assert_eq!(outcome.exit_code, Some(4), "{outcome:?}");
        assert!(outcome.output_tail.contains("done"));
        assert!(warm_group_is_gone(pgid).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while fx.runner.controller_pid().is_none_or(|pid| pid == first) {
            assert!(Instant::now() < deadline, "no new controller");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(fx.runner.controller.as_ref().unwrap().restarts() >= 1);
        let warm_before = warm_runs();
        let (next, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;
        assert_eq!(next.exit_code, Some(4));
        assert!(warm_runs() > warm_before, "the next run did not go warm");
    }

    #[tokio::test]
    async fn a_timed_out_warm_run_is_killed_with_its_whole_group() {
        become_subreaper();
        let fx = Fixture::warm(
            "trap '' TERM\necho started\nsleep 30 &\nsleep 30",
            Some("ok"),
        )
        .await;
        assert!(fx.runner.wait_for_controller(Duration::from_secs(10)).await);

        let (outcome, run_dir, pgid) = fx.run(playbook_run(Duration::from_millis(500))).await;

        assert!(outcome.timed_out && !outcome.succeeded());
        assert_eq!(outcome.exit_code, None, "killed by a signal");
        assert!(outcome.output_tail.contains("started"));
        assert!(outcome.duration < Duration::from_secs(10));
        assert!(
            warm_group_is_gone(pgid).await,
            "processes of group {pgid} remain"
        );
        assert!(!run_dir.exists());
    }

    #[tokio::test]
    async fn the_stopped_controller_exits_and_runs_go_cold() {
        let fx = Fixture::warm("exit 0", Some("ok")).await;
        assert!(fx.runner.wait_for_controller(Duration::from_secs(10)).await);
        let pid = fx.runner.controller_pid().unwrap() as i32;

        fx.runner.stop_controller().await;

        assert_eq!(fx.runner.controller_pid(), None);
        assert!(
            Proc::of(pid).is_none_or(|p| !p.is_running()),
            "the controller still runs"
        );
        let (outcome, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;
        assert!(outcome.succeeded(), "{outcome:?}");
    }

    /// Deadlines a test of a hanging controller can wait out: a run gives
    /// up on its fork after 1 s; with `pings`, a ping goes every 200 ms and
    /// is given 500 ms (else none is ever overdue); a restart comes 100 ms
    /// after a loss.
    fn quick_timing(pings: bool) -> Timing {
        let never = Duration::from_secs(3600);
        Timing {
            backoff: Backoff {
                first: Duration::from_millis(100),
                max: Duration::from_millis(100),
            },
            ready_within: Duration::from_secs(10),
            ping_every: if pings {
                Duration::from_millis(200)
            } else {
                never
            },
            pong_within: if pings {
                Duration::from_millis(500)
            } else {
                never
            },
            run: warm::Deadlines {
                pid: Duration::from_secs(1),
                after_kill: Duration::from_secs(5),
            },
        }
    }

    /// The pid of a ready controller other than `old`, within 5 s; `old`
    /// is gone by then.
    async fn replaced(fx: &Fixture, old: u32) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fx.runner.controller_pid() {
                Some(pid) if pid != old => break,
                _ => assert!(Instant::now() < deadline, "controller {old} not replaced"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            Proc::of(old as i32).is_none_or(|p| !p.is_running()),
            "controller {old} still runs"
        );
        assert!(fx.runner.controller.as_ref().unwrap().restarts() >= 1);
        fx.runner.controller_pid().unwrap()
    }

    #[tokio::test]
    async fn a_controller_that_never_forks_a_run_is_replaced_and_the_run_goes_cold() {
        let fx = Fixture::warm_timed("echo ran-cold", Some("hang"), quick_timing(false)).await;
        assert!(fx.runner.wait_for_controller(Duration::from_secs(10)).await);
        let hung = fx.runner.controller_pid().unwrap();

        let (outcome, _, _) = fx.run(playbook_run(Duration::from_secs(20))).await;

        assert!(outcome.succeeded(), "{outcome:?}");
        assert!(outcome.output_tail.contains("ran-cold"));
        // The run waited out the fork deadline once, not more.
        assert!(
            (Duration::from_secs(1)..Duration::from_secs(4)).contains(&outcome.duration),
            "{:?}",
            outcome.duration
        );
        replaced(&fx, hung).await;
    }

    #[tokio::test]
    async fn a_controller_that_answers_no_ping_is_declared_hung_and_replaced() {
        let fx = Fixture::warm_timed("exit 0", Some("hang"), quick_timing(true)).await;
        assert!(fx.runner.wait_for_controller(Duration::from_secs(10)).await);
        let hung = fx.runner.controller_pid().unwrap();

        // It says nothing and never exits: only the pings can tell.
        replaced(&fx, hung).await;
    }
}
