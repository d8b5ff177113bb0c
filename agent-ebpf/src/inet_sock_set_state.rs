//! Tracepoint sock:inet_sock_set_state, TCP only: counts entries into the states the features
//! name, failed active opens (SYN_SENT -> CLOSE), and keeps the per-state balance from which the
//! agent derives est_conn and lis_conn without walking the connection table.
//!
//! A classic tracepoint (not a raw one) because its `protocol` field is stable ABI, while the
//! raw tracepoint only hands over a `struct sock *` whose layout we may not assume.
use agent_common::{tcp_state, Event};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::maps::{count, move_tcp_state};

// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
const OLDSTATE_OFFSET: usize = 16;
const NEWSTATE_OFFSET: usize = 20;
const PROTOCOL_OFFSET: usize = 30;
const IPPROTO_TCP: u16 = 6;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets of this tracepoint's fixed-layout record.
    let protocol: u16 = unsafe { ctx.read_at(PROTOCOL_OFFSET)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = unsafe { ctx.read_at(OLDSTATE_OFFSET)? };
    let new: i32 = unsafe { ctx.read_at(NEWSTATE_OFFSET)? };

    move_tcp_state(old, new);
    let entered = match new {
        tcp_state::ESTABLISHED => Some(Event::TcpToEstablished),
        tcp_state::SYN_SENT => Some(Event::TcpToSynSent),
        tcp_state::SYN_RECV => Some(Event::TcpToSynRecv),
        tcp_state::CLOSE => Some(Event::TcpToClose),
        tcp_state::LISTEN => Some(Event::TcpToListen),
        _ => None,
    };
    if let Some(event) = entered {
        count(event, 1);
    }
    if old == tcp_state::SYN_SENT && new == tcp_state::CLOSE {
        count(Event::TcpConnFailed, 1);
    }
    Ok(())
}
