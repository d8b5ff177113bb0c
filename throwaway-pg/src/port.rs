//! Loopback TCP ports for throwaway servers that stay theirs while the server is stopped.
//!
//! A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range it
//! draws every outgoing connection's local port from. A server that is stopped and started again
//! on its port (a test restarting its database) then races every client on the machine: a
//! connection made meanwhile can take the port as its local end, and the restart fails with
//! "Address already in use". So ports here come from below the ephemeral range, and each one is
//! reserved for as long as its owner lives by an exclusive `flock` on a file named after it, which
//! every process using this crate respects and the kernel releases when the owner dies.
use std::{
    fs::{self, File, OpenOptions},
    os::fd::AsRawFd,
    path::PathBuf,
};

use crate::{err, Error};

/// The lowest port handed out: above the registered ports most services listen on.
const LOWEST: u16 = 20_000;

/// A port held for this handle's lifetime.
#[derive(Debug)]
pub struct Reserved {
    port: u16,
    _lock: File,
}

impl Reserved {
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("feature-agent-ports")
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768)
}

/// Reserves a loopback port that nothing listens on, outside the ephemeral range.
pub fn reserve() -> Result<Reserved, Error> {
    let top = ephemeral_start();
    if top <= LOWEST + 100 {
        return Err(err(format!(
            "the ephemeral port range starts at {top}, leaving no ports between {LOWEST} and it for test servers"
        )));
    }
    let dir = lock_dir();
    fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    let span = u32::from(top - LOWEST);
    // Start at a point that differs between processes, then walk the range once.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let start = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % span;
    for i in 0..span {
        let port = LOWEST + ((start + i) % span) as u16;
        let path = dir.join(port.to_string());
        let Ok(file) = OpenOptions::new().create(true).truncate(false).write(true).open(&path) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Held by us now; still make sure nothing outside this crate listens there.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(Reserved { port, _lock: file });
        }
    }
    Err(err(format!("no free loopback port between {LOWEST} and {top}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_below_the_ephemeral_range() {
        let held: Vec<Reserved> = (0..50).map(|_| reserve().unwrap()).collect();
        let mut ports: Vec<u16> = held.iter().map(Reserved::port).collect();
        assert!(ports.iter().all(|&p| (LOWEST..ephemeral_start()).contains(&p)), "{ports:?}");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 50, "a port was handed out twice");
    }

    #[test]
    fn a_dropped_reservation_is_free_again() {
        let r = reserve().unwrap();
        let port = r.port();
        let path = lock_dir().join(port.to_string());
        let f = File::open(&path).unwrap();
        // SAFETY: flock on a descriptor this test owns.
        assert_ne!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "held while reserved");
        drop(r);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "free once dropped");
    }
}
