//! Pacing shared by the scenarios: spread a bounded number of actions per second evenly over a
//! bounded duration, so every workload has a known ceiling on its intensity.
use std::time::{Duration, Instant};

/// Yields until each action's slot comes, and tells when the duration is over.
pub struct Pacer {
    start: Instant,
    end: Instant,
    per_action: Duration,
    done: u64,
}

impl Pacer {
    pub fn new(duration: Duration, per_second: u32) -> Self {
        let start = Instant::now();
        Self { start, end: start + duration, per_action: Duration::from_secs(1) / per_second.max(1), done: 0 }
    }

    /// Waits for the next action's slot; false once the duration is over or the run was
    /// interrupted (Ctrl-C, SIGTERM).
    pub fn next(&mut self) -> bool {
        if crate::interrupt::requested() {
            return false;
        }
        let slot = self.start + self.per_action * (self.done as u32);
        let now = Instant::now();
        if now >= self.end || slot >= self.end {
            return false;
        }
        if slot > now {
            std::thread::sleep(slot - now);
        }
        self.done += 1;
        true
    }

    /// Actions taken so far.
    pub fn done(&self) -> u64 {
        self.done
    }
}
