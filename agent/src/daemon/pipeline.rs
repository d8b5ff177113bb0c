//! The daemon's schedule: an aligned ticker and the signals drive sample -> judge -> hand to the
//! writer thread (delivery/writer/), which owns the memory queue and the spool. `run` starts the
//! writer and the listener around [`sample_loop`], then stops the writer (daemon/shutdown.rs)
//! and logs the account (daemon/accounting.rs); `print` runs the same loop (daemon/commands.rs).
use std::{
    path::PathBuf,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    daemon::{
        accounting::Totals,
        clock::{Stamp, Stamper},
        config::{RunArgs, SamplingArgs},
        metrics::{start_listener, Metrics},
        signals::Signals,
    },
    delivery::{
        open_spool,
        writer::{self, WriterOptions},
    },
    judging::{
        alarms::AlarmLog,
        persistence::{start_detectors, StateSaver},
    },
    sources::sampler::Sampler,
};

/// Ticks at every multiple of `period` since the Unix epoch as the wall clock reads now,
/// skipping ticks that were missed (a stalled process does not produce a burst of rows), so an
/// hour at 10 s is 360 ticks. The ticks themselves run on the monotonic clock.
fn aligned_ticker(period: Duration, wall: SystemTime) -> tokio::time::Interval {
    let (_, until) = crate::daemon::clock::next_boundary(wall, period);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + until, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// Runs the sampling schedule, handing each row to `emit`, until `records` rows or a signal.
/// Returns the signal's name if one stopped it. The detectors start from `state_file` when it
/// is usable, and save to it.
pub async fn sample_loop(
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
                    alarm_log.record(metrics, &node, &flagged);
                    metrics.pod_baselines.store(pod_detector.workloads() as u64, Relaxed);
                    metrics.pod_baselines_evicted.store(pod_detector.evicted(), Relaxed);
                }
                saver.tick(metrics, || StateSaver::snapshot(&options, &detector, &pod_detector), clock.now());
                metrics.observe_collection(started.elapsed().as_secs_f64());
                metrics.record_sample(&sampler, &row);
                if row.is_anomalous() {
                    warn!(
                        ts = %feature_schema::timefmt::rfc3339_micros(row.ts),
                        score = row.anomaly_score,
                        features = row.anomalous_features.as_deref().unwrap_or_default().join(","),
                        pods = row.anomalous_pods.as_deref().unwrap_or_default().join(","),
                        "anomalous row"
                    );
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
    // Closing the channel starts the writer's drain (--shutdown-timeout).
    drop(tx);
    let joined = super::shutdown::stop_writer(writer, &mut signals, stop_now, shutdown_timeout, &metrics).await;
    let report = joined
        .context("waiting for the writer thread")?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .context("the writer's runtime")?;
    let stopped_by = stopped_by?;
    let totals = Totals::new(&metrics, &report);
    totals.log();
    if stopped_by.is_none() && (report.unwritten > 0 || report.dropped_shutdown > 0) {
        let why = metrics.why_unwritten();
        if report.dropped_shutdown == 0 {
            bail!(
                "{} rows are not in the database ({why}); they are kept in the spool ({}) and written by the next start",
                report.unwritten,
                args.spool_dir.display()
            );
        }
        bail!(
            "{} rows are not in the database ({why}); {} of them are lost",
            report.unwritten + report.dropped_shutdown,
            report.dropped_shutdown
        );
    }
    Ok(())
}
