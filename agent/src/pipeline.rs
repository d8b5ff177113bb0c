//! The daemon's pipeline: an aligned ticker and the signals drive sample -> judge -> hand to the
//! writer thread (writer/), which owns the memory queue and the spool. Also `print` (the same
//! samples as JSON lines on stdout) and `migrate`.
use std::{
    io::Write,
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use feature_db::{migrate, DatabaseArgs};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::{
    clock::{Stamp, Stamper},
    config::{RunArgs, SamplingArgs},
    detector::{Baselines, Detector, DetectorOptions},
    detector_state::{self, DetectorState, StateError},
    metrics::Metrics,
    pod_detector::{FlaggedPod, PodDetector},
    sampler::Sampler,
    spool::Spool,
    writer::{self, WriterOptions},
};

/// Ticks at every multiple of `period` since the Unix epoch as the wall clock reads now,
/// skipping ticks that were missed (a stalled process does not produce a burst of rows), so an
/// hour at 10 s is 360 ticks. The ticks themselves run on the monotonic clock.
fn aligned_ticker(period: Duration, wall: SystemTime) -> tokio::time::Interval {
    let (_, until) = crate::clock::next_boundary(wall, period);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + until, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// How long a stopping writer has after being told to stop now before the process leaves it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How often the eBPF programs' run counts and recursion misses are read for /metrics.
const PROGRAM_STATS_EVERY: Duration = Duration::from_secs(15);

/// SIGTERM and SIGINT, listened to from start to exit (so a second one is never missed).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// How often the detector's state file is saved while running (and once more at stop).
const STATE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// How long a stopping agent waits for the detector state's last save (a disk that hangs
/// must not hang the stop).
const STATE_SAVE_AT_STOP: Duration = Duration::from_secs(2);

/// The node's and the workloads' detectors, started from the state file when it is usable.
fn start_detectors(
    args: &SamplingArgs,
    node: &str,
    state_file: Option<&std::path::Path>,
    now: SystemTime,
) -> (Detector, PodDetector) {
    let options = args.detector.options(args.interval);
    let mut detector = Detector::new(options);
    let mut pods = PodDetector::new(options, args.detector.pod_baselines as usize);
    let Some(path) = state_file else { return (detector, pods) };
    match detector_state::load(path, node, args.interval, now) {
        Ok(state) => {
            let node_warm = state.node.is_some();
            if let Some(saved) = state.node {
                detector = Detector::with_baselines(
                    options,
                    Baselines::restored(&feature_schema::FEATURES, "node", &options, &saved),
                );
            }
            let workloads = state.workloads.len();
            pods.restore(state.workloads);
            info!(file = %path.display(), node_warm, workloads, "detector baselines restored: known workloads are judged from the first interval");
        }
        Err(StateError::Missing) => {
            info!(file = %path.display(), "no detector state yet: the detector warms up (--detector-warmup)");
        }
        Err(e) => {
            warn!(file = %path.display(), reason = %e, "the detector state is not used: the detector warms up (--detector-warmup)");
        }
    }
    (detector, pods)
}

/// Saves the detector state every [`STATE_SAVE_EVERY`] on a thread of its own, so a slow or
/// hung disk delays neither the samples nor the stop.
struct StateSaver {
    path: Option<PathBuf>,
    node: String,
    interval_s: f64,
    due: Instant,
    saving: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    failing: bool,
}

impl StateSaver {
    fn new(path: Option<PathBuf>, node: &str, interval_s: f64) -> Self {
        Self {
            path,
            node: node.to_owned(),
            interval_s,
            due: Instant::now() + STATE_SAVE_EVERY,
            saving: None,
            failing: false,
        }
    }

    fn snapshot(options: &DetectorOptions, detector: &Detector, pods: &PodDetector) -> DetectorState {
        let owned =
            |v: Vec<(&'static str, crate::detector::Baseline)>| v.into_iter().map(|(c, b)| (c.to_owned(), b)).collect();
        DetectorState {
            node: detector.baselines.is_warm(options).then(|| owned(detector.baselines.saved())),
            workloads: pods.saved().into_iter().map(|(w, b)| (w, owned(b))).collect(),
        }
    }

    /// Collects a finished save's result.
    fn collect(&mut self, metrics: &Metrics) {
        let Some(handle) = self.saving.take_if(|h| h.is_finished()) else { return };
        match handle.join() {
            Ok(Ok(())) => self.failing = false,
            Ok(Err(e)) => {
                metrics.detector_state_save_failures.fetch_add(1, Relaxed);
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(file = ?self.path, error = %e, "cannot save the detector state; a restart will warm up again");
                }
            }
            Err(_) => {
                metrics.detector_state_save_failures.fetch_add(1, Relaxed);
            }
        }
    }

    fn start(&mut self, state: &DetectorState, now: SystemTime) {
        let Some(path) = self.path.clone() else { return };
        let bytes = detector_state::encode(state, &self.node, self.interval_s, now);
        self.saving = std::thread::Builder::new()
            .name("detector-state".into())
            .spawn(move || detector_state::save(&path, &bytes))
            .ok();
    }

    /// Saves when due and the previous save has finished.
    fn tick(&mut self, metrics: &Metrics, state: impl FnOnce() -> DetectorState, now: SystemTime) {
        self.collect(metrics);
        if self.path.is_none() || self.saving.is_some() || Instant::now() < self.due {
            return;
        }
        self.due = Instant::now() + STATE_SAVE_EVERY;
        self.start(&state(), now);
    }

    /// The last save, at stop: waited for at most [`STATE_SAVE_AT_STOP`].
    async fn finish(&mut self, metrics: &Metrics, state: DetectorState, now: SystemTime) {
        if self.path.is_none() {
            return;
        }
        let deadline = Instant::now() + STATE_SAVE_AT_STOP;
        while self.saving.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.collect(metrics);
        }
        if self.saving.is_none() {
            self.start(&state, now);
        }
        while self.saving.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.collect(metrics);
        }
        if self.saving.is_some() {
            metrics.detector_state_save_failures.fetch_add(1, Relaxed);
            warn!(file = ?self.path, "the detector state's last save did not finish in time; the file keeps its previous state");
        } else {
            info!(file = ?self.path, "detector state saved");
        }
    }
}

/// Logs the pods flagged in an interval in one line, at most [`AlarmLog::BURST`] lines a minute;
/// the lines held back are counted in the next one.
struct AlarmLog {
    tokens: f64,
    refilled: Instant,
    held_back: u64,
}

impl AlarmLog {
    const BURST: f64 = 6.0;

    fn new() -> Self {
        Self { tokens: Self::BURST, refilled: Instant::now(), held_back: 0 }
    }

    fn log(&mut self, node: &str, flagged: &[FlaggedPod]) {
        if flagged.is_empty() {
            return;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * Self::BURST / 60.0).min(Self::BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.held_back += 1;
            return;
        }
        self.tokens -= 1.0;
        warn!(held_back = std::mem::take(&mut self.held_back), "{}", alarm_line(node, flagged));
    }
}

/// "worker-3: shop/scanner-7d9 tcp_conn_failed, tcp_rst_recv; ..." (at most 10 pods named).
fn alarm_line(node: &str, flagged: &[FlaggedPod]) -> String {
    const NAMED: usize = 10;
    let mut parts: Vec<String> =
        flagged.iter().take(NAMED).map(|f| format!("{} {}", f.name, f.features.join(", "))).collect();
    if flagged.len() > NAMED {
        parts.push(format!("and {} more pods", flagged.len() - NAMED));
    }
    format!("{node}: {}", parts.join("; "))
}

/// Runs the sampling schedule, handing each row to `emit`, until `records` rows or a signal.
/// Returns the signal's name if one stopped it. The detectors start from `state_file` when it
/// is usable, and save to it.
async fn sample_loop(
    args: &SamplingArgs,
    mut sampler: Sampler,
    metrics: &Metrics,
    signals: &mut Signals,
    state_file: Option<PathBuf>,
    mut emit: impl FnMut(feature_schema::FeatureRow) -> anyhow::Result<()>,
) -> anyhow::Result<Option<&'static str>> {
    let (attached, failed) = sampler.programs();
    metrics.programs_attached.store(attached as u64, Relaxed);
    let _ = metrics.program_info.set(sampler.program_infos());
    metrics.programs_failed.store(failed as u64, Relaxed);
    let period = Duration::from_secs_f64(args.interval);
    let clock = args.clock();
    let mut ticker = aligned_ticker(period, clock.now());
    let mut stamper = Stamper::new(period);
    let options = args.detector.options(args.interval);
    let node = sampler.node().to_owned();
    let (mut detector, mut pod_detector) = start_detectors(args, &node, state_file.as_deref(), clock.now());
    let mut saver = StateSaver::new(state_file, &node, args.interval);
    let mut alarm_log = AlarmLog::new();
    let mut stopped_by = None;
    let mut taken = 0u64;
    let mut last_tick: Option<tokio::time::Instant> = None;
    let mut stats_due: Option<std::time::Instant> = None;
    while args.records == 0 || taken < args.records {
        tokio::select! {
            tick = ticker.tick() => {
                // The ticker skips the ticks it was too late for: count them.
                if let Some(last) = last_tick.replace(tick) {
                    let missed = ((tick - last).as_secs_f64() / period.as_secs_f64()).round() as u64;
                    if missed > 1 {
                        let total = metrics.samples_skipped.fetch_add(missed - 1, Relaxed) + missed - 1;
                        warn!(samples = missed - 1, skipped_total = total, "the agent was late for scheduled samples; their rows do not exist");
                    }
                }
                let reading = stamper.stamp(clock.now(), std::time::Instant::now());
                if let Some(step) = reading.step {
                    let counter = if step > 0.0 { &metrics.clock_steps_forward } else { &metrics.clock_steps_backward };
                    counter.fetch_add(1, Relaxed);
                    warn!(step_s = format!("{step:+.3}"), "the wall clock stepped; rows are stamped with the new time from this one on");
                    // Ticks follow the new time's boundaries from the next one on.
                    ticker = aligned_ticker(period, clock.now());
                    last_tick = None;
                }
                let started = std::time::Instant::now();
                let mut row = sampler.sample();
                let ts = match reading.stamp {
                    Stamp::Fresh(ts) => ts,
                    Stamp::Repeated(ts) => {
                        // The clock went back over boundaries already stamped: a second row at
                        // one ts would collide with the first. Sampled (the next row's deltas
                        // start here), counted, not written.
                        metrics.observe_collection(started.elapsed().as_secs_f64());
                        let n = metrics.rows_dropped_clock_step.fetch_add(1, Relaxed) + 1;
                        warn!(ts = %feature_schema::timefmt::rfc3339_micros(ts), dropped_total = n, "this interval's boundary was already stamped before the clock stepped back; the row is not written");
                        taken += 1;
                        continue;
                    }
                };
                // Stored at the scheduled boundary, so rows of every node share their ts exactly
                // and a label window BETWEEN two boundaries holds the rows it names. The
                // interval's pod rows travel with the node row (one spool record, one
                // transaction) and share its ts.
                row.stamp(ts);
                detector.judge(&mut row);
                if sampler.pods_on() {
                    let flagged = pod_detector.judge(&mut row);
                    if !flagged.is_empty() {
                        if let Ok(mut alarms) = metrics.pod_alarms.lock() {
                            for f in &flagged {
                                alarms.count(f.namespace.as_deref());
                            }
                        }
                        alarm_log.log(&node, &flagged);
                    }
                    metrics.pod_baselines.store(pod_detector.workloads() as u64, Relaxed);
                    metrics.pod_baselines_evicted.store(pod_detector.evicted(), Relaxed);
                }
                saver.tick(metrics, || StateSaver::snapshot(&options, &detector, &pod_detector), clock.now());
                metrics.observe_collection(started.elapsed().as_secs_f64());
                metrics.programs_ok.store(sampler.ebpf_ok(), Relaxed);
                if let Ok(mut m) = metrics.ebpf_maps_full.lock() {
                    *m = sampler.maps_full();
                }
                // The programs' kernel statistics: a file read per program, so at most every
                // PROGRAM_STATS_EVERY.
                if stats_due.is_none_or(|t| t.elapsed() >= PROGRAM_STATS_EVERY) {
                    stats_due = Some(std::time::Instant::now());
                    if let Ok(mut s) = metrics.program_stats.lock() {
                        *s = sampler.program_stats();
                    }
                }
                if row.is_anomalous() {
                    metrics.rows_anomalous.fetch_add(1, Relaxed);
                    warn!(
                        ts = %feature_schema::timefmt::rfc3339_micros(row.ts),
                        score = row.anomaly_score,
                        features = row.anomalous_features.as_deref().unwrap_or_default().join(","),
                        pods = row.anomalous_pods.as_deref().unwrap_or_default().join(","),
                        "anomalous row"
                    );
                }
                metrics.network_namespaces.store(sampler.namespaces() as u64, Relaxed);
                metrics.tcp_gauge_drifts.store(sampler.tcp_gauge_drifts(), Relaxed);
                if sampler.pods_on() {
                    metrics.pod_rows_last.store(row.pods.len() as u64, Relaxed);
                    metrics.cgroup_overflow_events.store(sampler.cgroup_overflow_events(), Relaxed);
                }
                emit(row)?;
                taken += 1;
            }
            s = signals.next() => {
                info!(signal = s, "stopping");
                stopped_by = Some(s);
                break;
            }
        }
    }
    saver.finish(metrics, StateSaver::snapshot(&options, &detector, &pod_detector), clock.now()).await;
    Ok(stopped_by)
}

/// Opens the spool: None (memory only) when disabled. A spool that cannot be opened now (a
/// full disk, a directory not yet writable) is handed to the writer to open later, rows waiting
/// in memory meanwhile. Another agent holding the same spool is an error: two writers would
/// corrupt it.
fn open_spool(args: &RunArgs) -> anyhow::Result<writer::SpoolSlot> {
    if args.spool_dir.as_os_str() == "off" {
        info!("no spool (--spool-dir off): rows wait in memory while the database is away");
        return Ok(writer::SpoolSlot::Off);
    }
    match Spool::open(&args.spool_dir, args.spool_max_bytes) {
        Ok(s) => {
            info!(dir = %args.spool_dir.display(), max_bytes = args.spool_max_bytes, pending = s.pending_rows(), "spool ready");
            Ok(writer::SpoolSlot::Open(Box::new(s)))
        }
        Err(e @ crate::spool::SpoolError::Locked { .. }) => Err(e.into()),
        Err(e) => {
            warn!(error = %e, "the spool cannot be used now; rows wait in memory (--queue-max-rows) and it is tried again every 5 s");
            Ok(writer::SpoolSlot::Later { dir: args.spool_dir.clone(), max_bytes: args.spool_max_bytes })
        }
    }
}

/// Binds the metrics listener (unless "off") and serves it in the background.
async fn start_listener(listen: &str, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    if listen == "off" {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen there (in use, or not an ADDRESS:PORT?)"))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let target = args.database.target()?;
    let spool = open_spool(&args)?;
    let sampler = args.sampling.sampler()?;
    let node = sampler.node().to_owned();
    let metrics = Metrics::new(args.sampling.interval);
    if !matches!(spool, writer::SpoolSlot::Off) {
        metrics.spool_max_bytes.store(args.spool_max_bytes, Relaxed);
    }
    start_listener(&args.listen, &metrics).await?;
    info!(node, interval_s = args.sampling.interval, records = args.sampling.records, "feature-agent running");

    // The writer runs on its own thread, so neither the database nor the spool's fdatasync
    // can delay the sampling schedule. Rows that find the channel full are counted as dropped.
    let capacity = (args.queue_max_rows as usize).clamp(64, 65536);
    let (tx, rx) = mpsc::channel(capacity);
    let (stop_now, stop_rx) = watch::channel(false);
    let shutdown_timeout = Duration::from_secs_f64(args.shutdown_timeout);
    let options = WriterOptions {
        target,
        node,
        interval: Duration::from_secs_f64(args.sampling.interval),
        queue_max_rows: args.queue_max_rows as usize,
        shutdown_timeout,
        spool,
        batch_rows: 256,
        statements: if args.db_prepared_statements { writer::Statements::Named } else { writer::Statements::Unnamed },
        metrics: metrics.clone(),
    };
    let writer = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            anyhow::Ok(runtime.block_on(writer::run_writer(options, rx, stop_rx)))
        })
        .context("starting the writer thread")?;
    let state_file = args
        .sampling
        .detector
        .state_file((args.spool_dir.as_os_str() != "off").then(|| args.spool_dir.join("detector-state")));
    let stopped_by = sample_loop(&args.sampling, sampler, &metrics, &mut signals, state_file, |row| {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(row) {
            let n = metrics.rows_dropped_channel_full.fetch_add(1, Relaxed) + 1;
            warn!(dropped_total = n, "the writer is behind by {capacity} rows; this row is dropped");
        }
        Ok(())
    })
    .await;
    // Closing the channel starts the writer's drain (--shutdown-timeout). A second SIGTERM or
    // SIGINT ends it at once (what is in memory is spooled, or counted); so does the timeout
    // itself passing with a margin, should the writer be stuck in a call that ignores it. A
    // writer that does not stop even then (a disk that never returns from fdatasync) is left
    // behind: the process exits without it.
    drop(tx);
    let mut join = tokio::task::spawn_blocking(move || writer.join());
    let backstop = tokio::time::sleep(shutdown_timeout + STOP_GRACE);
    tokio::pin!(backstop);
    let mut abandon_at: Option<tokio::time::Instant> = None;
    let joined = loop {
        let abandon = async {
            match abandon_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut join => break r,
            s = signals.next() => {
                warn!(signal = s, "second signal: stopping now; rows not yet in the database go to the spool");
                let _ = stop_now.send(true);
                abandon_at.get_or_insert(tokio::time::Instant::now() + STOP_GRACE);
            }
            () = &mut backstop, if !*stop_now.borrow() => {
                warn!("the writer did not finish within --shutdown-timeout; stopping it now");
                let _ = stop_now.send(true);
                abandon_at.get_or_insert(tokio::time::Instant::now() + STOP_GRACE);
            }
            () = abandon => {
                error!(
                    in_memory = metrics.rows_queued.load(Relaxed),
                    "the writer did not stop (stuck in the disk?); exiting without it: the rows it held in memory are lost"
                );
                // The runtime would wait for the stuck thread on its way out: leave at once.
                std::process::exit(1);
            }
        }
    };
    let report = joined
        .context("waiting for the writer thread")?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .context("the writer's runtime")?;
    let stopped_by = stopped_by?;
    let totals = Totals::new(&metrics, &report);
    totals.log();
    if stopped_by.is_none() && (report.unwritten > 0 || report.dropped_shutdown > 0) {
        if report.dropped_shutdown == 0 {
            bail!(
                "{} rows could not be written before the shutdown timeout; they are kept in the spool ({}) and written by the next start",
                report.unwritten,
                args.spool_dir.display()
            );
        }
        bail!(
            "{} rows could not be written before the shutdown timeout; {} of them are lost",
            report.unwritten + report.dropped_shutdown,
            report.dropped_shutdown
        );
    }
    Ok(())
}

/// The run's closing account. Every row that entered (sampled now, or found in the spool from
/// an earlier run) left exactly one way: written, already in the database, dropped for a
/// reason, or still in the spool. `unaccounted` is the difference, and is 0.
struct Totals {
    sampled: u64,
    recovered: u64,
    skipped: u64,
    written: u64,
    duplicate: u64,
    dropped_full: u64,
    corrupt: u64,
    rejected: u64,
    clock_step: u64,
    dropped_shutdown: u64,
    spooled: u64,
}

impl Totals {
    fn new(m: &Metrics, r: &writer::WriterReport) -> Self {
        Totals {
            sampled: m.collection_count.load(Relaxed),
            recovered: r.recovered,
            skipped: m.samples_skipped.load(Relaxed),
            written: r.written,
            duplicate: r.duplicate,
            dropped_full: r.dropped_full + m.rows_dropped_channel_full.load(Relaxed),
            corrupt: r.corrupt,
            rejected: r.rejected,
            clock_step: m.rows_dropped_clock_step.load(Relaxed),
            dropped_shutdown: r.dropped_shutdown,
            spooled: r.unwritten,
        }
    }

    fn unaccounted(&self) -> i64 {
        let entered = self.sampled + self.recovered;
        let left = self.written
            + self.duplicate
            + self.dropped_full
            + self.corrupt
            + self.rejected
            + self.clock_step
            + self.dropped_shutdown
            + self.spooled;
        entered as i64 - left as i64
    }

    fn log(&self) {
        let unaccounted = self.unaccounted();
        info!(
            sampled = self.sampled,
            recovered = self.recovered,
            skipped = self.skipped,
            written = self.written,
            duplicate = self.duplicate,
            dropped_full = self.dropped_full,
            corrupt = self.corrupt,
            rejected = self.rejected,
            clock_step = self.clock_step,
            dropped_shutdown = self.dropped_shutdown,
            spooled = self.spooled,
            unaccounted,
            "stopped"
        );
        if unaccounted != 0 {
            // A row replayed after a crash between the database's commit and the spool's ack is
            // counted by both runs; nothing else should get here.
            warn!(unaccounted, "the closing totals do not add up");
        }
    }
}

pub async fn print(args: SamplingArgs) -> anyhow::Result<()> {
    let sampler = args.sampler()?;
    let stdout = std::io::stdout();
    let metrics = Metrics::new(args.interval);
    let mut signals = Signals::install()?;
    let state_file = args.detector.state_file(None);
    let tagged = args.pod_rows;
    let result = sample_loop(&args, sampler, &metrics, &mut signals, state_file, |row| {
        let mut out = stdout.lock();
        // With --pod-rows, the interval's pod rows follow their node row, one per line, and
        // every line starts with "row": "node" or "pod" to say which it is.
        write_json_line(&mut out, &row, tagged.then_some("node"))?;
        for pod in &row.pods {
            write_json_line(&mut out, pod, Some("pod"))?;
        }
        out.flush()?;
        Ok(())
    })
    .await;
    match result {
        // The reader went away (`print | head -1`): stop quietly, as Unix tools do.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// One JSON object on its own line; with `row`, a first key "row" naming the kind of row.
fn write_json_line(out: &mut impl Write, value: &impl serde::Serialize, row: Option<&str>) -> anyhow::Result<()> {
    let json = serde_json::to_vec(value)?;
    match row {
        // The object is never empty: its first byte is '{' and a key follows.
        Some(kind) => {
            write!(out, "{{\"row\":\"{kind}\",")?;
            out.write_all(&json[1..])?;
        }
        None => out.write_all(&json)?,
    }
    out.write_all(b"\n")?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// `migrate`: applies the migrations to the named database. A database must be named (DB_NAME
/// or the URL's dbname): without one Postgres picks the user's own, which is seldom the one
/// meant, and a schema in the wrong database is found only when the agents fail.
pub async fn migrate_only(args: DatabaseArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if config.get_dbname().is_none() {
        bail!(
            "no database named: set DB_NAME (or --db-name), or a dbname in DATABASE_URL; without one Postgres would use the user's own database ({:?})",
            config.get_user().unwrap_or("postgres")
        );
    }
    let target = feature_db::args::describe_target(&config);
    // The same deadline as the agent's own start-up migration (plus the connect's), so a hung
    // database fails the Job instead of holding it forever.
    let limit = writer::Deadlines::for_interval(Duration::ZERO).migrate + Duration::from_secs(10);
    let work = async {
        let mut client = args.connect(limit).await?;
        migrate::apply(&mut client).await.map_err(migrate::explain)
    };
    let applied = tokio::time::timeout(limit, work).await.map_err(|_| {
        anyhow::anyhow!("{target}: no answer within {limit:?}; the migrations may not have been applied")
    })??;
    info!(applied, target, "migrations up to date");
    Ok(())
}
