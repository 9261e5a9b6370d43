//! The settings tree: defaults, then a TOML file, then `INFRA__SECTION__KEY`
//! environment variables. Loaded and validated once at start; every later
//! module receives typed, already-checked values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Everything the daemon can be told, one section per concern.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub redis: RedisSettings,
    #[serde(default)]
    pub postgres: PostgresSettings,
    pub worker: WorkerSettings,
    pub ansible: AnsibleSettings,
    pub secrets: SecretsSettings,
    pub log: LogSettings,
    pub ssh: SshSettings,
    pub provision: ProvisionSettings,
    pub time4vps: Time4vpsSettings,
    pub http: HttpSettings,
    pub heartbeat: HeartbeatSettings,
}

/// Where the queues live and who this worker is among its peers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// May carry a password, hence secret.
    #[serde(serialize_with = "redacted")]
    pub url: Option<SecretString>,
    pub group: String,
    /// Unique per process; defaults to `<hostname>-<pid>`.
    pub consumer: Option<String>,
    /// Prefixes every stream and key; empty in production, unique per test.
    pub key_prefix: String,
    /// How long one XREADGROUP blocks before the loop looks around again.
    pub block_ms: u64,
}

/// The status store. Optional until a job kind needs it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    #[serde(serialize_with = "redacted")]
    pub url: Option<SecretString>,
}

/// How much work one process takes on, and for how long.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub job_timeout_secs: u64,
    /// After SIGTERM to a timed-out playbook, how long before SIGKILL.
    pub kill_grace_secs: u64,
    /// An entry idle this long belongs to a dead worker and is taken over.
    pub lease_secs: u64,
    /// A job delivered more often than this is not run again (`worker_lost`).
    pub max_deliveries: u32,
    /// On SIGTERM, how long running jobs may finish before they are killed
    /// and handed back.
    pub shutdown_grace_secs: u64,
}

/// Where the Ansible content is and how to reach target hosts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnsibleSettings {
    pub dir: PathBuf,
    pub playbook_bin: String,
    pub deploy_playbook: PathBuf,
    pub provision_playbook: PathBuf,
    pub recovery_playbook: PathBuf,
    pub ssh_port: u16,
    pub ssh_user: String,
    /// Secret reference of the private key used for deploys.
    pub ssh_key_ref: Option<String>,
}

/// How every job checks that its server answers SSH before a playbook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// Probe SSH before every playbook. `false` skips the probe: an
    /// unreachable host then fails in the playbook (`playbook_failed`).
    pub preflight: bool,
    /// Tries of the SSH probe in all (the contract: 1 + 3 retries).
    pub attempts: u32,
    /// Pause before the first retry; doubles for each further one.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub connect_timeout_secs: u64,
}

/// Provisioning specifics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionSettings {
    /// After a reinstall: how long to wait for SSH to come back.
    pub reinstall_ssh_wait_secs: u64,
}

/// The Time4VPS API, used for `force_reinstall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Time4vpsSettings {
    pub base_url: String,
    /// Secret references of the API credentials.
    pub username_ref: Option<String>,
    pub password_ref: Option<String>,
    /// The OS template a reinstall installs.
    pub os: String,
    pub request_timeout_secs: u64,
    pub poll_interval_secs: u64,
    pub reinstall_deadline_secs: u64,
}

/// The metrics and health endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `IP:port` to serve `/metrics`, `/healthz` and `/readyz` on; port 0
    /// picks a free one (logged as `listen` on "http listening").
    pub listen: String,
}

impl HttpSettings {
    /// The listen address; `validate` has checked that it parses.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .expect("http.listen was validated at load")
    }
}

/// The ops heartbeat file (seed 002: `./tmp/<service>.heartbeat`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// Touched every `interval_secs` while Redis answers; empty disables it.
    pub path: PathBuf,
    pub interval_secs: u64,
}

impl HeartbeatSettings {
    /// The file to touch, unless the heartbeat is disabled.
    pub fn file(&self) -> Option<&Path> {
        (!self.path.as_os_str().is_empty()).then_some(self.path.as_path())
    }
}

/// Where `file:` secret references are read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    pub dir: PathBuf,
}

/// Log output shape.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log shippers.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `infra_service=debug`.
    pub level: String,
}

/// The two log renderings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Secrets print as `***` (or null when unset), never as themselves.
fn redacted<S: Serializer>(secret: &Option<SecretString>, out: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => out.serialize_str("***"),
        None => out.serialize_none(),
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    File {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("configuration: {0}")]
    Invalid(config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Key { key: &'static str, problem: String },
}

const DEFAULTS: &[(&str, &str)] = &[
    ("redis.group", "infra-service"),
    ("redis.key_prefix", ""),
    ("redis.block_ms", "2000"),
    ("worker.concurrency", "4"),
    ("worker.job_timeout_secs", "3600"),
    ("worker.kill_grace_secs", "10"),
    ("worker.lease_secs", "60"),
    ("worker.max_deliveries", "3"),
    ("worker.shutdown_grace_secs", "30"),
    ("ansible.dir", "ansible"),
    ("ansible.playbook_bin", "ansible-playbook"),
    ("ansible.deploy_playbook", "playbooks/deploy_project.yml"),
    ("ansible.provision_playbook", "playbooks/setup_server.yml"),
    ("ansible.recovery_playbook", "playbooks/recovery.yml"),
    ("ansible.ssh_port", "22"),
    ("ansible.ssh_user", "root"),
    ("secrets.dir", "/run/secrets"),
    ("log.format", "pretty"),
    ("ssh.preflight", "true"),
    ("ssh.attempts", "4"),
    ("ssh.retry_base_ms", "2000"),
    ("ssh.retry_max_ms", "60000"),
    ("ssh.connect_timeout_secs", "10"),
    ("provision.reinstall_ssh_wait_secs", "900"),
    ("time4vps.base_url", "https://billing.time4vps.com/api/"),
    ("time4vps.os", "ubuntu-22.04-x86_64"),
    ("time4vps.request_timeout_secs", "30"),
    ("time4vps.poll_interval_secs", "10"),
    ("time4vps.reinstall_deadline_secs", "1800"),
    ("log.level", "info"),
    ("http.listen", "127.0.0.1:9187"),
    ("heartbeat.path", "tmp/infra_service.heartbeat"),
    ("heartbeat.interval_secs", "10"),
];

impl Settings {
    /// Loads defaults, the optional file, then `INFRA__*` variables, and
    /// checks the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder
                .set_default(*key, *value)
                .map_err(ConfigError::Invalid)?;
        }
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("INFRA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw = builder.build().map_err(|source| match file {
            Some(path) => ConfigError::File {
                path: path.to_owned(),
                source,
            },
            None => ConfigError::Invalid(source),
        })?;
        let settings: Settings = raw.try_deserialize().map_err(ConfigError::Invalid)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: &str| {
            Err(ConfigError::Key {
                key,
                problem: problem.to_owned(),
            })
        };
        let Some(redis_url) = &self.redis.url else {
            return bad("redis.url", "is required (e.g. redis://127.0.0.1:6379)");
        };
        // A malformed URL is a configuration error, not an outage to wait out.
        if let Err(e) = redis::Client::open(redis_url.expose_secret()) {
            return bad("redis.url", &format!("is not a usable Redis URL: {e}"));
        }
        if self.redis.group.is_empty() {
            return bad("redis.group", "must not be empty");
        }
        if self.redis.consumer.as_deref() == Some("") {
            return bad("redis.consumer", "must not be empty");
        }
        if self.redis.block_ms == 0 {
            return bad("redis.block_ms", "must be at least 1");
        }
        if !(1..=1024).contains(&self.worker.concurrency) {
            return bad("worker.concurrency", "must be between 1 and 1024");
        }
        if self.worker.job_timeout_secs == 0 {
            return bad("worker.job_timeout_secs", "must be at least 1");
        }
        if self.worker.lease_secs < 2 {
            return bad("worker.lease_secs", "must be at least 2");
        }
        if self.worker.max_deliveries == 0 {
            return bad("worker.max_deliveries", "must be at least 1");
        }
        if self.ansible.playbook_bin.is_empty() {
            return bad("ansible.playbook_bin", "must not be empty");
        }
        if self.ansible.ssh_port == 0 {
            return bad("ansible.ssh_port", "must be between 1 and 65535");
        }
        if self.ssh.attempts == 0 {
            return bad("ssh.attempts", "must be at least 1");
        }
        let Some(postgres_url) = &self.postgres.url else {
            return bad(
                "postgres.url",
                "is required (e.g. postgres://infra@127.0.0.1/infra)",
            );
        };
        if let Err(e) = postgres_url
            .expose_secret()
            .parse::<sqlx::postgres::PgConnectOptions>()
        {
            return bad(
                "postgres.url",
                &format!("is not a usable Postgres URL: {e}"),
            );
        }
        if self.time4vps.poll_interval_secs == 0 {
            return bad("time4vps.poll_interval_secs", "must be at least 1");
        }
        if self.ansible.ssh_user.is_empty() {
            return bad("ansible.ssh_user", "must not be empty");
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "http.listen",
                "must be an IP address and port (e.g. 127.0.0.1:9187)",
            );
        }
        if self.heartbeat.interval_secs == 0 {
            return bad("heartbeat.interval_secs", "must be at least 1");
        }
        Ok(())
    }

    /// This process's consumer name in the groups.
    pub fn consumer_name(&self) -> String {
        self.redis.consumer.clone().unwrap_or_else(|| {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "worker".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

impl AnsibleSettings {
    /// A playbook path from the settings, resolved against `ansible.dir`.
    pub fn playbook_path(&self, relative: &Path) -> PathBuf {
        self.dir.join(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Settings::load(Some(file.path()))
    }

    const REQUIRED: &str = "[redis]\nurl = \"redis://127.0.0.1:6379\"\n\
                            [postgres]\nurl = \"postgres://infra@127.0.0.1/infra\"\n";

    #[test]
    fn defaults_fill_everything_but_the_two_urls() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(s.redis.group, "infra-service");
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker.job_timeout_secs, 3600);
        assert_eq!(s.ansible.dir, PathBuf::from("ansible"));
        assert_eq!(s.ansible.ssh_port, 22);
        assert_eq!(s.ansible.ssh_user, "root");
        assert_eq!(s.secrets.dir, PathBuf::from("/run/secrets"));
        assert!(s.ssh.preflight);
        assert!(
            s.consumer_name()
                .ends_with(&format!("-{}", std::process::id()))
        );
    }

    #[test]
    fn a_missing_redis_url_is_named() {
        let err = load_toml("[worker]\nconcurrency = 2\n").unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");
    }

    #[test]
    fn a_missing_postgres_url_is_named() {
        let err = load_toml("[redis]\nurl = \"redis://x\"\n").unwrap_err();
        assert!(err.to_string().contains("postgres.url"), "{err}");
    }

    #[test]
    fn a_wrongly_typed_value_names_its_key() {
        let err = load_toml("[redis]\nurl = \"redis://x\"\n[worker]\nconcurrency = \"many\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err =
            load_toml("[redis]\nurl = \"redis://x\"\n[worker]\nconcurency = 2\n").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn metrics_listen_on_loopback_and_the_heartbeat_follows_the_ops_convention_by_default() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(s.http.listen_addr(), "127.0.0.1:9187".parse().unwrap());
        assert_eq!(
            s.heartbeat.file(),
            Some(Path::new("tmp/infra_service.heartbeat"))
        );
        assert_eq!(s.heartbeat.interval_secs, 10);
    }

    #[test]
    fn an_empty_heartbeat_path_disables_it() {
        let s = load_toml(&format!("{REQUIRED}[heartbeat]\npath = \"\"\n")).unwrap();
        assert_eq!(s.heartbeat.file(), None);
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        let err = load_toml(&format!("{REQUIRED}[http]\nlisten = \"localhost\"\n")).unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
    }

    #[test]
    fn the_ssh_preflight_can_be_turned_off() {
        let s = load_toml(&format!("{REQUIRED}[ssh]\npreflight = false\n")).unwrap();
        assert!(!s.ssh.preflight);
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let err =
            load_toml("[redis]\nurl = \"redis://x\"\n[worker]\nconcurrency = 0\n").unwrap_err();
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
    }
}
