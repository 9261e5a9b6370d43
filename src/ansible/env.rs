//! The playbook child's environment, computed without I/O from the worker's
//! environment, the run's paths and the job's secrets ([`child_env`]).
//!
//! The child starts from nothing: the allowlisted worker variables and every
//! `ANSIBLE_*` (operators tune Ansible that way), our defaults where the
//! operator set none, the settings the runner relies on, the events plugin
//! beside the operator's callbacks, and last the job's secrets. Nothing else
//! of the worker passes: not its settings (`INFRA__*`), not Postgres' `PG*`,
//! not the variables its `env:` secret references read (unless one is named
//! `ANSIBLE_*`, which the operator then chose to share).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::events;

/// Worker variables the child inherits by name (besides every `ANSIBLE_*`).
pub(crate) const INHERITED_VARS: [&str; 7] =
    ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME"];

/// A child's environment: variable names to values.
pub(crate) type EnvMap = BTreeMap<OsString, OsString>;

/// Where the `infra_events` plugin is and the files it writes to.
#[derive(Debug)]
pub(crate) struct EventsPlugin {
    /// The directory holding `infra_events.py`.
    pub(crate) plugin_dir: PathBuf,
    /// The run's events file the plugin appends to, when progress is
    /// followed.
    pub(crate) file: Option<PathBuf>,
    /// Where the plugin writes the play's `set_stats` data at the end.
    pub(crate) stats: PathBuf,
}

/// The paths of one run that its child's environment names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunPaths<'a> {
    /// The Ansible dir's `ansible.cfg`, when there is one.
    pub(crate) ansible_cfg: Option<&'a Path>,
    /// Where ssh puts the run's ControlPath sockets.
    pub(crate) control_path_dir: &'a Path,
    /// The events plugin, when the Ansible dir has it.
    pub(crate) events: Option<&'a EventsPlugin>,
}

/// The whole environment of the run's child: see the module's notes. The
/// job's secrets come last, so nothing of the worker can shadow one.
pub(crate) fn child_env(
    worker_env: impl IntoIterator<Item = (OsString, OsString)>,
    paths: RunPaths<'_>,
    secrets: &[(String, SecretString)],
) -> EnvMap {
    let mut env = shared_env(worker_env, paths.ansible_cfg);
    add_run_settings(&mut env, paths);
    if let Some(plugin) = paths.events {
        add_events_plugin(&mut env, plugin);
    }
    // Secret values reach the child here and nowhere else.
    for (name, value) in secrets {
        env.insert(name.into(), value.expose_secret().into());
    }
    env
}

/// The part of every run's environment that does not depend on the run:
/// the inherited variables and our defaults. The warm controller starts
/// with exactly this, so what it reads at import is what a cold run reads.
pub(crate) fn shared_env(
    worker_env: impl IntoIterator<Item = (OsString, OsString)>,
    ansible_cfg: Option<&Path>,
) -> EnvMap {
    let mut env = inherited(worker_env);
    add_defaults(&mut env, ansible_cfg);
    env
}

/// The worker's variables the child may see: the allowlist and `ANSIBLE_*`.
fn inherited(worker_env: impl IntoIterator<Item = (OsString, OsString)>) -> EnvMap {
    worker_env
        .into_iter()
        .filter(|(name, _)| {
            name.to_str()
                .is_some_and(|name| INHERITED_VARS.contains(&name) || name.starts_with("ANSIBLE_"))
        })
        .collect()
}

/// Our defaults where the operator set none, then what the runner relies on
/// whatever the operator set.
fn add_defaults(env: &mut EnvMap, ansible_cfg: Option<&Path>) {
    if let Some(cfg) = ansible_cfg {
        env.entry("ANSIBLE_CONFIG".into()).or_insert(cfg.into());
    }
    // Colour codes would break the recap parsing; retry files would litter.
    env.entry("ANSIBLE_NOCOLOR".into()).or_insert("1".into());
    env.entry("ANSIBLE_RETRY_FILES_ENABLED".into())
        .or_insert("0".into());
    // Output arrives as it happens, not in 4 KiB blocks at exit.
    env.insert("PYTHONUNBUFFERED".into(), "1".into());
}

/// What one run relies on whatever the operator set.
fn add_run_settings(env: &mut EnvMap, paths: RunPaths<'_>) {
    // The sockets must live in the run's directory: they are how its
    // ControlMasters are found and told to exit.
    env.insert(
        "ANSIBLE_SSH_CONTROL_PATH_DIR".into(),
        paths.control_path_dir.into(),
    );
}

/// The events plugin as a notification callback: the stdout callback, whose
/// output the recap scanner reads, stays whatever it was.
fn add_events_plugin(env: &mut EnvMap, plugin: &EventsPlugin) {
    append_list(
        env,
        "ANSIBLE_CALLBACKS_ENABLED",
        ",",
        events::PLUGIN_NAME.as_ref(),
    );
    prepend_list(
        env,
        "ANSIBLE_CALLBACK_PLUGINS",
        ":",
        plugin.plugin_dir.as_os_str(),
    );
    if let Some(file) = &plugin.file {
        env.insert(events::EVENTS_FILE_VAR.into(), file.clone().into());
    }
    env.insert(events::STATS_FILE_VAR.into(), plugin.stats.clone().into());
}

/// `name=item`, or `name=<old><sep>item` when the operator set it.
fn append_list(env: &mut EnvMap, name: &str, sep: &str, item: &OsStr) {
    let value = env.entry(name.into()).or_default();
    if !value.is_empty() {
        value.push(sep);
    }
    value.push(item);
}

/// `name=item`, or `name=item<sep><old>` when the operator set it.
fn prepend_list(env: &mut EnvMap, name: &str, sep: &str, item: &OsStr) {
    let mut value = OsString::from(item);
    if let Some(old) = env.get(OsStr::new(name)).filter(|old| !old.is_empty()) {
        value.push(sep);
        value.push(old);
    }
    env.insert(name.into(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run without `ansible.cfg` or followed progress.
    fn paths() -> RunPaths<'static> {
        RunPaths {
            ansible_cfg: None,
            control_path_dir: Path::new("/run/ia-x/cp"),
            events: None,
        }
    }

    fn worker(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(name, value)| ((*name).into(), (*value).into()))
            .collect()
    }

    fn get(env: &EnvMap, name: &str) -> Option<String> {
        env.get(OsStr::new(name))
            .map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn only_the_allowlist_and_ansible_variables_of_the_worker_pass() {
        let env = child_env(
            worker(&[
                ("PATH", "/usr/bin"),
                ("HOME", "/home/worker"),
                ("LANG", "C.UTF-8"),
                ("SOME_WORKER_VAR", "leak"),
                ("ANSIBLE_FOO", "bar"),
                ("PYTHONPATH", "/opt/py"),
            ]),
            paths(),
            &[],
        );

        assert_eq!(get(&env, "PATH").as_deref(), Some("/usr/bin"));
        assert_eq!(get(&env, "HOME").as_deref(), Some("/home/worker"));
        assert_eq!(get(&env, "LANG").as_deref(), Some("C.UTF-8"));
        assert_eq!(get(&env, "ANSIBLE_FOO").as_deref(), Some("bar"));
        assert_eq!(get(&env, "SOME_WORKER_VAR"), None);
        assert_eq!(get(&env, "PYTHONPATH"), None);
    }

    #[test]
    fn the_workers_settings_database_and_referenced_secrets_never_pass() {
        let env = child_env(
            worker(&[
                ("INFRA__REDIS__URL", "redis://:pw@redis:6379"),
                ("INFRA__POSTGRES__URL", "postgres://u:pw@db/infra"),
                ("INFRA__ANSIBLE__SSH_KEY_REF", "env:DEPLOY_SSH_KEY"),
                ("PGPASSWORD", "pw"),
                ("PGHOST", "db"),
                ("DEPLOY_SSH_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----"),
                ("GITHUB_TOKEN", "ghp_referenced"),
            ]),
            paths(),
            &[],
        );

        let names: Vec<_> = env.keys().map(|n| n.to_string_lossy()).collect();
        assert_eq!(
            names,
            [
                "ANSIBLE_NOCOLOR",
                "ANSIBLE_RETRY_FILES_ENABLED",
                "ANSIBLE_SSH_CONTROL_PATH_DIR",
                "PYTHONUNBUFFERED"
            ]
        );
    }

    #[test]
    fn the_operators_ansible_settings_win_over_our_defaults() {
        let cfg = Path::new("/srv/ansible/ansible.cfg");
        let operator = worker(&[
            ("ANSIBLE_NOCOLOR", "0"),
            ("ANSIBLE_RETRY_FILES_ENABLED", "1"),
            ("ANSIBLE_CONFIG", "/etc/ansible/mine.cfg"),
        ]);
        let with_cfg = RunPaths {
            ansible_cfg: Some(cfg),
            ..paths()
        };

        let chosen = child_env(operator, with_cfg, &[]);
        let defaults = child_env(Vec::new(), with_cfg, &[]);

        assert_eq!(get(&chosen, "ANSIBLE_NOCOLOR").as_deref(), Some("0"));
        assert_eq!(
            get(&chosen, "ANSIBLE_RETRY_FILES_ENABLED").as_deref(),
            Some("1")
        );
        assert_eq!(
            get(&chosen, "ANSIBLE_CONFIG").as_deref(),
            Some("/etc/ansible/mine.cfg")
        );
        assert_eq!(get(&defaults, "ANSIBLE_NOCOLOR").as_deref(), Some("1"));
        assert_eq!(
            get(&defaults, "ANSIBLE_RETRY_FILES_ENABLED").as_deref(),
            Some("0")
        );
        assert_eq!(
            get(&defaults, "ANSIBLE_CONFIG").as_deref(),
            Some("/srv/ansible/ansible.cfg")
        );
        assert_eq!(
            get(&child_env(Vec::new(), paths(), &[]), "ANSIBLE_CONFIG"),
            None
        );
    }

    #[test]
    fn the_control_path_and_unbuffered_output_are_ours_whatever_the_operator_set() {
        let env = child_env(
            worker(&[("ANSIBLE_SSH_CONTROL_PATH_DIR", "/var/shared/cp")]),
            paths(),
            &[],
        );

        assert_eq!(
            get(&env, "ANSIBLE_SSH_CONTROL_PATH_DIR").as_deref(),
            Some("/run/ia-x/cp")
        );
        assert_eq!(get(&env, "PYTHONUNBUFFERED").as_deref(), Some("1"));
    }

    #[test]
    fn the_jobs_secrets_are_added_last_and_shadow_the_worker() {
        let secrets = vec![
            ("DEPLOY_TOKEN".to_owned(), SecretString::from("ghp_job")),
            ("ANSIBLE_VAULT_PASSWORD".to_owned(), SecretString::from("v")),
        ];
        let env = child_env(
            worker(&[("ANSIBLE_VAULT_PASSWORD", "worker's")]),
            paths(),
            &secrets,
        );

        assert_eq!(get(&env, "DEPLOY_TOKEN").as_deref(), Some("ghp_job"));
        assert_eq!(get(&env, "ANSIBLE_VAULT_PASSWORD").as_deref(), Some("v"));
    }

    #[test]
    fn the_shared_part_is_the_run_environment_without_its_paths_and_secrets() {
        let cfg = Path::new("/srv/ansible/ansible.cfg");
        let worker_env = worker(&[("PATH", "/usr/bin"), ("ANSIBLE_FORKS", "3"), ("X", "y")]);
        let secrets = vec![("DEPLOY_TOKEN".to_owned(), SecretString::from("t"))];
        let run = RunPaths {
            ansible_cfg: Some(cfg),
            ..paths()
        };

        let mut shared = shared_env(worker_env.clone(), Some(cfg));
        let full = child_env(worker_env, run, &secrets);

        shared.insert("ANSIBLE_SSH_CONTROL_PATH_DIR".into(), "/run/ia-x/cp".into());
        shared.insert("DEPLOY_TOKEN".into(), "t".into());
        assert_eq!(shared, full);
    }

    #[test]
    fn followed_progress_adds_the_events_plugin_to_the_operators_callbacks() {
        let plugin = EventsPlugin {
            plugin_dir: "/srv/ansible/plugins/callback".into(),
            file: Some("/tmp/ia-x/events.jsonl".into()),
            stats: "/tmp/ia-x/stats.json".into(),
        };
        let followed = RunPaths {
            events: Some(&plugin),
            ..paths()
        };
        let plain = child_env(Vec::new(), followed, &[]);
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
            get(&plain, "INFRA_STATS_FILE").as_deref(),
            Some("/tmp/ia-x/stats.json")
        );
        assert_eq!(
            get(&plain, "ANSIBLE_STDOUT_CALLBACK"),
            None,
            "stdout callback untouched"
        );

        let operator = worker(&[
            ("ANSIBLE_CALLBACKS_ENABLED", "timer"),
            ("ANSIBLE_CALLBACK_PLUGINS", "/opt/cb"),
        ]);
        let merged = child_env(operator, followed, &[]);
        assert_eq!(
            get(&merged, "ANSIBLE_CALLBACKS_ENABLED").as_deref(),
            Some("timer,infra_events")
        );
        assert_eq!(
            get(&merged, "ANSIBLE_CALLBACK_PLUGINS").as_deref(),
            Some("/srv/ansible/plugins/callback:/opt/cb")
        );

        let off = child_env(Vec::new(), paths(), &[]);
        assert_eq!(get(&off, "ANSIBLE_CALLBACKS_ENABLED"), None);
        assert_eq!(get(&off, "INFRA_EVENTS_FILE"), None);
    }
}
