//! The maps every program writes to, and the two operations on them. A map is named by its
//! static's identifier, which must equal agent-common's MAP_* constant that the agent looks it
//! up by (`#[map]` takes no constant); agent/src/ebpf.rs's tests check the built object holds
//! every MAP_* name, so a rename on one side only fails `cargo test`.
use agent_common::{tcp_state, Event, EventCounts, SocketCall, TcpStateBalance, SOCKET_CALLS_IN_FLIGHT_MAX};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};

#[map]
static EVENT_COUNTS: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TCP_STATE_BALANCE: PerCpuArray<TcpStateBalance> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static SOCKET_CALLS_IN_FLIGHT: HashMap<u64, SocketCall> = HashMap::with_max_entries(SOCKET_CALLS_IN_FLIGHT_MAX, 0);

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
