//! The eBPF counters against ground truth, with the real programs loaded into this kernel:
//! forks against /proc/stat, TCP handshakes and refused connects, socket creations by kind, and
//! the est_conn / lis_conn gauges against the kernel's own table.
//!
//! The counters are node-wide, so anything else running on the machine adds to them. Each check
//! is exact, and is retried (up to ATTEMPTS windows) until a window was quiet; a real miscount
//! fails every attempt.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
};

use agent::{
    sources::collector::{self, DiskSelector, InterfaceSelector, Roots, Sources},
    sources::ebpf::{EbpfCounters, EbpfSnapshot, LoadOptions, SocketHook},
    sources::sampler::Sampler,
    sources::tcp_diag::TcpDiag,
};
use agent_common::Event;
use tests::{exactly, exclusive, expect_counts, have_root, Miss};

fn load() -> EbpfCounters {
    load_with(LoadOptions::default())
}

fn load_with(options: LoadOptions) -> EbpfCounters {
    agent::sources::ebpf::ensure_tracefs();
    let c = EbpfCounters::load_with(options).expect("the eBPF programs load into this kernel");
    assert!(c.failures().is_empty(), "every program attaches: {:?}", c.failures());
    let want = if options.classic_tracepoints { "tracepoint" } else { "tp_btf" };
    assert!(c.hooks().contains(&("inet_sock_set_state", want)), "{:?}", c.hooks());
    c
}

fn delta(before: &EbpfSnapshot, after: &EbpfSnapshot, e: Event) -> u64 {
    after.get(e) - before.get(e)
}

fn processes_total() -> i64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap();
    collector::stat::parse(&text, 100.0).unwrap().forks_total
}

#[test]
fn forks_match_proc_stat_and_execs_are_exact() {
    if !have_root("forks_match_proc_stat") {
        return;
    }
    let _g = exclusive();
    let ebpf = load();
    const N: u64 = 200;
    exactly("forks", || {
        let (p0, s0) = (processes_total(), ebpf.read().unwrap());
        for _ in 0..N {
            Command::new("/bin/true").status().unwrap();
        }
        let (s1, p1) = (ebpf.read().unwrap(), processes_total());
        let forks = delta(&s0, &s1, Event::Fork);
        let execs = delta(&s0, &s1, Event::Exec);
        let exits = delta(&s0, &s1, Event::Exit);
        if forks != (p1 - p0) as u64 {
            // The two counters are read a moment apart: a fork elsewhere in between differs.
            return Err(Miss::Noisy(format!("ebpf_forks {forks} != forks_total delta {}", p1 - p0)));
        }
        expect_counts("[forks, execs, exits]", [forks, execs, exits], [N, N, N])
    });
}

#[test]
fn loopback_connections_count_handshakes_exactly() {
    if !have_root("loopback_connections") {
        return;
    }
    let _g = exclusive();
    for classic_tracepoints in [false, true] {
        loopback_handshakes(load_with(LoadOptions { classic_tracepoints, ..LoadOptions::default() }));
    }
}

fn loopback_handshakes(ebpf: EbpfCounters) {
    const N: u64 = 50;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    exactly("loopback handshakes", || {
        let s0 = ebpf.read().unwrap();
        for _ in 0..N {
            let mut client = TcpStream::connect(addr).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).unwrap();
            client.shutdown(Shutdown::Both).unwrap();
            drop(client);
            drop(server);
        }
        let s1 = ebpf.read().unwrap();
        let got = [
            delta(&s0, &s1, Event::TcpToEstablished),
            delta(&s0, &s1, Event::TcpToSynSent),
            delta(&s0, &s1, Event::TcpToSynRecv),
            delta(&s0, &s1, Event::TcpConnFailed),
        ];
        expect_counts("[to_est, to_syn_sent, to_syn_recv, conn_failed]", got, [2 * N, N, N, 0])
    });
}

#[test]
fn connects_to_a_closed_port_fail_and_are_reset() {
    if !have_root("closed_port") {
        return;
    }
    let _g = exclusive();
    for classic_tracepoints in [false, true] {
        closed_port(load_with(LoadOptions { classic_tracepoints, ..LoadOptions::default() }));
    }
}

fn closed_port(ebpf: EbpfCounters) {
    const N: u64 = 30;
    // A port that nothing listens on: bind to learn a free one, then close it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    exactly("closed port", || {
        let s0 = ebpf.read().unwrap();
        for _ in 0..N {
            let e = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        let s1 = ebpf.read().unwrap();
        let failed = delta(&s0, &s1, Event::TcpConnFailed);
        let rst_sent = delta(&s0, &s1, Event::TcpRstSent);
        let rst_recv = delta(&s0, &s1, Event::TcpRstRecv);
        let syn_sent = delta(&s0, &s1, Event::TcpToSynSent);
        // Kernels before 6.10 fire tcp_send_reset only for resets sent by a socket, so the RST
        // answering a SYN to a closed port is not seen there (tests::kernel; README "Kernels").
        if !tests::kernel::resets_without_socket() {
            if rst_sent > 0 {
                return Err(Miss::Noisy(format!("rst_sent {rst_sent}, expected 0 on this kernel")));
            }
        } else if rst_sent < N {
            return Err(Miss::Wrong(format!("rst_sent {rst_sent}, expected at least {N}")));
        }
        expect_counts("[conn_failed, rst_recv, syn_sent]", [failed, rst_recv, syn_sent], [N, N, N])
    });
}

fn socket(family: i32, ty: i32, protocol: i32) -> i32 {
    // SAFETY: plain socket(2); the caller closes the descriptor.
    unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) }
}

/// Every socket hook this kernel has (tests::kernel), each checked exactly: fexit, kprobe and the
/// syscall fallback on the QEMU matrix's kernels, only the fallback on this project's CI host.
/// The second field is the hook's kind as the agent reports it.
fn socket_hooks() -> Vec<(SocketHook, &'static str)> {
    let kind = |name| if name == "syscalls" { "tracepoint" } else { name };
    tests::kernel::socket_hooks().all_options().into_iter().map(|(hook, name)| (hook, kind(name))).collect()
}

/// `--socket-hook auto` picks the cheapest hook the kernel allows (tests::kernel), and never the
/// syscall fallback.
#[test]
fn auto_socket_hook_is_the_cheapest_this_kernel_allows() {
    if !have_root("auto_socket_hook") {
        return;
    }
    let _g = exclusive();
    let want = tests::kernel::socket_hooks().auto();
    let ebpf = load();
    let got = ebpf.programs().iter().find(|p| p.columns.contains(&"sock_alloc_tcp")).map_or("none", |p| p.hook);
    assert_eq!(got, want, "{:?}", ebpf.programs());
    assert_eq!(ebpf.is_live(Event::SockAllocTcp), want != "none");
    assert!(!ebpf.programs().iter().any(|p| p.program.starts_with("sys_")), "auto never takes the syscall fallback");
}

#[test]
fn sockets_created_are_counted_by_kind() {
    if !have_root("sockets_by_kind") {
        return;
    }
    let _g = exclusive();
    for (hook, kind) in socket_hooks() {
        let ebpf = load_with(LoadOptions { socket_hook: hook, ..LoadOptions::default() });
        assert!(
            ebpf.programs().iter().any(|p| p.hook == kind && p.columns.contains(&"sock_alloc_unix")),
            "{hook:?}: {:?}",
            ebpf.programs()
        );
        count_sockets_by_kind(&ebpf, hook);
    }
}

fn count_sockets_by_kind(ebpf: &EbpfCounters, hook: SocketHook) {
    exactly(&format!("sockets by kind ({hook:?})"), || {
        let mut fds = Vec::new();
        let s0 = ebpf.read().unwrap();
        for _ in 0..5 {
            fds.push(socket(libc::AF_INET, libc::SOCK_STREAM, 0));
            fds.push(socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0));
        }
        for _ in 0..7 {
            fds.push(socket(libc::AF_INET, libc::SOCK_DGRAM, 0));
        }
        for _ in 0..4 {
            fds.push(socket(libc::AF_UNIX, libc::SOCK_STREAM, 0));
        }
        for _ in 0..3 {
            fds.push(socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP));
            fds.push(socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0));
        }
        for _ in 0..2 {
            fds.push(socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_ROUTE));
        }
        // Two socketpairs: four unix sockets.
        let pairs: Vec<_> = (0..2).map(|_| std::os::unix::net::UnixStream::pair().unwrap()).collect();
        // Refused calls create nothing and count nothing.
        assert_eq!(socket(9999, libc::SOCK_STREAM, 0), -1);
        assert_eq!(socket(libc::AF_INET, libc::SOCK_STREAM, 9999), -1);
        let s1 = ebpf.read().unwrap();
        assert!(fds.iter().all(|&fd| fd >= 0), "every socket call succeeded");
        for fd in fds {
            // SAFETY: closing descriptors we opened.
            unsafe { libc::close(fd) };
        }
        drop(pairs);
        let got = [
            delta(&s0, &s1, Event::SockAllocTcp),
            delta(&s0, &s1, Event::SockAllocUdp),
            delta(&s0, &s1, Event::SockAllocUnix),
            delta(&s0, &s1, Event::SockAllocRaw),
            delta(&s0, &s1, Event::SockAllocOther),
        ];
        expect_counts("[tcp, udp, unix, raw, other]", got, [10, 7, 8, 6, 2])
    });
}

fn sampler_with_ebpf() -> Sampler {
    let roots = Roots::default();
    let sources =
        Sources::new(roots.clone(), DiskSelector::default_for(&roots.sysfs), InterfaceSelector::physical(&roots.sysfs));
    Sampler::new(
        "gauges".into(),
        sources,
        Some(load()),
        std::time::Duration::from_secs(3600),
        agent::sources::netns::Proc::default(),
    )
}

#[test]
fn connection_gauges_follow_the_kernel_table() {
    if !have_root("connection_gauges") {
        return;
    }
    let _g = exclusive();
    let mut sampler = sampler_with_ebpf();
    let mut diag = TcpDiag::open().unwrap();
    const M: i32 = 20;
    exactly("gauges", || {
        let r0 = sampler.sample();
        let dump0 = diag.count().unwrap();
        if (r0.est_conn, r0.lis_conn) != (Some(dump0.established as i32), Some(dump0.listening as i32)) {
            return Err(Miss::Noisy(format!("gauges {:?}/{:?} != dump {dump0:?} at start", r0.est_conn, r0.lis_conn)));
        }
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..M {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            held.push((c, s));
        }
        let r1 = sampler.sample();
        let want = (r0.est_conn.unwrap() + 2 * M, r0.lis_conn.unwrap() + 1);
        if (r1.est_conn.unwrap(), r1.lis_conn.unwrap()) != want {
            return Err(Miss::Noisy(format!(
                "with {M} held connections: {:?}/{:?}, expected {want:?}",
                r1.est_conn, r1.lis_conn
            )));
        }
        drop(held);
        drop(listener);
        let r2 = sampler.sample();
        let dump2 = diag.count().unwrap();
        if (r2.est_conn, r2.lis_conn) != (Some(dump2.established as i32), Some(dump2.listening as i32)) {
            return Err(Miss::Noisy(format!(
                "after closing: gauges {:?}/{:?} != dump {dump2:?}",
                r2.est_conn, r2.lis_conn
            )));
        }
        Ok(())
    });
}

/// Brings up the loopback interface of the calling thread's network namespace.
fn loopback_up() {
    // SAFETY: a plain socket and an ifreq naming "lo"; every result is checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0, "{}", std::io::Error::last_os_error());
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req), 0, "{}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

/// The TCP hook keys each socket by its network namespace (the kernel's BTF gives the path from
/// a socket to the namespace's /proc/<pid>/net/stat inode), in both attachments: in a fresh
/// namespace of its own, nothing but this test moves the balance, so it is exact at once.
#[test]
fn the_tcp_balance_is_kept_per_network_namespace() {
    if !have_root("tcp_balance_per_namespace") {
        return;
    }
    for classic in [false, true] {
        let ebpf = load_with(LoadOptions { classic_tracepoints: classic, ..LoadOptions::default() });
        assert!(ebpf.netns_keyed(), "the kernel's BTF has the path from a socket to its namespace");
        let (key, before, held, after) = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare affects this thread only, which ends with the scope.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
                loopback_up();
                let key = std::fs::metadata("/proc/thread-self/net/stat").map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino() as u32
                });
                let key = key.expect("the thread's namespace has a /proc net directory");
                let before = ebpf.netns_balance(key).unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let pairs: Vec<_> = (0..7)
                    .map(|_| {
                        let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                        (c, listener.accept().unwrap().0)
                    })
                    .collect();
                let held = ebpf.netns_balance(key).unwrap();
                drop(pairs);
                drop(listener);
                std::thread::sleep(std::time::Duration::from_millis(100));
                (key, before, held, ebpf.netns_balance(key).unwrap())
            })
            .join()
            .unwrap()
        });
        let own = agent::sources::netns::Proc::default().own_key().unwrap();
        assert_ne!(key, own, "a namespace of its own has its own key");
        assert_eq!((before.established, before.listening), (0, 0), "classic={classic}: a fresh namespace");
        assert_eq!((held.established, held.listening), (14, 1), "classic={classic}: 7 connections, 1 listener");
        assert_eq!((after.established, after.listening), (0, 0), "classic={classic}: all closed");
    }
}
