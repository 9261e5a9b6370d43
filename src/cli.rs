//! The command line: `worker`, `migrate`, `servers`, `dead`, `enqueue`,
//! `status`, `console`, `check-config`, `schema`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::job::{DeployAction, HealthPath, JobKind};

/// infra-service: runs deploy and provisioning jobs from Redis Streams with Ansible.
#[derive(Debug, Parser)]
#[command(name = "infra-service", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume both job queues until SIGTERM/SIGINT.
    Worker(ConfigArgs),
    /// Load and validate the configuration, print it without secrets, exit.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the effective configuration as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the database migrations and exit.
    Migrate(ConfigArgs),
    /// Register and inspect servers.
    Servers {
        #[command(subcommand)]
        action: ServersAction,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Read and replay the dead-letter stream (`infra:dead`). Needs Redis only.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Put a job on its queue, built from flags and checked like the worker
    /// checks it; with `--wait`, follow its progress to its result. Needs
    /// Redis only.
    ///
    /// Exit codes: 0 enqueued (with `--wait`: the job succeeded); 1 invalid
    /// flags or payload (nothing enqueued), or with `--wait` the job failed;
    /// 2 Redis failed or `--timeout` passed first.
    Enqueue {
        #[command(subcommand)]
        job: EnqueueJob,
    },
    /// Show a job's result if it is published. Needs Redis only.
    ///
    /// Exit codes: 0 the job succeeded; 1 it failed; 2 Redis failed; 3 no
    /// result yet but progress events exist (running); 4 nothing known
    /// (still queued, never enqueued, or expired: results and events are
    /// kept an hour).
    Status(StatusArgs),
    /// Serve the operator console (`console.listen`, default
    /// 127.0.0.1:9188) until SIGTERM/SIGINT. Needs Redis and Postgres.
    ///
    /// Read-only unless `console.allow_actions = true`; a login with the
    /// `console.token_ref` token whenever that is set (required off
    /// loopback). Exit codes: 0 stopped; 1 bad configuration; 2 Redis,
    /// Postgres or the listen address failed.
    Console(ConfigArgs),
    /// Print the contract's JSON Schemas (draft 2020-12): the DeployJob and
    /// ProvisionJob payloads, the result and the progress event. Needs
    /// nothing.
    ///
    /// Without `--out`, one JSON object keyed by file name on stdout.
    /// Exit codes: 0 printed or written; 2 a file could not be written.
    Schema {
        /// Write `deploy_job.schema.json`, `provision_job.schema.json`,
        /// `job_result.schema.json` and `job_event.schema.json` into DIR
        /// (created if missing) instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `enqueue` subcommands.
// One value per command line, parsed once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum EnqueueJob {
    /// A DeployJob on `ansible:deploy:queue`.
    Deploy(EnqueueDeploy),
    /// A ProvisionJob on `provisioner:queue`.
    Provision(EnqueueProvision),
}

impl EnqueueJob {
    /// The options every job kind shares.
    pub fn common(&self) -> &EnqueueCommon {
        match self {
            EnqueueJob::Deploy(args) => &args.common,
            EnqueueJob::Provision(args) => &args.common,
        }
    }
}

/// `enqueue deploy` arguments: the DeployJob fields (CONTRACT.md section 1).
#[derive(Debug, Args)]
pub struct EnqueueDeploy {
    /// The job's `request_id` (1-128 of `[A-Za-z0-9._:-]`).
    #[arg(long)]
    pub request_id: String,
    /// The project's UUID.
    #[arg(long)]
    pub project_id: String,
    /// Kebab-case project name; default: the repo part of `--repo`, lower-cased.
    #[arg(long)]
    pub project_name: Option<String>,
    /// `owner/repo` on GitHub.
    #[arg(long = "repo", value_name = "OWNER/REPO")]
    pub repo_full_name: String,
    /// The git branch to deploy.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The server's IP address or DNS name.
    #[arg(long)]
    pub server_ip: String,
    /// The project's service port on the server (1-65535).
    #[arg(long)]
    pub port: u32,
    /// A docker compose profile to enable; repeat for several.
    #[arg(long = "module", value_name = "MODULE")]
    pub modules: Vec<String>,
    /// Secret reference to the GitHub token, e.g. `vault:secret/github#token`;
    /// needed for `--action deploy` only.
    #[arg(long)]
    pub github_token_ref: Option<String>,
    /// What to do: deploy, restart, stop, remove or logs.
    #[arg(long, default_value = "deploy", value_parser = DeployAction::parse)]
    pub action: DeployAction,
    /// HTTP path that answers 2xx/3xx when the service is healthy (e.g.
    /// `/healthz`); without it, healthy means the port accepts connections.
    #[arg(long, value_parser = HealthPath::parse)]
    pub health_path: Option<HealthPath>,
    /// Secret reference to the project's `.env`.
    #[arg(long)]
    pub secrets_ref: Option<String>,
    /// After a successful deploy, give the repository's GitHub Actions a
    /// deploy key of its own and the DEPLOY_* secrets.
    #[arg(long)]
    pub setup_ci: bool,
    #[command(flatten)]
    pub common: EnqueueCommon,
}

/// `enqueue provision` arguments: the ProvisionJob fields.
#[derive(Debug, Args)]
pub struct EnqueueProvision {
    /// The server's handle in `servers`.
    #[arg(long)]
    pub server_handle: String,
    /// The job's `request_id`; default: the stream entry id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Rebuild the OS through the provider before setup.
    #[arg(long, conflicts_with = "is_recovery")]
    pub force_reinstall: bool,
    /// Run the recovery playbook instead of the full setup.
    #[arg(long)]
    pub is_recovery: bool,
    #[command(flatten)]
    pub common: EnqueueCommon,
}

/// What `enqueue` does after the XADD, and how it prints.
#[derive(Debug, Args)]
pub struct EnqueueCommon {
    /// Follow the job's progress (a spinner on a terminal, one line per task
    /// start and result otherwise) until its result, then print it.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up after this many seconds (exit 2).
    #[arg(long, value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Print JSON on stdout: the entry, or with `--wait` the result (progress
    /// then goes to stderr).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job's request id.
    pub request_id: String,
    /// Which kind of job; default: deploy, then provision.
    #[arg(long, value_parser = job_kind())]
    pub kind: Option<JobKind>,
    /// Print the result JSON as published, or `{"request_id", "state"}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `dead` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// List the newest dead letters, oldest first: id, time, queue, request
    /// id, payload size, reason.
    List(DeadList),
    /// Put a dead letter's exact payload back on the queue it came from as a
    /// new entry, and delete the letter, in one atomic step.
    Replay(DeadReplay),
}

impl DeadAction {
    /// The configuration file the subcommand was given.
    pub fn config(&self) -> &ConfigArgs {
        match self {
            DeadAction::List(args) => &args.config,
            DeadAction::Replay(args) => &args.config,
        }
    }
}

/// `dead list` arguments.
#[derive(Debug, Args)]
pub struct DeadList {
    /// Print a JSON array with every field; payloads over 1 MiB are cut
    /// (`payload_truncated: true`, `payload_size` the real length).
    #[arg(long)]
    pub json: bool,
    /// How many of the newest letters to show.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `dead replay` arguments.
#[derive(Debug, Args)]
pub struct DeadReplay {
    /// The dead letter's id, as `dead list` shows it (`<ms>-<seq>`).
    pub id: String,
    /// Print the outcome as a JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `servers` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServersAction {
    /// Register a server (status `new`).
    Add(AddServer),
    /// List all servers.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one server.
    Show {
        handle: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a server.
    Remove {
        handle: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget the pinned host key after a legitimate change (reinstall, new key).
    ResetHostKey {
        handle: String,
        /// Print the server as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
}

/// `servers add` arguments.
#[derive(Debug, Args)]
pub struct AddServer {
    /// The `server_handle` jobs use, e.g. `vps-hel1-01`.
    pub handle: String,
    /// Print the new server as JSON.
    #[arg(long)]
    pub json: bool,
    /// SSH address (IP or DNS name).
    #[arg(long)]
    pub address: String,
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Secret reference to the private key, e.g. `file:ssh/vps-hel1-01`.
    #[arg(long)]
    pub key_ref: String,
    /// `time4vps` or `manual`.
    #[arg(long, default_value = "manual", value_parser = ["time4vps", "manual"])]
    pub provider: String,
    /// The provider's server id, needed for reinstalls.
    #[arg(long)]
    pub provider_id: Option<String>,
}

/// Where the configuration file is: `--config FILE` or a last positional
/// argument (the ops tooling's convention).
#[derive(Debug, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long = "config", value_name = "FILE")]
    flag: Option<PathBuf>,
    /// TOML configuration file, as the last argument.
    #[arg(value_name = "CONFIG", conflicts_with = "flag")]
    positional: Option<PathBuf>,
}

impl ConfigArgs {
    /// The file given, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.flag.as_deref().or(self.positional.as_deref())
    }
}

/// `deploy` or `provision`, as the contract spells them, read as a `JobKind`.
fn job_kind() -> impl clap::builder::TypedValueParser<Value = JobKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(JobKind::ALL.map(JobKind::as_str)).map(|name| {
        JobKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .expect("a possible value is a kind")
    })
}
