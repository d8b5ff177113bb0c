//! The daemon's options (every one with an environment fallback, so a DaemonSet configures it with
//! `env:`): what to sample and where from (`SamplingArgs`), the detector (`DetectorArgs`), and
//! `run`'s database, spool, queue and listener (`RunArgs`); and what they build: the eBPF
//! programs as asked and the sampler.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::Args;
use feature_db::{boolish, parse_interval, DatabaseArgs, NodeArgs};
use regex::Regex;
use tracing::{info, warn};

use crate::{
    judging::detector::DetectorOptions,
    sources::collector::{DiskSelector, InterfaceSelector, Roots, Sources},
    sources::ebpf::EbpfCounters,
    sources::net_bytes::{AddressRanges, ByteCounting, Cidr},
    sources::pods::PodSampler,
    sources::sampler::Sampler,
};

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
    #[arg(long, env = "SOCKET_HOOK", value_enum, default_value_t = crate::sources::ebpf::SocketHook::Auto)]
    pub socket_hook: crate::sources::ebpf::SocketHook,
    /// Do not load eBPF programs: eBPF columns are NULL, est_conn/lis_conn come from a dump.
    #[arg(long, env = "NO_EBPF", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub no_ebpf: bool,
    /// Seconds between checks of the eBPF TCP connection gauges against a sock_diag dump.
    #[arg(long, env = "TCP_RECHECK_INTERVAL", default_value_t = 300.0, value_parser = parse_interval)]
    pub tcp_recheck_interval: f64,
    /// Also count every eBPF event per cgroup (pods, containers, host services), for per-pod
    /// rows. Costs one per-CPU hash update per event (BENCHMARKS.md).
    #[arg(long, env = "POD_ROWS", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub pod_rows: bool,
    /// Count every byte and packet each cgroup's sockets send and receive (tx_*/rx_* columns),
    /// split by peer: this node, the cluster (--cluster-cidrs), outside. Attaches two cgroup
    /// socket-buffer programs at the cgroup v2 root, which needs CAP_NET_ADMIN (docs/network.md;
    /// about 0.1-0.2 µs per packet, BENCHMARKS.md).
    #[arg(long, env = "COUNT_BYTES", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub count_bytes: bool,
    /// The cluster's pod and service ranges, comma-separated (e.g. 10.244.0.0/16,10.96.0.0/12):
    /// traffic to them is tx_cluster_*/rx_cluster_*, the rest outside the node is tx_outside_*.
    #[arg(long, env = "CLUSTER_CIDRS", value_parser = crate::sources::net_bytes::parse_cidrs, default_value = "")]
    pub cluster_cidrs: std::vec::Vec<Cidr>,
    /// This node's pod ranges (its Node's spec.podCIDRs), comma-separated: with loopback and the
    /// node's own addresses, traffic that stays on the node (tx_node_*/rx_node_*).
    #[arg(long, env = "NODE_CIDRS", value_parser = crate::sources::net_bytes::parse_cidrs, default_value = "")]
    pub node_cidrs: std::vec::Vec<Cidr>,
    /// Cgroups the per-cgroup map holds (each takes 136 bytes per possible CPU, preallocated).
    /// Events of cgroups beyond it are counted in the "other" row and in
    /// feature_agent_cgroup_overflow_events_total.
    #[arg(long, env = "CGROUP_MAP_ENTRIES", default_value_t = agent_common::CGROUP_EVENT_COUNTS_DEFAULT_MAX,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub cgroup_map_entries: u32,
    /// The host's cgroup v2 tree (in a container: where the host's /sys/fs/cgroup is mounted).
    /// Default: the cgroup2 mount found in /proc/self/mountinfo, /sys/fs/cgroup (pure v2) or
    /// beside the v1 controllers (hybrid, e.g. /sys/fs/cgroup/unified).
    #[arg(long, env = "CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// kubelet's pod log directory, which names pods: /var/log/pods/<namespace>_<pod>_<uid>/.
    #[arg(long, env = "POD_LOGS_DIR", default_value = "/var/log/pods")]
    pub pod_logs: PathBuf,
    #[command(flatten)]
    pub detector: DetectorArgs,
    /// Faults the tests inject (faults.rs; only in a build with the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    #[command(flatten)]
    pub faults: crate::daemon::faults::Faults,
}

/// The streaming detector that judges every row (see detector.rs).
#[derive(Debug, Args)]
pub struct DetectorArgs {
    /// z (seen from the feature's attack direction) above which a feature counts towards an
    /// alarm. The score is the largest over every scored feature, so a per-feature 2.0 would
    /// flag most normal rows; 4.0 is the default.
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
    /// Separate episodes of one feature's alarms, within --detector-recurring-window, after
    /// which its recurring bursts are that node's or workload's normal (a build pod's `make`
    /// every half minute): its baseline is widened to hold them, and that is logged. A
    /// continuous attack is one episode. 0: never.
    #[arg(long, env = "DETECTOR_RECURRING", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub detector_recurring: u32,
    /// Seconds over which --detector-recurring counts episodes.
    #[arg(long, env = "DETECTOR_RECURRING_WINDOW", default_value_t = 3600.0, value_parser = parse_interval)]
    pub detector_recurring_window: f64,
    /// Features that must exceed the threshold together for a row to be anomalous; a single
    /// feature still makes it anomalous beyond twice the threshold. 1: any feature alone.
    #[arg(long, env = "DETECTOR_AGREEMENT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub detector_agreement: u32,
    /// Workloads whose baselines the pod detector keeps (with --pod-rows); past it the least
    /// recently seen are dropped, and warm up again if they return. Each takes about 2 KiB.
    #[arg(long, env = "POD_BASELINES", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pod_baselines: u32,
    /// File that keeps the detector's warm baselines (node and workloads) across restarts,
    /// saved every minute and at stop. Default for `run`: detector-state in the spool
    /// directory (none with --spool-dir off); for `print`: none. "off": never.
    #[arg(long, env = "DETECTOR_STATE")]
    pub detector_state: Option<PathBuf>,
}

impl DetectorArgs {
    /// The state file to use: the one named, else `default` ("off" disables it).
    pub fn state_file(&self, default: Option<PathBuf>) -> Option<PathBuf> {
        match &self.detector_state {
            Some(p) if p.as_os_str() == "off" => None,
            Some(p) => Some(p.clone()),
            None => default,
        }
    }

    pub fn options(&self, interval_s: f64) -> DetectorOptions {
        DetectorOptions {
            threshold: self.anomaly_threshold,
            warmup_rows: ((self.detector_warmup / interval_s).ceil() as usize).max(3),
            half_life_rows: self.detector_half_life / interval_s,
            adapt_rows: ((self.detector_adapt / interval_s).ceil() as usize).max(1),
            agreement: self.detector_agreement as usize,
            interval_s,
            recurring_episodes: self.detector_recurring as usize,
            recurring_rows: ((self.detector_recurring_window / interval_s).ceil() as usize).max(1),
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
    /// Bytes the spool may use; beyond it the oldest rows are dropped (about 400 bytes a row,
    /// plus about 250 bytes per pod row of its interval with --pod-rows).
    #[arg(long, env = "SPOOL_MAX_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(16384..))]
    pub spool_max_bytes: u64,
    /// Rows held in memory when there is no spool (or it fails); the oldest are dropped beyond it.
    #[arg(long, env = "QUEUE_MAX_ROWS", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_max_rows: u64,
    /// Address of the HTTP listener for /metrics, /healthz and /readyz; "off" disables it.
    /// The default listens on every interface, on a port no common exporter uses (node_exporter
    /// has 9100 on the same host network). An address in brackets may be of either family
    /// (`[10.0.0.7]:19100`, `[fd00::7]:19100`), so a manifest can write `[$(NODE_IP)]:PORT`.
    #[arg(long, env = "LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: String,
    /// Prepare the batches' statements once per session (the cheaper for the database). false:
    /// unnamed statements, parsed with every batch, for a transaction pooler (PgBouncer's
    /// pool_mode = transaction), where a prepared statement does not outlive its transaction.
    /// The agent also switches by itself when the server loses one of its prepared statements.
    #[arg(long, env = "DB_PREPARED_STATEMENTS", value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub db_prepared_statements: bool,
    /// Seconds to keep flushing queued rows after SIGTERM or the last record.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 5.0, value_parser = parse_interval)]
    pub shutdown_timeout: f64,
}

/// `--listen`'s default. 9100-9999 is Prometheus' range of allocated exporter ports, all taken
/// (9100 is node_exporter's); 19100 is outside it, outside Kubernetes' own node ports (10248-10260
/// and the NodePort range 30000-32767) and below the kernel's usual ephemeral range.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:19100";

/// `--listen`: "off", or HOST:PORT (an address or a name that resolves), checked before any
/// work starts. `[IPv4]:PORT` is taken as `IPv4:PORT`, so one template serves both families.
fn parse_listen(s: &str) -> Result<String, String> {
    if s == "off" {
        return Ok(s.to_owned());
    }
    let s = match s.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        Some((inner, port)) if inner.parse::<std::net::Ipv4Addr>().is_ok() => format!("{inner}:{port}"),
        _ => s.to_owned(),
    };
    let resolves = std::net::ToSocketAddrs::to_socket_addrs(s.as_str()).is_ok_and(|mut a| a.next().is_some());
    if resolves {
        Ok(s)
    } else {
        Err(format!("{s:?} is not ADDRESS:PORT (e.g. {DEFAULT_LISTEN}, [fd00::7]:19100) or \"off\""))
    }
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("invalid regex: {e}"))
}

impl SamplingArgs {
    /// Loads eBPF as asked: not at all, best effort (one warning per failure), or required.
    fn load_ebpf(&self, per_cgroup: bool) -> anyhow::Result<Option<EbpfCounters>> {
        if self.no_ebpf {
            info!("eBPF disabled (--no-ebpf): eBPF columns will be NULL");
            return Ok(None);
        }
        crate::sources::ebpf::ensure_tracefs();
        let options = crate::sources::ebpf::LoadOptions {
            classic_tracepoints: self.classic_tracepoints,
            socket_hook: self.socket_hook,
            cgroup_map_entries: per_cgroup.then_some(self.cgroup_map_entries),
            small_maps: None,
        };
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

    /// The wall clock the rows are stamped from.
    pub fn clock(&self) -> Box<dyn crate::daemon::clock::WallClock> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.faults.clock_offset_file {
            return Box::new(crate::daemon::faults::OffsetFileClock(f.clone()));
        }
        Box::new(crate::daemon::clock::SystemClock)
    }

    pub fn sampler(&self) -> anyhow::Result<Sampler> {
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
        let pods = self.pod_sampler()?;
        let mut ebpf = self.load_ebpf(pods.is_some())?;
        let bytes = self.byte_counting(ebpf.as_mut())?;
        let pods = if ebpf.is_some() { pods } else { None };
        let recheck = Duration::from_secs_f64(self.tcp_recheck_interval);
        let proc = crate::sources::netns::Proc::at(&roots.procfs);
        let sampler = Sampler::new(node, Sources::new(roots, disks, interfaces), ebpf, recheck, proc)
            .with_pods(pods)
            .with_byte_counting(bytes);
        #[cfg(feature = "fault-injection")]
        let sampler = sampler.with_failed_read_at(self.faults.test_fail_map_read);
        Ok(sampler)
    }

    /// The host's cgroup v2 tree: --cgroup-root or the mount found; None (with a warning that
    /// `what` is unavailable) on a cgroup v1-only host.
    fn cgroup2_root(&self, what: &str) -> anyhow::Result<Option<PathBuf>> {
        Ok(match &self.cgroup_root {
            Some(r) if r.join("cgroup.controllers").exists() => Some(r.clone()),
            // The host's /sys/fs/cgroup of a hybrid host: the v2 tree is beside the v1 ones.
            Some(r) if r.join("unified/cgroup.controllers").exists() => Some(r.join("unified")),
            Some(r) if r.is_dir() => {
                warn!(dir = %r.display(), "--cgroup-root holds no cgroup v2 tree (a cgroup v1-only host): {what} unavailable; node rows are unchanged");
                None
            }
            Some(r) => bail!("--cgroup-root {}: no such directory", r.display()),
            None => {
                let found = crate::sources::cgroups::cgroup2_root_of_this_host();
                if found.is_none() {
                    warn!("no cgroup v2 tree is mounted (a cgroup v1-only host): {what} unavailable; node rows are unchanged");
                }
                found
            }
        })
    }

    /// The byte counting, when --count-bytes is on and eBPF is loaded: attached at the cgroup
    /// v2 root. A failure leaves the byte columns NULL with a warning, or with --require-ebpf
    /// stops the agent.
    fn byte_counting(&self, ebpf: Option<&mut EbpfCounters>) -> anyhow::Result<Option<ByteCounting>> {
        if !self.count_bytes {
            return Ok(None);
        }
        let Some(ebpf) = ebpf else {
            warn!("--count-bytes needs eBPF, which is not loaded: the tx_*/rx_* columns stay NULL");
            return Ok(None);
        };
        let Some(root) = self.cgroup2_root("byte counting (--count-bytes)")? else {
            return Ok(None);
        };
        let ranges = AddressRanges { node: self.node_cidrs.clone(), cluster: self.cluster_cidrs.clone() };
        match ByteCounting::attach(ebpf, &root, ranges) {
            Ok(counting) => Ok(Some(counting)),
            Err(e) if self.require_ebpf => {
                let hint = e.hint();
                Err(e).with_context(|| format!("--require-ebpf: cannot count bytes (--count-bytes): {hint}"))
            }
            Err(e) => {
                warn!(error = %e, hint = e.hint(), "cannot count bytes (--count-bytes): the tx_*/rx_* columns stay NULL");
                Ok(None)
            }
        }
    }

    /// The per-pod sampler, when --pod-rows is on and a cgroup v2 tree exists. On a v1-only
    /// host: one warning, and node rows only.
    fn pod_sampler(&self) -> anyhow::Result<Option<PodSampler>> {
        if !self.pod_rows {
            return Ok(None);
        }
        if self.no_ebpf {
            warn!("--pod-rows needs eBPF; --no-ebpf is set, so no per-pod rows are written");
            return Ok(None);
        }
        let Some(root) = self.cgroup2_root("per-pod rows")? else {
            return Ok(None);
        };
        if !self.pod_logs.is_dir() {
            warn!(dir = %self.pod_logs.display(), "the pod log directory is missing: pods get rows by UID, without namespace and name");
        }
        // Two descriptors a pod stay open (its cgroup directory, its namespace's /proc directory):
        // 500 pods need about the whole of the usual soft limit of 1024.
        let open_files = crate::sources::cgroups::raise_open_file_limit();
        info!(
            cgroup_root = %root.display(),
            pod_logs = %self.pod_logs.display(),
            open_files,
            "per-pod rows on"
        );
        Ok(Some(PodSampler::new(root, self.pod_logs.clone(), crate::sources::netns::Proc::at(&self.procfs))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_either_family_in_brackets_so_one_manifest_serves_both() {
        assert_eq!(parse_listen("[10.0.0.7]:19100").unwrap(), "10.0.0.7:19100");
        assert_eq!(parse_listen("[::1]:19100").unwrap(), "[::1]:19100");
        assert_eq!(parse_listen(DEFAULT_LISTEN).unwrap(), DEFAULT_LISTEN);
        assert_eq!(parse_listen("off").unwrap(), "off");
        for bad in ["[]:19100", "[10.0.0.7]", "10.0.0.7", "[$(NODE_IP)]:19100", "[10.0.0.7]:x"] {
            assert!(parse_listen(bad).is_err(), "{bad} was taken");
        }
    }
}
