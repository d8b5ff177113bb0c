//! `feature-lab drill`: a scripted, reproducible detection run on this node. It starts the
//! real agent (`feature-agent run`, as a child process; --agent says which binary) against the
//! database, waits for its detector to warm up, runs every scenario in turn with normal periods
//! between them (normal, attack, normal, ...), stops the agent, and prints `evaluate`'s table
//! for the run. The README's detection table is this command's output.
//!
//! With `--pods` (the default) it runs as on a Kubernetes node (pod.rs): the agent writes pod
//! rows (--pod-rows), the background runs in a neighbour pod of its own
//! (`lab-neighbour/<background>-0`), and each scenario runs inside an application pod of its
//! own (`shop/<scenario>-0`, with its own network namespace) that exists from the start, idle
//! but for one sleeping process, so its workload warms up with the rest, as a compromised
//! pod's would. One pod per scenario, as one workload per attacked application: ten different
//! attacks every few minutes in one pod would be a pattern no real pod shows, and a pod's
//! recurring bursts are, to the detector, that workload's normal. `evaluate` then says whether
//! the attack was flagged in its pod, and whether a neighbour was flagged with it.
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::Args;
use tracing::info;

use feature_db::{migrate, parse_interval, DatabaseArgs, NodeArgs};

use crate::{
    background::{self, Background},
    evaluate,
    pod::{LabPod, LabPods},
    scenario::{self, parse_duration, RunSpec, Scenario},
};

/// How long any one database call of `drill` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The scenarios to run, in order [default: all ten].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// How many times the whole sequence runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10.0, value_parser = parse_duration)]
    pub duration: f64,
    /// Seconds of normal activity before and between scenarios.
    #[arg(long, default_value_t = 30.0, value_parser = parse_duration)]
    pub gap: f64,
    /// The agent's sampling interval during the drill.
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
    pub interval: f64,
    /// The agent's detector warm-up (seconds).
    #[arg(long, default_value_t = 60.0, value_parser = parse_interval)]
    pub warmup: f64,
    /// The agent's anomaly threshold.
    #[arg(long, default_value_t = 4.0)]
    pub anomaly_threshold: f64,
    /// The agent's --detector-adapt (seconds): longer than a scenario, shorter than the run.
    #[arg(long, default_value_t = 60.0, value_parser = parse_interval)]
    pub adapt: f64,
    /// The agent's --detector-recurring-window (seconds) [default: 360 intervals, the rows
    /// the agent's default hour holds at its default 10 s interval].
    #[arg(long, value_parser = parse_interval)]
    pub recurring_window: Option<f64>,
    /// Directory for disk-burst's temporary file.
    #[arg(long, default_value = "/var/tmp")]
    pub scratch_dir: std::path::PathBuf,
    /// Print the evaluation as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A real workload kept running for the whole drill (warm-up included), so false alarms are
    /// measured against a busy node's normal: quiet, web, database or build (see background/).
    #[arg(long, value_enum, default_value = "quiet")]
    pub background: Background,
    /// Run each scenario in a new pod of its workload, made just before the scenario starts and
    /// removed as soon as it ends (as a Job's pod lives), instead of in its long-lived pod: a
    /// pod judged from its first interval. Its workload (`shop/<scenario>`) is the long-lived
    /// pod's, warmed up with the rest.
    #[arg(long)]
    pub fresh_pods: bool,
    /// Run the background and the scenarios in pods of their own (kubelet-like cgroups and
    /// pod log directories), the agent writing pod rows: "on" or "off".
    #[arg(long, default_value = "on", value_parser = feature_db::boolish(), action = clap::ArgAction::Set)]
    pub pods: bool,
    /// The feature-agent binary to run [default: the feature-agent beside this binary, else
    /// the one on PATH].
    #[arg(long, env = "FEATURE_AGENT")]
    pub agent: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

/// Waits `d`, or fails at once on Ctrl-C or SIGTERM, so the drill's pods, background and agent
/// are stopped and removed on the way out.
async fn pause(d: Duration) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        if crate::interrupt::requested() {
            anyhow::bail!("interrupted: the drill's agent, background and pods are stopped and removed");
        }
        tokio::time::sleep(Duration::from_millis(100).min(end.saturating_duration_since(tokio::time::Instant::now())))
            .await;
    }
    Ok(())
}

/// What a fresh pod's scenario sends to: bulk-transfer's sink on the host's end of the pod's
/// veth pair, or exfiltrate's outside peer.
enum FreshPeer {
    Sink(scenario::bulk_transfer::Sink),
    Outside(crate::outside::OutsidePeer),
}

impl FreshPeer {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            FreshPeer::Sink(s) => s.addr,
            FreshPeer::Outside(o) => o.addr,
        }
    }
}

/// The application pod's sleeping process, killed (and reaped) however the drill ends.
struct SleepingProcess(Child);
impl Drop for SleepingProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent child; stopped with SIGTERM (and reaped) however the drill ends.
struct AgentChild(Child);
impl Drop for AgentChild {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub async fn command(args: DrillArgs) -> anyhow::Result<()> {
    let node = args.node.resolve()?;
    let mut client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    let limit = client.limit();
    feature_db::deadline::within(limit, migrate::apply(&mut client)).await?;
    let scenarios = if args.scenarios.is_empty() { Scenario::ALL.to_vec() } else { args.scenarios.clone() };
    // Ctrl-C or SIGTERM from here stops the drill cleanly (see pause and the scenarios).
    crate::interrupt::catch();

    // The pods first, then the background: the detector's warm-up must see both as normal.
    let mut pods = if args.pods { Some(LabPods::new(&args.scratch_dir)?) } else { None };
    let mut apps: HashMap<Scenario, LabPod> = HashMap::new();
    let mut neighbour = None;
    if let Some(p) = &mut pods {
        for &s in &scenarios {
            if let std::collections::hash_map::Entry::Vacant(slot) = apps.entry(s) {
                slot.insert(p.add("shop", &format!("{}-0", s.name()), true)?);
            }
        }
        neighbour = Some(p.add("lab-neighbour", &format!("{}-0", args.background.name()), false)?);
    }
    // Each application pod's own process: one that sleeps until the drill ends.
    let _app_processes = apps
        .values()
        .map(|pod| {
            let child = pod
                .command("sleep")
                .arg("86400")
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the process of pod {}", pod.full_name()))?;
            Ok(SleepingProcess(child))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // bulk-transfer's destination: the host's end of its pod's veth pair (or, with --pods off,
    // a loopback listener of its own).
    let sink = match apps.get(&Scenario::BulkTransfer).and_then(|p| p.network.as_ref()) {
        Some((_, host_end)) => Some(scenario::bulk_transfer::Sink::start((*host_end).into())?),
        None => None,
    };
    // exfiltrate's: a peer outside the cluster's ranges, linked to its pod's namespace (or, with
    // --pods off, to the host's).
    let outside = match scenarios.contains(&Scenario::Exfiltrate) {
        true => Some(
            crate::outside::OutsidePeer::new(
                apps.get(&Scenario::Exfiltrate).and_then(|p| p.network.as_ref()).map(|(ns, _)| ns.as_str()),
            )
            .context("making exfiltrate's outside peer")?,
        ),
        false => None,
    };
    let workload = background::start(args.background, &args.scratch_dir, neighbour)
        .with_context(|| format!("starting the {} background", args.background.name()))?;
    info!(background = args.background.name(), "drill: background running");
    let agent_bin = args.agent.clone().unwrap_or_else(default_agent);
    let mut cmd = Command::new(&agent_bin);
    cmd.args(["run", "--node-name", &node])
        .arg("--interval")
        .arg(args.interval.to_string())
        .arg("--detector-warmup")
        .arg(args.warmup.to_string())
        .arg("--anomaly-threshold")
        .arg(args.anomaly_threshold.to_string())
        .arg("--detector-adapt")
        .arg(args.adapt.to_string())
        .arg("--detector-recurring-window")
        .arg(args.recurring_window.unwrap_or(360.0 * args.interval).min(86_400.0).to_string())
        // Its own short-lived run: no spool (a node agent may hold the default one), no listener.
        .args(["--spool-dir", "off", "--listen", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(p) = &pods {
        cmd.arg("--pod-rows").arg("--pod-logs").arg(&p.logs);
    }
    // Every byte counted, split by peer: the lab pods' addresses (10.213.0.0/16) are this
    // node's, and exfiltrate's peer is in no range, so outside.
    cmd.args(["--count-bytes", "--node-cidrs", "10.213.0.0/16", "--cluster-cidrs", "10.96.0.0/12"]);
    for (k, v) in args.database.to_env() {
        cmd.env(k, v);
    }
    let started = SystemTime::now();
    let agent = AgentChild(cmd.spawn().with_context(|| format!("starting the agent {}", agent_bin.display()))?);
    info!(node, warmup_s = args.warmup, "drill: agent started, warming up");
    pause(Duration::from_secs_f64(args.warmup + 2.0 * args.interval + args.gap)).await?;

    for round in 1..=args.rounds {
        for &s in &scenarios {
            // With --fresh-pods, a pod of the scenario's workload that lives only as long as the
            // scenario, with its own peers.
            let fresh = match (&mut pods, args.fresh_pods) {
                (Some(p), true) => {
                    let pod = p.add("shop", &format!("{}-{round}", s.name()), true)?;
                    let host_end = pod.network.as_ref().map(|(_, h)| *h);
                    let peers = match s {
                        Scenario::BulkTransfer => host_end
                            .map(|h| scenario::bulk_transfer::Sink::start(h.into()).map(FreshPeer::Sink))
                            .transpose()?,
                        Scenario::Exfiltrate => Some(FreshPeer::Outside(crate::outside::OutsidePeer::new(
                            pod.network.as_ref().map(|(ns, _)| ns.as_str()),
                        )?)),
                        _ => None,
                    };
                    Some((pod, peers))
                }
                _ => None,
            };
            let fresh_sink = fresh.as_ref().and_then(|(_, peer)| peer.as_ref()).map(FreshPeer::addr);
            let spec = RunSpec {
                scenario: s,
                duration_s: args.duration,
                interval_s: Some(args.interval),
                scratch_dir: args.scratch_dir.clone(),
                label: true,
                pod: fresh.as_ref().map(|(pod, _)| pod.clone()).or_else(|| apps.get(&s).cloned()),
                sink: fresh_sink.or(match s {
                    Scenario::BulkTransfer => sink.as_ref().map(|s| s.addr),
                    Scenario::Exfiltrate => outside.as_ref().map(|p| p.addr),
                    _ => None,
                }),
            };
            let report = scenario::run(&client, &spec, &node).await;
            if let (Some(p), Some((pod, peer))) = (&mut pods, fresh) {
                drop(peer);
                p.remove(&pod)?;
            }
            let report = report?;
            info!(round, scenario = s.name(), rows = report.rows_labelled, "drill: scenario done");
            pause(Duration::from_secs_f64(args.gap)).await?;
        }
    }
    drop(agent);
    drop(workload);
    drop(sink);
    drop(outside);
    drop(_app_processes);
    drop(pods);

    let (rows, runs) = evaluate::load(&client, Some(&node), Some(started), None, 2.0).await?;
    evaluate::print_report(&rows, &runs, 2.0, args.json)
}

/// `feature-agent` in this binary's directory (where cargo and the README's set-up put both),
/// else whatever PATH finds.
fn default_agent() -> std::path::PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("feature-agent")));
    match beside {
        Some(p) if p.is_file() => p,
        _ => "feature-agent".into(),
    }
}
