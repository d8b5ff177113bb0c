//! `cargo bench -p tests --bench node_full`: a node full of pods, as the whole agent process
//! sees it. For 110, 250 and 500 kubelet-style pods (each one process in a network namespace of
//! its own, named in a pod log directory), the real `feature-agent print --pod-rows` at a 2 s
//! interval, started fresh each round:
//! - the first rows' delay: from the start to the first node row, and to the first pod rows on
//!   stdout (the pod rows of an interval come with the second sample, the first only sets the
//!   per-cgroup baseline);
//! - when the connection gauges are complete: the log line saying every namespace found at the
//!   start is seeded (within 250 ms of each interval; before that est_conn is NULL);
//! - CPU per interval: the process's user + system time over NODE_FULL_INTERVALS (15) intervals
//!   once the gauges are complete, divided by their number;
//! - RSS at the end (VmRSS) and its peak (VmHWM).
//!
//! With NODE_FULL_BASELINE=<another feature-agent binary> the two binaries alternate within each
//! round (which goes first alternating too): before and after, side by side. Then the churn:
//! NODE_FULL_CHURN_SECONDS (300) of 5 new pods a second, each living NODE_FULL_CHURN_LIFE (20)
//! seconds, beside 110 steady pods, with CPU per interval and RSS.
//!
//! NODE_FULL_SIZES (110,250,500) sets the pod counts. Needs root. Prints Markdown tables: medians over NODE_FULL_ROUNDS (3) rounds and the range.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tests::cgroup::KubeletPods;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// user + system CPU of a process, every thread's, the exited ones' included, from
/// /proc/<pid>/stat (in clock ticks of 10 ms: a measurement over 15 intervals of 25 ms is good
/// to about 3 %). The threads' own schedstat would be finer but forgets threads that exited.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| {
        fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("/proc/{pid}/stat: {stat:?}"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / hz)
}

/// VmRSS and VmHWM of a process, in MB.
fn rss_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// One run's figures.
struct Run {
    first_row_s: f64,
    first_rows_s: f64,
    seeded_s: f64,
    cpu_ms_per_interval: f64,
    rss_mb: f64,
    peak_mb: f64,
}

const INTERVAL_S: f64 = 2.0;

/// Starts `agent`, reads its stdout until the first pod rows and then `intervals` more
/// intervals, and measures.
fn run_agent(agent: &Path, logs: &Path, intervals: u64) -> Run {
    let start = Instant::now();
    let mut child: Child = Command::new(agent)
        .args(["print", "--pod-rows", "--interval", &INTERVAL_S.to_string(), "--node-name", "bench"])
        .arg("--pod-logs")
        .arg(logs)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting feature-agent");
    let pid = child.id();
    // The seed's log line, watched from a thread (stderr must be read all along anyway).
    let seeded_at = std::sync::Arc::new(std::sync::Mutex::new(None::<f64>));
    let stderr = child.stderr.take().unwrap();
    let seen = seeded_at.clone();
    let watcher = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("seeded TCP connection gauges from every network namespace") {
                seen.lock().unwrap().get_or_insert(start.elapsed().as_secs_f64());
            }
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut first_row_s, mut first_rows_s) = (None, None);
    let mut measuring: Option<(Duration, u64)> = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let node = line.starts_with("{\"row\":\"node\"");
        if node && first_row_s.is_none() {
            first_row_s = Some(start.elapsed().as_secs_f64());
        }
        if first_rows_s.is_none() && line.starts_with("{\"row\":\"pod\"") {
            first_rows_s = Some(start.elapsed().as_secs_f64());
        }
        if !node || first_rows_s.is_none() {
            continue;
        }
        match measuring.as_mut() {
            None if seeded_at.lock().unwrap().is_some() => measuring = Some((cpu_of(pid), 0)),
            None => {}
            Some((_, rows)) => {
                *rows += 1;
                if *rows >= intervals {
                    break;
                }
            }
        }
    }
    let cpu_at_first = measuring.expect("the gauges were seeded").0;
    let cpu = cpu_of(pid) - cpu_at_first;
    let (rss_mb, peak_mb) = rss_of(pid);
    let _ = child.kill();
    let _ = child.wait();
    let _ = watcher.join();
    let seeded_s = seeded_at.lock().unwrap().expect("the seed's log line");
    Run {
        first_row_s: first_row_s.expect("a node row"),
        first_rows_s: first_rows_s.expect("pod rows"),
        seeded_s,
        cpu_ms_per_interval: cpu.as_secs_f64() * 1e3 / intervals as f64,
        rss_mb,
        peak_mb,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cell(v: &[f64], digits: usize) -> String {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    format!("{:.digits$} ({lo:.digits$}-{hi:.digits$})", median(v))
}

fn agent_bin() -> PathBuf {
    tests::agent_bin()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the node_full bench needs root");
    agent::sources::ebpf::ensure_tracefs();
    let rounds = env_u64("NODE_FULL_ROUNDS", 3);
    let intervals = env_u64("NODE_FULL_INTERVALS", 15);
    let mut agents = vec![("this tree".to_owned(), agent_bin())];
    if let Ok(b) = std::env::var("NODE_FULL_BASELINE") {
        agents.push(("baseline".to_owned(), PathBuf::from(b)));
    }
    println!(
        "| pods | binary | first row after (s) | first pod rows after (s) | gauges complete after (s) | CPU per {INTERVAL_S} s interval (ms) | RSS (MB) | RSS peak (MB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let sizes = std::env::var("NODE_FULL_SIZES").unwrap_or_else(|_| "110,250,500".into());
    for n in sizes.split(',').map(|n| n.trim().parse::<usize>().expect("NODE_FULL_SIZES: pod counts, comma-separated"))
    {
        let pods = KubeletPods::new(n, true, "full");
        let mut runs: Vec<Vec<Run>> = agents.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds as usize {
            for k in 0..agents.len() {
                let which = (k + round) % agents.len();
                runs[which].push(run_agent(&agents[which].1, pods.logs(), intervals));
            }
        }
        for (i, (name, _)) in agents.iter().enumerate() {
            let r = &runs[i];
            let col = |f: fn(&Run) -> f64| r.iter().map(f).collect::<Vec<f64>>();
            println!(
                "| {n} | {name} | {} | {} | {} | {} | {} | {} |",
                cell(&col(|r| r.first_row_s), 1),
                cell(&col(|r| r.first_rows_s), 1),
                cell(&col(|r| r.seeded_s), 1),
                cell(&col(|r| r.cpu_ms_per_interval), 1),
                cell(&col(|r| r.rss_mb), 1),
                cell(&col(|r| r.peak_mb), 1)
            );
        }
        drop(pods);
    }

    let churn_s = env_u64("NODE_FULL_CHURN_SECONDS", 300);
    if churn_s == 0 {
        return;
    }
    let life = Duration::from_secs(env_u64("NODE_FULL_CHURN_LIFE", 20));
    let steady = KubeletPods::new(110, true, "steady");
    println!("\nChurn: 110 steady pods and 5 new pods a second for {churn_s} s, each living {life:?}:\n");
    println!("| binary | CPU per {INTERVAL_S} s interval (ms) | RSS at the end (MB) | RSS peak (MB) |");
    println!("|---|---|---|---|");
    for (name, bin) in &agents {
        let mut child = Command::new(bin)
            .args(["print", "--pod-rows", "--interval", &INTERVAL_S.to_string(), "--node-name", "churn"])
            .arg("--pod-logs")
            .arg(steady.logs())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(5));
        let cpu0 = cpu_of(child.id());
        let started = Instant::now();
        let mut living: std::collections::VecDeque<(Instant, KubeletPods)> = Default::default();
        let mut k = 0usize;
        while started.elapsed() < Duration::from_secs(churn_s) {
            let tick = Instant::now();
            living.push_back((Instant::now(), KubeletPods::new(5, true, &format!("churn{k}"))));
            k += 1;
            while living.front().is_some_and(|(t, _)| t.elapsed() > life) {
                living.pop_front();
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
        }
        let cpu = cpu_of(child.id()) - cpu0;
        let (rss, peak) = rss_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        drop(living);
        let per = cpu.as_secs_f64() * 1e3 / (started.elapsed().as_secs_f64() / INTERVAL_S);
        println!("| {name} | {per:.1} | {rss:.1} | {peak:.1} |");
    }
}
