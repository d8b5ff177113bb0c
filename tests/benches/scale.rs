//! Scale: how many node rows per second a database on this machine sustains, with many
//! simulated nodes writing at once through the agent's own write path (one connection per
//! node, the agent's prepared INSERT ... ON CONFLICT DO NOTHING, real rows sampled from this
//! machine, day partitions made as the agent makes them), against servers with production
//! durability (fsync and synchronous commit on). Prints rows/s and what that means in nodes at
//! a 10 s and a 1 s interval.
//!
//! Then the same with per-pod rows: every interval of a simulated node is its node row and
//! SCALE_PODS (100) pod rows, written as the agent writes them (one transaction: the node row,
//! then the pod rows in one multi-row INSERT).
//!
//! SCALE_TARGETS says where: `plain` (one PostgreSQL server, the default), `citus` (a Citus
//! coordinator with two workers, all on this machine), or `plain,citus`. With both, it then
//! loads SCALE_QUERY_ROWS (1,000,000) pod rows into each and times a z-score window query over
//! them (pod_feature_zscores), the two alternating, 3 rounds: median and range.
//!
//! cargo bench -p tests --bench scale   (SCALE_SECONDS, SCALE_NODES, SCALE_PODS, SCALE_TARGETS,
//!                                       SCALE_QUERY_ROWS to change)
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use agent::{
    sources::collector::{DiskSelector, InterfaceSelector, Roots, Sources},
    sources::sampler::Sampler,
};
use feature_db::{
    connect::{self as db},
    utc_day, Target,
};
use feature_schema::{
    insert_sql,
    pods::{pod_insert_sql, OwnerKind, PodRow, Res},
    FeatureRow,
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
    let pods = env_or("SCALE_PODS", 100) as usize;
    let targets = std::env::var("SCALE_TARGETS").unwrap_or_else(|_| "plain".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let roots = Roots::default();
    let sources =
        Sources::new(roots.clone(), DiskSelector::default_for(&roots.sysfs), InterfaceSelector::physical(&roots.sysfs));
    let mut sampler = Sampler::new(
        "template".into(),
        sources,
        None,
        Duration::from_secs(3600),
        agent::sources::netns::Proc::default(),
    );
    let template = sampler.sample();

    // The servers, kept until the end (the query comparison uses both).
    let mut plain = None;
    let mut citus = None;
    let mut urls = Vec::new();
    for target in targets.split(',') {
        let (url, what) = match target {
            "plain" => {
                let pg = throwaway_pg::ThrowawayPostgres::start_with(true).expect("throwaway Postgres");
                let url = pg.url("postgres");
                plain = Some(pg);
                (url, "one PostgreSQL 15 server".to_owned())
            }
            "citus" => {
                let c = throwaway_pg::citus::ThrowawayCitus::start_with(2, true).expect("throwaway Citus cluster");
                c.create_database("scale").expect("the cluster's database");
                let url = c.url("scale");
                citus = Some(c);
                (url, "a Citus 13 coordinator with 2 workers (8 shards a table)".to_owned())
            }
            other => panic!("SCALE_TARGETS: {other:?} is neither plain nor citus"),
        };
        urls.push((target.to_owned(), url.clone()));
        println!("\n{what} on this machine ({} CPUs), fsync on, synchronous_commit on", num_cpus());
        runtime.block_on(write_rates(Target::plain(url.parse().unwrap()), &node_counts, seconds, pods, &template));
    }
    if urls.len() == 2 {
        let rows = env_or("SCALE_QUERY_ROWS", 1_000_000);
        runtime.block_on(compare_queries(&urls, rows, &template));
    }
    drop((plain, citus));
}

/// The node-row and the pod-row tables for one database.
async fn write_rates(target: Target, node_counts: &[u64], seconds: u64, pods: usize, template: &FeatureRow) {
    let mut client = db::connect(&target).await.unwrap();
    feature_db::migrate::apply(&mut client).await.unwrap();
    println!("| simulated nodes | rows/s | nodes at 10 s | nodes at 1 s | p99 insert ms |");
    println!("|---|---|---|---|---|");
    for &nodes in node_counts {
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
                let insert = client.prepare(&insert_sql(1)).await.unwrap();
                let mut latencies = Vec::new();
                let mut ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                let mut day = i64::MIN;
                while Instant::now() < deadline {
                    ts += Duration::from_secs(10);
                    row.ts = ts;
                    let t = Instant::now();
                    if utc_day(ts) != day {
                        db::ensure_day_partitions(&client, ts).await.unwrap();
                        day = utc_day(ts);
                    }
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
    if pods == 0 {
        return;
    }
    println!("\nwith {pods} pod rows per interval (node row + pod rows in one transaction)");
    println!("| simulated nodes | intervals/s | pod rows/s | nodes at 10 s | p99 interval ms |");
    println!("|---|---|---|---|---|");
    for &nodes in node_counts {
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
                let mut latencies = Vec::new();
                let mut ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                let mut day = i64::MIN;
                let mut pod_rows = bench_pods(&row.node, pods);
                let insert = client.prepare(&insert_sql(1)).await.unwrap();
                let pod_insert = client.prepare(&pod_insert_sql(pods)).await.unwrap();
                while Instant::now() < deadline {
                    ts += Duration::from_secs(10);
                    row.ts = ts;
                    for p in &mut pod_rows {
                        p.ts = ts;
                    }
                    let t = Instant::now();
                    write_interval(&mut client, (&insert, &pod_insert), &row, &pod_rows, &mut day).await;
                    latencies.push(t.elapsed());
                    written.fetch_add(1, Ordering::Relaxed);
                }
                latencies
            }));
        }
        let (rate, p99) = finish(tasks, &written).await;
        println!("| {nodes} | {rate:.0} | {:.0} | {:.0} | {p99:.1} |", rate * pods as f64, rate * 10.0);
    }
}

/// Writes an interval as the agent does: its day's partitions first (once a day), then one
/// transaction of the node row and its pod rows (`statements`: the two prepared INSERTs).
async fn write_interval(
    client: &mut tokio_postgres::Client,
    statements: (&tokio_postgres::Statement, &tokio_postgres::Statement),
    row: &FeatureRow,
    pod_rows: &[PodRow],
    day: &mut i64,
) {
    if utc_day(row.ts) != *day {
        db::ensure_day_partitions(client, row.ts).await.unwrap();
        *day = utc_day(row.ts);
    }
    let tx = client.transaction().await.unwrap();
    tx.execute(statements.0, &row.params()).await.unwrap();
    let params: Vec<_> = pod_rows.iter().flat_map(PodRow::params).collect();
    tx.execute(statements.1, &params).await.unwrap();
    tx.commit().await.unwrap();
}

/// `pods` pod rows of node `node`, with varied counts.
fn bench_pods(node: &str, pods: usize) -> Vec<PodRow> {
    (0..pods)
        .map(|k| {
            let mut p = PodRow::blank();
            p.node = node.to_owned();
            p.interval_s = Some(10.0);
            p.kind = OwnerKind::Pod;
            p.owner = format!("0a1b2c3d-0000-4000-8000-{k:012}");
            p.namespace = Some("bench".into());
            p.pod = Some(format!("pod-{k}"));
            p.workload = Some(format!("bench/pod-{}", k % 20));
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
        .collect()
}

/// Loads `rows` pod rows (100 pods of 16 nodes, at 10 s) into each database, then times the
/// z-score window query over all of them, alternating between the databases, 3 rounds.
async fn compare_queries(urls: &[(String, String)], rows: u64, template: &FeatureRow) {
    const NODES: u64 = 16;
    const PODS: usize = 100;
    let intervals = rows / NODES / PODS as u64;
    for (_, url) in urls {
        let target = Target::plain(url.parse().unwrap());
        let mut tasks = Vec::new();
        for n in 0..NODES {
            let target = target.clone();
            let mut row = template.clone();
            row.node = format!("query-{n}");
            tasks.push(tokio::spawn(async move {
                let mut client = db::connect(&target).await.unwrap();
                let mut pod_rows = bench_pods(&row.node, PODS);
                let insert = client.prepare(&insert_sql(1)).await.unwrap();
                let pod_insert = client.prepare(&pod_insert_sql(PODS)).await.unwrap();
                let mut ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
                let mut day = i64::MIN;
                for i in 0..intervals {
                    ts += Duration::from_secs(10);
                    row.ts = ts;
                    for (k, p) in pod_rows.iter_mut().enumerate() {
                        p.ts = ts;
                        // A cumulative CPU that grows unevenly, so the z-scores are not flat.
                        p.resources[Res::CpuUsage as usize] =
                            Some((i * (1000 + (k as u64 * 37 + i * 11) % 500)) as i64);
                    }
                    write_interval(&mut client, (&insert, &pod_insert), &row, &pod_rows, &mut day).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let client = db::connect(&target).await.unwrap();
        client.batch_execute("ANALYZE node_features; ANALYZE pod_features").await.unwrap();
    }
    let query = "SELECT count(*), max(z) FROM pod_feature_zscores WHERE feature = 'cpu_usage_usec'";
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); urls.len()];
    for round in 0..3 {
        for k in 0..urls.len() {
            // Which goes first alternates.
            let k = if round % 2 == 0 { k } else { urls.len() - 1 - k };
            let client = db::connect(&Target::plain(urls[k].1.parse().unwrap())).await.unwrap();
            let t = Instant::now();
            let row = client.query_one(query, &[]).await.unwrap();
            times[k].push(t.elapsed().as_secs_f64());
            let counted: i64 = row.get(0);
            // Every loaded row has its line (each pod's first with a NULL z: no delta yet).
            assert_eq!(counted as u64, intervals * NODES * PODS as u64, "every loaded pod row is in the view");
        }
    }
    println!(
        "\nz-score window query over {} pod rows (`{query}`), 3 rounds alternating",
        intervals * NODES * PODS as u64
    );
    println!("| database | median s | range s |");
    println!("|---|---|---|");
    for ((name, _), mut t) in urls.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!("| {name} | {:.2} | {:.2}-{:.2} |", t[t.len() / 2], t[0], t[t.len() - 1]);
    }
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
