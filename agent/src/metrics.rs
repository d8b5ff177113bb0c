//! Self-monitoring: the agent's own counters and the HTTP listener (`--listen`) that serves
//! them. `/metrics` is the Prometheus text format (version 0.0.4), `/healthz` says the process
//! samples on schedule and its eBPF programs answer, `/readyz` says the database is reachable.
//! The server is a few lines of HTTP/1.1 on tokio (GET only, one request per connection,
//! bounded request size and time): the agent needs no web framework for three fixed pages.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
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
#[derive(Debug, Default)]
pub struct Metrics {
    pub rows_written: AtomicU64,
    pub rows_anomalous: AtomicU64,
    /// Rows in the memory queue now.
    pub rows_queued: AtomicU64,
    /// Rows in the on-disk spool now (not yet in the database).
    pub rows_spooled: AtomicU64,
    pub spool_bytes: AtomicU64,
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
    /// Scheduled samples not taken because the agent was late for them.
    pub samples_skipped: AtomicU64,
    pub last_write_unix: AtomicF64,
    pub last_sample_unix: AtomicF64,
    pub programs_attached: AtomicU64,
    pub programs_failed: AtomicU64,
    pub collection_seconds_sum: AtomicF64,
    pub collection_count: AtomicU64,
    pub last_collection_seconds: AtomicF64,
    pub database_up: AtomicBool,
    /// False once an eBPF map read fails (the programs no longer answer).
    pub programs_ok: AtomicBool,
    /// The attached eBPF programs, set once at start.
    pub program_info: std::sync::OnceLock<Vec<crate::ebpf::ProgramInfo>>,
    /// The sampling interval, for /healthz's staleness check.
    pub interval_s: f64,
}

pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

impl Metrics {
    pub fn new(interval_s: f64) -> Arc<Self> {
        let m = Metrics { interval_s, ..Metrics::default() };
        m.programs_ok.store(true, Relaxed);
        Arc::new(m)
    }

    pub fn observe_collection(&self, seconds: f64) {
        self.collection_seconds_sum.add(seconds);
        self.collection_count.fetch_add(1, Relaxed);
        self.last_collection_seconds.set(seconds);
        self.last_sample_unix.set(now_unix());
    }

    /// The Prometheus text exposition.
    /// (The summary's `_sum`/`_count` samples are written with their suffix as the "labels"
    /// argument, which is where the suffix goes in the exposition.)
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut put = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for (labels, v) in samples {
                out += &format!("{name}{labels} {v}\n");
            }
        };
        let c = |a: &AtomicU64| a.load(Relaxed) as f64;
        put(
            "feature_agent_build_info",
            "gauge",
            "Version of the running agent.",
            &[(&format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1.0)],
        );
        // Every sampled row is one collection: the same counter.
        put("feature_agent_rows_sampled_total", "counter", "Rows sampled.", &[("", c(&self.collection_count))]);
        put(
            "feature_agent_rows_written_total",
            "counter",
            "Rows the database acknowledged.",
            &[("", c(&self.rows_written))],
        );
        put(
            "feature_agent_rows_anomalous_total",
            "counter",
            "Rows the streaming detector judged anomalous.",
            &[("", c(&self.rows_anomalous))],
        );
        put(
            "feature_agent_rows_queued",
            "gauge",
            "Rows waiting in memory for the database.",
            &[("", c(&self.rows_queued))],
        );
        put(
            "feature_agent_rows_spooled",
            "gauge",
            "Rows waiting in the on-disk spool for the database.",
            &[("", c(&self.rows_spooled))],
        );
        put("feature_agent_spool_bytes", "gauge", "Bytes of spool segments on disk.", &[("", c(&self.spool_bytes))]);
        put(
            "feature_agent_rows_dropped_total",
            "counter",
            "Rows sampled that will never reach the database: the memory queue or the spool was full (oldest dropped), spool records were damaged, the database refused the row's content, or at shutdown neither the database nor the spool took them.",
            &[
                ("{reason=\"queue_full\"}", c(&self.rows_dropped_queue_full) + c(&self.rows_dropped_channel_full)),
                ("{reason=\"spool_full\"}", c(&self.rows_dropped_spool_full)),
                ("{reason=\"corrupt\"}", c(&self.rows_dropped_corrupt)),
                ("{reason=\"rejected\"}", c(&self.rows_rejected)),
                ("{reason=\"shutdown\"}", c(&self.rows_dropped_shutdown)),
            ],
        );
        put(
            "feature_agent_samples_skipped_total",
            "counter",
            "Scheduled samples not taken because the agent was late for them (the row of that interval does not exist).",
            &[("", c(&self.samples_skipped))],
        );
        put(
            "feature_agent_spool_ack_damaged_total",
            "counter",
            "Times the spool's ack file was found damaged or missing; its rows were replayed from the oldest (duplicates are skipped by the database).",
            &[("", c(&self.spool_ack_damaged))],
        );
        put(
            "feature_agent_last_write_timestamp_seconds",
            "gauge",
            "Unix time of the last successful database write (0: none yet).",
            &[("", self.last_write_unix.get())],
        );
        put(
            "feature_agent_database_up",
            "gauge",
            "1 if the last database operation succeeded.",
            &[("", f64::from(u8::from(self.database_up.load(Relaxed))))],
        );
        put(
            "feature_agent_ebpf_programs_attached",
            "gauge",
            "eBPF programs attached.",
            &[("", c(&self.programs_attached))],
        );
        put(
            "feature_agent_ebpf_programs_failed",
            "gauge",
            "eBPF programs that could not be attached.",
            &[("", c(&self.programs_failed))],
        );
        let info: Vec<(String, f64)> = self
            .program_info
            .get()
            .into_iter()
            .flatten()
            .map(|p| {
                let labels = format!(
                    "{{program=\"{}\",hook=\"{}\",target=\"{}\",columns=\"{}\"}}",
                    p.program,
                    p.hook,
                    p.target,
                    p.columns.join(" ")
                );
                (labels, 1.0)
            })
            .collect();
        let info: Vec<(&str, f64)> = info.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        put(
            "feature_agent_ebpf_program_info",
            "gauge",
            "One series per attached eBPF program: its hook type (raw_tp, tp_btf, tracepoint, fexit, kprobe), the kernel event or function, and the columns it feeds (space-separated).",
            &info,
        );
        put(
            "feature_agent_collection_duration_seconds",
            "summary",
            "Time to take one row (procfs, eBPF maps, detector).",
            &[("_sum", self.collection_seconds_sum.get()), ("_count", c(&self.collection_count))],
        );
        put(
            "feature_agent_last_collection_duration_seconds",
            "gauge",
            "Time the last row took to collect.",
            &[("", self.last_collection_seconds.get())],
        );
        out
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

/// Serves /metrics, /healthz and /readyz until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let started = now_unix();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), handle(stream, &metrics, started)).await {
                debug!(error = %e, "metrics request timed out");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, started: f64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > 8192 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request_line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        (b"GET" | b"HEAD", b"/healthz") => match metrics.healthy(started) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
        },
        (b"GET" | b"HEAD", b"/readyz") => {
            if metrics.database_up.load(Relaxed) {
                ("200 OK", "text/plain", "ok\n".to_owned())
            } else {
                ("503 Service Unavailable", "text/plain", "database not reachable\n".to_owned())
            }
        }
        (b"GET" | b"HEAD", _) => {
            ("404 Not Found", "text/plain", "not found: try /metrics, /healthz, /readyz\n".to_owned())
        }
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != b"HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
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
        assert!(text.contains("# TYPE feature_agent_rows_written_total counter\nfeature_agent_rows_written_total 7\n"));
        assert!(text.contains("feature_agent_rows_dropped_total{reason=\"spool_full\"} 2\n"));
        assert!(text.contains(
            "feature_agent_collection_duration_seconds_sum 0.25\nfeature_agent_collection_duration_seconds_count 1\n"
        ));
        assert!(m.healthy(now_unix()).is_ok());
        m.programs_ok.store(false, Relaxed);
        assert!(m.healthy(now_unix()).unwrap_err().contains("eBPF"));
    }
}
