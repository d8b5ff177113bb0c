//! Socket creations counted where they happen, in the kernel's `__sock_create()`, which every
//! socket(), socketpair() (twice) and io_uring IORING_OP_SOCKET goes through. No syscall hook and
//! no map: one program sees the arguments and the result together.
//! - fexit `__sock_create(net, family, type, protocol, res, kern)`: counts user sockets
//!   (`kern == 0`) whose creation returned 0. Needs fentry/fexit (BTF, x86-64 trampolines).
//! - kprobe `security_socket_post_create(sock, family, type, protocol, kern)`: the LSM hook
//!   `__sock_create()` calls once the socket exists, for kernels with kprobes but no fexit. It
//!   runs before the LSMs' own post-create checks, so a socket an LSM then refuses is counted.
use agent_common::classify_socket;
use aya_ebpf::{
    macros::{fexit, kprobe},
    programs::{FExitContext, ProbeContext},
};

use crate::maps::count_task;

#[fexit(function = "__sock_create")]
pub fn sock_create_fexit(ctx: FExitContext) -> i32 {
    let family: i32 = ctx.arg(1);
    let sock_type: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(5);
    // The return value follows the six arguments in an fexit context (read this way, it needs
    // no bpf_get_func_ret, so kernels before 5.17 work too).
    let ret: i32 = ctx.arg(6);
    if kern == 0 && ret == 0 {
        count_task(&ctx, classify_socket(family as u32, sock_type as u32), 1);
    }
    0
}

#[kprobe(function = "security_socket_post_create")]
pub fn sock_post_create_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(family), Some(sock_type), Some(kern)) = (ctx.arg::<i32>(1), ctx.arg::<i32>(2), ctx.arg::<i32>(4)) else {
        return 0;
    };
    if kern == 0 {
        count_task(&ctx, classify_socket(family as u32, sock_type as u32), 1);
    }
    0
}
