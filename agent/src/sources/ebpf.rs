//! Loads the embedded eBPF object, attaches each program, and reads the per-CPU counters.
//!
//! Each program feeds a known set of columns. A program that fails to attach leaves its columns
//! NULL and is named in one warning; the rest keep counting (unless --require-ebpf).
use std::collections::HashMap as StdHashMap;

use agent_common::{
    tcp_state, CgroupCounting, CgroupName, Event, EventCounts, KernelCondition, NetnsKeying, NetnsTcpBalance,
    TcpStateBalance, EVENT_COUNT, GLOBAL_CGROUP_COUNTING, GLOBAL_NETNS_KEYING, KERNEL_CONDITION_COUNT,
    MAP_CGROUP_EVENT_COUNTS, MAP_CGROUP_NAMES, MAP_CGROUP_OVERFLOW, MAP_EVENT_COUNTS, MAP_INSERTS_REFUSED,
    MAP_NETNS_TCP_BALANCE, MAP_SOCKET_CALLS_IN_FLIGHT, MAP_TCP_STATE_BALANCE,
};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, FExit, KProbe, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tracing::{debug, info, warn};

/// The compiled programs, built by build.rs from agent-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf.o"));

/// Why the eBPF side, or one of its programs, is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("map {name} missing or of the wrong type: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("reading map {name}: {source}")]
    Read { name: &'static str, source: aya::maps::MapError },
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },
    #[error("opening the cgroup v2 root {path}: {source}")]
    CgroupRoot { path: std::path::PathBuf, source: std::io::Error },
}

impl EbpfError {
    /// A hint for the most common cause, to go with the error in the log.
    pub fn hint(&self) -> &'static str {
        let text = format!("{self:?}");
        if text.contains("perf_event_open") && perf_event_paranoid().is_some_and(|p| p > 2) {
            "kernel.perf_event_paranoid is above 2 (Debian's and Ubuntu's default): classic tracepoints, which --socket-hook syscalls uses, open only with CAP_SYS_ADMIN there; keep --socket-hook auto, or set the sysctl to 2"
        } else if text.contains("PermissionDenied")
            || text.contains("EPERM")
            || text.contains("Operation not permitted")
        {
            if text.contains("cgroup_skb") {
                "counting bytes (--count-bytes) needs CAP_NET_ADMIN beside CAP_BPF: attaching a program to a cgroup is a network-admin operation (deploy/overlays/count-bytes)"
            } else {
                "the agent needs root or CAP_BPF + CAP_PERFMON to load eBPF programs"
            }
        } else if text.contains("tracefs") || text.contains("tracing") {
            "classic tracepoints need tracefs: mount -t tracefs nodev /sys/kernel/tracing"
        } else {
            "see the error above"
        }
    }
}

/// `kernel.perf_event_paranoid`; above 2 is a Debian and Ubuntu patch that refuses
/// perf_event_open (classic tracepoints) without CAP_SYS_ADMIN.
fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").ok()?.trim().parse().ok()
}

enum Hook {
    Raw(&'static str),
    Classic(&'static str, &'static str),
    /// fexit on a kernel function (needs BTF and fentry/fexit support).
    FExit(&'static str),
    /// kprobe on a kernel function (needs CONFIG_KPROBES).
    KProbe(&'static str),
    /// A BTF raw tracepoint, or when that cannot load (no kernel BTF, kernel < 5.5) the named
    /// raw-tracepoint program of the same logic.
    BtfOrRaw {
        tracepoint: &'static str,
        raw_program: &'static str,
    },
    /// A BTF raw tracepoint, or when that cannot load (no kernel BTF, kernel < 5.5) the named
    /// classic-tracepoint program of the same logic.
    BtfOr {
        tracepoint: &'static str,
        classic_program: &'static str,
        category: &'static str,
    },
}

/// A program in the object, where it attaches, and the columns it feeds.
struct Probe {
    program: &'static str,
    hook: Hook,
    feeds: &'static [Event],
}

const SOCKET_EVENTS: &[Event] = &Event::SOCKET_ALLOC;

const PROBES: &[Probe] = &[
    Probe { program: "sched_process_fork", hook: Hook::Raw("sched_process_fork"), feeds: &[Event::Fork] },
    Probe { program: "sched_process_exec", hook: Hook::Raw("sched_process_exec"), feeds: &[Event::Exec] },
    Probe { program: "sched_process_exit", hook: Hook::Raw("sched_process_exit"), feeds: &[Event::Exit] },
    Probe {
        program: "inet_sock_set_state",
        hook: Hook::BtfOr {
            tracepoint: "inet_sock_set_state",
            classic_program: "inet_sock_set_state_tp",
            category: "sock",
        },
        feeds: &Event::TCP_STATE,
    },
    Probe {
        program: "tcp_send_reset",
        hook: Hook::BtfOrRaw { tracepoint: "tcp_send_reset", raw_program: "tcp_send_reset_raw" },
        feeds: &[Event::TcpRstSent],
    },
    Probe {
        program: "tcp_receive_reset",
        hook: Hook::BtfOrRaw { tracepoint: "tcp_receive_reset", raw_program: "tcp_receive_reset_raw" },
        feeds: &[Event::TcpRstRecv],
    },
    Probe { program: "writeback_dirty_folio", hook: Hook::Raw("writeback_dirty_folio"), feeds: &[Event::FolioDirtied] },
];

/// Names cgroups as they are created (per-cgroup counting only).
const CGROUP_NAMER: &[Probe] =
    &[Probe { program: "cgroup_mkdir", hook: Hook::Classic("cgroup", "cgroup_mkdir"), feeds: &[] }];

/// Socket creations, counted where they happen: fexit on `__sock_create`.
const SOCKET_FEXIT: &[Probe] =
    &[Probe { program: "sock_create_fexit", hook: Hook::FExit("__sock_create"), feeds: SOCKET_EVENTS }];

/// Socket creations on kernels with kprobes but no fexit.
const SOCKET_KPROBE: &[Probe] = &[Probe {
    program: "sock_post_create_kprobe",
    hook: Hook::KProbe("security_socket_post_create"),
    feeds: SOCKET_EVENTS,
}];

/// The syscall-tracepoint fallback: four hooks and a hash map, and every syscall of every
/// thread on the node takes the kernel's slow path while any syscall tracepoint is enabled.
const SOCKET_SYSCALLS: &[Probe] = &[
    // Exit hooks first: an enter hook without its exit would fill the in-flight map.
    Probe { program: "sys_exit_socket", hook: Hook::Classic("syscalls", "sys_exit_socket"), feeds: SOCKET_EVENTS },
    Probe {
        program: "sys_exit_socketpair",
        hook: Hook::Classic("syscalls", "sys_exit_socketpair"),
        feeds: SOCKET_EVENTS,
    },
    Probe { program: "sys_enter_socket", hook: Hook::Classic("syscalls", "sys_enter_socket"), feeds: SOCKET_EVENTS },
    Probe {
        program: "sys_enter_socketpair",
        hook: Hook::Classic("syscalls", "sys_enter_socketpair"),
        feeds: SOCKET_EVENTS,
    },
];

/// Cumulative counts since the programs were loaded, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbpfSnapshot {
    pub events: [u64; EVENT_COUNT],
    pub tcp_balance: [i64; tcp_state::COUNT],
}

impl EbpfSnapshot {
    pub fn get(&self, e: Event) -> u64 {
        self.events[e as usize]
    }

    pub fn established(&self) -> i64 {
        self.tcp_balance[tcp_state::ESTABLISHED as usize]
    }

    pub fn listening(&self) -> i64 {
        self.tcp_balance[tcp_state::LISTEN as usize]
    }
}

/// One network namespace's ESTABLISHED and LISTEN balance since the programs were loaded,
/// summed over CPUs (see agent-common's `NetnsTcpBalance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetnsBalance {
    pub established: i64,
    pub listening: i64,
}

impl NetnsBalance {
    fn sum(per_cpu: &aya::maps::PerCpuValues<NetnsTcpBalance>) -> Self {
        per_cpu.iter().fold(NetnsBalance::default(), |s, b| NetnsBalance {
            established: s.established.wrapping_add(b.established),
            listening: s.listening.wrapping_add(b.listening),
        })
    }
}

/// The loaded programs and the maps they count into. Dropping it detaches everything.
pub struct EbpfCounters {
    object: Ebpf,
    events: PerCpuArray<MapData, EventCounts>,
    balance: PerCpuArray<MapData, TcpStateBalance>,
    netns_balance: PerCpuHashMap<MapData, u32, NetnsTcpBalance>,
    /// Inserts each map that can fill refused, by [`KernelCondition`].
    inserts_refused: PerCpuArray<MapData, u64>,
    /// Whether the TCP hook can tell a socket's namespace (kernel BTF has the path).
    netns_keyed: bool,
    /// Which counters have a program attached.
    live: [bool; EVENT_COUNT],
    tcp_states_live: bool,
    failures: Vec<EbpfError>,
    /// Every attached program: (program, hook kind, attach point, columns it feeds).
    programs: Vec<ProgramInfo>,
    cgroups: Option<CgroupMaps>,
}

/// What per-cgroup counting covers on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerCgroup {
    /// TCP state changes and resets are attributed to the socket's owner (needs kernel BTF).
    pub socket_events: bool,
}

/// The events counted by socket owner rather than by the running task.
pub fn is_socket_event(e: Event) -> bool {
    Event::TCP_STATE.contains(&e) || matches!(e, Event::TcpRstSent | Event::TcpRstRecv)
}

/// A loaded program's kernel statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub recursion_misses: u64,
}

/// An attached program, for the log and /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    pub program: &'static str,
    /// "raw_tp", "tracepoint", "tp_btf", "fexit" or "kprobe".
    pub hook: &'static str,
    /// The kernel event or function.
    pub target: &'static str,
    pub columns: Vec<&'static str>,
}

/// Where socket creations (the sock_alloc_* columns) are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketHook {
    /// fexit on `__sock_create`, else a kprobe on `security_socket_post_create`, else not
    /// counted (the columns are NULL; the syscall fallback is never chosen by itself).
    #[default]
    Auto,
    /// Only the fexit program.
    Fexit,
    /// Only the kprobe program.
    Kprobe,
    /// The syscall-tracepoint fallback (sys_enter/exit_socket{,pair}): works on any kernel with
    /// tracefs, and slows every syscall on the node (BENCHMARKS.md).
    Syscalls,
    /// Not counted.
    Off,
}

/// How to load the programs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Use classic tracepoints even where a BTF tracepoint would load (for kernels whose BTF
    /// tracepoints misbehave, and to test the fallback).
    pub classic_tracepoints: bool,
    pub socket_hook: SocketHook,
    /// Count every event per cgroup too, in a map of this many cgroups (None: node counts only).
    pub cgroup_map_entries: Option<u32>,
    /// Size the other maps that can fill (cgroup names, namespaces' TCP balances, socket calls
    /// in flight) at this many entries instead of their defaults: tests fill them on purpose.
    pub small_maps: Option<u32>,
}

/// Cumulative per-cgroup counts, summed over CPUs, from one pass over the map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSnapshot {
    /// By cgroup v2 id (0: events whose socket had no owner).
    pub by_cgroup: StdHashMap<u64, [u64; EVENT_COUNT]>,
    /// Events of cgroups that found the map full (they belong to the "other" row).
    pub overflow: [u64; EVENT_COUNT],
    /// Final counts of cgroups the agent has removed from the map (see [`EbpfCounters::retire`]).
    pub retired: [u64; EVENT_COUNT],
}

impl CgroupSnapshot {
    /// The node-wide total of `e`: every cgroup's, the overflow and the retired counts.
    pub fn total(&self, e: Event) -> u64 {
        let i = e as usize;
        self.by_cgroup.values().fold(self.overflow[i].wrapping_add(self.retired[i]), |sum, c| sum.wrapping_add(c[i]))
    }
}

/// The per-cgroup maps, when per-cgroup counting is on.
struct CgroupMaps {
    counts: PerCpuHashMap<MapData, u64, EventCounts>,
    overflow: PerCpuArray<MapData, EventCounts>,
    names: HashMap<MapData, u64, CgroupName>,
    /// Counts of entries removed from `counts`, so the totals never go backwards.
    retired: [u64; EVENT_COUNT],
    socket_owner_known: bool,
    /// Forwards the programs' aya-log records (rare conditions) to our log.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// The cgroup_mkdir record layout the program was written against (format file fields).
const CGROUP_MKDIR_FIELDS: [(&str, &str); 4] = [
    ("int root", "offset:8;"),
    ("int level", "offset:12;"),
    ("u64 id", "offset:16;"),
    ("__data_loc char[] path", "offset:24;"),
];

/// Whether this kernel's cgroup_mkdir tracepoint has the layout the program reads.
fn cgroup_mkdir_layout_matches() -> bool {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/cgroup/cgroup_mkdir/format")).ok());
    let Some(format) = format else { return false };
    CGROUP_MKDIR_FIELDS
        .iter()
        .all(|(field, offset)| format.lines().any(|l| l.contains(&format!("field:{field};")) && l.contains(offset)))
}

/// Where the TCP hook finds a socket's namespace key on this kernel, from its BTF; unknown
/// without BTF (every socket is then keyed as unresolved, and the connection gauges see the
/// agent's own namespace only).
fn netns_keying(raw: Option<&[u8]>) -> NetnsKeying {
    let Some(raw) = raw else {
        warn!("no kernel BTF: est_conn and lis_conn are seeded from the agent's network namespace only");
        return NetnsKeying::default();
    };
    match crate::sources::btf::socket_netns_offsets(raw) {
        Ok(o) => NetnsKeying {
            known: 1,
            sk_net: o.sk_net,
            net_proc_net_stat: o.net_proc_net_stat,
            pde_low_ino: o.pde_low_ino,
        },
        Err(e) => {
            warn!(error = %e, "the kernel's BTF does not say where a socket's network namespace is: est_conn and lis_conn are seeded from the agent's network namespace only");
            NetnsKeying::default()
        }
    }
}

/// The per-cgroup settings for this kernel: the socket-owner and task offsets from its BTF, if it
/// has them.
fn cgroup_counting(raw: Option<&[u8]>) -> CgroupCounting {
    let mut c = CgroupCounting { enabled: 1, ..Default::default() };
    let Some(raw) = raw else {
        warn!("per-pod TCP and reset counts unavailable: no kernel BTF to find a socket's cgroup (those pod columns are NULL)");
        return c;
    };
    match crate::sources::btf::socket_owner_offsets(raw) {
        Ok(o) => {
            c.socket_owner_known = 1;
            (c.sk_state, c.sk_cgroup, c.cgroup_kn, c.kernfs_id) = (o.sk_state, o.sk_cgroup, o.cgroup_kn, o.kernfs_id);
            // The task path ends in the same cgroup.kn -> kernfs_node.id.
            match crate::sources::btf::task_cgroup_offsets(raw) {
                Ok(t) => {
                    c.task_path_known = 1;
                    (c.task_cgroups, c.css_set_dfl_cgrp) = (t.task_cgroups, t.css_set_dfl_cgrp);
                }
                Err(e) => {
                    debug!(error = %e, "task cgroup path not in BTF; the task hooks call bpf_get_current_cgroup_id()")
                }
            }
        }
        Err(e) => warn!(
            error = %e,
            "per-pod TCP and reset counts unavailable: the kernel's BTF does not say where a socket's cgroup is (those pod columns are NULL)"
        ),
    }
    c
}

/// What `--socket-hook auto` tells the user on a kernel where neither socket hook loads.
pub const SOCKET_HOOK_UNAVAILABLE: &str = "socket creations are not counted (sock_alloc_* columns NULL): this kernel allows neither fexit nor kprobes; --socket-hook syscalls counts them with syscall tracepoints, which slow every syscall on the node (about +30 % for a cheap syscall, BENCHMARKS.md)";

impl EbpfCounters {
    /// Loads the object and attaches every program it can. Fails only when nothing can be
    /// loaded; programs that fail alone are listed in [`EbpfCounters::failures`].
    pub fn load() -> Result<Self, EbpfError> {
        Self::load_with(LoadOptions::default())
    }

    pub fn load_with(options: LoadOptions) -> Result<Self, EbpfError> {
        // The kernel's BTF (5.5 MB here, parsed into about twice that) is the start-up's peak of
        // memory, so only one copy of it is alive at a time: the raw file for our own field
        // offsets, dropped; then aya's parse, used by the loader and the BTF tracepoints, and
        // dropped before we return. EbpfLoader::new() parses one of its own, which is dropped at
        // once (btf(None)): two parses alive together were a third of the peak (BENCHMARKS.md,
        // "A node full of pods").
        let raw_btf = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| debug!(error = %e, "/sys/kernel/btf/vmlinux unreadable"))
            .ok();
        let counting = match options.cgroup_map_entries {
            Some(_) => cgroup_counting(raw_btf.as_deref()),
            None => CgroupCounting::default(),
        };
        let keying = netns_keying(raw_btf.as_deref());
        drop(raw_btf);
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        let btf = Btf::from_sys_fs().map_err(|e| debug!(error = %e, "no kernel BTF; BTF tracepoints unavailable")).ok();
        loader.btf(btf.as_ref()).override_global(GLOBAL_CGROUP_COUNTING, &counting, true).override_global(
            GLOBAL_NETNS_KEYING,
            &keying,
            true,
        );
        if let Some(entries) = options.cgroup_map_entries {
            loader.map_max_entries(MAP_CGROUP_EVENT_COUNTS, entries.max(1));
        }
        if let Some(entries) = options.small_maps {
            for map in [MAP_CGROUP_NAMES, MAP_NETNS_TCP_BALANCE, MAP_SOCKET_CALLS_IN_FLIGHT] {
                loader.map_max_entries(map, entries.max(1));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(EbpfError::Load)?;
        let mut live = [false; EVENT_COUNT];
        let mut failures = Vec::new();
        let mut programs = Vec::new();
        let mut attach_all = |ebpf: &mut Ebpf, probes: &[Probe], failures: &mut Vec<EbpfError>| -> bool {
            let mut all = true;
            let mut attached = Vec::new();
            for probe in probes {
                match attach(ebpf, probe, options, btf.as_ref()) {
                    Ok(kind) => attached.push((probe, kind)),
                    Err(e) => {
                        failures.push(e);
                        all = false;
                    }
                }
            }
            // A group feeds its columns only when every program of it is attached.
            for (probe, kind) in attached {
                programs.push(ProgramInfo {
                    program: probe.program,
                    hook: kind,
                    target: probe.target(),
                    columns: probe
                        .feeds
                        .iter()
                        .map(|e| feature_schema::COLUMNS[feature_schema::event_column(*e)])
                        .collect(),
                });
                if all {
                    for e in probe.feeds {
                        live[*e as usize] = true;
                    }
                }
            }
            all
        };
        for probe in PROBES {
            attach_all(&mut ebpf, std::slice::from_ref(probe), &mut failures);
        }
        match options.socket_hook {
            SocketHook::Auto => {
                // Each try's failure is expected on some kernels: logged at debug, not a failure.
                let mut tried = Vec::new();
                let ok =
                    attach_all(&mut ebpf, SOCKET_FEXIT, &mut tried) || attach_all(&mut ebpf, SOCKET_KPROBE, &mut tried);
                for e in &tried {
                    debug!(error = %e, "socket hook unavailable");
                }
                if !ok {
                    info!("{SOCKET_HOOK_UNAVAILABLE}");
                }
            }
            SocketHook::Fexit => {
                attach_all(&mut ebpf, SOCKET_FEXIT, &mut failures);
            }
            SocketHook::Kprobe => {
                attach_all(&mut ebpf, SOCKET_KPROBE, &mut failures);
            }
            SocketHook::Syscalls => {
                attach_all(&mut ebpf, SOCKET_SYSCALLS, &mut failures);
            }
            SocketHook::Off => info!("socket creations are not counted (--socket-hook off): sock_alloc_* columns NULL"),
        }
        let cgroups = match options.cgroup_map_entries {
            Some(_) => {
                if cgroup_mkdir_layout_matches() {
                    attach_all(&mut ebpf, CGROUP_NAMER, &mut failures);
                } else {
                    warn!("the cgroup_mkdir tracepoint is missing or has another layout: a cgroup removed within one interval may go unnamed (its counts go to the other row)");
                }
                let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        debug!(error = %e, "no aya-log records from the programs");
                        None
                    }
                };
                Some(CgroupMaps {
                    counts: take(&mut ebpf, MAP_CGROUP_EVENT_COUNTS)?,
                    overflow: take_map(&mut ebpf, MAP_CGROUP_OVERFLOW)?,
                    names: take(&mut ebpf, MAP_CGROUP_NAMES)?,
                    retired: [0; EVENT_COUNT],
                    socket_owner_known: counting.socket_owner_known != 0,
                    logger,
                })
            }
            None => None,
        };
        drop(btf);
        release_freed_memory();
        let tcp_states_live = live[Event::TcpToEstablished as usize];
        let events = take_map(&mut ebpf, MAP_EVENT_COUNTS)?;
        let balance = take_map(&mut ebpf, MAP_TCP_STATE_BALANCE)?;
        let netns_balance = take(&mut ebpf, MAP_NETNS_TCP_BALANCE)?;
        let inserts_refused = take_map(&mut ebpf, MAP_INSERTS_REFUSED)?;
        Ok(EbpfCounters {
            object: ebpf,
            events,
            balance,
            netns_balance,
            inserts_refused,
            netns_keyed: keying.known != 0,
            live,
            tcp_states_live,
            failures,
            programs,
            cgroups,
        })
    }

    /// Whether events are counted per cgroup, and whether the TCP/reset events among them are
    /// (they need the socket-owner offsets from BTF).
    pub fn per_cgroup(&self) -> Option<PerCgroup> {
        self.cgroups.as_ref().map(|c| PerCgroup { socket_events: c.socket_owner_known })
    }

    /// Whether `event` is counted per cgroup.
    pub fn is_counted_per_cgroup(&self, event: Event) -> bool {
        match &self.cgroups {
            None => false,
            Some(c) => c.socket_owner_known || !is_socket_event(event),
        }
    }

    /// Reads the node's counters and, with per-cgroup counting on, every cgroup's. The node's
    /// count of each per-cgroup event is the sum over the cgroups in the same read, so the
    /// per-cgroup rows add up to the node row exactly.
    pub fn read_all(&mut self) -> Result<(EbpfSnapshot, Option<CgroupSnapshot>), EbpfError> {
        let mut node = self.read()?;
        let Some(maps) = self.cgroups.as_mut() else {
            return Ok((node, None));
        };
        if let Some(logger) = maps.logger.as_mut() {
            logger.flush();
        }
        let mut snap = CgroupSnapshot { retired: maps.retired, ..Default::default() };
        // The node's totals, summed in the same pass: overflow, retired, every cgroup.
        let mut total = [0u64; EVENT_COUNT];
        for entry in maps.counts.iter() {
            // Only this thread removes entries (retire), so a failed lookup is a failed read:
            // a sum without that cgroup would be short, and the next one long by its whole
            // count. The interval gets no counts instead.
            let (id, per_cpu) = entry.map_err(|source| EbpfError::Read { name: MAP_CGROUP_EVENT_COUNTS, source })?;
            let mut sum = [0u64; EVENT_COUNT];
            add_cpus(&mut sum, &per_cpu);
            add(&mut total, &sum);
            snap.by_cgroup.insert(id, sum);
        }
        let per_cpu =
            maps.overflow.get(&0, 0).map_err(|source| EbpfError::Read { name: MAP_CGROUP_OVERFLOW, source })?;
        add_cpus(&mut snap.overflow, &per_cpu);
        add(&mut total, &snap.overflow);
        add(&mut total, &snap.retired);
        for e in Event::ALL {
            if maps.socket_owner_known || !is_socket_event(e) {
                node.events[e as usize] = total[e as usize];
            }
        }
        Ok((node, Some(snap)))
    }

    /// Removes cgroups from the map (gone, and quiet for a whole interval), keeping their final
    /// counts in the retired totals so that no total goes backwards.
    pub fn retire(&mut self, ids: &[u64]) {
        let Some(maps) = self.cgroups.as_mut() else { return };
        for id in ids {
            if let Ok(per_cpu) = maps.counts.get(id, 0) {
                if maps.counts.remove(id).is_ok() {
                    add_cpus(&mut maps.retired, &per_cpu);
                }
            }
        }
    }

    /// Paths of cgroups created since the last call (from the cgroup_mkdir hook), relative to
    /// the cgroup v2 root; each is removed from the map once read.
    pub fn take_new_cgroups(&mut self) -> Vec<(u64, String)> {
        let Some(maps) = self.cgroups.as_mut() else { return Vec::new() };
        let ids: Vec<u64> = maps.names.keys().filter_map(Result::ok).collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(name) = maps.names.get(&id, 0) {
                let len = (name.len as usize).min(name.path.len());
                out.push((id, String::from_utf8_lossy(&name.path[..len]).into_owned()));
            }
            let _ = maps.names.remove(&id);
        }
        out
    }

    /// Whether the cgroup_mkdir hook reports the cgroups made ([`EbpfCounters::take_new_cgroups`]).
    pub fn reports_new_cgroups(&self) -> bool {
        self.programs.iter().any(|p| p.program == CGROUP_NAMER[0].program)
    }

    /// How each attached program is hooked: (program, "raw_tp" | "tracepoint" | "tp_btf").
    pub fn hooks(&self) -> Vec<(&'static str, &'static str)> {
        self.programs.iter().map(|p| (p.program, p.hook)).collect()
    }

    /// The loaded object, for programs attached after the load (net_bytes.rs).
    pub(crate) fn object_mut(&mut self) -> &mut Ebpf {
        &mut self.object
    }

    /// Records a program attached after the load: it is listed with the others, and the
    /// columns it feeds are live.
    pub(crate) fn mark_attached(
        &mut self,
        program: &'static str,
        hook: &'static str,
        target: &'static str,
        feeds: &[Event],
    ) {
        self.programs.push(ProgramInfo {
            program,
            hook,
            target,
            columns: feeds.iter().map(|e| feature_schema::COLUMNS[feature_schema::event_column(*e)]).collect(),
        });
        for e in feeds {
            self.live[*e as usize] = true;
        }
    }

    /// Programs that could not be attached.
    pub fn failures(&self) -> &[EbpfError] {
        &self.failures
    }

    /// Whether `event` is counted by an attached program.
    pub fn is_live(&self, event: Event) -> bool {
        self.live[event as usize]
    }

    /// Whether the TCP state balance (est_conn / lis_conn gauges) is maintained.
    pub fn tcp_states_live(&self) -> bool {
        self.tcp_states_live
    }

    /// Number of attached programs.
    pub fn attached(&self) -> usize {
        self.programs.len()
    }

    /// The kernel's id of each attached program, by our program name (the kernel keeps only
    /// 15 characters of a name), for reading its statistics.
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        self.programs
            .iter()
            .filter_map(|p| {
                let id = self.object.program(p.program)?.info().ok()?.id();
                Some((p.program, id))
            })
            .collect()
    }

    /// Each loaded program's run count and recursion misses, from /proc/self/fdinfo of its
    /// descriptor (run counts move only while kernel.bpf_stats_enabled is 1; recursion misses,
    /// Linux 5.12+, always). A miss is an event the kernel did not run the program for because
    /// the same program was already running on that CPU (a softirq interrupting it on the TCP
    /// paths): that event is not counted.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        use std::os::fd::{AsFd, AsRawFd};
        let field = |text: &str, key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        self.object
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().as_raw_fd();
                let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                Some(ProgramStats {
                    program: name.to_owned(),
                    run_count: field(&text, "run_cnt:").unwrap_or(0),
                    recursion_misses: field(&text, "recursion_misses:").unwrap_or(0),
                })
            })
            .collect()
    }

    /// For each map that can fill (by its name), the inserts it refused since the programs were
    /// loaded because it was full: each one lost something (see agent-common's
    /// `KernelCondition`).
    pub fn maps_full(&self) -> Result<[(&'static str, u64); KERNEL_CONDITION_COUNT as usize], EbpfError> {
        let mut out = KernelCondition::ALL.map(|c| (c.map(), 0));
        for (condition, slot) in KernelCondition::ALL.iter().zip(out.iter_mut()) {
            let per_cpu = self
                .inserts_refused
                .get(&(*condition as u32), 0)
                .map_err(|source| EbpfError::Read { name: MAP_INSERTS_REFUSED, source })?;
            slot.1 = per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
        }
        Ok(out)
    }

    /// Every attached program, with its hook and the columns it feeds.
    pub fn programs(&self) -> &[ProgramInfo] {
        &self.programs
    }

    /// Whether the TCP balance is kept per network namespace (see agent-common's `NetnsKeying`).
    pub fn netns_keyed(&self) -> bool {
        self.netns_keyed && self.tcp_states_live
    }

    /// The balance of namespace `key` (zero if none of its sockets has moved since the load).
    pub fn netns_balance(&self, key: u32) -> Result<NetnsBalance, EbpfError> {
        match self.netns_balance.get(&key, 0) {
            Ok(per_cpu) => Ok(NetnsBalance::sum(&per_cpu)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(NetnsBalance::default()),
            Err(source) => Err(EbpfError::Read { name: MAP_NETNS_TCP_BALANCE, source }),
        }
    }

    /// Every namespace's balance, by key (one pass over the map).
    pub fn netns_balances(&self) -> Result<StdHashMap<u32, NetnsBalance>, EbpfError> {
        let mut out = StdHashMap::new();
        for entry in self.netns_balance.iter() {
            let (key, per_cpu) = entry.map_err(|source| EbpfError::Read { name: MAP_NETNS_TCP_BALANCE, source })?;
            out.insert(key, NetnsBalance::sum(&per_cpu));
        }
        Ok(out)
    }

    /// Sums every CPU's counters: two map lookups in all.
    pub fn read(&self) -> Result<EbpfSnapshot, EbpfError> {
        let mut snap = EbpfSnapshot { events: [0; EVENT_COUNT], tcp_balance: [0; tcp_state::COUNT] };
        let per_cpu = self.events.get(&0, 0).map_err(|source| EbpfError::Read { name: MAP_EVENT_COUNTS, source })?;
        add_cpus(&mut snap.events, &per_cpu);
        let per_cpu =
            self.balance.get(&0, 0).map_err(|source| EbpfError::Read { name: MAP_TCP_STATE_BALANCE, source })?;
        for cpu in per_cpu.iter() {
            for (sum, v) in snap.tcp_balance.iter_mut().zip(cpu.by_state) {
                *sum = sum.wrapping_add(v);
            }
        }
        Ok(snap)
    }
}

/// Adds every CPU's event counts into `into` (wrapping, like the kernel's counters).
fn add_cpus(into: &mut [u64; EVENT_COUNT], per_cpu: &aya::maps::PerCpuValues<EventCounts>) {
    for cpu in per_cpu.iter() {
        add(into, &cpu.counts);
    }
}

fn add(into: &mut [u64; EVENT_COUNT], counts: &[u64; EVENT_COUNT]) {
    for (sum, v) in into.iter_mut().zip(counts) {
        *sum = sum.wrapping_add(*v);
    }
}

/// Takes map `name` out of the object as the map type `M`.
fn take<M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<M, EbpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(EbpfError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
    M::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

fn take_map<V: aya::Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<PerCpuArray<MapData, V>, EbpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(EbpfError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
    PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

impl Probe {
    /// The kernel event or function the probe attaches to.
    fn target(&self) -> &'static str {
        match self.hook {
            Hook::Raw(t) | Hook::Classic(_, t) | Hook::FExit(t) | Hook::KProbe(t) => t,
            Hook::BtfOr { tracepoint, .. } | Hook::BtfOrRaw { tracepoint, .. } => tracepoint,
        }
    }
}

/// Attaches one probe; returns the kind of hook used.
fn attach(ebpf: &mut Ebpf, probe: &Probe, options: LoadOptions, btf: Option<&Btf>) -> Result<&'static str, EbpfError> {
    match probe.hook {
        Hook::Raw(tp) => attach_raw(ebpf, probe.program, tp).map(|()| "raw_tp"),
        Hook::Classic(category, name) => attach_classic(ebpf, probe.program, category, name).map(|()| "tracepoint"),
        Hook::FExit(function) => {
            let btf = btf
                .ok_or(EbpfError::Program { program: probe.program, source: aya::programs::ProgramError::NotLoaded })?;
            attach_fexit(ebpf, probe.program, function, btf).map(|()| "fexit")
        }
        Hook::KProbe(function) => attach_kprobe(ebpf, probe.program, function).map(|()| "kprobe"),
        Hook::BtfOrRaw { tracepoint, raw_program } => {
            if let (false, Some(btf)) = (options.classic_tracepoints, btf) {
                match attach_btf(ebpf, probe.program, tracepoint, btf) {
                    Ok(()) => return Ok("tp_btf"),
                    Err(e) => {
                        debug!(error = %e, fallback = raw_program, "BTF tracepoint unavailable; using the raw tracepoint")
                    }
                }
            }
            attach_raw(ebpf, raw_program, tracepoint).map(|()| "raw_tp")
        }
        Hook::BtfOr { tracepoint, classic_program, category } => {
            if let (false, Some(btf)) = (options.classic_tracepoints, btf) {
                match attach_btf(ebpf, probe.program, tracepoint, btf) {
                    Ok(()) => return Ok("tp_btf"),
                    Err(e) => {
                        debug!(error = %e, fallback = classic_program, "BTF tracepoint unavailable; using the classic tracepoint")
                    }
                }
            }
            attach_classic(ebpf, classic_program, category, tracepoint).map(|()| "tracepoint")
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut aya::programs::Program, EbpfError> {
    ebpf.program_mut(program).ok_or(EbpfError::Program { program, source: aya::programs::ProgramError::NotLoaded })
}

fn attach_raw(ebpf: &mut Ebpf, name: &'static str, tp: &str) -> Result<(), EbpfError> {
    let err = |source| EbpfError::Program { program: name, source };
    let p: &mut RawTracePoint = program(ebpf, name)?.try_into().map_err(err)?;
    p.load().map_err(err)?;
    p.attach(tp).map_err(err)?;
    Ok(())
}

fn attach_classic(ebpf: &mut Ebpf, name: &'static str, category: &str, tp: &str) -> Result<(), EbpfError> {
    let err = |source| EbpfError::Program { program: name, source };
    let p: &mut TracePoint = program(ebpf, name)?.try_into().map_err(err)?;
    p.load().map_err(err)?;
    p.attach(category, tp).map_err(err)?;
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, name: &'static str, function: &str, btf: &Btf) -> Result<(), EbpfError> {
    let err = |source| EbpfError::Program { program: name, source };
    let p: &mut FExit = program(ebpf, name)?.try_into().map_err(err)?;
    p.load(function, btf).map_err(err)?;
    p.attach().map_err(err)?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, name: &'static str, function: &str) -> Result<(), EbpfError> {
    let err = |source| EbpfError::Program { program: name, source };
    let p: &mut KProbe = program(ebpf, name)?.try_into().map_err(err)?;
    p.load().map_err(err)?;
    p.attach(function, 0).map_err(err)?;
    Ok(())
}

fn attach_btf(ebpf: &mut Ebpf, name: &'static str, tp: &str, btf: &Btf) -> Result<(), EbpfError> {
    let err = |source| EbpfError::Program { program: name, source };
    let p: &mut BtfTracePoint = program(ebpf, name)?.try_into().map_err(err)?;
    p.load(tp, btf).map_err(err)?;
    p.attach().map_err(err)?;
    Ok(())
}

/// Hands the heap freed after loading (parsed BTF, ELF sections) back to the kernel: glibc
/// keeps freed memory in its arenas otherwise, and the agent's RSS would carry it forever.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is mounted (classic tracepoints need
/// it to look up their ids). Best effort: without it those programs fail to attach and say so.
pub fn ensure_tracefs() {
    let mounted = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
        .iter()
        .any(|p| std::path::Path::new(p).is_dir());
    if mounted {
        return;
    }
    // SAFETY: constant NUL-terminated strings; mount(2) has no other preconditions.
    let rc = unsafe {
        libc::mount(c"nodev".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if rc == 0 {
        tracing::info!("mounted tracefs at /sys/kernel/tracing");
    } else {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not mount tracefs");
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        MAP_CGROUP_EVENT_COUNTS, MAP_CGROUP_NAMES, MAP_CGROUP_NAME_SCRATCH, MAP_CGROUP_OVERFLOW, MAP_CONDITIONS_LOGGED,
        MAP_EVENT_COUNTS, MAP_INSERTS_REFUSED, MAP_NETNS_TCP_BALANCE, MAP_SOCKET_CALLS_IN_FLIGHT,
        MAP_TCP_STATE_BALANCE,
    };

    /// The embedded object names every map the agent looks up (as a NUL-terminated symbol).
    #[test]
    fn the_object_holds_every_map_the_agent_looks_up() {
        for name in [
            MAP_EVENT_COUNTS,
            MAP_TCP_STATE_BALANCE,
            MAP_NETNS_TCP_BALANCE,
            MAP_SOCKET_CALLS_IN_FLIGHT,
            MAP_CGROUP_EVENT_COUNTS,
            MAP_CGROUP_OVERFLOW,
            MAP_CGROUP_NAMES,
            MAP_CGROUP_NAME_SCRATCH,
            MAP_CONDITIONS_LOGGED,
            MAP_INSERTS_REFUSED,
            agent_common::MAP_ADDRESS_CLASSES,
            agent_common::GLOBAL_CGROUP_COUNTING,
            agent_common::GLOBAL_NETNS_KEYING,
        ] {
            let symbol = [name.as_bytes(), b"\0"].concat();
            assert!(super::OBJECT.windows(symbol.len()).any(|w| w == symbol), "no map {name} in the eBPF object");
        }
    }
}
