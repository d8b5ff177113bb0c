//! Per-cgroup eBPF counts against known workloads run inside kubelet-style cgroups made on this
//! machine's cgroup v2 tree (platform.md: on this hybrid host, only v2 membership changes). Each
//! workload is a child process moved into its cgroup before it execs. Checked exactly:
//! fork/exec/exit per cgroup; TCP transitions, failed connects and resets attributed to the
//! socket's owner even when the kernel handles them in softirq (client and server in different
//! cgroups); and the sum over every cgroup against the kernel's own count of forks
//! (/proc/stat `processes`), the node total the agent reports.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use agent::ebpf::{CgroupSnapshot, EbpfCounters, EbpfSnapshot, LoadOptions};
use agent_common::{Event, EVENT_COUNT};
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
    agent::ebpf::ensure_tracefs();
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
    let loop_of = |n: u64| format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done");
    exactly("forks per cgroup", || {
        let (p0, n0, c0) = read(&mut ebpf);
        let a = in_cgroup("/bin/sh", &["-c", &loop_of(N)], &cg.leaves[0]).status().unwrap();
        let b = in_cgroup("/bin/sh", &["-c", &loop_of(M)], &cg.leaves[1]).status().unwrap();
        assert!(a.success() && b.success());
        let (p1, n1, c1) = read(&mut ebpf);
        // Each /bin/true: one fork by the shell, one exec, one exit; plus the shell's own exec
        // (after it joined) and exit. The fork that made the shell was the test's.
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
    let server_code = format!(
        "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(64)\nprint(s.getsockname()[1],flush=True)\n\
         for _ in range({OK}):\n    c,_=s.accept()\n    c.recv(1)\n    c.close()\n"
    );
    let client_code = |port: u16, closed: u16| {
        format!(
            "import socket\nfor _ in range({OK}):\n    c=socket.create_connection(('127.0.0.1',{port}))\n    c.send(b'x')\n    c.close()\n\
             for _ in range({REFUSED}):\n    c=socket.socket()\n    try:\n        c.connect(('127.0.0.1',{closed}))\n    except ConnectionRefusedError:\n        pass\n    c.close()\n"
        )
    };
    exactly("tcp per cgroup", || {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (p0, n0, c0) = read(&mut ebpf);
        let mut server =
            in_cgroup("/usr/bin/python3", &["-c", &server_code], &cg.leaves[1]).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let client =
            in_cgroup("/usr/bin/python3", &["-c", &client_code(port, closed)], &cg.leaves[0]).status().unwrap();
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
        // The resets for the closed port were sent on behalf of no socket: the "other" id 0.
        if delta(&c0, &c1, 0, Event::TcpRstSent) < REFUSED {
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
    agent::ebpf::ensure_tracefs();
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
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
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
    let root = agent::cgroups::cgroup2_root_of_this_host().unwrap();
    let mut pods = agent::pods::PodSampler::new(root, "/nonexistent".into(), agent::netns::Proc::default());
    let sample = |ebpf: &mut EbpfCounters, pods: &mut agent::pods::PodSampler| {
        let (_, cgroups) = ebpf.read_all().unwrap();
        let cgroups = cgroups.unwrap();
        let rows = pods.sample(ebpf, cgroups.clone(), None, "thousand", std::time::SystemTime::now(), Some(1.0));
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
    assert!(!rows.iter().any(|r| r.owner.starts_with("0a1b2c3d-0000-4000-9000-")));
    // The pods' cgroups (which counted) are retired and forgotten; the pod-level cgroups, which
    // never counted anything, are forgotten as soon as they are gone.
    assert!(
        pods.tracked() + 2 * PODS <= with_them + 8,
        "the agent still tracks {} cgroups ({with_them} with the test's)",
        pods.tracked()
    );
}

/// Socket creations by kind, per pod, through the syscall-tracepoint hook (the only socket hook
/// this kernel allows; fexit and kprobe count in the causing task's context the same way).
#[test]
fn sockets_created_in_a_pod_are_counted_there_by_kind() {
    if !have_root("sockets_per_cgroup") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new("sockets", &[&format!("{CGROUPFS_POD}/{}", "e".repeat(64))]);
    agent::ebpf::ensure_tracefs();
    let options = LoadOptions {
        cgroup_map_entries: Some(4096),
        socket_hook: agent::ebpf::SocketHook::Syscalls,
        ..LoadOptions::default()
    };
    let mut ebpf = EbpfCounters::load_with(options).unwrap();
    assert!(ebpf.failures().is_empty(), "{:?}", ebpf.failures());
    let code = "import socket as s\n\
                k=[s.socket(s.AF_INET,s.SOCK_STREAM) for _ in range(3)]\n\
                k+=[s.socket(s.AF_INET6,s.SOCK_DGRAM) for _ in range(2)]\n\
                k+=[s.socket(s.AF_UNIX,s.SOCK_STREAM) for _ in range(4)]\n\
                k+=list(s.socketpair())\n\
                k+=[s.socket(s.AF_INET,s.SOCK_RAW,1)]\n";
    exactly("sockets per cgroup", || {
        let (p0, n0, c0) = read(&mut ebpf);
        assert!(in_cgroup("/usr/bin/python3", &["-c", code], &cg.leaves[0]).status().unwrap().success());
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
            return Err(Miss::Wrong(format!("tcp/udp/unix/raw/other {got:?}, expected [3, 2, 6, 1, 0]")));
        }
        node_forks_match_proc_stat((p0, p1), &n0, &n1)
    });
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
    // Unbuffered: each write() is one 4 KiB page. The second loop rewrites the same pages.
    let writer = |path: &std::path::Path| {
        format!(
            "f=open({:?},'wb',buffering=0)\n\
             b=bytes(4096)\n\
             for _ in range(300): f.write(b)\n\
             f.seek(0)\n\
             for _ in range(300): f.write(b)\n\
             f.close()\n",
            path.display().to_string()
        )
    };
    exactly("folios dirtied per cgroup", || {
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(&shm);
        let (p0, n0, c0) = read(&mut ebpf);
        let run =
            |code: String, leaf| in_cgroup("/usr/bin/python3", &["-I", "-B", "-c", &code], leaf).status().unwrap();
        assert!(run(writer(&disk), &cg.leaves[0]).success());
        assert!(run(writer(&shm), &cg.leaves[1]).success());
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
