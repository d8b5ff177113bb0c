//! Self-monitoring: the agent's own counters and the HTTP listener (`--listen`) that serves
//! them. `/metrics` is the Prometheus text format (version 0.0.4), `/healthz` says the process
//! samples on schedule and its eBPF programs answer, `/readyz` says rows reach the database.
//! The exposition is encoded by prometheus-client (label values escaped, OpenMetrics text) and
//! served by hyper (GET and HEAD, one request per connection, bounded request size, time and
//! connections): the listener sits on a privileged host-network port, so no parser of ours.
use std::{
    convert::Infallible,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, histogram::Histogram, MetricType},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info};

/// An f64 in an atomic.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
    pub fn add(&self, v: f64) {
        let _ = self.0.fetch_update(Relaxed, Relaxed, |b| Some((f64::from_bits(b) + v).to_bits()));
    }
}

/// Declares [`Metrics`], the state /metrics reports, and its exposition from one list: each
/// metric's field (the atomic its emitter updates), name, help, type and labels live together,
/// and the encoder and [`Metrics::catalog`] (the documented list, checked against
/// docs/monitoring.md by a test) are generated from it. Sections:
/// - `counters`, `gauges` (u64 shown as an integer), `float_gauges` (f64), `flags` (a bool shown
///   as 0 or 1): one field each;
/// - `families`: a counter with one label whose series are fixed fields (a label value may sum
///   several: `"value" => [field, field]`);
/// - `computed`: metrics made at the scrape from other state, by a function of [`Metrics`]
///   returning (label values, value) series;
/// - `state(interval)`: fields that are not metrics themselves (read by the computed ones,
///   /healthz and /readyz), with their initial values, which may use `new`'s interval argument.
macro_rules! metrics {
    (
        counters { $( $(#[doc = $cdoc:literal])* $c:ident = $cname:literal, $chelp:literal; )* }
        gauges { $( $(#[doc = $gdoc:literal])* $g:ident = $gname:literal, $ghelp:literal; )* }
        float_gauges { $( $(#[doc = $fdoc:literal])* $f:ident = $fname:literal, $fhelp:literal; )* }
        flags { $( $(#[doc = $bdoc:literal])* $b:ident = $bname:literal, $bhelp:literal; )* }
        families { $( $lname:literal, $lhelp:literal, $label:literal {
            $( $value:literal => [$($lf:ident),+] ),* $(,)?
        }; )* }
        computed { $( $xname:literal, $xhelp:literal, $xtype:ident, [$($xlabel:literal),*], $xfn:path; )* }
        state($interval:ident) { $( $(#[doc = $sdoc:literal])* $s:ident: $sty:ty = $sinit:expr; )* }
    ) => {
        /// Everything /metrics reports; shared by the sampler, the writer and the server.
        #[derive(Debug)]
        pub struct Metrics {
            $( $(#[doc = $cdoc])* pub $c: AtomicU64, )*
            $( $(#[doc = $gdoc])* pub $g: AtomicU64, )*
            $( $(#[doc = $fdoc])* pub $f: AtomicF64, )*
            $( $(#[doc = $bdoc])* pub $b: AtomicBool, )*
            $( $( $( pub $lf: AtomicU64, )+ )* )*
            $( $(#[doc = $sdoc])* pub $s: $sty, )*
        }

        impl Metrics {
            pub fn new($interval: f64) -> Arc<Self> {
                Arc::new(Metrics {
                    $( $c: AtomicU64::default(), )*
                    $( $g: AtomicU64::default(), )*
                    $( $f: AtomicF64::default(), )*
                    $( $b: AtomicBool::default(), )*
                    $( $( $( $lf: AtomicU64::default(), )+ )* )*
                    $( $s: $sinit, )*
                })
            }

            /// Every metric /metrics shows: (name, type, label names, help), in exposition order.
            pub fn catalog() -> Vec<(&'static str, MetricType, Vec<&'static str>, &'static str)> {
                vec![
                    $( ($cname, MetricType::Counter, vec![], $chelp), )*
                    $( ($gname, MetricType::Gauge, vec![], $ghelp), )*
                    $( ($fname, MetricType::Gauge, vec![], $fhelp), )*
                    $( ($bname, MetricType::Gauge, vec![], $bhelp), )*
                    $( ($lname, MetricType::Counter, vec![$label], $lhelp), )*
                    $( ($xname, MetricType::$xtype, vec![$($xlabel),*], $xhelp), )*
                ]
            }

            /// The exposition of every declared metric.
            fn encode_declared(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
                $( single(enc, $cname, $chelp, ConstCounter::new(self.$c.load(Relaxed)))?; )*
                $( single(enc, $gname, $ghelp, ConstGauge::new(self.$g.load(Relaxed) as i64))?; )*
                $( single(enc, $fname, $fhelp, ConstGauge::new(self.$f.get()))?; )*
                $( single(enc, $bname, $bhelp, ConstGauge::new(i64::from(self.$b.load(Relaxed))))?; )*
                $(
                    let mut family = enc.encode_descriptor($lname, $lhelp, None, MetricType::Counter)?;
                    $(
                        let n = 0u64 $( .wrapping_add(self.$lf.load(Relaxed)) )+;
                        ConstCounter::new(n).encode(family.encode_family(&[($label, $value)])?)?;
                    )*
                )*
                $(
                    let labels: &[&str] = &[$($xlabel),*];
                    let mut family = enc.encode_descriptor($xname, $xhelp, None, MetricType::$xtype)?;
                    let series = $xfn(self);
                    if labels.is_empty() {
                        if let Some((_, v)) = series.into_iter().next() {
                            v.encode(family)?;
                        }
                    } else {
                        for (values, v) in series {
                            let pairs: Vec<(&str, &str)> =
                                labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
                            v.encode(family.encode_family(&pairs)?)?;
                        }
                    }
                )*
                Ok(())
            }
        }
    };
}

/// One series' value of a computed metric.
pub enum Value<'a> {
    /// A counter's count.
    Count(u64),
    Int(i64),
    Float(f64),
    Histogram(&'a Histogram),
}

impl Value<'_> {
    fn encode(self, m: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        match self {
            Value::Count(n) => ConstCounter::new(n).encode(m),
            Value::Int(n) => ConstGauge::new(n).encode(m),
            Value::Float(x) => ConstGauge::new(x).encode(m),
            Value::Histogram(h) => h.encode(m),
        }
    }
}

/// A computed metric's series: its label values, in its labels' order, and its value (one
/// series, without label values, for a metric without labels).
type Series<'a> = Vec<(Vec<String>, Value<'a>)>;

metrics! {
    counters {
        rows_written = "feature_agent_rows_written", "Rows the database acknowledged.";
        rows_anomalous = "feature_agent_rows_anomalous", "Rows the streaming detector judged anomalous.";
        pod_baselines_evicted = "feature_agent_pod_baselines_evicted", "Workloads whose baselines were dropped to keep within --pod-baselines (least recently seen first).";
        /// Detector state saves that failed (the file keeps its previous state).
        detector_state_save_failures = "feature_agent_detector_state_save_failures", "Saves of the detector state file that failed (it keeps its previous state).";
        /// Rows whose (node, ts) the database already held: not written.
        rows_duplicate = "feature_agent_rows_duplicate", "Rows not written because the database already held a row of this node at their ts: a clock stepped back across a restart, a replay after a crash between commit and ack, or another agent with this node name.";
        /// Database calls cut off by their deadline (the session was dropped).
        database_timeouts = "feature_agent_database_timeouts", "Database calls (connect, write, migration, preparation) cut off by their deadline; the session was dropped and its rows kept.";
        /// Connections refused because another agent writes under this node name.
        node_name_conflicts = "feature_agent_node_name_conflicts", "Connections that found another agent writing under this node name.";
        /// Sessions of this agent, cut off by a deadline earlier, that a new session ended.
        abandoned_sessions_ended = "feature_agent_abandoned_sessions_ended", "Database sessions of this agent, cut off by a deadline earlier (a hung or black-holed server), that its next session ended.";
        /// Per-pod rows written (with their node rows: a dropped node row drops its pod rows).
        pod_rows_written = "feature_agent_pod_rows_written", "Per-pod rows written to pod_features, in the same transaction as their node row (a node row counted in feature_agent_rows_dropped took its pod rows with it).";
        /// Events counted under "other" because the per-cgroup map was full.
        cgroup_overflow_events = "feature_agent_cgroup_overflow_events", "eBPF events counted in the other row because the per-cgroup map was full (raise --cgroup-map-entries).";
        /// Re-checks that found a namespace's connection gauges off its table (and corrected them).
        tcp_gauge_drifts = "feature_agent_tcp_gauge_drifts", "Re-checks that found a namespace's connection gauges off its kernel table, and corrected them (each is logged).";
        /// Scheduled samples not taken because the agent was late for them.
        samples_skipped = "feature_agent_samples_skipped", "Scheduled samples not taken because the agent was late for them (the row of that interval does not exist).";
        /// Times the spool's ack file was found damaged (its rows were replayed from the start).
        spool_ack_damaged = "feature_agent_spool_ack_damaged", "Times the spool's ack file was found damaged or missing; its rows were replayed from the oldest (duplicates are skipped by the database).";
    }
    gauges {
        pod_baselines = "feature_agent_pod_baselines", "Workloads the pod detector keeps baselines for.";
        /// Rows in the memory queue now.
        rows_queued = "feature_agent_rows_queued", "Rows waiting in memory for the database.";
        /// Rows in the on-disk spool now (not yet in the database).
        rows_spooled = "feature_agent_rows_spooled", "Rows waiting in the on-disk spool for the database.";
        spool_bytes = "feature_agent_spool_bytes", "Bytes of spool segments on disk.";
        /// --spool-max-bytes (0 without a spool).
        spool_max_bytes = "feature_agent_spool_max_bytes", "The spool's size bound (--spool-max-bytes; 0 without a spool): beyond it the oldest rows are dropped.";
        /// Pod rows in the last interval.
        pod_rows_last = "feature_agent_pod_rows_last", "Per-pod rows in the last interval (pods, services and other).";
        /// Network namespaces whose TCP connection gauges the agent tracks.
        network_namespaces = "feature_agent_network_namespaces", "Network namespaces whose TCP connection gauges (est_conn, lis_conn) the agent tracks, the host's included.";
        programs_attached = "feature_agent_ebpf_programs_attached", "eBPF programs attached.";
        programs_failed = "feature_agent_ebpf_programs_failed", "eBPF programs that could not be attached.";
    }
    float_gauges {
        last_write_unix = "feature_agent_last_write_timestamp_seconds", "Unix time of the last successful database write (0: none yet).";
        last_collection_seconds = "feature_agent_last_collection_duration_seconds", "Time the last row took to collect.";
    }
    flags {
        database_up = "feature_agent_database_up", "1 if the last database operation succeeded.";
        /// Another agent holds this node name's writer lease: rows wait in the spool.
        node_name_in_use = "feature_agent_node_name_in_use", "1 while another agent holds this node name's writer lease (rows wait in the spool).";
    }
    families {
        "feature_agent_rows_dropped", "Rows sampled that will never reach the database: the memory queue or the spool was full (oldest dropped), spool records were damaged, the database refused the row's content, at shutdown neither the database nor the spool took them, or the clock stepped back over an interval already stamped.", "reason" {
            // The writer's channel full (the sampler could not hand a row over) is a full queue.
            "queue_full" => [rows_dropped_queue_full, rows_dropped_channel_full],
            "spool_full" => [rows_dropped_spool_full],
            "corrupt" => [rows_dropped_corrupt],
            "rejected" => [rows_rejected],
            "shutdown" => [rows_dropped_shutdown],
            "clock_step" => [rows_dropped_clock_step],
        };
        "feature_agent_clock_steps", "Steps of the wall clock against the monotonic clock between two samples (more than 0.5 s), by direction.", "direction" {
            "forward" => [clock_steps_forward],
            "backward" => [clock_steps_backward],
        };
        "feature_agent_spool_segments_damaged", "Spool segment files the agent could not read (missing, a directory, unreadable: skipped, their rows counted as corrupt) or delete (forgotten, left on disk).", "kind" {
            "unreadable" => [spool_segments_unreadable],
            "unremovable" => [spool_segments_unremovable],
        };
    }
    computed {
        "feature_agent_build_info", "Version of the running agent.", Gauge, ["version"], Metrics::build_info;
        "feature_agent_rows_sampled", "Rows sampled.", Counter, [], Metrics::rows_sampled;
        "feature_agent_pod_rows_anomalous", "Pod and service rows the detector judged anomalous, by the pod's namespace ((host) for services; namespaces past the first 64 under (other namespaces)).", Counter, ["namespace"], Metrics::pod_alarm_series;
        "feature_agent_oldest_unwritten_row_age_seconds", "Seconds since the oldest row not yet in the database was sampled (0: none waits).", Gauge, [], Metrics::oldest_unwritten_series;
        "feature_agent_ebpf_map_full", "Inserts an eBPF map refused because it was full, by map; each lost something: CGROUP_EVENT_COUNTS (a new cgroup's events went to the other row), CGROUP_NAMES (a new cgroup's path was not recorded: if it is gone before the next walk, its counts go to the other row), NETNS_TCP_BALANCE (a new namespace's sockets were counted as unresolved: its pod's est_conn and lis_conn read low until a re-check against its table corrects them; the node's stay exact), SOCKET_CALLS_IN_FLIGHT (a socket created through the syscall hook was not counted).", Counter, ["map"], Metrics::maps_full_series;
        "feature_agent_ebpf_program_info", "One series per attached eBPF program: its hook type (raw_tp, tp_btf, tracepoint, fexit, kprobe), the kernel event or function, and the columns it feeds (space-separated).", Gauge, ["program", "hook", "target", "columns"], Metrics::program_info_series;
        "feature_agent_ebpf_recursion_misses", "Events an eBPF program was not run for because it was already running on that CPU (a softirq interrupting it): those events are missing from its counts.", Counter, ["program"], Metrics::recursion_miss_series;
        "feature_agent_ebpf_program_runs", "Times each eBPF program ran (counted by the kernel only while kernel.bpf_stats_enabled is 1).", Counter, ["program"], Metrics::program_run_series;
        "feature_agent_ready", "1 when /readyz answers 200: rows reach the database.", Gauge, [], Metrics::ready_series;
        "feature_agent_collection_duration_seconds", "Time to take one row (procfs, eBPF maps, detector).", Histogram, [], Metrics::collection_series;
    }
    state(interval_s) {
        /// Time to take one row: 0.1 ms to about 3 s (the first, with the BTF parse, takes more).
        collection_seconds: Histogram = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16));
        /// Rows sampled (each sample is one collection).
        collection_count: AtomicU64 = AtomicU64::default();
        /// Unix time of the last sample, for /healthz's staleness check.
        last_sample_unix: AtomicF64 = AtomicF64::default();
        /// False once an eBPF map read fails (the programs no longer answer).
        programs_ok: AtomicBool = AtomicBool::new(true);
        /// Each loaded eBPF program's run count and recursion misses, refreshed by the sampler.
        program_stats: std::sync::Mutex<Vec<crate::sources::ebpf::ProgramStats>> = std::sync::Mutex::new(Vec::new());
        /// The attached eBPF programs, set once at start.
        program_info: std::sync::OnceLock<Vec<crate::sources::ebpf::ProgramInfo>> = std::sync::OnceLock::new();
        /// When the programs' kernel statistics were last read (a file per program: at most
        /// every [`PROGRAM_STATS_EVERY`]).
        program_stats_read: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
        /// Inserts each eBPF map that can fill refused because it was full, by map name.
        ebpf_maps_full: std::sync::Mutex<Vec<(&'static str, u64)>> = std::sync::Mutex::new(Vec::new());
        /// Pod rows the detector judged anomalous, per namespace (bounded).
        pod_alarms: std::sync::Mutex<PodAlarms> = std::sync::Mutex::new(PodAlarms::default());
        /// Sampled time (Unix seconds) of the oldest row not yet in the database; 0: none.
        oldest_unwritten_unix: AtomicF64 = AtomicF64::default();
        /// The sampling interval, for /healthz's staleness check.
        interval_s: f64 = interval_s;
    }
}

impl Metrics {
    fn build_info(&self) -> Series<'_> {
        vec![(vec![env!("CARGO_PKG_VERSION").to_owned()], Value::Int(1))]
    }

    fn rows_sampled(&self) -> Series<'_> {
        vec![(vec![], Value::Count(self.collection_count.load(Relaxed)))]
    }

    fn pod_alarm_series(&self) -> Series<'_> {
        let series = self.pod_alarms.lock().map(|a| a.series()).unwrap_or_default();
        series.into_iter().map(|(ns, n)| (vec![ns], Value::Count(n))).collect()
    }

    fn oldest_unwritten_series(&self) -> Series<'_> {
        vec![(vec![], Value::Float(self.oldest_unwritten_age()))]
    }

    fn maps_full_series(&self) -> Series<'_> {
        let maps = self.ebpf_maps_full.lock().map(|m| m.clone()).unwrap_or_default();
        maps.into_iter().map(|(map, n)| (vec![map.to_owned()], Value::Count(n))).collect()
    }

    fn program_info_series(&self) -> Series<'_> {
        let info = self.program_info.get().into_iter().flatten();
        info.map(|p| {
            let labels = vec![p.program.to_owned(), p.hook.to_owned(), p.target.to_owned(), p.columns.join(" ")];
            (labels, Value::Int(1))
        })
        .collect()
    }

    fn recursion_miss_series(&self) -> Series<'_> {
        let stats = self.program_stats.lock().map(|s| s.clone()).unwrap_or_default();
        stats.into_iter().map(|p| (vec![p.program], Value::Count(p.recursion_misses))).collect()
    }

    fn program_run_series(&self) -> Series<'_> {
        let stats = self.program_stats.lock().map(|s| s.clone()).unwrap_or_default();
        stats.into_iter().map(|p| (vec![p.program], Value::Count(p.run_count))).collect()
    }

    fn ready_series(&self) -> Series<'_> {
        vec![(vec![], Value::Int(i64::from(self.ready().is_ok())))]
    }

    fn collection_series(&self) -> Series<'_> {
        vec![(vec![], Value::Histogram(&self.collection_seconds))]
    }
}

/// Most namespaces /metrics names in the pod alarm counter; alarms of further namespaces are
/// counted under [`PodAlarms::OVERFLOW`], so a cluster with thousands of namespaces (or a pod
/// directory with hostile names) cannot grow the exposition without bound.
pub const POD_ALARM_NAMESPACES: usize = 64;

/// Pod alarms per namespace.
#[derive(Debug, Default)]
pub struct PodAlarms {
    by_namespace: std::collections::BTreeMap<String, u64>,
    overflow: u64,
}

impl PodAlarms {
    /// The label of host services' alarms (they have no namespace).
    pub const HOST: &'static str = "(host)";
    /// The label of alarms in namespaces past [`POD_ALARM_NAMESPACES`].
    pub const OVERFLOW: &'static str = "(other namespaces)";

    pub fn count(&mut self, namespace: Option<&str>) {
        let ns = namespace.unwrap_or(Self::HOST);
        if let Some(n) = self.by_namespace.get_mut(ns) {
            *n += 1;
        } else if self.by_namespace.len() < POD_ALARM_NAMESPACES {
            self.by_namespace.insert(ns.to_owned(), 1);
        } else {
            self.overflow += 1;
        }
    }

    /// (namespace label, alarms), the overflow last when there is one.
    pub fn series(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self.by_namespace.iter().map(|(k, v)| (k.clone(), *v)).collect();
        if self.overflow > 0 {
            out.push((Self::OVERFLOW.to_owned(), self.overflow));
        }
        out
    }
}

pub fn now_unix() -> f64 {
    unix_seconds(SystemTime::now())
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// How often the eBPF programs' run counts and recursion misses are read for /metrics.
const PROGRAM_STATS_EVERY: Duration = Duration::from_secs(15);

impl Metrics {
    /// What the sampler and the row say after a sample: the eBPF programs' health and
    /// statistics, the maps that filled, the namespaces tracked, the row's verdict and pod rows.
    pub fn record_sample(&self, sampler: &crate::sources::sampler::Sampler, row: &feature_schema::FeatureRow) {
        self.programs_ok.store(sampler.ebpf_ok(), Relaxed);
        if let Ok(mut m) = self.ebpf_maps_full.lock() {
            *m = sampler.maps_full().to_vec();
        }
        if let Ok(mut read) = self.program_stats_read.lock() {
            if read.is_none_or(|t| t.elapsed() >= PROGRAM_STATS_EVERY) {
                *read = Some(std::time::Instant::now());
                if let Ok(mut s) = self.program_stats.lock() {
                    *s = sampler.program_stats();
                }
            }
        }
        if row.is_anomalous() {
            self.rows_anomalous.fetch_add(1, Relaxed);
        }
        self.network_namespaces.store(sampler.namespaces() as u64, Relaxed);
        self.tcp_gauge_drifts.store(sampler.tcp_gauge_drifts(), Relaxed);
        if sampler.pods_on() {
            self.pod_rows_last.store(row.pods.len() as u64, Relaxed);
            self.cgroup_overflow_events.store(sampler.cgroup_overflow_events(), Relaxed);
        }
    }

    /// Why rows the writer held at the stop were not written, as far as these counters tell.
    pub fn why_unwritten(&self) -> &'static str {
        if self.node_name_in_use.load(Relaxed) {
            "another agent holds this node name's writer lease"
        } else if !self.database_up.load(Relaxed) {
            "the database was unreachable or refused the session: see the log above"
        } else {
            "the database was still taking the backlog when --shutdown-timeout ended the drain"
        }
    }

    pub fn observe_collection(&self, seconds: f64) {
        self.collection_seconds.observe(seconds);
        self.collection_count.fetch_add(1, Relaxed);
        self.last_collection_seconds.set(seconds);
        self.last_sample_unix.set(now_unix());
    }

    /// The exposition, in the OpenMetrics text format (which Prometheus scrapes), encoded by
    /// prometheus-client from the atomics at the moment of the scrape.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self.clone())));
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Seconds since the oldest row not yet in the database was sampled; 0 when none waits.
    pub fn oldest_unwritten_age(&self) -> f64 {
        let oldest = self.oldest_unwritten_unix.get();
        if oldest > 0.0 {
            (now_unix() - oldest).max(0.0)
        } else {
            0.0
        }
    }

    /// How old the oldest unwritten row may grow before the agent says it is not ready: a
    /// few intervals (three, plus 10 s for a write's own deadline).
    pub fn readiness_limit(&self) -> f64 {
        3.0 * self.interval_s + 10.0
    }

    /// Ready: rows reach the database. Not while it is unreachable, while another agent holds
    /// this node name, or while a row has waited longer than [`Metrics::readiness_limit`]
    /// (a database that takes connections but does not finish writes).
    pub fn ready(&self) -> Result<(), String> {
        if self.node_name_in_use.load(Relaxed) {
            return Err("another agent is writing rows under this node name".into());
        }
        if !self.database_up.load(Relaxed) {
            return Err("database not reachable".into());
        }
        let age = self.oldest_unwritten_age();
        let limit = self.readiness_limit();
        if age > limit {
            return Err(format!("the oldest unwritten row was sampled {age:.0} s ago (limit {limit:.0} s)"));
        }
        Ok(())
    }

    /// Healthy: sampling on schedule (a row within three intervals, or still starting) and the
    /// eBPF programs (if any) answering.
    pub fn healthy(&self, started: f64) -> Result<(), String> {
        let last = self.last_sample_unix.get();
        let limit = 3.0 * self.interval_s + 5.0;
        let since = now_unix() - if last > 0.0 { last } else { started };
        if since > limit {
            return Err(format!("no row sampled for {since:.0} s (limit {limit:.0} s)"));
        }
        if !self.programs_ok.load(Relaxed) {
            return Err("the eBPF programs' maps can no longer be read".into());
        }
        Ok(())
    }
}

/// Binds the metrics listener (unless "off") and serves it in the background.
pub async fn start_listener(listen: &str, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    if listen == "off" {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen there (in use, or not an ADDRESS:PORT?)"))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(serve(listener, metrics.clone()));
    Ok(())
}

/// Connections served at once (each holds at most an 8 KiB buffer); beyond it new connections
/// are closed at once, so idle clients cannot grow the agent's memory or its accept queue.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a whole connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read (hyper's smallest buffer).
const MAX_REQUEST_BYTES: usize = 8192;

/// Serves /metrics, /healthz and /readyz until the task is dropped: HTTP/1.1 by hyper, one
/// request per connection, at most [`MAX_CONNECTIONS`] at once (more are closed unanswered), a
/// request head of at most [`MAX_REQUEST_BYTES`] within [`HEADER_TIMEOUT`], a connection within
/// [`CONNECTION_TIMEOUT`].
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let started = now_unix();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("metrics listener at its connection limit; closing a new connection");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&metrics, req.method(), req.uri().path(), started);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => debug!(error = %e, "metrics connection failed"),
                Err(_) => debug!("metrics connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// The answer to one request. HEAD gets the same head without the body (hyper drops it).
fn respond(metrics: &Arc<Metrics>, method: &Method, path: &str, started: f64) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
        }
        (&Method::GET | &Method::HEAD, "/healthz") => match metrics.healthy(started) {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
        },
        (&Method::GET | &Method::HEAD, "/readyz") => match metrics.ready() {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
        },
        (&Method::GET | &Method::HEAD, _) => {
            (StatusCode::NOT_FOUND, TEXT, "not found: try /metrics, /healthz, /readyz\n".to_owned())
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What /metrics shows, read from [`Metrics`] at each scrape.
#[derive(Debug)]
struct Exposition(Arc<Metrics>);

/// One metric without labels.
fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.0.encode_declared(&mut enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_values() {
        let m = Metrics::new(10.0);
        m.rows_written.store(7, Relaxed);
        m.rows_dropped_spool_full.store(2, Relaxed);
        m.observe_collection(0.25);
        let text = m.render();
        assert!(
            text.contains("# TYPE feature_agent_rows_written counter\nfeature_agent_rows_written_total 7\n"),
            "{text}"
        );
        assert!(text.contains("feature_agent_rows_dropped_total{reason=\"spool_full\"} 2\n"), "{text}");
        assert!(text.contains("feature_agent_collection_duration_seconds_sum 0.25\n"), "{text}");
        assert!(text.contains("feature_agent_collection_duration_seconds_count 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The exposition shows every declared metric (unlabelled ones without a `{}`).
        for (name, ..) in Metrics::catalog() {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing:\n{text}");
        }
        assert!(!text.contains("{}"), "{text}");
        assert!(m.healthy(now_unix()).is_ok());
        m.programs_ok.store(false, Relaxed);
        assert!(m.healthy(now_unix()).unwrap_err().contains("eBPF"));
    }
}
