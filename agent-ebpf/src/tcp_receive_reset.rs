//! tcp:tcp_receive_reset: counts every RST received on a socket into `Event::TcpRstRecv`, per
//! cgroup under the socket's owner (the kernel handles it in softirq, whichever task happens to
//! be running). tcp_reset() is only called on full sockets.
//!
//! Two attachments of the same logic; the agent uses the first that loads:
//! - `tcp_receive_reset` (BTF raw tracepoint): the owner read by direct loads;
//! - `tcp_receive_reset_raw` (raw tracepoint, kernels without BTF): with bpf_probe_read_kernel.
use agent_common::Event;
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::maps::Counter;

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    // The tracepoint's only argument is the `struct sock *` that received the reset.
    let sk: *const u8 = ctx.arg(0);
    Counter::for_btf_socket(&ctx, sk).add(Event::TcpRstRecv, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    Counter::for_socket(&ctx, sk, true).add(Event::TcpRstRecv, 1);
    0
}
