//! The command line: `worker`, `migrate`, `servers`, `dead`, `check-config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    CheckConfig(ConfigArgs),
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
    Remove { handle: String },
    /// Forget the pinned host key after a legitimate change (reinstall, new key).
    ResetHostKey { handle: String },
}

/// `servers add` arguments.
#[derive(Debug, Args)]
pub struct AddServer {
    /// The `server_handle` jobs use, e.g. `vps-hel1-01`.
    pub handle: String,
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
#[derive(Debug, Args)]
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
