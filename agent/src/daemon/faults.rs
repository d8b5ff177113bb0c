//! Faults the integration tests inject into a real agent process, compiled only with the
//! `fault-injection` feature (which the tests crate turns on; the release binary has none of it):
//! a wall clock offset read from a file at every tick, to step a running agent's clock forward and
//! back without touching the machine's, and a failed eBPF map read at a given sample, to check what
//! the rows make of it.
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use crate::daemon::clock::WallClock;

/// The faults, as options (each with its environment variable, for tests that set only those).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Faults {
    /// A file holding seconds to add to the wall clock, read at every tick.
    #[arg(long, env = "FEATURE_AGENT_CLOCK_OFFSET_FILE")]
    pub clock_offset_file: Option<PathBuf>,
    /// The eBPF map read of this sample (counted from 1) fails, as a failed lookup would.
    #[arg(long, env = "FEATURE_AGENT_FAIL_MAP_READ")]
    pub test_fail_map_read: Option<u64>,
}

/// The system clock plus an offset in seconds read from a file at every reading (a missing or
/// unreadable file is offset 0).
pub struct OffsetFileClock(pub PathBuf);

impl WallClock for OffsetFileClock {
    fn now(&self) -> SystemTime {
        let offset = std::fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse::<f64>().ok()).unwrap_or(0.0);
        let now = SystemTime::now();
        let shift = Duration::from_secs_f64(offset.abs().min(1e9));
        if offset >= 0.0 {
            now + shift
        } else {
            now - shift
        }
    }
}
