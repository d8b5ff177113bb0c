//! Raw tracepoint sched_process_exec: counts every task exec (processes and threads) into
//! `Event::Exec`. Raw tracepoints need no tracefs and cost less than classic ones.
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count_task;

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    count_task(&ctx, Event::Exec, 1);
    0
}
