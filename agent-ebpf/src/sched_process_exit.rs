//! Raw tracepoint sched_process_exit: counts every task exit (processes and threads) into
//! `Event::Exit`. Raw tracepoints need no tracefs and cost less than classic ones.
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count_task;

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    count_task(&ctx, Event::Exit, 1);
    0
}
