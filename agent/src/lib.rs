//! feature-agent: samples the 24 procfs features of the reference paper plus exact eBPF event
//! counts once per interval and writes one row per node to Postgres. The binary (main.rs) is a
//! thin wrapper around [`cli::main`]; the modules are public so the integration tests and the
//! benchmarks drive the same code.
pub mod cli;
pub mod collector;
pub mod db;
pub mod detector;
pub mod drill;
pub mod ebpf;
pub mod evaluate;
pub mod export;
pub mod label;
pub mod metrics;
pub mod migrate;
pub mod plot;
pub mod sampler;
pub mod scenario;
pub mod spool;
pub mod tcp_diag;
