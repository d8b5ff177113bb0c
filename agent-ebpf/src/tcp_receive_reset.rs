//! Raw tracepoint tcp_receive_reset: counts every RST received on a socket into
//! `Event::TcpRstRecv`.
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count;

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(_ctx: RawTracePointContext) -> i32 {
    count(Event::TcpRstRecv, 1);
    0
}
