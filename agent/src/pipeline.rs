//! The daemon's pipeline: an aligned ticker and the signals drive sample -> judge -> hand to the
//! writer thread (db.rs), which owns the memory queue and the spool. Also `print` (the same
//! samples as JSON lines on stdout) and `migrate`.
use std::{
    io::Write,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use feature_db::{migrate, DatabaseArgs};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    config::{RunArgs, SamplingArgs},
    db::{self, WriterOptions},
    detector::Detector,
    metrics::Metrics,
    sampler::Sampler,
    spool::Spool,
};

/// Ticks at every multiple of `period` since the Unix epoch, skipping ticks that were missed
/// (a stalled process does not produce a burst of rows), so an hour at 10 s is 360 ticks.
/// Returns the ticker and the wall-clock time (since the epoch) of its first tick.
fn aligned_ticker(period: Duration) -> (tokio::time::Interval, tokio::time::Instant, Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let periods = (now.as_nanos() / period.as_nanos()) + 1;
    let next = Duration::from_nanos((periods * period.as_nanos()) as u64);
    let start = tokio::time::Instant::now() + next.saturating_sub(now);
    let mut ticker = tokio::time::interval_at(start, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    (ticker, start, next)
}

/// The scheduled boundary of a tick as wall-clock time: a multiple of the period since the
/// epoch, the same on every node, whatever the tick's latency.
fn scheduled_ts(
    tick: tokio::time::Instant,
    start: tokio::time::Instant,
    start_wall: Duration,
    period: Duration,
) -> SystemTime {
    let periods = ((tick - start).as_nanos() + period.as_nanos() / 2) / period.as_nanos();
    UNIX_EPOCH + start_wall + Duration::from_nanos((periods * period.as_nanos()) as u64)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Runs the sampling schedule, handing each row to `emit`, until `records` rows or a signal.
/// Returns the signal's name if one stopped it.
async fn sample_loop(
    args: &SamplingArgs,
    mut sampler: Sampler,
    metrics: &Metrics,
    mut emit: impl FnMut(feature_schema::FeatureRow) -> anyhow::Result<()>,
) -> anyhow::Result<Option<&'static str>> {
    let (attached, failed) = sampler.programs();
    metrics.programs_attached.store(attached as u64, Relaxed);
    let _ = metrics.program_info.set(sampler.program_infos());
    metrics.programs_failed.store(failed as u64, Relaxed);
    let (mut ticker, start, start_wall) = aligned_ticker(Duration::from_secs_f64(args.interval));
    let mut detector = Detector::new(args.detector.options(args.interval));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let period = Duration::from_secs_f64(args.interval);
    let mut taken = 0u64;
    let mut last_tick: Option<tokio::time::Instant> = None;
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
                let started = std::time::Instant::now();
                let mut row = sampler.sample();
                // Stored at the scheduled boundary, so rows of every node share their ts exactly
                // and a label window BETWEEN two boundaries holds the rows it names. The
                // interval's pod rows travel with the node row (one spool record, one
                // transaction) and share its ts.
                row.stamp(scheduled_ts(tick, start, start_wall, period));
                detector.judge(&mut row);
                metrics.observe_collection(started.elapsed().as_secs_f64());
                metrics.programs_ok.store(sampler.ebpf_ok(), Relaxed);
                if row.is_anomalous() {
                    metrics.rows_anomalous.fetch_add(1, Relaxed);
                    warn!(
                        ts = %feature_schema::timefmt::rfc3339_micros(row.ts),
                        score = row.anomaly_score,
                        features = row.anomalous_features.as_deref().unwrap_or_default().join(","),
                        "anomalous row"
                    );
                }
                if sampler.pods_on() {
                    metrics.pod_rows_last.store(row.pods.len() as u64, Relaxed);
                    metrics.cgroup_overflow_events.store(sampler.cgroup_overflow_events(), Relaxed);
                }
                emit(row)?;
                taken += 1;
            }
            s = &mut signal => {
                let s = s?;
                info!(signal = s, "stopping");
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

/// Opens the spool, or None (memory only) when disabled or unusable. Another agent holding the
/// same spool is an error: two writers would corrupt it.
fn open_spool(args: &RunArgs) -> anyhow::Result<Option<Spool>> {
    if args.spool_dir.as_os_str() == "off" {
        info!("no spool (--spool-dir off): rows wait in memory while the database is away");
        return Ok(None);
    }
    match Spool::open(&args.spool_dir, args.spool_max_bytes) {
        Ok(s) => {
            info!(dir = %args.spool_dir.display(), max_bytes = args.spool_max_bytes, pending = s.pending_rows(), "spool ready");
            Ok(Some(s))
        }
        Err(e @ crate::spool::SpoolError::Locked { .. }) => Err(e.into()),
        Err(e) => {
            warn!(error = %e, "the spool cannot be used; rows wait in memory only (--queue-max-rows) while the database is away");
            Ok(None)
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
    let target = args.database.target()?;
    let spool = open_spool(&args)?;
    let sampler = args.sampling.sampler()?;
    let node = sampler.node().to_owned();
    let metrics = Metrics::new(args.sampling.interval);
    start_listener(&args.listen, &metrics).await?;
    info!(node, interval_s = args.sampling.interval, records = args.sampling.records, "feature-agent running");

    // The writer runs on its own thread, so neither the database nor the spool's fdatasync
    // can delay the sampling schedule. Rows that find the channel full are counted as dropped.
    let capacity = (args.queue_max_rows as usize).clamp(64, 65536);
    let (tx, rx) = mpsc::channel(capacity);
    let options = WriterOptions {
        target,
        node,
        queue_max_rows: args.queue_max_rows as usize,
        shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
        spool,
        batch_rows: 256,
        metrics: metrics.clone(),
    };
    let writer = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            anyhow::Ok(runtime.block_on(db::run_writer(options, rx)))
        })
        .context("starting the writer thread")?;
    let stopped_by = sample_loop(&args.sampling, sampler, &metrics, |row| {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(row) {
            let n = metrics.rows_dropped_channel_full.fetch_add(1, Relaxed) + 1;
            warn!(dropped_total = n, "the writer is behind by {capacity} rows; this row is dropped");
        }
        Ok(())
    })
    .await;
    drop(tx);
    let report = tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("waiting for the writer thread")?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .context("the writer's runtime")?;
    let stopped_by = stopped_by?;
    info!(
        sampled = metrics.collection_count.load(Relaxed),
        skipped = metrics.samples_skipped.load(Relaxed),
        written = report.written,
        dropped_full = report.dropped_full,
        corrupt = report.corrupt,
        rejected = report.rejected,
        dropped_shutdown = report.dropped_shutdown,
        spooled = report.unwritten,
        "stopped"
    );
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

pub async fn print(args: SamplingArgs) -> anyhow::Result<()> {
    let sampler = args.sampler()?;
    let stdout = std::io::stdout();
    let metrics = Metrics::new(args.interval);
    let result = sample_loop(&args, sampler, &metrics, |row| {
        let mut out = stdout.lock();
        serde_json::to_writer(&mut out, &row)?;
        out.write_all(b"\n")?;
        // With --pod-rows, the interval's pod rows follow their node row, one per line (they
        // have a "kind" key; node rows do not).
        for pod in &row.pods {
            serde_json::to_writer(&mut out, pod)?;
            out.write_all(b"\n")?;
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

pub async fn migrate_only(args: DatabaseArgs) -> anyhow::Result<()> {
    let mut client = args.connect().await?;
    let applied = migrate::apply(&mut client).await.map_err(migrate::explain)?;
    info!(applied, "migrations up to date");
    Ok(())
}
