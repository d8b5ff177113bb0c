//! raw-socket: open raw sockets (AF_INET/SOCK_RAW ICMP and AF_PACKET), send one ICMP echo to
//! 127.0.0.1 through each raw IP socket, and close them, at most 50 pairs a second. Needs
//! CAP_NET_RAW: without it the scenario fails with that reason before doing anything.
use std::{os::fd::FromRawFd, os::fd::OwnedFd, time::Duration};

use anyhow::bail;
use serde_json::{json, Value};

use super::pace::Pacer;

pub const PAIRS_PER_SECOND: u32 = 50;

fn socket(family: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ICMP echo request with a valid checksum.
fn echo_request(seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"feature!");
    let mut sum: u32 = p.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    if let Err(e) = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) {
        bail!("cannot open a raw socket ({e}); raw-socket needs CAP_NET_RAW");
    }
    let mut pacer = Pacer::new(duration, PAIRS_PER_SECOND);
    let mut echoes = 0u64;
    while pacer.next() {
        let raw = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
        let _packet = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        let packet = echo_request(pacer.done() as u16);
        // SAFETY: valid buffer and address for the lengths given.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&raw),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent == packet.len() as isize {
            echoes += 1;
        }
    }
    Ok(json!({ "raw_ip_sockets": pacer.done() + 1, "packet_sockets": pacer.done(), "echoes_sent": echoes }))
}
