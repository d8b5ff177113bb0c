//! port-scan: TCP connects to loopback ports in sequence (1, 2, 3, ...), the way a scanner
//! sweeps a host, at most 500 a second. A closed port answers with a reset: tcp_conn_failed and
//! tcp_rst_sent rise by one per refused port. Open ports found are closed at once.
use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::{json, Value};

use super::pace::Pacer;

pub const PORTS_PER_SECOND: u32 = 500;

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let mut pacer = Pacer::new(duration, PORTS_PER_SECOND);
    let (mut refused, mut open, mut other) = (0u64, 0u64, 0u64);
    let mut port: u16 = 0;
    while pacer.next() {
        port = port % u16::MAX + 1;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => open += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => other += 1,
        }
    }
    Ok(json!({ "ports_scanned": pacer.done(), "refused": refused, "open": open, "other_errors": other }))
}
