//! Command line and environment of `feature-agent`, the node daemon, and its three commands:
//! `run` (sample and write to Postgres), `print` (sample to stdout as JSON lines) and `migrate`.
//! The research tools (label, scenario, evaluate, export, plot, drill) are `feature-lab`.
//! Every option has an environment variable fallback, so a DaemonSet configures it with `env:`.
use clap::{Parser, Subcommand};
use feature_db::{refuse_secrets_on_command_line, DatabaseArgs};
use tracing::error;

use crate::{
    config::{RunArgs, SamplingArgs},
    pipeline::{migrate_only, print, run},
};

#[derive(Debug, Parser)]
#[command(
    name = "feature-agent",
    version,
    about = "Per-node security features from procfs and eBPF, one row per interval into Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample every interval and write the rows to Postgres (applies migrations first).
    Run(Box<RunArgs>),
    /// Sample every interval and print the rows as JSON lines on stdout; no database.
    Print(SamplingArgs),
    /// Apply the migrations in migrations/ and exit. Re-running is a no-op.
    Migrate(DatabaseArgs),
}
/// Entry point of the binary: parses arguments, sets up logging on stderr, runs the command.
pub fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    if let Err(e) = refuse_secrets_on_command_line(&matches) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(a) => run(*a).await,
            Command::Print(a) => print(a).await,
            Command::Migrate(a) => migrate_only(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
