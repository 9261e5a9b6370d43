//! The command line: `worker`, `check-config`.

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
