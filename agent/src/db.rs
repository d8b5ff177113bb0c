//! The database side: connecting, the node's partition, and the writer task that takes rows
//! from the sampler. The writer keeps one connection open, reconnects with jittered backoff when
//! the database goes away, and meanwhile holds rows in a bounded in-memory queue (oldest dropped
//! and counted when full), so the sampling schedule never waits on the database.
use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_postgres::{error::SqlState, Client, Config, NoTls, Statement};
use tracing::{debug, error, info, warn};

use crate::{
    migrate,
    row::{insert_sql, FeatureRow},
};
use agent_common::Event;

/// Opens a connection and drives it on the runtime. The connection task ends when the server
/// goes away; the client then reports `is_closed()`.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "database connection lost");
        }
    });
    Ok(client)
}

/// Creates (if needed) the partition of `node`; returns its table name.
pub async fn ensure_partition(client: &Client, node: &str) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one("SELECT ensure_node_partition($1)", &[&node]).await?;
    Ok(row.get(0))
}

/// An open connection ready to insert rows of one node.
struct Session {
    client: Client,
    insert: Statement,
}

impl Session {
    async fn open(config: &Config, node: &str, migrate_first: bool) -> anyhow::Result<Self> {
        let mut client = connect(config).await.context("connecting to the database")?;
        if migrate_first {
            migrate::apply(&mut client).await?;
        }
        let partition = ensure_partition(&client, node).await.context("creating this node's partition")?;
        debug!(partition, "node partition ready");
        let insert = client.prepare(&insert_sql()).await.context("preparing the row INSERT")?;
        Ok(Session { client, insert })
    }

    async fn write(&self, row: &FeatureRow) -> Result<u64, tokio_postgres::Error> {
        self.client.execute(&self.insert, &row.params()).await
    }
}

/// Whether an error concerns this row's data (retrying cannot help), rather than the connection.
fn is_row_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        class == "22" || class == "23" || *c == SqlState::UNDEFINED_TABLE
    })
}

/// Exponential backoff, 0.5 s to 30 s, with +-20 % jitter so that many agents that lost the same
/// database do not reconnect in lockstep.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let jitter = 0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0;
        base.mul_f64(jitter)
    }
}

/// What the writer did, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterReport {
    pub written: u64,
    /// Rows dropped because the queue was full (oldest first).
    pub dropped_queue_full: u64,
    /// Rows the database refused for their content.
    pub rejected: u64,
    /// Rows still queued when the shutdown timeout ran out.
    pub unwritten: u64,
}

pub struct WriterOptions {
    pub config: Config,
    pub node: String,
    pub queue_max_rows: usize,
    /// How long to keep trying to flush queued rows after the sampler stopped.
    pub shutdown_timeout: Duration,
}

/// Writes the rows from `rx` until the channel closes and the queue is flushed (or the shutdown
/// timeout passes). Migrations are applied on the first successful connection.
pub async fn run_writer(opts: WriterOptions, mut rx: mpsc::Receiver<FeatureRow>) -> WriterReport {
    let mut report = WriterReport::default();
    let mut queue: VecDeque<FeatureRow> = VecDeque::new();
    let mut session: Option<Session> = None;
    let mut migrated = false;
    let mut backoff = Backoff::new();
    let mut closed_at: Option<Instant> = None;
    let mut failures_logged = 0u32;

    let enqueue = |queue: &mut VecDeque<FeatureRow>, row: FeatureRow, report: &mut WriterReport| {
        if queue.len() >= opts.queue_max_rows {
            queue.pop_front();
            report.dropped_queue_full += 1;
            warn!(dropped_total = report.dropped_queue_full, "row queue full; dropped the oldest row");
        }
        queue.push_back(row);
    };

    loop {
        while let Ok(row) = rx.try_recv() {
            enqueue(&mut queue, row, &mut report);
        }
        if queue.is_empty() {
            if closed_at.is_some() {
                break;
            }
            match rx.recv().await {
                Some(row) => enqueue(&mut queue, row, &mut report),
                None => closed_at = Some(Instant::now()),
            }
            continue;
        }
        if closed_at.is_some_and(|t| t.elapsed() >= opts.shutdown_timeout) {
            break;
        }

        if session.as_ref().is_some_and(|s| s.client.is_closed()) {
            session = None;
        }
        let Some(s) = session.as_ref() else {
            match Session::open(&opts.config, &opts.node, !migrated).await {
                Ok(s) => {
                    info!(queued = queue.len(), "connected to the database");
                    migrated = true;
                    backoff.reset();
                    failures_logged = 0;
                    session = Some(s);
                }
                Err(e) => {
                    let wait = backoff.step();
                    // Log the first failures in full, then every tenth, so an outage is visible
                    // without flooding the log.
                    if failures_logged < 3 || failures_logged.is_multiple_of(10) {
                        warn!(error = format!("{e:#}"), retry_in = ?wait, queued = queue.len(), "database unavailable");
                    }
                    failures_logged += 1;
                    let wait = match closed_at {
                        Some(t) => wait.min(opts.shutdown_timeout.saturating_sub(t.elapsed())),
                        None => wait,
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = rx.recv(), if closed_at.is_none() => match r {
                            Some(row) => enqueue(&mut queue, row, &mut report),
                            None => closed_at = Some(Instant::now()),
                        },
                    }
                }
            }
            continue;
        };

        let row = queue.front().expect("queue is not empty");
        let mut result = s.write(row).await;
        if result.as_ref().is_err_and(is_row_error) && ensure_partition(&s.client, &opts.node).await.is_ok() {
            // Perhaps the node's partition was dropped under us: it is back, so retry once.
            if let Ok(inserted) = s.write(row).await {
                result = Ok(inserted);
            }
        }
        match result {
            Ok(inserted) => {
                report.written += 1;
                log_row(row, inserted);
                queue.pop_front();
            }
            Err(e) if is_row_error(&e) => {
                report.rejected += 1;
                error!(error = %e, ts = ?row.ts, "the database refused a row; it is dropped");
                queue.pop_front();
            }
            Err(e) => {
                warn!(error = %e, "writing a row failed; reconnecting");
                session = None;
            }
        }
    }
    report.unwritten = queue.len() as u64;
    if report.unwritten > 0 {
        error!(rows = report.unwritten, "shutting down with rows the database never received");
    }
    report
}

fn log_row(row: &FeatureRow, inserted: u64) {
    let p = &row.procfs;
    info!(
        ts = %crate::timefmt::rfc3339_micros(row.ts),
        new = inserted == 1,
        cpu_sec_idle = p.cpu_sec_idle,
        mem_av_per = p.mem_av_per,
        load1 = p.load1,
        forks_total = p.forks_total,
        est_conn = row.est_conn,
        lis_conn = row.lis_conn,
        ebpf_forks = row.ebpf_count(Event::Fork),
        ebpf_execs = row.ebpf_count(Event::Exec),
        tcp_to_est = row.ebpf_count(Event::TcpToEstablished),
        "row written"
    );
}
