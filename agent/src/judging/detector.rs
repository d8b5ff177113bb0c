//! The agent's real-time detector: a streaming per-feature baseline that judges every row as
//! it is sampled, before it is written.
//!
//! - What is scored (features.rs declares it per feature): a gauge as it is, or, for a drifting
//!   gauge (memory, sockets held, load averages), its change since the previous row; a
//!   cumulative counter as its delta, and an eBPF count as it is, both as a rate per nominal
//!   interval (scaled by the row's real elapsed time), so a late or skipped sample is no spike.
//! - Warm-up: for the first `warmup_rows` rows the verdict is NULL and every value is kept. The
//!   baseline then starts from the median and the MAD (scaled to a standard deviation), which
//!   the agent's own start-up (its first deltas, the BTF parse, the first connection) cannot
//!   drag the way a mean would.
//! - After warm-up, a row scores `z = (x - mean) / spread` per feature, where spread is the
//!   baseline's standard deviation floored at the feature's `min_spread` and at 5 % of |mean|,
//!   so a feature that was flat in the baseline does not flag on noise or divide by zero. Each
//!   z is seen from the feature's attack direction (an attack raises forks, lowers idle time):
//!   a node quieter than usual is no alarm.
//! - A row is anomalous when at least `agreement` features exceed the threshold together, or
//!   one exceeds twice the threshold: one feature drifting past the threshold on a busy node is
//!   the common false alarm, while attacks move several features at once or one by far. The
//!   anomaly score is the largest directed z; the features above the threshold are listed,
//!   largest first, on anomalous rows.
//! - Rows judged normal update the baseline (exponentially weighted, with a half-life in rows),
//!   except in the features that were above the threshold; an anomalous row teaches nothing, so
//!   an attack does not teach the detector that it is normal.
//! - A shift that lasts becomes the new normal: when one feature has been flagged on every one
//!   of the last `adapt_rows` rows (a load average still settling after start, a new workload
//!   on the node), that feature alone is re-anchored on the median and MAD of those rows and
//!   the re-anchoring is logged. Without this a slow drift past the threshold would freeze the
//!   baseline and flag every later row.
//! - A burst that recurs becomes normal too: a build pod's `make` every half minute, a nightly
//!   job on a node. Beside each baseline runs a shadow that learns from every row, flagged or
//!   not, with a half-life of half that window. When a feature has been flagged in
//!   `recurring_episodes` separate episodes (runs of flagged rows; rows flagged within 5 s of
//!   each other are one episode, so an attack that flickers is one) within the last
//!   `recurring_rows` rows, its baseline is replaced by its shadow, whose spread holds the
//!   bursts (widened, if need be, so that the largest of those episodes' peaks scores at 0.8 of
//!   the threshold), and that is logged. The warm-up's own bursts count, so a workload that bursts
//!   all through its warm-up starts with them as normal. A continuous attack is one
//!   episode (the re-anchoring above handles a lasting one), so a one-off attack never
//!   teaches; an attack that repeats as often as a build does is, by this rule, that subject's
//!   normal.
use std::collections::VecDeque;

use feature_schema::{Feature, FeatureRow, Kind, Verdict, FEATURES};

/// Spread floor relative to the baseline mean.
const RELATIVE_SPREAD_FLOOR: f64 = 0.05;
/// MAD to standard deviation for normally distributed data.
const MAD_TO_SD: f64 = 1.4826;
/// Where a recurring burst's peak lands after its feature is re-anchored, as a fraction of the
/// threshold: a little below it, so the next burst of the same size is not an alarm.
const PEAK_HELD_AT: f64 = 0.8;
/// A feature flagged again within this many seconds of its last flagged row continues the same
/// episode: an attack that flickers around the threshold for a few short intervals is one
/// episode, not several (at a 10 s interval only consecutive rows are one episode).
const EPISODE_GAP_S: f64 = 5.0;

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
    /// Features that must exceed the threshold together for an alarm (one feature alone
    /// raises it beyond twice the threshold).
    pub agreement: usize,
    /// The sampling interval: counters and event counts are scored per this many seconds.
    pub interval_s: f64,
    /// Separate flagged episodes of one feature, within `recurring_rows`, after which its
    /// bursts are taken as normal (0: never).
    pub recurring_episodes: usize,
    /// The window, in rows, in which recurring episodes are counted.
    pub recurring_rows: usize,
}

/// One feature's running baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub var: f64,
}

/// Turns one source's raw values (a node's, or one pod's) into scored ones: counters become
/// deltas against the source's previous row and, with event counts, rates per nominal
/// interval; drifting gauges become changes.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    previous: Option<Vec<Option<f64>>>,
    /// Per feature: a counter known to have started at zero that has not been read yet. Its
    /// zero stands as the previous value until the first reading (a new pod whose network is not
    /// readable in its first row still gets its whole count as its first delta).
    zero_until_read: Vec<bool>,
}

impl Rates {
    /// The rates of a source whose counters started at zero since the previous interval (a pod
    /// that appeared while the agent runs): its first row's deltas are its whole counts.
    pub fn from_zero(features: &[Feature]) -> Self {
        let counters: Vec<bool> = features.iter().map(|f| f.kind == Kind::Counter).collect();
        let previous = counters.iter().map(|&c| c.then_some(0.0)).collect();
        Rates { previous: Some(previous), zero_until_read: counters }
    }

    pub fn scored(
        &mut self,
        features: &[Feature],
        values: &[Option<f64>],
        elapsed_s: Option<f64>,
        interval_s: f64,
    ) -> Vec<Option<f64>> {
        // A row's counts cover its real interval; scaled to the nominal one.
        let per_interval = match elapsed_s {
            Some(e) if e > 0.0 && e.is_finite() => interval_s / e,
            _ => 1.0,
        };
        let out = features
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let prev = self.previous.as_ref().and_then(|p| p[i]);
                match (f.kind, f.on_change) {
                    (Kind::Counter, _) => match (values[i], prev) {
                        (Some(cur), Some(prev)) if cur >= prev => Some((cur - prev) * per_interval),
                        _ => None,
                    },
                    (Kind::Events, _) => values[i].map(|v| v * per_interval),
                    (Kind::Gauge, true) => match (values[i], prev) {
                        (Some(cur), Some(prev)) => Some(cur - prev),
                        _ => None,
                    },
                    (Kind::Gauge, false) => values[i],
                }
            })
            .collect();
        let previous = values
            .iter()
            .enumerate()
            .map(|(i, v)| v.or_else(|| self.zero_until_read.get(i).copied().unwrap_or(false).then_some(0.0)))
            .collect();
        for (i, v) in values.iter().enumerate() {
            if v.is_some() {
                if let Some(z) = self.zero_until_read.get_mut(i) {
                    *z = false;
                }
            }
        }
        self.previous = Some(previous);
        out
    }
}

/// A run of rows on which one feature was flagged, consecutive or within [`EPISODE_GAP_S`].
#[derive(Debug, Clone, Copy)]
struct Episode {
    start_row: usize,
    last_row: usize,
    /// Its value farthest in the attack direction, and that value's z when it was judged.
    peak: f64,
    peak_z: f64,
}

/// One subject's baselines (the node's, or one workload's), one per feature, with the
/// warm-up, learning and re-anchoring rules above.
#[derive(Debug, Clone)]
pub struct Baselines {
    /// Whose baselines these are, for the log: "node", or a workload's name.
    subject: String,
    features: &'static [Feature],
    rows: usize,
    /// Values seen during warm-up, per feature.
    warmup: Vec<Vec<f64>>,
    baseline: Vec<Option<Baseline>>,
    /// Per feature, its values on the consecutive rows it has been flagged on.
    streak: Vec<Vec<f64>>,
    /// Per feature, a baseline learned from every row after warm-up, flagged or not.
    shadow: Vec<Option<Baseline>>,
    /// Per feature, its recent flagged episodes: the row (by number) each started on, and its
    /// most anomalous value.
    episodes: Vec<VecDeque<Episode>>,
}

impl Baselines {
    pub fn new(features: &'static [Feature], subject: &str) -> Self {
        let n = features.len();
        Self {
            subject: subject.to_owned(),
            features,
            rows: 0,
            warmup: vec![Vec::new(); n],
            baseline: vec![None; n],
            streak: vec![Vec::new(); n],
            shadow: vec![None; n],
            episodes: vec![VecDeque::new(); n],
        }
    }

    /// Baselines restored from a saved state, warm: they judge from their first row. `saved`
    /// holds (feature column, baseline); a column this release does not score is ignored, and
    /// a feature the state lacks starts from its first value, as after warm-up.
    pub fn restored(
        features: &'static [Feature],
        subject: &str,
        options: &DetectorOptions,
        saved: &[(String, Baseline)],
    ) -> Self {
        let mut b = Self::new(features, subject);
        b.rows = options.warmup_rows;
        b.warmup = vec![Vec::new(); features.len()];
        for (column, base) in saved {
            if let Some(i) = features.iter().position(|f| f.column == column) {
                if base.mean.is_finite() && base.var.is_finite() && base.var >= 0.0 {
                    b.baseline[i] = Some(*base);
                    b.shadow[i] = Some(*base);
                }
            }
        }
        b
    }

    /// True once the warm-up is over: rows get a verdict.
    pub fn is_warm(&self, options: &DetectorOptions) -> bool {
        self.rows >= options.warmup_rows
    }

    /// (feature column, baseline) of every feature that has one.
    pub fn saved(&self) -> Vec<(&'static str, Baseline)> {
        self.features.iter().zip(&self.baseline).filter_map(|(f, b)| Some((f.column, (*b)?))).collect()
    }

    /// The baseline of feature `i` (in the features' order), if it has one.
    pub fn baseline(&self, i: usize) -> Option<Baseline> {
        self.baseline[i]
    }

    /// Judges one row's scored values; the verdict is empty (NULL) during warm-up.
    pub fn judge(&mut self, options: &DetectorOptions, alpha: f64, scored: &[Option<f64>]) -> Verdict {
        self.rows += 1;
        if self.rows <= options.warmup_rows {
            for (buf, v) in self.warmup.iter_mut().zip(scored) {
                buf.extend(v.filter(|v| v.is_finite()));
            }
            if self.rows == options.warmup_rows {
                self.start_baselines(options);
                self.recur(options);
            }
            return Verdict::default();
        }
        let threshold = options.threshold;
        let mut score: f64 = 0.0;
        let mut flagged: Vec<(f64, &'static str)> = Vec::new();
        let mut above = vec![false; self.features.len()];
        for (i, v) in scored.iter().enumerate() {
            let (Some(x), Some(b)) = (v, self.baseline[i]) else {
                self.streak[i].clear();
                continue;
            };
            let feature = &self.features[i];
            let z = feature.direction.toward_attack((x - b.mean) / spread(b, feature.min_spread));
            score = score.max(z);
            if z > threshold {
                above[i] = true;
                flagged.push((z, feature.column));
                let started = self.rows - self.streak[i].len();
                note_flagged(&mut self.episodes[i], started, self.rows, *x, z, options.interval_s);
                self.streak[i].push(*x);
            } else {
                self.streak[i].clear();
            }
        }
        let alarm = flagged.len() >= options.agreement.max(1) || flagged.iter().any(|(z, _)| *z > 2.0 * threshold);
        // A normal row teaches the features that were below the threshold; an anomalous row
        // teaches nothing.
        if !alarm {
            flagged.clear();
            learn(&mut self.baseline, alpha, scored, &above);
        }
        learn(&mut self.shadow, options.shadow_alpha(), scored, &vec![false; scored.len()]);
        self.adapt(options);
        self.recur(options);
        flagged.sort_by(|a, b| b.0.total_cmp(&a.0));
        Verdict {
            anomaly_score: Some(score),
            anomalous_features: Some(flagged.into_iter().map(|(_, c)| c.to_owned()).collect()),
        }
    }

    /// Robust start: median and scaled MAD of the warm-up values. A feature with no value
    /// during warm-up starts from its first value later, with its floor as spread. The shadow
    /// starts from the plain mean and variance, bursts included, and the warm-up's episodes
    /// above the threshold of the robust start count as recurring episodes: a workload that
    /// bursts all through its warm-up starts with its bursts as normal.
    fn start_baselines(&mut self, options: &DetectorOptions) {
        for (i, buf) in self.warmup.iter_mut().enumerate() {
            if buf.is_empty() {
                continue;
            }
            self.shadow[i] = Some(plain(buf));
            let start = robust(&mut buf.clone());
            self.baseline[i] = Some(start);
            let feature = &self.features[i];
            for (k, x) in buf.iter().enumerate() {
                let z = feature.direction.toward_attack((x - start.mean) / spread(start, feature.min_spread));
                if z > options.threshold {
                    note_flagged(&mut self.episodes[i], k + 1, k + 1, *x, z, options.interval_s);
                }
            }
        }
        self.warmup = vec![Vec::new(); self.features.len()];
    }

    /// Re-anchors the features that have been flagged for `adapt_rows` rows in a row.
    fn adapt(&mut self, options: &DetectorOptions) {
        let limit = options.adapt_rows.max(1);
        for (i, feature) in self.features.iter().enumerate() {
            if self.streak[i].len() < limit {
                continue;
            }
            let mut values = std::mem::take(&mut self.streak[i]);
            self.episodes[i].clear();
            let (old, new) = (self.baseline[i].map(|b| b.mean), robust(&mut values));
            self.baseline[i] = Some(new);
            tracing::info!(
                subject = %self.subject,
                feature = feature.column,
                rows = limit,
                old_mean = old,
                new_mean = new.mean,
                "a lasting shift: this feature's baseline is re-anchored on its recent rows"
            );
        }
    }

    /// Takes as normal the bursts of the features flagged in `recurring_episodes` separate
    /// episodes within the last `recurring_rows` rows: their baselines become their shadows,
    /// widened where needed so that the largest of those bursts scores below the threshold
    /// (a burst's peak row is rarer than the bursts' variance says).
    fn recur(&mut self, options: &DetectorOptions) {
        if options.recurring_episodes == 0 {
            return;
        }
        let oldest = self.rows.saturating_sub(options.recurring_rows);
        for (i, feature) in self.features.iter().enumerate() {
            let episodes = &mut self.episodes[i];
            while episodes.front().is_some_and(|e| e.start_row <= oldest) {
                episodes.pop_front();
            }
            if episodes.len() < options.recurring_episodes {
                continue;
            }
            let Some(mut shadow) = self.shadow[i] else { continue };
            let peak = episodes.iter().map(|e| (e.peak - shadow.mean).abs()).fold(0.0, f64::max);
            let held = peak / (PEAK_HELD_AT * options.threshold);
            shadow.var = shadow.var.max(held * held);
            episodes.clear();
            let old = self.baseline[i].replace(shadow);
            tracing::info!(
                subject = %self.subject,
                feature = feature.column,
                episodes = options.recurring_episodes,
                rows = options.recurring_rows,
                old_mean = old.map(|b| b.mean),
                old_sd = old.map(|b| b.var.sqrt()),
                new_mean = shadow.mean,
                new_sd = shadow.var.sqrt(),
                "a recurring burst: this feature's baseline now holds its bursts"
            );
        }
    }
}

/// Records that a feature was flagged on row `row` (value `x`, directed score `z`; its current
/// run of consecutive flagged rows began on `run_start`): the feature's last episode goes on when
/// the row follows its last flagged row or comes within [`EPISODE_GAP_S`] of it, and a new
/// episode starts otherwise.
fn note_flagged(episodes: &mut VecDeque<Episode>, run_start: usize, row: usize, x: f64, z: f64, interval_s: f64) {
    match episodes.back_mut() {
        Some(e) if row - e.last_row == 1 || (row - e.last_row) as f64 * interval_s <= EPISODE_GAP_S => {
            e.last_row = row;
            if z > e.peak_z {
                (e.peak, e.peak_z) = (x, z);
            }
        }
        _ => episodes.push_back(Episode { start_row: run_start, last_row: row, peak: x, peak_z: z }),
    }
}

/// Exponentially weighted update of mean and variance from the features of a row that are not
/// skipped.
fn learn(baselines: &mut [Option<Baseline>], alpha: f64, scored: &[Option<f64>], skip: &[bool]) {
    for ((b, v), skip) in baselines.iter_mut().zip(scored).zip(skip) {
        let Some(x) = v.filter(|x| x.is_finite() && !skip) else { continue };
        match b {
            Some(b) => {
                let diff = x - b.mean;
                b.mean += alpha * diff;
                b.var = (1.0 - alpha) * (b.var + alpha * diff * diff);
            }
            None => *b = Some(Baseline { mean: x, var: 0.0 }),
        }
    }
}

impl DetectorOptions {
    /// The weight of a new normal row in a baseline, from the half-life.
    pub fn alpha(&self) -> f64 {
        1.0 - 0.5f64.powf(1.0 / self.half_life_rows.max(1.0))
    }

    /// The weight of a new row in a shadow baseline: its half-life is half the recurring
    /// window, so the shadow holds the bursts of that window even when they began after
    /// warm-up.
    pub fn shadow_alpha(&self) -> f64 {
        1.0 - 0.5f64.powf(2.0 / self.recurring_rows.max(2) as f64)
    }
}

/// The node's detector: its rates and its baselines.
#[derive(Debug)]
pub struct Detector {
    options: DetectorOptions,
    rates: Rates,
    pub baselines: Baselines,
}

impl Detector {
    pub fn new(options: DetectorOptions) -> Self {
        Self { options, rates: Rates::default(), baselines: Baselines::new(&FEATURES, "node") }
    }

    /// A node detector whose baselines start from a saved state.
    pub fn with_baselines(options: DetectorOptions, baselines: Baselines) -> Self {
        Self { options, rates: Rates::default(), baselines }
    }

    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// Judges a row and records the verdict in it.
    pub fn judge(&mut self, row: &mut FeatureRow) {
        let values = row.feature_values();
        let scored = self.rates.scored(&FEATURES, &values, row.interval_s, self.options.interval_s);
        let verdict = self.baselines.judge(&self.options, self.options.alpha(), &scored);
        row.set_verdict(verdict);
    }
}

/// Mean and variance of some values, as a baseline.
fn plain(values: &[f64]) -> Baseline {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    Baseline { mean, var: values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n }
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
        Detector::new(DetectorOptions {
            threshold: 4.0,
            warmup_rows,
            half_life_rows: 100.0,
            adapt_rows: 1000,
            agreement: 1,
            interval_s: 1.0,
            recurring_episodes: 0,
            recurring_rows: 1,
        })
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
        let before = d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap().mean;
        for _ in 0..50 {
            let mut r = row(1.0, 0, 1000);
            d.judge(&mut r);
            assert_eq!(r.anomalous_features.as_deref(), Some(&["ebpf_execs".to_owned()][..]));
            assert!((r.anomaly_score.unwrap() - (1000.0 - before) / 5.0).abs() < 1e-9);
        }
        assert_eq!(d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap().mean, before);
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
mod recurring_tests {
    use std::time::SystemTime;

    use super::*;
    use feature_schema::features::index_of;

    fn detector() -> Detector {
        Detector::new(DetectorOptions {
            threshold: 4.0,
            warmup_rows: 10,
            half_life_rows: 1000.0,
            adapt_rows: 1000,
            agreement: 1,
            interval_s: 1.0,
            recurring_episodes: 4,
            recurring_rows: 100,
        })
    }

    fn execs(n: i64) -> FeatureRow {
        let mut r = FeatureRow::empty("n".into(), SystemTime::UNIX_EPOCH);
        for e in agent_common::Event::ALL {
            r.set_event(e, Some(0));
        }
        r.ebpf_execs = Some(n);
        r.interval_s = Some(1.0);
        r
    }

    /// Judges `rows` rows in which execs burst to 200 for 2 rows every `period` rows; returns
    /// whether each burst's first row was flagged.
    fn bursts(d: &mut Detector, rows: usize, period: usize) -> Vec<bool> {
        let mut flagged = Vec::new();
        for k in 0..rows {
            let burst = k % period < 2;
            let mut r = execs(if burst { 200 } else { 1 });
            d.judge(&mut r);
            if k % period == 0 {
                flagged.push(r.is_anomalous());
            }
        }
        flagged
    }

    fn warm(d: &mut Detector) {
        for _ in 0..10 {
            d.judge(&mut execs(1));
        }
    }

    #[test]
    fn a_burst_that_recurs_often_becomes_normal() {
        let mut d = detector();
        warm(&mut d);
        let flagged = bursts(&mut d, 200, 10);
        // The first four episodes alarm; the fourth widens the baseline; later bursts do not.
        assert_eq!(flagged[..4], [true; 4], "{flagged:?}");
        assert!(flagged[4..].iter().all(|f| !f), "{flagged:?}");
        let b = d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap();
        assert!(b.var.sqrt() > 40.0, "the baseline holds the bursts: {b:?}");
    }

    #[test]
    fn bursts_all_through_the_warm_up_are_normal_from_the_start() {
        let mut d = Detector::new(DetectorOptions { warmup_rows: 60, ..*detector().options() });
        // Six bursts during the warm-up (rows 0, 10, ..., 50), then the same every 10 rows.
        let flagged = bursts(&mut d, 260, 10);
        assert!(flagged[6..].iter().all(|f| !f), "{flagged:?}");
        // A burst ten times larger still alarms.
        let mut r = execs(2000);
        d.judge(&mut r);
        assert!(r.is_anomalous(), "{:?}", r.verdict());
    }

    #[test]
    fn a_recurring_bursts_largest_peak_is_held_after_re_anchoring() {
        let mut d = detector();
        warm(&mut d);
        // Bursts of 200 for 2 rows every 10 rows, every third one peaking at 1000 on one row:
        // rarer than the bursts' variance says, so the shadow alone would still flag it.
        let mut flagged_after = Vec::new();
        for k in 0..300 {
            let (phase, burst) = (k % 10, k / 10);
            let x = match phase {
                0 if burst % 3 == 2 => 1000,
                0 | 1 => 200,
                _ => 1,
            };
            let mut r = execs(x);
            d.judge(&mut r);
            if burst >= 6 && phase == 0 {
                flagged_after.push(r.is_anomalous());
            }
        }
        assert!(flagged_after.iter().all(|f| !f), "{flagged_after:?}");
        // A burst well past the largest one seen still alarms.
        let mut r = execs(10_000);
        d.judge(&mut r);
        assert!(r.is_anomalous(), "{:?}", r.verdict());
    }

    #[test]
    fn bursts_rarer_than_the_window_allows_keep_alarming() {
        let mut d = detector();
        warm(&mut d);
        // One burst every 35 rows: never 4 episode starts within 100 rows.
        let flagged = bursts(&mut d, 700, 35);
        assert!(flagged.iter().all(|f| *f), "{flagged:?}");
    }

    /// An attack that flickers: execs at 200 on one row in two, for 12 rows, at a 1 s interval:
    /// six flagged rows, each within 5 s of the last, one episode.
    fn flicker(d: &mut Detector) -> usize {
        let mut alarms = 0;
        for k in 0..12 {
            let mut r = execs(if k % 2 == 0 { 200 } else { 1 });
            d.judge(&mut r);
            alarms += usize::from(r.is_anomalous());
        }
        alarms
    }

    #[test]
    fn an_attack_that_flickers_is_one_episode_and_teaches_nothing() {
        let mut d = detector();
        warm(&mut d);
        let before = d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap();
        assert_eq!(flicker(&mut d), 6);
        // A second and a third flickering attack, 20 rows apart: three episodes, fewer than
        // four, so every flagged row still alarms and the baseline never takes them in.
        for _ in 0..2 {
            for _ in 0..20 {
                d.judge(&mut execs(1));
            }
            assert_eq!(flicker(&mut d), 6);
        }
        let after = d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap();
        assert!((after.mean - before.mean).abs() < 1.0 && after.var <= before.var * 1.5, "{before:?} -> {after:?}");
    }

    #[test]
    fn at_a_long_interval_only_consecutive_rows_are_one_episode() {
        // At 10 s the same pattern is six bursts 20 s apart, as a build's: four episodes in
        // the window, and the bursts become normal.
        let mut d = Detector::new(DetectorOptions { interval_s: 10.0, ..*detector().options() });
        let mut judge = |n| {
            let mut r = execs(n);
            r.interval_s = Some(10.0);
            d.judge(&mut r);
            r.is_anomalous()
        };
        for _ in 0..10 {
            judge(10);
        }
        let alarms = (0..12).map(|k| judge(if k % 2 == 0 { 2000 } else { 10 })).collect::<Vec<_>>();
        assert_eq!(
            alarms,
            [true, false, true, false, true, false, true, false, false, false, false, false],
            "{alarms:?}"
        );
    }

    #[test]
    fn a_continuous_attack_is_one_episode_and_teaches_nothing() {
        let mut d = detector();
        warm(&mut d);
        let before = d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap();
        for k in 0..300 {
            let mut r = execs(200);
            d.judge(&mut r);
            assert!(r.is_anomalous(), "row {k}");
        }
        assert_eq!(d.baselines.baseline(index_of("ebpf_execs").unwrap()).unwrap(), before);
    }
}

#[cfg(test)]
mod adapt_tests {
    use super::*;

    #[test]
    fn a_lasting_shift_becomes_normal_after_adapt_rows() {
        let mut d = Detector::new(DetectorOptions {
            threshold: 4.0,
            warmup_rows: 5,
            half_life_rows: 1000.0,
            adapt_rows: 10,
            agreement: 1,
            interval_s: 1.0,
            recurring_episodes: 0,
            recurring_rows: 1,
        });
        // procs_running, a level scored as it is: a new workload keeps 11 threads runnable.
        let row = |running: i32| {
            let mut r = FeatureRow::empty("n".into(), std::time::SystemTime::UNIX_EPOCH);
            r.procs_running = Some(running);
            r
        };
        for _ in 0..5 {
            d.judge(&mut row(1));
        }
        // Flagged for 10 rows, then the new level is normal.
        for k in 0..10 {
            let mut r = row(11);
            d.judge(&mut r);
            assert!(r.is_anomalous(), "row {k}");
        }
        let mut r = row(11);
        d.judge(&mut r);
        assert!(!r.is_anomalous(), "{:?}", r.verdict());
        // A short burst is still flagged, and does not re-anchor anything.
        let mut r = row(30);
        d.judge(&mut r);
        assert!(r.is_anomalous());
    }
}

#[cfg(test)]
mod scoring_tests {
    use std::time::SystemTime;

    use super::*;

    fn detector(agreement: usize) -> Detector {
        Detector::new(DetectorOptions {
            threshold: 4.0,
            warmup_rows: 5,
            half_life_rows: 1000.0,
            adapt_rows: 1000,
            agreement,
            interval_s: 1.0,
            recurring_episodes: 0,
            recurring_rows: 1,
        })
    }

    fn quiet(forks_total: i64) -> FeatureRow {
        let mut r = FeatureRow::empty("n".into(), SystemTime::UNIX_EPOCH);
        r.interval_s = Some(1.0);
        r.forks_total = Some(forks_total);
        r.cpu_sec_idle = Some(forks_total as f64);
        r.tcp_sock_mem = Some(10);
        r.ebpf_execs = Some(0);
        r.ebpf_forks = Some(0);
        r
    }

    fn warm(d: &mut Detector) -> i64 {
        for k in 0..5 {
            d.judge(&mut quiet(k * 10));
        }
        40
    }

    /// Idle time growing faster than usual (a quieter node) is no alarm; idle time stopping
    /// (every CPU busy) is.
    #[test]
    fn only_the_attack_direction_alarms() {
        let mut d = detector(1);
        let at = warm(&mut d);
        let mut r = quiet(at + 10);
        r.cpu_sec_idle = Some(at as f64 + 10.0 + 5.0);
        d.judge(&mut r);
        assert!(!r.is_anomalous(), "{:?}", r.verdict());
        let mut r = quiet(at + 20);
        r.cpu_sec_idle = Some(at as f64 + 15.0 + 0.5);
        d.judge(&mut r);
        assert_eq!(r.anomalous_features, Some(vec!["cpu_sec_idle".to_owned()]));
    }

    /// One feature a little past the threshold is no alarm with agreement 2; two together are,
    /// and one alone beyond twice the threshold is.
    #[test]
    fn an_alarm_needs_agreement_or_one_strong_feature() {
        let mut d = detector(2);
        warm(&mut d);
        // ebpf_execs: floor 5, threshold 4: 25 execs is z = 5, alone.
        let mut r = quiet(50);
        r.ebpf_execs = Some(25);
        d.judge(&mut r);
        assert_eq!(r.anomalous_features, Some(vec![]), "{:?}", r.verdict());
        assert!((r.anomaly_score.unwrap() - 5.0).abs() < 1e-9);
        // With forks too: two features agree.
        let mut r = quiet(50 + 10 + 25);
        r.ebpf_execs = Some(25);
        r.ebpf_forks = Some(25);
        d.judge(&mut r);
        assert_eq!(r.anomalous_features.as_ref().map(Vec::len), Some(3), "{:?}", r.verdict());
        // Alone beyond 2 x 4: z = 9.
        let mut r = quiet(50 + 10 + 25 + 10);
        r.ebpf_execs = Some(45);
        d.judge(&mut r);
        assert_eq!(r.anomalous_features, Some(vec!["ebpf_execs".to_owned()]));
    }

    /// A late sample (20 s instead of 1 s) carries 20 intervals' worth of forks: scored as a
    /// rate it is normal; the same count in one interval is not.
    #[test]
    fn counts_are_scored_per_nominal_interval() {
        let mut d = detector(1);
        let at = warm(&mut d);
        let mut r = quiet(at + 200);
        r.interval_s = Some(20.0);
        r.cpu_sec_idle = Some(at as f64 + 200.0);
        d.judge(&mut r);
        assert!(!r.is_anomalous(), "{:?}", r.verdict());
        let mut r = quiet(at + 400);
        r.cpu_sec_idle = Some(at as f64 + 210.0);
        d.judge(&mut r);
        assert!(r.anomalous_features.as_ref().unwrap().contains(&"forks_total".to_owned()), "{:?}", r.verdict());
    }

    /// tcp_sock_mem jumps and stays high (the kernel keeps the pages after a flood): flagged
    /// on the jump, not on every row after it.
    #[test]
    fn a_drifting_gauge_alarms_on_its_change_once() {
        let mut d = detector(1);
        let mut at = warm(&mut d);
        for k in 0..5 {
            at += 10;
            let mut r = quiet(at);
            r.tcp_sock_mem = Some(400);
            d.judge(&mut r);
            assert_eq!(r.is_anomalous(), k == 0, "row {k}: {:?}", r.verdict());
        }
    }
}
