//! Raw tracepoint writeback_dirty_folio: counts every page-cache folio a file write makes dirty
//! into `Event::FolioDirtied`. The kernel fires it where it accounts the dirtying to the task
//! (the same place as the task's `write_bytes` in /proc/<pid>/io), so the count lands in the
//! writer's cgroup, while the disk write itself happens later in a kernel flusher thread that
//! belongs to no pod. A folio is one 4 KiB page or, on filesystems with large folios, several;
//! rewriting a page that is already dirty does not fire it, and neither do tmpfs writes (no
//! writeback). Kernels from before the page cache moved to folios (5.16-5.17) named the event
//! writeback_dirty_page: the column is NULL there (the attach failure is named in the log).
use agent_common::Event;
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::count_task;

#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn writeback_dirty_folio(ctx: RawTracePointContext) -> i32 {
    count_task(&ctx, Event::FolioDirtied, 1);
    0
}
