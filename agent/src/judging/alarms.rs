//! The pod alarms of an interval: counted by namespace in /metrics and logged in one line, at
//! most a burst of lines a minute so a noisy node cannot flood the log.
use std::time::Instant;

use tracing::warn;

use crate::{daemon::metrics::Metrics, judging::pod_detector::FlaggedPod};

/// Logs the pods flagged in an interval in one line, at most [`AlarmLog::BURST`] lines a minute;
/// the lines held back are counted in the next one.
pub struct AlarmLog {
    tokens: f64,
    refilled: Instant,
    held_back: u64,
}

impl AlarmLog {
    const BURST: f64 = 6.0;

    pub fn new() -> Self {
        Self { tokens: Self::BURST, refilled: Instant::now(), held_back: 0 }
    }

    /// Counts the interval's flagged pods by namespace in /metrics and logs them.
    pub fn record(&mut self, metrics: &Metrics, node: &str, flagged: &[FlaggedPod]) {
        if flagged.is_empty() {
            return;
        }
        if let Ok(mut alarms) = metrics.pod_alarms.lock() {
            for f in flagged {
                alarms.count(f.namespace.as_deref());
            }
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * Self::BURST / 60.0).min(Self::BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.held_back += 1;
            return;
        }
        self.tokens -= 1.0;
        warn!(held_back = std::mem::take(&mut self.held_back), "{}", alarm_line(node, flagged));
    }
}

/// "worker-3: shop/scanner-7d9 tcp_conn_failed, tcp_rst_recv; ..." (at most 10 pods named).
fn alarm_line(node: &str, flagged: &[FlaggedPod]) -> String {
    const NAMED: usize = 10;
    let mut parts: Vec<String> =
        flagged.iter().take(NAMED).map(|f| format!("{} {}", f.name, f.features.join(", "))).collect();
    if flagged.len() > NAMED {
        parts.push(format!("and {} more pods", flagged.len() - NAMED));
    }
    format!("{node}: {}", parts.join("; "))
}

impl Default for AlarmLog {
    fn default() -> Self {
        Self::new()
    }
}
