//! The agent's real-time detector: a streaming per-feature baseline that judges every row as
//! it is sampled, before it is written.
//!
//! - Features are scored as in SQL (features.rs): gauges and eBPF counts as they are,
//!   cumulative counters on their delta since the previous row (NULL after a reset).
//! - Warm-up: for the first `warmup_rows` rows the verdict is NULL and every value is kept. The
//!   baseline then starts from the median and the MAD (scaled to a standard deviation), which
//!   the agent's own start-up (its first deltas, the BTF parse, the first connection) cannot
//!   drag the way a mean would.
//! - After warm-up, a row scores `z = (x - mean) / spread` per feature, where spread is the
//!   baseline's standard deviation floored at the feature's `min_spread` and at 5 % of |mean|,
//!   so a feature that was flat in the baseline does not flag on noise or divide by zero. The
//!   anomaly score is the largest |z|; the features above the threshold are listed, largest
//!   first. Only rows judged normal update the baseline (exponentially weighted, with a
//!   half-life in rows), so an attack does not teach the detector that it is normal.
//! - A shift that lasts becomes the new normal: when one feature has been flagged on every one
//!   of the last `adapt_rows` rows (a load average still settling after start, a new workload
//!   on the node), that feature alone is re-anchored on the median and MAD of those rows and
//!   the re-anchoring is logged. Without this a slow drift past the threshold would freeze the
//!   baseline and flag every later row.
use feature_schema::{FeatureRow, Kind, Verdict, FEATURES, FEATURE_COUNT};

/// Spread floor relative to the baseline mean.
const RELATIVE_SPREAD_FLOOR: f64 = 0.05;
/// MAD to standard deviation for normally distributed data.
const MAD_TO_SD: f64 = 1.4826;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorOptions {
    /// |z| above which a feature makes a row anomalous.
    pub threshold: f64,
    /// Rows judged before any verdict (the verdict is NULL meanwhile).
    pub warmup_rows: usize,
    /// Rows after which a normal row's weight in the baseline has halved.
    pub half_life_rows: f64,
    /// Consecutive flagged rows after which a feature's shift is taken as its new normal.
    pub adapt_rows: usize,
}

/// One feature's running baseline.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    mean: f64,
    var: f64,
}

#[derive(Debug)]
pub struct Detector {
    options: DetectorOptions,
    alpha: f64,
    rows: usize,
    previous: Option<[Option<f64>; FEATURE_COUNT]>,
    /// Values seen during warm-up, per feature.
    warmup: Vec<Vec<f64>>,
    baseline: [Option<Baseline>; FEATURE_COUNT],
    /// Per feature, its values on the consecutive rows it has been flagged on.
    streak: Vec<Vec<f64>>,
}

impl Detector {
    pub fn new(options: DetectorOptions) -> Self {
        let alpha = 1.0 - 0.5f64.powf(1.0 / options.half_life_rows.max(1.0));
        Self {
            options,
            alpha,
            rows: 0,
            previous: None,
            warmup: vec![Vec::new(); FEATURE_COUNT],
            baseline: [None; FEATURE_COUNT],
            streak: vec![Vec::new(); FEATURE_COUNT],
        }
    }

    /// Judges a row and records the verdict in it.
    pub fn judge(&mut self, row: &mut FeatureRow) {
        let values = row.feature_values();
        let scored = self.scored(&values);
        self.previous = Some(values);
        self.rows += 1;
        row.set_verdict(self.judge_values(&scored));
    }

    /// The values that are scored: counters become deltas against the previous row.
    fn scored(&self, values: &[Option<f64>; FEATURE_COUNT]) -> [Option<f64>; FEATURE_COUNT] {
        let mut out = *values;
        for (i, f) in FEATURES.iter().enumerate() {
            if f.kind == Kind::Counter {
                let prev = self.previous.as_ref().and_then(|p| p[i]);
                out[i] = match (values[i], prev) {
                    (Some(cur), Some(prev)) if cur >= prev => Some(cur - prev),
                    _ => None,
                };
            }
        }
        out
    }

    fn judge_values(&mut self, scored: &[Option<f64>; FEATURE_COUNT]) -> Verdict {
        if self.rows <= self.options.warmup_rows {
            for (buf, v) in self.warmup.iter_mut().zip(scored) {
                buf.extend(v.filter(|v| v.is_finite()));
            }
            if self.rows == self.options.warmup_rows {
                self.start_baselines();
            }
            return Verdict::default();
        }
        let mut score: f64 = 0.0;
        let mut flagged: Vec<(f64, &'static str)> = Vec::new();
        for (i, v) in scored.iter().enumerate() {
            let (Some(x), Some(b)) = (v, self.baseline[i]) else {
                self.streak[i].clear();
                continue;
            };
            let z = (x - b.mean) / spread(b, FEATURES[i].min_spread);
            score = score.max(z.abs());
            if z.abs() > self.options.threshold {
                flagged.push((z.abs(), FEATURES[i].column));
                self.streak[i].push(*x);
            } else {
                self.streak[i].clear();
            }
        }
        if flagged.is_empty() {
            self.learn(scored);
        }
        self.adapt();
        flagged.sort_by(|a, b| b.0.total_cmp(&a.0));
        Verdict {
            anomaly_score: Some(score),
            anomalous_features: Some(flagged.into_iter().map(|(_, c)| c.to_owned()).collect()),
        }
    }

    /// Robust start: median and scaled MAD of the warm-up values. A feature with no value
    /// during warm-up starts from its first value later, with its floor as spread.
    fn start_baselines(&mut self) {
        for (i, buf) in self.warmup.iter_mut().enumerate() {
            if buf.is_empty() {
                continue;
            }
            self.baseline[i] = Some(robust(buf));
        }
        self.warmup = Vec::new();
    }

    /// Re-anchors the features that have been flagged for `adapt_rows` rows in a row.
    fn adapt(&mut self) {
        let limit = self.options.adapt_rows.max(1);
        for (i, feature) in FEATURES.iter().enumerate() {
            if self.streak[i].len() < limit {
                continue;
            }
            let mut values = std::mem::take(&mut self.streak[i]);
            let (old, new) = (self.baseline[i].map(|b| b.mean), robust(&mut values));
            self.baseline[i] = Some(new);
            tracing::info!(
                feature = feature.column,
                rows = limit,
                old_mean = old,
                new_mean = new.mean,
                "a lasting shift: this feature's baseline is re-anchored on its recent rows"
            );
        }
    }

    /// Exponentially weighted update of mean and variance from a normal row.
    fn learn(&mut self, scored: &[Option<f64>; FEATURE_COUNT]) {
        let a = self.alpha;
        for (b, v) in self.baseline.iter_mut().zip(scored) {
            let Some(x) = v.filter(|x| x.is_finite()) else { continue };
            match b {
                Some(b) => {
                    let diff = x - b.mean;
                    b.mean += a * diff;
                    b.var = (1.0 - a) * (b.var + a * diff * diff);
                }
                None => *b = Some(Baseline { mean: x, var: 0.0 }),
            }
        }
    }
}

/// Median and scaled MAD of some values, as a baseline.
fn robust(values: &mut [f64]) -> Baseline {
    let m = median(values);
    let mut dev: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    let sd = MAD_TO_SD * median(&mut dev);
    Baseline { mean: m, var: sd * sd }
}

fn spread(b: Baseline, min_spread: f64) -> f64 {
    b.var.sqrt().max(min_spread).max(RELATIVE_SPREAD_FLOOR * b.mean.abs())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use feature_schema::features::index_of;

    fn row(load1: f64, forks_total: i64, execs: i64) -> FeatureRow {
        let mut r = FeatureRow::empty("n".into(), SystemTime::UNIX_EPOCH);
        for e in agent_common::Event::ALL {
            r.set_event(e, Some(0));
        }
        r.ebpf_execs = Some(execs);
        r.interval_s = Some(1.0);
        r.load1 = Some(load1);
        r.forks_total = Some(forks_total);
        r.est_conn = Some(3);
        r.lis_conn = Some(2);
        r
    }

    fn detector(warmup_rows: usize) -> Detector {
        Detector::new(DetectorOptions { threshold: 4.0, warmup_rows, half_life_rows: 100.0, adapt_rows: 1000 })
    }

    #[test]
    fn null_verdict_during_warm_up_then_scores() {
        let mut d = detector(5);
        for k in 0..5 {
            let mut r = row(1.0, 100 + 10 * k, 0);
            d.judge(&mut r);
            assert_eq!(r.verdict(), Verdict::default(), "row {k}");
        }
        let mut r = row(1.0, 150, 0);
        d.judge(&mut r);
        assert_eq!(r.anomalous_features, Some(vec![]));
        assert!(r.anomaly_score.unwrap() < 1.0, "{:?}", r.verdict());
    }

    #[test]
    fn a_start_up_spike_does_not_poison_the_baseline() {
        let mut d = detector(10);
        // The first counter delta is missing; the second is a start-up spike of 5000 forks.
        let mut forks = 0;
        for k in 0..10 {
            forks += if k == 1 { 5000 } else { 10 };
            d.judge(&mut row(1.0, forks, 0));
        }
        forks += 10;
        let mut r = row(1.0, forks, 0);
        d.judge(&mut r);
        assert!(!r.is_anomalous(), "{:?}", r.verdict());
        forks += 400;
        let mut r = row(1.0, forks, 0);
        d.judge(&mut r);
        assert_eq!(r.anomalous_features.as_deref(), Some(&["forks_total".to_owned()][..]));
    }

    #[test]
    fn flat_features_flag_only_beyond_their_floor_and_attacks_do_not_teach() {
        let mut d = detector(5);
        for _ in 0..5 {
            d.judge(&mut row(1.0, 0, 0));
        }
        // execs flat at 0: floor 5, threshold 4 -> 20 execs is not anomalous, 21 is.
        let mut r = row(1.0, 0, 20);
        d.judge(&mut r);
        assert!(!r.is_anomalous(), "{:?}", r.verdict());
        let before = d.baseline[index_of("ebpf_execs").unwrap()].unwrap().mean;
        for _ in 0..50 {
            let mut r = row(1.0, 0, 1000);
            d.judge(&mut r);
            assert_eq!(r.anomalous_features.as_deref(), Some(&["ebpf_execs".to_owned()][..]));
            assert!((r.anomaly_score.unwrap() - (1000.0 - before) / 5.0).abs() < 1e-9);
        }
        assert_eq!(d.baseline[index_of("ebpf_execs").unwrap()].unwrap().mean, before);
    }

    #[test]
    fn flagged_features_are_ordered_by_z() {
        let mut d = detector(3);
        for _ in 0..3 {
            d.judge(&mut row(1.0, 0, 0));
        }
        let mut r = row(11.0, 0, 30);
        d.judge(&mut r);
        // load1: (11 - 1) / 0.25 = 40; execs: 30 / 5 = 6.
        assert_eq!(r.anomalous_features, Some(vec!["load1".to_owned(), "ebpf_execs".to_owned()]));
        assert_eq!(r.anomaly_score, Some(40.0));
    }
}

#[cfg(test)]
mod adapt_tests {
    use super::*;

    #[test]
    fn a_lasting_shift_becomes_normal_after_adapt_rows() {
        let mut d =
            Detector::new(DetectorOptions { threshold: 4.0, warmup_rows: 5, half_life_rows: 1000.0, adapt_rows: 10 });
        let row = |load5: f64| {
            let mut r = FeatureRow::empty("n".into(), std::time::SystemTime::UNIX_EPOCH);
            r.load5 = Some(load5);
            r
        };
        for _ in 0..5 {
            d.judge(&mut row(1.5));
        }
        // load5 settles at 0.3: flagged for 10 rows, then the new level is normal.
        for k in 0..10 {
            let mut r = row(0.3);
            d.judge(&mut r);
            assert!(r.is_anomalous(), "row {k}");
        }
        let mut r = row(0.3);
        d.judge(&mut r);
        assert!(!r.is_anomalous(), "{:?}", r.verdict());
        // A short burst is still flagged, and does not re-anchor anything.
        let mut r = row(3.0);
        d.judge(&mut r);
        assert!(r.is_anomalous());
    }
}
