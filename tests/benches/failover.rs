//! What an asynchronous replica can lose at a failover: an agent writes to a primary with a
//! streaming replica (asynchronous, Postgres' default), the primary crashes (immediate
//! shutdown) at a random moment, the replica is promoted, and the rows the agent was told were
//! committed but the promoted replica lacks are counted. Meanwhile pg_stat_replication's
//! replay_lag gives the window in time. Each trial repeats that with a fresh pair; then one
//! trial with synchronous_commit = remote_apply, which must lose nothing.
//!
//! cargo bench -p tests --bench failover     (the figures in docs/durability.md)
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tests::{fresh_spool_dir, process::Agent};
use throwaway_pg::{Options, ThrowawayPostgres};

const TRIALS: usize = 8;

/// The ts of every row the agent logged as written (new) so far.
fn acknowledged(log: &str) -> HashSet<String> {
    log.lines()
        .filter(|l| l.contains("row written") && l.contains("new=true"))
        .filter_map(|l| l.split(" ts=").nth(1).and_then(|r| r.split(' ').next()).map(str::to_owned))
        .collect()
}

fn on_server(pg: &ThrowawayPostgres) -> HashSet<String> {
    pg.psql("fo", "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM node_features")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn trial(sync: bool, seed: u64) -> (usize, usize, f64) {
    let settings = if sync { vec!["synchronous_commit=remote_apply".to_string()] } else { Vec::new() };
    let options = Options { durable: true, settings, ..Options::default() };
    let mut primary = ThrowawayPostgres::start_opts(options.clone()).unwrap();
    primary.create_database("fo").unwrap();
    let mut replica = ThrowawayPostgres::replica_of(&primary, options).unwrap();
    if sync {
        primary.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
        primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    }
    let url = format!(
        "host={},{} port={},{} user=postgres dbname=fo target_session_attrs=read-write",
        primary.listen_address(),
        replica.listen_address(),
        primary.port(),
        replica.port()
    );
    let spool = fresh_spool_dir();
    let agent = Agent::start(&url, &spool, &["--interval", "0.05", "--node-name", "fo", "--no-ebpf"], &[]);
    let run = Duration::from_millis(3000 + seed % 2000);
    let started = Instant::now();
    let mut lags = Vec::new();
    while started.elapsed() < run {
        let lag = primary
            .psql("postgres", "SELECT coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication")
            .unwrap_or_default();
        if let Ok(v) = lag.trim().parse::<f64>() {
            lags.push(v * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    primary.crash();
    // Nothing is writable until the promotion: what the log says was written went to the old
    // primary. (A line is logged after the commit's answer; one in flight is not counted.)
    std::thread::sleep(Duration::from_millis(300));
    let before_crash = acknowledged(&agent.log());
    replica.promote().unwrap();
    let kept = on_server(&replica);
    let lost = before_crash.difference(&kept).count();
    drop(agent);
    let _ = std::fs::remove_dir_all(spool);
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p95 = lags.get(lags.len() * 95 / 100).copied().unwrap_or(0.0);
    (before_crash.len(), lost, p95)
}

fn main() {
    println!(
        "| replication | trial | rows acknowledged before the crash | lost at the failover | replay_lag p95 (ms) |"
    );
    println!("|---|---|---|---|---|");
    for t in 0..TRIALS {
        let (acked, lost, p95) = trial(false, t as u64 * 7919);
        println!("| asynchronous | {t} | {acked} | {lost} | {p95:.1} |");
    }
    let (acked, lost, p95) = trial(true, 1);
    println!("| synchronous (remote_apply) | 0 | {acked} | {lost} | {p95:.1} |");
}
