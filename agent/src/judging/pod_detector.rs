//! The detector on pod rows: every pod's and host service's row of an interval is judged by the
//! node detector's rules (detector.rs: rates per interval, attack direction, agreement,
//! re-anchoring), against the baselines of its workload, not of the pod instance. Pods come and
//! go; the workload stays, so a new pod of a known workload is judged from its first interval,
//! and only a new workload warms up. Its rates (deltas of its cumulative counters) are the
//! pod's own.
//!
//! A pod that appears while the agent runs (absent from the previous interval's rows) started
//! from zero: its cgroup's CPU time and its network namespace's counters count from their
//! creation, so its first row's deltas are its whole counts, and the 32 MiB a new CronJob pod
//! sends in its first seconds is judged in that first row. The pods of the agent's own first
//! interval were there before it, and their deltas start with their second row.
//!
//! - The "other" row (root cgroup, sessions, what could not be named) is not judged: it is the
//!   node's remainder, which the node row judges.
//! - Replicas of one workload feed one baseline: the warm-up counts the workload's rows, so
//!   three replicas warm it three times faster, and a feature is re-anchored when the
//!   workload's rows have been flagged on it for `adapt_rows` rows in a row.
//! - At most `capacity` workloads are kept; past that the least recently seen are evicted
//!   (and warm up again if they come back).
//! - The node row names the flagged pods and their workloads (most anomalous first).
use std::collections::HashMap;

use feature_schema::{
    pods::{OwnerKind, POD_FEATURES},
    FeatureRow,
};

use crate::{
    judging::detector::{Baseline, Baselines, DetectorOptions, Rates},
    sources::workload::workload_of,
};

/// A pod row the detector flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct FlaggedPod {
    /// `namespace/pod`, or a service's unit.
    pub name: String,
    pub namespace: Option<String>,
    pub workload: String,
    pub score: f64,
    pub features: Vec<String>,
}

#[derive(Debug)]
struct Workload {
    baselines: Baselines,
    last_seen: u64,
}

#[derive(Debug)]
pub struct PodDetector {
    options: DetectorOptions,
    capacity: usize,
    workloads: HashMap<String, Workload>,
    /// Per pod (kind, owner): its previous values, for its own deltas. A pod missing from an
    /// interval is forgotten.
    rates: HashMap<(OwnerKind, String), Rates>,
    interval: u64,
    /// Whether an interval with pod rows was judged before: a pod missing from it is new.
    judged_pods: bool,
    evicted: u64,
}

impl PodDetector {
    pub fn new(options: DetectorOptions, capacity: usize) -> Self {
        Self {
            options,
            capacity: capacity.max(1),
            workloads: HashMap::new(),
            rates: HashMap::new(),
            interval: 0,
            judged_pods: false,
            evicted: 0,
        }
    }

    /// Judges the interval's pod rows, writes each one's verdict and workload, and names the
    /// flagged ones in the node row. Returns the flagged pods, most anomalous first.
    pub fn judge(&mut self, row: &mut FeatureRow) -> Vec<FlaggedPod> {
        self.interval += 1;
        let alpha = self.options.alpha();
        let mut flagged = Vec::new();
        let mut rates = HashMap::with_capacity(row.pods.len());
        for pod in &mut row.pods {
            let workload = pod.workload.clone().unwrap_or_else(|| workload_of(pod));
            pod.workload = Some(workload.clone());
            if pod.kind == OwnerKind::Other {
                continue;
            }
            let key = (pod.kind, pod.owner.clone());
            let judged_pods = self.judged_pods;
            let mut pod_rates = self.rates.remove(&key).unwrap_or_else(|| {
                if judged_pods {
                    Rates::from_zero(&POD_FEATURES)
                } else {
                    Rates::default()
                }
            });
            let scored =
                pod_rates.scored(&POD_FEATURES, &pod.feature_values(), pod.interval_s, self.options.interval_s);
            rates.insert(key, pod_rates);
            let entry = self
                .workloads
                .entry(workload.clone())
                .or_insert_with(|| Workload { baselines: Baselines::new(&POD_FEATURES, &workload), last_seen: 0 });
            entry.last_seen = self.interval;
            pod.set_verdict(entry.baselines.judge(&self.options, alpha, &scored));
            if pod.is_anomalous() {
                flagged.push(FlaggedPod {
                    name: pod.display_name(),
                    namespace: pod.namespace.clone(),
                    workload,
                    score: pod.anomaly_score.unwrap_or(0.0),
                    features: pod.anomalous_features.clone().unwrap_or_default(),
                });
            }
        }
        self.rates = rates;
        self.judged_pods |= !row.pods.is_empty();
        self.evict();
        flagged.sort_by(|a, b| b.score.total_cmp(&a.score));
        if !row.pods.is_empty() {
            row.anomalous_pods = Some(flagged.iter().map(|f| f.name.clone()).collect());
            row.anomalous_workloads = Some(flagged.iter().map(|f| f.workload.clone()).collect());
        }
        flagged
    }

    /// Keeps the `capacity` most recently seen workloads.
    fn evict(&mut self) {
        let excess = self.workloads.len().saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self.workloads.iter().map(|(k, w)| (w.last_seen, k.clone())).collect();
        by_age.sort();
        for (_, name) in by_age.into_iter().take(excess) {
            self.workloads.remove(&name);
        }
        self.evicted += excess as u64;
    }

    /// Workloads evicted so far to keep within the capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Workloads with baselines now.
    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    /// The warm workloads' baselines, most recently seen first (what a state file keeps).
    pub fn saved(&self) -> Vec<(String, Vec<(&'static str, Baseline)>)> {
        let mut warm: Vec<(&String, &Workload)> =
            self.workloads.iter().filter(|(_, w)| w.baselines.is_warm(&self.options)).collect();
        warm.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(b.0)));
        warm.into_iter().map(|(name, w)| (name.clone(), w.baselines.saved())).collect()
    }

    /// Starts from saved workloads' baselines (warm: they judge from their first row), at most
    /// `capacity` of them, in the order given (most recent first).
    pub fn restore(&mut self, saved: Vec<(String, Vec<(String, Baseline)>)>) {
        for (name, baselines) in saved.into_iter().take(self.capacity) {
            let baselines = Baselines::restored(&POD_FEATURES, &name, &self.options, &baselines);
            self.workloads.insert(name, Workload { baselines, last_seen: 0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use agent_common::Event;
    use feature_schema::pods::{PodRow, Res};

    use super::*;

    fn options() -> DetectorOptions {
        DetectorOptions {
            threshold: 4.0,
            warmup_rows: 5,
            half_life_rows: 100.0,
            adapt_rows: 1000,
            agreement: 2,
            interval_s: 1.0,
            recurring_episodes: 0,
            recurring_rows: 1,
        }
    }

    /// A pod row of `pod` (namespace shop) with `execs` execs and `cpu_usec` cumulative CPU.
    fn pod(name: &str, uid: &str, execs: i64, cpu_usec: i64) -> PodRow {
        let mut row = PodRow {
            node: "worker-3".into(),
            ts: SystemTime::UNIX_EPOCH,
            interval_s: Some(1.0),
            kind: OwnerKind::Pod,
            owner: uid.into(),
            namespace: Some("shop".into()),
            pod: Some(name.into()),
            ..PodRow::blank()
        };
        row.events = [Some(0); agent_common::EVENT_COUNT];
        row.events[Event::Exec as usize] = Some(execs);
        row.resources[Res::CpuUsage as usize] = Some(cpu_usec);
        row.resources[Res::PidsCurrent as usize] = Some(3);
        row
    }

    fn interval(pods: Vec<PodRow>) -> FeatureRow {
        let mut row = FeatureRow::empty("worker-3".into(), SystemTime::UNIX_EPOCH);
        row.pods = pods;
        row
    }

    #[test]
    fn the_attacking_pod_alone_is_flagged_and_named() {
        let mut d = PodDetector::new(options(), 16);
        for k in 0..6 {
            let cpu = k * 10_000;
            let mut row = interval(vec![pod("web-6d94bc8694-lz8g2", "u1", 1, cpu), pod("db-0", "u2", 0, cpu)]);
            let flagged = d.judge(&mut row);
            assert!(flagged.is_empty());
            assert_eq!(row.pods[0].workload.as_deref(), Some("shop/web"));
            assert_eq!(row.pods[0].verdict().anomaly_score.is_some(), k >= 5, "row {k}");
        }
        // The web pod execs 40 programs and burns a core: two features agree.
        let mut row =
            interval(vec![pod("web-6d94bc8694-lz8g2", "u1", 40, 60_000 + 1_000_000), pod("db-0", "u2", 0, 60_000)]);
        let flagged = d.judge(&mut row);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].name, "shop/web-6d94bc8694-lz8g2");
        assert_eq!(flagged[0].features, vec!["ebpf_execs".to_owned(), "cpu_usage_usec".to_owned()]);
        assert_eq!(row.anomalous_pods, Some(vec!["shop/web-6d94bc8694-lz8g2".to_owned()]));
        assert_eq!(row.anomalous_workloads, Some(vec!["shop/web".to_owned()]));
        assert!(!row.pods[1].is_anomalous());
    }

    #[test]
    fn a_new_pod_of_a_known_workload_is_judged_from_its_first_interval() {
        let mut d = PodDetector::new(options(), 16);
        for k in 0..6 {
            d.judge(&mut interval(vec![pod("web-6d94bc8694-lz8g2", "u1", 1, k * 10_000)]));
        }
        // A rollout: the old pod is gone, a pod of a new ReplicaSet appears.
        let mut row = interval(vec![pod("web-7c6974c4d8-2pkfm", "u9", 1, 0)]);
        d.judge(&mut row);
        assert_eq!(row.pods[0].anomalous_features, Some(vec![]));
        // A pod of a new workload warms up: no verdict.
        let mut row = interval(vec![pod("scanner", "u7", 1, 0)]);
        d.judge(&mut row);
        assert_eq!(row.pods[0].verdict().anomaly_score, None);
        assert_eq!(d.workloads(), 2);
    }

    /// `pod` sending `bytes` bytes (cumulative, 1,000-byte packets) over its own network.
    fn sending(mut row: PodRow, bytes: i64) -> PodRow {
        row.resources[Res::NetTransmit as usize] = Some(bytes);
        row.resources[Res::TransmitPackets as usize] = Some(bytes / 1000);
        row
    }

    #[test]
    fn a_new_pod_is_judged_on_its_whole_counts_in_its_first_row_and_an_old_one_is_not() {
        const MIB: i64 = 1 << 20;
        let mut d = PodDetector::new(options(), 16);
        // A CronJob's pods send about 100 KB an interval.
        for k in 0..6 {
            d.judge(&mut interval(vec![sending(pod("report-28417920-lz8g2", "u1", 0, 0), k * 100_000)]));
        }
        // A new pod of the CronJob sends 32 MiB before its first row: counted from zero.
        let mut row = interval(vec![
            sending(pod("report-28417920-lz8g2", "u1", 0, 0), 600_000),
            sending(pod("report-28417921-x7bqz", "u2", 0, 0), 32 * MIB),
        ]);
        let flagged = d.judge(&mut row);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].name, "shop/report-28417921-x7bqz");
        assert!(flagged[0].features.contains(&"net_transmit".to_owned()), "{flagged:?}");
        // A new pod whose network is not readable in its first row gets its whole count in the
        // first row that reads it.
        let mut row = interval(vec![
            sending(pod("report-28417920-lz8g2", "u1", 0, 0), 700_000),
            sending(pod("report-28417921-x7bqz", "u2", 0, 0), 32 * MIB + 100_000),
            pod("report-28417922-2pkfm", "u3", 0, 0),
        ]);
        assert!(d.judge(&mut row).is_empty());
        let mut row = interval(vec![
            sending(pod("report-28417920-lz8g2", "u1", 0, 0), 800_000),
            sending(pod("report-28417922-2pkfm", "u3", 0, 0), 32 * MIB),
        ]);
        let flagged = d.judge(&mut row);
        assert_eq!(flagged.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["shop/report-28417922-2pkfm"]);

        // A restarted detector (warm from its state): the pods of its first interval were there
        // before it, so their cumulative counts are not deltas.
        let saved: Vec<(String, Vec<(String, Baseline)>)> =
            d.saved().into_iter().map(|(w, b)| (w, b.into_iter().map(|(c, b)| (c.to_owned(), b)).collect())).collect();
        let mut restarted = PodDetector::new(options(), 16);
        restarted.restore(saved);
        let mut row = interval(vec![sending(pod("report-28417922-2pkfm", "u3", 0, 0), 33 * MIB)]);
        assert!(restarted.judge(&mut row).is_empty(), "an old pod's cumulative count is not a delta");
        let mut row = interval(vec![
            sending(pod("report-28417922-2pkfm", "u3", 0, 0), 33 * MIB + 100_000),
            sending(pod("report-28417923-w9c4d", "u4", 0, 0), 32 * MIB),
        ]);
        let flagged = restarted.judge(&mut row);
        assert_eq!(flagged.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["shop/report-28417923-w9c4d"]);
    }

    #[test]
    fn baselines_stay_bounded_evicting_the_least_recent() {
        let mut d = PodDetector::new(options(), 3);
        for k in 0..5 {
            d.judge(&mut interval(vec![pod(&format!("job{k}-x7bqz"), &format!("u{k}"), 0, 0)]));
        }
        assert_eq!(d.workloads(), 3);
        assert_eq!(d.evicted(), 2);
        assert!(d.workloads.contains_key("shop/job4") && !d.workloads.contains_key("shop/job0"));
    }

    #[test]
    fn saved_baselines_restore_warm() {
        let mut d = PodDetector::new(options(), 16);
        for k in 0..6 {
            d.judge(&mut interval(vec![pod("web-6d94bc8694-lz8g2", "u1", 1, k * 10_000)]));
        }
        let saved: Vec<(String, Vec<(String, Baseline)>)> =
            d.saved().into_iter().map(|(w, b)| (w, b.into_iter().map(|(c, b)| (c.to_owned(), b)).collect())).collect();
        assert_eq!(saved.len(), 1);
        let mut restarted = PodDetector::new(options(), 16);
        restarted.restore(saved);
        let mut row = interval(vec![pod("web-6d94bc8694-lz8g2", "u1", 60, 0)]);
        let flagged = restarted.judge(&mut row);
        assert_eq!(flagged.len(), 1, "a restarted detector judges a known workload at once");
        assert_eq!(flagged[0].features, vec!["ebpf_execs".to_owned()]);
    }
}

/// The pod detector driven by random sequences of intervals (pods of several controller kinds
/// coming and going, replicas, new instances of a workload, service and "other" rows, bursts)
/// and agent restarts through the state file, against a model that keeps, per workload, the
/// rows it has judged and when it was last seen.
#[cfg(test)]
mod model_tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use agent_common::Event;
    use feature_schema::pods::{PodRow, Res};
    use proptest::prelude::*;

    use super::*;
    use crate::judging::detector_state::{decode, encode, DetectorState};

    const WARMUP: usize = 3;
    const CAPACITY: usize = 4;

    /// A row the test can make: (kind, owner, namespace/pod, expected workload).
    #[derive(Debug, Clone)]
    struct Source {
        kind: OwnerKind,
        owner: String,
        pod: Option<(String, String)>,
        workload: String,
    }

    /// Instance `i` of one of several workloads, named as its controller names its pods.
    fn source(which: u8, i: u8) -> Source {
        let pod = |ns: &str, name: String, workload: &str| Source {
            kind: OwnerKind::Pod,
            owner: format!("uid-{which}-{i}"),
            pod: Some((ns.to_owned(), name)),
            workload: workload.to_owned(),
        };
        let suffix = ["lz8g2", "x7bqz", "2pkfm", "w9c4d"][i as usize % 4];
        match which % 8 {
            0 => pod("shop", format!("web-6d94bc8694-{suffix}"), "shop/web"),
            1 => pod("shop", format!("web-7c6974c4d8-{suffix}"), "shop/web"),
            2 => pod("shop", format!("db-{i}"), "shop/db"),
            3 => pod("kube-system", format!("kube-proxy-{suffix}"), "kube-system/kube-proxy"),
            4 => pod("ops", format!("backup-2841792{i}-{suffix}"), "ops/backup"),
            5 => pod("ops", "scanner".to_owned(), "ops/scanner"),
            6 => Source {
                kind: OwnerKind::Service,
                owner: "containerd.service".into(),
                pod: None,
                workload: "containerd.service".into(),
            },
            _ => Source { kind: OwnerKind::Other, owner: "other".into(), pod: None, workload: "other".into() },
        }
    }

    fn row(s: &Source, execs: i64) -> PodRow {
        let mut row = PodRow {
            node: "worker-3".into(),
            ts: SystemTime::UNIX_EPOCH,
            interval_s: Some(1.0),
            kind: s.kind,
            owner: s.owner.clone(),
            namespace: s.pod.as_ref().map(|p| p.0.clone()),
            pod: s.pod.as_ref().map(|p| p.1.clone()),
            ..PodRow::blank()
        };
        row.events = [Some(0); agent_common::EVENT_COUNT];
        row.events[Event::Exec as usize] = Some(execs);
        row.resources[Res::PidsCurrent as usize] = Some(3);
        row
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// One interval: these sources (deduplicated by owner), each with its exec count.
        Interval(Vec<(u8, u8, i64)>),
        /// The agent restarts: it saves its state file and a new one loads it.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => prop::collection::vec((0u8..8, 0u8..3, prop_oneof![3 => Just(1i64), 1 => 0i64..400]), 0..6)
                .prop_map(Step::Interval),
            1 => Just(Step::Restart),
        ]
    }

    fn options() -> DetectorOptions {
        DetectorOptions {
            threshold: 4.0,
            warmup_rows: WARMUP,
            half_life_rows: 50.0,
            adapt_rows: 20,
            agreement: 1,
            interval_s: 1.0,
            recurring_episodes: 3,
            recurring_rows: 30,
        }
    }

    /// The model: per workload, (rows judged, interval last seen).
    #[derive(Default)]
    struct Model {
        workloads: BTreeMap<String, (usize, u64)>,
        interval: u64,
        evicted: u64,
    }

    impl Model {
        fn evict(&mut self) {
            while self.workloads.len() > CAPACITY {
                let oldest = self
                    .workloads
                    .iter()
                    .min_by(|a, b| a.1 .1.cmp(&b.1 .1).then(a.0.cmp(b.0)))
                    .map(|(k, _)| k.clone())
                    .unwrap();
                self.workloads.remove(&oldest);
                self.evicted += 1;
            }
        }

        /// A restart keeps the warm workloads, most recently seen first, at most CAPACITY,
        /// warm and never seen since.
        fn restart(&mut self) {
            let mut warm: Vec<(String, u64)> =
                self.workloads.iter().filter(|(_, (rows, _))| *rows >= WARMUP).map(|(k, v)| (k.clone(), v.1)).collect();
            warm.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            self.workloads = warm.into_iter().take(CAPACITY).map(|(k, _)| (k, (WARMUP, 0))).collect();
            self.interval = 0;
            self.evicted = 0;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
            let mut d = PodDetector::new(options(), CAPACITY);
            let mut model = Model::default();
            for step in steps {
                match step {
                    Step::Restart => {
                        let state = DetectorState {
                            node: None,
                            workloads: d
                                .saved()
                                .into_iter()
                                .map(|(w, b)| (w, b.into_iter().map(|(c, b)| (c.to_owned(), b)).collect()))
                                .collect(),
                        };
                        let now = SystemTime::now();
                        let bytes = encode(&state, "worker-3", 1.0, now);
                        let loaded = decode(&bytes, "worker-3", 1.0, now).unwrap();
                        d = PodDetector::new(options(), CAPACITY);
                        d.restore(loaded.workloads);
                        model.restart();
                    }
                    Step::Interval(picks) => {
                        let mut sources: Vec<(Source, i64)> = Vec::new();
                        for (which, i, execs) in picks {
                            let s = source(which, i);
                            if !sources.iter().any(|(t, _)| t.owner == s.owner) {
                                sources.push((s, execs));
                            }
                        }
                        let mut interval = FeatureRow::empty("worker-3".into(), SystemTime::UNIX_EPOCH);
                        interval.pods = sources.iter().map(|(s, e)| row(s, *e)).collect();
                        let flagged = d.judge(&mut interval);
                        model.interval += 1;
                        for ((s, _), pod) in sources.iter().zip(&interval.pods) {
                            prop_assert_eq!(pod.workload.as_deref(), Some(s.workload.as_str()));
                            if s.kind == OwnerKind::Other {
                                prop_assert_eq!(pod.verdict().anomaly_score, None, "the other row is not judged");
                                continue;
                            }
                            let entry = model.workloads.entry(s.workload.clone()).or_insert((0, 0));
                            entry.0 += 1;
                            entry.1 = model.interval;
                            let warm = entry.0 > WARMUP;
                            prop_assert_eq!(pod.verdict().anomaly_score.is_some(), warm, "{} after {} rows", s.workload, entry.0);
                        }
                        model.evict();
                        prop_assert_eq!(d.workloads(), model.workloads.len());
                        prop_assert_eq!(d.evicted(), model.evicted);
                        let known: Vec<&String> = d.workloads.keys().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                        let expected: Vec<&String> = model.workloads.keys().collect();
                        prop_assert_eq!(known, expected);
                        // The node row names exactly the flagged pods, most anomalous first.
                        let anomalous: Vec<String> =
                            interval.pods.iter().filter(|p| p.is_anomalous()).map(|p| p.display_name()).collect();
                        let named = interval.anomalous_pods.clone().unwrap_or_default();
                        prop_assert_eq!(named.len(), anomalous.len());
                        prop_assert!(anomalous.iter().all(|a| named.contains(a)));
                        prop_assert!(flagged.windows(2).all(|w| w[0].score >= w[1].score));
                        prop_assert_eq!(interval.anomalous_pods.is_some(), !interval.pods.is_empty());
                    }
                }
            }
        }
    }
}
