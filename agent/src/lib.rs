//! feature-agent, the node daemon: samples the procfs features of the reference paper plus exact
//! eBPF event counts once per interval, judges each row, and writes one row per node (and one
//! per pod) to Postgres, through the spool when the database is away. Four folders, by what
//! each part does (ARCHITECTURE.md follows a row through them):
//! - [`sources`]: what the agent reads, and the sampler that makes one row of it;
//! - [`judging`]: the verdicts on node and pod rows, and their baselines across restarts;
//! - [`delivery`]: the writer thread and the on-disk spool;
//! - [`daemon`]: the process: the schedule, options, clock, metrics, subcommands.
//!
//! The binary (main.rs) is a thin wrapper around [`daemon::cli::main`]; the modules are public
//! so the integration tests and the benchmarks drive the same code.
pub mod daemon;
pub mod delivery;
pub mod judging;
pub mod sources;
