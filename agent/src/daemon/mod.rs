//! The process: the command line (`cli`) and options (`config`), the schedule that drives a row
//! from sampling to the writer (`pipeline`), the `print` and `migrate` subcommands (`commands`),
//! the signals, stopping the writer in time (`shutdown`), the accounting of every row
//! (`accounting`), the clock rows are stamped by
//! (`clock`), self-monitoring (`metrics`), and the faults only the tests' build injects
//! (`faults`).
pub mod accounting;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod signals;
