//! Takes one FeatureRow: the procfs sources, the eBPF counters turned into per-interval deltas,
//! and the est_conn / lis_conn gauges.
//!
//! The gauges come from the eBPF TCP state balance (+1 entering a state, -1 leaving it), seeded
//! from one sock_diag dump at start and re-checked against a dump every `recheck` so that drift
//! is seen, corrected and logged. Without eBPF they come from a dump every interval (~2 ms).
use std::time::{Duration, Instant, SystemTime};

use agent_common::Event;
use feature_schema::FeatureRow;
use tracing::{info, warn};

use crate::{
    collector::Sources,
    ebpf::{EbpfCounters, EbpfSnapshot},
    pods::PodSampler,
    tcp_diag::{TcpConnCounts, TcpDiag},
};

/// How many times a seed or re-check retries when TCP sockets change state during the dump.
const QUIET_DUMP_ATTEMPTS: u32 = 5;

/// est_conn / lis_conn from the eBPF balance: value = offset + balance.
struct SeededGauges {
    established_offset: i64,
    listening_offset: i64,
    next_check: Instant,
}

impl SeededGauges {
    /// Anchors the gauges so that, at `balance`, they equal `dump`.
    fn anchored(dump: TcpConnCounts, balance: &EbpfSnapshot, recheck: Duration) -> Self {
        SeededGauges {
            established_offset: dump.established - balance.established(),
            listening_offset: dump.listening - balance.listening(),
            next_check: Instant::now() + recheck,
        }
    }

    /// (established, listening) at `balance`.
    fn at(&self, balance: &EbpfSnapshot) -> TcpConnCounts {
        TcpConnCounts {
            established: self.established_offset + balance.established(),
            listening: self.listening_offset + balance.listening(),
        }
    }
}

/// A count as an integer column; None if it does not fit.
fn column(counts: TcpConnCounts) -> (Option<i32>, Option<i32>) {
    (i32::try_from(counts.established).ok(), i32::try_from(counts.listening).ok())
}

pub struct Sampler {
    node: String,
    sources: Sources,
    ebpf: Option<EbpfCounters>,
    diag: Option<TcpDiag>,
    gauges: Option<SeededGauges>,
    recheck: Duration,
    previous: Option<(Instant, Option<EbpfSnapshot>)>,
    /// The source errors of the previous sample: a failure is logged when it starts or changes,
    /// and its end is logged too, instead of repeating every interval.
    failing: Vec<String>,
    ebpf_ok: bool,
    pods: Option<PodSampler>,
    /// Events counted as overflow (the per-cgroup map was full), since the programs were loaded.
    cgroup_overflow: u64,
    /// Tests only: the number (from 1) of the sample whose map read fails as a failed lookup
    /// would, to check what the rows make of it.
    fail_read_at: Option<u64>,
    samples: u64,
}

impl Sampler {
    /// Also produces per-pod rows (needs eBPF loaded with per-cgroup counting).
    pub fn with_pods(mut self, pods: Option<PodSampler>) -> Self {
        self.pods = pods.filter(|_| self.ebpf.as_ref().is_some_and(|e| e.per_cgroup().is_some()));
        self
    }

    /// Tests only (hidden --test-fail-map-read): the map read of sample number `n` fails.
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

    pub fn new(node: String, sources: Sources, ebpf: Option<EbpfCounters>, recheck: Duration) -> Self {
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
            recheck,
            previous: None,
            failing: Vec::new(),
            ebpf_ok: true,
            pods: None,
            cgroup_overflow: 0,
            fail_read_at: None,
            samples: 0,
        };
        s.seed_gauges();
        s
    }

    /// The node name stored in every row.
    /// Whether the last row's eBPF map read worked (true without eBPF).
    pub fn ebpf_ok(&self) -> bool {
        self.ebpf_ok
    }

    /// The attached eBPF programs (none without eBPF).
    pub fn program_infos(&self) -> Vec<crate::ebpf::ProgramInfo> {
        self.ebpf.as_ref().map_or_else(Vec::new, |e| e.programs().to_vec())
    }

    /// Each loaded eBPF program's run count and recursion misses (none without eBPF).
    pub fn program_stats(&self) -> Vec<crate::ebpf::ProgramStats> {
        self.ebpf.as_ref().map_or_else(Vec::new, |e| e.program_stats())
    }

    /// eBPF programs attached and failed (0, 0 without eBPF).
    pub fn programs(&self) -> (usize, usize) {
        self.ebpf.as_ref().map_or((0, 0), |e| (e.attached(), e.failures().len()))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A dump taken while no socket entered or left ESTABLISHED/LISTEN, with the eBPF balance at
    /// that moment: `(dump, balance)`. None if the counts kept moving or a read failed.
    fn quiet_dump(&mut self) -> Option<(TcpConnCounts, EbpfSnapshot)> {
        let (ebpf, diag) = (self.ebpf.as_ref()?, self.diag.as_mut()?);
        for _ in 0..QUIET_DUMP_ATTEMPTS {
            let before = ebpf.read().ok()?;
            let dump = diag.count().ok()?;
            let after = ebpf.read().ok()?;
            if before.established() == after.established() && before.listening() == after.listening() {
                return Some((dump, after));
            }
        }
        None
    }

    fn seed_gauges(&mut self) {
        if !self.ebpf.as_ref().is_some_and(EbpfCounters::tcp_states_live) {
            return;
        }
        match self.quiet_dump() {
            Some((dump, balance)) => {
                info!(
                    established = dump.established,
                    listening = dump.listening,
                    "seeded TCP connection gauges from a sock_diag dump"
                );
                self.gauges = Some(SeededGauges::anchored(dump, &balance, self.recheck));
            }
            None => {
                warn!("could not seed the TCP connection gauges; est_conn and lis_conn come from a dump every interval")
            }
        }
    }

    /// Compares the gauges with a dump, corrects and logs any drift.
    fn recheck_gauges(&mut self) {
        let Some((dump, balance)) = self.quiet_dump() else {
            return;
        };
        let Some(g) = self.gauges.as_ref() else {
            return;
        };
        let gauge = g.at(&balance);
        if gauge != dump {
            warn!(
                est_gauge = gauge.established,
                est_dump = dump.established,
                lis_gauge = gauge.listening,
                lis_dump = dump.listening,
                "TCP connection gauges drifted from the kernel's table; corrected"
            );
        }
        self.gauges = Some(SeededGauges::anchored(dump, &balance, self.recheck));
    }

    fn gauges(&mut self, snap: Option<&EbpfSnapshot>) -> (Option<i32>, Option<i32>) {
        if let Some(s) = snap {
            if self.gauges.as_ref().is_some_and(|g| Instant::now() >= g.next_check) {
                self.recheck_gauges();
            }
            // Read at this row's snapshot, like the row's eBPF deltas.
            if let Some(g) = self.gauges.as_ref() {
                return column(g.at(s));
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
        let pods_on = self.pods.is_some();
        self.samples += 1;
        let read = if self.fail_read_at == Some(self.samples) && self.ebpf.is_some() {
            Some(Err(crate::ebpf::EbpfError::Read {
                name: agent_common::MAP_CGROUP_EVENT_COUNTS,
                source: aya::maps::MapError::KeyNotFound,
            }))
        } else {
            self.ebpf.as_mut().map(|e| if pods_on { e.read_all() } else { e.read().map(|s| (s, None)) })
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
        if let (Some(pods), Some(ebpf), Some(cgroups)) = (self.pods.as_mut(), self.ebpf.as_mut(), cgroups) {
            row.pods = pods.sample(ebpf, cgroups, &self.node, ts, row.interval_s);
        }
        row
    }
}
