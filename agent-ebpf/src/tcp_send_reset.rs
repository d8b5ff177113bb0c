//! tcp:tcp_send_reset: counts every RST the host sends into `Event::TcpRstSent`, per cgroup under
//! the owner of the socket it answers for. A reset to a SYN for a closed port has no socket
//! (NULL), and one sent from a time-wait or request socket has no owner: those count under
//! "other".
//!
//! Two attachments of the same logic; the agent uses the first that loads:
//! - `tcp_send_reset` (BTF raw tracepoint): the socket is a BTF-typed pointer, its owner read by
//!   direct loads the verifier checks;
//! - `tcp_send_reset_raw` (raw tracepoint, kernels without BTF): the owner read with
//!   bpf_probe_read_kernel.
use agent_common::Event;
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::maps::Counter;

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    // The tracepoint's first argument is `const struct sock *sk` (NULL when there is none).
    let sk: *const u8 = ctx.arg(0);
    Counter::for_btf_socket_any(&ctx, sk).add(Event::TcpRstSent, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    Counter::for_socket(&ctx, sk, false).add(Event::TcpRstSent, 1);
    0
}
