//! A peer outside the cluster, made on this host for `exfiltrate`: a network namespace of its own
//! holding 203.0.113.1 (TEST-NET-3, in no range the agent is given), joined by a veth pair to the
//! namespace the sender runs in (a pod's, or the host's), with a sink that reads and discards
//! whatever it is sent. To the agent's byte counters its address is "outside": neither this
//! node's nor in --cluster-cidrs. Removed on drop.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
};

use anyhow::Context;

use crate::scenario::bulk_transfer::Sink;

/// The peer's address.
pub const PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The sender's end of the link.
const NEAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

pub struct OutsidePeer {
    netns: String,
    /// Where to send (the sink's port on [`PEER`]).
    pub addr: SocketAddr,
    sink: Option<Sink>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl OutsidePeer {
    /// Makes the peer, linked to network namespace `from` (an `ip netns` name; None: this
    /// process's own, the host's).
    pub fn new(from: Option<&str>) -> anyhow::Result<Self> {
        let netns = format!("feature-lab-outside-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        ip(&["netns", "add", &netns]).context("making the outside peer's network namespace (needs root)")?;
        let mut peer = OutsidePeer { netns, addr: SocketAddr::new(IpAddr::V4(PEER), 0), sink: None };
        let near = format!("flo{:x}", std::process::id() & 0xfffff);
        let _ = Command::new("ip").args(["link", "del", &near]).output();
        ip(&["link", "add", &near, "type", "veth", "peer", "name", "out0", "netns", &peer.netns])?;
        let in_from = |args: &[&str]| -> anyhow::Result<()> {
            match from {
                Some(ns) => ip(&[&["-n", ns][..], args].concat()),
                None => ip(args),
            }
        };
        if let Some(ns) = from {
            ip(&["link", "set", &near, "netns", ns])?;
        }
        in_from(&["addr", "add", &format!("{NEAR}/30"), "dev", &near])?;
        in_from(&["link", "set", &near, "up"])?;
        ip(&["-n", &peer.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &peer.netns, "addr", "add", &format!("{PEER}/30"), "dev", "out0"])?;
        ip(&["-n", &peer.netns, "link", "set", "out0", "up"])?;
        let sink = Sink::start_in(Some(&format!("/var/run/netns/{}", peer.netns)), IpAddr::V4(PEER))?;
        peer.addr = sink.addr;
        peer.sink = Some(sink);
        Ok(peer)
    }
}

impl Drop for OutsidePeer {
    fn drop(&mut self) {
        drop(self.sink.take());
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}
