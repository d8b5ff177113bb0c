//! The maps every program writes to, and the two operations on them. A map is named by its
//! static's identifier, which must equal agent-common's MAP_* constant that the agent looks it
//! up by (`#[map]` takes no constant); agent/src/sources/ebpf.rs's tests check the built object holds
//! every MAP_* name, so a rename on one side only fails `cargo test`.
use agent_common::{
    tcp_state, CgroupCounting, CgroupName, Event, EventCounts, KernelCondition, NetnsKeying, NetnsTcpBalance,
    SocketCall, TcpStateBalance, CGROUP_EVENT_COUNTS_DEFAULT_MAX, CGROUP_NAMES_MAX, KERNEL_CONDITION_COUNT,
    NETNS_TCP_BALANCE_MAX, NETNS_UNRESOLVED, SOCKET_CALLS_IN_FLIGHT_MAX,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_probe_read_kernel, generated::bpf_get_current_task_btf},
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    EbpfContext,
};
use aya_log_ebpf::warn;

#[map]
static EVENT_COUNTS: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TCP_STATE_BALANCE: PerCpuArray<TcpStateBalance> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NETNS_TCP_BALANCE: PerCpuHashMap<u32, NetnsTcpBalance> =
    PerCpuHashMap::with_max_entries(NETNS_TCP_BALANCE_MAX, 0);

#[map]
pub static SOCKET_CALLS_IN_FLIGHT: HashMap<u64, SocketCall> = HashMap::with_max_entries(SOCKET_CALLS_IN_FLIGHT_MAX, 0);

#[map]
static CGROUP_EVENT_COUNTS: PerCpuHashMap<u64, EventCounts> =
    PerCpuHashMap::with_max_entries(CGROUP_EVENT_COUNTS_DEFAULT_MAX, 0);

#[map]
static CGROUP_OVERFLOW: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static CGROUP_NAMES: HashMap<u64, CgroupName> = HashMap::with_max_entries(CGROUP_NAMES_MAX, 0);

#[map]
pub static CGROUP_NAME_SCRATCH: PerCpuArray<CgroupName> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CONDITIONS_LOGGED: HashMap<u32, u8> = HashMap::with_max_entries(KERNEL_CONDITION_COUNT, 0);

#[map]
static INSERTS_REFUSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_CONDITION_COUNT, 0);

/// Set by the agent before loading (agent-common's GLOBAL_CGROUP_COUNTING).
#[unsafe(no_mangle)]
static CGROUP_COUNTING: CgroupCounting = CgroupCounting {
    enabled: 0,
    socket_owner_known: 0,
    sk_state: 0,
    sk_cgroup: 0,
    cgroup_kn: 0,
    kernfs_id: 0,
    task_path_known: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    _pad: 0,
};

/// Set by the agent before loading (agent-common's GLOBAL_NETNS_KEYING).
#[unsafe(no_mangle)]
static NETNS_KEYING: NetnsKeying = NetnsKeying { known: 0, sk_net: 0, net_proc_net_stat: 0, pde_low_ino: 0 };

/// One field of [`CGROUP_COUNTING`] (one load, not the whole struct).
#[inline(always)]
fn setting(field: &u32) -> u32 {
    // SAFETY: a field of a plain global the loader fills in; read_volatile keeps the compiler
    // from folding the zero initialiser into the code.
    unsafe { core::ptr::read_volatile(field) }
}

/// Whether socket events are counted per cgroup: counting is on and the owner offsets are known.
#[inline(always)]
fn socket_counting() -> bool {
    setting(&CGROUP_COUNTING.enabled) != 0 && setting(&CGROUP_COUNTING.socket_owner_known) != 0
}

/// Moves one socket from `old` to `new` in this CPU's TCP state balance.
#[inline(always)]
pub fn move_tcp_state(old: i32, new: i32) {
    let Some(balance) = TCP_STATE_BALANCE.get_ptr_mut(0) else {
        return;
    };
    let valid = |s: i32| s >= 0 && (s as usize) < tcp_state::COUNT;
    // A socket accepted from a listener is a clone that starts out with the listener's state,
    // so the kernel reports it as LISTEN -> SYN_RECV. The listener itself stays in LISTEN: the
    // clone enters SYN_RECV without leaving anything.
    let is_new_child = old == tcp_state::LISTEN && new == tcp_state::SYN_RECV;
    // SAFETY: this CPU's slot, indices bounds-checked above.
    unsafe {
        if valid(old) && !is_new_child {
            (*balance).by_state[old as usize] -= 1;
        }
        if valid(new) {
            (*balance).by_state[new as usize] += 1;
        }
    }
}

/// Whether a move from `old` to `new` changes a namespace's ESTABLISHED or LISTEN balance (an
/// accepted child's LISTEN -> SYN_RECV leaves nothing, see [`move_tcp_state`]).
#[inline(always)]
pub fn moves_netns_balance(old: i32, new: i32) -> bool {
    let counted = |s: i32| s == tcp_state::ESTABLISHED || s == tcp_state::LISTEN;
    counted(new) || (counted(old) && !(old == tcp_state::LISTEN && new == tcp_state::SYN_RECV))
}

/// Moves one socket of namespace `key` from `old` to `new` in this CPU's balance of that
/// namespace; a namespace that finds the map full counts under [`NETNS_UNRESOLVED`] (logged once).
#[inline(always)]
pub fn move_netns_tcp_state<C: EbpfContext>(ctx: &C, key: u32, old: i32, new: i32) {
    let mut slot = NETNS_TCP_BALANCE.get_ptr_mut(key);
    if slot.is_none() {
        let inserted = NETNS_TCP_BALANCE.insert(key, NetnsTcpBalance::default(), u64::from(BPF_NOEXIST));
        // Another CPU may have inserted it first (EEXIST): the lookup finds it.
        slot = NETNS_TCP_BALANCE.get_ptr_mut(key);
        if slot.is_none() {
            if inserted.is_err() && map_full(KernelCondition::NetnsMapFull) {
                warn!(ctx, "network namespace map full: new namespaces' sockets count as unresolved");
            }
            let _ = NETNS_TCP_BALANCE.insert(NETNS_UNRESOLVED, NetnsTcpBalance::default(), u64::from(BPF_NOEXIST));
            slot = NETNS_TCP_BALANCE.get_ptr_mut(NETNS_UNRESOLVED);
        }
    }
    let Some(b) = slot else {
        return;
    };
    let is_new_child = old == tcp_state::LISTEN && new == tcp_state::SYN_RECV;
    // SAFETY: this CPU's copy of a map value that lives as long as the program.
    unsafe {
        if !is_new_child {
            match old {
                tcp_state::ESTABLISHED => (*b).established -= 1,
                tcp_state::LISTEN => (*b).listening -= 1,
                _ => {}
            }
        }
        match new {
            tcp_state::ESTABLISHED => (*b).established += 1,
            tcp_state::LISTEN => (*b).listening += 1,
            _ => {}
        }
    }
}

/// The namespace key of a BTF-typed full socket by direct loads the verifier checks against the
/// kernel's BTF (`skc_net.net`, then `proc_net_stat`, then `low_ino`); [`NETNS_UNRESOLVED`] when
/// the offsets are unknown or a pointer is NULL.
#[inline(always)]
pub fn btf_socket_netns(sk: *const u8) -> u32 {
    if setting(&NETNS_KEYING.known) == 0 || sk.is_null() {
        return NETNS_UNRESOLVED;
    }
    // SAFETY: `sk` is the verifier-tracked `struct sock *` of a BTF tracepoint; each load is at
    // a read-only offset matched against BTF, and a fault reads zero.
    unsafe {
        let net = core::ptr::read(sk.add(setting(&NETNS_KEYING.sk_net) as usize) as *const *const u8);
        if net.is_null() {
            return NETNS_UNRESOLVED;
        }
        let pde = core::ptr::read(net.add(setting(&NETNS_KEYING.net_proc_net_stat) as usize) as *const *const u8);
        if pde.is_null() {
            return NETNS_UNRESOLVED;
        }
        core::ptr::read(pde.add(setting(&NETNS_KEYING.pde_low_ino) as usize) as *const u32)
    }
}

/// [`btf_socket_netns`] for a socket address from a classic tracepoint record, read with
/// bpf_probe_read_kernel.
#[inline(always)]
pub fn socket_netns(sk: u64) -> u32 {
    if setting(&NETNS_KEYING.known) == 0 || sk == 0 {
        return NETNS_UNRESOLVED;
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a bad one is an error, not a fault.
    unsafe {
        let read_ptr = |at: u64| bpf_probe_read_kernel(at as *const u64).ok().filter(|p| *p != 0);
        let Some(net) = read_ptr(sk + u64::from(setting(&NETNS_KEYING.sk_net))) else {
            return NETNS_UNRESOLVED;
        };
        let Some(pde) = read_ptr(net + u64::from(setting(&NETNS_KEYING.net_proc_net_stat))) else {
            return NETNS_UNRESOLVED;
        };
        bpf_probe_read_kernel((pde + u64::from(setting(&NETNS_KEYING.pde_low_ino))) as *const u32)
            .unwrap_or(NETNS_UNRESOLVED)
    }
}

/// Where a hook's events go, resolved once per invocation: the node-wide counts (per-cgroup
/// counting off, or a socket event without the owner offsets), a cgroup's entry, or the overflow
/// counts (the cgroup map is full). When per-cgroup counting covers an event it is counted in
/// the cgroup map only: the agent's node total is the sum of that map (and the overflow and the
/// retired counts), which makes the per-pod rows add up to the node row exactly, and saves the
/// node map's update on every event.
pub enum Counter {
    Node,
    Cgroup(*mut EventCounts),
    Overflow,
}

impl Counter {
    /// Adds `n` to this CPU's count of `event` wherever the counter points.
    #[inline(always)]
    pub fn add(&self, event: Event, n: u64) {
        let slot = match self {
            Counter::Node => EVENT_COUNTS.get_ptr_mut(0),
            Counter::Cgroup(p) => Some(*p),
            Counter::Overflow => CGROUP_OVERFLOW.get_ptr_mut(0),
        };
        if let Some(counts) = slot {
            // SAFETY: this CPU's copy of a map value that lives as long as the program; the
            // index is a valid Event discriminant, below EVENT_COUNT.
            unsafe { (*counts).counts[event as usize] += n };
        }
    }

    /// The counter of the task running now (fork, exec, exit, socket creation: the hooks that
    /// run in the causing task's context).
    #[inline(always)]
    pub fn for_task<C: EbpfContext>(ctx: &C) -> Counter {
        if setting(&CGROUP_COUNTING.enabled) == 0 {
            return Counter::Node;
        }
        cgroup_counter(ctx, current_cgroup_id())
    }

    /// The counter of cgroup `id` (0: no cgroup, the "other" row), for hooks that are handed
    /// the cgroup id (the socket-buffer programs).
    #[inline(always)]
    pub fn for_cgroup<C: EbpfContext>(ctx: &C, id: u64) -> Counter {
        if setting(&CGROUP_COUNTING.enabled) == 0 {
            return Counter::Node;
        }
        cgroup_counter(ctx, id)
    }
    /// The counter of the cgroup that owns socket `sk` (TCP state changes and resets, which the
    /// kernel often handles in softirq, on behalf of no particular task). `full` says the hook
    /// only ever sees full sockets; otherwise a time-wait or request socket (which carry no
    /// owner) is told apart by its state first. A socket without an owner (NULL, time-wait,
    /// request, no cgroup) counts under id 0, the "other" row.
    #[inline(always)]
    pub fn for_socket<C: EbpfContext>(ctx: &C, sk: u64, full: bool) -> Counter {
        if !socket_counting() {
            return Counter::Node;
        }
        cgroup_counter(ctx, socket_owner(sk, full).unwrap_or(0))
    }
}

impl Counter {
    /// [`Counter::for_socket`] for a BTF-typed socket pointer (a tp_btf program's argument):
    /// the owner is read with direct loads, which the verifier checks against the kernel's BTF
    /// (the offsets are read-only globals, so it knows them), instead of three
    /// bpf_probe_read_kernel calls. The hook must only see full sockets.
    #[inline(always)]
    pub fn for_btf_socket<C: EbpfContext>(ctx: &C, sk: *const u8) -> Counter {
        if !socket_counting() {
            return Counter::Node;
        }
        cgroup_counter(ctx, btf_socket_owner(sk).unwrap_or(0))
    }

    /// [`Counter::for_btf_socket`] for a hook that may see no socket, or a time-wait or request
    /// socket (which carry no owner: "other"), told apart by their state first.
    #[inline(always)]
    pub fn for_btf_socket_any<C: EbpfContext>(ctx: &C, sk: *const u8) -> Counter {
        const TCP_TIME_WAIT: u8 = 6;
        const TCP_NEW_SYN_RECV: u8 = 12;
        if sk.is_null() {
            return Counter::for_btf_socket(ctx, sk);
        }
        // SAFETY: a direct load of `__sk_common.skc_state`, in every kind of socket, at a
        // read-only offset the verifier matches against the kernel's BTF.
        let state = unsafe { core::ptr::read(sk.add(setting(&CGROUP_COUNTING.sk_state) as usize)) };
        if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
            return Counter::for_btf_socket(ctx, core::ptr::null());
        }
        Counter::for_btf_socket(ctx, sk)
    }
}

/// The running task's cgroup v2 id: `current->cgroups->dfl_cgrp->kn->id` by direct loads the
/// verifier checks against BTF (about 60 ns cheaper per event than bpf_get_current_cgroup_id()
/// on this machine's kernel, BENCHMARKS.md), or the helper when the offsets are unknown.
#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: read-only globals the loader filled in; `task` is the verifier-tracked current
    // task, and each load is at a constant offset matched against BTF (a fault reads zero).
    unsafe {
        if setting(&CGROUP_COUNTING.task_path_known) == 0 {
            return bpf_get_current_cgroup_id();
        }
        let (task_cgroups, dfl_cgrp, cgroup_kn, kernfs_id) = (
            setting(&CGROUP_COUNTING.task_cgroups) as usize,
            setting(&CGROUP_COUNTING.css_set_dfl_cgrp) as usize,
            setting(&CGROUP_COUNTING.cgroup_kn) as usize,
            setting(&CGROUP_COUNTING.kernfs_id) as usize,
        );
        let task = bpf_get_current_task_btf() as *const u8;
        let css_set = core::ptr::read(task.add(task_cgroups) as *const *const u8);
        if css_set.is_null() {
            return 0;
        }
        let cgroup = core::ptr::read(css_set.add(dfl_cgrp) as *const *const u8);
        if cgroup.is_null() {
            return 0;
        }
        let kn = core::ptr::read(cgroup.add(cgroup_kn) as *const *const u8);
        if kn.is_null() {
            return 0;
        }
        core::ptr::read(kn.add(kernfs_id) as *const u64)
    }
}

/// The owner's cgroup id of a BTF-typed full socket, by direct loads (see
/// [`Counter::for_btf_socket`]).
#[inline(always)]
fn btf_socket_owner(sk: *const u8) -> Option<u64> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the verifier-tracked `struct sock *` of a BTF tracepoint; each load is at a
    // constant offset the verifier matches against the kernel's BTF (a pointer member, then a
    // pointer member, then the u64 id), and a fault on a bad pointer reads zero instead.
    unsafe {
        let (sk_cgroup, cgroup_kn, kernfs_id) = (
            setting(&CGROUP_COUNTING.sk_cgroup) as usize,
            setting(&CGROUP_COUNTING.cgroup_kn) as usize,
            setting(&CGROUP_COUNTING.kernfs_id) as usize,
        );
        let cgroup = core::ptr::read(sk.add(sk_cgroup) as *const *const u8);
        if cgroup.is_null() {
            return None;
        }
        let kn = core::ptr::read(cgroup.add(cgroup_kn) as *const *const u8);
        if kn.is_null() {
            return None;
        }
        Some(core::ptr::read(kn.add(kernfs_id) as *const u64))
    }
}

/// Counts one event of the running task: [`Counter::for_task`] then [`Counter::add`].
#[inline(always)]
pub fn count_task<C: EbpfContext>(ctx: &C, event: Event, n: u64) {
    Counter::for_task(ctx).add(event, n);
}

/// The cgroup v2 id of the task that created socket `sk` (sockets accepted from a listener
/// inherit the listener's), read through the BTF offsets the agent supplied.
#[inline(always)]
fn socket_owner(sk: u64, full: bool) -> Option<u64> {
    const TCP_TIME_WAIT: u8 = 6;
    const TCP_NEW_SYN_RECV: u8 = 12;
    if sk == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a bad one is an error, not a fault.
    unsafe {
        if !full {
            let state: u8 =
                bpf_probe_read_kernel((sk + u64::from(setting(&CGROUP_COUNTING.sk_state))) as *const u8).ok()?;
            // Only full sockets carry sk_cgrp_data.
            if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
                return None;
            }
        }
        let cgroup: u64 =
            bpf_probe_read_kernel((sk + u64::from(setting(&CGROUP_COUNTING.sk_cgroup))) as *const u64).ok()?;
        if cgroup == 0 {
            return None;
        }
        let kn: u64 =
            bpf_probe_read_kernel((cgroup + u64::from(setting(&CGROUP_COUNTING.cgroup_kn))) as *const u64).ok()?;
        if kn == 0 {
            return None;
        }
        bpf_probe_read_kernel((kn + u64::from(setting(&CGROUP_COUNTING.kernfs_id))) as *const u64).ok()
    }
}

/// The entry of cgroup `id`, inserted on its first event; the overflow counts when the map is
/// full (logged once).
#[inline(always)]
fn cgroup_counter<C: EbpfContext>(ctx: &C, id: u64) -> Counter {
    if let Some(counts) = CGROUP_EVENT_COUNTS.get_ptr_mut(id) {
        return Counter::Cgroup(counts);
    }
    // First event of this cgroup (or since the agent removed its entry).
    let inserted = CGROUP_EVENT_COUNTS.insert(id, EventCounts::default(), u64::from(BPF_NOEXIST));
    // Another CPU may have inserted it first (EEXIST): the lookup finds it.
    if let Some(counts) = CGROUP_EVENT_COUNTS.get_ptr_mut(id) {
        return Counter::Cgroup(counts);
    }
    if inserted.is_err() && map_full(KernelCondition::CgroupMapFull) {
        warn!(ctx, "cgroup map full: events of new cgroups are counted as overflow (raise --cgroup-map-entries)");
    }
    Counter::Overflow
}

/// Counts one insert refused by a full map (`condition` names it); true the first time, so the
/// caller logs it once.
#[inline(always)]
pub fn map_full(condition: KernelCondition) -> bool {
    if let Some(n) = INSERTS_REFUSED.get_ptr_mut(condition as u32) {
        // SAFETY: this CPU's slot of a map value that lives as long as the program.
        unsafe { *n += 1 };
    }
    first_time(condition)
}

/// True the first time `condition` is reported: a lookup answers every later call, and of CPUs
/// racing on the first, the kernel lets only one insert with BPF_NOEXIST succeed.
#[inline(always)]
fn first_time(condition: KernelCondition) -> bool {
    let key = condition as u32;
    CONDITIONS_LOGGED.get_ptr(key).is_none() && CONDITIONS_LOGGED.insert(key, 1, u64::from(BPF_NOEXIST)).is_ok()
}
