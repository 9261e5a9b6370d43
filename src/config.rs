//! The settings tree: defaults, then a TOML file, then `INFRA__SECTION__KEY`
//! environment variables. Loaded and checked once at start into typed
//! values (a socket address, opened connection settings, a parsed API URL),
//! so no later module unwraps or re-checks one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::github::ApiUrl;
use crate::job::SecretRef;
use crate::policy::{DeployTargets, RefPattern};
use crate::provider::time4vps::{self, BaseUrl};
use crate::secrets::LocalSecrets;
use crate::secrets::vault::{CaCert, VaultAddr};

/// Everything the daemon can be told, one section per concern.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub redis: RedisSettings,
    pub postgres: PostgresSettings,
    pub worker: WorkerSettings,
    pub ansible: AnsibleSettings,
    pub secrets: SecretsSettings,
    pub log: LogSettings,
    pub ssh: SshSettings,
    pub provision: ProvisionSettings,
    pub time4vps: Time4vpsSettings,
    pub vault: VaultSettings,
    pub github: GithubSettings,
    pub ci: CiSettings,
    pub http: HttpSettings,
    pub heartbeat: HeartbeatSettings,
    pub policy: PolicySettings,
    pub console: ConsoleSettings,
}

/// Where the queues live and who this worker is among its peers.
#[derive(Debug, Clone, Serialize)]
pub struct RedisSettings {
    /// The server; with Sentinel, only its scheme (`rediss://` for TLS),
    /// credentials and database count: the master's address is asked.
    pub url: RedisUrl,
    /// Sentinels to ask for the master, when Redis is run with Sentinel.
    pub sentinel: Option<SentinelSettings>,
    pub tls: RedisTls,
    /// The ACL user (`AUTH <username> <password>`); overrides the URL's.
    pub username: Option<String>,
    /// Secret reference of the password (`env:` or `file:`), read at each
    /// connect so a rotated file is picked up by the next connection.
    pub password_ref: Option<String>,
    /// `env:` and `file:` references are read through this.
    #[serde(skip)]
    pub secrets: LocalSecrets,
    pub group: String,
    /// Unique per process; defaults to `<hostname>-<pid>`.
    pub consumer: Option<String>,
    /// Prefixes every stream and key; empty in production, unique per test.
    pub key_prefix: String,
    /// How long one XREADGROUP blocks before the loop looks around again.
    pub block_ms: u64,
    /// After publishing a result, `WAIT` for this many replicas to have it
    /// before moving on (0: do not wait).
    pub wait_replicas: u32,
    /// How long that `WAIT` may take.
    pub wait_timeout_ms: u64,
}

/// `redis.sentinels` and `redis.sentinel_master`.
#[derive(Debug, Clone, Serialize)]
pub struct SentinelSettings {
    /// `host:port` of each Sentinel, asked in this order.
    pub nodes: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under.
    pub master: String,
}

/// The TLS side of `redis.*`; used when the URL is `rediss://`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisTls {
    /// Trusted besides the system's roots (a private CA).
    pub ca_cert: Option<CertFile>,
    /// A client certificate, for servers that ask for one
    /// (`tls-auth-clients yes`); needs `client_key_ref`.
    pub client_cert: Option<CertFile>,
    /// Secret reference of the client certificate's private key (PEM).
    pub client_key_ref: Option<String>,
}

/// `redis.url`, checked and parsed. It may carry a password, so it prints
/// as `***`.
#[derive(Clone)]
pub struct RedisUrl(redis::ConnectionInfo);

impl RedisUrl {
    /// Checks that `url` is a Redis URL the client accepts.
    pub fn parse(url: &str) -> Result<RedisUrl, redis::RedisError> {
        redis::IntoConnectionInfo::into_connection_info(url).map(RedisUrl)
    }

    /// What connections to the server are made from.
    pub fn info(&self) -> &redis::ConnectionInfo {
        &self.0
    }

    /// `rediss://`: connections use TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.0.addr(), redis::ConnectionAddr::TcpTls { .. })
    }
}

impl RedisSettings {
    /// Settings for one plain server at `url` and these names: every
    /// other key at its default. For tools and tests that build settings
    /// without a file.
    pub fn plain(url: RedisUrl, group: &str, key_prefix: &str) -> RedisSettings {
        RedisSettings {
            url,
            sentinel: None,
            tls: RedisTls::default(),
            username: None,
            password_ref: None,
            secrets: LocalSecrets::new(PathBuf::from("/run/secrets")),
            group: group.to_owned(),
            consumer: None,
            key_prefix: key_prefix.to_owned(),
            block_ms: 2000,
            wait_replicas: 0,
            wait_timeout_ms: 1000,
        }
    }
}

/// A PEM certificate bundle named by a setting (`redis.ca_cert`,
/// `postgres.ca_cert`, `redis.client_cert`), read and checked when the
/// settings load: an unreadable file is the operator's to fix at start,
/// not an outage to retry. Certificates are public; the bytes are kept.
#[derive(Clone)]
pub struct CertFile {
    path: PathBuf,
    pem: Vec<u8>,
}

impl CertFile {
    /// Reads every certificate of the PEM bundle at `path`; none is an
    /// error naming `key`.
    pub fn load(key: &'static str, path: &Path) -> Result<CertFile, ConfigError> {
        let problem = |problem: String| ConfigError::Key { key, problem };
        let pem = std::fs::read(path)
            .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            problem(format!(
                "{} is not a PEM certificate bundle: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(problem(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        Ok(CertFile {
            path: path.to_owned(),
            pem,
        })
    }

    /// Where the certificates were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bundle as read.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl std::fmt::Debug for CertFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.path, f)
    }
}

impl Serialize for CertFile {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(out)
    }
}

/// The status store.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresSettings {
    /// The URL with `sslmode` and `ca_cert` applied; a `password_ref`'s
    /// value is added when the store is opened.
    pub url: PostgresUrl,
    /// The TLS mode in effect: `postgres.sslmode`, else the URL's, else
    /// `PGSSLMODE`, else `prefer` (libpq's default).
    pub sslmode: SslMode,
    /// The CA the server's certificate must chain to (with the system's
    /// roots), under `verify-ca` or `verify-full` only.
    pub ca_cert: Option<CertFile>,
    /// Secret reference (`env:` or `file:`) of the password; a reference,
    /// never the value.
    pub password_ref: Option<String>,
}

/// `postgres.sslmode`: libpq's modes, weakest first (the order is what
/// "stricter" means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// Plain connections only (sqlx does not implement `allow`'s fallback).
    Allow,
    /// TLS if the server offers it, unverified; else plain.
    Prefer,
    /// TLS, unverified. Unlike libpq, a CA certificate does not make it
    /// `verify-ca`.
    Require,
    /// TLS with a certificate chaining to a trusted CA, any host name.
    VerifyCa,
    /// TLS with a trusted certificate for the host name in the URL.
    VerifyFull,
}

impl SslMode {
    const ALL: [(SslMode, &'static str); 6] = [
        (SslMode::Disable, "disable"),
        (SslMode::Allow, "allow"),
        (SslMode::Prefer, "prefer"),
        (SslMode::Require, "require"),
        (SslMode::VerifyCa, "verify-ca"),
        (SslMode::VerifyFull, "verify-full"),
    ];

    /// libpq's spelling, any case (as sqlx reads the URL's).
    pub fn parse(text: &str) -> Option<SslMode> {
        let text = text.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|(_, name)| *name == text)
            .map(|(mode, _)| mode)
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .into_iter()
            .find(|(mode, _)| *mode == self)
            .map_or("", |(_, name)| name)
    }

    /// Does the server's certificate have to chain to a trusted CA?
    pub fn verifies(self) -> bool {
        self >= SslMode::VerifyCa
    }
}

impl From<SslMode> for PgSslMode {
    fn from(mode: SslMode) -> PgSslMode {
        match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

impl From<PgSslMode> for SslMode {
    fn from(mode: PgSslMode) -> SslMode {
        match mode {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow => SslMode::Allow,
            PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require => SslMode::Require,
            PgSslMode::VerifyCa => SslMode::VerifyCa,
            PgSslMode::VerifyFull => SslMode::VerifyFull,
        }
    }
}

/// `postgres.url`, parsed into connection options (a password missing from
/// it is taken from `PGPASSWORD` or `PGPASSFILE` then). It may carry a
/// password, so it prints as `***`.
#[derive(Clone)]
pub struct PostgresUrl(PgConnectOptions);

impl PostgresUrl {
    /// Checks that `url` is a Postgres URL sqlx accepts.
    pub fn parse(url: &str) -> Result<PostgresUrl, sqlx::Error> {
        url.parse().map(PostgresUrl)
    }

    /// What a pool connects with.
    pub fn options(&self) -> &PgConnectOptions {
        &self.0
    }
}

/// What the text of `postgres.url` itself says about TLS and the password
/// (sqlx's options cannot tell the URL's from `PGSSLMODE`'s or
/// `PGPASSWORD`'s), under every spelling sqlx reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct UrlGives {
    password: bool,
    sslmode: Option<SslMode>,
    root_cert: bool,
}

impl UrlGives {
    /// Read from a URL sqlx has already accepted.
    fn of(url: &str) -> UrlGives {
        let Ok(url) = reqwest::Url::parse(url) else {
            return UrlGives::default();
        };
        let mut gives = UrlGives {
            password: url.password().is_some(),
            ..UrlGives::default()
        };
        for (key, value) in url.query_pairs() {
            match &*key {
                "password" => gives.password = true,
                // The last one counts, as in sqlx.
                "sslmode" | "ssl-mode" => gives.sslmode = SslMode::parse(&value),
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => gives.root_cert = true,
                _ => {}
            }
        }
        gives
    }
}

/// A connection URL prints as `***` in `Debug` and `check-config --json`:
/// the same mask the `Redactor` puts over secrets in text.
macro_rules! masked {
    ($name:ident) => {
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(***)"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
                out.serialize_str("***")
            }
        }
    };
}
masked!(RedisUrl);
masked!(PostgresUrl);

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
    /// The play that gives a repository's CI its key on a server.
    pub ci_playbook: PathBuf,
    pub ssh_port: u16,
    pub ssh_user: String,
    /// `ansible.become`: every play runs its tasks through sudo, for an
    /// `ssh_user` that is not root (setup_server.yml's `deploy` user).
    #[serde(rename = "become")]
    pub become_root: bool,
    /// Secret reference of the private key used for deploys.
    pub ssh_key_ref: Option<String>,
    /// Variables every playbook gets, before the job's (a job's own fields
    /// stay its own), e.g. `git_base_url` for GitHub Enterprise or
    /// `services_root`. Nothing secret: they are on the command line.
    #[serde(default)]
    pub extra_vars: serde_json::Map<String, serde_json::Value>,
    /// How `ansible-playbook` is started: forked from a warm controller
    /// that imported Ansible once, or as a fresh process each run.
    pub controller: ControllerMode,
    /// The interpreter that imports Ansible; the warm controller is
    /// `<python> <dir>/controller/infra_controller.py`.
    pub python: String,
}

/// `ansible.controller`: how each playbook run is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerMode {
    /// Forked from a long-lived Python controller (falls back to `cold`
    /// while it is down, or for good when its self-check fails).
    Warm,
    /// A fresh `ansible-playbook` process per run.
    Cold,
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
#[derive(Debug, Clone, Serialize)]
pub struct Time4vpsSettings {
    pub base_url: BaseUrl,
    /// Secret references of the API credentials.
    pub username_ref: Option<String>,
    pub password_ref: Option<String>,
    /// The OS template a reinstall installs.
    pub os: String,
    pub request_timeout_secs: u64,
    pub poll_interval_secs: u64,
    pub reinstall_deadline_secs: u64,
}

/// The Vault (or OpenBao) server `vault:` references are read from.
#[derive(Debug, Clone, Serialize)]
pub struct VaultSettings {
    /// `None` when unset: Vault is not configured, and every `vault:`
    /// reference fails `unavailable` saying so.
    pub addr: Option<VaultAddr>,
    /// A private CA, loaded at start: then the only roots trusted for Vault.
    pub ca_cert: Option<CaCert>,
    /// Sent as `X-Vault-Namespace` (Vault Enterprise, OpenBao namespaces).
    pub namespace: Option<String>,
    /// One HTTP request's limit.
    pub timeout_secs: u64,
    /// How long a read keeps retrying 5xx, 429 and lost connections.
    pub retry_secs: u64,
    /// How the worker logs in: `None` only when `addr` is unset and the
    /// chosen method's keys are incomplete. Holds references, never values.
    pub auth: Option<VaultAuth>,
    /// Every login reference given, by key, whichever method is chosen:
    /// the worker's own credentials, which no job may name.
    #[serde(skip)]
    pub login_refs: Vec<(&'static str, String)>,
    /// `vault.kubernetes_jwt_path`, set or default, whichever method is
    /// chosen: the pod's service-account token is a credential too (and
    /// `/var/run/secrets` is `/run/secrets`, the default secrets dir).
    #[serde(skip)]
    pub kubernetes_jwt_path: PathBuf,
}

/// `vault.auth` with the keys its method needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum VaultAuth {
    /// A token from an `env:` or `file:` reference (a file is read again
    /// when it changes, so a Vault Agent sink works).
    Token { token_ref: String },
    /// `POST /v1/auth/<mount>/login` with a role id and a secret id.
    Approle {
        role_id_ref: String,
        secret_id_ref: String,
        mount: String,
    },
    /// `POST /v1/auth/<mount>/login` with the pod's service-account token.
    Kubernetes {
        role: String,
        jwt_path: PathBuf,
        mount: String,
    },
}

impl VaultAuth {
    /// The worker's own login references (`env:`/`file:`), which no job
    /// may name.
    pub fn login_refs(&self) -> Vec<&str> {
        match self {
            VaultAuth::Token { token_ref } => vec![token_ref],
            VaultAuth::Approle {
                role_id_ref,
                secret_id_ref,
                ..
            } => vec![role_id_ref, secret_id_ref],
            VaultAuth::Kubernetes { .. } => Vec::new(),
        }
    }
}

/// The GitHub API, where CI deploy secrets are written.
#[derive(Debug, Clone, Serialize)]
pub struct GithubSettings {
    /// `https://api.github.com`, or a GitHub Enterprise `.../api/v3`.
    pub api_url: ApiUrl,
    /// Log in as this App when set; otherwise with the job's token.
    pub app: Option<GithubApp>,
    /// One HTTP request's limit.
    pub timeout_secs: u64,
    /// How long one write of a repository's secrets may take in all,
    /// waiting out rate limits and 5xx included.
    pub retry_secs: u64,
}

/// The CI access `setup_ci` gives a repository (contract section 7).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CiSettings {
    /// The login CI deploys as: in the `docker` group, no sudo, no
    /// password; never root.
    pub deploy_user: String,
}

/// `github.app_id` with `github.app_private_key_ref`: a reference, never
/// the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GithubApp {
    pub app_id: u64,
    pub private_key_ref: String,
}

/// The metrics and health endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct HttpSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; port 0 picks
    /// a free one (logged as `listen` on "http listening").
    pub listen: SocketAddr,
}

/// The operator console (`infra-service console`).
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleSettings {
    /// Where the console is served; port 0 picks a free one (logged as
    /// `listen` on "console listening"). Not loopback only with `token_ref`.
    pub listen: SocketAddr,
    /// Whether the console may replay dead letters and reset host keys;
    /// read-only when false.
    pub allow_actions: bool,
    /// The login token's reference (`env:` or `file:`); without it there is
    /// no login, which only a loopback `listen` allows.
    pub token_ref: Option<String>,
}

/// The ops heartbeat file, by the ops docs' convention
/// `./tmp/<service>.heartbeat`.
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

/// What a job may name and where it may deploy. Each list left unset
/// restricts nothing (but the worker's own credentials, which no job may
/// ever name); an empty list allows nothing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicySettings {
    /// Patterns a DeployJob's `github_token_ref` must match.
    pub github_token_ref: Option<Vec<RefPattern>>,
    /// Patterns a DeployJob's `secrets_ref` must match.
    pub secrets_ref: Option<Vec<RefPattern>>,
    /// `registered`, CIDR ranges and host names a `server_ip` must be in.
    pub deploy_targets: Option<DeployTargets>,
}

/// The keys whose environment variables are comma-separated lists.
const LIST_KEYS: [&str; 4] = [
    "redis.sentinels",
    "policy.github_token_ref",
    "policy.secrets_ref",
    "policy.deploy_targets",
];

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
    ("redis.wait_replicas", "0"),
    ("redis.wait_timeout_ms", "1000"),
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
    ("ansible.ci_playbook", "playbooks/ci_access.yml"),
    ("ansible.ssh_port", "22"),
    ("ansible.ssh_user", "root"),
    ("ansible.become", "false"),
    ("ansible.controller", "warm"),
    ("ansible.python", "python3"),
    ("secrets.dir", "/run/secrets"),
    ("log.format", "pretty"),
    ("ssh.preflight", "true"),
    ("ssh.attempts", "4"),
    ("ssh.retry_base_ms", "2000"),
    ("ssh.retry_max_ms", "60000"),
    ("ssh.connect_timeout_secs", "10"),
    ("provision.reinstall_ssh_wait_secs", "900"),
    ("time4vps.base_url", time4vps::DEFAULT_BASE_URL),
    ("time4vps.os", "ubuntu-22.04-x86_64"),
    ("time4vps.request_timeout_secs", "30"),
    ("time4vps.poll_interval_secs", "10"),
    ("time4vps.reinstall_deadline_secs", "1800"),
    ("vault.timeout_secs", "5"),
    ("vault.retry_secs", "30"),
    ("vault.auth", "token"),
    ("vault.approle_mount", "approle"),
    (
        "vault.kubernetes_jwt_path",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ),
    ("vault.kubernetes_mount", "kubernetes"),
    ("github.api_url", crate::github::DEFAULT_API_URL),
    ("github.timeout_secs", "10"),
    ("github.retry_secs", "120"),
    ("ci.deploy_user", "ci"),
    ("log.level", "info"),
    ("http.listen", "127.0.0.1:9187"),
    ("console.listen", "127.0.0.1:9188"),
    ("console.allow_actions", "false"),
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
        builder = builder.add_source(environment());
        let raw = builder.build().map_err(|source| match file {
            Some(path) => ConfigError::File {
                path: path.to_owned(),
                source,
            },
            None => ConfigError::Invalid(source),
        })?;
        let raw: RawSettings = raw.try_deserialize().map_err(ConfigError::Invalid)?;
        raw.check()
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

/// `INFRA__SECTION__KEY` variables; the policy's lists are
/// comma-separated there (`INFRA__POLICY__DEPLOY_TARGETS=registered,10.0.0.0/8`).
fn environment() -> config::Environment {
    let mut environment = config::Environment::with_prefix("INFRA")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    environment
}

/// The tree as the sources give it: the sections whose values still need
/// parsing hold them as text (or absent) until [`RawSettings::check`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    redis: RawRedis,
    #[serde(default)]
    postgres: RawPostgres,
    worker: WorkerSettings,
    ansible: AnsibleSettings,
    secrets: SecretsSettings,
    log: LogSettings,
    ssh: SshSettings,
    provision: ProvisionSettings,
    time4vps: RawTime4vps,
    vault: RawVault,
    github: RawGithub,
    ci: CiSettings,
    http: RawHttp,
    heartbeat: HeartbeatSettings,
    #[serde(default)]
    policy: RawPolicy,
    console: RawConsole,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<SecretString>,
    #[serde(default)]
    sentinels: Vec<String>,
    sentinel_master: Option<String>,
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key_ref: Option<String>,
    username: Option<String>,
    password_ref: Option<String>,
    group: String,
    consumer: Option<String>,
    key_prefix: String,
    block_ms: u64,
    wait_replicas: u32,
    wait_timeout_ms: u64,
}

/// Optional in the sources so that its absence is named by our own message.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<SecretString>,
    sslmode: Option<String>,
    ca_cert: Option<PathBuf>,
    password_ref: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTime4vps {
    base_url: String,
    username_ref: Option<String>,
    password_ref: Option<String>,
    os: String,
    request_timeout_secs: u64,
    poll_interval_secs: u64,
    reinstall_deadline_secs: u64,
}

/// The policy's lists as written; blank entries are dropped (a trailing
/// comma in a variable).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    github_token_ref: Option<Vec<String>>,
    secrets_ref: Option<Vec<String>>,
    deploy_targets: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    addr: Option<String>,
    ca_cert: Option<PathBuf>,
    namespace: Option<String>,
    timeout_secs: u64,
    retry_secs: u64,
    auth: VaultAuthMethod,
    token_ref: Option<String>,
    approle_role_id_ref: Option<String>,
    approle_secret_id_ref: Option<String>,
    approle_mount: String,
    kubernetes_role: Option<String>,
    kubernetes_jwt_path: PathBuf,
    kubernetes_mount: String,
}

/// `vault.auth` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum VaultAuthMethod {
    Token,
    Approle,
    Kubernetes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    api_url: String,
    app_id: Option<u64>,
    app_private_key_ref: Option<String>,
    timeout_secs: u64,
    retry_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    listen: String,
    allow_actions: bool,
    token_ref: Option<String>,
}

/// `Err` naming `key` unless `ok`.
fn ensure(ok: bool, key: &'static str, problem: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Key {
            key,
            problem: problem.to_owned(),
        })
    }
}

/// A parse failure of `key`, with the parser's reason.
fn unusable(key: &'static str, what: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Key {
        key,
        problem: format!("is not a usable {what}: {e}"),
    }
}

/// A required key the sources did not give.
fn required(key: &'static str, example: &str) -> ConfigError {
    ConfigError::Key {
        key,
        problem: format!("is required (e.g. {example})"),
    }
}

impl RawSettings {
    /// Every rule, in the order the first broken one is reported.
    fn check(self) -> Result<Settings, ConfigError> {
        let redis = self.redis.check(&self.secrets.dir)?;
        self.worker.check()?;
        self.ansible.check()?;
        ensure(self.ssh.attempts > 0, "ssh.attempts", "must be at least 1")?;
        let postgres = self.postgres.check()?;
        let time4vps = self.time4vps.check()?;
        let vault = self.vault.check()?;
        let github = self.github.check()?;
        self.ci.check(&self.ansible)?;
        let http = self.http.check()?;
        let policy = self.policy.check()?;
        let console = self.console.check()?;
        ensure(
            self.heartbeat.interval_secs > 0,
            "heartbeat.interval_secs",
            "must be at least 1",
        )?;
        Ok(Settings {
            redis,
            postgres,
            worker: self.worker,
            ansible: self.ansible,
            secrets: self.secrets,
            log: self.log,
            ssh: self.ssh,
            provision: self.provision,
            time4vps,
            vault,
            github,
            ci: self.ci,
            http,
            heartbeat: self.heartbeat,
            policy,
            console,
        })
    }
}

impl RawRedis {
    fn check(self, secrets_dir: &Path) -> Result<RedisSettings, ConfigError> {
        let sentinel = self.sentinel()?;
        // With Sentinel the URL only says TLS or not, who logs in and the
        // database: the master's address comes from the Sentinels.
        let url = match (&self.url, &sentinel) {
            (Some(url), _) => RedisUrl::parse(url.expose_secret())
                .map_err(|e| unusable("redis.url", "Redis URL", e))?,
            (None, Some(_)) => RedisUrl::parse("redis://sentinel-master")
                .map_err(|e| unusable("redis.url", "Redis URL", e))?,
            (None, None) => return Err(required("redis.url", "redis://127.0.0.1:6379")),
        };
        let tls = self.tls(&url)?;
        let password_ref = login_ref("redis.password_ref", &self.password_ref)?;
        ensure(
            password_ref.is_none() || url.info().redis_settings().password().is_none(),
            "redis.password_ref",
            "is given and `redis.url` holds a password too: keep one",
        )?;
        ensure(
            self.username.as_deref() != Some(""),
            "redis.username",
            "must not be empty",
        )?;
        ensure(!self.group.is_empty(), "redis.group", "must not be empty")?;
        let consumer = self.consumer.as_deref();
        ensure(consumer != Some(""), "redis.consumer", "must not be empty")?;
        ensure(self.block_ms > 0, "redis.block_ms", "must be at least 1")?;
        ensure(
            self.wait_timeout_ms > 0,
            "redis.wait_timeout_ms",
            "must be at least 1",
        )?;
        Ok(RedisSettings {
            url,
            sentinel,
            tls,
            username: self.username,
            password_ref,
            secrets: LocalSecrets::new(secrets_dir.to_owned()),
            group: self.group,
            consumer: self.consumer,
            key_prefix: self.key_prefix,
            block_ms: self.block_ms,
            wait_replicas: self.wait_replicas,
            wait_timeout_ms: self.wait_timeout_ms,
        })
    }

    /// Both Sentinel keys or neither.
    fn sentinel(&self) -> Result<Option<SentinelSettings>, ConfigError> {
        let master = self.sentinel_master.clone();
        match (self.sentinels.is_empty(), master) {
            (true, None) => Ok(None),
            (true, Some(_)) => Err(required("redis.sentinels", "[\"10.0.0.5:26379\"]")),
            (false, None) => Err(required("redis.sentinel_master", "mymaster")),
            (false, Some(master)) => {
                ensure(
                    !master.is_empty(),
                    "redis.sentinel_master",
                    "must not be empty",
                )?;
                let nodes = self
                    .sentinels
                    .iter()
                    .map(|node| host_port(node))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| ConfigError::Key {
                        key: "redis.sentinels",
                        problem: "each must be host:port (e.g. 10.0.0.5:26379)".to_owned(),
                    })?;
                Ok(Some(SentinelSettings { nodes, master }))
            }
        }
    }

    /// The TLS keys, checked against the URL's scheme: a certificate for a
    /// plain connection is a mistake that would send a password in clear.
    fn tls(&self, url: &RedisUrl) -> Result<RedisTls, ConfigError> {
        let cert = |key, path: &Option<PathBuf>| {
            path.as_deref()
                .map(|path| CertFile::load(key, path))
                .transpose()
        };
        let tls = RedisTls {
            ca_cert: cert("redis.ca_cert", &self.ca_cert)?,
            client_cert: cert("redis.client_cert", &self.client_cert)?,
            client_key_ref: login_ref("redis.client_key_ref", &self.client_key_ref)?,
        };
        let any =
            tls.ca_cert.is_some() || tls.client_cert.is_some() || tls.client_key_ref.is_some();
        ensure(
            !any || url.is_tls(),
            "redis.url",
            "must be a rediss:// URL when redis.ca_cert, redis.client_cert or redis.client_key_ref is set",
        )?;
        match (&tls.client_cert, &tls.client_key_ref) {
            (Some(_), None) => Err(required("redis.client_key_ref", "file:redis/client.key")),
            (None, Some(_)) => Err(required(
                "redis.client_cert",
                "/etc/infra-service/redis-client.crt",
            )),
            _ => Ok(tls),
        }
    }
}

/// `host:port` (an IPv6 host in brackets), or `None`.
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

impl WorkerSettings {
    fn check(&self) -> Result<(), ConfigError> {
        ensure(
            (1..=1024).contains(&self.concurrency),
            "worker.concurrency",
            "must be between 1 and 1024",
        )?;
        ensure(
            self.job_timeout_secs > 0,
            "worker.job_timeout_secs",
            "must be at least 1",
        )?;
        ensure(
            self.lease_secs >= 2,
            "worker.lease_secs",
            "must be at least 2",
        )?;
        ensure(
            self.max_deliveries > 0,
            "worker.max_deliveries",
            "must be at least 1",
        )
    }
}

impl AnsibleSettings {
    fn check(&self) -> Result<(), ConfigError> {
        ensure(
            !self.playbook_bin.is_empty(),
            "ansible.playbook_bin",
            "must not be empty",
        )?;
        ensure(
            self.ssh_port != 0,
            "ansible.ssh_port",
            "must be between 1 and 65535",
        )?;
        ensure(
            !self.ssh_user.is_empty(),
            "ansible.ssh_user",
            "must not be empty",
        )?;
        ensure(
            !self.python.is_empty(),
            "ansible.python",
            "must not be empty",
        )?;
        for name in self.extra_vars.keys() {
            let identifier = crate::secrets::is_variable_name(name);
            // How to reach the host and as whom is the worker's to say: the
            // host key pin and the run's key file depend on it.
            let reserved = name.starts_with("ansible_") || name == "infra_become";
            ensure(
                identifier && !reserved,
                "ansible.extra_vars",
                "names must be Ansible variable names, not ansible_* nor infra_become",
            )?;
        }
        Ok(())
    }
}

/// The sudo account `setup_server.yml` makes (`deploy_user_name` in
/// `ansible/roles/deploy_user/defaults/main.yml`).
const PROVISIONED_SUDO_USER: &str = "deploy";

impl CiSettings {
    /// A login name that is none of the accounts with root's powers: root,
    /// the login the worker's plays use, the provisioned sudo account.
    fn check(&self, ansible: &AnsibleSettings) -> Result<(), ConfigError> {
        let user = &self.deploy_user;
        let mut chars = user.chars();
        let name = user.len() <= 32
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        ensure(
            name,
            "ci.deploy_user",
            "must be a login name: up to 32 of [a-z0-9_-], starting with a letter or _",
        )?;
        // The key CI holds must never carry root's powers.
        ensure(user != "root", "ci.deploy_user", "must not be root")?;
        // The CI play would strip the worker's own login of its sudo, and
        // the next provision would give every CI key passwordless sudo.
        ensure(
            *user != ansible.ssh_user,
            "ci.deploy_user",
            "must not be ansible.ssh_user (the login the worker's plays use)",
        )?;
        ensure(
            user != PROVISIONED_SUDO_USER,
            "ci.deploy_user",
            "must not be `deploy`, setup_server.yml's passwordless sudo account",
        )
    }
}

impl RawPostgres {
    /// The URL with the keys applied. `postgres.sslmode` may tighten the
    /// URL's `sslmode` but never loosen it: the key is how an operator
    /// insists on `verify-full` whatever a provider's URL says, and a
    /// weaker key beside a stricter URL is a contradiction to fix, not one
    /// to settle silently towards less protection.
    fn check(self) -> Result<PostgresSettings, ConfigError> {
        let url = self
            .url
            .ok_or_else(|| required("postgres.url", "postgres://infra@127.0.0.1/infra"))?;
        let PostgresUrl(mut options) = PostgresUrl::parse(url.expose_secret())
            .map_err(|e| unusable("postgres.url", "Postgres URL", e))?;
        let gives = UrlGives::of(url.expose_secret());
        let sslmode = self
            .sslmode
            .as_deref()
            .map(|text| {
                SslMode::parse(text).ok_or_else(|| ConfigError::Key {
                    key: "postgres.sslmode",
                    problem: format!(
                        "{text:?} is none of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                })
            })
            .transpose()?;
        if let (Some(key), Some(url)) = (sslmode, gives.sslmode) {
            ensure(
                key >= url,
                "postgres.sslmode",
                &format!(
                    "{} would weaken the sslmode={} of postgres.url: drop one or make them agree",
                    key.as_str(),
                    url.as_str()
                ),
            )?;
        }
        let password_ref = login_ref("postgres.password_ref", &self.password_ref)?;
        ensure(
            password_ref.is_none() || !gives.password,
            "postgres.password_ref",
            "is given and postgres.url carries a password too: keep one of them",
        )?;
        let ca_cert = self
            .ca_cert
            .map(|path| CertFile::load("postgres.ca_cert", &path))
            .transpose()?;
        if let Some(mode) = sslmode {
            options = options.ssl_mode(mode.into());
        }
        let effective = SslMode::from(options.get_ssl_mode());
        if let Some(ca) = &ca_cert {
            ensure(
                !gives.root_cert,
                "postgres.ca_cert",
                "is given and postgres.url names an sslrootcert too: keep one of them",
            )?;
            // sqlx would read it under `require` and then not check it.
            ensure(
                effective.verifies(),
                "postgres.ca_cert",
                &format!(
                    "is only checked under postgres.sslmode verify-ca or verify-full, \
                     and the mode is {}: set one of them",
                    effective.as_str()
                ),
            )?;
            // native-tls trusts the first certificate of the PEM it is
            // handed; a bundle would fail later, on a certificate it skipped.
            let count = ca.pem().windows(CERT_BEGIN.len());
            let count = count.filter(|w| *w == CERT_BEGIN).count();
            ensure(
                count == 1,
                "postgres.ca_cert",
                &format!(
                    "{} holds {count} certificates; give the one CA that signed the \
                     server's certificate (only one is trusted)",
                    ca.path().display()
                ),
            )?;
            options = options.ssl_root_cert_from_pem(ca.pem().to_vec());
        } else if gives.root_cert {
            // libpq checks a root certificate under `require`; sqlx does not.
            ensure(
                effective.verifies(),
                "postgres.url",
                &format!(
                    "names an sslrootcert, which is only checked under sslmode verify-ca \
                     or verify-full, and the mode is {}",
                    effective.as_str()
                ),
            )?;
        }
        Ok(PostgresSettings {
            url: PostgresUrl(options),
            sslmode: effective,
            ca_cert,
            password_ref,
        })
    }
}

/// How a PEM certificate starts.
const CERT_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";

impl RawTime4vps {
    fn check(self) -> Result<Time4vpsSettings, ConfigError> {
        let poll_interval = self.poll_interval_secs > 0;
        ensure(
            poll_interval,
            "time4vps.poll_interval_secs",
            "must be at least 1",
        )?;
        // Checked here, not at the first reinstall: a typo is the
        // operator's to fix at start, not a job's `provider_error`.
        let base_url = BaseUrl::parse(&self.base_url)
            .map_err(|e| unusable("time4vps.base_url", "API URL", e))?;
        Ok(Time4vpsSettings {
            base_url,
            username_ref: self.username_ref,
            password_ref: self.password_ref,
            os: self.os,
            request_timeout_secs: self.request_timeout_secs,
            poll_interval_secs: self.poll_interval_secs,
            reinstall_deadline_secs: self.reinstall_deadline_secs,
        })
    }
}

impl RawPolicy {
    fn check(self) -> Result<PolicySettings, ConfigError> {
        let deploy_targets = self
            .deploy_targets
            .map(|entries| DeployTargets::parse(&entries))
            .transpose()
            .map_err(|problem| ConfigError::Key {
                key: "policy.deploy_targets",
                problem,
            })?;
        Ok(PolicySettings {
            github_token_ref: patterns("policy.github_token_ref", self.github_token_ref)?,
            secrets_ref: patterns("policy.secrets_ref", self.secrets_ref)?,
            deploy_targets,
        })
    }
}

/// A list of reference patterns, each checked; `None` stays unset.
fn patterns(
    key: &'static str,
    entries: Option<Vec<String>>,
) -> Result<Option<Vec<RefPattern>>, ConfigError> {
    let Some(entries) = entries else {
        return Ok(None);
    };
    let entries = entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty());
    let parsed = entries.map(|entry| {
        RefPattern::parse(entry).map_err(|why| ConfigError::Key {
            key,
            problem: format!("entry {entry:?}: {why}"),
        })
    });
    parsed.collect::<Result<Vec<_>, _>>().map(Some)
}

impl RawVault {
    fn check(self) -> Result<VaultSettings, ConfigError> {
        let addr = self
            .addr
            .as_deref()
            .map(VaultAddr::parse)
            .transpose()
            .map_err(|e| unusable("vault.addr", "Vault address", e))?;
        // Loaded now: an unreadable CA is the operator's to fix at start,
        // not every job's `unavailable`.
        let ca_cert = self
            .ca_cert
            .as_deref()
            .map(CaCert::load)
            .transpose()
            .map_err(|problem| ConfigError::Key {
                key: "vault.ca_cert",
                problem,
            })?;
        // Sent as a header on every request: it must be a valid one.
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|n| !n.is_empty() && reqwest::header::HeaderValue::from_str(n).is_ok());
        ensure(namespace_ok, "vault.namespace", "must be a non-empty name")?;
        ensure(
            self.timeout_secs > 0,
            "vault.timeout_secs",
            "must be at least 1",
        )?;
        let auth = self.auth()?;
        if addr.is_some() && auth.is_none() {
            return Err(self.missing_auth_key());
        }
        let given = [
            ("vault.token_ref", &self.token_ref),
            ("vault.approle_role_id_ref", &self.approle_role_id_ref),
            ("vault.approle_secret_id_ref", &self.approle_secret_id_ref),
        ];
        let login_refs = given
            .into_iter()
            .filter_map(|(key, reference)| reference.clone().map(|r| (key, r)))
            .collect();
        Ok(VaultSettings {
            addr,
            ca_cert,
            namespace: self.namespace,
            timeout_secs: self.timeout_secs,
            retry_secs: self.retry_secs,
            auth,
            login_refs,
            kubernetes_jwt_path: self.kubernetes_jwt_path,
        })
    }

    /// The chosen method with its keys, `None` while one is missing; every
    /// key given is checked whatever the method.
    fn auth(&self) -> Result<Option<VaultAuth>, ConfigError> {
        let token_ref = login_ref("vault.token_ref", &self.token_ref)?;
        let role_id_ref = login_ref("vault.approle_role_id_ref", &self.approle_role_id_ref)?;
        let secret_id_ref = login_ref("vault.approle_secret_id_ref", &self.approle_secret_id_ref)?;
        mount_name("vault.approle_mount", &self.approle_mount)?;
        mount_name("vault.kubernetes_mount", &self.kubernetes_mount)?;
        let role = self.kubernetes_role.clone();
        ensure(
            role.as_deref() != Some(""),
            "vault.kubernetes_role",
            "must not be empty",
        )?;
        Ok(match self.auth {
            VaultAuthMethod::Token => token_ref.map(|token_ref| VaultAuth::Token { token_ref }),
            VaultAuthMethod::Approle => {
                role_id_ref
                    .zip(secret_id_ref)
                    .map(|(role_id_ref, secret_id_ref)| VaultAuth::Approle {
                        role_id_ref,
                        secret_id_ref,
                        mount: self.approle_mount.clone(),
                    })
            }
            VaultAuthMethod::Kubernetes => role.map(|role| VaultAuth::Kubernetes {
                role,
                jwt_path: self.kubernetes_jwt_path.clone(),
                mount: self.kubernetes_mount.clone(),
            }),
        })
    }

    /// The first key the chosen method lacks.
    fn missing_auth_key(&self) -> ConfigError {
        match self.auth {
            VaultAuthMethod::Token => required("vault.token_ref", "file:vault/token"),
            VaultAuthMethod::Approle if self.approle_role_id_ref.is_none() => {
                required("vault.approle_role_id_ref", "env:VAULT_ROLE_ID")
            }
            VaultAuthMethod::Approle => {
                required("vault.approle_secret_id_ref", "file:vault/secret-id")
            }
            VaultAuthMethod::Kubernetes => required("vault.kubernetes_role", "infra-service"),
        }
    }
}

/// A login credential's reference: `env:` or `file:` (a `vault:` one
/// would need a login to log in; the store's password is read before any
/// Vault client exists).
fn login_ref(key: &'static str, value: &Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(text) = value else {
        return Ok(None);
    };
    let parsed = SecretRef::parse(text).map_err(|problem| ConfigError::Key { key, problem })?;
    let scheme = parsed.as_str().split_once(':').map(|(scheme, _)| scheme);
    ensure(
        matches!(scheme, Some("env" | "file")),
        key,
        "must be an env: or file: reference",
    )?;
    Ok(Some(text.clone()))
}

/// An auth mount's path: segments of letters, digits, `-`, `_` and `.`.
fn mount_name(key: &'static str, mount: &str) -> Result<(), ConfigError> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ensure(
        mount.split('/').all(segment_ok),
        key,
        "must be a mount path such as `approle` or `team/k8s`",
    )
}

impl RawGithub {
    fn check(self) -> Result<GithubSettings, ConfigError> {
        let api_url =
            ApiUrl::parse(&self.api_url).map_err(|e| unusable("github.api_url", "API URL", e))?;
        ensure(
            (1..=120).contains(&self.timeout_secs),
            "github.timeout_secs",
            "must be 1-120",
        )?;
        // Bounded, and below the 5 minutes an installation token is
        // guaranteed to live when a write starts: it must not lapse mid-way.
        ensure(
            (1..=240).contains(&self.retry_secs),
            "github.retry_secs",
            "must be 1-240",
        )?;
        let key_ref = self
            .app_private_key_ref
            .map(|text| {
                SecretRef::parse(&text)
                    .map(|_| text)
                    .map_err(|problem| ConfigError::Key {
                        key: "github.app_private_key_ref",
                        problem,
                    })
            })
            .transpose()?;
        // Half an App is a typo, not "no App": say which half is missing.
        let app = match (self.app_id, key_ref) {
            (Some(app_id), Some(private_key_ref)) => Some(GithubApp {
                app_id,
                private_key_ref,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(required(
                    "github.app_private_key_ref",
                    "file:github/app-key.pem",
                ));
            }
            (None, Some(_)) => return Err(required("github.app_id", "123456")),
        };
        Ok(GithubSettings {
            api_url,
            app,
            timeout_secs: self.timeout_secs,
            retry_secs: self.retry_secs,
        })
    }
}

impl RawHttp {
    fn check(self) -> Result<HttpSettings, ConfigError> {
        let listen = self.listen.parse().map_err(|_| ConfigError::Key {
            key: "http.listen",
            problem: "must be an IP address and port (e.g. 127.0.0.1:9187)".to_owned(),
        })?;
        Ok(HttpSettings { listen })
    }
}

impl RawConsole {
    fn check(self) -> Result<ConsoleSettings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| ConfigError::Key {
            key: "console.listen",
            problem: "must be an IP address and port (e.g. 127.0.0.1:9188)".to_owned(),
        })?;
        let token_ref = login_ref("console.token_ref", &self.token_ref)?;
        // Anyone who can reach a non-loopback address could otherwise read
        // (and, with actions, act) without a login.
        ensure(
            token_ref.is_some() || listen.ip().is_loopback(),
            "console.token_ref",
            "is required when console.listen is not a loopback address \
             (127.0.0.0/8 or ::1): set it, or listen on 127.0.0.1",
        )?;
        Ok(ConsoleSettings {
            listen,
            allow_actions: self.allow_actions,
            token_ref,
        })
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
    fn the_controller_is_warm_by_default_and_cold_when_asked() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(s.ansible.controller, ControllerMode::Warm);
        assert_eq!(s.ansible.python, "python3");

        let s = load_toml(&format!("{REQUIRED}[ansible]\ncontroller = \"cold\"\n")).unwrap();
        assert_eq!(s.ansible.controller, ControllerMode::Cold);

        let err =
            load_toml(&format!("{REQUIRED}[ansible]\ncontroller = \"lukewarm\"\n")).unwrap_err();
        assert!(err.to_string().contains("controller"), "{err}");
    }

    /// A self-signed certificate (valid until 2126), for the keys that
    /// read a PEM bundle.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBkTCCATegAwIBAgIUYBePXRgRpCT3AUMqZiei+PzGm88wCgYIKoZIzj0EAwIw\nHTEbMBkGA1UEAwwSaW5mcmEtdW5pdC10ZXN0LWNhMCAXDTI2MTEzMDIxNTgxMVoY\nDzIxMjYxMTA2MjE1ODExWjAdMRswGQYDVQQDDBJpbmZyYS11bml0LXRlc3QtY2Ew\nWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQYDof9FA4uQw5ZhdRnwAebpMmxxbmU\nC4f6aePa7Y/nHgz64QPbnxTydXSDBIV9wg7VRIoG5qEDVT5K4vHwfYbko1MwUTAd\nBgNVHQ4EFgQUNLvcNqMs7cocrFD6FKZ7F/XzjS4wHwYDVR0jBBgwFoAUNLvcNqMs\n7cocrFD6FKZ7F/XzjS4wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF\nAiASl4eSeVeXe9NLeoefGMHOhEziLFWL2Bs2KY3K32Pi5wIhALFnWgqZTm5YrU/h\nc54wLgq5kRcqR4l+tLHfPFiaQ5XK\n-----END CERTIFICATE-----\n";

    /// The key a refused configuration names.
    fn refused_key(text: &str) -> &'static str {
        match load_toml(text) {
            Err(ConfigError::Key { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn redis_tls_keys_need_a_rediss_url_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA_PEM).unwrap();
        let plain = format!(
            "[postgres]\nurl = \"postgres://a@b/c\"\n[redis]\nurl = \"redis://r:6379\"\nca_cert = {ca:?}\n"
        );
        assert_eq!(refused_key(&plain), "redis.url");

        let tls = format!(
            "[postgres]\nurl = \"postgres://a@b/c\"\n[redis]\nurl = \"rediss://r:6380\"\nca_cert = {ca:?}\n"
        );
        let s = load_toml(&tls).unwrap();
        assert!(s.redis.url.is_tls());
        assert_eq!(s.redis.tls.ca_cert.unwrap().path(), ca.as_path());

        let half = format!("{tls}client_cert = {ca:?}\n");
        assert_eq!(refused_key(&half), "redis.client_key_ref");
        let other_half = format!("{tls}client_key_ref = \"file:redis/key\"\n");
        assert_eq!(refused_key(&other_half), "redis.client_cert");
        // The key is a credential: env: or file:, never a job's vault: path.
        let vault_key =
            format!("{tls}client_cert = {ca:?}\nclient_key_ref = \"vault:secret/redis#key\"\n");
        assert_eq!(refused_key(&vault_key), "redis.client_key_ref");

        let not_pem = dir.path().join("junk.pem");
        std::fs::write(&not_pem, "junk").unwrap();
        let junk = format!(
            "[postgres]\nurl = \"postgres://a@b/c\"\n[redis]\nurl = \"rediss://r:6380\"\nca_cert = {not_pem:?}\n"
        );
        assert_eq!(refused_key(&junk), "redis.ca_cert");
    }

    #[test]
    fn a_redis_password_is_given_once() {
        let both = "[postgres]\nurl = \"postgres://a@b/c\"\n[redis]\n\
                    url = \"redis://:inline@r:6379\"\npassword_ref = \"env:REDIS_PASSWORD\"\n";
        assert_eq!(refused_key(both), "redis.password_ref");
        let s = load_toml(&format!(
            "{REQUIRED}[redis]\nusername = \"infra\"\npassword_ref = \"file:redis/password\"\n"
        ));
        // REQUIRED already has a [redis] table: TOML refuses a second one.
        assert!(s.is_err());
        let s = load_toml(
            "[postgres]\nurl = \"postgres://a@b/c\"\n[redis]\nurl = \"redis://r:6379\"\n\
             username = \"infra\"\npassword_ref = \"file:redis/password\"\n",
        )
        .unwrap();
        assert_eq!(s.redis.username.as_deref(), Some("infra"));
        assert_eq!(s.redis.password_ref.as_deref(), Some("file:redis/password"));
    }

    #[test]
    fn sentinel_keys_come_together_and_replace_the_url() {
        let base = "[postgres]\nurl = \"postgres://a@b/c\"\n[redis]\n";
        let s = load_toml(&format!(
            "{base}sentinels = [\"10.0.0.5:26379\", \"[fd00::7]:26380\"]\nsentinel_master = \"main\"\nwait_replicas = 1\n"
        ))
        .unwrap();
        let sentinel = s.redis.sentinel.unwrap();
        assert_eq!(
            sentinel.nodes,
            [
                ("10.0.0.5".to_owned(), 26379),
                ("fd00::7".to_owned(), 26380)
            ]
        );
        assert_eq!(sentinel.master, "main");
        assert_eq!(s.redis.wait_replicas, 1);
        assert!(!s.redis.url.is_tls());

        let no_master = format!("{base}sentinels = [\"10.0.0.5:26379\"]\n");
        assert_eq!(refused_key(&no_master), "redis.sentinel_master");
        let no_nodes = format!("{base}sentinel_master = \"main\"\n");
        assert_eq!(refused_key(&no_nodes), "redis.sentinels");
        let no_port = format!("{base}sentinels = [\"10.0.0.5\"]\nsentinel_master = \"main\"\n");
        assert_eq!(refused_key(&no_port), "redis.sentinels");
        assert_eq!(refused_key(&format!("{base}group = \"g\"\n")), "redis.url");
    }

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
        assert_eq!(s.http.listen, "127.0.0.1:9187".parse().unwrap());
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
    fn the_console_listens_on_loopback_read_only_without_a_login_by_default() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(s.console.listen, "127.0.0.1:9188".parse().unwrap());
        assert!(!s.console.allow_actions);
        assert_eq!(s.console.token_ref, None);
    }

    #[test]
    fn a_console_off_loopback_needs_a_token() {
        for listen in ["0.0.0.0:9188", "10.1.2.3:9188", "[::]:9188"] {
            let text = format!("{REQUIRED}[console]\nlisten = \"{listen}\"\n");
            let err = load_toml(&text).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Key {
                        key: "console.token_ref",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("console.listen"), "{err}");
        }
        let text = format!(
            "{REQUIRED}[console]\nlisten = \"0.0.0.0:9188\"\ntoken_ref = \"env:CONSOLE_TOKEN\"\n"
        );
        let s = load_toml(&text).unwrap();
        assert_eq!(s.console.token_ref.as_deref(), Some("env:CONSOLE_TOKEN"));
        for listen in ["127.0.0.2:1", "[::1]:0"] {
            let text = format!("{REQUIRED}[console]\nlisten = \"{listen}\"\n");
            assert!(load_toml(&text).is_ok(), "{listen}");
        }
    }

    #[test]
    fn the_console_token_is_an_env_or_file_reference() {
        let text = format!("{REQUIRED}[console]\ntoken_ref = \"vault:secret/c#t\"\n");
        assert_eq!(refused_key(&text), "console.token_ref");
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        let err = load_toml(&format!("{REQUIRED}[http]\nlisten = \"localhost\"\n")).unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
    }

    #[test]
    fn a_bad_time4vps_base_url_is_a_configuration_error_naming_the_key() {
        for bad in [
            "not a url",
            "billing.time4vps.com/api/",
            "ftp://billing.time4vps.com/api/",
        ] {
            let err =
                load_toml(&format!("{REQUIRED}[time4vps]\nbase_url = \"{bad}\"\n")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("configuration key `time4vps.base_url`: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_time4vps_base_url_with_credentials_is_refused() {
        let toml = format!("{REQUIRED}[time4vps]\nbase_url = \"https://u:pw@h/api/\"\n");
        let err = load_toml(&toml).unwrap_err();
        assert!(err.to_string().contains("time4vps.base_url"), "{err}");
        assert!(err.to_string().contains("credentials"), "{err}");
    }

    #[test]
    fn the_time4vps_base_url_defaults_to_the_production_api_and_gains_a_trailing_slash() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(
            s.time4vps.base_url.as_str(),
            "https://billing.time4vps.com/api/"
        );
        let s = load_toml(&format!(
            "{REQUIRED}[time4vps]\nbase_url = \"http://127.0.0.1:8080/api\"\n"
        ))
        .unwrap();
        assert_eq!(s.time4vps.base_url.as_str(), "http://127.0.0.1:8080/api/");
    }

    #[test]
    fn an_unparsable_redis_url_is_named() {
        let err = load_toml("[redis]\nurl = \"http://127.0.0.1:6379\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `redis.url`: is not a usable Redis URL"),
            "{err}"
        );
    }

    #[test]
    fn an_unparsable_postgres_url_is_named() {
        let err =
            load_toml("[redis]\nurl = \"redis://x\"\n[postgres]\nurl = \"postgres://x:port/db\"\n")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `postgres.url`: is not a usable Postgres URL"),
            "{err}"
        );
    }

    /// `REQUIRED` with this `postgres` section instead.
    fn with_postgres(section: &str) -> String {
        format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\n[postgres]\n{section}\n")
    }

    /// A self-signed certificate in PEM, `copies` times over, in a file.
    fn pem_file(copies: usize) -> tempfile::NamedTempFile {
        use openssl::{ec, nid::Nid, pkey::PKey, x509};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "test ca").unwrap();
        let name = name.build();
        let mut cert = x509::X509::builder().unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        cert.set_not_before(&now).unwrap();
        cert.set_not_after(&now).unwrap();
        cert.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let pem = cert.build().to_pem().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for _ in 0..copies {
            file.write_all(&pem).unwrap();
        }
        file
    }

    fn err_of(toml: &str) -> String {
        load_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn the_postgres_sslmode_is_the_keys_else_the_urls_else_libpqs_prefer() {
        let url = "url = \"postgres://infra@db.internal/infra?sslmode=require\"";
        let s = load_toml(&with_postgres(url)).unwrap();
        assert_eq!(s.postgres.sslmode, SslMode::Require);
        let s = load_toml(&with_postgres(&format!("{url}\nsslmode = \"verify-full\""))).unwrap();
        assert_eq!(s.postgres.sslmode, SslMode::VerifyFull);
        assert!(matches!(
            s.postgres.url.options().get_ssl_mode(),
            PgSslMode::VerifyFull
        ));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["postgres"]["sslmode"],
            "verify-full"
        );
        if std::env::var_os("PGSSLMODE").is_none() {
            let s = load_toml(REQUIRED).unwrap();
            assert_eq!(s.postgres.sslmode, SslMode::Prefer);
        }
    }

    #[test]
    fn the_postgres_sslmode_key_may_tighten_the_urls_but_never_loosen_it() {
        let url = "url = \"postgres://infra@db.internal/infra?sslmode=verify-full\"";
        let err = err_of(&with_postgres(&format!("{url}\nsslmode = \"require\"")));
        assert!(
            err.starts_with("configuration key `postgres.sslmode`: require would weaken the sslmode=verify-full of postgres.url"),
            "{err}"
        );
        let same = load_toml(&with_postgres(&format!("{url}\nsslmode = \"verify-full\"")));
        assert_eq!(same.unwrap().postgres.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn an_unknown_sslmode_is_named_where_it_was_written() {
        let url = "url = \"postgres://infra@db.internal/infra\"";
        let err = err_of(&with_postgres(&format!("{url}\nsslmode = \"verify_full\"")));
        assert!(
            err.starts_with("configuration key `postgres.sslmode`: \"verify_full\" is none of"),
            "{err}"
        );
        let err = err_of(&with_postgres(
            "url = \"postgres://infra@db.internal/infra?sslmode=strict\"",
        ));
        assert!(err.starts_with("configuration key `postgres.url`"), "{err}");
    }

    #[test]
    fn a_postgres_password_ref_is_an_env_or_file_reference_printed_as_such() {
        let url = "url = \"postgres://infra@db.internal/infra\"";
        for good in ["env:PG_PASSWORD", "file:postgres/password"] {
            let s = load_toml(&with_postgres(&format!("{url}\npassword_ref = {good:?}"))).unwrap();
            assert_eq!(s.postgres.password_ref.as_deref(), Some(good));
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(json["postgres"]["password_ref"], good);
        }
        for bad in ["vault:secret/pg#password", "hunter2", "ssh:key"] {
            let err = err_of(&with_postgres(&format!("{url}\npassword_ref = {bad:?}")));
            assert!(
                err.starts_with("configuration key `postgres.password_ref`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_password_in_the_url_and_a_password_ref_are_refused_together_naming_both() {
        for url in [
            "postgres://infra:hunter2@db.internal/infra",
            "postgres://infra@db.internal/infra?password=hunter2",
        ] {
            let err = err_of(&with_postgres(&format!(
                "url = {url:?}\npassword_ref = \"env:PG_PASSWORD\""
            )));
            assert!(
                err.starts_with("configuration key `postgres.password_ref`")
                    && err.contains("postgres.url carries a password"),
                "{url}: {err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_postgres_ca_cert_is_loaded_and_only_taken_with_a_verifying_sslmode() {
        let ca = pem_file(1);
        let ca_line = format!("ca_cert = {:?}", ca.path().to_string_lossy());
        let url = "url = \"postgres://infra@db.internal/infra\"";
        for mode in ["verify-ca", "verify-full"] {
            let section = format!("{url}\n{ca_line}\nsslmode = {mode:?}");
            let s = load_toml(&with_postgres(&section)).unwrap();
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(
                json["postgres"]["ca_cert"],
                ca.path().to_string_lossy().as_ref()
            );
        }
        // No mode (libpq's prefer), or require, which sqlx never verifies.
        for mode in ["", "sslmode = \"require\""] {
            let err = err_of(&with_postgres(&format!("{url}\n{ca_line}\n{mode}")));
            assert!(
                err.starts_with("configuration key `postgres.ca_cert`: is only checked under postgres.sslmode verify-ca or verify-full"),
                "{mode}: {err}"
            );
        }
    }

    #[test]
    fn a_postgres_ca_cert_must_be_one_readable_certificate_given_once() {
        let url = "url = \"postgres://infra@db.internal/infra\"\nsslmode = \"verify-full\"";
        let bundle = pem_file(2);
        let one = pem_file(1);
        let cases = [
            (
                "/nonexistent/ca.pem".to_owned(),
                url.to_owned(),
                "cannot read",
            ),
            (
                bundle.path().to_string_lossy().into_owned(),
                url.to_owned(),
                "holds 2 certificates",
            ),
            (
                one.path().to_string_lossy().into_owned(),
                url.replace("/infra\"", "/infra?sslrootcert=/etc/ca.pem\""),
                "sslrootcert",
            ),
        ];
        for (path, url, says) in cases {
            let err = err_of(&with_postgres(&format!("{url}\nca_cert = {path:?}")));
            assert!(
                err.starts_with("configuration key `postgres.ca_cert`") && err.contains(says),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn a_url_sslrootcert_under_a_mode_that_does_not_check_it_is_refused() {
        let err = err_of(&with_postgres(
            "url = \"postgres://infra@db/infra?sslmode=require&sslrootcert=/etc/ca.pem\"",
        ));
        assert!(
            err.starts_with("configuration key `postgres.url`: names an sslrootcert"),
            "{err}"
        );
        let s = load_toml(&with_postgres(
            "url = \"postgres://infra@db/infra?sslmode=verify-full&sslrootcert=/etc/ca.pem\"",
        ));
        assert_eq!(s.unwrap().postgres.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn the_connection_urls_print_masked() {
        let toml = "[redis]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n\
                    [postgres]\nurl = \"postgres://infra:hunter2@127.0.0.1/infra\"\n";
        let s = load_toml(toml).unwrap();
        let debug = format!("{s:?}");
        let json = serde_json::to_value(&s).unwrap();
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("url: RedisUrl(***)"), "{debug}");
        assert_eq!(json["redis"]["url"], "***");
        assert_eq!(json["postgres"]["url"], "***");
        assert_eq!(json["http"]["listen"], "127.0.0.1:9187");
    }

    #[test]
    fn the_ssh_preflight_can_be_turned_off() {
        let s = load_toml(&format!("{REQUIRED}[ssh]\npreflight = false\n")).unwrap();
        assert!(!s.ssh.preflight);
    }

    #[test]
    fn no_policy_is_set_by_default() {
        let s = load_toml(REQUIRED).unwrap();
        assert!(s.policy.github_token_ref.is_none());
        assert!(s.policy.secrets_ref.is_none());
        assert!(s.policy.deploy_targets.is_none());
    }

    #[test]
    fn the_policy_lists_are_read_and_shown_as_checked() {
        let toml = format!(
            "{REQUIRED}[policy]\n\
             github_token_ref = [\"vault:secret/github#token\"]\n\
             secrets_ref = [\"vault:secret//projects/*\"]\n\
             deploy_targets = [\"registered\", \"10.0.0.0/8\", \"2001:db8::/32\"]\n"
        );
        let s = load_toml(&toml).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["policy"],
            serde_json::json!({
                "github_token_ref": ["vault:secret/github#token"],
                "secrets_ref": ["vault:secret/projects/*"],
                "deploy_targets": ["registered", "10.0.0.0/8", "2001:db8::/32"],
            })
        );
    }

    #[test]
    fn an_empty_policy_list_allows_nothing_rather_than_everything() {
        let s = load_toml(&format!("{REQUIRED}[policy]\nsecrets_ref = []\n")).unwrap();
        assert_eq!(s.policy.secrets_ref.map(|p| p.len()), Some(0));
    }

    #[test]
    fn a_bad_cidr_or_pattern_is_a_configuration_error_naming_the_key() {
        let err = load_toml(&format!(
            "{REQUIRED}[policy]\ndeploy_targets = [\"10.0.0.0/33\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `policy.deploy_targets`: entry \"10.0.0.0/33\""),
            "{err}"
        );
        let err = load_toml(&format!(
            "{REQUIRED}[policy]\nsecrets_ref = [\"file:../x\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `policy.secrets_ref`: "),
            "{err}"
        );
    }

    #[test]
    fn the_policy_lists_are_comma_separated_in_the_environment() {
        let variables = [
            ("INFRA__POLICY__DEPLOY_TARGETS", "registered,10.0.0.0/8"),
            ("INFRA__POLICY__SECRETS_REF", "vault:secret/projects/*"),
            ("INFRA__LOG__LEVEL", "info,infra_service=debug"),
        ];
        let source = variables
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let raw = config::Config::builder()
            .add_source(environment().source(Some(source)))
            .build()
            .unwrap();
        let targets: Vec<String> = raw.get("policy.deploy_targets").unwrap();
        assert_eq!(targets, ["registered", "10.0.0.0/8"]);
        let secrets: Vec<String> = raw.get("policy.secrets_ref").unwrap();
        assert_eq!(secrets, ["vault:secret/projects/*"]);
        // Other keys keep their commas.
        let level: String = raw.get("log.level").unwrap();
        assert_eq!(level, "info,infra_service=debug");
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let err =
            load_toml("[redis]\nurl = \"redis://x\"\n[worker]\nconcurrency = 0\n").unwrap_err();
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
    }

    #[test]
    fn vault_is_off_by_default_with_the_documented_defaults() {
        let s = load_toml(REQUIRED).unwrap();
        assert!(s.vault.addr.is_none());
        assert_eq!(s.vault.auth, None);
        assert_eq!(s.vault.timeout_secs, 5);
        assert_eq!(s.vault.retry_secs, 30);
    }

    #[test]
    fn vault_approle_settings_become_a_typed_login_with_its_default_mount() {
        let s = load_toml(&format!(
            "{REQUIRED}[vault]\naddr = \"https://vault.internal:8200\"\nauth = \"approle\"\n\
             approle_role_id_ref = \"env:VAULT_ROLE_ID\"\napprole_secret_id_ref = \"file:vault/secret-id\"\n"
        ))
        .unwrap();
        assert_eq!(
            s.vault.addr.as_ref().map(|a| a.as_str()),
            Some("https://vault.internal:8200/")
        );
        let auth = s.vault.auth.unwrap();
        assert_eq!(
            auth,
            VaultAuth::Approle {
                role_id_ref: "env:VAULT_ROLE_ID".into(),
                secret_id_ref: "file:vault/secret-id".into(),
                mount: "approle".into(),
            }
        );
        assert_eq!(
            auth.login_refs(),
            ["env:VAULT_ROLE_ID", "file:vault/secret-id"]
        );
    }

    #[test]
    fn vault_kubernetes_login_defaults_to_the_service_account_token() {
        let s = load_toml(&format!(
            "{REQUIRED}[vault]\naddr = \"http://127.0.0.1:8200\"\nauth = \"kubernetes\"\nkubernetes_role = \"infra\"\n"
        ))
        .unwrap();
        assert_eq!(
            s.vault.auth,
            Some(VaultAuth::Kubernetes {
                role: "infra".into(),
                jwt_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
                mount: "kubernetes".into(),
            })
        );
    }

    #[test]
    fn a_vault_address_without_its_login_keys_names_the_missing_key() {
        for (auth, key) in [
            ("token", "vault.token_ref"),
            ("approle", "vault.approle_role_id_ref"),
            ("kubernetes", "vault.kubernetes_role"),
        ] {
            let err = load_toml(&format!(
                "{REQUIRED}[vault]\naddr = \"http://127.0.0.1:8200\"\nauth = \"{auth}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("configuration key `{key}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_vault_values_name_their_key() {
        for (line, key) in [
            ("addr = \"vault.internal:8200\"", "vault.addr"),
            ("addr = \"https://u:p@vault\"", "vault.addr"),
            ("token_ref = \"vault:secret/t#token\"", "vault.token_ref"),
            ("token_ref = \"no scheme\"", "vault.token_ref"),
            ("approle_mount = \"../x\"", "vault.approle_mount"),
            ("namespace = \"\"", "vault.namespace"),
            ("timeout_secs = 0", "vault.timeout_secs"),
            ("ca_cert = \"/nonexistent/ca.pem\"", "vault.ca_cert"),
        ] {
            let err = load_toml(&format!("{REQUIRED}[vault]\n{line}\n")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("configuration key `{key}`")),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn a_ca_cert_that_is_no_pem_certificate_is_a_configuration_error() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"not a certificate\n").unwrap();
        let err = load_toml(&format!(
            "{REQUIRED}[vault]\nca_cert = {:?}\n",
            file.path().to_string_lossy()
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `vault.ca_cert`"),
            "{err}"
        );
    }

    #[test]
    fn vault_settings_print_references_and_never_values() {
        let s = load_toml(&format!(
            "{REQUIRED}[vault]\naddr = \"https://vault:8200\"\ntoken_ref = \"file:vault/token\"\n"
        ))
        .unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["vault"]["addr"], "https://vault:8200/");
        assert_eq!(json["vault"]["auth"]["method"], "token");
        assert_eq!(json["vault"]["auth"]["token_ref"], "file:vault/token");
    }

    #[test]
    fn github_defaults_to_the_public_api_with_no_app() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(s.github.api_url.as_str(), "https://api.github.com/");
        assert_eq!(s.github.app, None);
        assert_eq!(s.github.retry_secs, 120);
    }

    #[test]
    fn a_github_app_prints_its_key_reference_never_a_key() {
        let s = load_toml(&format!(
            "{REQUIRED}[github]\napi_url = \"https://ghe.example.com/api/v3\"\n\
             app_id = 42\napp_private_key_ref = \"file:github/app.pem\"\n"
        ))
        .unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["github"]["api_url"], "https://ghe.example.com/api/v3/");
        assert_eq!(
            json["github"]["app"],
            serde_json::json!({"app_id": 42, "private_key_ref": "file:github/app.pem"})
        );
    }

    #[test]
    fn half_a_github_app_or_a_bad_value_names_its_key() {
        for (lines, key) in [
            ("app_id = 42", "github.app_private_key_ref"),
            ("app_private_key_ref = \"file:k.pem\"", "github.app_id"),
            (
                "app_id = 1\napp_private_key_ref = \"a key\"",
                "github.app_private_key_ref",
            ),
            ("api_url = \"https://x:y@api.github.com\"", "github.api_url"),
            ("timeout_secs = 0", "github.timeout_secs"),
            ("retry_secs = 100000", "github.retry_secs"),
            (
                "api_url = \"http://github.example.com/api/v3\"",
                "github.api_url",
            ),
        ] {
            let err = load_toml(&format!("{REQUIRED}[github]\n{lines}\n")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("configuration key `{key}`")),
                "{lines}: {err}"
            );
        }
    }

    #[test]
    fn ci_deploys_as_ci_without_become_by_default() {
        let s = load_toml(REQUIRED).unwrap();
        assert_eq!(s.ci.deploy_user, "ci");
        assert!(!s.ansible.become_root);
        assert_eq!(
            s.ansible.ci_playbook,
            PathBuf::from("playbooks/ci_access.yml")
        );
        let s = load_toml(&format!("{REQUIRED}[ansible]\nbecome = true\n")).unwrap();
        assert!(s.ansible.become_root);
    }

    #[test]
    fn the_ci_user_is_a_login_name_and_never_root() {
        for bad in ["root", "", "Ci", "1ci", "ci user", "ci;id", &"c".repeat(33)] {
            let err = load_toml(&format!("{REQUIRED}[ci]\ndeploy_user = {bad:?}\n")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("configuration key `ci.deploy_user`"),
                "{bad}: {err}"
            );
        }
        for good in ["ci", "_ci", "deploy-ci2", "deployer", &"c".repeat(32)] {
            let s = load_toml(&format!("{REQUIRED}[ci]\ndeploy_user = {good:?}\n")).unwrap();
            assert_eq!(s.ci.deploy_user, good);
        }
    }

    #[test]
    fn the_ci_user_is_never_the_plays_login_nor_the_provisioned_sudo_account() {
        let cases = [
            (
                "[ansible]\nssh_user = \"admin\"\n[ci]\ndeploy_user = \"admin\"\n",
                "ansible.ssh_user",
            ),
            ("[ci]\ndeploy_user = \"deploy\"\n", "sudo account"),
        ];
        for (lines, says) in cases {
            let err = load_toml(&format!("{REQUIRED}{lines}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("configuration key `ci.deploy_user`") && err.contains(says),
                "{lines}: {err}"
            );
        }
        let s = load_toml(&format!("{REQUIRED}[ansible]\nssh_user = \"deploy\"\n")).unwrap();
        assert_eq!(s.ci.deploy_user, "ci");
    }

    #[test]
    fn operator_extra_vars_are_variable_names_that_leave_the_connection_alone() {
        let s = load_toml(&format!(
            "{REQUIRED}[ansible.extra_vars]\ngit_base_url = \"https://ghe.example.com\"\n"
        ))
        .unwrap();
        assert_eq!(
            s.ansible.extra_vars["git_base_url"],
            "https://ghe.example.com"
        );
        for bad in ["ansible_host", "infra_become", "1x", "a-b"] {
            let err =
                load_toml(&format!("{REQUIRED}[ansible.extra_vars]\n\"{bad}\" = 1\n")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("configuration key `ansible.extra_vars`"),
                "{bad}: {err}"
            );
        }
    }
}
