//! The command line: `worker`, `migrate`, `servers`, `check-config`.

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
