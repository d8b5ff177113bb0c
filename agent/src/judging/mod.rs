//! The verdicts: the streaming detector on node rows (`detector`), the per-workload detector on
//! pod rows (`pod_detector`), their baselines saved across restarts (`detector_state`,
//! `persistence`), and the rate-limited log of flagged pods (`alarms`).
pub mod alarms;
pub mod detector;
pub mod detector_state;
pub mod persistence;
pub mod pod_detector;
