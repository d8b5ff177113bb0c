//! The feature agent's kernel-side programs. Each one counts a kernel event into the per-CPU
//! maps of `maps.rs`, for the node and for the cgroup the event belongs to; the agent sums the
//! CPUs each interval. One hook per file, named after the kernel event it attaches to. Nothing
//! logs on the per-event path: rare conditions (a full map) are logged once each through
//! aya-log, and the counters themselves are the diagnostics the agent reads.
#![no_std]
#![no_main]

mod maps;

mod cgroup_mkdir;
mod cgroup_skb;
mod inet_sock_set_state;
mod sched_process_exec;
mod sched_process_exit;
mod sched_process_fork;
mod sock_create;
mod sys_socket;
mod tcp_receive_reset;
mod tcp_send_reset;
mod writeback_dirty_folio;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
