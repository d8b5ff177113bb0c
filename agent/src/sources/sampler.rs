//! Takes one FeatureRow: the procfs sources, the eBPF counters turned into per-interval deltas,
//! and the est_conn / lis_conn gauges.
//!
//! The gauges come from the eBPF TCP state balance (+1 entering a state, -1 leaving it), seeded
//! from every network namespace's table at start and re-checked every `recheck` so that drift is
//! seen, corrected and logged (conn_gauges.rs). Without eBPF they come from a sock_diag dump of
//! the agent's own namespace every interval (~2 ms).
use std::time::{Duration, Instant, SystemTime};

use agent_common::Event;
use feature_schema::FeatureRow;
use tracing::{info, warn};

use crate::{
    sources::collector::Sources,
    sources::conn_gauges::ConnGauges,
    sources::ebpf::{EbpfCounters, EbpfSnapshot},
    sources::netns::Proc,
    sources::pods::{PodSampler, Stamp},
    sources::tcp_diag::{TcpConnCounts, TcpDiag},
};

/// A count as an integer column; None if it does not fit.
fn column(counts: TcpConnCounts) -> (Option<i32>, Option<i32>) {
    (i32::try_from(counts.established).ok(), i32::try_from(counts.listening).ok())
}

pub struct Sampler {
    node: String,
    sources: Sources,
    ebpf: Option<EbpfCounters>,
    diag: Option<TcpDiag>,
    gauges: Option<ConnGauges>,
    previous: Option<(Instant, Option<EbpfSnapshot>)>,
    /// The source errors of the previous sample: a failure is logged when it starts or changes,
    /// and its end is logged too, instead of repeating every interval.
    failing: Vec<String>,
    ebpf_ok: bool,
    pods: Option<PodSampler>,
    /// Events counted as overflow (the per-cgroup map was full), since the programs were loaded.
    cgroup_overflow: u64,
    /// The byte counting (--count-bytes), whose node addresses are refreshed as samples go.
    bytes: Option<crate::sources::net_bytes::ByteCounting>,
    /// Each fillable map's refused inserts, read once per sample (for the pod walk and
    /// /metrics); empty without eBPF or when the read failed.
    maps_full: Vec<(&'static str, u64)>,
    /// The number (from 1) of the sample whose map read fails as a failed lookup would
    /// (faults.rs).
    #[cfg(feature = "fault-injection")]
    fail_read_at: Option<u64>,
    samples: u64,
}

impl Sampler {
    /// Counts bytes with `bytes` (attached to this sampler's eBPF programs).
    pub fn with_byte_counting(mut self, bytes: Option<crate::sources::net_bytes::ByteCounting>) -> Self {
        self.bytes = bytes;
        self
    }

    /// Also produces per-pod rows (needs eBPF loaded with per-cgroup counting).
    pub fn with_pods(mut self, pods: Option<PodSampler>) -> Self {
        self.pods = pods.filter(|_| self.ebpf.as_ref().is_some_and(|e| e.per_cgroup().is_some()));
        self
    }

    /// The map read of sample number `n` fails (--test-fail-map-read, faults.rs).
    #[cfg(feature = "fault-injection")]
    pub fn with_failed_read_at(mut self, n: Option<u64>) -> Self {
        self.fail_read_at = n;
        self
    }

    /// Whether per-pod rows are produced.
    pub fn pods_on(&self) -> bool {
        self.pods.is_some()
    }

    /// Events the kernel could not attribute to their cgroup because the per-cgroup map was
    /// full (they are in the "other" row), since the programs were loaded.
    pub fn cgroup_overflow_events(&self) -> u64 {
        self.cgroup_overflow
    }

    /// `proc`: the host's /proc, through which every network namespace's table is read.
    pub fn new(node: String, sources: Sources, ebpf: Option<EbpfCounters>, recheck: Duration, proc: Proc) -> Self {
        let diag = match TcpDiag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "cannot open a sock_diag netlink socket; est_conn and lis_conn need it at least once");
                None
            }
        };
        let mut s = Sampler {
            node,
            sources,
            ebpf,
            diag,
            gauges: None,
            previous: None,
            failing: Vec::new(),
            ebpf_ok: true,
            pods: None,
            cgroup_overflow: 0,
            maps_full: Vec::new(),
            bytes: None,
            #[cfg(feature = "fault-injection")]
            fail_read_at: None,
            samples: 0,
        };
        s.seed_gauges(recheck, proc);
        s
    }

    /// The node name stored in every row.
    /// Whether the last row's eBPF map read worked (true without eBPF).
    pub fn ebpf_ok(&self) -> bool {
        self.ebpf_ok
    }

    /// The attached eBPF programs (none without eBPF).
    pub fn program_infos(&self) -> Vec<crate::sources::ebpf::ProgramInfo> {
        self.ebpf.as_ref().map_or_else(Vec::new, |e| e.programs().to_vec())
    }

    /// Each loaded eBPF program's run count and recursion misses (none without eBPF).
    pub fn program_stats(&self) -> Vec<crate::sources::ebpf::ProgramStats> {
        self.ebpf.as_ref().map_or_else(Vec::new, |e| e.program_stats())
    }

    /// For each eBPF map that can fill, the inserts it refused because it was full (none
    /// without eBPF, or when the read fails).
    /// As of the last sample.
    pub fn maps_full(&self) -> &[(&'static str, u64)] {
        &self.maps_full
    }

    /// eBPF programs attached and failed (0, 0 without eBPF).
    pub fn programs(&self) -> (usize, usize) {
        self.ebpf.as_ref().map_or((0, 0), |e| (e.attached(), e.failures().len()))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn seed_gauges(&mut self, recheck: Duration, proc: Proc) {
        let Some(ebpf) = self.ebpf.as_ref().filter(|e| e.tcp_states_live()) else {
            return;
        };
        self.gauges =
            ConnGauges::seed(ebpf, self.diag.as_mut(), proc, recheck, crate::sources::conn_gauges::SEED_BUDGET);
        if self.gauges.is_none() {
            warn!("could not seed the TCP connection gauges; est_conn and lis_conn come from a dump every interval");
        }
    }

    /// Network namespaces the connection gauges track.
    pub fn namespaces(&self) -> usize {
        self.gauges.as_ref().map_or(0, ConnGauges::namespaces)
    }

    /// Re-checks that found a namespace's gauges off its table, since the start.
    pub fn tcp_gauge_drifts(&self) -> u64 {
        self.gauges.as_ref().map_or(0, ConnGauges::drifts)
    }

    fn gauges(&mut self, snap: Option<&EbpfSnapshot>) -> (Option<i32>, Option<i32>) {
        if let (Some(s), Some(ebpf)) = (snap, self.ebpf.as_ref()) {
            if let Some(g) = self.gauges.as_mut() {
                g.seed_pending(ebpf, crate::sources::conn_gauges::SEED_BUDGET);
                if g.recheck_due() {
                    g.recheck(ebpf, self.diag.as_mut());
                }
                // Read at this row's snapshot, like the row's eBPF deltas; NULL until every
                // namespace found at the start is seeded.
                return g.node(s).map_or((None, None), column);
            }
        }
        match self.diag.as_mut().map(TcpDiag::count) {
            Some(Ok(c)) => column(c),
            Some(Err(e)) => {
                warn!(error = %e, "sock_diag dump failed; est_conn and lis_conn are empty in this row");
                (None, None)
            }
            None => (None, None),
        }
    }

    /// Takes one row (with --pod-rows, the interval's pod rows in `pods`). Sources that fail
    /// leave their columns empty and are logged.
    pub fn sample(&mut self) -> FeatureRow {
        let ts = SystemTime::now();
        let now = Instant::now();
        let mut row = FeatureRow::empty(self.node.clone(), ts);
        let errors = self.sources.collect(&mut row);
        let failing: Vec<String> = errors.iter().map(ToString::to_string).collect();
        if failing != self.failing {
            for e in failing.iter().filter(|e| !self.failing.contains(e)) {
                warn!(error = %e, "a feature source failed; its columns stay empty until it recovers");
            }
            if failing.is_empty() {
                info!("all feature sources read again");
            }
            self.failing = failing;
        }
        if let Some(bytes) = self.bytes.as_mut() {
            bytes.refresh();
        }
        let pods_on = self.pods.is_some();
        self.samples += 1;
        let read = self.ebpf.as_mut().map(|e| if pods_on { e.read_all() } else { e.read().map(|s| (s, None)) });
        #[cfg(feature = "fault-injection")]
        let read = match read {
            Some(_) if self.fail_read_at == Some(self.samples) => Some(Err(crate::sources::ebpf::EbpfError::Read {
                name: agent_common::MAP_CGROUP_EVENT_COUNTS,
                source: aya::maps::MapError::KeyNotFound,
            })),
            read => read,
        };
        let (snap, cgroups) = match read {
            Some(Ok((s, c))) => (Some(s), c),
            Some(Err(e)) => {
                // This row's eBPF columns are NULL and it has no pod rows; the next read is a
                // fresh baseline for both (its row is NULL too: no interval ends there), so no
                // later count spans two intervals.
                warn!(error = %e, "reading the eBPF counters failed; eBPF columns are empty in this row and the next");
                if let Some(pods) = self.pods.as_mut() {
                    pods.forget_baseline();
                }
                (None, None)
            }
            None => (None, None),
        };
        let (est_conn, lis_conn) = self.gauges(snap.as_ref());
        self.ebpf_ok = self.ebpf.is_none() || snap.is_some();

        row.est_conn = est_conn;
        row.lis_conn = lis_conn;
        if let Some((prev_at, prev_snap)) = self.previous {
            row.interval_s = Some(now.duration_since(prev_at).as_secs_f64());
            if let (Some(ebpf_counters), Some(cur), Some(prev)) =
                (self.ebpf.as_ref(), snap.as_ref(), prev_snap.as_ref())
            {
                for e in Event::ALL {
                    if ebpf_counters.is_live(e) {
                        row.set_event(e, Some(cur.get(e).wrapping_sub(prev.get(e)) as i64));
                    }
                }
            }
        }
        self.previous = Some((now, snap));
        if let Some(c) = cgroups.as_ref() {
            self.cgroup_overflow = c.overflow.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        }
        self.maps_full = self.ebpf.as_ref().and_then(|e| e.maps_full().ok()).map_or_else(Vec::new, |m| m.to_vec());
        if let (Some(pods), Some(ebpf), Some(cgroups)) = (self.pods.as_mut(), self.ebpf.as_mut(), cgroups) {
            let names_refused =
                self.maps_full.iter().find(|(map, _)| *map == agent_common::MAP_CGROUP_NAMES).map(|(_, n)| *n);
            let stamp = Stamp { node: &self.node, ts, interval_s: row.interval_s };
            row.pods = pods.sample(ebpf, cgroups, names_refused, self.gauges.as_ref(), stamp);
        }
        row
    }
}
