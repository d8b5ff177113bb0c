//! Raw tracepoint tcp_send_reset: counts every RST the host sends into `Event::TcpRstSent`, per
//! cgroup under the owner of the socket it answers for. A reset to a SYN for a closed port has
//! no socket (NULL), and one sent from a time-wait socket has no owner: both count under
//! "other".
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count_socket;

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    // The tracepoint's first argument is `const struct sock *sk` (NULL when there is none).
    let sk: u64 = ctx.arg(0);
    count_socket(&ctx, sk, Event::TcpRstSent, 1);
    0
}
