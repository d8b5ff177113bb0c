//! Where rows wait for the database: a bounded memory queue in front of the on-disk spool. The
//! backlog is the only owner of the spool's read cursor. While the database takes them, new rows
//! wait in memory (written within milliseconds, nothing touches the disk); when it does not (no
//! session, a failed or timed-out write, a stop), they are spilled to the spool in order. Rows
//! leave oldest first: the spool's, then memory's (always newer).
use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::SystemTime,
};

use tracing::{debug, error, info, warn};

use feature_schema::FeatureRow;

use crate::{daemon::metrics::Metrics, delivery::spool::Spool};

pub struct Backlog {
    spool: Option<Spool>,
    /// Rows an earlier run left in the spool, found when it was opened (at start, or later).
    recovered: u64,
    /// A spool that could not be opened yet, and when it was last tried (None: try now).
    reopen: Option<(std::path::PathBuf, u64, Option<std::time::Instant>)>,
    memory: VecDeque<FeatureRow>,
    memory_max: usize,
    dropped_memory: u64,
    /// The spool failed on the last spill (logged once until it works again).
    spool_failing: bool,
    /// The sampled time of the oldest row not yet in the database, as last seen: set when a
    /// row arrives at an empty backlog and by every read of a batch, cleared when the backlog
    /// empties. Readiness and the age metric come from it.
    oldest: Option<SystemTime>,
    /// Published after every change, so /metrics and /readyz are current even while a database
    /// call the writer waits on holds it for seconds.
    metrics: Arc<Metrics>,
}

impl Backlog {
    pub fn new(slot: super::SpoolSlot, memory_max: usize, metrics: Arc<Metrics>) -> Self {
        let (spool, reopen) = match slot {
            super::SpoolSlot::Off => (None, None),
            super::SpoolSlot::Open(s) => (Some(*s), None),
            super::SpoolSlot::Later { dir, max_bytes } => {
                (None, Some((dir, max_bytes, Some(std::time::Instant::now()))))
            }
        };
        let recovered = spool.as_ref().map_or(0, Spool::pending_rows);
        let mut b = Backlog {
            spool,
            recovered,
            reopen,
            memory: VecDeque::new(),
            memory_max,
            dropped_memory: 0,
            spool_failing: false,
            oldest: None,
            metrics,
        };
        // Rows left by an earlier run: learn the oldest one's time (read, then put back).
        if !b.is_empty() {
            let first = b.peek(1);
            b.abort();
            b.oldest = first.first().map(|r| r.ts);
        }
        b.publish();
        b
    }

    pub fn push(&mut self, row: FeatureRow) {
        if self.is_empty() {
            self.oldest = Some(row.ts);
        }
        if self.memory.len() >= self.memory_max {
            self.memory.pop_front();
            self.dropped_memory += 1;
            warn!(dropped_total = self.dropped_memory, "row queue full; dropped the oldest row");
            if !self.spool.as_ref().is_some_and(Spool::has_unread) {
                self.oldest = self.memory.front().map(|r| r.ts);
            }
        }
        self.memory.push_back(row);
        self.publish();
    }

    /// Moves the rows waiting in memory to the spool (if there is one and it works). Never
    /// while a batch read from memory is in flight: its commit removes it from memory.
    pub fn spill(&mut self) {
        self.try_reopen();
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
                    break;
                }
            }
        }
        self.publish();
    }

    /// At a stop: the next spill tries the spool that could not be opened, whenever it last did.
    pub fn retry_spool_now(&mut self) {
        if let Some((_, _, at)) = self.reopen.as_mut() {
            *at = None;
        }
    }

    /// Opens the spool that could not be opened at start, at most every 5 s.
    fn try_reopen(&mut self) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        let Some((dir, max_bytes, at)) = self.reopen.as_mut() else { return };
        if at.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        *at = Some(std::time::Instant::now());
        match Spool::open(dir, *max_bytes) {
            Ok(s) => {
                info!(dir = %dir.display(), pending = s.pending_rows(), "the spool can be used now");
                self.recovered += s.pending_rows();
                self.spool = Some(s);
                self.reopen = None;
            }
            Err(e) => debug!(error = %e, "the spool still cannot be opened"),
        }
    }

    /// Rows waiting: in memory, and spooled but not acknowledged.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.spool.as_ref().map_or(0, Spool::pending_rows)
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spool.as_ref().is_none_or(|s| !s.has_unread())
    }

    /// Rows held in memory only: lost if the process dies.
    pub fn in_memory(&self) -> usize {
        self.memory.len()
    }

    pub fn has_spool(&self) -> bool {
        self.spool.is_some()
    }

    /// The oldest rows, at most `n`: the spool's first, then memory's.
    pub fn peek(&mut self, n: usize) -> Vec<FeatureRow> {
        let rows = self.read(n);
        if let Some(first) = rows.first() {
            self.oldest = Some(first.ts);
        }
        rows
    }

    fn read(&mut self, n: usize) -> Vec<FeatureRow> {
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
    pub fn commit(&mut self, n: usize) {
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
        if self.is_empty() {
            self.oldest = None;
        }
        self.publish();
    }

    /// The peeked rows were not written; they are read again next time.
    pub fn abort(&mut self) {
        if let Some(spool) = self.spool.as_mut() {
            if spool.in_flight() {
                spool.rewind();
            }
        }
    }

    /// Rows an earlier run had left in the spool.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// Rows dropped because the memory queue or the spool was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_memory + self.spool.as_ref().map_or(0, |s| s.stats().dropped)
    }

    pub fn corrupt(&self) -> u64 {
        self.spool.as_ref().map_or(0, |s| s.stats().corrupt)
    }

    /// Rows safe in the spool, not yet in the database.
    pub fn spooled(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::pending_rows)
    }

    pub fn publish(&self) {
        let m = &self.metrics;
        m.rows_queued.store(self.memory.len() as u64, Relaxed);
        m.rows_dropped_queue_full.store(self.dropped_memory, Relaxed);
        m.oldest_unwritten_unix.set(self.oldest.map_or(0.0, crate::daemon::metrics::unix_seconds));
        if let Some(s) = &self.spool {
            m.rows_spooled.store(s.pending_rows(), Relaxed);
            m.spool_bytes.store(s.bytes(), Relaxed);
            m.rows_dropped_spool_full.store(s.stats().dropped, Relaxed);
            m.rows_dropped_corrupt.store(s.stats().corrupt, Relaxed);
            m.spool_ack_damaged.store(s.stats().ack_damaged, Relaxed);
            m.spool_segments_unreadable.store(s.stats().unreadable_segments, Relaxed);
            m.spool_segments_unremovable.store(s.stats().unremovable_segments, Relaxed);
        }
    }
}
