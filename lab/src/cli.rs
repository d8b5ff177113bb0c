//! Command line of `feature-lab`, the research tools: label, scenario, evaluate, export, plot,
//! prune and drill. Database options are the daemon's (feature-db), with the same environment
//! fallbacks, so one DATABASE_URL serves both binaries.
use clap::{Parser, Subcommand};

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
    /// Retention: drop per-pod rows older than N days, a whole day partition at a time.
    Prune(crate::prune::PruneArgs),
    /// Scripted detection run: start feature-agent, run the scenarios between normal periods,
    /// evaluate.
    Drill(crate::drill::DrillArgs),
    /// A scenario's workload alone (how the drill runs one inside a pod).
    #[command(hide = true)]
    ScenarioWorkload(crate::scenario::WorkloadArgs),
}

/// Entry point of the binary: the shared entry (arguments, logging, runtime, exit status) around
/// this binary's commands; a password on the command line is refused.
pub fn main() -> std::process::ExitCode {
    feature_host::entry::main(feature_db::refuse_secrets_on_command_line, |cli: Cli| async move {
        match cli.command {
            Command::Label(a) => crate::label::command(a).await,
            Command::Scenario(a) => crate::scenario::command(a).await,
            Command::Evaluate(a) => crate::evaluate::command(a).await,
            Command::Drill(a) => crate::drill::command(a).await,
            Command::Export(a) => crate::export::command(a).await,
            Command::Plot(a) => crate::plot::command(a).await,
            Command::Prune(a) => crate::prune::command(a).await,
            Command::ScenarioWorkload(a) => crate::scenario::workload_command(a),
        }
    })
}
