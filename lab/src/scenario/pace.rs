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
    /// interrupted (Ctrl-C, SIGTERM). After the last action it waits for the duration's end, so
    /// the run (and the window recorded for it) lasts what was asked: `--duration 4` at one
    /// action a second is four actions over 4 s, not over the 3 s their slots start within.
    pub fn next(&mut self) -> bool {
        if crate::interrupt::requested() {
            return false;
        }
        let slot = self.start + self.per_action * (self.done as u32);
        let now = Instant::now();
        if now >= self.end {
            return false;
        }
        if slot >= self.end {
            while !crate::interrupt::requested() {
                let left = self.end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(100)));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lasts_its_whole_duration_after_its_last_action() {
        let mut pacer = Pacer::new(Duration::from_millis(400), 10);
        let start = Instant::now();
        while pacer.next() {}
        assert_eq!(pacer.done(), 4);
        assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    }
}
