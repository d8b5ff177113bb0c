//! Raw tracepoint tcp_send_reset: counts every RST the host sends (including the ones answering
//! a SYN to a closed port, which have no socket) into `Event::TcpRstSent`.
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count;

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(_ctx: RawTracePointContext) -> i32 {
    count(Event::TcpRstSent, 1);
    0
}
