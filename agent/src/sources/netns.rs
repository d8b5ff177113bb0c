//! Network namespaces seen from the host's /proc, with no capability: each one is read through
//! any process in it (`/proc/<pid>/net/...`), the way cAdvisor reads a container's network.
//!
//! - A namespace's key is the inode number of its `/proc/<pid>/net/stat` directory, which any
//!   process may `stat`, and which the TCP hook reads for each socket (agent-common's
//!   `NetnsKeying`). The namespace's own inode (`/proc/<pid>/ns/net`) would need ptrace access
//!   to processes of other users.
//! - Its TCP table (`/proc/<pid>/net/tcp` and `tcp6`): ESTABLISHED and LISTEN sockets, to seed
//!   and re-check the namespace's eBPF balance. The kernel walks its whole connection hash table
//!   for each file, about 3.5 ms even when idle, so a table is read when a namespace is first
//!   seen and on re-checks only.
//! - Its interfaces (`/proc/<pid>/net/dev`): a pod's bytes, packets, drops and errors.
use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{sources::collector::Malformed, sources::tcp_diag::TcpConnCounts};

/// Where the host's /proc is (the agent's own, with hostPID; tests point elsewhere).
#[derive(Debug, Clone)]
pub struct Proc {
    root: PathBuf,
}

impl Default for Proc {
    fn default() -> Self {
        Proc { root: PathBuf::from("/proc") }
    }
}

/// A network namespace's interface counters, summed over its interfaces except loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceTotals {
    pub receive_bytes: i64,
    pub receive_packets: i64,
    pub receive_drop: i64,
    pub receive_errs: i64,
    pub transmit_bytes: i64,
    pub transmit_packets: i64,
}

impl InterfaceTotals {
    fn fields(&self) -> [i64; 6] {
        [
            self.receive_bytes,
            self.receive_packets,
            self.receive_drop,
            self.receive_errs,
            self.transmit_bytes,
            self.transmit_packets,
        ]
    }

    /// Whether any counter is below `earlier`'s: not the same counters (a new namespace).
    pub fn went_back_from(&self, earlier: &InterfaceTotals) -> bool {
        self.fields().iter().zip(earlier.fields()).any(|(now, then)| *now < then)
    }

    pub fn plus(&self, other: &InterfaceTotals) -> InterfaceTotals {
        InterfaceTotals {
            receive_bytes: self.receive_bytes.saturating_add(other.receive_bytes),
            receive_packets: self.receive_packets.saturating_add(other.receive_packets),
            receive_drop: self.receive_drop.saturating_add(other.receive_drop),
            receive_errs: self.receive_errs.saturating_add(other.receive_errs),
            transmit_bytes: self.transmit_bytes.saturating_add(other.transmit_bytes),
            transmit_packets: self.transmit_packets.saturating_add(other.transmit_packets),
        }
    }
}

impl Proc {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Proc { root: root.into() }
    }

    /// /proc/<pid>.
    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    fn net(&self, pid: u32, file: &str) -> PathBuf {
        self.pid_dir(pid).join("net").join(file)
    }

    /// The key of the namespace process `pid` is in.
    pub fn key_of(&self, pid: u32) -> io::Result<u32> {
        let ino = std::fs::metadata(self.net(pid, "stat"))?.ino();
        u32::try_from(ino).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "proc inode above 32 bits"))
    }

    /// The key of the agent's own namespace (the host's, with hostNetwork).
    pub fn own_key(&self) -> io::Result<u32> {
        let ino = std::fs::metadata(self.root.join("self/net/stat"))?.ino();
        u32::try_from(ino).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "proc inode above 32 bits"))
    }

    /// One process in each network namespace that has one: key -> pid (the lowest pid seen).
    pub fn namespaces(&self) -> HashMap<u32, u32> {
        let mut out: HashMap<u32, u32> = HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            // A process that exits meanwhile is skipped.
            if let Ok(key) = self.key_of(pid) {
                out.entry(key).and_modify(|p| *p = (*p).min(pid)).or_insert(pid);
            }
        }
        out
    }

    /// ESTABLISHED and LISTEN TCP sockets (IPv4 + IPv6) of the namespace of `pid`.
    pub fn tcp_table(&self, pid: u32, buf: &mut String) -> io::Result<TcpConnCounts> {
        let mut counts = TcpConnCounts::default();
        for file in ["tcp", "tcp6"] {
            buf.clear();
            match File::open(self.net(pid, file)) {
                Ok(mut f) => f.read_to_string(buf)?,
                // A kernel without IPv6 has no tcp6.
                Err(e) if e.kind() == io::ErrorKind::NotFound && file == "tcp6" => continue,
                Err(e) => return Err(e),
            };
            let c = parse_tcp_table(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
            counts.established += c.established;
            counts.listening += c.listening;
        }
        Ok(counts)
    }

    /// The interface counters of the namespace of `pid`.
    pub fn interfaces(&self, pid: u32, buf: &mut String) -> io::Result<InterfaceTotals> {
        buf.clear();
        File::open(self.net(pid, "dev"))?.read_to_string(buf)?;
        parse_net_dev(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))
    }

    /// The processes of the cgroup at `dir` (its cgroup.procs), at most `max`.
    pub fn cgroup_procs(dir: &Path, max: usize) -> Vec<u32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).take(max).collect())
            .unwrap_or_default()
    }
}

/// TCP states as /proc/net/tcp prints them (two hex digits).
const ESTABLISHED_HEX: &str = "01";
const LISTEN_HEX: &str = "0A";

/// Counts ESTABLISHED and LISTEN lines of a /proc/net/tcp or tcp6 file: a header line, then per
/// socket `sl: local_address rem_address st ...` with the state as two hex digits.
pub fn parse_tcp_table(text: &str) -> Result<TcpConnCounts, Malformed> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.trim_start().starts_with("sl") => {}
        _ => return Err(Malformed::new("missing the `sl local_address ...` header")),
    }
    let mut counts = TcpConnCounts::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_ascii_whitespace();
        let slot = fields.next().unwrap_or_default();
        let (local, remote, state) = (fields.next(), fields.next(), fields.next());
        let ok =
            slot.ends_with(':') && local.is_some_and(|a| a.contains(':')) && remote.is_some_and(|a| a.contains(':'));
        match state {
            Some(s) if ok && s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if s == ESTABLISHED_HEX {
                    counts.established += 1;
                } else if s.eq_ignore_ascii_case(LISTEN_HEX) {
                    counts.listening += 1;
                }
            }
            _ => return Err(Malformed::new("a socket line without `sl: local remote state`")),
        }
    }
    Ok(counts)
}

/// Sums /proc/net/dev over every interface except loopback (traffic within the namespace).
pub fn parse_net_dev(text: &str) -> Result<InterfaceTotals, Malformed> {
    let mut lines = text.lines();
    if !lines.next().is_some_and(|l| l.starts_with("Inter-|")) || lines.next().is_none() {
        return Err(Malformed::new("missing the two header lines"));
    }
    let mut t = InterfaceTotals::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (name, rest) = line.split_once(':').ok_or_else(|| Malformed::new("an interface line without `name:`"))?;
        let mut v = [0i64; 16];
        let mut n = 0;
        for f in rest.split_ascii_whitespace() {
            if n == v.len() {
                return Err(Malformed::new("an interface line with more than 16 counters"));
            }
            // Counters are unsigned 64-bit; they wrap into the column like the node's do.
            v[n] = f.parse::<u64>().map_err(|_| Malformed::new("a counter that is not a number"))? as i64;
            n += 1;
        }
        if n != v.len() {
            return Err(Malformed::new("an interface line with fewer than 16 counters"));
        }
        if name.trim() == "lo" {
            continue;
        }
        t.receive_bytes = t.receive_bytes.wrapping_add(v[0]);
        t.receive_packets = t.receive_packets.wrapping_add(v[1]);
        t.receive_errs = t.receive_errs.wrapping_add(v[2]);
        t.receive_drop = t.receive_drop.wrapping_add(v[3]);
        t.transmit_bytes = t.transmit_bytes.wrapping_add(v[8]);
        t.transmit_packets = t.transmit_packets.wrapping_add(v[9]);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n   3: 0100007F:D2F2 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0\n";

    const DEV: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  eth0: 1000      10    1    2    0     0          0         0     2000      20    0    0    0     0       0          0\n";

    #[test]
    fn counts_established_and_listening_only() {
        assert_eq!(parse_tcp_table(TCP).unwrap(), TcpConnCounts { established: 2, listening: 1 });
        assert_eq!(parse_tcp_table(TCP.lines().next().unwrap()).unwrap(), TcpConnCounts::default());
    }

    #[test]
    fn malformed_tables_are_errors() {
        assert!(parse_tcp_table("").is_err());
        assert!(parse_tcp_table("garbage\n").is_err());
        assert!(parse_tcp_table(&TCP.replace(" 0A ", " ZZ ")).is_err());
        assert!(parse_tcp_table(&format!("{TCP}   4: truncated\n")).is_err());
    }

    #[test]
    fn interfaces_sum_everything_but_loopback() {
        let t = parse_net_dev(DEV).unwrap();
        assert_eq!(
            t,
            InterfaceTotals {
                receive_bytes: 1000,
                receive_packets: 10,
                receive_drop: 2,
                receive_errs: 1,
                transmit_bytes: 2000,
                transmit_packets: 20
            }
        );
        assert!(parse_net_dev(&DEV[..DEV.len() - 40]).is_err());
        assert!(parse_net_dev(&DEV.replace("1000", "x")).is_err());
        assert!(parse_net_dev("").is_err());
    }

    /// The agent's own namespace has a key, and its table parses.
    #[test]
    fn own_namespace_reads() {
        let proc = Proc::default();
        let key = proc.own_key().unwrap();
        let me = std::process::id();
        assert_eq!(proc.key_of(me).unwrap(), key);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut buf = String::new();
        assert!(proc.tcp_table(me, &mut buf).unwrap().listening >= 1);
        drop(listener);
        assert!(proc.interfaces(me, &mut buf).is_ok());
        assert_eq!(proc.namespaces().get(&key).map(|p| *p <= me), Some(true));
    }
}
