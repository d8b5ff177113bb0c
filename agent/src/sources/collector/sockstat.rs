//! /proc/net/sockstat: socket counts of the (host) network namespace. procfs has no parser.
//!
//! ```text
//! sockets: used 290
//! TCP: inuse 4 orphan 0 tw 0 alloc 6 mem 1
//! UDP: inuse 2 mem 2
//! ```
use super::{number, Malformed};

#[derive(Debug, Clone, PartialEq)]
pub struct SockStat {
    pub sockets_used: i32,
    pub tcp_inuse: i32,
    pub tcp_alloc: i32,
    pub tcp_mem: i32,
    pub udp_inuse: i32,
    pub udp_mem: i32,
}

/// Value of `key` in a line of `key value` pairs.
fn field(protocol: &str, pairs: &str, key: &str) -> Result<i32, Malformed> {
    let mut words = pairs.split_ascii_whitespace();
    while let Some(k) = words.next() {
        if k == key {
            return number(&format!("{protocol} {key}"), words.next());
        }
        words.next();
    }
    Err(Malformed::new(format!("no {key} in the {protocol} line")))
}

impl super::Fill for SockStat {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.tcp_sock_alloc = Some(self.tcp_alloc);
        row.tcp_sock_inuse = Some(self.tcp_inuse);
        row.tcp_sock_mem = Some(self.tcp_mem);
        row.udp_sock_inuse = Some(self.udp_inuse);
        row.udp_sock_mem = Some(self.udp_mem);
        row.ipv4_sock_inuse = Some(self.sockets_used);
    }
}

pub fn parse(text: &str) -> Result<SockStat, Malformed> {
    let (mut sockets, mut tcp, mut udp) = (None, None, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("sockets:") {
            sockets = Some(rest);
        } else if let Some(rest) = line.strip_prefix("TCP:") {
            tcp = Some(rest);
        } else if let Some(rest) = line.strip_prefix("UDP:") {
            udp = Some(rest);
        }
    }
    let missing = |what: &str| Malformed::new(format!("no {what} line"));
    let sockets = sockets.ok_or_else(|| missing("sockets:"))?;
    let tcp = tcp.ok_or_else(|| missing("TCP:"))?;
    let udp = udp.ok_or_else(|| missing("UDP:"))?;
    Ok(SockStat {
        sockets_used: field("sockets", sockets, "used")?,
        tcp_inuse: field("TCP", tcp, "inuse")?,
        tcp_alloc: field("TCP", tcp, "alloc")?,
        tcp_mem: field("TCP", tcp, "mem")?,
        udp_inuse: field("UDP", udp, "inuse")?,
        udp_mem: field("UDP", udp, "mem")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field() {
        let s = parse(
            "sockets: used 290\nTCP: inuse 4 orphan 0 tw 1 alloc 6 mem 3\nUDP: inuse 2 mem 5\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n",
        )
        .unwrap();
        assert_eq!(s, SockStat { sockets_used: 290, tcp_inuse: 4, tcp_alloc: 6, tcp_mem: 3, udp_inuse: 2, udp_mem: 5 });
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(parse("").unwrap_err().0.contains("sockets:"));
        assert!(parse("sockets: used 1\nUDP: inuse 2 mem 5\n").unwrap_err().0.contains("TCP:"));
        let e = parse("sockets: used 1\nTCP: inuse 4 orphan 0\nUDP: inuse 2 mem 5\n").unwrap_err();
        assert!(e.0.contains("no alloc"), "{e:?}");
        let e = parse("sockets: used x\nTCP: inuse 4 alloc 1 mem 1\nUDP: inuse 2 mem 5\n").unwrap_err();
        assert!(e.0.contains("not a number"), "{e:?}");
        // A value that overflows an integer column is an error, not a wrap.
        assert!(parse("sockets: used 99999999999\nTCP: inuse 4 alloc 1 mem 1\nUDP: inuse 2 mem 5\n").is_err());
    }
}
