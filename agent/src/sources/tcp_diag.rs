//! Counts TCP sockets in ESTABLISHED and LISTEN (IPv4 + IPv6) of the agent's network namespace
//! with one netlink sock_diag dump per family, as `ss` does. A dump walks the kernel's whole
//! connection table (~2 ms even when idle), so the agent only uses it to seed and re-check the
//! eBPF-maintained gauges, or every interval when eBPF is not loaded.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use agent_common::tcp_state;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDR_LEN: usize = 16;
const INET_DIAG_REQ_V2_LEN: usize = 56;

/// Established and listening TCP sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpConnCounts {
    pub established: i64,
    pub listening: i64,
}

/// An open NETLINK_SOCK_DIAG socket, kept for the agent's lifetime.
pub struct TcpDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl TcpDiag {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TcpDiag { fd, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Dumps both families and counts ESTABLISHED and LISTEN sockets.
    pub fn count(&mut self) -> io::Result<TcpConnCounts> {
        let mut counts = TcpConnCounts::default();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.dump(family, &mut counts)?;
        }
        Ok(counts)
    }

    fn dump(&mut self, family: u8, counts: &mut TcpConnCounts) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let states: u32 = (1 << tcp_state::ESTABLISHED) | (1 << tcp_state::LISTEN);
        let mut req = [0u8; NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN];
        let total = req.len() as u32;
        req[0..4].copy_from_slice(&total.to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid.
        req[16] = family;
        req[17] = libc::IPPROTO_TCP as u8;
        req[20..24].copy_from_slice(&states.to_ne_bytes());

        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: req and kernel are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if parse_messages(&self.buf[..n as usize], self.seq, counts)? {
                return Ok(());
            }
        }
    }
}

/// Counts the sockets in one datagram of netlink messages. Returns true at NLMSG_DONE.
pub fn parse_messages(mut data: &[u8], seq: u32, counts: &mut TcpConnCounts) -> io::Result<bool> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    while data.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        let msg_seq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDR_LEN || len > data.len() {
            return Err(bad("truncated message"));
        }
        if msg_seq == seq {
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(true),
                libc::NLMSG_ERROR => {
                    let errno = data.get(16..20).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                    return Err(match errno {
                        Some(e) if e < 0 => io::Error::from_raw_os_error(-e),
                        _ => bad("error message"),
                    });
                }
                _ => match data.get(NLMSG_HDR_LEN + 1).map(|&s| s as i32) {
                    Some(tcp_state::ESTABLISHED) => counts.established += 1,
                    Some(tcp_state::LISTEN) => counts.listening += 1,
                    _ => {}
                },
            }
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn counts_states_and_stops_at_done() {
        let mut data = message(SOCK_DIAG_BY_FAMILY, 7, &[2, 1, 0, 0, 0, 0, 0, 0]);
        data.extend(message(SOCK_DIAG_BY_FAMILY, 7, &[2, 10, 0, 0, 0, 0, 0, 0]));
        data.extend(message(SOCK_DIAG_BY_FAMILY, 6, &[2, 10, 0, 0, 0, 0, 0, 0])); // stale reply
        let mut c = TcpConnCounts::default();
        assert!(!parse_messages(&data, 7, &mut c).unwrap());
        assert_eq!(c, TcpConnCounts { established: 1, listening: 1 });
        assert!(parse_messages(&message(libc::NLMSG_DONE as u16, 7, &[0; 4]), 7, &mut c).unwrap());
    }

    #[test]
    fn errors_and_truncation() {
        let mut c = TcpConnCounts::default();
        let err = parse_messages(&message(libc::NLMSG_ERROR as u16, 1, &(-libc::EPERM).to_ne_bytes()), 1, &mut c);
        assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EPERM));
        let mut m = message(SOCK_DIAG_BY_FAMILY, 1, &[2, 1]);
        m[0] = 200;
        assert!(parse_messages(&m, 1, &mut c).is_err());
    }

    #[test]
    fn live_dump_sees_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut diag = TcpDiag::open().unwrap();
        let before = diag.count().unwrap();
        assert!(before.listening >= 1);
        drop(listener);
        assert_eq!(diag.count().unwrap().listening, before.listening - 1);
    }
}
