//! Raw tracepoint tcp_receive_reset: counts every RST received on a socket into
//! `Event::TcpRstRecv`, per cgroup under the socket's owner (the kernel handles it in softirq,
//! whichever task happens to be running).
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count_socket;

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    // The tracepoint's only argument is the `struct sock *` that received the reset.
    let sk: u64 = ctx.arg(0);
    count_socket(&ctx, sk, Event::TcpRstRecv, 1);
    0
}
