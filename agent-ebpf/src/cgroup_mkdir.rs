//! Tracepoint cgroup:cgroup_mkdir: records each new cgroup v2 directory's id and path in
//! CGROUP_NAMES, so the agent can name a cgroup (a pod, a container) that is created, runs and
//! is removed within one interval, when its directory is already gone at the interval's end.
//! It runs once per cgroup created, never per counted event.
use agent_common::{CgroupName, KernelCondition, CGROUP_PATH_MAX};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint, programs::TracePointContext, EbpfContext,
};
use aya_log_ebpf::warn;

use crate::maps::{map_full, CGROUP_NAMES, CGROUP_NAME_SCRATCH};

// Field offsets from /sys/kernel/tracing/events/cgroup/cgroup_mkdir/format (kernel 5.5+, where
// the id became the 64-bit kernfs id); the agent checks them against the format file before it
// attaches this program.
const ROOT_OFFSET: usize = 8;
const LEVEL_OFFSET: usize = 12;
const ID_OFFSET: usize = 16;
const PATH_OFFSET: usize = 24;

#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = record(&ctx);
    0
}

fn record(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets of this tracepoint's fixed-layout record.
    let (root, level, id, loc) = unsafe {
        (
            ctx.read_at::<i32>(ROOT_OFFSET)?,
            ctx.read_at::<i32>(LEVEL_OFFSET)?,
            ctx.read_at::<u64>(ID_OFFSET)?,
            ctx.read_at::<u32>(PATH_OFFSET)?,
        )
    };
    // Hierarchy 0 is the cgroup v2 tree; v1 hierarchies (hybrid hosts) have their own ids.
    if root != 0 {
        return Ok(());
    }
    let scratch = CGROUP_NAME_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's scratch slot; the path is a __data_loc string inside the record
    // (offset in the low 16 bits), read with the bounds-checked string helper.
    let name = unsafe { &mut *scratch };
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let len = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut name.path) }.map(|s| s.len()).unwrap_or(0);
    name.len = len.min(CGROUP_PATH_MAX) as u32;
    name.level = level as u32;
    // Inserted by reference: a copy of the 520-byte value would not fit the BPF stack.
    let name: &CgroupName = name;
    if CGROUP_NAMES.insert(id, name, 0).is_err() && map_full(KernelCondition::CgroupNamesFull) {
        warn!(ctx, "cgroup name map full: a new cgroup's path was not recorded");
    }
    Ok(())
}
