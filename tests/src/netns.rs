//! Network namespaces for tests: `ip netns` namespaces with loopback up, veth pairs between
//! them (so traffic really crosses interfaces), and processes that hold TCP connections in them.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("the ip command runs");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl NetNs {
    /// Makes namespace `fa-<name>-<pid>` with loopback up and IPv6 off (so that no router
    /// solicitation or neighbour discovery moves its counters behind a test's back).
    pub fn new(name: &str) -> Self {
        let name = format!("fa-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `args` in the namespace to completion; panics if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("ip netns exec runs");
        assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs `args` in the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Connects this namespace to `peer` (None: the host's namespace) with a veth pair:
    /// `here_ip` on this side, `peer_ip` on the other, both /24.
    pub fn veth_to(&self, peer: Option<&NetNs>, here_ip: &str, peer_ip: &str) {
        static PAIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:x}{n}", std::process::id() & 0xffff);
        let (here, there) = (format!("fa{tag}a"), format!("fa{tag}b"));
        let _ = Command::new("ip").args(["link", "del", &here]).output();
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        ip(&["link", "set", &here, "netns", &self.name]);
        self.run(&["ip", "addr", "add", &format!("{here_ip}/24"), "dev", &here]);
        self.run(&["ip", "link", "set", &here, "up"]);
        let here_mac = self.run(&["cat", &format!("/sys/class/net/{here}/address")]).trim().to_owned();
        // Permanent neighbour entries both ways: no ARP exchange (a re-probe of a stale entry
        // moves the counters by a packet each way at any moment) once the pair is up.
        match peer {
            Some(p) => {
                ip(&["link", "set", &there, "netns", &p.name]);
                p.run(&["ip", "addr", "add", &format!("{peer_ip}/24"), "dev", &there]);
                p.run(&["ip", "link", "set", &there, "up"]);
                let there_mac = p.run(&["cat", &format!("/sys/class/net/{there}/address")]).trim().to_owned();
                p.run(&["ip", "neigh", "replace", here_ip, "lladdr", &here_mac, "nud", "permanent", "dev", &there]);
                self.run(&["ip", "neigh", "replace", peer_ip, "lladdr", &there_mac, "nud", "permanent", "dev", &here]);
            }
            None => {
                // No IPv6 on the host's end either: its router and neighbour solicitations would
                // reach this namespace's counters.
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{there}/disable_ipv6"), "1");
                ip(&["addr", "add", &format!("{peer_ip}/24"), "dev", &there]);
                ip(&["link", "set", &there, "up"]);
                let there_mac = std::fs::read_to_string(format!("/sys/class/net/{there}/address")).unwrap();
                ip(&["neigh", "replace", here_ip, "lladdr", &here_mac, "nud", "permanent", "dev", &there]);
                self.run(&[
                    "ip",
                    "neigh",
                    "replace",
                    peer_ip,
                    "lladdr",
                    there_mac.trim(),
                    "nud",
                    "permanent",
                    "dev",
                    &here,
                ]);
            }
        }
    }

    /// ESTABLISHED TCP sockets in the namespace, as `ss` counts them.
    pub fn established(&self) -> i64 {
        self.run(&["ss", "-Htn", "state", "established"]).lines().count() as i64
    }

    /// The namespace's /proc/net/dev, summed over its interfaces but lo: (receive bytes,
    /// receive packets, transmit bytes, transmit packets).
    pub fn interfaces(&self) -> [i64; 4] {
        interface_sums(&self.run(&["cat", "/proc/net/dev"]))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A Linux bridge in the host's namespace (as a CNI bridge plugin makes one), with veth pairs
/// from namespaces plugged into it; deleted on drop with its host-side routes.
pub struct Bridge {
    pub name: String,
    routes: Vec<String>,
}

impl Bridge {
    /// Makes bridge `fab<pid>` with `addr` (a CIDR, e.g. 10.250.0.1/24) on it, up.
    pub fn new(addr: &str) -> Self {
        let name = format!("fab{:x}", std::process::id() & 0xfffff);
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        ip(&["link", "add", &name, "type", "bridge"]);
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["addr", "add", addr, "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        Bridge { name, routes: Vec::new() }
    }

    /// Plugs `ns` in: a veth pair whose namespace end is `eth0` with `addrs` (CIDRs; the first
    /// is the interface's main address), and whose other end is a port of the bridge.
    pub fn plug(&self, ns: &NetNs, addrs: &[&str]) {
        static PORTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = format!("{}p{n}", self.name);
        let inside = format!("{port}i");
        let _ = Command::new("ip").args(["link", "del", &port]).output();
        ip(&["link", "add", &port, "type", "veth", "peer", "name", &inside]);
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{port}/disable_ipv6"), "1");
        ip(&["link", "set", &inside, "netns", &ns.name]);
        ip(&["link", "set", &port, "master", &self.name]);
        ip(&["link", "set", &port, "up"]);
        ns.run(&["ip", "link", "set", &inside, "name", "eth0"]);
        for a in addrs {
            ns.run(&["ip", "addr", "add", a, "dev", "eth0"]);
        }
        ns.run(&["ip", "link", "set", "eth0", "up"]);
    }

    /// Routes `cidr` from the host's namespace onto the bridge's link (no gateway: the peers
    /// answer ARP for their own addresses).
    pub fn route(&mut self, cidr: &str) {
        ip(&["route", "replace", cidr, "dev", &self.name]);
        self.routes.push(cidr.to_owned());
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for r in &self.routes {
            let _ = Command::new("ip").args(["route", "del", r, "dev", &self.name]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.name]).output();
    }
}

/// ESTABLISHED TCP sockets in the host's namespace, as `ss` counts them.
pub fn host_established() -> i64 {
    let out = Command::new("ss").args(["-Htn", "state", "established"]).output().expect("ss runs");
    String::from_utf8_lossy(&out.stdout).lines().count() as i64
}

/// Sums a /proc/net/dev text over every interface but lo.
pub fn interface_sums(text: &str) -> [i64; 4] {
    let mut t = [0i64; 4];
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let v: Vec<i64> = rest.split_whitespace().map(|f| f.parse().unwrap()).collect();
        for (sum, i) in t.iter_mut().zip([0, 1, 8, 9]) {
            *sum += v[i];
        }
    }
    t
}

/// A Python program that holds TCP connections until it is killed:
/// - `serve ADDR PORT`: listens and accepts forever, holding every accepted connection;
/// - `pairs PORT N`: listens on 127.0.0.1:PORT and holds N loopback connections to itself;
/// - `connect ADDR PORT N [BYTES]`: holds N connections to ADDR:PORT, and sends BYTES on the
///   first.
///
/// It prints `ready` once everything is open.
pub const HOLDER: &str = r#"
import socket, sys, threading, time
mode = sys.argv[1]
held = []
def serve(l):
    while True:
        s, _ = l.accept()
        held.append(s)
        threading.Thread(target=drain, args=(s,), daemon=True).start()
def drain(s):
    while s.recv(65536):
        pass
if mode == "serve":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((sys.argv[2], int(sys.argv[3]))); l.listen(4096)
    threading.Thread(target=serve, args=(l,), daemon=True).start()
elif mode == "pairs":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", int(sys.argv[2]))); l.listen(4096)
    for _ in range(int(sys.argv[3])):
        c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
        s, _ = l.accept()
        held += [c, s]
else:
    for i in range(int(sys.argv[4])):
        held.append(socket.create_connection((sys.argv[2], int(sys.argv[3]))))
    if len(sys.argv) > 5 and int(sys.argv[5]) > 0:
        held[0].sendall(b"x" * int(sys.argv[5]))
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

/// A running [`HOLDER`], killed on drop.
pub struct Holder {
    child: Child,
}

impl Holder {
    /// Starts `command` (which must run `python3 -c HOLDER ...`) and waits for `ready`.
    pub fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the connection holder did not start");
        Holder { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it and waits: its sockets close.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `python3 -c HOLDER args...` in `ns` (None: the host's namespace).
pub fn holder_command(ns: Option<&NetNs>, args: &[&str]) -> Command {
    let mut all = vec!["python3", "-c", HOLDER];
    all.extend_from_slice(args);
    match ns {
        Some(ns) => ns.command(&all),
        None => {
            let mut c = Command::new(all[0]);
            c.args(&all[1..]);
            c
        }
    }
}
