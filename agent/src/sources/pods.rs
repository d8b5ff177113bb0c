//! Per-pod rows: each interval, the per-cgroup eBPF counts turned into one row per pod, host
//! service and "other", with each pod's (or unit's) cgroup v2 resource files.
//!
//! - Identity: a cgroup id is named by the cgroup_mkdir hook when it is created (so a pod that
//!   lives less than an interval is still named), else by a walk of the host's cgroup v2 tree
//!   (the id is the directory's inode). The path gives the pod UID and QoS or the systemd unit
//!   (cgroups.rs); kubelet's /var/log/pods gives namespaces and names.
//! - Exactness: the node row's count of every per-cgroup event is the total of the same map read
//!   (ebpf.rs `read_all`), and each row's count is its cgroups' deltas; what belongs to no pod
//!   or service (socket-less resets, the root, sessions, unnamed cgroups, map overflow) is the
//!   "other" row, so the rows of an interval add up to the node row exactly.
//! - Bounded: a cgroup whose directory is gone and that counted nothing for a whole interval is
//!   removed from the kernel map, its final counts kept in the retired totals.
//! - Network: a pod (or unit) in a network namespace of its own gets that namespace's interface
//!   counters and TCP gauges, read through one of its processes (see [`NamespaceReader`]); one
//!   in the host's namespace is marked `host` and has no network columns.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use agent_common::{Event, EVENT_COUNT};
use feature_schema::pods::{OwnerKind, PodRow, Res, NETWORK_HOST, NETWORK_OWN, RESOURCE_COUNT};
use tracing::debug;

use crate::{
    sources::cgroups::{classify, pod_names, CgroupDir, Owner, PodName, TreeWalk},
    sources::conn_gauges::ConnGauges,
    sources::ebpf::{CgroupSnapshot, EbpfCounters},
    sources::netns::{InterfaceTotals, Proc},
};

/// Most processes of a cgroup tried when looking for one to read the pod's namespace through.
const PROCS_TRIED: usize = 4;

/// A pod's way into its network namespace: an open /proc/<pid> directory of one of its
/// processes, and the namespace's key. The open directory keeps referring to that process: once
/// it exits, reads through it fail (and another process is found) even if its pid is reused.
struct NamespaceHandle {
    dir: std::fs::File,
    key: u32,
}

/// Finds and keeps each pod's [`NamespaceHandle`].
pub struct NamespaceReader {
    proc: Proc,
    /// The agent's own namespace (the host's, with hostNetwork): a pod there is host-networked.
    own: Option<u32>,
    handles: HashMap<(OwnerKind, String), NamespaceHandle>,
    /// Per owner, what its earlier namespaces counted (see [`Carried`]).
    carried: HashMap<(OwnerKind, String), Carried>,
    buf: String,
}

/// An owner's network counters across the namespaces it has had. A recreated pod sandbox gets a
/// new namespace whose counters start at zero; the row's counters go on from the old
/// namespace's last reading instead of falling back, so a delta across the recreation is the new
/// namespace's count (what the old one counted after its last reading is lost) and never
/// negative. A new namespace is a new key, or any counter below its last reading (a namespace's
/// inode number can be reused once it is gone).
#[derive(Debug, Default)]
struct Carried {
    key: u32,
    last: InterfaceTotals,
    before: InterfaceTotals,
}

impl Carried {
    fn add(&mut self, key: u32, now: InterfaceTotals) -> InterfaceTotals {
        if key != self.key || now.went_back_from(&self.last) {
            self.before = self.before.plus(&self.last);
            self.key = key;
        }
        self.last = now;
        self.before.plus(&now)
    }
}

/// What a row learns from its namespace.
struct PodNetwork {
    host: bool,
    interfaces: Option<InterfaceTotals>,
    key: u32,
}

impl NamespaceReader {
    fn open(&self, dirs: &[PathBuf]) -> Option<NamespaceHandle> {
        for dir in dirs {
            for pid in Proc::cgroup_procs(dir, PROCS_TRIED) {
                let Ok(key) = self.proc.key_of(pid) else { continue };
                if let Ok(d) = std::fs::File::open(self.proc.pid_dir(pid)) {
                    return Some(NamespaceHandle { dir: d, key });
                }
            }
        }
        None
    }

    /// The namespace of the owner `id` whose cgroups are `dirs`; None when none of its
    /// processes can be read, or the agent's own namespace is unknown.
    fn read(&mut self, id: &(OwnerKind, String), dirs: &[PathBuf]) -> Option<PodNetwork> {
        let own = self.own?;
        for attempt in 0..2 {
            if attempt == 1 || !self.handles.contains_key(id) {
                self.handles.remove(id);
                let h = self.open(dirs)?;
                self.handles.insert(id.clone(), h);
            }
            let h = &self.handles[id];
            if h.key == own {
                return Some(PodNetwork { host: true, interfaces: None, key: h.key });
            }
            self.buf.clear();
            match crate::sources::cgroups::read_file_at(&h.dir, c"net/dev", &mut self.buf) {
                Ok(()) => {
                    let key = h.key;
                    let interfaces = crate::sources::netns::parse_net_dev(&self.buf)
                        .ok()
                        .map(|now| self.carried.entry(id.clone()).or_default().add(key, now));
                    return Some(PodNetwork { host: false, interfaces, key });
                }
                // The process exited: find another.
                Err(_) => continue,
            }
        }
        None
    }

    /// Forgets the owners not in `live`.
    fn retain(&mut self, live: &HashSet<(OwnerKind, String)>) {
        self.handles.retain(|id, _| live.contains(id));
        self.carried.retain(|id, _| live.contains(id));
    }
}

/// Deepest cgroup level walked (kubelet's containers are at 4 or 5 below the root).
const MAX_DEPTH: usize = 8;

/// How often /var/log/pods is read again for pods it did not name (kubelet makes a pod's log
/// directory a moment after its cgroup; a pod may also have none). A pod not seen before is
/// looked up at once.
const NAMES_RETRY: Duration = Duration::from_secs(30);

struct Previous {
    by_cgroup: HashMap<u64, [u64; EVENT_COUNT]>,
    overflow: [u64; EVENT_COUNT],
    retired: [u64; EVENT_COUNT],
}

/// One row being added up.
#[derive(Default)]
struct Acc {
    events: [u64; EVENT_COUNT],
    cgroups: HashSet<u64>,
    /// The pod's own cgroup (or the unit's), for the resource files, if it still exists: its id
    /// and path.
    dir: Option<(u64, PathBuf)>,
    /// Every live cgroup of the row, to find a process in it.
    dirs: Vec<PathBuf>,
    qos: Option<&'static str>,
}

pub struct PodSampler {
    root: PathBuf,
    pod_logs: PathBuf,
    /// Cgroup id -> owner, for every cgroup seen alive or named at creation.
    known: HashMap<u64, Owner>,
    names: HashMap<String, PodName>,
    /// When /var/log/pods was last read, and the pods it did not name then.
    names_read: Option<Instant>,
    unnamed: HashSet<String>,
    previous: Option<Previous>,
    namespaces: NamespaceReader,
    /// Each live pod's (or unit's) own cgroup directory, open, by cgroup id.
    open_dirs: HashMap<u64, CgroupDir>,
    /// The walks of the tree, which trust the last walk's leaves while the cgroup_mkdir hook
    /// reports every cgroup made.
    tree: TreeWalk,
    /// Inserts the kernel's cgroup-name map refused, as last read (a refusal is a cgroup made
    /// without a report).
    names_refused: u64,
}

/// What every pod row of an interval shares with its node row.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub node: &'a str,
    pub ts: SystemTime,
    /// Seconds since the previous row (None for the first).
    pub interval_s: Option<f64>,
}

impl PodSampler {
    /// `root`: the host's cgroup v2 tree; `pod_logs`: kubelet's /var/log/pods; `proc`: the
    /// host's /proc (the pids in cgroup.procs are the host's with hostPID).
    pub fn new(root: PathBuf, pod_logs: PathBuf, proc: Proc) -> Self {
        PodSampler {
            root,
            pod_logs,
            known: HashMap::new(),
            names: HashMap::new(),
            names_read: None,
            unnamed: HashSet::new(),
            previous: None,
            open_dirs: HashMap::new(),
            tree: TreeWalk::default(),
            names_refused: 0,
            namespaces: NamespaceReader {
                own: proc.own_key().ok(),
                proc,
                handles: HashMap::new(),
                carried: HashMap::new(),
                buf: String::new(),
            },
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Cgroups whose owner the sampler remembers (live ones, and removed ones until retired):
    /// what its memory grows with.
    pub fn tracked(&self) -> usize {
        self.known.len()
    }

    /// Every live cgroup: id -> path relative to the root (the root itself is ""). The walk
    /// trusts the last one's leaves only while every cgroup made since was reported by the
    /// cgroup_mkdir hook (`made`, its paths): the hook is attached and its map refused nothing
    /// (`refused`: the name map's refused inserts since the load, None if unread).
    fn walk(&mut self, ebpf: &EbpfCounters, made: &[(u64, String)], refused: Option<u64>) -> HashMap<u64, String> {
        let reported = ebpf.reports_new_cgroups() && refused == Some(self.names_refused);
        self.names_refused = refused.unwrap_or(0);
        if reported {
            for (_, path) in made {
                self.tree.made(path);
            }
        } else {
            self.tree.forget();
        }
        self.tree.walk(&self.root, MAX_DEPTH)
    }

    /// The next map read starts counting afresh (the last one failed).
    pub fn forget_baseline(&mut self) {
        self.previous = None;
    }

    /// The rows of one interval, from `snap` (read by the caller with the node row, and kept as
    /// the next interval's baseline); none on the first call, which only sets the baseline. Then
    /// retires cgroups that are gone and quiet.
    pub fn sample(
        &mut self,
        ebpf: &mut EbpfCounters,
        snap: CgroupSnapshot,
        names_refused: Option<u64>,
        gauges: Option<&ConnGauges>,
        stamp: Stamp<'_>,
    ) -> Vec<PodRow> {
        let Stamp { node, ts, interval_s } = stamp;
        // Named after the read: any cgroup in the snapshot was created before it.
        let made = ebpf.take_new_cgroups();
        for (id, path) in &made {
            self.known.insert(*id, classify(path));
        }
        let live = self.walk(ebpf, &made, names_refused);
        for (id, path) in &live {
            self.known.entry(*id).or_insert_with(|| classify(path));
        }
        // A cgroup that is gone and holds no counts is forgotten at once (one that counted is
        // forgotten when it is retired below), so the sampler's memory follows the live tree.
        self.known.retain(|id, _| live.contains_key(id) || snap.by_cgroup.contains_key(id));
        let Some(prev) = self.previous.take() else {
            self.previous =
                Some(Previous { by_cgroup: snap.by_cgroup, overflow: snap.overflow, retired: snap.retired });
            return Vec::new();
        };

        let key = |owner: &Owner| match owner {
            Owner::Pod { uid, .. } => (OwnerKind::Pod, uid.clone()),
            Owner::Service { unit } => (OwnerKind::Service, unit.clone()),
            Owner::Other => (OwnerKind::Other, "other".to_owned()),
        };
        let mut rows: BTreeMap<(OwnerKind, String), Acc> = BTreeMap::new();
        rows.entry((OwnerKind::Other, "other".to_owned())).or_default();
        // Every live pod and service has a row, counting or not.
        for (id, path) in &live {
            let owner = &self.known[id];
            let acc = rows.entry(key(owner)).or_default();
            acc.cgroups.insert(*id);
            if !matches!(owner, Owner::Other) {
                acc.dirs.push(self.root.join(path));
            }
            match owner {
                Owner::Pod { qos, container: None, .. } => {
                    acc.dir = Some((*id, self.root.join(path)));
                    acc.qos = Some(qos.as_str());
                }
                Owner::Pod { qos, .. } => acc.qos = acc.qos.or(Some(qos.as_str())),
                Owner::Service { unit } if path.strip_prefix("system.slice/") == Some(unit.as_str()) => {
                    acc.dir = Some((*id, self.root.join(path)));
                }
                _ => {}
            }
        }
        let mut quiet_and_gone = Vec::new();
        for (id, cur) in &snap.by_cgroup {
            let before = prev.by_cgroup.get(id);
            let owner = self.known.get(id).cloned().unwrap_or(Owner::Other);
            let acc = rows.entry(key(&owner)).or_default();
            if let Owner::Pod { qos, .. } = &owner {
                acc.qos = acc.qos.or(Some(qos.as_str()));
            }
            let mut moved = false;
            for i in 0..EVENT_COUNT {
                let d = cur[i].wrapping_sub(before.map_or(0, |b| b[i]));
                acc.events[i] = acc.events[i].wrapping_add(d);
                moved |= d != 0;
            }
            if moved {
                acc.cgroups.insert(*id);
            }
            if !live.contains_key(id) && !moved && before.is_some() && *id != 0 {
                quiet_and_gone.push(*id);
            }
        }
        let other = rows.get_mut(&(OwnerKind::Other, "other".to_owned())).expect("inserted above");
        for i in 0..EVENT_COUNT {
            let d = snap.overflow[i]
                .wrapping_sub(prev.overflow[i])
                .wrapping_add(snap.retired[i].wrapping_sub(prev.retired[i]));
            other.events[i] = other.events[i].wrapping_add(d);
        }

        let unnamed = |names: &HashMap<String, PodName>| -> HashSet<String> {
            rows.keys()
                .filter(|(k, uid)| *k == OwnerKind::Pod && !names.contains_key(uid))
                .map(|(_, uid)| uid.clone())
                .collect()
        };
        let missing = unnamed(&self.names);
        let retry = self.names_read.is_none_or(|t| t.elapsed() >= NAMES_RETRY);
        if missing.iter().any(|uid| retry || !self.unnamed.contains(uid)) {
            self.names = pod_names(&self.pod_logs);
            self.names_read = Some(Instant::now());
            self.unnamed = unnamed(&self.names);
        }
        let counted: [bool; EVENT_COUNT] = Event::ALL.map(|e| ebpf.is_live(e) && ebpf.is_counted_per_cgroup(e));
        self.namespaces.retain(&rows.keys().cloned().collect());
        self.open_dirs.retain(|id, _| live.contains_key(id));
        let out: Vec<PodRow> = rows
            .into_iter()
            .map(|(id, mut acc)| {
                let (kind, owner) = id.clone();
                let name = (kind == OwnerKind::Pod).then(|| self.names.get(&owner)).flatten();
                let open_dir = acc.dir.as_ref().and_then(|(id, path)| match self.open_dirs.entry(*id) {
                    std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(e) => CgroupDir::open(path).ok().map(|d| e.insert(d)),
                });
                let mut resources = open_dir.map_or([None; RESOURCE_COUNT], CgroupDir::read_resources);
                acc.dirs.sort();
                let network = (kind != OwnerKind::Other).then(|| self.namespaces.read(&id, &acc.dirs)).flatten();
                if let Some(n) = network.as_ref().filter(|n| !n.host) {
                    fill_network(&mut resources, n, gauges, ebpf);
                }
                let mut events = [None; EVENT_COUNT];
                for i in 0..EVENT_COUNT {
                    if counted[i] {
                        events[i] = Some(acc.events[i] as i64);
                    }
                }
                let mut row = PodRow {
                    node: node.to_owned(),
                    ts,
                    interval_s,
                    kind,
                    namespace: name.map(|n| n.namespace.clone()),
                    pod: name.map(|n| n.name.clone()),
                    qos: acc.qos.map(str::to_owned),
                    cgroups: i32::try_from(acc.cgroups.len()).ok(),
                    network: network.map(|n| if n.host { NETWORK_HOST } else { NETWORK_OWN }.to_owned()),
                    owner,
                    events,
                    resources,
                    ..PodRow::blank()
                };
                row.workload = Some(crate::sources::workload::workload_of(&row));
                row
            })
            .collect();

        // Gone and quiet for a whole interval: out of the kernel map, its counts kept as
        // retired (already counted in the rows up to now).
        let mut next = Previous { by_cgroup: snap.by_cgroup, overflow: snap.overflow, retired: snap.retired };
        if !quiet_and_gone.is_empty() {
            debug!(cgroups = quiet_and_gone.len(), "retiring removed cgroups from the per-cgroup map");
            ebpf.retire(&quiet_and_gone);
            for id in &quiet_and_gone {
                if let Some(counts) = next.by_cgroup.remove(id) {
                    for (r, c) in next.retired.iter_mut().zip(counts) {
                        *r = r.wrapping_add(c);
                    }
                }
                self.known.remove(id);
            }
        }
        self.previous = Some(next);
        out
    }
}

/// A row's network columns from its own namespace: interface counters and TCP gauges.
fn fill_network(
    resources: &mut [Option<i64>; RESOURCE_COUNT],
    n: &PodNetwork,
    gauges: Option<&ConnGauges>,
    ebpf: &EbpfCounters,
) {
    if let Some(i) = n.interfaces {
        for (r, v) in [
            (Res::NetReceive, i.receive_bytes),
            (Res::ReceivePackets, i.receive_packets),
            (Res::ReceiveDrop, i.receive_drop),
            (Res::ReceiveErrs, i.receive_errs),
            (Res::NetTransmit, i.transmit_bytes),
            (Res::TransmitPackets, i.transmit_packets),
        ] {
            resources[r as usize] = Some(v);
        }
    }
    let conns = gauges.zip(ebpf.netns_balance(n.key).ok()).and_then(|(g, b)| g.namespace(n.key, b));
    if let Some(c) = conns {
        resources[Res::EstConn as usize] = Some(c.established);
        resources[Res::LisConn as usize] = Some(c.listening);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(bytes: i64) -> InterfaceTotals {
        InterfaceTotals { transmit_bytes: bytes, transmit_packets: bytes / 1000, ..InterfaceTotals::default() }
    }

    #[test]
    fn counters_go_on_across_a_recreated_namespace_and_never_fall_back() {
        let mut c = Carried::default();
        assert_eq!(c.add(7, sent(5_000)), sent(5_000));
        assert_eq!(c.add(7, sent(9_000)), sent(9_000));
        // The sandbox is recreated: a new namespace (new key) that has already sent 20,000
        // bytes, more than the old one's last reading: its whole count is added.
        assert_eq!(c.add(8, sent(20_000)), sent(29_000));
        assert_eq!(c.add(8, sent(21_000)), sent(30_000));
        // Recreated again under a reused inode number: its counters are below the last reading.
        assert_eq!(c.add(8, sent(1_000)), sent(31_000));
    }
}
