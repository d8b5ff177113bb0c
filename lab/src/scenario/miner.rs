//! miner: what a cryptominer dropped into a pod looks like to the node, throttled as careful
//! miners are so as not to stand out: one thread busy 60 % of every 100 ms (about 0.6 of one
//! core), for the duration. A node with idle cores barely notices; the pod's CPU time jumps
//! from near nothing to most of a core.
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The share of each period the thread is busy.
pub const DUTY: f64 = 0.6;
const PERIOD: Duration = Duration::from_millis(100);

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let start = Instant::now();
    let end = start + duration;
    let mut busy = Duration::ZERO;
    let mut x = 1u64;
    while Instant::now() < end && !crate::interrupt::requested() {
        let period_start = Instant::now();
        let work_until = period_start + PERIOD.mul_f64(DUTY);
        while Instant::now() < work_until.min(end) {
            for _ in 0..1_000 {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
            }
        }
        busy += period_start.elapsed();
        let rest = (period_start + PERIOD).saturating_duration_since(Instant::now());
        std::thread::sleep(rest.min(end.saturating_duration_since(Instant::now())));
    }
    black_box(x);
    Ok(json!({ "duty": DUTY, "busy_s": busy.as_secs_f64(), "elapsed_s": start.elapsed().as_secs_f64() }))
}
