//! Command line and environment of `feature-agent`, the node daemon, and its three commands:
//! `run` (sample and write to Postgres), `print` (sample to stdout as JSON lines) and `migrate`.
//! The research tools (label, scenario, evaluate, export, plot, drill) are `feature-lab`.
//! Every option has an environment variable fallback, so a DaemonSet configures it with `env:`.
use std::{
    io::Write,
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use regex::Regex;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use feature_db::{boolish, migrate, parse_interval, refuse_secrets_on_command_line, DatabaseArgs, NodeArgs};

use crate::{
    collector::{DiskSelector, InterfaceSelector, Roots, Sources},
    db::{self, WriterOptions},
    detector::{Detector, DetectorOptions},
    ebpf::EbpfCounters,
    metrics::Metrics,
    sampler::Sampler,
    spool::Spool,
};

#[derive(Debug, Parser)]
#[command(
    name = "feature-agent",
    version,
    about = "Per-node security features from procfs and eBPF, one row per interval into Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample every interval and write the rows to Postgres (applies migrations first).
    Run(Box<RunArgs>),
    /// Sample every interval and print the rows as JSON lines on stdout; no database.
    Print(SamplingArgs),
    /// Apply the migrations in migrations/ and exit. Re-running is a no-op.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Seconds between samples (fractions allowed). Samples are aligned to multiples of the
    /// interval since the Unix epoch.
    #[arg(long, env = "INTERVAL", default_value_t = 10.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Stop after this many rows; 0 runs until SIGTERM/SIGINT.
    #[arg(long, env = "RECORDS_NUM", default_value_t = 0)]
    pub records: u64,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Root of the host's procfs (/host/proc in a pod).
    #[arg(long, env = "PROCFS_ROOT", default_value = "/proc")]
    pub procfs: PathBuf,
    /// Root of the host's sysfs (/host/sys in a pod).
    #[arg(long, env = "SYSFS_ROOT", default_value = "/sys")]
    pub sysfs: PathBuf,
    /// The host's root filesystem, for disk_av_per (/host/root in a pod).
    #[arg(long, env = "ROOTFS_ROOT", default_value = "/")]
    pub rootfs: PathBuf,
    /// Regex of the disks to sum [default: whole devices except loop, ram, zram, fd, dm-, md].
    #[arg(long, env = "DISK_DEVICES", value_parser = parse_regex)]
    pub disk_devices: Option<Regex>,
    /// Regex of the interfaces to sum [default: physical ones, not under /sys/devices/virtual].
    #[arg(long, env = "NET_DEVICES", value_parser = parse_regex)]
    pub net_devices: Option<Regex>,
    /// Exit with an error if any eBPF program cannot be loaded, instead of leaving its columns NULL.
    #[arg(long, env = "REQUIRE_EBPF", conflicts_with = "no_ebpf", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub require_ebpf: bool,
    /// Hook TCP state changes with the classic tracepoint even where the cheaper BTF tracepoint
    /// loads (a fallback for kernels whose BTF tracepoints misbehave).
    #[arg(long, env = "CLASSIC_TRACEPOINTS", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub classic_tracepoints: bool,
    /// Where socket creations (sock_alloc_*) are counted: auto = fexit on __sock_create, else a
    /// kprobe, else not at all (NULL); syscalls = the syscall-tracepoint fallback, which slows
    /// every syscall on the node; fexit / kprobe = only that; off = not counted.
    #[arg(long, env = "SOCKET_HOOK", value_enum, default_value_t = crate::ebpf::SocketHook::Auto)]
    pub socket_hook: crate::ebpf::SocketHook,
    /// Do not load eBPF programs: eBPF columns are NULL, est_conn/lis_conn come from a dump.
    #[arg(long, env = "NO_EBPF", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub no_ebpf: bool,
    /// Seconds between checks of the eBPF TCP connection gauges against a sock_diag dump.
    #[arg(long, env = "TCP_RECHECK_INTERVAL", default_value_t = 300.0, value_parser = parse_interval)]
    pub tcp_recheck_interval: f64,
    #[command(flatten)]
    pub detector: DetectorArgs,
}

/// The streaming detector that judges every row (see detector.rs).
#[derive(Debug, Args)]
pub struct DetectorArgs {
    /// |z| above which a feature makes a row anomalous. The score is the largest |z| over 43
    /// features, so a per-feature 2.0 would flag most normal rows; 4.0 is the default.
    #[arg(long, env = "ANOMALY_THRESHOLD", default_value_t = 4.0, value_parser = parse_threshold)]
    pub anomaly_threshold: f64,
    /// Seconds of rows used to start the baseline; the verdict is NULL meanwhile.
    #[arg(long, env = "DETECTOR_WARMUP", default_value_t = 300.0, value_parser = parse_interval)]
    pub detector_warmup: f64,
    /// Seconds after which a normal row's weight in the baseline has halved.
    #[arg(long, env = "DETECTOR_HALF_LIFE", default_value_t = 3600.0, value_parser = parse_interval)]
    pub detector_half_life: f64,
    /// Seconds a feature must stay anomalous before its shift is taken as the new normal (its
    /// baseline is re-anchored and the event logged).
    #[arg(long, env = "DETECTOR_ADAPT", default_value_t = 600.0, value_parser = parse_interval)]
    pub detector_adapt: f64,
}

impl DetectorArgs {
    pub fn options(&self, interval_s: f64) -> DetectorOptions {
        DetectorOptions {
            threshold: self.anomaly_threshold,
            warmup_rows: ((self.detector_warmup / interval_s).ceil() as usize).max(3),
            half_life_rows: self.detector_half_life / interval_s,
            adapt_rows: ((self.detector_adapt / interval_s).ceil() as usize).max(1),
        }
    }
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{v} is not a positive threshold"));
    }
    Ok(v)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Directory of the on-disk spool that keeps rows while the database is unreachable, across
    /// restarts and crashes. "off": no spool, rows wait in memory only (--queue-max-rows).
    #[arg(long, env = "SPOOL_DIR", default_value = "/var/lib/feature-agent/spool")]
    pub spool_dir: PathBuf,
    /// Bytes the spool may use; beyond it the oldest rows are dropped (about 400 bytes a row).
    #[arg(long, env = "SPOOL_MAX_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(16384..))]
    pub spool_max_bytes: u64,
    /// Rows held in memory when there is no spool (or it fails); the oldest are dropped beyond it.
    #[arg(long, env = "QUEUE_MAX_ROWS", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_max_rows: u64,
    /// Address of the HTTP listener for /metrics, /healthz and /readyz; "off" disables it.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:9100", value_parser = parse_listen)]
    pub listen: String,
    /// Seconds to keep flushing queued rows after SIGTERM or the last record.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 5.0, value_parser = parse_interval)]
    pub shutdown_timeout: f64,
}

/// `--listen`: "off", or HOST:PORT (an address or a name that resolves), checked before any
/// work starts.
fn parse_listen(s: &str) -> Result<String, String> {
    if s == "off" {
        return Ok(s.to_owned());
    }
    let resolves = std::net::ToSocketAddrs::to_socket_addrs(s).is_ok_and(|mut a| a.next().is_some());
    if resolves {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not ADDRESS:PORT (e.g. 0.0.0.0:9100) or \"off\""))
    }
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("invalid regex: {e}"))
}

impl SamplingArgs {
    /// Loads eBPF as asked: not at all, best effort (one warning per failure), or required.
    fn load_ebpf(&self) -> anyhow::Result<Option<EbpfCounters>> {
        if self.no_ebpf {
            info!("eBPF disabled (--no-ebpf): eBPF columns will be NULL");
            return Ok(None);
        }
        crate::ebpf::ensure_tracefs();
        let options =
            crate::ebpf::LoadOptions { classic_tracepoints: self.classic_tracepoints, socket_hook: self.socket_hook };
        match EbpfCounters::load_with(options) {
            Ok(counters) => {
                for f in counters.failures() {
                    warn!(error = %f, hint = f.hint(), "an eBPF program could not be attached; the columns it feeds will be NULL");
                }
                if self.require_ebpf && !counters.failures().is_empty() {
                    bail!(
                        "--require-ebpf: {} of the eBPF programs could not be attached (see above)",
                        counters.failures().len()
                    );
                }
                let hooks: Vec<String> = counters.hooks().iter().map(|(p, k)| format!("{p}:{k}")).collect();
                info!(programs = counters.attached(), hooks = hooks.join(","), "eBPF programs attached");
                for p in counters.programs() {
                    info!(
                        program = p.program,
                        hook = p.hook,
                        target = p.target,
                        columns = p.columns.join(","),
                        "eBPF program"
                    );
                }
                Ok(Some(counters))
            }
            Err(e) if self.require_ebpf => Err(e).context("--require-ebpf: cannot load the eBPF programs"),
            Err(e) => {
                warn!(error = %e, hint = e.hint(), "eBPF programs not loaded; writing procfs features only, eBPF columns will be NULL");
                Ok(None)
            }
        }
    }

    fn sampler(&self) -> anyhow::Result<Sampler> {
        let node = self.node.resolve()?;
        let roots = Roots { procfs: self.procfs.clone(), sysfs: self.sysfs.clone(), rootfs: self.rootfs.clone() };
        let disks = match &self.disk_devices {
            Some(re) => DiskSelector::matching(re.clone()),
            None => DiskSelector::default_for(&roots.sysfs),
        };
        let interfaces = match &self.net_devices {
            Some(re) => InterfaceSelector::matching(re.clone()),
            None => InterfaceSelector::physical(&roots.sysfs),
        };
        if !roots.procfs.join("stat").exists() {
            bail!("{} does not look like a procfs root (no stat file); check --procfs", roots.procfs.display());
        }
        let ebpf = self.load_ebpf()?;
        let recheck = Duration::from_secs_f64(self.tcp_recheck_interval);
        Ok(Sampler::new(node, Sources::new(roots, disks, interfaces), ebpf, recheck))
    }
}

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
                // and a label window BETWEEN two boundaries holds the rows it names.
                row.ts = scheduled_ts(tick, start, start_wall, period);
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

/// Entry point of the binary: parses arguments, sets up logging on stderr, runs the command.
pub fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    if let Err(e) = refuse_secrets_on_command_line(&matches) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(a) => run(*a).await,
            Command::Print(a) => print(a).await,
            Command::Migrate(a) => migrate_only(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
