//! feature-agent, the node daemon: samples the procfs features of the reference paper plus exact
//! eBPF event counts once per interval, judges each row, and writes one row per node to
//! Postgres (through the spool when the database is away). A row flows: kernel hooks
//! (agent-ebpf) -> per-CPU maps -> ebpf.rs + collector/ + tcp_diag.rs -> sampler.rs (one row)
//! -> detector.rs and pod_detector.rs (verdicts on the node row and each pod row) -> writer/ (memory queue, else spool/) -> node_features. The binary (main.rs) is a
//! thin wrapper around [`cli::main`]; the modules are public so the integration tests and the
//! benchmarks drive the same code.
pub mod btf;
pub mod cgroups;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod config;
pub mod conn_gauges;
pub mod detector;
pub mod detector_state;
pub mod ebpf;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod metrics;
pub mod netns;
pub mod pipeline;
pub mod pod_detector;
pub mod pods;
pub mod sampler;
pub mod spool;
pub mod tcp_diag;
pub mod workload;
pub mod writer;
