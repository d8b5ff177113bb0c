//! Bytes and packets every socket sends and receives, counted under the socket owner's cgroup
//! (systemd's IPAccounting works the same way): two cgroup socket-buffer programs attached at
//! the root of the cgroup v2 tree, so they run for the sockets of every cgroup below it.
//! - `cgroup_skb/egress` sees each IP packet a local socket hands to IP (before segmentation: a
//!   GSO packet counts once, with one set of headers);
//! - `cgroup_skb/ingress` sees each IP packet delivered to a local socket.
//!
//! `len` is the packet's length from its IP header on. The peer's address (destination when
//! sending, source when receiving) picks the column: an address in ADDRESS_CLASSES (a
//! longest-prefix match the agent fills: loopback, the node's own addresses and its pod range
//! as "node", the cluster's pod and service ranges as "cluster"), else "outside". Both programs
//! always let the packet pass.
use agent_common::{AddressClass, NetDirection, NetKey};
use aya_ebpf::{
    helpers::generated::bpf_skb_cgroup_id,
    macros::{cgroup_skb, map},
    maps::{lpm_trie::Key, LpmTrie},
    programs::SkBuffContext,
};

use crate::maps::Counter;

#[map]
static ADDRESS_CLASSES: LpmTrie<NetKey, u32> = LpmTrie::with_max_entries(agent_common::ADDRESS_CLASSES_MAX, 0);

/// Lets the packet through.
const PASS: i32 = 1;

#[cgroup_skb(egress)]
pub fn cgroup_skb_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, NetDirection::Sent);
    PASS
}

#[cgroup_skb(ingress)]
pub fn cgroup_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, NetDirection::Received);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext, direction: NetDirection) {
    let class = peer(ctx, direction).map_or(AddressClass::Outside, |peer| {
        match ADDRESS_CLASSES.get(Key::new(128, peer)).copied() {
            Some(c) if c == AddressClass::Node as u32 => AddressClass::Node,
            Some(c) if c == AddressClass::Cluster as u32 => AddressClass::Cluster,
            _ => AddressClass::Outside,
        }
    });
    // SAFETY: the context's own __sk_buff; the helper reads the socket's cgroup (0 for none).
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let (bytes, packets) = agent_common::net_events(direction, class);
    let counter = Counter::for_cgroup(ctx, cgroup);
    counter.add(bytes, u64::from(ctx.len()));
    counter.add(packets, 1);
}

/// The peer's address as a key of ADDRESS_CLASSES (an IPv4 address as ::ffff:a.b.c.d), read
/// from the IP header the packet starts with; None for anything but IPv4 and IPv6.
#[inline(always)]
fn peer(ctx: &SkBuffContext, direction: NetDirection) -> Option<NetKey> {
    let first: u8 = ctx.load(0).ok()?;
    let sending = matches!(direction, NetDirection::Sent);
    match first >> 4 {
        4 => {
            // Source at 12, destination at 16.
            let v4: [u8; 4] = ctx.load(if sending { 16 } else { 12 }).ok()?;
            let mut key = [0u8; 16];
            key[10] = 0xff;
            key[11] = 0xff;
            key[12..].copy_from_slice(&v4);
            Some(NetKey { addr: key })
        }
        6 => {
            // Source at 8, destination at 24.
            let v6: [u8; 16] = ctx.load(if sending { 24 } else { 8 }).ok()?;
            Some(NetKey { addr: v6 })
        }
        _ => None,
    }
}
