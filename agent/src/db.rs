//! The writer task that takes rows from the sampler to Postgres (connecting is feature-db's). The writer keeps one connection open, reconnects with jittered backoff when
//! the database goes away, and meanwhile keeps rows in the on-disk spool (spool.rs; or a
//! bounded memory queue without one), so the sampling schedule never waits on the database.
//! Rows leave the backlog in order, in batches of multi-row INSERTs, once the database has them.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_postgres::{error::SqlState, types::ToSql, Client, Config, Statement};
use tracing::{debug, error, info, warn};

use feature_db::{
    connect::{open, ConnectError},
    describe, ensure_partition, migrate, Target,
};

use crate::{metrics::Metrics, spool::Spool};
use feature_schema::{
    insert_sql,
    pods::{pod_insert_sql, pod_rows_per_insert, PodRow},
    FeatureRow,
};

/// An open connection ready to insert rows.
struct Session {
    client: Client,
    /// Prepared multi-row INSERTs, by number of rows.
    inserts: HashMap<usize, Statement>,
    /// Nodes whose partition exists (spooled rows may belong to an earlier node name).
    partitions: HashSet<String>,
    /// (node, UTC day) whose pod_features partition exists.
    pod_partitions: HashSet<(String, u64)>,
}

impl Session {
    async fn open(target: &Target, node: &str, migrate_first: bool) -> anyhow::Result<Self> {
        let mut client = open(target).await?;
        if migrate_first {
            migrate::ensure_current(&mut client).await?;
        }
        let partition = ensure_partition(&client, node).await.context("creating this node's partition")?;
        debug!(partition, "node partition ready");
        let mut s =
            Session { client, inserts: HashMap::new(), partitions: HashSet::new(), pod_partitions: HashSet::new() };
        s.partitions.insert(node.to_owned());
        s.statement(1).await.context("preparing the row INSERT")?;
        Ok(s)
    }

    async fn statement(&mut self, rows: usize) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.inserts.get(&rows) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&insert_sql(rows)).await?;
        self.inserts.insert(rows, s.clone());
        Ok(s)
    }

    /// Inserts the rows in one statement, and their pod rows with them in the same transaction
    /// (so the database never holds an interval's node row without its pod rows); returns how
    /// many node rows were new.
    async fn write(&mut self, rows: &[FeatureRow]) -> Result<u64, tokio_postgres::Error> {
        for row in rows {
            if !self.partitions.contains(&row.node) {
                ensure_partition(&self.client, &row.node).await?;
                self.partitions.insert(row.node.clone());
            }
        }
        let statement = self.statement(rows.len()).await?;
        let params: Vec<&(dyn ToSql + Sync)> = rows.iter().flat_map(FeatureRow::params).collect();
        let pods: Vec<&PodRow> = rows.iter().flat_map(|r| &r.pods).collect();
        if pods.is_empty() {
            return self.client.execute(&statement, &params).await;
        }
        for p in &pods {
            let key = (p.node.clone(), pod_day(p.ts));
            if !self.pod_partitions.contains(&key) {
                self.client.query_one("SELECT ensure_pod_partition($1, $2)", &[&p.node, &p.ts]).await?;
                self.pod_partitions.insert(key);
            }
        }
        let tx = self.client.transaction().await?;
        let inserted = tx.execute(&statement, &params).await?;
        for chunk in pods.chunks(pod_rows_per_insert()) {
            let params: Vec<&(dyn ToSql + Sync)> = chunk.iter().flat_map(|p| p.params()).collect();
            tx.execute(&pod_insert_sql(chunk.len()), &params).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}

/// The UTC day of a timestamp: pod_features' partitions are per node and day.
fn pod_day(ts: SystemTime) -> u64 {
    ts.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

/// Whether an error concerns the rows' data (retrying cannot help), rather than the connection.
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

/// Whether the database's address accepts a connection at all (a TCP or Unix-socket connect,
/// nothing sent): between backoff steps, this tells within a second that a database that was
/// down is back, without a full connection attempt.
async fn reachable(config: &Config) -> bool {
    use tokio_postgres::config::Host;
    const LIMIT: Duration = Duration::from_secs(1);
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let ok = match host {
            Host::Tcp(name) => {
                let addr = config.get_hostaddrs().get(i).map_or_else(|| name.clone(), ToString::to_string);
                tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect((addr.as_str(), port)))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            Host::Unix(dir) => {
                tokio::time::timeout(LIMIT, tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
        };
        if ok {
            return true;
        }
    }
    false
}

/// Whether a failed connection was refused because the server is starting up or shutting down
/// (SQLSTATE 57P03 / 57P01): it will take connections in a moment.
fn starting_up(e: &anyhow::Error) -> bool {
    let transient = |c: &SqlState| *c == SqlState::CANNOT_CONNECT_NOW || *c == SqlState::ADMIN_SHUTDOWN;
    e.chain().any(|c| {
        c.downcast_ref::<ConnectError>().is_some_and(|c| c.code.as_ref().is_some_and(transient))
            || c.downcast_ref::<tokio_postgres::Error>().is_some_and(|pg| pg.code().is_some_and(transient))
    })
}

/// How often an unreachable database's address is probed between backoff steps.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What the writer did, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterReport {
    pub written: u64,
    /// Pod rows written with them.
    pub pod_rows_written: u64,
    /// Rows dropped because the memory queue or the spool was full (oldest first).
    pub dropped_full: u64,
    /// Rows the database refused for their content.
    pub rejected: u64,
    /// Rows lost to damaged spool records.
    pub corrupt: u64,
    /// Rows neither the database nor the spool took before the writer stopped (no spool, or
    /// the spool failing, e.g. a full disk): lost.
    pub dropped_shutdown: u64,
    /// Rows not in the database when the writer stopped, safe in the spool: the next start
    /// writes them first.
    pub unwritten: u64,
}

pub struct WriterOptions {
    pub target: Target,
    pub node: String,
    /// Rows held in memory when there is no spool (or the spool fails).
    pub queue_max_rows: usize,
    /// How long to keep trying to flush queued rows after the sampler stopped.
    pub shutdown_timeout: Duration,
    /// The on-disk spool; None keeps rows in memory only.
    pub spool: Option<Spool>,
    /// Rows per INSERT when catching up.
    pub batch_rows: usize,
    pub metrics: Arc<Metrics>,
}

/// Where rows wait for the database. New rows wait in memory while the database takes them
/// (the common case: written within milliseconds, nothing touches the disk); when it does not
/// (no connection, a failed write, shutdown), they are spilled to the on-disk spool in order.
/// Rows leave in order, oldest first: the spool's, then memory's (which are always newer).
struct Backlog {
    spool: Option<Spool>,
    memory: VecDeque<FeatureRow>,
    memory_max: usize,
    dropped_memory: u64,
    /// The spool failed on the last spill (logged once until it works again).
    spool_failing: bool,
}

impl Backlog {
    fn push(&mut self, row: FeatureRow) {
        if self.memory.len() >= self.memory_max {
            self.memory.pop_front();
            self.dropped_memory += 1;
            warn!(dropped_total = self.dropped_memory, "row queue full; dropped the oldest row");
        }
        self.memory.push_back(row);
    }

    /// Moves the rows waiting in memory to the spool (if there is one and it works).
    fn spill(&mut self) {
        let Some(spool) = self.spool.as_mut() else { return };
        while let Some(row) = self.memory.front() {
            match spool.append(row) {
                Ok(()) => {
                    self.memory.pop_front();
                    if self.spool_failing {
                        info!("the spool works again");
                        self.spool_failing = false;
                    }
                }
                Err(e) => {
                    if !self.spool_failing {
                        error!(error = %e, "cannot write to the spool; holding rows in memory (--queue-max-rows) until it works again");
                        self.spool_failing = true;
                    }
                    return;
                }
            }
        }
    }

    fn len(&self) -> u64 {
        self.memory.len() as u64 + self.spool.as_ref().map_or(0, Spool::pending_rows)
    }

    fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spool.as_ref().is_none_or(|s| !s.has_unread())
    }

    /// The oldest rows, at most `n`: the spool's first, then memory's.
    fn peek(&mut self, n: usize) -> Vec<FeatureRow> {
        if let Some(spool) = self.spool.as_mut() {
            if spool.has_unread() {
                match spool.read_batch(n) {
                    Ok(rows) if !rows.is_empty() => return rows,
                    Ok(_) => {
                        // Only damaged records were left: they are skipped (and counted) for good.
                        if let Err(e) = spool.commit(0) {
                            error!(error = %e, "cannot record progress in the spool");
                        }
                    }
                    Err(e) => error!(error = %e, "cannot read the spool"),
                }
            }
        }
        self.memory.iter().take(n).cloned().collect()
    }

    /// The peeked rows are in the database (or refused for good).
    fn commit(&mut self, n: usize) {
        // The rows came from the spool when it has a batch in flight (it keeps their position).
        match self.spool.as_mut().filter(|s| s.in_flight()) {
            Some(spool) => {
                if let Err(e) = spool.commit(n) {
                    error!(error = %e, "cannot record progress in the spool; its rows may be written again (without duplicates)");
                }
            }
            _ => {
                self.memory.drain(..n.min(self.memory.len()));
            }
        }
    }

    /// The peeked rows were not written; they are read again next time.
    fn abort(&mut self) {
        if let Some(spool) = self.spool.as_mut() {
            if spool.in_flight() {
                spool.rewind();
            }
        }
    }

    fn publish(&self, m: &Metrics) {
        m.rows_queued.store(self.memory.len() as u64, Relaxed);
        m.rows_dropped_queue_full.store(self.dropped_memory, Relaxed);
        if let Some(s) = &self.spool {
            m.rows_spooled.store(s.pending_rows(), Relaxed);
            m.spool_bytes.store(s.bytes(), Relaxed);
            m.rows_dropped_spool_full.store(s.stats().dropped, Relaxed);
            m.rows_dropped_corrupt.store(s.stats().corrupt, Relaxed);
            m.spool_ack_damaged.store(s.stats().ack_damaged, Relaxed);
        }
    }
}

/// Writes the rows from `rx` until the channel closes and the backlog is flushed (or the
/// shutdown timeout passes; rows left then are spilled to the spool for the next start). Rows
/// spooled by an earlier run are written first. Migrations are applied on the first successful
/// connection if the schema is behind.
///
/// While the database is away, connection attempts back off (0.5 s to 30 s); between them its
/// address is probed every second when it refused connections outright, so rows flow again
/// within about a second of its return. A shutdown tries the database at once.
pub async fn run_writer(opts: WriterOptions, mut rx: mpsc::Receiver<FeatureRow>) -> WriterReport {
    let metrics = opts.metrics.clone();
    let mut report = WriterReport::default();
    let mut backlog = Backlog {
        spool: opts.spool,
        memory: VecDeque::new(),
        memory_max: opts.queue_max_rows,
        dropped_memory: 0,
        spool_failing: false,
    };
    if !backlog.is_empty() {
        info!(rows = backlog.len(), "rows from an earlier run are in the spool; they are written first");
    }
    let mut session: Option<Session> = None;
    let mut migrated = false;
    let mut backoff = Backoff::new();
    let mut next_attempt = tokio::time::Instant::now();
    // The last attempt failed because nothing accepted connections at the address (or the
    // server was starting up): probe it every PROBE_EVERY, at `next_probe`.
    let mut probing = false;
    let mut next_probe = tokio::time::Instant::now();
    let mut closed_at: Option<tokio::time::Instant> = None;
    let mut failures_logged = 0u32;

    loop {
        while let Ok(row) = rx.try_recv() {
            backlog.push(row);
        }
        backlog.publish(&metrics);
        if backlog.is_empty() {
            if closed_at.is_some() {
                break;
            }
            match rx.recv().await {
                Some(row) => backlog.push(row),
                None => closed_at = Some(tokio::time::Instant::now()),
            }
            continue;
        }
        let deadline = closed_at.map(|t| t + opts.shutdown_timeout);
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }

        if session.as_ref().is_some_and(|s| s.client.is_closed()) {
            session = None;
            metrics.database_up.store(false, Relaxed);
        }
        if session.is_none() {
            // The database is away: nothing waits in memory meanwhile.
            backlog.spill();
            backlog.publish(&metrics);
            let now = tokio::time::Instant::now();
            if now < next_attempt {
                // The probe keeps its own schedule: rows arriving every interval must not keep
                // postponing it (with a 1 s interval they would, forever).
                if probing && now >= next_probe {
                    next_probe = now + PROBE_EVERY;
                    if reachable(&opts.target.config).await {
                        debug!("the database's address accepts connections again");
                        next_attempt = tokio::time::Instant::now();
                        continue;
                    }
                }
                let mut until = next_attempt;
                if probing {
                    until = until.min(next_probe);
                }
                if let Some(d) = deadline {
                    until = until.min(d);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    r = rx.recv(), if closed_at.is_none() => match r {
                        Some(row) => backlog.push(row),
                        None => {
                            // Shutting down: try the database at once before giving up.
                            closed_at = Some(tokio::time::Instant::now());
                            next_attempt = tokio::time::Instant::now();
                        }
                    },
                }
                continue;
            }
            match Session::open(&opts.target, &opts.node, !migrated).await {
                Ok(s) => {
                    info!(backlog = backlog.len(), "connected to the database");
                    migrated = true;
                    failures_logged = 0;
                    probing = false;
                    metrics.database_up.store(true, Relaxed);
                    session = Some(s);
                }
                Err(e) => {
                    metrics.database_up.store(false, Relaxed);
                    let wait = backoff.step();
                    next_attempt = tokio::time::Instant::now() + wait;
                    // Probe between attempts while nothing accepts connections, or while the
                    // server is still starting up (it accepts, then says "cannot connect now"):
                    // otherwise a server back a moment later would wait out the backoff.
                    probing = starting_up(&e) || !reachable(&opts.target.config).await;
                    // Log the first failures in full, then every tenth, so an outage is visible
                    // without flooding the log.
                    if failures_logged < 3 || failures_logged.is_multiple_of(10) {
                        warn!(error = format!("{e:#}"), retry_in = ?wait, backlog = backlog.len(), "database unavailable");
                    }
                    failures_logged += 1;
                }
            }
            continue;
        }
        let s = session.as_mut().expect("checked above");

        let rows = backlog.peek(opts.batch_rows.max(1));
        if rows.is_empty() {
            continue;
        }
        match write_rows(s, &rows, &mut report).await {
            Ok(()) => {
                backoff.reset();
                backlog.commit(rows.len());
                metrics.rows_written.store(report.written, Relaxed);
                metrics.pod_rows_written.store(report.pod_rows_written, Relaxed);
                metrics.rows_rejected.store(report.rejected, Relaxed);
                metrics.last_write_unix.set(crate::metrics::now_unix());
            }
            Err(e) => {
                backlog.abort();
                let wait = backoff.step();
                next_attempt = tokio::time::Instant::now() + wait;
                probing = true;
                warn!(error = describe(&e), retry_in = ?wait, "writing rows failed; reconnecting");
                session = None;
                metrics.database_up.store(false, Relaxed);
            }
        }
    }
    // Whatever is left goes to the spool, for the next start; what the spool cannot take is
    // lost, and counted.
    backlog.spill();
    report.dropped_shutdown = backlog.memory.len() as u64;
    metrics.rows_dropped_shutdown.store(report.dropped_shutdown, Relaxed);
    backlog.publish(&metrics);
    report.dropped_full = backlog.dropped_memory + backlog.spool.as_ref().map_or(0, |s| s.stats().dropped);
    report.corrupt = backlog.spool.as_ref().map_or(0, |s| s.stats().corrupt);
    report.unwritten = backlog.spool.as_ref().map_or(0, Spool::pending_rows);
    if report.unwritten > 0 {
        warn!(rows = report.unwritten, "stopping with rows in the spool; the next start writes them first");
    }
    if report.dropped_shutdown > 0 {
        let why = if backlog.spool.is_some() { "the spool could not take them" } else { "there is no spool" };
        error!(
            rows = report.dropped_shutdown,
            reason = why,
            "stopping with rows the database never received: they are lost"
        );
    }
    report
}

/// Writes a batch; a row the database refuses for its content is dropped and counted (the
/// batch is then retried row by row to find it). Err only for connection-level failures.
async fn write_rows(
    s: &mut Session,
    rows: &[FeatureRow],
    report: &mut WriterReport,
) -> Result<(), tokio_postgres::Error> {
    match s.write(rows).await {
        Ok(inserted) => {
            report.written += rows.len() as u64;
            report.pod_rows_written += rows.iter().map(|r| r.pods.len() as u64).sum::<u64>();
            if rows.len() == 1 {
                log_row(&rows[0], inserted);
            } else {
                info!(rows = rows.len(), new = inserted, first = %feature_schema::timefmt::rfc3339_micros(rows[0].ts), "caught up a batch of rows");
            }
            Ok(())
        }
        Err(e) if is_row_error(&e) => {
            // Perhaps a partition was dropped under us (retention drops pod day partitions):
            // forget every partition we know and go row by row.
            s.partitions.clear();
            s.pod_partitions.clear();
            for row in rows {
                match s.write(std::slice::from_ref(row)).await {
                    Ok(inserted) => {
                        report.written += 1;
                        report.pod_rows_written += row.pods.len() as u64;
                        log_row(row, inserted);
                    }
                    Err(e) if is_row_error(&e) => {
                        report.rejected += 1;
                        error!(error = describe(&e), ts = %feature_schema::timefmt::rfc3339_micros(row.ts), "the database refused a row; it is dropped");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn log_row(row: &FeatureRow, inserted: u64) {
    info!(
        ts = %feature_schema::timefmt::rfc3339_micros(row.ts),
        new = inserted == 1,
        pod_rows = row.pods.len(),
        cpu_sec_idle = row.cpu_sec_idle,
        mem_av_per = row.mem_av_per,
        load1 = row.load1,
        forks_total = row.forks_total,
        est_conn = row.est_conn,
        lis_conn = row.lis_conn,
        ebpf_forks = row.ebpf_forks,
        ebpf_execs = row.ebpf_execs,
        tcp_to_est = row.tcp_to_est,
        "row written"
    );
}
