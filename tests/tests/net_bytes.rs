//! Byte counting (--count-bytes) against real traffic: a bridge in the host's namespace (as the
//! CNI bridge plugin makes one), pods plugged into it by veth pairs, and a peer namespace on the
//! bridge holding three addresses, one per class the counters split by:
//!
//! - 10.250.0.3, in the node's pod range (--node-cidrs 10.250.0.0/24): another pod on this node;
//! - 10.250.1.7, in the cluster's pod range (--cluster-cidrs 10.250.0.0/16) but not the node's:
//!   a pod on another node;
//! - 203.0.113.5 (TEST-NET-3), in no range: the outside world.
//!
//! Each workload runs in a kubelet-style cgroup of its own, so a pod's counts hold only its own
//! traffic. TCP packet counts vary with timing, so a pod's bytes are checked against what the
//! workload sent and received plus the packets' headers: every IPv4 packet carries at least 40
//! bytes of IP and TCP headers and at most 120 (both with full options), so bytes must lie in
//! [payload + 40 × packets, payload + 120 × packets]. UDP is exact: 28 bytes of headers a
//! datagram.
use std::process::Child;

use agent::sources::net_bytes::{parse_cidrs, AddressRanges};
use agent_common::Event;
use feature_schema::{pods::PodRow, FeatureRow};
use tests::{
    cgroup::{in_cgroup, TestCgroup},
    exclusive, have_root,
    netns::{Bridge, NetNs},
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_pod-workload");
const NODE_PEER: &str = "10.250.0.3";
const CLUSTER_PEER: &str = "10.250.1.7";
const OUTSIDE_PEER: &str = "203.0.113.5";
const PORT: &str = "7000";

/// The bridge, the peer namespace with its sink, and the pods' namespaces.
struct Lab {
    bridge: Bridge,
    peer: NetNs,
    sink: Child,
}

impl Lab {
    fn new() -> Self {
        let mut bridge = Bridge::new("10.250.0.1/24");
        let peer = NetNs::new("bytes-peer");
        bridge.plug(&peer, &["10.250.0.3/24", "10.250.1.7/24", "203.0.113.5/24"]);
        // The host (hostNetwork pods) reaches the other two addresses on the bridge's link.
        bridge.route("10.250.1.0/24");
        bridge.route("203.0.113.0/24");
        let sink = tests::process::spawn_ready(&mut peer.command(&[WORKLOAD, "sink", PORT]));
        Lab { bridge, peer, sink }
    }

    /// A pod's own namespace on the bridge at `addr`, with routes to the three peers.
    fn pod_namespace(&self, name: &str, addr: &str) -> NetNs {
        let ns = NetNs::new(name);
        self.bridge.plug(&ns, &[addr]);
        ns.run(&["ip", "route", "add", "10.250.1.0/24", "dev", "eth0"]);
        ns.run(&["ip", "route", "add", "203.0.113.0/24", "dev", "eth0"]);
        ns
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.sink.kill();
        let _ = self.sink.wait();
        let _ = &self.peer;
    }
}

fn ranges() -> AddressRanges {
    AddressRanges { node: parse_cidrs("10.250.0.0/24").unwrap(), cluster: parse_cidrs("10.250.0.0/16").unwrap() }
}

/// Runs the workload `args` in cgroup `leaf`, in namespace `ns` (None: the host's); returns its
/// output.
fn run_in(leaf: &std::path::Path, ns: Option<&NetNs>, args: &[&str]) -> String {
    let out = match ns {
        Some(ns) => in_cgroup("ip", &[&["netns", "exec", &ns.name, WORKLOAD][..], args].concat(), leaf).output(),
        None => in_cgroup(WORKLOAD, args, leaf).output(),
    }
    .unwrap();
    assert!(out.status.success(), "pod-workload {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One TCP exchange with the sink; returns the data bytes TCP sent again (lost on the veth's
/// queue under a burst, and counted again when resent).
fn send(leaf: &std::path::Path, ns: Option<&NetNs>, peer: &str, send: u64, reply: u64) -> u64 {
    let out = run_in(leaf, ns, &["send", peer, PORT, &send.to_string(), &reply.to_string()]);
    out.trim()
        .strip_prefix("retransmitted ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("send printed {out:?}"))
}

/// One TCP exchange per class, with distinct sizes so a byte in the wrong column shows, and 50
/// UDP datagrams of 1,000 bytes to the cluster peer.
const EXCHANGES: [(&str, u64, u64); 3] =
    [(NODE_PEER, 200_000, 100_000), (CLUSTER_PEER, 300_000, 150_000), (OUTSIDE_PEER, 400_000, 250_000)];
const UDP: (u64, u64) = (50, 1000);

/// Returns the bytes each exchange retransmitted, in [`EXCHANGES`] order.
fn exchange_with_every_class(leaf: &std::path::Path, ns: Option<&NetNs>) -> [u64; 3] {
    let resent = EXCHANGES.map(|(peer, sent, reply)| send(leaf, ns, peer, sent, reply));
    run_in(leaf, ns, &["udp-send", CLUSTER_PEER, PORT, &UDP.0.to_string(), &UDP.1.to_string()]);
    resent
}

/// Checks `bytes` over `packets` TCP packets carried `payload` bytes of data (see the file's
/// first lines); data sent twice counts twice.
fn tcp_bytes(what: &str, bytes: i64, packets: i64, payload: u64) {
    let (bytes, packets, payload) = (bytes as u64, packets as u64, payload);
    assert!(packets > 0, "{what}: no packets");
    assert!(
        bytes >= payload + 40 * packets && bytes <= payload + 120 * packets,
        "{what}: {bytes} bytes in {packets} packets, for {payload} bytes of data (headers of 40-120 bytes a packet)"
    );
}

fn event(row: &PodRow, e: Event) -> i64 {
    row.event(e).unwrap_or_else(|| panic!("{} is NULL in {}'s row", e.name(), row.owner))
}

/// The pod's row checked against [`exchange_with_every_class`]: each class's bytes in its own
/// columns, both directions.
fn check_exchanges(who: &str, row: &PodRow, resent: [u64; 3]) {
    use Event::*;
    let columns = [
        (TxNodeBytes, TxNodePackets, RxNodeBytes, RxNodePackets),
        (TxClusterBytes, TxClusterPackets, RxClusterBytes, RxClusterPackets),
        (TxOutsideBytes, TxOutsidePackets, RxOutsideBytes, RxOutsidePackets),
    ];
    for (((peer, send, reply), (tx, txp, rx, rxp)), resent) in EXCHANGES.into_iter().zip(columns).zip(resent) {
        let (mut tx, mut txp) = (event(row, tx), event(row, txp));
        if peer == CLUSTER_PEER {
            // The datagrams, exactly: 28 bytes of IPv4 and UDP headers each.
            let (n, size) = UDP;
            assert!(txp > n as i64, "{who}: {txp} packets sent to the cluster, fewer than the {n} datagrams");
            tx -= (n * (size + 28)) as i64;
            txp -= n as i64;
        }
        // The client sends an 8-byte reply size before its data.
        tcp_bytes(&format!("{who} sent to {peer}"), tx, txp, send + 8 + resent);
        tcp_bytes(&format!("{who} received from {peer}"), event(row, rx), event(row, rxp), reply);
    }
}

/// Every new column of the node row is the sum of the interval's pod rows.
fn node_is_the_sum_of_its_pods(row: &FeatureRow) {
    for e in Event::NET_BYTES {
        let pods: i64 = row
            .pods
            .iter()
            .map(|p| p.event(e).unwrap_or_else(|| panic!("{} is NULL in {}'s row", e.name(), p.owner)))
            .sum();
        assert_eq!(row.event(e), Some(pods), "{}: node row against the sum of {} pod rows", e.name(), row.pods.len());
    }
}

fn pod_row<'a>(row: &'a FeatureRow, uid: &str) -> &'a PodRow {
    row.pods
        .iter()
        .find(|p| p.owner == uid)
        .unwrap_or_else(|| panic!("no row for pod {uid}: {:?}", row.pods.iter().map(|p| &p.owner).collect::<Vec<_>>()))
}

const OWN_NS_POD: &str = "0b1c2d3e-0000-4000-9000-000000000001";
const HOST_NETWORK_POD: &str = "0b1c2d3e-0000-4000-9000-000000000002";
const ONE_SECOND_POD: &str = "0b1c2d3e-0000-4000-9000-000000000003";

fn leaf(uid: &str, container: char) -> String {
    format!("kubepods/besteffort/pod{uid}/{}", container.to_string().repeat(64))
}

/// A pod in its own network namespace and a hostNetwork pod each exchange data with a peer of
/// every class: each pod's row has its own bytes, in the class's columns, within the headers;
/// and the node row is the sum of the pod rows in every interval.
#[test]
fn each_pod_has_its_own_bytes_by_where_they_went() {
    if !have_root("each_pod_has_its_own_bytes_by_where_they_went") {
        return;
    }
    let _g = exclusive();
    let lab = Lab::new();
    let pod_ns = lab.pod_namespace("bytes-pod", "10.250.0.2/24");
    let cg = TestCgroup::new("bytes", &[&leaf(OWN_NS_POD, 'a'), &leaf(HOST_NETWORK_POD, 'b')]);
    let mut sampler = tests::pod_sampler_counting_bytes(Some(ranges()));
    sampler.sample();
    node_is_the_sum_of_its_pods(&sampler.sample());

    let own_ns = exchange_with_every_class(&cg.leaves[0], Some(&pod_ns));
    let host_network = exchange_with_every_class(&cg.leaves[1], None);
    let row = sampler.sample();
    node_is_the_sum_of_its_pods(&row);
    check_exchanges("the pod with its own namespace", pod_row(&row, OWN_NS_POD), own_ns);
    check_exchanges("the hostNetwork pod", pod_row(&row, HOST_NETWORK_POD), host_network);
    // The node row counts at least both pods' traffic.
    let sent: i64 = [OWN_NS_POD, HOST_NETWORK_POD].iter().map(|p| event(pod_row(&row, p), Event::TxOutsideBytes)).sum();
    assert!(row.event(Event::TxOutsideBytes).unwrap() >= sent);

    // A quiet interval: the pods' rows count nothing more.
    let row = sampler.sample();
    node_is_the_sum_of_its_pods(&row);
    for uid in [OWN_NS_POD, HOST_NETWORK_POD] {
        if let Some(p) = row.pods.iter().find(|p| p.owner == uid) {
            for e in Event::NET_BYTES {
                assert_eq!(p.event(e), Some(0), "{uid}: {} in a quiet interval", e.name());
            }
        }
    }
}

/// A pod that lives about a second: its cgroup and namespace are made, it sends 32 MiB to the
/// outside, and both are gone before the next read. Its row (named from the cgroup_mkdir hook)
/// still has every byte.
#[test]
fn a_pod_that_lives_one_second_keeps_its_bytes() {
    if !have_root("a_pod_that_lives_one_second_keeps_its_bytes") {
        return;
    }
    let _g = exclusive();
    let lab = Lab::new();
    let mut sampler = tests::pod_sampler_counting_bytes(Some(ranges()));
    sampler.sample();
    sampler.sample();
    const SENT: u64 = 32 << 20;
    let started = std::time::Instant::now();
    let resent = {
        let cg = TestCgroup::new("bytes-short", &[&leaf(ONE_SECOND_POD, 'c')]);
        let ns = lab.pod_namespace("bytes-short", "10.250.0.4/24");
        send(&cg.leaves[0], Some(&ns), OUTSIDE_PEER, SENT, 0)
    };
    assert!(started.elapsed().as_secs_f64() < 5.0, "the short pod took {:?}", started.elapsed());
    let row = sampler.sample();
    node_is_the_sum_of_its_pods(&row);
    let pod = pod_row(&row, ONE_SECOND_POD);
    tcp_bytes(
        "the one-second pod",
        event(pod, Event::TxOutsideBytes),
        event(pod, Event::TxOutsidePackets),
        SENT + 8 + resent,
    );
    assert_eq!(pod.event(Event::TxNodeBytes), Some(0));
    assert_eq!(pod.event(Event::TxClusterBytes), Some(0));
}

/// IPv6: 100 datagrams of 1,000 bytes from a pod to ::1 (nothing listens; the sender's side is
/// what is checked) are exactly 100 packets and 104,800 bytes (40 bytes of IPv6 header and 8 of
/// UDP each) in its tx_node columns: the programs read the IPv6 header's destination and find
/// ::1 in the node's ranges.
#[test]
fn ipv6_datagrams_are_counted_exactly_by_their_peer() {
    if !have_root("ipv6_datagrams_are_counted_exactly_by_their_peer") {
        return;
    }
    let _g = exclusive();
    const IPV6_POD: &str = "0b1c2d3e-0000-4000-9000-000000000004";
    let cg = TestCgroup::new("bytes-v6", &[&leaf(IPV6_POD, 'd')]);
    let mut sampler = tests::pod_sampler_counting_bytes(Some(ranges()));
    sampler.sample();
    sampler.sample();
    run_in(&cg.leaves[0], None, &["udp-send", "::1", "7003", "100", "1000"]);
    let row = sampler.sample();
    node_is_the_sum_of_its_pods(&row);
    let pod = pod_row(&row, IPV6_POD);
    let got =
        [Event::TxNodeBytes, Event::TxNodePackets, Event::TxClusterBytes, Event::TxOutsideBytes].map(|e| event(pod, e));
    assert_eq!(got, [104_800, 100, 0, 0], "tx node bytes/packets, cluster, outside");
}
