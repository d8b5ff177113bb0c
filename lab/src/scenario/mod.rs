//! `feature-lab scenario NAME`: runs a bounded, reproducible attack-like workload on this
//! node (loopback and a temporary file only), records its window in `scenario_runs`, and labels
//! the node's rows whose interval overlaps it (attack = 1, attack_type = NAME).
//!
//! A row stamped `ts` covers the interval (ts - interval_s, ts], so it overlaps the window
//! [start, end] when ts >= start and ts - interval_s < end (window.rs: the rule `label` uses
//! too). The command waits for the agent to write the row that covers the window's end (at most
//! an interval plus a grace period) before labelling.
pub mod bulk_transfer;
mod conn_flood;
mod cpu_stress;
mod disk_burst;
mod exec_storm;
mod exfiltrate;
mod fork_storm;
mod miner;
mod pace;
mod port_scan;
mod raw_socket;
mod reverse_shell;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use feature_db::deadline::Db as Client;
use serde_json::Value;
use tracing::{info, warn};

use feature_db::{parse_interval, DatabaseArgs, NodeArgs};
use feature_schema::timefmt::rfc3339_micros;

/// The scenarios, by the names the command line and the labels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Scenario {
    /// One busy thread per CPU (the reference paper's stress test).
    CpuStress,
    /// Fork-and-exit children, at most 1000 a second.
    ForkStorm,
    /// Short-lived programs, at most 200 a second.
    ExecStorm,
    /// Sequential connects to loopback ports, at most 500 a second.
    PortScan,
    /// Loopback connections in batches of 200, at most 1000 a second.
    ConnFlood,
    /// Raw IP and AF_PACKET sockets with one ICMP echo to 127.0.0.1 each, at most 50 a second.
    RawSocket,
    /// fdatasync'd 4 MiB writes, at most 64 MiB/s and 1 GiB, then read back; file deleted.
    DiskBurst,
    /// One thread busy 60 % of the time (about 0.6 of one core), as a throttled miner.
    Miner,
    /// Once a second, /bin/sh on an outward TCP connection, running four commands sent by the
    /// listener.
    ReverseShell,
    /// One outbound TCP connection carrying 32 MiB a second (to the host's end of the pod's
    /// veth pair in the drill, to loopback on its own).
    BulkTransfer,
    /// One outbound TCP connection carrying 8 MiB a second to a peer outside the cluster's
    /// ranges (203.0.113.1 in a network namespace made for it), counted in tx_outside_bytes.
    Exfiltrate,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::CpuStress,
        Scenario::ForkStorm,
        Scenario::ExecStorm,
        Scenario::PortScan,
        Scenario::ConnFlood,
        Scenario::RawSocket,
        Scenario::DiskBurst,
        Scenario::Miner,
        Scenario::ReverseShell,
        Scenario::BulkTransfer,
        Scenario::Exfiltrate,
    ];

    /// The name on the command line and in attack_type.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CpuStress => "cpu-stress",
            Scenario::ForkStorm => "fork-storm",
            Scenario::ExecStorm => "exec-storm",
            Scenario::PortScan => "port-scan",
            Scenario::ConnFlood => "conn-flood",
            Scenario::RawSocket => "raw-socket",
            Scenario::DiskBurst => "disk-burst",
            Scenario::Miner => "miner",
            Scenario::ReverseShell => "reverse-shell",
            Scenario::BulkTransfer => "bulk-transfer",
            Scenario::Exfiltrate => "exfiltrate",
        }
    }

    /// Runs the workload for `duration` (blocking); returns what it did. `sink` is where
    /// bulk-transfer and exfiltrate send (None: a loopback listener of bulk-transfer's own; an
    /// outside peer of exfiltrate's own, linked to this process's network namespace).
    pub fn run_workload(
        self,
        duration: Duration,
        scratch_dir: &std::path::Path,
        sink: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Value> {
        match self {
            Scenario::CpuStress => cpu_stress::run(duration),
            Scenario::ForkStorm => fork_storm::run(duration),
            Scenario::ExecStorm => exec_storm::run(duration),
            Scenario::PortScan => port_scan::run(duration),
            Scenario::ConnFlood => conn_flood::run(duration),
            Scenario::RawSocket => raw_socket::run(duration),
            Scenario::DiskBurst => disk_burst::run(duration, scratch_dir),
            Scenario::Miner => miner::run(duration),
            Scenario::ReverseShell => reverse_shell::run(duration),
            Scenario::BulkTransfer => bulk_transfer::run(duration, sink),
            Scenario::Exfiltrate => exfiltrate::run(duration, sink),
        }
    }
}

/// Longest scenario accepted, in seconds.
pub const MAX_DURATION_S: f64 = 600.0;

/// `--duration`: seconds, 1 to [`MAX_DURATION_S`] (the range is the scenario's own, not the
/// wider one of an interval).
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(1.0..=MAX_DURATION_S).contains(&v) {
        return Err(format!("{s} s is out of range: a scenario lasts 1 to {MAX_DURATION_S} s"));
    }
    Ok(v)
}

/// How long any one database call of `scenario` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// The workload to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Seconds the workload runs (1 to 600).
    #[arg(long, default_value_t = 30.0, value_parser = parse_duration)]
    pub duration: f64,
    /// The interval of the agent writing this node's rows [default: read from the node's rows,
    /// which also win over this value when they differ, with a warning].
    #[arg(long, env = "INTERVAL", value_parser = parse_interval)]
    pub interval: Option<f64>,
    /// Directory for disk-burst's temporary file; it must be on a disk the agent measures.
    #[arg(long, default_value = "/var/tmp")]
    pub scratch_dir: PathBuf,
    /// Record the window without waiting for the agent's rows or labelling them.
    #[arg(long)]
    pub no_label: bool,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

/// What one scenario run did; printed as JSON.
#[derive(Debug, serde::Serialize)]
pub struct ScenarioReport {
    pub id: i64,
    pub scenario: &'static str,
    pub node: String,
    pub started_at: String,
    pub ended_at: String,
    pub rows_labelled: u64,
    pub details: Value,
}

/// One scenario run as the drill and the command describe it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub scenario: Scenario,
    pub duration_s: f64,
    /// The agent's interval as the caller believes it; the node's rows say what it is.
    pub interval_s: Option<f64>,
    pub scratch_dir: PathBuf,
    pub label: bool,
    /// The pod the workload runs in (a child process of this binary joins it); None: here.
    pub pod: Option<crate::pod::LabPod>,
    /// Where bulk-transfer or exfiltrate sends; None: a peer of its own.
    pub sink: Option<std::net::SocketAddr>,
}

/// `feature-lab scenario-workload NAME` (hidden): the workload alone, its details as JSON on
/// stdout; how the drill runs a scenario inside a pod (the child joins the pod's cgroup before
/// it execs this binary).
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_parser = parse_duration)]
    pub duration: f64,
    #[arg(long)]
    pub scratch_dir: PathBuf,
    /// Where bulk-transfer or exfiltrate sends.
    #[arg(long)]
    pub sink: Option<std::net::SocketAddr>,
}

pub fn workload_command(args: WorkloadArgs) -> anyhow::Result<()> {
    // Ctrl-C reaches the whole process group: the workload ends early and says what it did.
    crate::interrupt::catch();
    let details = args.scenario.run_workload(Duration::from_secs_f64(args.duration), &args.scratch_dir, args.sink)?;
    println!("{details}");
    Ok(())
}

/// Runs the workload in `pod` as a child process of this binary; returns its details.
fn run_in_pod(
    pod: &crate::pod::LabPod,
    scenario: Scenario,
    duration_s: f64,
    dir: &std::path::Path,
    sink: Option<std::net::SocketAddr>,
) -> anyhow::Result<Value> {
    // This binary by its path: through `ip netns exec`, /proc/self/exe would be `ip` itself.
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut command = pod.command(exe);
    command
        .args(["scenario-workload", scenario.name(), "--duration", &duration_s.to_string(), "--scratch-dir"])
        .arg(dir);
    if let Some(sink) = sink {
        command.arg("--sink").arg(sink.to_string());
    }
    let out = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting the workload in pod {}", pod.full_name()))?;
    if !out.status.success() {
        anyhow::bail!("the workload in pod {} failed ({})", pod.full_name(), out.status);
    }
    let mut details: Value = serde_json::from_slice(&out.stdout).context("reading the workload's details")?;
    details["pod"] = Value::String(pod.full_name());
    Ok(details)
}

pub async fn command(args: ScenarioArgs) -> anyhow::Result<()> {
    let node = args.node.resolve()?;
    let client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    client.require_current().await?;
    let spec = RunSpec {
        scenario: args.scenario,
        duration_s: args.duration,
        interval_s: args.interval,
        scratch_dir: args.scratch_dir,
        label: !args.no_label,
        pod: None,
        sink: None,
    };
    let report = run(&client, &spec, &node).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs one scenario and records and labels its window, holding the node's scenario lock (two
/// scenarios at once on one node would label each other's rows).
pub async fn run(client: &Client, spec: &RunSpec, node: &str) -> anyhow::Result<ScenarioReport> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&SCENARIO_LOCK, &node])
        .await
        .context("taking the node's scenario lock")?
        .get(0);
    if !locked {
        anyhow::bail!(
            "another scenario is running on node {node:?}: two at once would overwrite each other's labels; wait for it to end"
        );
    }
    let result = run_locked(client, spec, node).await;
    let _ = client.execute("SELECT pg_advisory_unlock($1, hashtext($2))", &[&SCENARIO_LOCK, &node]).await;
    result
}

/// The advisory lock class of "a scenario runs on this node" (the node's name hashed is the
/// lock's second key).
const SCENARIO_LOCK: i32 = 0x5c3e_0a71;

/// The node's sampling interval, from its newest rows, checking first that an agent writes
/// them now (its newest row is at most two intervals and 10 s old): a scenario on a node no
/// agent writes would learn it only after its whole workload. `believed` (--interval) is only
/// checked against it.
async fn node_interval(client: &Client, node: &str, believed: Option<f64>) -> anyhow::Result<f64> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM now() - max(ts))::float8,
                    percentile_disc(0.5) WITHIN GROUP (ORDER BY interval_s)
             FROM (SELECT ts, interval_s FROM node_features WHERE node = $1 ORDER BY ts DESC LIMIT 20) t",
            &[&node],
        )
        .await
        .context("reading the node's newest rows")?;
    let (age, interval): (Option<f64>, Option<f64>) = (row.get(0), row.get(1));
    let Some(age) = age else {
        anyhow::bail!(
            "node {node:?} has no rows: is an agent writing this node's rows (--node-name)? Nothing was run (--no-label runs and records a window without rows)"
        );
    };
    // Rows carry the elapsed time of their interval (1.0005 s for a 1 s agent): to 10 ms.
    let Some(interval) = interval.map(|i| (i * 100.0).round() / 100.0).or(believed) else {
        anyhow::bail!("node {node:?}'s rows have no interval yet (its agent just started): try again in a moment");
    };
    if age > 2.0 * interval + 10.0 {
        anyhow::bail!(
            "the newest row of node {node:?} is {age:.0} s old (its interval is {interval} s): is its agent running? Nothing was run"
        );
    }
    if let Some(b) = believed.filter(|b| (b - interval).abs() > 0.05 * interval) {
        warn!(
            node,
            given_s = b,
            rows_s = interval,
            "--interval differs from the node's rows; using the rows' interval"
        );
    }
    Ok(interval)
}

async fn run_locked(client: &Client, spec: &RunSpec, node: &str) -> anyhow::Result<ScenarioReport> {
    let scenario = spec.scenario;
    let interval = match spec.label {
        true => node_interval(client, node, spec.interval_s).await?,
        false => spec.interval_s.unwrap_or(10.0),
    };
    // From here a Ctrl-C or SIGTERM ends the workload early; what ran is still recorded.
    crate::interrupt::catch();
    let duration = Duration::from_secs_f64(spec.duration_s);
    info!(scenario = scenario.name(), node, duration_s = spec.duration_s, "scenario starting");
    let started = SystemTime::now();
    let dir = spec.scratch_dir.clone();
    let pod = spec.pod.clone();
    let (duration_s, sink) = (spec.duration_s, spec.sink);
    let details = tokio::task::spawn_blocking(move || match &pod {
        Some(pod) => run_in_pod(pod, scenario, duration_s, &dir, sink),
        None => scenario.run_workload(duration, &dir, sink),
    })
    .await
    .context("the scenario's workload panicked")?
    .with_context(|| format!("scenario {}", scenario.name()))?;
    let ended = SystemTime::now();
    let interrupted = crate::interrupt::requested();
    let mut details = details;
    if interrupted {
        details["interrupted"] = Value::Bool(true);
    }
    if spec.label {
        wait_for_cover(client, node, ended, interval).await?;
    }
    let id: i64 = client
        .query_one(
            "INSERT INTO scenario_runs (node, name, started_at, ended_at, interval_s, details)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) RETURNING id",
            &[&node, &scenario.name(), &started, &ended, &interval, &details.to_string()],
        )
        .await
        .context("recording the scenario run")?
        .get(0);
    let rows_labelled = if !spec.label { 0 } else { label_window(client, id).await? };
    info!(scenario = scenario.name(), rows_labelled, %details, "scenario done");
    if spec.label && rows_labelled == 0 {
        anyhow::bail!(
            "scenario run {id} is recorded, but its window covers no row of node {node:?}: nothing was labelled"
        );
    }
    if interrupted {
        anyhow::bail!(
            "interrupted: the {:.1} s that ran are recorded as scenario run {id}, {rows_labelled} rows labelled",
            ended.duration_since(started).unwrap_or_default().as_secs_f64()
        );
    }
    Ok(ScenarioReport {
        id,
        scenario: scenario.name(),
        node: node.to_owned(),
        started_at: rfc3339_micros(started),
        ended_at: rfc3339_micros(ended),
        rows_labelled,
        details,
    })
}

/// Waits for the row covering the window's end (an interval plus a grace period). Without it
/// no agent is writing this node's rows: the run is an error, and nothing is recorded.
async fn wait_for_cover(client: &Client, node: &str, ended: SystemTime, interval: f64) -> anyhow::Result<()> {
    let grace = Duration::from_secs_f64(interval.min(5.0) + 2.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(interval) + grace;
    loop {
        let covered: bool = client
            .query_one("SELECT EXISTS (SELECT 1 FROM node_features WHERE node = $1 AND ts >= $2)", &[&node, &ended])
            .await
            .context("looking for the agent's rows")?
            .get(0);
        if covered {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no row of node {node:?} covers the scenario's end: is an agent writing this node's rows (--node-name) at a {interval} s interval (--interval)? The run was not recorded (--no-label records a window without rows)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Labels the rows overlapping a recorded run's window (the rule of [`crate::window::overlaps`]):
/// the node's, and when the run was in a pod (details.pod = namespace/name), that pod's rows.
/// Returns the node rows labelled.
pub async fn label_window(client: &Client, id: i64) -> anyhow::Result<u64> {
    client
        .execute(
            &format!(
                "WITH r AS (SELECT * FROM scenario_runs WHERE id = $1 AND details ? 'pod')
                 UPDATE pod_features f SET attack = 1, attack_type = r.name
                 FROM r
                 WHERE f.node = r.node AND f.namespace || '/' || f.pod = r.details->>'pod' AND {}",
                crate::window::overlaps("f", "r.started_at", "r.ended_at")
            ),
            &[&id],
        )
        .await
        .context("labelling the scenario's pod rows")?;
    let n = client
        .execute(
            &format!(
                "WITH r AS (SELECT * FROM scenario_runs WHERE id = $1)
                 UPDATE node_features f SET attack = 1, attack_type = r.name
                 FROM r
                 WHERE f.node = r.node AND {}",
                crate::window::overlaps("f", "r.started_at", "r.ended_at")
            ),
            &[&id],
        )
        .await
        .context("labelling the scenario's rows")?;
    client
        .execute("UPDATE scenario_runs SET labelled = $2 WHERE id = $1", &[&id, &(n as i32)])
        .await
        .context("recording the labelled rows")?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out-of-range durations name the scenario's range, whatever made them so.
    #[test]
    fn durations_out_of_range_name_the_scenarios_range() {
        assert_eq!(parse_duration("30").unwrap(), 30.0);
        for bad in ["0", "0.5", "601", "86400", "nan", "inf", "-3"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("1 to 600"), "{bad}: {e}");
        }
        assert!(parse_duration("x").unwrap_err().contains("not a number"));
    }
}
