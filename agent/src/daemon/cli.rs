//! Command line and environment of `feature-agent`, the node daemon, and its three commands:
//! `run` (sample and write to Postgres), `print` (sample to stdout as JSON lines) and `migrate`.
//! The research tools (label, scenario, evaluate, export, plot, drill) are `feature-lab`.
//! Every option has an environment variable fallback, so a DaemonSet configures it with `env:`.
use clap::{Parser, Subcommand};
use feature_db::DatabaseArgs;

use crate::{
    daemon::config::{RunArgs, SamplingArgs},
    daemon::{
        commands::{migrate_only, print},
        pipeline::run,
    },
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
    Print(Box<SamplingArgs>),
    /// Apply the migrations in migrations/ and exit. Re-running is a no-op.
    Migrate(DatabaseArgs),
}
/// Entry point of the binary: the shared entry (arguments, logging, runtime, exit status) around
/// this binary's commands; a password on the command line is refused.
pub fn main() -> std::process::ExitCode {
    feature_host::entry::main(feature_db::refuse_secrets_on_command_line, |cli: Cli| async move {
        match cli.command {
            Command::Run(a) => run(*a).await,
            Command::Print(a) => print(*a).await,
            Command::Migrate(a) => migrate_only(a).await,
        }
    })
}
