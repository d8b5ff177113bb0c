//! sock:inet_sock_set_state, TCP only: counts entries into the states the features name, failed
//! active opens (SYN_SENT -> CLOSE), and keeps the per-state balance from which the agent
//! derives est_conn and lis_conn without walking the connection table: one balance for the node,
//! and one per network namespace (keyed as agent-common's `NetnsKeying` says) so that the
//! agent seeds and re-checks each namespace against that namespace's own table.
//!
//! Two attachments of the same logic; the agent uses the first that loads:
//! - `inet_sock_set_state` (BTF raw tracepoint, kernel 5.5+ with BTF): the kernel passes the
//!   socket and the states directly, and `bpf_skc_to_tcp_sock()` tells TCP apart (it returns
//!   NULL for SCTP and MPTCP sockets) without reading any struct field by offset. No trace
//!   record is built, which makes it several times cheaper per event.
//! - `inet_sock_set_state_tp` (classic tracepoint): reads the record's stable `protocol` field.
use agent_common::{tcp_state, Event};
use aya_ebpf::{
    helpers::generated::bpf_skc_to_tcp_sock,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::maps::{btf_socket_netns, move_netns_tcp_state, move_tcp_state, moves_netns_balance, socket_netns, Counter};

// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
const SKADDR_OFFSET: usize = 8;
const OLDSTATE_OFFSET: usize = 16;
const NEWSTATE_OFFSET: usize = 20;
const PROTOCOL_OFFSET: usize = 30;
const IPPROTO_TCP: u16 = 6;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // The tracepoint's arguments are (const struct sock *, int oldstate, int newstate).
    let (sk, old, new): (*mut core::ffi::c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    // SAFETY: sk is the BTF-typed socket pointer the verifier tracks; the helper checks it.
    if unsafe { bpf_skc_to_tcp_sock(sk) }.is_null() {
        return 0;
    }
    let counter = || Counter::for_btf_socket(&ctx, sk as *const u8);
    tcp_state_changed(&ctx, counter, || btf_socket_netns(sk as *const u8), old, new);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets of this tracepoint's fixed-layout record.
    let fields = unsafe {
        (
            ctx.read_at::<u16>(PROTOCOL_OFFSET),
            ctx.read_at::<i32>(OLDSTATE_OFFSET),
            ctx.read_at::<i32>(NEWSTATE_OFFSET),
            ctx.read_at::<u64>(SKADDR_OFFSET),
        )
    };
    if let (Ok(IPPROTO_TCP), Ok(old), Ok(new), Ok(sk)) = fields {
        // The tracepoint fires for full sockets only: no state check before reading the owner.
        tcp_state_changed(&ctx, || Counter::for_socket(&ctx, sk, true), || socket_netns(sk), old, new);
    }
    0
}

/// Counts the transition for the node and for the socket's owner (most transitions after the
/// first happen in softirq, on behalf of no particular task); `counter` resolves the owner,
/// once, and only when something is counted; `netns` resolves the socket's namespace key, only
/// when the move changes a namespace's ESTABLISHED or LISTEN balance.
#[inline(always)]
fn tcp_state_changed<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    counter: impl FnOnce() -> Counter,
    netns: impl FnOnce() -> u32,
    old: i32,
    new: i32,
) {
    move_tcp_state(old, new);
    if moves_netns_balance(old, new) {
        move_netns_tcp_state(ctx, netns(), old, new);
    }
    let entered = match new {
        tcp_state::ESTABLISHED => Some(Event::TcpToEstablished),
        tcp_state::SYN_SENT => Some(Event::TcpToSynSent),
        tcp_state::SYN_RECV => Some(Event::TcpToSynRecv),
        tcp_state::CLOSE => Some(Event::TcpToClose),
        tcp_state::LISTEN => Some(Event::TcpToListen),
        _ => None,
    };
    let failed = old == tcp_state::SYN_SENT && new == tcp_state::CLOSE;
    if entered.is_none() && !failed {
        return;
    }
    let counter = counter();
    if let Some(event) = entered {
        counter.add(event, 1);
    }
    if failed {
        counter.add(Event::TcpConnFailed, 1);
    }
}
