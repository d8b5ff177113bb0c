//! The maps every program writes to, and the two operations on them. A map is named by its
//! static's identifier, which must equal agent-common's MAP_* constant that the agent looks it
//! up by (`#[map]` takes no constant); agent/src/ebpf.rs's tests check the built object holds
//! every MAP_* name, so a rename on one side only fails `cargo test`.
use agent_common::{
    tcp_state, CgroupCounting, CgroupName, Event, EventCounts, KernelCondition, SocketCall, TcpStateBalance,
    CGROUP_EVENT_COUNTS_DEFAULT_MAX, CGROUP_NAMES_MAX, KERNEL_CONDITION_COUNT, SOCKET_CALLS_IN_FLIGHT_MAX,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_probe_read_kernel},
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

/// Set by the agent before loading (agent-common's GLOBAL_CGROUP_COUNTING).
#[unsafe(no_mangle)]
static CGROUP_COUNTING: CgroupCounting =
    CgroupCounting { enabled: 0, socket_owner_known: 0, sk_state: 0, sk_cgroup: 0, cgroup_kn: 0, kernfs_id: 0 };

#[inline(always)]
fn settings() -> CgroupCounting {
    // SAFETY: a plain global the loader fills in; read_volatile keeps the compiler from folding
    // the zero initialiser into the code.
    unsafe { core::ptr::read_volatile(&CGROUP_COUNTING) }
}

/// Adds `n` to this CPU's counter for `event`.
#[inline(always)]
pub fn count(event: Event, n: u64) {
    if let Some(counts) = EVENT_COUNTS.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs, and the index is
        // a valid Event discriminant, below EVENT_COUNT.
        unsafe { (*counts).counts[event as usize] += n };
    }
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

/// Counts `event` for the node and for the cgroup of the task it happens in (fork, exec, exit,
/// socket creation: the hooks that run in the causing task's context).
#[inline(always)]
pub fn count_task<C: EbpfContext>(ctx: &C, event: Event, n: u64) {
    count(event, n);
    if settings().enabled != 0 {
        // SAFETY: no arguments; returns the current task's cgroup v2 id.
        count_cgroup(ctx, unsafe { bpf_get_current_cgroup_id() }, event, n);
    }
}

/// Counts `event` for the node and for the cgroup that owns socket `sk` (TCP state changes and
/// resets, which the kernel often handles in softirq, on behalf of no particular task). A
/// socket with no owner (NULL, a time-wait or request socket, no cgroup) counts under id 0, the
/// "other" row. Without the BTF offsets nothing is counted per cgroup.
#[inline(always)]
pub fn count_socket<C: EbpfContext>(ctx: &C, sk: u64, event: Event, n: u64) {
    count(event, n);
    let s = settings();
    if s.enabled != 0 && s.socket_owner_known != 0 {
        count_cgroup(ctx, socket_owner(&s, sk).unwrap_or(0), event, n);
    }
}

/// The cgroup v2 id of the task that created socket `sk` (sockets accepted from a listener
/// inherit the listener's), read through the BTF offsets the agent supplied.
#[inline(always)]
fn socket_owner(s: &CgroupCounting, sk: u64) -> Option<u64> {
    const TCP_TIME_WAIT: u8 = 6;
    const TCP_NEW_SYN_RECV: u8 = 12;
    if sk == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a bad one is an error, not a fault.
    unsafe {
        let state: u8 = bpf_probe_read_kernel((sk + u64::from(s.sk_state)) as *const u8).ok()?;
        // Only full sockets carry sk_cgrp_data.
        if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
            return None;
        }
        let cgroup: u64 = bpf_probe_read_kernel((sk + u64::from(s.sk_cgroup)) as *const u64).ok()?;
        if cgroup == 0 {
            return None;
        }
        let kn: u64 = bpf_probe_read_kernel((cgroup + u64::from(s.cgroup_kn)) as *const u64).ok()?;
        if kn == 0 {
            return None;
        }
        bpf_probe_read_kernel((kn + u64::from(s.kernfs_id)) as *const u64).ok()
    }
}

#[inline(always)]
fn count_cgroup<C: EbpfContext>(ctx: &C, id: u64, event: Event, n: u64) {
    if let Some(counts) = CGROUP_EVENT_COUNTS.get_ptr_mut(id) {
        // SAFETY: this CPU's copy of the entry; the index is a valid Event discriminant.
        unsafe { (*counts).counts[event as usize] += n };
        return;
    }
    // First event of this cgroup (or since the agent removed its entry).
    let zero = EventCounts::default();
    let inserted = CGROUP_EVENT_COUNTS.insert(id, zero, u64::from(BPF_NOEXIST));
    if let Some(counts) = CGROUP_EVENT_COUNTS.get_ptr_mut(id) {
        // SAFETY: as above. Another CPU may have inserted it first (EEXIST): the lookup finds it.
        unsafe { (*counts).counts[event as usize] += n };
        return;
    }
    // The map is full: the event goes to the overflow counts, which the agent adds to "other".
    if let Some(counts) = CGROUP_OVERFLOW.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*counts).counts[event as usize] += n };
    }
    if inserted.is_err() && first_time(KernelCondition::CgroupMapFull) {
        warn!(ctx, "cgroup map full: events of new cgroups are counted as overflow (raise --cgroup-map-entries)");
    }
}

/// True the first time `condition` is reported: a lookup answers every later call, and of CPUs
/// racing on the first, the kernel lets only one insert with BPF_NOEXIST succeed.
#[inline(always)]
pub fn first_time(condition: KernelCondition) -> bool {
    let key = condition as u32;
    CONDITIONS_LOGGED.get_ptr(key).is_none() && CONDITIONS_LOGGED.insert(key, 1, u64::from(BPF_NOEXIST)).is_ok()
}
