//! `cargo bench -p tests --bench namespaces`: what every network namespace costs the agent.
//!   1. CPU per interval (CLOCK_THREAD_CPUTIME_ID of one sample with per-pod rows) with 0, 10,
//!      100 and 500 kubelet-style pods, each pod's one process in a network namespace of its own
//!      (`unshare -n`: its row gets the namespace's interface counters and TCP gauges) against
//!      the same pods with their process in the host's namespace (no network columns).
//!      The two kinds alternate in rounds, which goes first alternating; medians and spread.
//!   2. What the first part adds per pod, alone: reading one pod namespace's /proc/<pid>/net/dev
//!      and its connection balance from the kernel map, over 100 such pods.
//!   3. The connection gauges' seed with those namespaces (one table read per namespace), and
//!      one periodic re-check (the host's dump, a scan of /proc, one other namespace's table).
//!
//! Needs root. Prints Markdown tables. BENCH_ROUNDS (default 5) and BENCH_SAMPLES (default 20)
//! set the rounds and the samples measured per round.
use std::time::Duration;

use agent::{
    sources::conn_gauges::ConnGauges,
    sources::ebpf::{EbpfCounters, LoadOptions},
    sources::netns::Proc,
    sources::sampler::Sampler,
    sources::tcp_diag::TcpDiag,
};
use tests::cgroup::KubeletPods;

use tests::{pod_sampler, thread_cpu};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median CPU per sample over `samples`, after two samples that settle the pods' state.
fn per_sample(s: &mut Sampler, samples: usize) -> f64 {
    for _ in 0..2 {
        s.sample();
    }
    let mut v: Vec<f64> = (0..samples)
        .map(|_| {
            let t = thread_cpu();
            let row = s.sample();
            std::hint::black_box(row);
            (thread_cpu() - t).as_secs_f64() * 1e6
        })
        .collect();
    median(&mut v)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the namespace bench needs root");
    let rounds = env_usize("BENCH_ROUNDS", 5);
    let samples = env_usize("BENCH_SAMPLES", 20);
    let mut s = pod_sampler();
    println!("| pods | own namespaces (µs per interval) | host namespace (µs per interval) | added per pod (µs) |");
    println!("|---|---|---|---|");
    for n in [0usize, 10, 100, 500] {
        let (mut own, mut host, mut added) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut pair = [0.0f64; 2];
            let order = if round % 2 == 0 { [true, false] } else { [false, true] };
            for own_namespaces in order {
                let _pods = KubeletPods::new(n, own_namespaces, if own_namespaces { "own" } else { "host" });
                pair[usize::from(!own_namespaces)] = per_sample(&mut s, samples);
            }
            own.push(pair[0]);
            host.push(pair[1]);
            if n > 0 {
                added.push((pair[0] - pair[1]) / n as f64);
            }
        }
        let spread = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
            format!("{lo:.0}-{hi:.0}")
        };
        let added_txt = if added.is_empty() {
            "-".to_owned()
        } else {
            let (lo, hi) = added.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
            format!("{:.1} ({lo:.1} to {hi:.1})", median(&mut added.clone()))
        };
        println!(
            "| {n} | {:.0} ({}) | {:.0} ({}) | {added_txt} |",
            median(&mut own.clone()),
            spread(&own),
            median(&mut host.clone()),
            spread(&host),
        );
    }
    drop(s);

    println!();
    println!("| pods | network read per pod (µs CPU, median of {rounds} rounds, spread) |");
    println!("|---|---|");
    let counters = EbpfCounters::load_with(LoadOptions::default()).expect("eBPF loads");
    {
        let pods = KubeletPods::new(100, true, "read");
        let proc = Proc::default();
        let targets: Vec<(u32, u32)> =
            pods.pids().into_iter().map(|pid| (pid, proc.key_of(pid).expect("a pod's namespace"))).collect();
        let mut buf = String::new();
        let mut per_pod = Vec::new();
        for _ in 0..rounds {
            let t = thread_cpu();
            for _ in 0..samples {
                for (pid, key) in &targets {
                    std::hint::black_box(proc.interfaces(*pid, &mut buf).expect("net/dev reads"));
                    std::hint::black_box(counters.netns_balance(*key).expect("the map reads"));
                }
            }
            per_pod.push((thread_cpu() - t).as_secs_f64() * 1e6 / (samples * targets.len()) as f64);
        }
        let (lo, hi) = per_pod.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        println!("| {} | {:.1} ({lo:.1}-{hi:.1}) |", targets.len(), median(&mut per_pod));
    }

    println!();
    println!("| namespaces | seed (ms CPU) | one re-check (ms CPU) |");
    println!("|---|---|---|");
    let mut diag = TcpDiag::open().expect("a sock_diag socket");
    for n in [0usize, 10, 100, 500] {
        let _pods = KubeletPods::new(n, true, "seed");
        let (mut seeds, mut checks) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = thread_cpu();
            let mut g = ConnGauges::seed(&counters, Some(&mut diag), Proc::default(), Duration::ZERO, Duration::MAX)
                .expect("the gauges seed");
            seeds.push((thread_cpu() - t).as_secs_f64() * 1e3);
            let t = thread_cpu();
            std::hint::black_box(g.recheck(&counters, Some(&mut diag)));
            checks.push((thread_cpu() - t).as_secs_f64() * 1e3);
        }
        println!("| {} | {:.1} | {:.1} |", n, median(&mut seeds), median(&mut checks));
    }
}
