//! Every network namespace counts: real `ip netns` namespaces joined by veth pairs, holding TCP
//! connections, with the real eBPF programs.
//!
//! - The node's est_conn equals `ss` run in the host's namespace plus `ss` in every test
//!   namespace, at every row: with connections held from before the agent starts, a set
//!   opened and closed across several re-checks, connections across a veth pair, and a
//!   namespace removed while it holds sockets. No re-check finds drift.
//! - Namespaces found at the start are seeded a few at a time: the node's gauges are None until
//!   the last one is, then right.
//! - A pod (a kubelet-style cgroup whose process lives in its own namespace) gets that
//!   namespace's interface counters, equal to its /proc/net/dev, and its TCP gauges; a
//!   host-networked pod gets `network = host` and no network columns.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use tests::{
    agent_command,
    cgroup::{in_cgroup, TestCgroup},
    exclusive, have_root,
    netns::{host_established, Holder, NetNs, HOLDER},
};

/// `feature-agent print` with stdout read row by row, stderr kept.
struct Printing {
    child: Child,
    rows: std::io::Lines<BufReader<std::process::ChildStdout>>,
    log: std::path::PathBuf,
    /// A node row read ahead by [`Printing::next_interval`].
    ahead: Option<serde_json::Value>,
}

impl Printing {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("feature-agent-netns-{}-{}.log", std::process::id(), args.len()));
        let mut cmd = agent_command();
        cmd.arg("print").args(args).env("RUST_LOG", "info").envs(env.iter().copied());
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&log).unwrap()).spawn().expect("the agent runs");
        let rows = BufReader::new(child.stdout.take().unwrap()).lines();
        Printing { child, rows, log, ahead: None }
    }

    /// The next JSON object the agent prints (a node row, or a pod row with --pod-rows).
    fn next(&mut self) -> serde_json::Value {
        let line = self.rows.next().unwrap_or_else(|| panic!("the agent stopped early:\n{}", self.log())).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// The next node row and the pod rows printed after it. The end of the pod rows shows only
    /// when the next node row is printed, so this returns after the next sample was taken (or
    /// at the last row).
    fn next_interval(&mut self) -> (serde_json::Value, Vec<serde_json::Value>) {
        let node = match self.ahead.take() {
            Some(v) => v,
            None => self.next(),
        };
        let mut pods = Vec::new();
        for line in self.rows.by_ref() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if v["row"] != "pod" {
                self.ahead = Some(v);
                break;
            }
            pods.push(v);
        }
        (node, pods)
    }

    /// The next node row (with --pod-rows, pod rows are tagged "row": "pod").
    fn next_node(&mut self) -> serde_json::Value {
        loop {
            let v = self.next();
            if v["row"] != "pod" {
                return v;
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "{log}");
        let _ = std::fs::remove_file(&self.log);
        log
    }
}

fn holder(ns: &NetNs, args: &[&str]) -> Holder {
    Holder::start(tests::netns::holder_command(Some(ns), args))
}

#[test]
fn node_connection_gauges_count_every_namespace_across_rechecks() {
    if !have_root("node_connection_gauges_count_every_namespace_across_rechecks") {
        return;
    }
    let _g = exclusive();
    // The scenario a user first tried: namespace A holds 50 loopback connections (100 sockets)
    // from before the agent starts; 30 more (60 sockets) open and close across re-checks (every
    // 4 s). Then namespace B, joined to A by a veth pair, opens 10 connections to a server in A,
    // and B is deleted while its process still holds them.
    let a = NetNs::new("a");
    let b = NetNs::new("b");
    a.veth_to(Some(&b), "10.203.0.1", "10.203.0.2");
    let _pairs = holder(&a, &["pairs", "9100", "50"]);
    let _server = holder(&a, &["serve", "10.203.0.1", "9101"]);
    let mut b = Some(b);
    let (mut extra, mut clients) = (None, None);

    const ROWS: usize = 19;
    let mut agent =
        Printing::start(&["--interval", "1", "--tcp-recheck-interval", "4", "--records", &ROWS.to_string()], &[]);
    let mut seen = Vec::new();
    for row in 0..ROWS {
        let v = agent.next_node();
        let est = v["est_conn"].as_i64().unwrap_or_else(|| panic!("row {row} has no est_conn: {v}"));
        let in_namespaces = a.established() + b.as_ref().map_or(0, NetNs::established);
        let beyond_host = est - host_established();
        seen.push(beyond_host);
        assert_eq!(
            beyond_host, in_namespaces,
            "row {row}: est_conn {est} against ss in every namespace; rows so far {seen:?}"
        );
        // Changes happen between rows, and are complete before the next one.
        match row {
            4 => extra = Some(holder(&a, &["pairs", "9102", "30"])),
            9 => drop(extra.take()),
            12 => clients = Some(holder(b.as_ref().unwrap(), &["connect", "10.203.0.1", "9101", "10"])),
            15 => {
                // B is removed (`ip netns del`) while its process holds its sockets; they close
                // when that process dies, and the namespace goes with them. A's ends of those
                // connections leave ESTABLISHED (for CLOSE_WAIT).
                drop(b.take());
                clients.take().unwrap().stop();
            }
            _ => {}
        }
    }
    let log = agent.finish();
    // The known counts: 100, 160 while the second set is open, 100, 120 with B's 10 connections
    // (both ends counted, one in each namespace), 100 once B is gone.
    let want: Vec<i64> = (0..ROWS)
        .map(|r| match r {
            5..=9 => 160,
            13..=15 => 120,
            _ => 100,
        })
        .collect();
    assert_eq!(seen, want, "{log}");
    assert!(log.contains("seeded TCP connection gauges from every network namespace"), "{log}");
    assert!(!log.contains("drifted"), "a re-check found drift:\n{log}");
}

#[test]
fn pods_get_their_own_namespace_network_and_host_networked_pods_are_marked() {
    if !have_root("pods_get_their_own_namespace_network_and_host_networked_pods_are_marked") {
        return;
    }
    let _g = exclusive();
    const UID_OWN: &str = "0a1b2c3d-4444-4222-8333-944455566677";
    const UID_HOST: &str = "0a1b2c3d-5555-4222-8333-944455566677";
    let own_leaf = format!("kubepods/burstable/pod{UID_OWN}/{}", "c".repeat(64));
    let host_leaf = format!("kubepods/besteffort/pod{UID_HOST}/{}", "d".repeat(64));
    let cg = TestCgroup::new("netns", &[&own_leaf, &host_leaf]);
    let logs = std::env::temp_dir().join(format!("feature-agent-pod-logs-netns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    for (pod, uid) in [("web-7d9f8-x2k4q", UID_OWN), ("node-exporter-abcde", UID_HOST)] {
        std::fs::create_dir_all(logs.join(format!("shop_{pod}_{uid}")).join("main")).unwrap();
    }

    // The pod's namespace, joined to the host by a veth pair; a server on the host side.
    let pod_ns = NetNs::new("pod");
    pod_ns.veth_to(None, "10.204.0.2", "10.204.0.1");
    let _server = Holder::start(tests::netns::holder_command(None, &["serve", "10.204.0.1", "9103"]));
    // The pod's process: in its cgroup and its namespace, 3 connections to the host from before
    // the agent starts, and one listener.
    let mut all = vec!["netns", "exec", pod_ns.name.as_str(), "python3", "-c", HOLDER, "connect", "10.204.0.1"];
    all.extend(["9103", "3"]);
    let pod = Holder::start(in_cgroup("ip", &all, &cg.leaves[0]));
    let pod_listener = Holder::start(in_cgroup(
        "ip",
        &["netns", "exec", &pod_ns.name, "python3", "-c", HOLDER, "serve", "10.204.0.2", "9104"],
        &cg.leaves[0],
    ));
    // The host-networked pod: a process in the host's namespace.
    let host_pod = Holder::start(in_cgroup("python3", &["-c", HOLDER, "serve", "127.0.0.1", "9105"], &cg.leaves[1]));

    let mut agent = Printing::start(
        &["--pod-rows", "--interval", "1", "--records", "8"],
        &[("POD_LOGS_DIR", logs.to_str().unwrap())],
    );
    // The pod's counters only move with the test's own traffic (a fresh namespace, IPv6 off).
    let before = pod_ns.interfaces();
    let mut after = None;
    let mut checked = 0;
    for row in 0..8 {
        let (node, pods) = agent.next_interval();
        assert!(node["est_conn"].is_number(), "{node}");
        let find = |uid: &str| pods.iter().find(|p| p["owner"] == uid).cloned();
        if let (Some(own), Some(host)) = (find(UID_OWN), find(UID_HOST)) {
            assert_eq!(own["network"], "own", "{own}");
            let got = [&own["net_receive"], &own["receive_packets"], &own["net_transmit"], &own["transmit_packets"]]
                .map(|v| v.as_i64().unwrap_or_else(|| panic!("row {row}: a NULL network column: {own}")));
            // Rows from the fifth on were sampled after the burst below.
            let want = match after {
                Some(a) if row >= 5 => a,
                _ => before,
            };
            assert_eq!(got, want, "row {row}: the pod's counters against its namespace's /proc/net/dev");
            assert_eq!([&own["est_conn"], &own["lis_conn"]], [3, 1], "row {row}: {own}");
            assert_eq!(host["network"], "host", "{host}");
            for c in ["net_receive", "net_transmit", "est_conn", "lis_conn"] {
                assert!(host[c].is_null(), "a host-networked pod has no {c}: {host}");
            }
            checked += 1;
        }
        // Once (after the fourth row was sampled, before the fifth): 200 kB from the pod to the
        // host over the veth, on a connection that then closes.
        if row == 3 {
            let mut args = vec!["netns", "exec", pod_ns.name.as_str(), "python3", "-c", HOLDER, "connect"];
            args.extend(["10.204.0.1", "9103", "1", "200000"]);
            let burst = Holder::start(in_cgroup("ip", &args, &cg.leaves[0]));
            std::thread::sleep(Duration::from_millis(100));
            burst.stop();
            std::thread::sleep(Duration::from_millis(100));
            let a = pod_ns.interfaces();
            assert!(a[2] - before[2] > 200_000, "the burst crossed the veth: {before:?} -> {a:?}");
            after = Some(a);
        }
    }
    drop((pod, pod_listener, host_pod));
    let log = agent.finish();
    assert!(checked >= 6, "pod rows with both pods: {checked}\n{log}");
}

/// Namespaces found at the start are seeded a few at a time (a time budget per interval), so a
/// node of 500 pods gets its first row on time. Until the last one is seeded the node's gauges
/// are None, never a count that leaves some namespaces out; then they are every namespace's
/// connections, and each namespace's gauge is its own. Here with a zero budget: one namespace
/// per call.
#[test]
fn namespaces_found_at_the_start_are_seeded_a_few_at_a_time() {
    if !have_root("namespaces_found_at_the_start_are_seeded_a_few_at_a_time") {
        return;
    }
    let _g = exclusive();
    let spaces: Vec<NetNs> = (0..3).map(|i| NetNs::new(&format!("seed{i}"))).collect();
    // 5, 10 and 15 loopback connections (both ends ESTABLISHED), held from before the seed.
    let _holders: Vec<Holder> =
        spaces.iter().enumerate().map(|(i, ns)| holder(ns, &["pairs", "9200", &(5 * (i + 1)).to_string()])).collect();
    agent::sources::ebpf::ensure_tracefs();
    let ebpf = agent::sources::ebpf::EbpfCounters::load().expect("the programs load");
    let mut diag = agent::sources::tcp_diag::TcpDiag::open().expect("a sock_diag socket");
    let mut g = agent::sources::conn_gauges::ConnGauges::seed(
        &ebpf,
        Some(&mut diag),
        agent::sources::netns::Proc::default(),
        Duration::from_secs(3600),
        Duration::ZERO,
    )
    .expect("the gauges seed");
    let mut calls = 1;
    while !g.seeded() {
        assert!(g.node(&ebpf.read().unwrap()).is_none(), "a node count before every namespace is seeded");
        g.seed_pending(&ebpf, Duration::ZERO);
        calls += 1;
        assert!(calls < 10_000, "the seed never ends");
    }
    assert!(calls >= 3, "three test namespaces (and any other) seeded one at a time, in {calls} calls");
    let node = g.node(&ebpf.read().unwrap()).expect("every namespace seeded");
    let in_namespaces: i64 = spaces.iter().map(NetNs::established).sum();
    assert_eq!(in_namespaces, 60);
    assert_eq!(node.established - host_established(), in_namespaces, "{node:?}");
}
