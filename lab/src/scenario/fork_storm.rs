//! fork-storm: fork a child that exits at once, at most 1000 times a second.
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use super::pace::Pacer;

pub const FORKS_PER_SECOND: u32 = 1000;

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let mut pacer = Pacer::new(duration, FORKS_PER_SECOND);
    while pacer.next() {
        // SAFETY: the child only calls _exit, which is async-signal-safe, so forking from a
        // multi-threaded process is sound; the parent reaps it at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    Ok(json!({ "forks": pacer.done() }))
}
