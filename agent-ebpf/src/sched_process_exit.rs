//! Raw tracepoint sched_process_exit: counts every task exit (processes and threads) into
//! `Event::Exit`. Raw tracepoints need no tracefs and cost less than classic ones.
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count;

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    count(Event::Exit, 1);
    0
}
