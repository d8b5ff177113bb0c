//! Where a fleet's agents should connect on Citus: every writer through the coordinator (A)
//! against the writers spread over the workers (B), which route each INSERT to the shard's
//! worker themselves (Citus 13 syncs the metadata to the workers). The same simulated nodes
//! write intervals as the agent does (one transaction: the node row, then its pod rows in one
//! INSERT, prepared statements), A and B alternating, in rounds; a Citus 13 coordinator with two
//! workers on this machine, production durability. The day's partitions are made ahead through
//! the coordinator (DDL runs there only), as docs/citus.md advises.
//!
//! cargo bench -p tests --bench citus_entry   (CITUS_ENTRY_NODES, CITUS_ENTRY_PODS,
//!                                             CITUS_ENTRY_SECONDS, CITUS_ENTRY_ROUNDS)
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use feature_schema::{
    insert_sql,
    pods::{pod_insert_sql, OwnerKind, PodRow},
    FeatureRow,
};
use tokio_postgres::NoTls;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One round: `nodes` writers, writer n connecting to `urls[n % urls.len()]`, for `seconds`.
/// Returns intervals per second and the p99 of an interval's transaction in ms.
async fn round(urls: &[String], nodes: u64, pods: usize, seconds: u64, tag: &str, base: u64) -> (f64, f64) {
    let written = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let url = urls[n as usize % urls.len()].clone();
        let written = written.clone();
        let node = format!("entry-{tag}-{n}");
        tasks.push(tokio::spawn(async move {
            let (mut client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(conn);
            let insert = client.prepare(&insert_sql(1)).await.unwrap();
            let pod_insert = client.prepare(&pod_insert_sql(pods)).await.unwrap();
            let mut latencies = Vec::new();
            let mut k = 0u64;
            while Instant::now() < deadline {
                k += 1;
                // Within the day made ahead (1,800,000,000 s is 2027-01-15).
                let ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + base) + Duration::from_millis(k);
                let mut row = FeatureRow::empty(node.clone(), ts);
                row.cpu_sec_idle = Some(1.0);
                let pod_rows: Vec<PodRow> = (0..pods)
                    .map(|p| {
                        let mut r = PodRow::blank();
                        r.node = node.clone();
                        r.ts = ts;
                        r.kind = OwnerKind::Pod;
                        r.owner = format!("uid-{p}");
                        r
                    })
                    .collect();
                let t = Instant::now();
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
    let started = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let rate = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3)
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let nodes = env_or("CITUS_ENTRY_NODES", 32);
    let pods = env_or("CITUS_ENTRY_PODS", 30) as usize;
    let seconds = env_or("CITUS_ENTRY_SECONDS", 10);
    let rounds = env_or("CITUS_ENTRY_ROUNDS", 5);
    let c = throwaway_pg::citus::ThrowawayCitus::start_with(2, true).expect("throwaway Citus cluster");
    let db = c.create_database("entry").expect("the cluster's database");
    let out =
        std::process::Command::new(tests::agent_bin()).arg("migrate").env("DATABASE_URL", c.url(&db)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.psql(&db, "SELECT ensure_day_partitions(to_timestamp(1800000000))").unwrap();
    let coordinator = vec![c.coordinator.tcp_url(&db)];
    let workers: Vec<String> = c.workers.iter().map(|w| w.tcp_url(&db)).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut a, mut b, mut pa, mut pb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (rate, p99) = runtime.block_on(round(&coordinator, nodes, pods, seconds, &format!("c{r}"), r * 100));
        a.push(rate);
        pa.push(p99);
        let (rate, p99) = runtime.block_on(round(&workers, nodes, pods, seconds, &format!("w{r}"), r * 100 + 50));
        b.push(rate);
        pb.push(p99);
    }
    let ratio: Vec<f64> = b.iter().zip(&a).map(|(b, a)| b / a).collect();
    println!("{nodes} writers, {pods} pod rows an interval, {rounds} rounds of {seconds} s, alternating:");
    println!("| entry | intervals/s median (range) | p99 ms median (range) |");
    println!("|---|---|---|");
    for (name, rates, p99s) in [("coordinator", a, pa), ("workers (spread)", b, pb)] {
        let (lo, mid, hi) = spread(rates);
        let (plo, pmid, phi) = spread(p99s);
        println!("| {name} | {mid:.0} ({lo:.0}-{hi:.0}) | {pmid:.1} ({plo:.1}-{phi:.1}) |");
    }
    let (lo, mid, hi) = spread(ratio);
    println!("workers / coordinator, per round: median {mid:.2} (range {lo:.2}-{hi:.2})");
}
