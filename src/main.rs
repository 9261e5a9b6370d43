//! Entry point: parse the command line, load settings, run, map the outcome
//! to the ops exit codes (0 clean stop, 1 bad configuration, 2 runtime
//! failure; `enqueue --wait` and `status` add the job's state: 1 failed,
//! 3 running, 4 unknown).

use std::process::ExitCode;

use clap::Parser;
use infra_service::cli::{Cli, Command};
use infra_service::config::Settings;
use infra_service::job::schema;
use infra_service::operator::{self, OperatorError};
use infra_service::{console, daemon, shutdown, telemetry};

const EXIT_CONFIG: u8 = 1;
const EXIT_RUNTIME: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if !matches!(cli.command, Command::Worker(_) | Command::Console(_)) {
        stop_quietly_on_a_closed_pipe();
    }
    match cli.command {
        Command::Worker(args) => {
            let settings = match Settings::load(args.path()) {
                Ok(settings) => settings,
                Err(e) => return config_failure(&e),
            };
            telemetry::init(&settings.log);
            run_worker(settings)
        }
        Command::Console(args) => {
            let settings = match Settings::load(args.path()) {
                Ok(settings) => settings,
                Err(e) => return config_failure(&e),
            };
            telemetry::init(&settings.log);
            run_console(settings)
        }
        Command::CheckConfig { config, json } => check_config(config.path(), json),
        Command::Schema { out } => write_schemas(out.as_deref()),
        Command::Migrate(args) => run_once(args.path(), |settings| async move {
            operator::migrate(&settings).await.map(|()| 0)
        }),
        Command::Servers { action, config } => run_once(config.path(), |settings| async move {
            operator::servers(&settings, action).await.map(|()| 0)
        }),
        Command::Dead { action } => {
            let config = action.config().path().map(std::path::Path::to_owned);
            run_once(config.as_deref(), |settings| async move {
                operator::dead(&settings, action).await.map(|()| 0)
            })
        }
        Command::Enqueue { job } => {
            let config = job.common().config.path().map(std::path::Path::to_owned);
            run_once(config.as_deref(), |settings| async move {
                operator::enqueue(&settings, job).await
            })
        }
        Command::Status(args) => {
            let config = args.config.path().map(std::path::Path::to_owned);
            run_once(config.as_deref(), |settings| async move {
                operator::status(&settings, args).await
            })
        }
    }
}

/// `check-config`: loads and checks the settings, prints them (the
/// connection URLs masked), exit 0; or names the bad key, exit 1.
fn check_config(config: Option<&std::path::Path>, json: bool) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => return config_failure(&e),
    };
    if json {
        let text = serde_json::to_string_pretty(&settings).expect("settings serialize");
        println!("{text}");
    } else {
        println!("configuration OK\n{settings:#?}");
    }
    ExitCode::SUCCESS
}

/// `schema`: the four schemas as one object on stdout, or one file each
/// in `out`.
fn write_schemas(out: Option<&std::path::Path>) -> ExitCode {
    let Some(dir) = out else {
        print!("{}", schema::bundle());
        return ExitCode::SUCCESS;
    };
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        schema::files().into_iter().try_for_each(|file| {
            let path = dir.join(file.name);
            std::fs::write(&path, file.text)?;
            println!("{}", path.display());
            Ok(())
        })
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "infra-service: cannot write the schemas to {}: {e}",
                dir.display()
            );
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Runs a one-shot operator command with its own small runtime; `Ok` holds
/// the command's own exit code (`enqueue --wait`, `status`: the job's state).
fn run_once<F, Fut>(config: Option<&std::path::Path>, command: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = Result<u8, OperatorError>>,
{
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => return config_failure(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("infra-service: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(command(settings)) {
        Ok(code) => ExitCode::from(code),
        Err(e @ OperatorError::Usage(_)) => {
            eprintln!("infra-service: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("infra-service: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn run_worker(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("infra-service: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(daemon::run_until_stopped(settings, shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.message = %e, error.cause_chain = ?e, "worker failed");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn run_console(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("infra-service: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(console::run(settings, shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.message = %e, error.cause_chain = ?e, "console failed");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The operator commands print to pipes (`dead list | head`). Rust ignores
/// SIGPIPE, so `println!` into a closed pipe panics; with the default
/// action, the command ends quietly as other Unix tools do. Sockets are
/// not affected (Rust writes to them with `MSG_NOSIGNAL`). Not for the
/// worker, whose children's pipes may close at any time.
fn stop_quietly_on_a_closed_pipe() {
    // SAFETY: restores a signal's default action before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn config_failure(e: &infra_service::config::ConfigError) -> ExitCode {
    eprintln!("infra-service: {e}");
    ExitCode::from(EXIT_CONFIG)
}
