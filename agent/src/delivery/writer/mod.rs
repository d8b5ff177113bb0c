//! The writer: takes the sampler's rows to Postgres on its own thread, so neither the database
//! nor the spool's fdatasync can delay a sample. It is a machine of three states:
//!
//! * `Connected`: a session is open and nothing waits but the newest row; each row is written
//!   as it arrives.
//! * `CatchingUp`: a session is open and a backlog (the spool's rows, then memory's) is written
//!   in batches, oldest first.
//! * `Probing`: no session. Rows go to the spool; connection attempts back off (0.5 s to 30 s,
//!   jittered); between them, while the last failure was a refusal, a timeout or a server
//!   starting up, the server is asked every second whether it answers at all, so rows flow
//!   again about a second after it does.
//!
//! and one phase over them, `Draining`, from the moment the sampler stops: the backlog is
//! written until `--shutdown-timeout`, then what is left is spooled (or counted). Each change of
//! state is logged once.
//!
//! Every database call has a deadline ([`Deadlines`]); while a call runs, rows that arrive wait
//! in memory, and the call is cut off by its deadline, by the drain's end, or by a second
//! signal (stop now). A cut-off session is dropped with its connection task, never reused: its
//! batch is read again from the backlog, and the session's server-side end, if it is still
//! alive (a black-holed path), ends its own transaction after the same deadline; the next
//! session of this agent ends it outright.
//!
//! One agent writes per node name: a lease in the `node_writers` table (session.rs), taken when a
//! session opens, renewed in every batch's transaction and given back at a clean stop. Its
//! holder is the spool's writer id (a hash of the host's boot id and the spool's path), so a
//! restarted agent on the same spool takes its predecessor's lease over at once.
pub mod backlog;
pub mod session;

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{
        mpsc::{self, error::TryRecvError},
        watch,
    },
    time::Instant,
};
use tokio_postgres::{error::SqlState, Config};
use tracing::{debug, error, info, warn};

use feature_db::{connect::ConnectError, describe, Target};
use feature_schema::FeatureRow;

use crate::{daemon::metrics::Metrics, delivery::spool::Spool};
use backlog::Backlog;
pub use session::Statements;
use session::{is_row_error, lost_prepared_statement, Identity, OpenError, Session, WriteError, Written};

/// How long each kind of database call may take before the writer gives up on the session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadlines {
    /// A connection (TCP or socket connect, TLS, startup, authentication), the session's
    /// preparation (writer lock, partition, prepared INSERT), and every write: twice the
    /// interval, at least 5 s and at most 30 s. Also the socket's TCP_USER_TIMEOUT; keepalives
    /// start after half of it idle, three probes a sixth of it apart (whole seconds, at least 1).
    pub statement: Duration,
    /// The migrations applied at the first connection (they may rewrite tables).
    pub migrate: Duration,
    /// One probe of a server that is away: connect and an SSLRequest answered.
    pub probe: Duration,
    /// How long the node's writer lease runs without a renewal: 60 s, or three intervals and
    /// two statement deadlines when that is longer, so that a batch slow to the deadline never
    /// lets it lapse while the agent is connected.
    pub lease: Duration,
}

impl Deadlines {
    pub fn for_interval(interval: Duration) -> Self {
        let statement = (interval * 2).clamp(Duration::from_secs(5), Duration::from_secs(30));
        Deadlines {
            statement,
            migrate: Duration::from_secs(120),
            probe: Duration::from_secs(1),
            lease: Duration::from_secs(60).max(interval * 3 + statement * 2),
        }
    }

    /// The connection settings that let the kernel notice a silent peer too: keepalives on an
    /// idle connection, TCP_USER_TIMEOUT on unacknowledged data (a black-holed server; a
    /// stopped one still acknowledges, which only the deadlines catch).
    ///
    /// With several hosts (`host=a,b`: a primary and its replicas), each TCP connect gets an
    /// equal share of the deadline, so a host whose packets are dropped leaves time for the next.
    fn apply(&self, config: &mut Config) {
        // The kernel takes keepalive times in whole seconds, and refuses 0 (EINVAL).
        let whole = |d: Duration| Duration::from_secs(d.as_secs().max(1));
        let idle = whole(self.statement / 2);
        let hosts = config.get_hosts().len().max(1) as u32;
        config
            .connect_timeout((self.statement / hosts).max(Duration::from_secs(1)))
            .keepalives(true)
            .keepalives_idle(idle)
            .keepalives_interval(whole(idle / 3))
            .keepalives_retries(3)
            .tcp_user_timeout(self.statement);
    }
}

/// What the writer did, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterReport {
    /// Rows in the spool when the writer started (an earlier run's): written first.
    pub recovered: u64,
    /// Rows the database did not have and now holds.
    pub written: u64,
    /// Rows whose (node, ts) the database already held (another agent with this node name, a
    /// clock stepped back across a restart, or a replay after a crash between commit and ack):
    /// not written.
    pub duplicate: u64,
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
    /// The sampling interval, from which the deadlines follow.
    pub interval: Duration,
    /// Rows held in memory when there is no spool (or the spool fails).
    pub queue_max_rows: usize,
    /// How long to keep writing after the sampler stopped.
    pub shutdown_timeout: Duration,
    /// The on-disk spool.
    pub spool: SpoolSlot,
    /// Rows per INSERT when catching up.
    pub batch_rows: usize,
    /// Prepared or unnamed statements for the batches (unnamed through a transaction pooler;
    /// the writer switches to them by itself when the server loses a prepared one).
    pub statements: Statements,
    pub metrics: Arc<Metrics>,
}

/// The spool as the writer gets it.
pub enum SpoolSlot {
    /// No spool (`--spool-dir off`): rows wait in memory only.
    Off,
    Open(Box<Spool>),
    /// Wanted, but it could not be opened at start (a full disk): tried again every 5 s while
    /// rows wait in memory.
    Later {
        dir: std::path::PathBuf,
        max_bytes: u64,
    },
}

/// Writes the rows from `rx` until the channel closes and the backlog is written (or the
/// shutdown timeout passes: the rest is spooled for the next start), or at once when `stop`
/// turns true (a second signal). Rows spooled by an earlier run are written first.
pub async fn run_writer(
    opts: WriterOptions,
    rx: mpsc::Receiver<FeatureRow>,
    stop: watch::Receiver<bool>,
) -> WriterReport {
    Writer::new(opts, rx, stop).run().await
}

enum State {
    Connected(Session),
    CatchingUp(Session),
    Probing(Retry),
    Stopped,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Connected(_) => "connected",
            State::CatchingUp(_) => "catching up",
            State::Probing(_) => "probing",
            State::Stopped => "stopped",
        }
    }
}

/// When to try connecting again, and whether to probe the server meanwhile.
struct Retry {
    next_attempt: Instant,
    /// Probe between attempts: the last failure says nothing of the server's will to answer
    /// (refused, timed out, starting up), unlike a refused password.
    probe: bool,
    next_probe: Instant,
    /// A connection was tried since the drain began.
    tried_draining: bool,
}

impl Retry {
    fn now() -> Self {
        let now = Instant::now();
        Retry { next_attempt: now, probe: false, next_probe: now, tried_draining: false }
    }
}

/// Why a call was cut off.
enum Cut {
    /// Its own deadline passed.
    Deadline,
    /// The drain's time is up.
    Drained,
    /// Stop now (a second signal).
    Stopped,
}

/// The writer's inputs: rows from the sampler, and the stop-now flag.
struct Inbox {
    rx: mpsc::Receiver<FeatureRow>,
    open: bool,
    stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
    /// The drain ends then (set when the channel closes).
    drain_by: Option<Instant>,
}

/// What a wait ended with.
enum Woke {
    Row,
    Timer,
    Stop,
}

impl Inbox {
    fn close(&mut self) {
        if self.open {
            self.open = false;
            self.drain_by = Some(Instant::now() + self.shutdown_timeout);
            info!(timeout = ?self.shutdown_timeout, "sampling stopped; draining the backlog to the database");
        }
    }

    fn draining(&self) -> bool {
        !self.open
    }

    fn drain_over(&self) -> bool {
        self.drain_by.is_some_and(|d| Instant::now() >= d)
    }

    fn stop_now(&self) -> bool {
        *self.stop.borrow()
    }

    /// Moves every row waiting in the channel to the backlog; notices the channel closing.
    fn take_arrivals(&mut self, backlog: &mut Backlog) {
        while self.open {
            match self.rx.try_recv() {
                Ok(row) => backlog.push(row),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.close(),
            }
        }
    }

    /// Runs `op` unless its deadline (`limit`), the drain's end or a stop-now comes first;
    /// rows that arrive meanwhile wait in the backlog (memory: a batch may be in flight).
    async fn during<T>(
        &mut self,
        backlog: &mut Backlog,
        limit: Duration,
        op: impl Future<Output = T>,
    ) -> Result<T, Cut> {
        tokio::pin!(op);
        let deadline = Instant::now() + limit;
        loop {
            let until = self.drain_by.map_or(deadline, |d| d.min(deadline));
            enum Event<T> {
                Done(T),
                Row(Option<Box<FeatureRow>>),
                Stop,
                Timer,
            }
            let event = tokio::select! {
                biased;
                () = stop_requested(&mut self.stop) => Event::Stop,
                out = &mut op => Event::Done(out),
                r = self.rx.recv(), if self.open => Event::Row(r.map(Box::new)),
                () = tokio::time::sleep_until(until) => Event::Timer,
            };
            match event {
                Event::Done(out) => return Ok(out),
                Event::Stop => return Err(Cut::Stopped),
                Event::Row(Some(row)) => backlog.push(*row),
                Event::Row(None) => self.close(),
                Event::Timer if self.drain_over() => return Err(Cut::Drained),
                Event::Timer => return Err(Cut::Deadline),
            }
        }
    }

    /// Waits until `until` (or the drain's end), a row, or a stop-now.
    async fn wait(&mut self, backlog: &mut Backlog, until: Option<Instant>) -> Woke {
        let until = match (until, self.drain_by) {
            (Some(u), Some(d)) => Some(u.min(d)),
            (u, d) => u.or(d),
        };
        let event = tokio::select! {
            biased;
            () = stop_requested(&mut self.stop) => None,
            r = self.rx.recv(), if self.open => Some(Some(r)),
            () = sleep_until_or_forever(until) => Some(None),
        };
        match event {
            None => Woke::Stop,
            Some(Some(Some(row))) => {
                backlog.push(row);
                Woke::Row
            }
            Some(Some(None)) => {
                self.close();
                Woke::Row
            }
            Some(None) => Woke::Timer,
        }
    }
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|v| *v).await.is_err() {
        // The flag's owner is gone without asking: never.
        std::future::pending::<()>().await;
    }
}

async fn sleep_until_or_forever(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct Writer {
    inbox: Inbox,
    backlog: Backlog,
    report: WriterReport,
    metrics: Arc<Metrics>,
    target: Target,
    /// The node name, the lease holder and this process's application_name (which names its
    /// sessions in pg_stat_activity, so a session it abandoned can be told from another's).
    me: Identity,
    deadlines: Deadlines,
    statements: Statements,
    batch_max: usize,
    /// Rows per batch now: halved after a batch timed out, doubled back after each success.
    batch: usize,
    backoff: Backoff,
    migrated: bool,
    failures_logged: u32,
    last_state: &'static str,
    duplicates_logged: u64,
}

impl Writer {
    fn new(opts: WriterOptions, rx: mpsc::Receiver<FeatureRow>, stop: watch::Receiver<bool>) -> Self {
        let deadlines = Deadlines::for_interval(opts.interval);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let holder = writer_id(&opts.spool);
        let application = format!("feature-agent/{holder}/{:x}.{:08x}", std::process::id(), nanos);
        let mut target = opts.target;
        deadlines.apply(&mut target.config);
        target.config.application_name(&application);
        let me = Identity {
            node: opts.node,
            holder,
            application,
            lease: deadlines.lease,
            server_timeout: deadlines.statement,
        };
        let backlog = Backlog::new(opts.spool, opts.queue_max_rows, opts.metrics.clone());
        let report = WriterReport::default();
        Writer {
            inbox: Inbox { rx, open: true, stop, shutdown_timeout: opts.shutdown_timeout, drain_by: None },
            backlog,
            report,
            metrics: opts.metrics,
            target,
            me,
            deadlines,
            statements: opts.statements,
            batch_max: opts.batch_rows.max(1),
            batch: opts.batch_rows.max(1),
            backoff: Backoff::new(),
            migrated: false,
            failures_logged: 0,
            last_state: "starting",
            duplicates_logged: 0,
        }
    }

    async fn run(mut self) -> WriterReport {
        if !self.backlog.is_empty() {
            info!(rows = self.backlog.len(), "rows from an earlier run are in the spool; they are written first");
        }
        debug!(deadlines = ?self.deadlines, "database deadlines");
        let mut state = State::Probing(Retry::now());
        loop {
            self.inbox.take_arrivals(&mut self.backlog);
            self.backlog.publish();
            if state.name() != self.last_state {
                info!(from = self.last_state, to = state.name(), backlog = self.backlog.len(), "writer state");
                self.last_state = state.name();
            }
            if self.inbox.stop_now() || self.inbox.drain_over() {
                break;
            }
            state = match state {
                State::Connected(s) | State::CatchingUp(s) => self.write_step(s).await,
                State::Probing(r) => self.probe_step(r).await,
                State::Stopped => break,
            };
        }
        self.finish()
    }

    /// Connected or catching up: write the oldest batch, or wait for a row.
    async fn write_step(&mut self, mut s: Session) -> State {
        if s.is_closed() {
            warn!("the database closed the connection");
            return self.lost(true);
        }
        if self.backlog.is_empty() {
            if self.inbox.draining() {
                self.release(s).await;
                return State::Stopped;
            }
            return match self.inbox.wait(&mut self.backlog, None).await {
                Woke::Stop => State::Stopped,
                _ => self.up(s),
            };
        }
        let rows = self.backlog.peek(self.batch);
        if rows.is_empty() {
            // Only damaged or unreadable spool records were there (skipped and counted); wait a
            // moment rather than spin on a directory that keeps failing.
            return match self.inbox.wait(&mut self.backlog, Some(Instant::now() + Duration::from_millis(200))).await {
                Woke::Stop => State::Stopped,
                _ => self.up(s),
            };
        }
        let limit = self.deadlines.statement;
        let Writer { inbox, backlog, me, .. } = self;
        let outcome = inbox.during(backlog, limit, write_rows(&mut s, &rows, me)).await;
        match outcome {
            Ok(Ok(done)) => {
                self.backoff.reset();
                self.backlog.commit(rows.len());
                self.batch = (self.batch * 2).min(self.batch_max);
                self.account(&rows, &done);
                self.up(s)
            }
            Ok(Err(WriteError::LeaseLost(node))) => {
                self.backlog.abort();
                self.metrics.node_name_in_use.store(true, Relaxed);
                self.metrics.node_name_conflicts.fetch_add(1, Relaxed);
                error!(node, rows = rows.len(), "another agent took this node's writer lease (ours had expired); the batch was rolled back and the rows wait in the spool");
                self.lost(false)
            }
            Ok(Err(WriteError::Pooled)) => {
                // The session switched itself to unnamed statements; the batch is written again
                // at once, on the same session.
                self.backlog.abort();
                self.statements = Statements::Unnamed;
                warn!("a transaction pooler is between the agent and the database: writing with unnamed statements from now on (--db-prepared-statements false says so from the start)");
                self.up(s)
            }
            Ok(Err(WriteError::Db(e))) if lost_prepared_statement(&e) && self.statements == Statements::Named => {
                // A transaction pooler lent another server connection than the one the
                // statement was prepared on. From now on, every statement is unnamed.
                self.backlog.abort();
                self.statements = Statements::Unnamed;
                warn!(
                    error = describe(&e),
                    "the server does not know this session's prepared statement: a transaction pooler is in between; writing with unnamed statements from now on (--db-prepared-statements false says so from the start)"
                );
                self.lost(true)
            }
            Ok(Err(WriteError::Db(e))) => {
                self.backlog.abort();
                warn!(error = describe(&e), rows = rows.len(), "writing rows failed; reconnecting");
                self.lost(true)
            }
            Err(Cut::Deadline) => {
                self.backlog.abort();
                self.batch = (rows.len() / 2).max(1);
                self.metrics.database_timeouts.fetch_add(1, Relaxed);
                warn!(
                    rows = rows.len(),
                    deadline = ?limit,
                    "the database did not finish a write within its deadline; dropping the connection (the rows are kept)"
                );
                drop(s);
                self.lost(true)
            }
            Err(Cut::Drained | Cut::Stopped) => {
                self.backlog.abort();
                State::Stopped
            }
        }
    }

    /// Every row is written and the agent is stopping: gives the node's lease back, so that the
    /// node's next agent (another spool) need not wait for it to expire. Bounded by the
    /// statement deadline; a lease not given back simply expires.
    async fn release(&mut self, mut s: Session) {
        let limit = self.deadlines.statement;
        let Writer { inbox, backlog, me, .. } = self;
        match inbox.during(backlog, limit, s.release(me)).await {
            Ok(Ok(())) => debug!("writer lease given back"),
            Ok(Err(e)) => warn!(error = describe(&e), "could not give the writer lease back; it expires by itself"),
            Err(_) => warn!("no answer while giving the writer lease back; it expires by itself"),
        }
    }

    /// After a write: caught up, or still catching up.
    fn up(&self, s: Session) -> State {
        if self.backlog.len() > 1 {
            State::CatchingUp(s)
        } else {
            State::Connected(s)
        }
    }

    /// The session is gone: spill what waits in memory and retry after the backoff.
    fn lost(&mut self, probe: bool) -> State {
        self.metrics.database_up.store(false, Relaxed);
        self.backlog.spill();
        let wait = self.backoff.step();
        let now = Instant::now();
        State::Probing(Retry { next_attempt: now + wait, probe, next_probe: now + PROBE_EVERY, tried_draining: false })
    }

    /// No session: spill, probe, and connect when it is time.
    async fn probe_step(&mut self, mut r: Retry) -> State {
        // The database is away: nothing waits in memory meanwhile.
        self.backlog.spill();
        self.backlog.publish();
        if self.inbox.draining() {
            if self.backlog.is_empty() {
                return State::Stopped;
            }
            if !r.tried_draining {
                // Stopping: try the database once at once.
                r.next_attempt = Instant::now();
            } else if self.backlog.in_memory() == 0 {
                // Tried, and every row is safe in the spool: waiting out the timeout for a
                // database that is down would only delay the stop.
                info!(
                    spooled = self.backlog.spooled(),
                    why = self.metrics.why_unwritten(),
                    "the rows are not in the database; the spooled rows wait for the next start"
                );
                return State::Stopped;
            }
        }
        let now = Instant::now();
        if now < r.next_attempt {
            // The probe keeps its own schedule: rows arriving every interval must not keep
            // postponing it (with a 1 s interval they would, forever).
            if r.probe && now >= r.next_probe {
                r.next_probe = now + PROBE_EVERY;
                let (limit, config) = (self.deadlines.probe, self.target.config.clone());
                let Writer { inbox, backlog, .. } = self;
                match inbox.during(backlog, limit, answers(&config, limit)).await {
                    Ok(true) => {
                        debug!("the database answers again");
                        r.next_attempt = Instant::now();
                        return State::Probing(r);
                    }
                    Ok(false) | Err(Cut::Deadline) => {}
                    Err(Cut::Drained | Cut::Stopped) => return State::Stopped,
                }
            }
            let until = if r.probe { r.next_attempt.min(r.next_probe) } else { r.next_attempt };
            return match self.inbox.wait(&mut self.backlog, Some(until)).await {
                Woke::Stop => State::Stopped,
                _ => State::Probing(r),
            };
        }
        if self.inbox.draining() {
            r.tried_draining = true;
        }
        match self.open().await {
            Ok(s) => {
                let target = feature_db::args::describe_target(&self.target.config);
                info!(backlog = self.backlog.len(), target, "connected to the database");
                self.migrated = true;
                self.failures_logged = 0;
                self.metrics.database_up.store(true, Relaxed);
                self.metrics.node_name_in_use.store(false, Relaxed);
                self.up(s)
            }
            Err(Opened::Cut(Cut::Drained | Cut::Stopped)) => State::Stopped,
            Err(failure) => {
                self.metrics.database_up.store(false, Relaxed);
                let wait = self.backoff.step();
                let now = Instant::now();
                let (probe, text) = match &failure {
                    Opened::Cut(_) => {
                        self.metrics.database_timeouts.fetch_add(1, Relaxed);
                        (true, format!("no answer within {:?}", self.deadlines.statement))
                    }
                    Opened::Error(OpenError::NodeInUse { .. }) => {
                        self.metrics.node_name_in_use.store(true, Relaxed);
                        self.metrics.node_name_conflicts.fetch_add(1, Relaxed);
                        (false, String::new())
                    }
                    Opened::Error(OpenError::Failed(e)) => {
                        // Probe while nothing accepts connections, or while the server is still
                        // starting up (it accepts, then says "cannot connect now"): otherwise a
                        // server back a moment later would wait out the backoff.
                        let refused = !answers_within(&self.target.config, self.deadlines.probe).await;
                        (starting_up(e) || refused, format!("{e:#}"))
                    }
                };
                // Log the first failures in full, then every tenth, so an outage is visible
                // without flooding the log.
                if self.failures_logged < 3 || self.failures_logged.is_multiple_of(10) {
                    match &failure {
                        Opened::Error(e @ OpenError::NodeInUse { .. }) => {
                            error!(error = %e, retry_in = ?wait, backlog = self.backlog.len(), "refusing to write: the node name is taken; rows wait in the spool")
                        }
                        _ => {
                            warn!(error = text, retry_in = ?wait, backlog = self.backlog.len(), "database unavailable")
                        }
                    }
                }
                self.failures_logged += 1;
                State::Probing(Retry { next_attempt: now + wait, probe, next_probe: now + PROBE_EVERY, ..r })
            }
        }
    }

    /// Opens a session: connect, migrate (the first time), take the node's lock, prepare.
    async fn open(&mut self) -> Result<Session, Opened> {
        let d = self.deadlines;
        let Writer { inbox, backlog, target, me, migrated, statements, .. } = self;
        let mut s = inbox
            .during(backlog, d.statement, Session::connect(target, *statements))
            .await?
            .map_err(OpenError::Failed)?;
        if !*migrated {
            inbox.during(backlog, d.migrate, s.migrate()).await?.map_err(OpenError::Failed)?;
        }
        let ended = inbox.during(backlog, d.statement, s.prepare(me)).await??;
        if ended > 0 {
            info!(sessions = ended, "ended sessions this agent had abandoned (cut off by a deadline)");
            self.metrics.abandoned_sessions_ended.fetch_add(ended, Relaxed);
        }
        Ok(s)
    }

    /// Counts a batch the database took.
    fn account(&mut self, rows: &[FeatureRow], done: &Outcome) {
        let r = &mut self.report;
        r.written += done.written.new;
        r.duplicate += done.written.duplicate;
        r.pod_rows_written += done.written.pod_rows;
        r.rejected += done.rejected;
        let m = &self.metrics;
        m.rows_written.store(r.written, Relaxed);
        m.rows_duplicate.store(r.duplicate, Relaxed);
        m.pod_rows_written.store(r.pod_rows_written, Relaxed);
        m.rows_rejected.store(r.rejected, Relaxed);
        m.last_write_unix.set(crate::daemon::metrics::now_unix());
        if rows.len() == 1 {
            log_row(&rows[0], done.written.new);
        } else {
            info!(rows = rows.len(), new = done.written.new, first = %feature_schema::timefmt::rfc3339_micros(rows[0].ts), "caught up a batch of rows");
        }
        if done.written.duplicate > 0 {
            // Loud for the first ones, then every hundredth: a second agent with this name
            // would otherwise fill the log.
            if self.duplicates_logged < 5 || r.duplicate / 100 > self.duplicates_logged / 100 {
                warn!(
                    rows = done.written.duplicate,
                    duplicate_total = r.duplicate,
                    first = %feature_schema::timefmt::rfc3339_micros(rows[0].ts),
                    "the database already holds rows at these timestamps for this node (a clock stepped back across a restart, a replay after a crash, or another agent with this node name); they are not written"
                );
            }
            self.duplicates_logged = r.duplicate;
        }
    }

    /// Whatever is left goes to the spool, for the next start; what the spool cannot take is
    /// lost, and counted.
    fn finish(mut self) -> WriterReport {
        self.backlog.abort();
        self.backlog.retry_spool_now();
        self.backlog.spill();
        let r = &mut self.report;
        r.dropped_shutdown = self.backlog.in_memory() as u64;
        self.metrics.rows_dropped_shutdown.store(r.dropped_shutdown, Relaxed);
        self.backlog.publish();
        r.recovered = self.backlog.recovered();
        r.dropped_full = self.backlog.dropped_full();
        r.corrupt = self.backlog.corrupt();
        r.unwritten = self.backlog.spooled();
        if r.unwritten > 0 {
            warn!(rows = r.unwritten, "stopping with rows in the spool; the next start writes them first");
        }
        if r.dropped_shutdown > 0 {
            let why = if self.backlog.has_spool() { "the spool could not take them" } else { "there is no spool" };
            error!(
                rows = r.dropped_shutdown,
                reason = why,
                "stopping with rows the database never received: they are lost"
            );
        }
        self.report
    }
}

/// Why a session could not be opened: cut off, or failed.
enum Opened {
    Cut(Cut),
    Error(OpenError),
}

impl From<Cut> for Opened {
    fn from(c: Cut) -> Self {
        Opened::Cut(c)
    }
}

impl From<OpenError> for Opened {
    fn from(e: OpenError) -> Self {
        Opened::Error(e)
    }
}

/// What a batch did.
struct Outcome {
    written: Written,
    /// Rows the database refused for their content (dropped).
    rejected: u64,
}

/// Writes a batch; a row the database refuses for its content is dropped and counted (the
/// batch is then retried row by row to find it). Err only for connection-level failures.
async fn write_rows(s: &mut Session, rows: &[FeatureRow], me: &Identity) -> Result<Outcome, WriteError> {
    match s.write(rows, me).await {
        Ok(written) => Ok(Outcome { written, rejected: 0 }),
        Err(WriteError::Db(e)) if is_row_error(&e) => {
            // Perhaps a partition was dropped under us (retention drops pod day partitions):
            // forget every partition we know and go row by row.
            s.forget_partitions();
            let mut out = Outcome { written: Written::default(), rejected: 0 };
            for row in rows {
                match s.write(std::slice::from_ref(row), me).await {
                    Ok(w) => {
                        out.written.new += w.new;
                        out.written.duplicate += w.duplicate;
                        out.written.pod_rows += w.pod_rows;
                    }
                    Err(WriteError::Db(e)) if is_row_error(&e) => {
                        out.rejected += 1;
                        error!(error = describe(&e), ts = %feature_schema::timefmt::rfc3339_micros(row.ts), "the database refused a row; it is dropped");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
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

/// How often a server that is away is probed between backoff steps.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The first message of a Postgres connection that asks for TLS: length 8, code 80877103.
/// Any server that is alive answers it with one byte ('S' or 'N') before anything else.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Whether the server answers at all: a connect, an SSLRequest, and its one-byte answer,
/// nothing else (the server forgets a client that leaves at this point without a log line). A
/// TCP connect alone would not do: a stopped server's kernel still accepts connections.
/// Each host of a multi-host URL gets an equal share of `limit`, so one whose packets are
/// dropped cannot hide the next.
async fn answers(config: &Config, limit: Duration) -> bool {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let share = limit / config.get_hosts().len().max(1) as u32;
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let one = async {
            match host {
                Host::Tcp(name) => {
                    let addr = config.get_hostaddrs().get(i).map_or_else(|| name.clone(), ToString::to_string);
                    match tokio::net::TcpStream::connect((addr.as_str(), port)).await {
                        Ok(s) => ssl_answer(s).await,
                        Err(_) => false,
                    }
                }
                Host::Unix(dir) => match tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await {
                    Ok(s) => ssl_answer(s).await,
                    Err(_) => false,
                },
            }
        };
        if tokio::time::timeout(share, one).await.unwrap_or(false) {
            return true;
        }
    }
    false
}

async fn answers_within(config: &Config, limit: Duration) -> bool {
    tokio::time::timeout(limit, answers(config, limit)).await.unwrap_or(false)
}

/// The lease holder id of the agents that use this spool, one after another: a hash of the
/// host's boot id and the spool directory's path, so every agent process that uses the spool on
/// this host until it reboots has the same one, with nothing to write (a full disk cannot take
/// it away). The spool's flock keeps two live agents from sharing it: a second agent on the same
/// spool stops at start (the directory is locked). Agents on other hosts, or with other spools,
/// have other ids. Without a spool (`--spool-dir off`) the id is this process's own.
fn writer_id(slot: &SpoolSlot) -> String {
    let dir = match slot {
        SpoolSlot::Open(spool) => spool.dir().to_path_buf(),
        SpoolSlot::Later { dir, .. } => dir.clone(),
        SpoolSlot::Off => return random_id(),
    };
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{:016x}", fnv1a(&[boot.trim().as_bytes(), b"\0", dir.as_os_str().as_encoded_bytes()]))
}

/// FNV-1a, 64 bits, over the parts in order.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// 16 random hex digits.
fn random_id() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom fills the buffer we own, of the length given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No entropy call (a seccomp filter): the pid and the clock are unique enough here.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        bytes = (nanos ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn ssl_answer(mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) -> bool {
    let mut byte = [0u8];
    s.write_all(&SSL_REQUEST).await.is_ok() && s.read_exact(&mut byte).await.is_ok() && matches!(byte[0], b'S' | b'N')
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
