//! `cargo xtask bench` (= `cargo bench -p tests --bench agent`): the numbers of BENCHMARKS.md.
//!   1. CPU time to collect one full row (eBPF gauges; and the sock_diag fallback without eBPF)
//!   2. the same with 10,000 open loopback TCP connections (held across two processes: the
//!      open-files limit here is 20,000 per process), and the cost of one re-check dump
//!   3. RSS of the real agent binary after 360 rows (an hour at 10 s) written to a real Postgres
//!   4. slowdown of a fork+exit loop and of a loopback connect/close loop with the programs
//!      attached, against the same loop with nothing attached, interleaved in one run
//!   5. the syscall tax: a loop of syscalls the agent never counts (getppid, a one-byte read of
//!      /dev/zero) with the default programs attached and with the syscall-tracepoint socket
//!      fallback (--socket-hook syscalls), against nothing attached, interleaved
//!   6. each program's own cost per event (kernel.bpf_stats_enabled: run_time_ns / run_cnt from
//!      the program's fdinfo) under a known workload of forks, connections and sockets
//!   7. the streaming detector's CPU per row (judging real sampled rows after its warm-up),
//!      and the pod detector's CPU per interval of 141 pod rows (110 pods of 40 workloads, 30
//!      services, other) with the recurring-burst rule on and off, alternating in 7 rounds;
//!      BENCH_ONLY=detector runs these alone
//!   8. per-pod rows (BENCH_ONLY=pods alone): CPU per interval with per-pod rows on and 0, 100
//!      and 1,000 kubelet-style cgroups in the v2 tree; the fork and connect loops with
//!      per-cgroup counting against node-only counting, interleaved in one run; each program's
//!      cost per event with node-only and with per-cgroup counting, loaded in turn (7 rounds,
//!      which goes first alternating), and the added cost (the median of the rounds'
//!      differences)
//!
//! Needs root. Prints a Markdown table.
use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent::{
    judging::detector::{Detector, DetectorOptions},
    judging::pod_detector::PodDetector,
    sources::collector::{DiskSelector, InterfaceSelector, Roots, Sources},
    sources::ebpf::{EbpfCounters, LoadOptions, SocketHook},
    sources::sampler::Sampler,
    sources::tcp_diag::TcpDiag,
};

use tests::{pod_sampler, thread_cpu};

/// `n` cgroups in the v2 tree, kubelet-style: n/2 burstable pods with one container each.
fn make_pod_cgroups(base: &std::path::Path, n: usize) {
    for k in 0..n / 2 {
        let uid = format!("0a1b2c3d-0000-4000-8000-{k:012}");
        let pod = base.join("kubepods/burstable").join(format!("pod{uid}"));
        std::fs::create_dir_all(pod.join(format!("{k:064x}"))).unwrap();
    }
}

fn remove_cgroups(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Ratio of median loop time with `b` loaded to median time with `a` loaded, interleaved.
fn compare(
    a: LoadOptions,
    b: LoadOptions,
    rounds: usize,
    mut body: impl FnMut() -> Duration,
) -> (f64, Duration, Duration) {
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        for first_a in [round % 2 == 0, round % 2 == 1] {
            let opts = if first_a { a } else { b };
            let loaded = EbpfCounters::load_with(opts).expect("eBPF loads");
            let d = body();
            drop(loaded);
            if round > 0 {
                // round 0 is the warm-up
                if first_a {
                    on_a.push(d)
                } else {
                    on_b.push(d)
                }
            }
        }
    }
    let (a, b) = (median(on_a), median(on_b));
    (b.as_secs_f64() / a.as_secs_f64(), a, b)
}

fn pod_benches(rows: &mut Vec<(String, String)>) {
    let root = agent::sources::cgroups::cgroup2_root_of_this_host().expect("a cgroup v2 tree");
    let base = root.join(format!("feature-agent-bench-{}", std::process::id()));
    for n in [0usize, 100, 1000] {
        make_pod_cgroups(&base, n);
        let mut s = pod_sampler();
        let cpu = cpu_per_row(&mut s, 200);
        let pods = s.sample().pods;
        rows.push((
            format!("CPU per interval with per-pod rows, {n} test cgroups ({} pod rows)", pods.len()),
            format!("{:.1} µs", cpu.as_secs_f64() * 1e6),
        ));
        drop(s);
        remove_cgroups(&base);
    }
    let node_only = LoadOptions::default();
    let per_cgroup = LoadOptions { cgroup_map_entries: Some(2048), ..LoadOptions::default() };
    let (ratio, a, b) = compare(node_only, per_cgroup, 9, || loop_in_helper("fork", 2000));
    rows.push((
        "fork+exit loop, 2000 iterations: per-cgroup counting / node-only counting".to_string(),
        format!("{ratio:.3} ({:.1} ms vs {:.1} ms)", b.as_secs_f64() * 1e3, a.as_secs_f64() * 1e3),
    ));
    let (ratio, a, b) = compare(node_only, per_cgroup, 11, || loop_in_helper("connect", 5000));
    rows.push((
        "loopback connect/accept/close loop, 5000 iterations: per-cgroup counting / node-only counting".to_string(),
        format!("{ratio:.3} ({:.1} ms vs {:.1} ms)", b.as_secs_f64() * 1e3, a.as_secs_f64() * 1e3),
    ));
    // Each program's cost per event, node-only and per-cgroup loaded in turn under the same
    // workload: the host's own drift (this VM's node-only figures move by tens of ns between
    // days) moves both, and the added cost is the median of each round's difference.
    let syscalls = SocketHook::Syscalls;
    let costs = interleaved_program_costs(
        LoadOptions { socket_hook: syscalls, ..node_only },
        LoadOptions { socket_hook: syscalls, ..per_cgroup },
        7,
    );
    for c in costs {
        rows.push((
            format!("program {}: run time per event, node-only / per-cgroup ({} events per round)", c.name, c.events),
            format!("{:.0} / {:.0} ns (added {:+.0} ns)", c.with_a, c.with_b, c.added),
        ));
    }
}

/// One program's run time per event under two load options, from [`interleaved_program_costs`].
struct ProgramCost {
    name: &'static str,
    /// Events in the last round with the second options.
    events: u64,
    /// Median ns per event with the first options, then with the second.
    with_a: f64,
    with_b: f64,
    /// Median of the rounds' differences (second minus first).
    added: f64,
}

/// Each program's run time per event (kernel.bpf_stats_enabled) under [`per_program_workload`]
/// with `a` loaded and with `b`, for `rounds` rounds, the one loaded first alternating.
fn interleaved_program_costs(a: LoadOptions, b: LoadOptions, rounds: usize) -> Vec<ProgramCost> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("kernel.bpf_stats_enabled");
    let mut per_round: Vec<[Costs; 2]> = Vec::new();
    for round in 0..rounds {
        let one = |opts| {
            let counters = EbpfCounters::load_with(opts).expect("eBPF loads");
            per_program_workload();
            program_costs(&counters)
        };
        per_round.push(if round % 2 == 0 {
            let with_a = one(a);
            [with_a, one(b)]
        } else {
            let with_b = one(b);
            [one(a), with_b]
        });
    }
    // Programs the workload does not reach (socketpair) have nothing to report.
    let names: Vec<(&'static str, u64)> =
        per_round[rounds - 1][1].iter().filter(|(_, c, _)| *c > 0).map(|(n, c, _)| (*n, *c)).collect();
    names
        .into_iter()
        .filter_map(|(name, events)| {
            let ns = |costs: &[(&str, u64, f64)]| costs.iter().find(|(n, _, _)| *n == name).map(|(_, _, ns)| *ns);
            let pairs: Vec<(f64, f64)> = per_round.iter().filter_map(|[x, y]| Some((ns(x)?, ns(y)?))).collect();
            (!pairs.is_empty()).then(|| ProgramCost {
                name,
                events,
                with_a: median(pairs.iter().map(|p| p.0).collect()),
                with_b: median(pairs.iter().map(|p| p.1).collect()),
                added: median(pairs.iter().map(|p| p.1 - p.0).collect()),
            })
        })
        .collect()
}

fn sampler(ebpf: bool) -> Sampler {
    let roots = Roots::default();
    let sources =
        Sources::new(roots.clone(), DiskSelector::default_for(&roots.sysfs), InterfaceSelector::physical(&roots.sysfs));
    let counters = ebpf.then(|| {
        agent::sources::ebpf::ensure_tracefs();
        EbpfCounters::load().expect("eBPF loads")
    });
    Sampler::new("bench".into(), sources, counters, Duration::from_secs(3600), agent::sources::netns::Proc::default())
}

/// Mean CPU time the detector takes to judge one row, over `n` rows: 64 real rows sampled 20 ms
/// apart (cycled, each a fresh clone), after a warm-up of 32.
fn detector_cpu_per_row(n: u32) -> Duration {
    let mut s = sampler(false);
    let rows: Vec<_> = (0..64)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            s.sample()
        })
        .collect();
    let options = DetectorOptions {
        threshold: 4.0,
        warmup_rows: 32,
        half_life_rows: 360.0,
        adapt_rows: 60,
        agreement: 2,
        interval_s: 0.02,
        recurring_episodes: 0,
        recurring_rows: 1,
    };
    let mut d = Detector::new(options);
    for r in &rows[..32] {
        d.judge(&mut r.clone());
    }
    let mut copies: Vec<_> = (0..n as usize).map(|i| rows[i % rows.len()].clone()).collect();
    let t0 = thread_cpu();
    for r in &mut copies {
        d.judge(r);
    }
    (thread_cpu() - t0) / n
}

/// One interval of a busy node's pod rows: 110 pods of 40 workloads (Deployments' replicas),
/// 30 host services and the other row, with cumulative CPU and event counts that vary from
/// interval to interval (a fixed pseudo-random sequence), at interval `k`.
fn pod_interval(k: u64) -> feature_schema::FeatureRow {
    use feature_schema::pods::{OwnerKind, PodRow, Res};
    let mut row = feature_schema::FeatureRow::empty("bench".into(), std::time::SystemTime::UNIX_EPOCH);
    let noise = |i: u64, salt: u64| {
        let mut x = (k * 1_000_003 + i * 7919 + salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        (x % 100) as i64
    };
    for i in 0..141u64 {
        let (kind, namespace, pod) = match i {
            0..=109 => {
                (OwnerKind::Pod, Some(format!("ns{}", i % 7)), Some(format!("app{}-6d94bc8694-{:05}", i % 40, i)))
            }
            110..=139 => (OwnerKind::Service, None, None),
            _ => (OwnerKind::Other, None, None),
        };
        let mut p = PodRow {
            node: "bench".into(),
            ts: std::time::SystemTime::UNIX_EPOCH,
            interval_s: Some(10.0),
            kind,
            owner: format!("owner-{i}"),
            namespace,
            pod,
            ..PodRow::blank()
        };
        for (e, v) in p.events.iter_mut().enumerate() {
            *v = Some(noise(i, e as u64) / 10);
        }
        for (r, v) in p.resources.iter_mut().enumerate() {
            *v = Some((k as i64) * 1000 + noise(i, 100 + r as u64) * 10);
        }
        p.resources[Res::PidsCurrent as usize] = Some(5 + noise(i, 200) / 50);
        row.pods.push(p);
    }
    row
}

/// CPU time the pod detector takes per interval of 141 pod rows, over `n` intervals after a
/// warm-up of 30, with the recurring-burst rule on (4 episodes in 360 rows) or off.
fn pod_detector_cpu_per_interval(n: u64, recurring: bool) -> Duration {
    let options = DetectorOptions {
        threshold: 4.0,
        warmup_rows: 30,
        half_life_rows: 360.0,
        adapt_rows: 60,
        agreement: 2,
        interval_s: 10.0,
        recurring_episodes: if recurring { 4 } else { 0 },
        recurring_rows: 360,
    };
    let mut d = PodDetector::new(options, 2000);
    let intervals: Vec<_> = (0..n + 30).map(pod_interval).collect();
    let mut iter = intervals.into_iter();
    for mut row in iter.by_ref().take(30) {
        d.judge(&mut row);
    }
    let rest: Vec<_> = iter.collect();
    let t0 = thread_cpu();
    for mut row in rest {
        std::hint::black_box(d.judge(&mut row));
    }
    (thread_cpu() - t0) / n as u32
}

/// Mean CPU time of one row over `n` rows, after a warm-up.
fn cpu_per_row(s: &mut Sampler, n: u32) -> Duration {
    for _ in 0..20 {
        s.sample();
    }
    let t0 = thread_cpu();
    for _ in 0..n {
        std::hint::black_box(s.sample());
    }
    (thread_cpu() - t0) / n
}

fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer, then setting the soft limit to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Helper process: listens, prints its port, accepts `n` connections, says "held", and holds
/// them until its stdin closes.
fn hold_server(n: usize) {
    raise_nofile();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", l.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    let held: Vec<TcpStream> = (0..n).map(|_| l.accept().unwrap().0).collect();
    println!("held {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// The middle value (the upper one of an even count); the values must be ordered (no NaN).
fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|x, y| x.partial_cmp(y).expect("comparable values"));
    v[v.len() / 2]
}

fn fork_exit_loop(n: u32) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        // SAFETY: the child only calls _exit; the parent reaps it.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    t0.elapsed()
}

fn connect_close_loop(l: &TcpListener, n: u32) -> Duration {
    let addr = l.local_addr().unwrap();
    let t0 = Instant::now();
    for _ in 0..n {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        // The server closes first, so TIME_WAIT stays on the server's side: client-first closes
        // would leave every ephemeral port in TIME_WAIT and slow later rounds' connect() down as
        // the port search lengthens, whatever is attached.
        drop(s);
        drop(c);
    }
    t0.elapsed()
}

/// Ratio of median loop time with the programs attached to median time without, over
/// interleaved rounds so that drift of the machine hits both alike.
fn slowdown(rounds: usize, body: impl FnMut() -> Duration) -> (f64, Duration, Duration) {
    slowdown_with(LoadOptions::default(), rounds, body)
}

fn slowdown_with(options: LoadOptions, rounds: usize, mut body: impl FnMut() -> Duration) -> (f64, Duration, Duration) {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    body(); // warm-up
    for round in 0..rounds {
        // Alternate which side runs first, so that drift within a round favours neither.
        if round % 2 == 0 {
            off.push(body());
        }
        let attached = EbpfCounters::load_with(options).expect("eBPF loads");
        on.push(body());
        drop(attached);
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("round {round}: off {:?} on {:?}", off.last(), on.last());
        }
        if round % 2 == 1 {
            off.push(body());
        }
    }
    let (off, on) = (median(off), median(on));
    (on.as_secs_f64() / off.as_secs_f64(), off, on)
}

fn rss_after_hour_of_rows() -> (u64, u64) {
    let pg = throwaway_pg::ThrowawayPostgres::start().expect("throwaway Postgres");
    let mut agent = tests::agent_command()
        .args(["run", "--interval", "0.02", "--node-name", "bench-rss"])
        .env("DATABASE_URL", pg.url("postgres"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("agent starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = pg
            .psql("postgres", "SELECT count(*) FROM node_features")
            .map(|s| s.trim().parse::<u64>().unwrap_or(0))
            .unwrap_or(0);
        if n >= 360 {
            break;
        }
        assert!(Instant::now() < deadline, "360 rows did not arrive");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
    };
    let (rss, hwm) = (kb("VmRSS:"), kb("VmHWM:"));
    // SAFETY: signalling our child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait().unwrap();
    (rss, hwm)
}

/// Runs one measured loop in a fresh helper process (so the process that forks or connects is
/// the same small process whether or not programs are attached) and returns its elapsed time.
fn syscall_loop(n: u32, mut call: impl FnMut()) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        call();
    }
    t0.elapsed()
}

/// Per attached program: its name, events run, and ns per event.
type Costs = Vec<(&'static str, u64, f64)>;

/// Each of our programs' run time per event, from /proc/self/fdinfo of its descriptor
/// (run_time_ns and run_cnt, counted while kernel.bpf_stats_enabled is on).
fn program_costs(counters: &EbpfCounters) -> Costs {
    let ids = counters.program_ids();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(id), Some(ns), Some(cnt)) = (field("prog_id:"), field("run_time_ns:"), field("run_cnt:")) {
            if let Some((name, _)) = ids.iter().find(|(_, i)| u64::from(*i) == id) {
                if !out.iter().any(|(n, _, _): &(&str, u64, f64)| n == name) {
                    out.push((*name, cnt, if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 }));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

/// The known workload the per-program costs are measured under: 500 execs, 2,000 forks, 2,000
/// loopback connections, 2,000 refused connects, 5,000 UDP sockets, and 8,000 4 KiB pages written
/// to a new file on disk (about 8,000 folios dirtied).
fn per_program_workload() {
    {
        use std::io::Write;
        let path = std::path::Path::new("/var/tmp").join(format!("bench-folios-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let page = [0u8; 4096];
        for _ in 0..8000 {
            f.write_all(&page).unwrap();
        }
        drop(f);
        std::fs::remove_file(&path).unwrap();
    }
    for _ in 0..500 {
        Command::new("/bin/true").status().unwrap();
    }
    loop_in_helper("fork", 2000);
    loop_in_helper("connect", 2000);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for _ in 0..2000 {
        let _ = TcpStream::connect(closed);
    }
    for _ in 0..5000 {
        drop(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    }
}

fn loop_in_helper(kind: &str, n: u32) -> Duration {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_LOOP", kind)
        .env("BENCH_LOOP_N", n.to_string())
        .output()
        .expect("helper runs");
    assert!(out.status.success(), "helper failed: {}", String::from_utf8_lossy(&out.stderr));
    Duration::from_nanos(String::from_utf8_lossy(&out.stdout).trim().parse().expect("nanoseconds"))
}

fn main() {
    if let Ok(n) = std::env::var("BENCH_HOLD_SERVER") {
        hold_server(n.parse().unwrap());
        return;
    }
    if let Ok(kind) = std::env::var("BENCH_LOOP") {
        let n: u32 = std::env::var("BENCH_LOOP_N").unwrap().parse().unwrap();
        let elapsed = match kind.as_str() {
            "fork" => fork_exit_loop(n),
            "connect" => connect_close_loop(&TcpListener::bind("127.0.0.1:0").unwrap(), n),
            "getppid" => syscall_loop(n, || {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::getppid() };
            }),
            "read" => {
                let f = std::fs::File::open("/dev/zero").unwrap();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
                let mut b = [0u8; 1];
                syscall_loop(n, || {
                    // SAFETY: reading one byte into a valid buffer from an open descriptor.
                    unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
                })
            }
            other => panic!("unknown loop {other}"),
        };
        println!("{}", elapsed.as_nanos());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench -- --list
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmarks load eBPF programs: run as root");
    let mut rows = Vec::new();
    // BENCH_ONLY=kernel: only the syscall tax and the per-program costs.
    let only_kernel = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "kernel");
    let detector = detector_cpu_per_row(20_000);
    rows.push((
        "detector CPU per row (judging a sampled row)".to_string(),
        format!("{:.2} µs", detector.as_secs_f64() * 1e6),
    ));
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..7 {
        // Which goes first alternates.
        if round % 2 == 0 {
            on.push(pod_detector_cpu_per_interval(500, true));
            off.push(pod_detector_cpu_per_interval(500, false));
        } else {
            off.push(pod_detector_cpu_per_interval(500, false));
            on.push(pod_detector_cpu_per_interval(500, true));
        }
    }
    let range = |v: &[Duration]| {
        let us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        let (lo, hi) = us.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{:.0} µs (7 rounds: {lo:.0}-{hi:.0})", median(us.clone()))
    };
    rows.push(("pod detector CPU per interval of 141 pod rows, recurring-burst rule on".to_string(), range(&on)));
    rows.push(("pod detector CPU per interval of 141 pod rows, recurring-burst rule off".to_string(), range(&off)));
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "detector") {
        for (what, value) in &rows {
            println!("| {what} | {value} |");
        }
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "pods") {
        rows.clear();
        pod_benches(&mut rows);
        println!("\n| measurement | result |\n|---|---|");
        for (what, value) in &rows {
            println!("| {what} | {value} |");
        }
        return;
    }

    if !only_kernel {
        let mut with_ebpf = sampler(true);
        let mut without = sampler(false);
        let idle_ebpf = cpu_per_row(&mut with_ebpf, 2000);
        let idle_dump = cpu_per_row(&mut without, 500);
        rows.push((
            "CPU per row, idle node, eBPF gauges (the default)".to_string(),
            format!("{:.1} µs", idle_ebpf.as_secs_f64() * 1e6),
        ));
        rows.push((
            "CPU per row, idle node, no eBPF (sock_diag dump each row)".to_string(),
            format!("{:.1} µs", idle_dump.as_secs_f64() * 1e6),
        ));

        // 10,000 connections: 10,000 client ends here, 10,000 server ends in a helper process.
        const CONNS: usize = 10_000;
        raise_nofile();
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .env("BENCH_HOLD_SERVER", CONNS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(helper.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let clients: Vec<TcpStream> = (0..CONNS).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("held {CONNS}"));
        let busy_ebpf = cpu_per_row(&mut with_ebpf, 2000);
        let busy_dump = cpu_per_row(&mut without, 100);
        let row = with_ebpf.sample();
        let mut diag = TcpDiag::open().unwrap();
        let t0 = thread_cpu();
        let dump = diag.count().unwrap();
        let dump_cost = thread_cpu() - t0;
        assert_eq!(row.est_conn, Some(dump.established as i32), "gauge agrees with the kernel's table");
        rows.push((
            format!("CPU per row, {CONNS} open connections, eBPF gauges (est_conn = {})", dump.established),
            format!("{:.1} µs", busy_ebpf.as_secs_f64() * 1e6),
        ));
        rows.push((
            format!("CPU per row, {CONNS} open connections, no eBPF (dump each row)"),
            format!("{:.1} µs", busy_dump.as_secs_f64() * 1e6),
        ));
        rows.push((
            format!("one re-check dump at {CONNS} connections (every 300 s by default)"),
            format!("{:.2} ms", dump_cost.as_secs_f64() * 1e3),
        ));
        drop(clients);
        drop(helper.stdin.take());
        helper.wait().unwrap();
        drop(with_ebpf);
        drop(without);

        let (rss, hwm) = rss_after_hour_of_rows();
        rows.push((
            "agent RSS after 360 rows written to Postgres (peak)".to_string(),
            format!("{:.1} MB ({:.1} MB)", rss as f64 / 1024.0, hwm as f64 / 1024.0),
        ));

        let (ratio, off, on) = slowdown(9, || loop_in_helper("fork", 2000));
        rows.push((
            "fork+exit loop, 2000 iterations: attached / detached".to_string(),
            format!("{ratio:.3} ({:.1} ms vs {:.1} ms)", on.as_secs_f64() * 1e3, off.as_secs_f64() * 1e3),
        ));
        let (ratio, off, on) = slowdown(11, || loop_in_helper("connect", 5000));
        rows.push((
            "loopback connect/accept/close loop, 5000 iterations: attached / detached".to_string(),
            format!("{ratio:.3} ({:.1} ms vs {:.1} ms)", on.as_secs_f64() * 1e3, off.as_secs_f64() * 1e3),
        ));
    }

    // The syscall tax: syscalls nobody counts, with the programs attached and without.
    let fallback = LoadOptions { socket_hook: SocketHook::Syscalls, ..LoadOptions::default() };
    for (kind, n) in [("getppid", 2_000_000u32), ("read", 1_000_000)] {
        let per_call = |d: Duration| d.as_secs_f64() * 1e9 / f64::from(n);
        let (ratio, off, on) = slowdown(9, || loop_in_helper(kind, n));
        rows.push((
            format!("{kind}() loop, {n} calls: default programs attached / nothing attached"),
            format!("{ratio:.3} ({:.0} ns vs {:.0} ns per call)", per_call(on), per_call(off)),
        ));
        let (ratio, off, on) = slowdown_with(fallback, 9, || loop_in_helper(kind, n));
        rows.push((
            format!("{kind}() loop, {n} calls: with --socket-hook syscalls / nothing attached"),
            format!("{ratio:.3} ({:.0} ns vs {:.0} ns per call)", per_call(on), per_call(off)),
        ));
    }

    // Each program's own cost per event, under forks, connections and socket creations.
    {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("kernel.bpf_stats_enabled");
        // Every program: the default set and the syscall fallback.
        let counters = EbpfCounters::load_with(fallback).expect("eBPF loads");
        per_program_workload();
        for (name, cnt, ns) in program_costs(&counters) {
            rows.push((format!("program {name}: run time per event ({cnt} events)"), format!("{ns:.0} ns")));
        }
    }

    if !only_kernel {
        pod_benches(&mut rows);
    }

    println!("\n| measurement | result |\n|---|---|");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}
