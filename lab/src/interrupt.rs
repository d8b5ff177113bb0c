//! Ctrl-C and SIGTERM for the commands that must not stop half-way: a scenario (its scratch
//! file, and the part that ran, which is still recorded and labelled) and an export (its
//! partial file). [`catch`] turns the two signals into a flag that the work loops poll
//! ([`requested`]); the command then finishes cleanly and says it was interrupted. A second
//! signal is the same flag; the loops are bounded (at most one paced action or one batch).
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::Relaxed);
}

/// From now on, SIGINT and SIGTERM set the flag instead of ending the process.
pub fn catch() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT or SIGTERM arrived (after [`catch`]).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Sets the flag as a signal would (tests).
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}
