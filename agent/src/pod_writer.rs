//! The writer of per-pod rows: its own connection, kept open; rows wait in a bounded memory
//! queue while the database is away (oldest dropped beyond it, counted) and leave in order, in
//! multi-row INSERTs of up to `batch_rows` rows, each interval's rows after creating the node's
//! day partition. Unlike node rows, pod rows are not spooled to disk yet: an agent restart
//! during an outage loses the queued pod rows (README "Per-pod rows").
use std::{
    collections::{HashSet, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;
use tokio_postgres::{types::ToSql, Client};
use tracing::{info, warn};

use feature_db::{connect::open, describe, Target};
use feature_schema::pods::{pod_insert_sql, pod_rows_per_insert, PodRow};

use crate::metrics::Metrics;

pub struct PodWriterOptions {
    pub target: Target,
    /// Rows held while the database is away; the oldest are dropped beyond it.
    pub queue_max_rows: usize,
    pub batch_rows: usize,
    pub shutdown_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

fn day(ts: SystemTime) -> u64 {
    ts.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

struct Queue {
    rows: VecDeque<PodRow>,
    max: usize,
}

impl Queue {
    fn push(&mut self, rows: Vec<PodRow>, metrics: &Metrics) {
        for row in rows {
            if self.rows.len() >= self.max {
                self.rows.pop_front();
                let n = metrics.pod_rows_dropped.fetch_add(1, Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(dropped_total = n, "pod row queue full; dropped the oldest pod rows");
                }
            }
            self.rows.push_back(row);
        }
    }
}

/// Writes the front of the queue; returns false on a connection error (the rows stay).
async fn flush(
    client: &Client,
    queue: &mut Queue,
    partitions: &mut HashSet<(String, u64)>,
    batch: usize,
    metrics: &Metrics,
) -> bool {
    while !queue.rows.is_empty() {
        let n = queue.rows.len().min(batch);
        let rows: Vec<&PodRow> = queue.rows.iter().take(n).collect();
        for row in &rows {
            let key = (row.node.clone(), day(row.ts));
            if !partitions.contains(&key) {
                if let Err(e) = client.query_one("SELECT ensure_pod_partition($1, $2)", &[&row.node, &row.ts]).await {
                    warn!(error = %describe(&e), "creating the pod partition failed");
                    return false;
                }
                partitions.insert(key);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> = rows.iter().flat_map(|r| r.params()).collect();
        match client.execute(&pod_insert_sql(n), &params).await {
            Ok(_) => {
                queue.rows.drain(..n);
                metrics.pod_rows_written.fetch_add(n as u64, Relaxed);
            }
            Err(e) if e.code().is_some_and(|c| matches!(&c.code()[..2], "22" | "23")) => {
                warn!(error = %describe(&e), rows = n, "the database refused these pod rows; dropped");
                queue.rows.drain(..n);
                metrics.pod_rows_dropped.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                warn!(error = %describe(&e), "writing pod rows failed; they stay queued");
                return false;
            }
        }
    }
    true
}

/// Runs until the sender is dropped, then flushes for at most `shutdown_timeout`.
pub async fn run(opts: PodWriterOptions, mut rx: mpsc::Receiver<Vec<PodRow>>) {
    let batch = opts.batch_rows.clamp(1, pod_rows_per_insert());
    let mut queue = Queue { rows: VecDeque::new(), max: opts.queue_max_rows.max(1) };
    let mut client: Option<Client> = None;
    let mut partitions = HashSet::new();
    let mut retry_at = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut deadline: Option<Instant> = None;
    loop {
        if client.as_ref().is_some_and(Client::is_closed) {
            client = None;
        }
        if client.is_none() && Instant::now() >= retry_at {
            match open(&opts.target).await {
                Ok(c) => {
                    info!("pod writer connected");
                    client = Some(c);
                    partitions.clear();
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    warn!(error = %e, "pod writer cannot connect; pod rows wait in memory");
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        if let Some(c) = client.as_ref() {
            if !flush(c, &mut queue, &mut partitions, batch, &opts.metrics).await {
                client = None;
                retry_at = Instant::now() + backoff;
            }
        }
        if let Some(d) = deadline {
            if queue.rows.is_empty() || Instant::now() >= d {
                let lost = queue.rows.len() as u64;
                if lost > 0 {
                    opts.metrics.pod_rows_dropped.fetch_add(lost, Relaxed);
                    warn!(rows = lost, "pod rows not written before the shutdown timeout are lost");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let wait = if client.is_some() {
            Duration::from_secs(3600)
        } else {
            retry_at.saturating_duration_since(Instant::now())
        };
        tokio::select! {
            got = rx.recv() => match got {
                Some(rows) => queue.push(rows, &opts.metrics),
                None => deadline = Some(Instant::now() + opts.shutdown_timeout),
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
