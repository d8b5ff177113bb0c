//! feature-lab: the research tools over the rows `feature-agent` writes. They label windows as
//! attacks, run bounded attack-like scenarios, score detections against the labels, export
//! datasets (CSV, Parquet) and plot a node's features. None of it runs on the DaemonSet: the
//! node image ships `feature-agent` alone. The modules are public so the tests drive the same
//! code.
pub mod background;
pub mod cli;
pub mod drill;
pub mod evaluate;
pub mod export;
pub mod interrupt;
pub mod label;
pub mod outside;
pub mod plot;
pub mod pod;
pub mod prune;
pub mod scenario;
pub mod scores;
pub mod window;
