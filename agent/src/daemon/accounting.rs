//! The run's closing account: every row that entered the agent (sampled, or found in the spool
//! from an earlier run) left exactly one way, and the `stopped` line says how many each way.
use std::sync::atomic::Ordering::Relaxed;

use tracing::{info, warn};

use crate::{daemon::metrics::Metrics, delivery::writer};

/// The run's closing account. Every row that entered (sampled now, or found in the spool from
/// an earlier run) left exactly one way: written, already in the database, dropped for a
/// reason, or still in the spool. `unaccounted` is the difference, and is 0.
pub struct Totals {
    sampled: u64,
    recovered: u64,
    skipped: u64,
    written: u64,
    duplicate: u64,
    dropped_full: u64,
    corrupt: u64,
    rejected: u64,
    clock_step: u64,
    dropped_shutdown: u64,
    spooled: u64,
}

impl Totals {
    pub fn new(m: &Metrics, r: &writer::WriterReport) -> Self {
        Totals {
            sampled: m.collection_count.load(Relaxed),
            recovered: r.recovered,
            skipped: m.samples_skipped.load(Relaxed),
            written: r.written,
            duplicate: r.duplicate,
            dropped_full: r.dropped_full + m.rows_dropped_channel_full.load(Relaxed),
            corrupt: r.corrupt,
            rejected: r.rejected,
            clock_step: m.rows_dropped_clock_step.load(Relaxed),
            dropped_shutdown: r.dropped_shutdown,
            spooled: r.unwritten,
        }
    }

    fn unaccounted(&self) -> i64 {
        let entered = self.sampled + self.recovered;
        let left = self.written
            + self.duplicate
            + self.dropped_full
            + self.corrupt
            + self.rejected
            + self.clock_step
            + self.dropped_shutdown
            + self.spooled;
        entered as i64 - left as i64
    }

    pub fn log(&self) {
        let unaccounted = self.unaccounted();
        info!(
            sampled = self.sampled,
            recovered = self.recovered,
            skipped = self.skipped,
            written = self.written,
            duplicate = self.duplicate,
            dropped_full = self.dropped_full,
            corrupt = self.corrupt,
            rejected = self.rejected,
            clock_step = self.clock_step,
            dropped_shutdown = self.dropped_shutdown,
            spooled = self.spooled,
            unaccounted,
            "stopped"
        );
        if unaccounted != 0 {
            // A row replayed after a crash between the database's commit and the spool's ack is
            // counted by both runs; nothing else should get here.
            warn!(unaccounted, "the closing totals do not add up");
        }
    }
}
