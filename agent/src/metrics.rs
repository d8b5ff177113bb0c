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
use tracing::debug;

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

/// Everything /metrics reports; shared by the sampler, the writer and the server.
#[derive(Debug)]
pub struct Metrics {
    pub rows_written: AtomicU64,
    pub rows_anomalous: AtomicU64,
    /// Rows in the memory queue now.
    pub rows_queued: AtomicU64,
    /// Rows in the on-disk spool now (not yet in the database).
    pub rows_spooled: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// --spool-max-bytes (0 without a spool).
    pub spool_max_bytes: AtomicU64,
    pub rows_dropped_queue_full: AtomicU64,
    /// Rows the sampler could not hand to the writer (its channel was full).
    pub rows_dropped_channel_full: AtomicU64,
    pub rows_dropped_spool_full: AtomicU64,
    pub rows_rejected: AtomicU64,
    /// Rows lost to damaged spool records.
    pub rows_dropped_corrupt: AtomicU64,
    /// Rows neither the database nor the spool took when the agent stopped.
    pub rows_dropped_shutdown: AtomicU64,
    /// Times the spool's ack file was found damaged (its rows were replayed from the start).
    pub spool_ack_damaged: AtomicU64,
    /// Spool segments that could not be read (skipped) or deleted (forgotten).
    pub spool_segments_unreadable: AtomicU64,
    pub spool_segments_unremovable: AtomicU64,
    /// Scheduled samples not taken because the agent was late for them.
    pub samples_skipped: AtomicU64,
    pub last_write_unix: AtomicF64,
    pub last_sample_unix: AtomicF64,
    pub programs_attached: AtomicU64,
    pub programs_failed: AtomicU64,
    /// Time to take one row.
    pub collection_seconds: Histogram,
    pub collection_count: AtomicU64,
    pub last_collection_seconds: AtomicF64,
    pub database_up: AtomicBool,
    /// False once an eBPF map read fails (the programs no longer answer).
    pub programs_ok: AtomicBool,
    /// Each loaded eBPF program's run count and recursion misses, refreshed by the sampler.
    pub program_stats: std::sync::Mutex<Vec<crate::ebpf::ProgramStats>>,
    /// The attached eBPF programs, set once at start.
    pub program_info: std::sync::OnceLock<Vec<crate::ebpf::ProgramInfo>>,
    /// The sampling interval, for /healthz's staleness check.
    pub interval_s: f64,
    /// Per-pod rows written (with their node rows: a dropped node row drops its pod rows).
    pub pod_rows_written: AtomicU64,
    /// Pod rows in the last interval.
    pub pod_rows_last: AtomicU64,
    /// Events counted under "other" because the per-cgroup map was full.
    pub cgroup_overflow_events: AtomicU64,
    /// Inserts each eBPF map that can fill refused because it was full, by map name.
    pub ebpf_maps_full: std::sync::Mutex<Vec<(&'static str, u64)>>,
    /// Network namespaces whose TCP connection gauges the agent tracks.
    pub network_namespaces: AtomicU64,
    /// Re-checks that found a namespace's connection gauges off its table (and corrected them).
    pub tcp_gauge_drifts: AtomicU64,
    /// Rows whose (node, ts) the database already held: not written.
    pub rows_duplicate: AtomicU64,
    /// Rows sampled at a boundary this process had already stamped (the wall clock stepped
    /// back): not written, so no ts holds two rows.
    pub rows_dropped_clock_step: AtomicU64,
    /// Wall-clock steps seen between two samples, forward and back.
    pub clock_steps_forward: AtomicU64,
    pub clock_steps_backward: AtomicU64,
    /// Database calls cut off by their deadline (the session was dropped).
    pub database_timeouts: AtomicU64,
    /// Another agent holds this node name's writer lease: rows wait in the spool.
    pub node_name_in_use: AtomicBool,
    /// Connections refused because another agent writes under this node name.
    pub node_name_conflicts: AtomicU64,
    /// Sessions of this agent, cut off by a deadline earlier, that a new session ended.
    pub abandoned_sessions_ended: AtomicU64,
    /// Sampled time (Unix seconds) of the oldest row not yet in the database; 0: none.
    pub oldest_unwritten_unix: AtomicF64,
    /// Pod rows the detector judged anomalous, per namespace (bounded).
    pub pod_alarms: std::sync::Mutex<PodAlarms>,
    /// Workloads with baselines now, and workloads dropped to keep within --pod-baselines.
    pub pod_baselines: AtomicU64,
    pub pod_baselines_evicted: AtomicU64,
    /// Detector state saves that failed (the file keeps its previous state).
    pub detector_state_save_failures: AtomicU64,
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

impl Metrics {
    pub fn new(interval_s: f64) -> Arc<Self> {
        Arc::new(Metrics {
            rows_written: AtomicU64::default(),
            rows_anomalous: AtomicU64::default(),
            rows_queued: AtomicU64::default(),
            rows_spooled: AtomicU64::default(),
            spool_bytes: AtomicU64::default(),
            spool_max_bytes: AtomicU64::default(),
            rows_dropped_queue_full: AtomicU64::default(),
            rows_dropped_channel_full: AtomicU64::default(),
            rows_dropped_spool_full: AtomicU64::default(),
            rows_rejected: AtomicU64::default(),
            rows_dropped_corrupt: AtomicU64::default(),
            rows_dropped_shutdown: AtomicU64::default(),
            spool_ack_damaged: AtomicU64::default(),
            spool_segments_unreadable: AtomicU64::default(),
            spool_segments_unremovable: AtomicU64::default(),
            samples_skipped: AtomicU64::default(),
            last_write_unix: AtomicF64::default(),
            last_sample_unix: AtomicF64::default(),
            programs_attached: AtomicU64::default(),
            programs_failed: AtomicU64::default(),
            // 0.1 ms to about 3 s: a row takes about 0.1 ms; the first, with the BTF parse, more.
            collection_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 16,
            )),
            collection_count: AtomicU64::default(),
            last_collection_seconds: AtomicF64::default(),
            database_up: AtomicBool::default(),
            programs_ok: AtomicBool::new(true),
            program_info: std::sync::OnceLock::new(),
            program_stats: std::sync::Mutex::new(Vec::new()),
            interval_s,
            pod_rows_written: AtomicU64::default(),
            pod_rows_last: AtomicU64::default(),
            cgroup_overflow_events: AtomicU64::default(),
            ebpf_maps_full: std::sync::Mutex::new(Vec::new()),
            network_namespaces: AtomicU64::default(),
            tcp_gauge_drifts: AtomicU64::default(),
            rows_duplicate: AtomicU64::default(),
            rows_dropped_clock_step: AtomicU64::default(),
            clock_steps_forward: AtomicU64::default(),
            clock_steps_backward: AtomicU64::default(),
            database_timeouts: AtomicU64::default(),
            node_name_in_use: AtomicBool::default(),
            node_name_conflicts: AtomicU64::default(),
            abandoned_sessions_ended: AtomicU64::default(),
            oldest_unwritten_unix: AtomicF64::default(),
            pod_alarms: std::sync::Mutex::new(PodAlarms::default()),
            pod_baselines: AtomicU64::default(),
            pod_baselines_evicted: AtomicU64::default(),
            detector_state_save_failures: AtomicU64::default(),
        })
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

/// One counter with a label, a series per (label value, count).
fn labelled_counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in series {
        ConstCounter::new(n).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let m = &self.0;
        let c = |a: &AtomicU64| ConstCounter::new(a.load(Relaxed));
        let g = |a: &AtomicU64| ConstGauge::new(a.load(Relaxed) as i64);
        let mut info = enc.encode_descriptor(
            "feature_agent_build_info",
            "Version of the running agent.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        // Every sampled row is one collection: the same counter.
        single(&mut enc, "feature_agent_rows_sampled", "Rows sampled.", c(&m.collection_count))?;
        single(&mut enc, "feature_agent_rows_written", "Rows the database acknowledged.", c(&m.rows_written))?;
        single(
            &mut enc,
            "feature_agent_rows_anomalous",
            "Rows the streaming detector judged anomalous.",
            c(&m.rows_anomalous),
        )?;
        let pod_alarms = m.pod_alarms.lock().map(|a| a.series()).unwrap_or_default();
        labelled_counter(
            &mut enc,
            "feature_agent_pod_rows_anomalous",
            "Pod and service rows the detector judged anomalous, by the pod's namespace ((host) for services; namespaces past the first 64 under (other namespaces)).",
            "namespace",
            pod_alarms.iter().map(|(ns, n)| (ns.as_str(), *n)),
        )?;
        single(
            &mut enc,
            "feature_agent_pod_baselines",
            "Workloads the pod detector keeps baselines for.",
            g(&m.pod_baselines),
        )?;
        single(
            &mut enc,
            "feature_agent_pod_baselines_evicted",
            "Workloads whose baselines were dropped to keep within --pod-baselines (least recently seen first).",
            c(&m.pod_baselines_evicted),
        )?;
        single(
            &mut enc,
            "feature_agent_detector_state_save_failures",
            "Saves of the detector state file that failed (it keeps its previous state).",
            c(&m.detector_state_save_failures),
        )?;
        single(&mut enc, "feature_agent_rows_queued", "Rows waiting in memory for the database.", g(&m.rows_queued))?;
        single(
            &mut enc,
            "feature_agent_rows_spooled",
            "Rows waiting in the on-disk spool for the database.",
            g(&m.rows_spooled),
        )?;
        single(&mut enc, "feature_agent_spool_bytes", "Bytes of spool segments on disk.", g(&m.spool_bytes))?;
        single(
            &mut enc,
            "feature_agent_spool_max_bytes",
            "The spool's size bound (--spool-max-bytes; 0 without a spool): beyond it the oldest rows are dropped.",
            g(&m.spool_max_bytes),
        )?;
        let queue_full = m.rows_dropped_queue_full.load(Relaxed) + m.rows_dropped_channel_full.load(Relaxed);
        labelled_counter(
            &mut enc,
            "feature_agent_rows_dropped",
            "Rows sampled that will never reach the database: the memory queue or the spool was full (oldest dropped), spool records were damaged, the database refused the row's content, at shutdown neither the database nor the spool took them, or the clock stepped back over an interval already stamped.",
            "reason",
            [
                ("queue_full", queue_full),
                ("spool_full", m.rows_dropped_spool_full.load(Relaxed)),
                ("corrupt", m.rows_dropped_corrupt.load(Relaxed)),
                ("rejected", m.rows_rejected.load(Relaxed)),
                ("shutdown", m.rows_dropped_shutdown.load(Relaxed)),
                ("clock_step", m.rows_dropped_clock_step.load(Relaxed)),
            ],
        )?;
        single(
            &mut enc,
            "feature_agent_rows_duplicate",
            "Rows not written because the database already held a row of this node at their ts: a clock stepped back across a restart, a replay after a crash between commit and ack, or another agent with this node name.",
            c(&m.rows_duplicate),
        )?;
        single(
            &mut enc,
            "feature_agent_oldest_unwritten_row_age_seconds",
            "Seconds since the oldest row not yet in the database was sampled (0: none waits).",
            ConstGauge::new(m.oldest_unwritten_age()),
        )?;
        single(
            &mut enc,
            "feature_agent_database_timeouts",
            "Database calls (connect, write, migration, preparation) cut off by their deadline; the session was dropped and its rows kept.",
            c(&m.database_timeouts),
        )?;
        single(
            &mut enc,
            "feature_agent_node_name_in_use",
            "1 while another agent holds this node name's writer lease (rows wait in the spool).",
            ConstGauge::new(i64::from(m.node_name_in_use.load(Relaxed))),
        )?;
        single(
            &mut enc,
            "feature_agent_node_name_conflicts",
            "Connections that found another agent writing under this node name.",
            c(&m.node_name_conflicts),
        )?;
        single(
            &mut enc,
            "feature_agent_abandoned_sessions_ended",
            "Database sessions of this agent, cut off by a deadline earlier (a hung or black-holed server), that its next session ended.",
            c(&m.abandoned_sessions_ended),
        )?;
        labelled_counter(
            &mut enc,
            "feature_agent_clock_steps",
            "Steps of the wall clock against the monotonic clock between two samples (more than 0.5 s), by direction.",
            "direction",
            [("forward", m.clock_steps_forward.load(Relaxed)), ("backward", m.clock_steps_backward.load(Relaxed))],
        )?;
        single(
            &mut enc,
            "feature_agent_pod_rows_written",
            "Per-pod rows written to pod_features, in the same transaction as their node row (a node row counted in feature_agent_rows_dropped took its pod rows with it).",
            c(&m.pod_rows_written),
        )?;
        single(
            &mut enc,
            "feature_agent_pod_rows_last",
            "Per-pod rows in the last interval (pods, services and other).",
            g(&m.pod_rows_last),
        )?;
        single(
            &mut enc,
            "feature_agent_cgroup_overflow_events",
            "eBPF events counted in the other row because the per-cgroup map was full (raise --cgroup-map-entries).",
            c(&m.cgroup_overflow_events),
        )?;
        let maps_full = m.ebpf_maps_full.lock().map(|m| m.clone()).unwrap_or_default();
        labelled_counter(
            &mut enc,
            "feature_agent_ebpf_map_full",
            "Inserts an eBPF map refused because it was full, by map; each lost something: CGROUP_EVENT_COUNTS (a new cgroup's events went to the other row), CGROUP_NAMES (a new cgroup's path was not recorded: if it is gone before the next walk, its counts go to the other row), NETNS_TCP_BALANCE (a new namespace's sockets were counted as unresolved: its pod's est_conn and lis_conn read low until a re-check against its table corrects them; the node's stay exact), SOCKET_CALLS_IN_FLIGHT (a socket created through the syscall hook was not counted).",
            "map",
            maps_full,
        )?;
        single(
            &mut enc,
            "feature_agent_network_namespaces",
            "Network namespaces whose TCP connection gauges (est_conn, lis_conn) the agent tracks, the host's included.",
            g(&m.network_namespaces),
        )?;
        single(
            &mut enc,
            "feature_agent_tcp_gauge_drifts",
            "Re-checks that found a namespace's connection gauges off its kernel table, and corrected them (each is logged).",
            c(&m.tcp_gauge_drifts),
        )?;
        single(
            &mut enc,
            "feature_agent_samples_skipped",
            "Scheduled samples not taken because the agent was late for them (the row of that interval does not exist).",
            c(&m.samples_skipped),
        )?;
        single(
            &mut enc,
            "feature_agent_spool_ack_damaged",
            "Times the spool's ack file was found damaged or missing; its rows were replayed from the oldest (duplicates are skipped by the database).",
            c(&m.spool_ack_damaged),
        )?;
        labelled_counter(
            &mut enc,
            "feature_agent_spool_segments_damaged",
            "Spool segment files the agent could not read (missing, a directory, unreadable: skipped, their rows counted as corrupt) or delete (forgotten, left on disk).",
            "kind",
            [
                ("unreadable", m.spool_segments_unreadable.load(Relaxed)),
                ("unremovable", m.spool_segments_unremovable.load(Relaxed)),
            ],
        )?;
        single(
            &mut enc,
            "feature_agent_last_write_timestamp_seconds",
            "Unix time of the last successful database write (0: none yet).",
            ConstGauge::new(m.last_write_unix.get()),
        )?;
        single(
            &mut enc,
            "feature_agent_database_up",
            "1 if the last database operation succeeded.",
            ConstGauge::new(i64::from(m.database_up.load(Relaxed))),
        )?;
        single(&mut enc, "feature_agent_ebpf_programs_attached", "eBPF programs attached.", g(&m.programs_attached))?;
        single(
            &mut enc,
            "feature_agent_ebpf_programs_failed",
            "eBPF programs that could not be attached.",
            g(&m.programs_failed),
        )?;
        let mut programs = enc.encode_descriptor(
            "feature_agent_ebpf_program_info",
            "One series per attached eBPF program: its hook type (raw_tp, tp_btf, tracepoint, fexit, kprobe), the kernel event or function, and the columns it feeds (space-separated).",
            None,
            MetricType::Gauge,
        )?;
        for p in m.program_info.get().into_iter().flatten() {
            let labels = [
                ("program", p.program.to_string()),
                ("hook", p.hook.to_string()),
                ("target", p.target.to_string()),
                ("columns", p.columns.join(" ")),
            ];
            ConstGauge::new(1).encode(programs.encode_family(&labels)?)?;
        }
        let stats = m.program_stats.lock().map(|s| s.clone()).unwrap_or_default();
        labelled_counter(
            &mut enc,
            "feature_agent_ebpf_recursion_misses",
            "Events an eBPF program was not run for because it was already running on that CPU (a softirq interrupting it): those events are missing from its counts.",
            "program",
            stats.iter().map(|p| (p.program.as_str(), p.recursion_misses)),
        )?;
        labelled_counter(
            &mut enc,
            "feature_agent_ebpf_program_runs",
            "Times each eBPF program ran (counted by the kernel only while kernel.bpf_stats_enabled is 1).",
            "program",
            stats.iter().map(|p| (p.program.as_str(), p.run_count)),
        )?;
        let ready = i64::from(m.ready().is_ok());
        single(
            &mut enc,
            "feature_agent_ready",
            "1 when /readyz answers 200: rows reach the database.",
            ConstGauge::new(ready),
        )?;
        let h = enc.encode_descriptor(
            "feature_agent_collection_duration_seconds",
            "Time to take one row (procfs, eBPF maps, detector).",
            None,
            MetricType::Histogram,
        )?;
        m.collection_seconds.encode(h)?;
        single(
            &mut enc,
            "feature_agent_last_collection_duration_seconds",
            "Time the last row took to collect.",
            ConstGauge::new(m.last_collection_seconds.get()),
        )
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
        assert!(m.healthy(now_unix()).is_ok());
        m.programs_ok.store(false, Relaxed);
        assert!(m.healthy(now_unix()).unwrap_err().contains("eBPF"));
    }
}
