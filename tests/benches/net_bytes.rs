//! `cargo bench -p tests --bench net_bytes`: what counting every byte (--count-bytes) costs per
//! packet, side by side with counting off. Needs root.
//!
//! Both sides load the agent's programs with per-cgroup counting (--pod-rows); "on" also
//! attaches the two socket-buffer programs at the cgroup v2 root. The bench process runs in a
//! kubelet-style cgroup of its own, so its packets take the per-cgroup path a pod's take. Each
//! round loads one side, runs the workloads, and unloads; the side loaded first alternates by
//! round. Workloads, each on loopback (every packet runs the egress program at the sender and
//! the ingress program at the receiver):
//!
//! - a TCP stream: 256 MiB over one connection in 64 KiB writes (GSO packets of up to 64 KiB);
//! - a UDP storm: 200,000 datagrams of 64 bytes, read by a second thread;
//! - 1,500-byte UDP: 100,000 datagrams of 1,472 bytes (1,500-byte IP packets), for the cost at
//!   1 Gbit/s.
//!
//! A third side, where bpftrace is installed and the kernel has the socket-call tracepoints
//! (Linux 6.3+): the other option, bpftrace summing each cgroup's bytes on `sock_send_length` and
//! `sock_recv_length`, one run per send or receive call instead of per packet.
//!
//! Reported per workload and side: the process's CPU time (user + system, both threads), medians
//! and [min, max] over the rounds, the median of the rounds' differences from "off" a packet,
//! and with `kernel.bpf_stats_enabled` the byte programs' runs and own run time. BENCH_ROUNDS
//! sets the rounds (7).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use agent::sources::{
    ebpf::{EbpfCounters, LoadOptions},
    net_bytes::{parse_cidrs, AddressRanges, ByteCounting},
};

/// Process CPU time (user + system) so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// A workload: its name and its run.
type Workload = (&'static str, fn());

fn tcp_stream() {
    const TOTAL: usize = 256 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        while n < TOTAL {
            let r = c.read(&mut buf).unwrap();
            assert!(r > 0);
            n += r;
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    let chunk = vec![7u8; 1 << 16];
    for _ in 0..TOTAL / chunk.len() {
        c.write_all(&chunk).unwrap();
    }
    reader.join().unwrap();
}

fn udp(count: u64, size: usize) {
    let r = UdpSocket::bind("127.0.0.1:0").unwrap();
    r.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let addr = r.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while r.recv(&mut buf).is_ok() {}
    });
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = vec![1u8; size];
    for _ in 0..count {
        s.send_to(&d, addr).unwrap();
    }
    reader.join().unwrap();
}

fn udp_storm() {
    udp(200_000, 64)
}

fn udp_1500() {
    udp(100_000, 1472)
}

const WORKLOADS: [Workload; 3] = [
    ("loopback TCP stream, 256 MiB in 64 KiB writes", tcp_stream),
    ("UDP storm, 200,000 datagrams of 64 bytes", udp_storm),
    ("UDP, 100,000 packets of 1,500 bytes", udp_1500),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// How bytes are counted on one side of the comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The agent's programs with per-cgroup counting, no byte counting.
    Off,
    /// The same, plus the two socket-buffer programs at the cgroup v2 root (--count-bytes).
    CgroupSkb,
    /// The same as Off, plus bpftrace counting each cgroup's bytes on the socket-call
    /// tracepoints `sock:sock_send_length` and `sock:sock_recv_length` (Linux 6.3+): the
    /// alternative option, one run per sendmsg/recvmsg instead of per packet.
    Tracepoints,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Off => "off",
            Side::CgroupSkb => "cgroup_skb (the agent's)",
            Side::Tracepoints => "socket-call tracepoints (bpftrace)",
        }
    }
}

/// The tracepoint option, as bpftrace compiles it: a per-cgroup sum of each call's bytes.
const BPFTRACE: &str = "tracepoint:sock:sock_send_length { @tx[cgroup] = sum(args->ret); } \
                        tracepoint:sock:sock_recv_length { @rx[cgroup] = sum(args->ret); }";

/// A running bpftrace with [`BPFTRACE`] attached; killed on drop.
struct Bpftrace(std::process::Child);

impl Bpftrace {
    fn start() -> Bpftrace {
        use std::io::BufRead;
        let mut child = std::process::Command::new("bpftrace")
            .args(["-e", BPFTRACE])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("bpftrace runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("Attaching 2 probes"), "bpftrace: {line}");
        Bpftrace(child)
    }

    /// Its programs' run count and run time (ns), summed, from its descriptors' fdinfo.
    fn runs(&self) -> (u64, u64) {
        fd_runs(&format!("/proc/{}/fdinfo", self.0.id()), |_| true)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run count and run time (ns) summed over the programs of the descriptors in `fdinfo` whose
/// program id `wanted` accepts.
fn fd_runs(fdinfo: &str, wanted: impl Fn(u64) -> bool) -> (u64, u64) {
    let (mut cnt, mut ns) = (0, 0);
    let mut seen = Vec::new();
    for e in std::fs::read_dir(fdinfo).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(id), Some(t), Some(c)) = (field("prog_id:"), field("run_time_ns:"), field("run_cnt:")) {
            if wanted(id) && !seen.contains(&id) {
                seen.push(id);
                cnt += c;
                ns += t;
            }
        }
    }
    (cnt, ns)
}

fn main() {
    if !tests::have_root("net_bytes bench") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    agent::sources::ebpf::ensure_tracefs();
    let cg = tests::cgroup::TestCgroup::new(
        "bench-bytes",
        &["kubepods/besteffort/pod0c1d2e3f-0000-4000-9000-000000000001/0000000000000000000000000000000000000000000000000000000000000001"],
    );
    std::fs::write(cg.leaves[0].join("cgroup.procs"), std::process::id().to_string())
        .expect("joining the bench cgroup");
    let root = agent::sources::cgroups::cgroup2_root_of_this_host().expect("a cgroup v2 tree");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("kernel.bpf_stats_enabled");
    let options = LoadOptions { cgroup_map_entries: Some(4096), ..LoadOptions::default() };
    let ranges = AddressRanges { node: Vec::new(), cluster: parse_cidrs("10.96.0.0/12").unwrap() };
    // The tracepoint option where bpftrace is installed and the kernel has the tracepoints.
    let have_bpftrace =
        std::process::Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success())
            && std::path::Path::new("/sys/kernel/tracing/events/sock/sock_send_length").exists();
    let sides: Vec<Side> = if have_bpftrace {
        vec![Side::Off, Side::CgroupSkb, Side::Tracepoints]
    } else {
        eprintln!("bpftrace or the sock_send_length tracepoint missing: the tracepoint option is left out");
        vec![Side::Off, Side::CgroupSkb]
    };

    // Per side, workload and round: CPU ms, and the byte programs' runs and ns per run. On the
    // cgroup_skb side each packet runs the egress program once and the ingress program once, so
    // the packets are half its runs (for the TCP stream: GSO packets, as the programs see them).
    let n = WORKLOADS.len();
    let mut cpu = vec![vec![Vec::new(); n]; sides.len()];
    let mut runs = vec![vec![Vec::new(); n]; sides.len()];
    let mut prog = vec![vec![Vec::new(); n]; sides.len()];
    for w in WORKLOADS {
        (w.1)(); // warm-up
    }
    for round in 0..rounds {
        // The side loaded first rotates by round.
        for k in 0..sides.len() {
            let s = (k + round) % sides.len();
            let side = sides[s];
            let mut counters = EbpfCounters::load_with(options).expect("eBPF loads");
            let _bytes = (side == Side::CgroupSkb)
                .then(|| ByteCounting::attach(&mut counters, &root, ranges.clone()).expect("byte counting attaches"));
            let tracer = (side == Side::Tracepoints).then(Bpftrace::start);
            let skb_ids: Vec<u32> = counters
                .program_ids()
                .into_iter()
                .filter(|(n, _)| n.starts_with("cgroup_skb"))
                .map(|(_, i)| i)
                .collect();
            let byte_runs = || match &tracer {
                Some(t) => t.runs(),
                None => fd_runs("/proc/self/fdinfo", |id| skb_ids.iter().any(|i| u64::from(*i) == id)),
            };
            for (i, (_, run)) in WORKLOADS.iter().enumerate() {
                let runs0 = byte_runs();
                let t0 = process_cpu();
                run();
                cpu[s][i].push((process_cpu() - t0).as_secs_f64() * 1e3);
                let runs1 = byte_runs();
                let (cnt, ns) = (runs1.0 - runs0.0, runs1.1 - runs0.1);
                runs[s][i].push(cnt as f64);
                prog[s][i].push(if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 });
            }
            drop(tracer);
            drop(counters);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    std::fs::write(root.join("cgroup.procs"), std::process::id().to_string()).ok();
    let span = |v: &Vec<f64>, digits: usize| {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        format!("{:.digits$} [{lo:.digits$}, {hi:.digits$}]", median(v.clone()))
    };
    let skb = sides.iter().position(|s| *s == Side::CgroupSkb).unwrap();
    println!("| workload | option | packets | CPU ms: median [min, max] | added a packet against off (median of rounds) | byte programs' runs | their own ns a run: median [min, max] |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, _)) in WORKLOADS.iter().enumerate() {
        let packets = median(runs[skb][i].clone()) / 2.0;
        for (s, side) in sides.iter().enumerate() {
            let added: Vec<f64> = cpu[s][i].iter().zip(&cpu[0][i]).map(|(a, b)| (a - b) * 1e6 / packets).collect();
            let (added, programs) = match side {
                Side::Off => ("-".to_owned(), ("-".to_owned(), "-".to_owned())),
                _ => (
                    format!("{:+.0} ns", median(added)),
                    (format!("{:.0}", median(runs[s][i].clone())), span(&prog[s][i], 0)),
                ),
            };
            println!(
                "| {name} | {} | {packets:.0} | {} | {added} | {} | {} |",
                side.name(),
                span(&cpu[s][i], 1),
                programs.0,
                programs.1
            );
        }
    }
    let per_run = median(prog[skb][2].clone());
    // 1 Gbit/s of 1,500-byte packets: 83,333 packets a second, each one run of the egress
    // program on the sending node (and one of the ingress program on the receiving node).
    let pps = 1e9 / 8.0 / 1500.0;
    println!();
    println!(
        "At 1 Gbit/s of 1,500-byte packets ({pps:.0} packets/s): {:.2} % of one CPU for the cgroup_skb programs' own run time in each direction ({per_run:.0} ns a packet)",
        pps * per_run / 1e9 * 100.0
    );
}
