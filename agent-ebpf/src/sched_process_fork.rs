//! Raw tracepoint sched_process_fork: counts every task fork (processes and threads) into
//! `Event::Fork`. Raw tracepoints need no tracefs and cost less than classic ones.
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count_task;

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    count_task(&ctx, Event::Fork, 1);
    0
}
