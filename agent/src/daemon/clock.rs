//! The rows' timestamps. Ticks come from the monotonic clock, which never steps; each row's `ts`
//! is the interval boundary nearest the wall clock as read at its tick, so a node whose clock
//! is stepped (NTP correcting a wrong boot time, an operator, a VM resumed) stamps its rows with
//! the corrected time from the next tick on, and labelled windows keep matching rows.
//!
//! A step is a change of more than [`STEP`] in the wall clock's offset from the monotonic clock
//! between two ticks; it is reported (logged and counted by direction by the caller). After a
//! backward step the boundaries the process already stamped come round again: such a row is
//! [`Stamp::Repeated`] and is not written, so no `ts` ever holds two rows of one process. Across
//! a restart the database's key (node, ts) does the same, and the writer counts the conflict.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The smallest change of the wall clock's offset that counts as a step. NTP slews offsets
/// under 128 ms and steps larger ones; a tick's own latency does not move the offset (both
/// clocks are read together).
pub const STEP: Duration = Duration::from_millis(500);

/// Where the wall-clock time comes from.
pub trait WallClock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A row's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// A boundary this process has not stamped before.
    Fresh(SystemTime),
    /// A boundary at or before one already stamped (the clock stepped back): not written.
    Repeated(SystemTime),
}

/// One tick's reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub stamp: Stamp,
    /// The step since the previous tick, in seconds (negative: back), if there was one.
    pub step: Option<f64>,
}

/// Stamps ticks with boundaries of the wall clock and watches it for steps.
pub struct Stamper {
    period: Duration,
    origin: Instant,
    /// The wall clock minus the monotonic clock at the last tick, in seconds.
    last_offset: Option<f64>,
    last_ts: Option<SystemTime>,
}

impl Stamper {
    pub fn new(period: Duration) -> Self {
        Stamper { period, origin: Instant::now(), last_offset: None, last_ts: None }
    }

    /// Stamps a tick whose clocks read `wall` and `mono` together.
    pub fn stamp(&mut self, wall: SystemTime, mono: Instant) -> Reading {
        let wall_s = signed_seconds(wall);
        let offset = wall_s - mono.saturating_duration_since(self.origin).as_secs_f64();
        let step = self.last_offset.map(|last| offset - last).filter(|d| d.abs() > STEP.as_secs_f64());
        self.last_offset = Some(offset);
        let ts = nearest_boundary(wall, self.period);
        let stamp = match self.last_ts {
            Some(last) if ts <= last => Stamp::Repeated(ts),
            _ => {
                self.last_ts = Some(ts);
                Stamp::Fresh(ts)
            }
        };
        Reading { stamp, step }
    }
}

fn signed_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The multiple of `period` since the Unix epoch nearest `wall` (a clock before 1970 reads as
/// the epoch).
pub fn nearest_boundary(wall: SystemTime, period: Duration) -> SystemTime {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let p = period.as_nanos().max(1);
    let n = (since + p / 2) / p;
    UNIX_EPOCH + Duration::from_nanos((n * p) as u64)
}

/// The next multiple of `period` after `wall`, and how long until it.
pub fn next_boundary(wall: SystemTime, period: Duration) -> (SystemTime, Duration) {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let p = period.as_nanos().max(1);
    let next = Duration::from_nanos(((since.as_nanos() / p + 1) * p) as u64);
    (UNIX_EPOCH + next, next.saturating_sub(since))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Duration = Duration::from_secs(10);

    fn at(s: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(s)
    }

    /// Ticks every period on the monotonic clock, the wall clock reading `wall(i)` at tick i.
    fn run(ticks: usize, wall: impl Fn(usize) -> f64) -> Vec<Reading> {
        let mut s = Stamper::new(P);
        let origin = s.origin;
        (0..ticks).map(|i| s.stamp(at(wall(i)), origin + P * i as u32)).collect()
    }

    #[test]
    fn a_steady_clock_stamps_every_boundary_once_with_no_step() {
        let r = run(5, |i| 1_000_000.0 + 10.0 * i as f64 + 0.003);
        let ts: Vec<Stamp> = r.iter().map(|r| r.stamp).collect();
        assert_eq!(ts, (0..5).map(|i| Stamp::Fresh(at(1_000_000.0 + 10.0 * i as f64))).collect::<Vec<_>>());
        assert!(r.iter().all(|r| r.step.is_none()));
    }

    #[test]
    fn a_forward_step_moves_the_stamps_and_is_reported_once() {
        // Booted an hour slow; NTP steps it at the third tick.
        let r = run(5, |i| 1_000_000.0 + 10.0 * i as f64 + if i >= 2 { 3600.0 } else { 0.0 });
        assert_eq!(r[2].stamp, Stamp::Fresh(at(1_003_620.0)));
        assert_eq!(r[2].step.map(f64::round), Some(3600.0));
        assert!(r.iter().enumerate().all(|(i, r)| (i == 2) == r.step.is_some()));
        assert_eq!(r[4].stamp, Stamp::Fresh(at(1_003_640.0)));
    }

    #[test]
    fn after_a_backward_step_no_boundary_is_stamped_twice() {
        // 25 s back at tick 3: ticks 3 and 4 land on boundaries already stamped, tick 5 is new.
        let r = run(7, |i| 1_000_000.0 + 10.0 * i as f64 - if i >= 3 { 25.0 } else { 0.0 });
        assert_eq!(r[3].step.map(f64::round), Some(-25.0));
        assert_eq!(r[3].stamp, Stamp::Repeated(at(1_000_010.0)));
        assert_eq!(r[4].stamp, Stamp::Repeated(at(1_000_020.0)));
        assert_eq!(r[5].stamp, Stamp::Fresh(at(1_000_030.0)));
    }

    proptest! {
        /// Whatever the steps, every Fresh stamp is a boundary, strictly after every earlier
        /// Fresh one, and a tick is Repeated only when its boundary was already stamped.
        #[test]
        fn fresh_stamps_are_strictly_increasing_boundaries(steps in proptest::collection::vec(-60.0f64..60.0, 1..60)) {
            let mut offset = 0.0;
            let walls: Vec<f64> = steps.iter().enumerate().map(|(i, s)| {
                if i % 3 == 0 { offset += s; }
                1_000_000.0 + 10.0 * i as f64 + offset + 0.01
            }).collect();
            let r = run(walls.len(), |i| walls[i]);
            let mut last: Option<SystemTime> = None;
            for reading in &r {
                match reading.stamp {
                    Stamp::Fresh(ts) => {
                        prop_assert!(last.is_none_or(|l| ts > l));
                        prop_assert_eq!(nearest_boundary(ts, P), ts);
                        last = Some(ts);
                    }
                    Stamp::Repeated(ts) => prop_assert!(last.is_some_and(|l| ts <= l)),
                }
            }
        }
    }

    #[test]
    fn boundaries() {
        assert_eq!(nearest_boundary(at(14.9), P), at(10.0));
        assert_eq!(nearest_boundary(at(15.0), P), at(20.0));
        assert_eq!(next_boundary(at(14.0), P), (at(20.0), Duration::from_secs(6)));
        assert_eq!(next_boundary(at(20.0), P).0, at(30.0));
    }
}
