//! Command line of `feature-lab`, the research tools: label, scenario, evaluate, export, plot
//! and drill. Database options are the daemon's (feature-db), with the same environment
//! fallbacks, so one DATABASE_URL serves both binaries.
use clap::{Parser, Subcommand};
use tracing::error;

#[derive(Debug, Parser)]
#[command(
    name = "feature-lab",
    version,
    about = "Research tools over feature-agent's rows: label attack windows, run scenarios, evaluate, export, plot"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mark the rows of a time window as an attack (or, with --clear, as normal again).
    Label(crate::label::LabelArgs),
    /// Run a bounded attack-like workload on this node and label the rows it covers.
    Scenario(crate::scenario::ScenarioArgs),
    /// Score the detector's verdicts and the SQL z-score flags against the labels, per scenario.
    Evaluate(crate::evaluate::EvaluateArgs),
    /// Write the rows (raw, deltas, z-scores with --normalized, labels) as CSV or Parquet.
    Export(crate::export::ExportArgs),
    /// Render a node's features, labelled windows, detections and z-scores as a PNG.
    Plot(crate::plot::PlotArgs),
    /// Scripted detection run: start feature-agent, run the scenarios between normal periods,
    /// evaluate.
    Drill(crate::drill::DrillArgs),
}

/// Entry point of the binary: parses arguments, sets up logging on stderr, runs the command.
pub fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    if let Err(e) = feature_db::refuse_secrets_on_command_line(&matches) {
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
            Command::Label(a) => crate::label::command(a).await,
            Command::Scenario(a) => crate::scenario::command(a).await,
            Command::Evaluate(a) => crate::evaluate::command(a).await,
            Command::Drill(a) => crate::drill::command(a).await,
            Command::Export(a) => crate::export::command(a).await,
            Command::Plot(a) => crate::plot::command(a).await,
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
