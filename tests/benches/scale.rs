//! Scale: how many node-rows per second one Postgres on this machine sustains, with many
//! simulated nodes writing at once through the agent's own write path (one connection per
//! node, the agent's prepared INSERT ... ON CONFLICT DO NOTHING, real rows sampled from this
//! machine, each node in its own partition), against a server with production durability
//! (fsync and synchronous commit on). Prints rows/s and what that means in nodes at a 10 s
//! and a 1 s interval.
//!
//! Then the same with per-pod rows: every interval of a simulated node is its node row and
//! SCALE_PODS (100) pod rows, written as the agent writes them (one transaction: the node row,
//! then the pod rows in one multi-row INSERT, into the node's day partition).
//!
//! cargo bench -p tests --bench scale            (SCALE_SECONDS, SCALE_NODES, SCALE_PODS to change)
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use agent::{
    collector::{DiskSelector, InterfaceSelector, Roots, Sources},
    sampler::Sampler,
};
use feature_db::{
    connect::{self as db},
    Target,
};
use feature_schema::{
    insert_sql,
    pods::{pod_insert_sql, OwnerKind, PodRow},
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let seconds = env_or("SCALE_SECONDS", 20);
    let node_counts: Vec<u64> = match std::env::var("SCALE_NODES") {
        Ok(v) => v.split(',').filter_map(|n| n.parse().ok()).collect(),
        Err(_) => vec![8, 32, 128],
    };
    let pg = throwaway_pg::ThrowawayPostgres::start_with(true).expect("throwaway Postgres");
    let url = pg.url("postgres");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let roots = Roots::default();
    let sources =
        Sources::new(roots.clone(), DiskSelector::default_for(&roots.sysfs), InterfaceSelector::physical(&roots.sysfs));
    let mut sampler =
        Sampler::new("template".into(), sources, None, Duration::from_secs(3600), agent::netns::Proc::default());
    let template = sampler.sample();

    println!("one Postgres 15 on this machine ({} CPUs), fsync on, synchronous_commit on", num_cpus());
    println!("| simulated nodes | rows/s | nodes at 10 s | nodes at 1 s | p99 insert ms |");
    println!("|---|---|---|---|---|");
    runtime.block_on(async {
        let target = Target::plain(url.parse().unwrap());
        let mut client = db::connect(&target).await.unwrap();
        feature_db::migrate::apply(&mut client).await.unwrap();
        for &nodes in &node_counts {
            let written = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for n in 0..nodes {
                let target = target.clone();
                let written = written.clone();
                let mut row = template.clone();
                row.node = format!("scale-{nodes}-{n}");
                tasks.push(tokio::spawn(async move {
                    let client = db::connect(&target).await.unwrap();
                    db::ensure_partition(&client, &row.node).await.unwrap();
                    let insert = client.prepare(&insert_sql(1)).await.unwrap();
                    let mut latencies = Vec::new();
                    let mut ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                    while Instant::now() < deadline {
                        ts += Duration::from_secs(10);
                        row.ts = ts;
                        let t = Instant::now();
                        client.execute(&insert, &row.params()).await.unwrap();
                        latencies.push(t.elapsed());
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies
                }));
            }
            let (rate, p99) = finish(tasks, &written).await;
            println!("| {nodes} | {rate:.0} | {:.0} | {:.0} | {p99:.1} |", rate * 10.0, rate);
        }

        let pods = env_or("SCALE_PODS", 100) as usize;
        if pods == 0 {
            return;
        }
        println!("\nwith {pods} pod rows per interval (node row + pod rows in one transaction)");
        println!("| simulated nodes | intervals/s | pod rows/s | nodes at 10 s | p99 interval ms |");
        println!("|---|---|---|---|---|");
        for &nodes in &node_counts {
            let written = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for n in 0..nodes {
                let target = target.clone();
                let written = written.clone();
                let mut row = template.clone();
                row.node = format!("podscale-{nodes}-{n}");
                tasks.push(tokio::spawn(async move {
                    let mut client = db::connect(&target).await.unwrap();
                    db::ensure_partition(&client, &row.node).await.unwrap();
                    let insert = client.prepare(&insert_sql(1)).await.unwrap();
                    let pod_insert = client.prepare(&pod_insert_sql(pods)).await.unwrap();
                    let mut pod_rows: Vec<PodRow> = (0..pods)
                        .map(|k| {
                            let mut p = PodRow::blank();
                            p.node = row.node.clone();
                            p.kind = OwnerKind::Pod;
                            p.owner = format!("0a1b2c3d-0000-4000-8000-{k:012}");
                            p.namespace = Some("bench".into());
                            p.pod = Some(format!("pod-{k}"));
                            p.qos = Some("Burstable".into());
                            p.cgroups = Some(2);
                            for (i, e) in p.events.iter_mut().enumerate() {
                                *e = Some((k * 7 + i) as i64 % 50);
                            }
                            for (i, r) in p.resources.iter_mut().enumerate() {
                                *r = Some((k * 1_000_003 + i * 17) as i64);
                            }
                            p
                        })
                        .collect();
                    let mut latencies = Vec::new();
                    let mut ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                    let mut day = u64::MAX;
                    while Instant::now() < deadline {
                        ts += Duration::from_secs(10);
                        row.ts = ts;
                        for p in &mut pod_rows {
                            p.ts = ts;
                        }
                        let t = Instant::now();
                        let d = ts.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 86_400;
                        if d != day {
                            client.query_one("SELECT ensure_pod_partition($1, $2)", &[&row.node, &ts]).await.unwrap();
                            day = d;
                        }
                        let tx = client.transaction().await.unwrap();
                        tx.execute(&insert, &row.params()).await.unwrap();
                        let params: Vec<_> = pod_rows.iter().flat_map(PodRow::params).collect();
                        tx.execute(&pod_insert, &params).await.unwrap();
                        tx.commit().await.unwrap();
                        latencies.push(t.elapsed());
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies
                }));
            }
            let (rate, p99) = finish(tasks, &written).await;
            println!("| {nodes} | {rate:.0} | {:.0} | {:.0} | {p99:.1} |", rate * pods as f64, rate * 10.0);
        }
    });
}

/// Waits for the writers; returns what they wrote per second (counted in `written`) and the
/// 99th percentile of their write latencies, in ms.
async fn finish(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, written: &AtomicU64) -> (f64, f64) {
    let started = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let rate = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
