//! cpu-stress: the reference paper's stress test. One busy thread per CPU for the duration.
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let end = Instant::now() + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 1u64;
                while Instant::now() < end && !crate::interrupt::requested() {
                    for _ in 0..10_000 {
                        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
                    }
                }
                x
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(json!({ "threads": threads }))
}
