//! est_conn and lis_conn, for the node and for each network namespace, from the eBPF TCP state
//! balance: a namespace's gauge is its offset plus its balance, and the node's is the node-wide
//! balance plus every namespace's offset (the node balance is the sum of the namespaces').
//!
//! An offset anchors a namespace's balance to its kernel table: `table - balance`, taken while
//! none of that namespace's sockets entered or left ESTABLISHED or LISTEN (a quiet read). Every
//! namespace with a process when the agent starts is seeded from its table: the agent's own at
//! once, the others within a time budget per interval ([`SEED_BUDGET`]), so a node of 500 pods
//! (about 2-9 ms a table) gets its first row on time. Until every namespace is seeded the node's
//! gauges are NULL, and so are an unseeded namespace's. One that a later
//! scan of /proc finds was made after the programs were loaded (the start's scan would have
//! found it otherwise), so the hook saw every move of its sockets: its offset is zero, and no
//! table is read for it (a table read walks the kernel's whole connection hash, several ms).
//!
//! Every `recheck`, the agent's own namespace is compared with a sock_diag dump (~2 ms), /proc
//! is scanned for namespaces (one `stat` per process), and one other namespace in turn is
//! compared with its table (~7 ms), so a re-check costs the same with 10 namespaces or 500. A
//! difference is drift: logged and corrected. That rotation also reaches a namespace the
//! start's scan missed because it had no process then.
//!
//! Without kernel BTF the hook cannot tell a socket's namespace: the gauges then cover the
//! agent's own namespace as the seed sees it (every socket's moves still count in the balance).
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    sources::ebpf::{EbpfCounters, EbpfSnapshot, NetnsBalance},
    sources::netns::Proc,
    sources::tcp_diag::{TcpConnCounts, TcpDiag},
};

/// How many times a seed or re-check reads a table while sockets of its namespace move.
const QUIET_ATTEMPTS: u32 = 5;

/// The time one interval may spend reading the tables of namespaces not seeded yet.
pub const SEED_BUDGET: Duration = Duration::from_millis(250);

/// A namespace's balance as connection counts.
fn counts(b: NetnsBalance) -> TcpConnCounts {
    TcpConnCounts { established: b.established, listening: b.listening }
}

fn minus(a: TcpConnCounts, b: TcpConnCounts) -> TcpConnCounts {
    TcpConnCounts { established: a.established - b.established, listening: a.listening - b.listening }
}

fn plus(a: TcpConnCounts, b: TcpConnCounts) -> TcpConnCounts {
    TcpConnCounts { established: a.established + b.established, listening: a.listening + b.listening }
}

/// What one seed or re-check found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    pub seeded: usize,
    pub checked: usize,
    pub drifted: usize,
}

pub struct ConnGauges {
    proc: Proc,
    /// The agent's own namespace (read with sock_diag).
    own: u32,
    /// Whether the balance is kept per namespace; if not, only `own` is seeded, against the
    /// node-wide balance.
    keyed: bool,
    /// Namespace key -> offset. A namespace that dies keeps its offset: its key may be reused
    /// by a new namespace, whose balance continues from the old one's (zero once every socket
    /// closed), so offset + balance stays that namespace's count.
    offsets: HashMap<u32, TcpConnCounts>,
    /// Namespace key -> a process in it, from the last scan.
    pids: HashMap<u32, u32>,
    /// Namespaces found at the start whose tables are not read yet (see [`SEED_BUDGET`]).
    pending: Vec<u32>,
    /// When the seed started, for its log line once every namespace is seeded.
    seed_started: Instant,
    /// The namespace the next re-check reads (in key order, after this one).
    rotation: u32,
    next_check: Instant,
    recheck: Duration,
    buf: String,
    /// Re-checks that found drift, since the start.
    drifts: u64,
}

impl ConnGauges {
    /// Seeds the agent's own namespace, finds the others and seeds as many as `budget` allows
    /// ([`ConnGauges::seed_pending`] goes on with the rest). None when the balance is not live or
    /// the own namespace cannot be read quietly.
    pub fn seed(
        ebpf: &EbpfCounters,
        diag: Option<&mut TcpDiag>,
        proc: Proc,
        recheck: Duration,
        budget: Duration,
    ) -> Option<Self> {
        if !ebpf.tcp_states_live() {
            return None;
        }
        let started = Instant::now();
        let own = match proc.own_key() {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "cannot stat /proc/self/net/stat: est_conn and lis_conn come from a dump every interval");
                return None;
            }
        };
        let mut g = ConnGauges {
            proc,
            own,
            keyed: ebpf.netns_keyed(),
            offsets: HashMap::new(),
            pids: HashMap::new(),
            pending: Vec::new(),
            seed_started: started,
            rotation: 0,
            next_check: Instant::now() + recheck,
            recheck,
            buf: String::new(),
            drifts: 0,
        };
        let own_offset = g.quiet_offset(ebpf, own, diag)?;
        g.offsets.insert(own, own_offset);
        if g.keyed {
            g.pids = g.proc.namespaces();
            g.pending = g.pids.keys().filter(|k| **k != own).copied().collect();
            g.pending.sort_unstable();
            g.pending.reverse();
        }
        g.seed_pending(ebpf, budget);
        Some(g)
    }

    /// Seeds namespaces found at the start from their tables until `budget` is spent; logs once
    /// every one is. Returns how many it seeded.
    pub fn seed_pending(&mut self, ebpf: &EbpfCounters, budget: Duration) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let started = Instant::now();
        let mut seeded = 0;
        while let Some(&key) = self.pending.last() {
            let offset = self.quiet_offset(ebpf, key, None).unwrap_or_else(|| {
                // Its processes are gone: taken as holding no connection now.
                let balance = self.balance(ebpf, key).unwrap_or_default();
                minus(TcpConnCounts::default(), balance)
            });
            self.offsets.insert(key, offset);
            self.pending.pop();
            seeded += 1;
            if started.elapsed() >= budget {
                break;
            }
        }
        if self.pending.is_empty() {
            if let Ok(snap) = ebpf.read() {
                let node = self.node(&snap).unwrap_or_default();
                info!(
                    established = node.established,
                    listening = node.listening,
                    namespaces = self.offsets.len(),
                    found = self.pids.len().max(1),
                    elapsed_ms = self.seed_started.elapsed().as_millis() as u64,
                    "seeded TCP connection gauges from every network namespace's table"
                );
            }
        }
        seeded
    }

    /// Whether every namespace found at the start is seeded.
    pub fn seeded(&self) -> bool {
        self.pending.is_empty()
    }

    /// The node's gauges at `snap` (the node-wide balance); None until every namespace found at
    /// the start is seeded.
    pub fn node(&self, snap: &EbpfSnapshot) -> Option<TcpConnCounts> {
        if !self.pending.is_empty() {
            return None;
        }
        let base = TcpConnCounts { established: snap.established(), listening: snap.listening() };
        if !self.keyed {
            return Some(plus(base, self.offsets.get(&self.own).copied().unwrap_or_default()));
        }
        Some(self.offsets.values().fold(base, |sum, o| plus(sum, *o)))
    }

    /// The gauges of namespace `key` given its balance; None for the agent's own namespace
    /// (host-networked) or when the balance is not kept per namespace.
    pub fn namespace(&self, key: u32, balance: NetnsBalance) -> Option<TcpConnCounts> {
        if !self.keyed || key == self.own || key == agent_common::NETNS_UNRESOLVED || self.pending.contains(&key) {
            return None;
        }
        Some(plus(self.offsets.get(&key).copied().unwrap_or_default(), counts(balance)))
    }

    /// Whether a re-check is due (not before every namespace found at the start is seeded).
    pub fn recheck_due(&self) -> bool {
        self.pending.is_empty() && Instant::now() >= self.next_check
    }

    /// Namespaces seeded (live or kept for their offsets).
    pub fn namespaces(&self) -> usize {
        self.offsets.len()
    }

    /// Re-checks that found a namespace's gauges off its table, since the start.
    pub fn drifts(&self) -> u64 {
        self.drifts
    }

    /// The balance the quiet read of `key` compares: the namespace's, or the node's when the
    /// balance is not kept per namespace.
    fn balance(&self, ebpf: &EbpfCounters, key: u32) -> Option<TcpConnCounts> {
        if self.keyed {
            ebpf.netns_balance(key).ok().map(counts)
        } else {
            ebpf.read().ok().map(|s| TcpConnCounts { established: s.established(), listening: s.listening() })
        }
    }

    /// `table - balance` for namespace `key`, from a read during which the balance did not move
    /// (or, if it kept moving, the read during which it moved least, which is then off by at
    /// most that many sockets until the next re-check). The own namespace is read with
    /// sock_diag when there is a socket for it, any other through a process in it.
    fn quiet_offset(&mut self, ebpf: &EbpfCounters, key: u32, mut diag: Option<&mut TcpDiag>) -> Option<TcpConnCounts> {
        let pid = self.pids.get(&key).copied();
        let mut best: Option<(i64, TcpConnCounts)> = None;
        for _ in 0..QUIET_ATTEMPTS {
            let before = self.balance(ebpf, key)?;
            let table = match (diag.as_deref_mut(), pid) {
                (Some(d), _) if key == self.own => d.count(),
                (_, Some(pid)) => self.proc.tcp_table(pid, &mut self.buf),
                (None, None) if key == self.own => self.proc.tcp_table(std::process::id(), &mut self.buf),
                _ => return None,
            };
            let table = match table {
                Ok(t) => t,
                Err(e) => {
                    warn!(
                        namespace = key,
                        pid,
                        error = %e,
                        "cannot read a network namespace's TCP table through a process in it; its gauges are not seeded now"
                    );
                    return None;
                }
            };
            let after = self.balance(ebpf, key)?;
            let moved = (after.established - before.established).abs() + (after.listening - before.listening).abs();
            if best.is_none_or(|(m, _)| moved < m) {
                best = Some((moved, minus(table, after)));
            }
            if moved == 0 {
                break;
            }
        }
        let (moved, offset) = best?;
        if moved != 0 {
            debug!(namespace = key, moved, "a namespace's sockets kept moving during every read of its table");
        }
        Some(offset)
    }

    /// Scans /proc for namespaces and seeds the new ones with a zero offset (they were made
    /// after the programs were loaded), leaving those the start's scan found to their own seed.
    fn scan_and_seed(&mut self) -> CheckOutcome {
        self.pids = self.proc.namespaces();
        // A dead namespace whose offset is zero needs no memory: if its key comes back, the new
        // namespace's seed finds a zero offset again.
        let pids = &self.pids;
        let own = self.own;
        self.offsets.retain(|k, o| *k == own || pids.contains_key(k) || *o != TcpConnCounts::default());
        let mut new: Vec<u32> =
            self.pids.keys().filter(|k| !self.offsets.contains_key(k) && !self.pending.contains(k)).copied().collect();
        new.sort_unstable();
        let mut outcome = CheckOutcome::default();
        for key in new {
            self.offsets.insert(key, TcpConnCounts::default());
            outcome.seeded += 1;
        }
        outcome
    }

    /// Compares namespace `key`'s gauge with its table; corrects and logs drift.
    fn check(&mut self, ebpf: &EbpfCounters, key: u32, diag: Option<&mut TcpDiag>) -> Option<bool> {
        let offset = self.quiet_offset(ebpf, key, diag)?;
        let old = self.offsets.insert(key, offset).unwrap_or_default();
        if old != offset {
            self.drifts += 1;
            let balance = self.balance(ebpf, key).unwrap_or_default();
            let (gauge, table) = (plus(old, balance), plus(offset, balance));
            warn!(
                namespace = key,
                pid = self.pids.get(&key).copied(),
                est_gauge = gauge.established,
                est_table = table.established,
                lis_gauge = gauge.listening,
                lis_table = table.listening,
                "TCP connection gauges drifted from the namespace's table; corrected"
            );
        }
        Some(old != offset)
    }

    /// The periodic re-check (see the module's comment).
    pub fn recheck(&mut self, ebpf: &EbpfCounters, diag: Option<&mut TcpDiag>) -> CheckOutcome {
        let started = Instant::now();
        let outcome = self.recheck_now(ebpf, diag);
        debug!(
            seeded = outcome.seeded,
            checked = outcome.checked,
            drifted = outcome.drifted,
            namespaces = self.pids.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "re-checked the TCP connection gauges"
        );
        outcome
    }

    fn recheck_now(&mut self, ebpf: &EbpfCounters, diag: Option<&mut TcpDiag>) -> CheckOutcome {
        self.next_check = Instant::now() + self.recheck;
        let mut outcome = CheckOutcome::default();
        let own = self.own;
        if let Some(drifted) = self.check(ebpf, own, diag) {
            outcome.checked += 1;
            outcome.drifted += usize::from(drifted);
        }
        if !self.keyed {
            return outcome;
        }
        let seeded = self.scan_and_seed();
        outcome.seeded = seeded.seeded;
        // The next live namespace after the last one checked, in key order.
        let live: BTreeMap<u32, u32> = self.pids.iter().filter(|(k, _)| **k != own).map(|(k, p)| (*k, *p)).collect();
        let next = live.range(self.rotation.saturating_add(1)..).next().or_else(|| live.iter().next());
        if let Some((&key, _)) = next {
            self.rotation = key;
            if let Some(drifted) = self.check(ebpf, key, None) {
                outcome.checked += 1;
                outcome.drifted += usize::from(drifted);
            }
        }
        outcome
    }
}
