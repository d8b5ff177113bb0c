//! Tracepoints syscalls:sys_{enter,exit}_{socket,socketpair}: counts sockets created, by kind.
//! The enter hook parks the call's family and type under the thread's pid_tgid; the exit hook
//! counts them only when the call succeeded, so a refused socket() (EAFNOSUPPORT, EMFILE, ...)
//! counts nothing. socketpair() creates two sockets.
use agent_common::{classify_socket, KernelCondition, SocketCall};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::warn;

use crate::maps::{count_task, map_full, SOCKET_CALLS_IN_FLIGHT};

// Field offsets from /sys/kernel/tracing/events/syscalls/sys_{enter,exit}_socket/format
// (socketpair has the same first fields).
const FAMILY_OFFSET: usize = 16;
const TYPE_OFFSET: usize = 24;
const RET_OFFSET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let _ = remember_call(&ctx, 1);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_socketpair")]
pub fn sys_enter_socketpair(ctx: TracePointContext) -> u32 {
    let _ = remember_call(&ctx, 2);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let _ = count_created(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_socketpair")]
pub fn sys_exit_socketpair(ctx: TracePointContext) -> u32 {
    let _ = count_created(&ctx);
    0
}

fn remember_call(ctx: &TracePointContext, sockets: u32) -> Result<(), i64> {
    // SAFETY: offsets of the syscall tracepoints' fixed-layout records; the arguments are
    // stored as unsigned longs, the kernel uses their low 32 bits.
    let family: u64 = unsafe { ctx.read_at(FAMILY_OFFSET)? };
    let sock_type: u64 = unsafe { ctx.read_at(TYPE_OFFSET)? };
    let call = SocketCall { family: family as u32, sock_type: sock_type as u32, sockets, _pad: 0 };
    // The key is the thread, which has one call in flight at a time: only a full map refuses.
    if SOCKET_CALLS_IN_FLIGHT.insert(bpf_get_current_pid_tgid(), call, 0).is_err()
        && map_full(KernelCondition::SocketCallsFull)
    {
        warn!(ctx, "socket call map full: sockets created meanwhile are not counted");
    }
    Ok(())
}

fn count_created(ctx: &TracePointContext) -> Result<(), i64> {
    let key = bpf_get_current_pid_tgid();
    let Some(call) = SOCKET_CALLS_IN_FLIGHT.get_ptr(key) else {
        return Ok(());
    };
    // SAFETY: the pointer came from a successful lookup; copy before removing the entry.
    let call = unsafe { *call };
    let _ = SOCKET_CALLS_IN_FLIGHT.remove(key);
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET)? };
    if ret >= 0 {
        count_task(ctx, classify_socket(call.family, call.sock_type), call.sockets as u64);
    }
    Ok(())
}
