//! Per-cgroup eBPF counts against known workloads run inside kubelet-style cgroups made on this
//! machine's cgroup v2 tree (platform.md: on this hybrid host, only v2 membership changes). Each
//! workload is a child process moved into its cgroup before it execs. Checked exactly:
//! fork/exec/exit per cgroup; TCP transitions, failed connects and resets attributed to the
//! socket's owner even when the kernel handles them in softirq (client and server in different
//! cgroups); and the sum over every cgroup against the kernel's own count of forks
//! (/proc/stat `processes`), the node total the agent reports.
//!
//! The workloads are `pod-workload` (tests/src/bin), a static binary, so `cargo xtask
//! kernel-test` runs these same tests in its 6.1 and 6.12 VMs.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use agent::sources::ebpf::{CgroupSnapshot, EbpfCounters, EbpfSnapshot, LoadOptions};
use agent::sources::pods::Stamp;
use agent_common::{Event, KernelCondition, EVENT_COUNT};
use tests::{
    cgroup::{in_cgroup, TestCgroup},
    exactly, exclusive, have_root, Miss,
};

fn load() -> EbpfCounters {
    load_with(false)
}

/// Per-cgroup counting on; with `fallbacks`, the classic and raw tracepoints (owner read with
/// bpf_probe_read_kernel) instead of the BTF ones (owner read by direct loads).
fn load_with(fallbacks: bool) -> EbpfCounters {
    agent::sources::ebpf::ensure_tracefs();
    let options =
        LoadOptions { cgroup_map_entries: Some(4096), classic_tracepoints: fallbacks, ..LoadOptions::default() };
    let c = EbpfCounters::load_with(options).expect("the eBPF programs load into this kernel");
    assert!(c.failures().is_empty(), "every program attaches: {:?}", c.failures());
    assert_eq!(c.per_cgroup().map(|p| p.socket_events), Some(true), "this kernel's BTF names socket owners");
    let want = |program: &'static str, btf: &'static str, fallback: &'static str| {
        let hook = if fallbacks { fallback } else { btf };
        assert!(c.hooks().contains(&(program, hook)), "{program} as {hook}: {:?}", c.hooks());
    };
    // The BTF programs read the owner by direct loads: the verifier accepted them.
    want("inet_sock_set_state", "tp_btf", "tracepoint");
    want("tcp_send_reset", "tp_btf", "raw_tp");
    want("tcp_receive_reset", "tp_btf", "raw_tp");
    c
}

/// The count of `e` in cgroup `id` between two reads. The cgroup must be in the later read (its
/// workload ran, so it counted something); a cgroup missing from the earlier read had counted
/// nothing yet.
fn delta(a: &CgroupSnapshot, b: &CgroupSnapshot, id: u64, e: Event) -> u64 {
    let after = b.by_cgroup.get(&id).unwrap_or_else(|| panic!("cgroup {id} is not in the per-cgroup map"))[e as usize];
    let before = a.by_cgroup.get(&id).map_or(0, |c| c[e as usize]);
    after - before
}

fn processes_total() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap();
    text.lines().find_map(|l| l.strip_prefix("processes ")).unwrap().trim().parse().unwrap()
}

/// The node's fork count the agent reports (read_all's node row: the sum over cgroups, the
/// overflow and the retired counts) against the kernel's own count over the same window,
/// /proc/stat's `processes`: the one node-wide count the kernel keeps independently of our
/// programs. (The node row of every event is that same sum by construction; comparing the two
/// would prove nothing.) The two are read a moment apart, so a fork elsewhere in between is
/// noise, and the window is measured again.
fn node_forks_match_proc_stat((p0, p1): (u64, u64), n0: &EbpfSnapshot, n1: &EbpfSnapshot) -> Result<(), Miss> {
    let node = n1.get(Event::Fork) - n0.get(Event::Fork);
    if node != p1 - p0 {
        return Err(Miss::Noisy(format!("forks: node row {node}, /proc/stat processes {}", p1 - p0)));
    }
    Ok(())
}

/// The node row's eBPF counts and the per-cgroup counts, from one read, with /proc/stat's fork
/// count taken just before.
fn read(ebpf: &mut EbpfCounters) -> (u64, EbpfSnapshot, CgroupSnapshot) {
    let p = processes_total();
    let (node, cg) = ebpf.read_all().unwrap();
    (p, node, cg.unwrap())
}

/// The workload binary, built with this test (its path is fixed at build time; the kernel-test
/// VMs copy it to the same path).
const WORKLOAD: &str = env!("CARGO_BIN_EXE_pod-workload");

const SYSTEMD_POD: &str =
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4789_8abc_0123456789ab.slice";
const CGROUPFS_POD: &str = "kubepods/besteffort/pod9a8b7c6d-5e4f-4321-9fed-cba987654321";

#[test]
fn forks_execs_and_exits_are_counted_in_the_pod_that_made_them() {
    if !have_root("forks_execs_and_exits_per_cgroup") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new(
        "procs",
        &[
            &format!("{SYSTEMD_POD}/cri-containerd-{}.scope", "a".repeat(64)),
            &format!("{CGROUPFS_POD}/{}", "b".repeat(64)),
        ],
    );
    let mut ebpf = load();
    const N: u64 = 100;
    const M: u64 = 7;
    exactly("forks per cgroup", || {
        let (p0, n0, c0) = read(&mut ebpf);
        let a = in_cgroup(WORKLOAD, &["spawn", &N.to_string()], &cg.leaves[0]).status().unwrap();
        let b = in_cgroup(WORKLOAD, &["spawn", &M.to_string()], &cg.leaves[1]).status().unwrap();
        assert!(a.success() && b.success());
        let (p1, n1, c1) = read(&mut ebpf);
        // Each child: one fork by the workload, one exec, one exit; plus the workload's own exec
        // (after it joined) and exit. The fork that made the workload was the test's.
        for (leaf, n) in [(0, N), (1, M)] {
            let id = cg.id(leaf);
            let got = [Event::Fork, Event::Exec, Event::Exit].map(|e| delta(&c0, &c1, id, e));
            if got != [n, n + 1, n + 1] {
                // Nothing else runs in a test's own cgroup: any difference is a miscount.
                return Err(Miss::Wrong(format!(
                    "cgroup {leaf}: fork/exec/exit {got:?}, expected [{n}, {}, {}]",
                    n + 1,
                    n + 1
                )));
            }
        }
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
    });
}

#[test]
fn tcp_events_are_attributed_to_the_socket_owner_on_both_ends() {
    if !have_root("tcp_events_per_cgroup") {
        return;
    }
    let _g = exclusive();
    for fallbacks in [false, true] {
        tcp_events_per_owner(load_with(fallbacks));
    }
}

fn tcp_events_per_owner(mut ebpf: EbpfCounters) {
    let cg = TestCgroup::new(
        "tcp",
        &[&format!("{SYSTEMD_POD}/crio-{}.scope", "c".repeat(64)), &format!("{CGROUPFS_POD}/{}", "d".repeat(64))],
    );
    const OK: u64 = 20;
    const REFUSED: u64 = 10;
    // The server (cgroup 1) accepts OK connections; the client (cgroup 0) makes them, then
    // REFUSED connects to a port nobody listens on.
    exactly("tcp per cgroup", || {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (p0, n0, c0) = read(&mut ebpf);
        let mut server = in_cgroup(WORKLOAD, &["tcp-server", &OK.to_string()], &cg.leaves[1])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let args =
            ["tcp-client".to_string(), port.to_string(), closed.to_string(), OK.to_string(), REFUSED.to_string()];
        let client = in_cgroup(WORKLOAD, &args.each_ref().map(String::as_str), &cg.leaves[0]).status().unwrap();
        assert!(client.success());
        assert!(server.wait().unwrap().success());
        // Let the last FIN/ACK exchanges settle before reading.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (p1, n1, c1) = read(&mut ebpf);
        let (client_id, server_id) = (cg.id(0), cg.id(1));
        let want = [
            (client_id, Event::TcpToSynSent, OK + REFUSED),
            (client_id, Event::TcpToEstablished, OK),
            (client_id, Event::TcpConnFailed, REFUSED),
            (client_id, Event::TcpRstRecv, REFUSED),
            (client_id, Event::TcpToListen, 0),
            (server_id, Event::TcpToListen, 1),
            (server_id, Event::TcpToSynRecv, OK),
            (server_id, Event::TcpToEstablished, OK),
            (server_id, Event::TcpToSynSent, 0),
            (server_id, Event::TcpConnFailed, 0),
        ];
        for (id, e, n) in want {
            let got = delta(&c0, &c1, id, e);
            if got != n {
                let who = if id == client_id { "client" } else { "server" };
                return Err(Miss::Wrong(format!("{who} {}: {got}, expected {n}", e.name())));
            }
        }
        // The resets for the closed port were sent on behalf of no socket: the "other" id 0
        // (on kernels whose tracepoint sees them, tests::kernel).
        if tests::kernel::resets_without_socket() && delta(&c0, &c1, 0, Event::TcpRstSent) < REFUSED {
            return Err(Miss::Wrong(format!("rst_sent under id 0: {}", delta(&c0, &c1, 0, Event::TcpRstSent))));
        }
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
    });
}

#[test]
fn a_full_map_sends_new_cgroups_to_overflow_and_totals_still_add_up() {
    if !have_root("cgroup_map_overflow") {
        return;
    }
    let _g = exclusive();
    let leaves: Vec<String> = (0..4).map(|i| format!("{CGROUPFS_POD}/c{i}")).collect();
    let cg = TestCgroup::new("overflow", &leaves.iter().map(String::as_str).collect::<Vec<_>>());
    agent::sources::ebpf::ensure_tracefs();
    // Two entries: the machine's own activity fills them at once; the test cgroups cannot get one.
    let mut ebpf =
        EbpfCounters::load_with(LoadOptions { cgroup_map_entries: Some(2), ..LoadOptions::default() }).unwrap();
    exactly("overflow", || {
        let (p0, n0, c0) = read(&mut ebpf);
        for leaf in &cg.leaves {
            assert!(in_cgroup("/bin/true", &[], leaf).status().unwrap().success());
        }
        let (p1, n1, c1) = read(&mut ebpf);
        if c1.by_cgroup.len() > 2 {
            return Err(Miss::Wrong(format!("{} entries in a map of 2", c1.by_cgroup.len())));
        }
        // At most two cgroups hold entries, so at least two of the four test cgroups have none:
        // their exec and exit went to the overflow counts.
        let without_entry = (0..cg.leaves.len()).filter(|&l| !c1.by_cgroup.contains_key(&cg.id(l))).count() as u64;
        let overflow: u64 = (0..EVENT_COUNT).map(|i| c1.overflow[i] - c0.overflow[i]).sum();
        if without_entry < 2 || overflow < 2 * without_entry {
            return Err(Miss::Wrong(format!(
                "{without_entry} test cgroups without an entry, overflow grew by {overflow}"
            )));
        }
        // Each event that went to the overflow was an insert the full map refused.
        let refused = refused(&ebpf, KernelCondition::CgroupMapFull);
        if refused < overflow {
            return Err(Miss::Wrong(format!("{overflow} overflow events, {refused} refused inserts counted")));
        }
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
    });
}

/// Inserts a full map refused since the programs were loaded, for `condition`'s map.
fn refused(ebpf: &EbpfCounters, condition: KernelCondition) -> u64 {
    let all = ebpf.maps_full().expect("reading the refused inserts");
    all.iter().find(|(map, _)| *map == condition.map()).expect("every condition's map is reported").1
}

/// Every other map that can fill counts the inserts it refused (the agent exports them as
/// feature_agent_ebpf_map_full_total), with the maps made one entry small so the test fills
/// them: 14 new cgroups in a name map that nobody drains; listeners in 8 new network namespaces;
/// and, with the syscall socket hook, 8 threads making sockets at once on two or more CPUs, where
/// every socket either is counted in its cgroup or was refused: the two add up to the sockets
/// made.
#[test]
fn maps_that_fill_count_the_inserts_they_refused() {
    if !have_root("maps_full") {
        return;
    }
    let _g = exclusive();
    let leaves: Vec<String> = (0..10).map(|i| format!("{CGROUPFS_POD}/n{i}")).collect();
    let mut leaf_refs: Vec<&str> = vec!["storm"];
    agent::sources::ebpf::ensure_tracefs();
    let options = LoadOptions {
        cgroup_map_entries: Some(4096),
        small_maps: Some(1),
        socket_hook: agent::sources::ebpf::SocketHook::Syscalls,
        ..LoadOptions::default()
    };
    let ebpf = EbpfCounters::load_with(options).unwrap();
    assert!(ebpf.failures().is_empty(), "{:?}", ebpf.failures());
    let names_before = refused(&ebpf, KernelCondition::CgroupNamesFull);
    leaf_refs.extend(leaves.iter().map(String::as_str));
    let cg = TestCgroup::new("mapsfull", &leaf_refs);
    let names = refused(&ebpf, KernelCondition::CgroupNamesFull) - names_before;
    // The test's top cgroup, the pod's levels and the 11 leaves: at most one found room.
    assert!(names >= 13, "{names} cgroup names refused, expected at least 13 of the 14 new cgroups");

    let netns_before = refused(&ebpf, KernelCondition::NetnsMapFull);
    assert!(in_cgroup(WORKLOAD, &["listen-in-namespaces", "8"], &cg.leaves[1]).status().unwrap().success());
    let netns = refused(&ebpf, KernelCondition::NetnsMapFull) - netns_before;
    assert!(netns >= 7, "{netns} namespace inserts refused, expected at least 7 of 8 new namespaces");

    const THREADS: u64 = 8;
    const EACH: u64 = 20_000;
    let mut ebpf = ebpf;
    exactly("socket calls in flight", || {
        let r0 = refused(&ebpf, KernelCondition::SocketCallsFull);
        let (_, c0) = ebpf.read_all().unwrap();
        let storm = ["socket-storm".to_string(), THREADS.to_string(), EACH.to_string()];
        assert!(in_cgroup(WORKLOAD, &storm.each_ref().map(String::as_str), &cg.leaves[0]).status().unwrap().success());
        let (_, c1) = ebpf.read_all().unwrap();
        let counted = delta(&c0.unwrap(), &c1.unwrap(), cg.id(0), Event::SockAllocUnix);
        let calls = refused(&ebpf, KernelCondition::SocketCallsFull) - r0;
        let text = format!("{counted} sockets counted + {calls} refused, {} made", THREADS * EACH);
        // Refused inserts are node-wide: another process's socket() meanwhile can add one.
        match (counted + calls).cmp(&(THREADS * EACH)) {
            std::cmp::Ordering::Less => Err(Miss::Wrong(text)),
            std::cmp::Ordering::Greater => Err(Miss::Noisy(text)),
            std::cmp::Ordering::Equal if calls == 0 => Err(Miss::Noisy(format!("{text}: no call found the map full"))),
            std::cmp::Ordering::Equal => Ok(()),
        }
    });
}

/// 1,000 kubelet-style cgroups (500 pods of one container), each running one process: every
/// pod gets its row with its exact exec and exit; once they are removed, the agent retires them
/// from the kernel map and forgets them, so neither the map nor the agent's memory keeps growing
/// with cgroups that come and go.
#[test]
fn a_thousand_cgroups_get_their_rows_and_are_forgotten_once_removed() {
    if !have_root("thousand_cgroups") {
        return;
    }
    let _g = exclusive();
    const PODS: usize = 500;
    let uid = |k: usize| format!("0a1b2c3d-0000-4000-9000-{k:012}");
    let leaves: Vec<String> = (0..PODS).map(|k| format!("kubepods/besteffort/pod{}/{k:064x}", uid(k))).collect();
    let cg = TestCgroup::new("thousand", &leaves.iter().map(String::as_str).collect::<Vec<_>>());
    let mut ebpf = load();
    let root = agent::sources::cgroups::cgroup2_root_of_this_host().unwrap();
    let mut pods = agent::sources::pods::PodSampler::new(
        root.clone(),
        "/nonexistent".into(),
        agent::sources::netns::Proc::default(),
    );
    let sample = |ebpf: &mut EbpfCounters, pods: &mut agent::sources::pods::PodSampler| {
        let (_, cgroups) = ebpf.read_all().unwrap();
        let cgroups = cgroups.unwrap();
        let stamp = Stamp { node: "thousand", ts: std::time::SystemTime::now(), interval_s: Some(1.0) };
        let rows = pods.sample(ebpf, cgroups.clone(), None, None, stamp);
        (cgroups, rows)
    };
    sample(&mut ebpf, &mut pods);
    for leaf in &cg.leaves {
        assert!(in_cgroup("/bin/true", &[], leaf).status().unwrap().success());
    }
    let (_, rows) = sample(&mut ebpf, &mut pods);
    for k in 0..PODS {
        let row = rows.iter().find(|r| r.owner == uid(k)).unwrap_or_else(|| panic!("no row for pod {k}"));
        assert_eq!(
            (row.event(Event::Exec), row.event(Event::Exit), row.event(Event::Fork)),
            (Some(1), Some(1), Some(0))
        );
        assert_eq!(row.cgroups, Some(2), "the pod's cgroup and its container's");
    }
    // The test's cgroups and their parents are tracked (the walk found them).
    let with_them = pods.tracked();
    assert!(with_them >= 2 * PODS);
    let ids: Vec<u64> = (0..PODS).map(|l| cg.id(l)).collect();
    drop(cg);
    // Gone; then quiet for a whole interval; then retired.
    for _ in 0..3 {
        sample(&mut ebpf, &mut pods);
    }
    let (cgroups, rows) = sample(&mut ebpf, &mut pods);
    assert!(ids.iter().all(|id| !cgroups.by_cgroup.contains_key(id)), "removed cgroups left in the kernel map");
    let left: Vec<String> = rows
        .iter()
        .filter(|r| r.owner.starts_with("0a1b2c3d-0000-4000-9000-"))
        .map(|r| {
            format!(
                "{} cgroups={:?} execs={:?} exits={:?}",
                r.owner,
                r.cgroups,
                r.event(Event::Exec),
                r.event(Event::Exit)
            )
        })
        .collect();
    let walked = agent::sources::cgroups::walk_tree(&root, 8);
    let in_walk = walked.values().filter(|p| p.contains("0a1b2c3d-0000-4000-9000-")).count();
    let in_map = cgroups.by_cgroup.len();
    assert!(
        left.is_empty(),
        "{} rows of removed pods, e.g. {:?}; in a walk now: {in_walk} paths; map entries: {in_map}; the test's tree still exists: {}",
        left.len(),
        &left[..left.len().min(3)],
        std::fs::read_dir(&root)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("feature-agent-test-thousand")))
            .unwrap_or(false)
    );
    // The pods' cgroups (which counted) are retired and forgotten; the pod-level cgroups, which
    // never counted anything, are forgotten as soon as they are gone.
    assert!(
        pods.tracked() + 2 * PODS <= with_them + 8,
        "the agent still tracks {} cgroups ({with_them} with the test's)",
        pods.tracked()
    );
}

/// Socket creations by kind, per pod, through every socket hook this kernel allows (the syscall
/// tracepoints everywhere; fexit and kprobe where the kernel has them): each counts in the
/// creating task's context, so in its cgroup.
#[test]
fn sockets_created_in_a_pod_are_counted_there_by_kind() {
    if !have_root("sockets_per_cgroup") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new("sockets", &[&format!("{CGROUPFS_POD}/{}", "e".repeat(64))]);
    agent::sources::ebpf::ensure_tracefs();
    for (socket_hook, hook) in tests::kernel::socket_hooks().all_options() {
        let options = LoadOptions { cgroup_map_entries: Some(4096), socket_hook, ..LoadOptions::default() };
        let ebpf = EbpfCounters::load_with(options).unwrap();
        assert!(ebpf.failures().is_empty(), "{hook}: {:?}", ebpf.failures());
        sockets_by_kind(hook, ebpf, &cg);
    }
}

fn sockets_by_kind(hook: &str, mut ebpf: EbpfCounters, cg: &TestCgroup) {
    exactly("sockets per cgroup", || {
        let (p0, n0, c0) = read(&mut ebpf);
        assert!(in_cgroup(WORKLOAD, &["sockets"], &cg.leaves[0]).status().unwrap().success());
        let (p1, n1, c1) = read(&mut ebpf);
        let id = cg.id(0);
        let got = [
            Event::SockAllocTcp,
            Event::SockAllocUdp,
            Event::SockAllocUnix,
            Event::SockAllocRaw,
            Event::SockAllocOther,
        ]
        .map(|e| delta(&c0, &c1, id, e));
        if got != [3, 2, 6, 1, 0] {
            return Err(Miss::Wrong(format!("{hook}: tcp/udp/unix/raw/other {got:?}, expected [3, 2, 6, 1, 0]")));
        }
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
    });
}

/// Bytes per pod over loopback, through the socket-buffer programs (--count-bytes): what the
/// kernel matrix can run (tests/tests/net_bytes.rs needs `ip netns` and a bridge, which the VMs'
/// busybox lacks). A sender pod sends 100 UDP datagrams of 1,000 bytes to a sink pod: exactly
/// 100 packets and 102,800 bytes (28 bytes of IPv4 and UDP headers each) in the sender's
/// tx_node columns and the sink's rx_node columns. Then a TCP exchange (200,000 bytes there,
/// 100,000 back) from a pod that is removed right after: its counts stay in the map under its
/// id, within the headers (40 to 120 bytes a TCP packet, data resent counted again).
#[test]
fn loopback_bytes_are_counted_in_the_sending_and_receiving_pods() {
    if !have_root("loopback_bytes_per_cgroup") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new(
        "loopback-bytes",
        &[
            &format!("{CGROUPFS_POD}/{}", "d".repeat(64)),
            &format!("{SYSTEMD_POD}/cri-containerd-{}.scope", "e".repeat(64)),
        ],
    );
    let mut ebpf = load();
    let root = agent::sources::cgroups::cgroup2_root_of_this_host().unwrap();
    let _bytes = agent::sources::net_bytes::ByteCounting::attach(&mut ebpf, &root, Default::default())
        .expect("the socket-buffer programs attach at the cgroup v2 root");
    for e in Event::NET_BYTES {
        assert!(ebpf.is_live(e), "{} is counted", e.name());
    }
    let mut sink = tests::process::spawn_ready(&mut in_cgroup(WORKLOAD, &["sink", "7001"], &cg.leaves[1]));
    let (sender, receiver) = (cg.id(0), cg.id(1));
    exactly("UDP bytes per cgroup", || {
        let (_, _, c0) = read(&mut ebpf);
        let udp = in_cgroup(WORKLOAD, &["udp-send", "127.0.0.1", "7001", "100", "1000"], &cg.leaves[0]).status();
        assert!(udp.unwrap().success());
        let (_, _, c1) = read(&mut ebpf);
        let got = [
            delta(&c0, &c1, sender, Event::TxNodeBytes),
            delta(&c0, &c1, sender, Event::TxNodePackets),
            delta(&c0, &c1, receiver, Event::RxNodeBytes),
            delta(&c0, &c1, receiver, Event::RxNodePackets),
        ];
        // Nothing else runs in the two cgroups: any difference is a miscount.
        if got != [102_800, 100, 102_800, 100] {
            return Err(Miss::Wrong(format!("sent bytes/packets, received bytes/packets {got:?}")));
        }
        Ok(())
    });
    let (_, _, c0) = read(&mut ebpf);
    let short = TestCgroup::new("loopback-bytes-short", &[&format!("{CGROUPFS_POD}/{}", "f".repeat(64))]);
    let id = short.id(0);
    let out =
        in_cgroup(WORKLOAD, &["send", "127.0.0.1", "7001", "200000", "100000"], &short.leaves[0]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resent: u64 =
        String::from_utf8_lossy(&out.stdout).trim().strip_prefix("retransmitted ").unwrap().parse().unwrap();
    drop(short);
    let (_, _, c1) = read(&mut ebpf);
    let within = |what: &str, bytes: u64, packets: u64, data: u64| {
        assert!(
            packets > 0 && bytes >= data + 40 * packets && bytes <= data + 120 * packets,
            "{what}: {bytes} bytes in {packets} packets for {data} bytes of data"
        );
    };
    // The client's 8-byte reply size, then its data.
    let tx = (delta(&c0, &c1, id, Event::TxNodeBytes), delta(&c0, &c1, id, Event::TxNodePackets));
    within("the removed pod sent", tx.0, tx.1, 200_008 + resent);
    let rx = (delta(&c0, &c1, id, Event::RxNodeBytes), delta(&c0, &c1, id, Event::RxNodePackets));
    within("the removed pod received", rx.0, rx.1, 100_000);
    for e in [Event::TxClusterBytes, Event::TxOutsideBytes, Event::RxClusterBytes, Event::RxOutsideBytes] {
        assert_eq!(delta(&c0, &c1, id, e), 0, "{}: loopback is this node's", e.name());
    }
    let _ = sink.kill();
    let _ = sink.wait();
}

/// Page-cache folios dirtied by file writes, per pod: 300 separate 4 KiB writes to a new file on
/// the root filesystem (ext4) dirty 300 folios, counted in the writer's cgroup although the disk
/// write happens later in a flusher thread; rewriting those pages while they are still dirty adds
/// nothing, and the same writes to tmpfs (no writeback) count nothing. (A flusher that happens to
/// write some pages back between the two loops makes their rewrite count again: more than 300 is
/// noise, measured again; fewer is a miss.)
#[test]
fn file_writes_in_a_pod_count_the_folios_they_dirty() {
    if !have_root("folios_per_cgroup") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new(
        "folios",
        &[
            &format!("{CGROUPFS_POD}/{}", "f".repeat(64)),
            &format!("{SYSTEMD_POD}/cri-containerd-{}.scope", "9".repeat(64)),
        ],
    );
    let mut ebpf = load();
    assert!(ebpf.is_live(Event::FolioDirtied), "writeback_dirty_folio attaches on this kernel");
    let disk = std::path::Path::new("/var/tmp").join(format!("feature-agent-folios-{}", std::process::id()));
    let shm = std::path::Path::new("/dev/shm").join(format!("feature-agent-folios-{}", std::process::id()));
    // Each write() is one 4 KiB page; the second 300 rewrite the same pages.
    exactly("folios dirtied per cgroup", || {
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(&shm);
        let (p0, n0, c0) = read(&mut ebpf);
        let run = |path: &std::path::Path, leaf| {
            in_cgroup(WORKLOAD, &["write-pages", path.to_str().unwrap()], leaf).status().unwrap()
        };
        assert!(run(&disk, &cg.leaves[0]).success());
        assert!(run(&shm, &cg.leaves[1]).success());
        let (p1, n1, c1) = read(&mut ebpf);
        let got = [delta(&c0, &c1, cg.id(0), Event::FolioDirtied), delta(&c0, &c1, cg.id(1), Event::FolioDirtied)];
        let text = format!("disk/tmpfs folios dirtied {got:?}, expected [300, 0]");
        if got[0] < 300 || got[1] != 0 {
            return Err(Miss::Wrong(text));
        }
        if got[0] > 300 {
            return Err(Miss::Noisy(text));
        }
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
    });
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&shm);
}

/// A pod's cgroup directory stays open between reads and each read gives its files as they are
/// now: CPU time run in the cgroup after the first read shows in the second. Once the cgroup is
/// removed, its columns are NULL, not stale values.
#[test]
fn cgroup_files_read_fresh_values_and_nothing_once_removed() {
    if !have_root("cgroup_files_fresh") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new("fresh", &[&format!("{CGROUPFS_POD}/{}", "7".repeat(64))]);
    let mut dir = agent::sources::cgroups::CgroupDir::open(&cg.leaves[0]).unwrap();
    let cpu = |r: &[Option<i64>]| r[feature_schema::pods::Res::CpuUsage as usize];
    let before = cpu(&dir.read_resources()).expect("cpu.stat is in every cgroup v2 directory");
    assert!(in_cgroup(WORKLOAD, &["spawn", "200"], &cg.leaves[0]).status().unwrap().success());
    let after = cpu(&dir.read_resources()).unwrap();
    assert!(after > before, "usage_usec {before} then {after}: the file was read anew");
    drop(cg);
    assert_eq!(cpu(&dir.read_resources()), None, "a removed cgroup gives no value");
}
