//! `feature-lab scenario NAME`: runs a bounded, reproducible attack-like workload on this
//! node (loopback and a temporary file only), records its window in `scenario_runs`, and labels
//! the node's rows whose interval overlaps it (attack = 1, attack_type = NAME).
//!
//! A row stamped `ts` covers the interval (ts - interval, ts], so it overlaps the window
//! [start, end] when start < ts < end + interval. The command waits for the agent to write the
//! row that covers the window's end (at most an interval plus a grace period) before labelling.
mod conn_flood;
mod cpu_stress;
mod disk_burst;
mod exec_storm;
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
use serde_json::Value;
use tokio_postgres::Client;
use tracing::info;

use feature_db::{parse_interval, DatabaseArgs, NodeArgs};
use feature_schema::timefmt::rfc3339_micros;

/// The scenarios, by the names the command line and the labels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::CpuStress,
        Scenario::ForkStorm,
        Scenario::ExecStorm,
        Scenario::PortScan,
        Scenario::ConnFlood,
        Scenario::RawSocket,
        Scenario::DiskBurst,
        Scenario::Miner,
        Scenario::ReverseShell,
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
        }
    }

    /// Runs the workload for `duration` (blocking); returns what it did.
    pub fn run_workload(self, duration: Duration, scratch_dir: &std::path::Path) -> anyhow::Result<Value> {
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

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// The workload to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Seconds the workload runs (1 to 600).
    #[arg(long, default_value_t = 30.0, value_parser = parse_duration)]
    pub duration: f64,
    /// The interval of the agent writing this node's rows, to know which rows the window covers.
    #[arg(long, env = "INTERVAL", default_value_t = 10.0, value_parser = parse_interval)]
    pub interval: f64,
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
    /// The agent's interval.
    pub interval_s: f64,
    pub scratch_dir: PathBuf,
    pub label: bool,
    /// The pod the workload runs in (a child process of this binary joins it); None: here.
    pub pod: Option<crate::pod::LabPod>,
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
}

pub fn workload_command(args: WorkloadArgs) -> anyhow::Result<()> {
    let details = args.scenario.run_workload(Duration::from_secs_f64(args.duration), &args.scratch_dir)?;
    println!("{details}");
    Ok(())
}

/// Runs the workload in `pod` as a child process of this binary; returns its details.
fn run_in_pod(
    pod: &crate::pod::LabPod,
    scenario: Scenario,
    duration_s: f64,
    dir: &std::path::Path,
) -> anyhow::Result<Value> {
    let out = pod
        .command("/proc/self/exe")
        .args(["scenario-workload", scenario.name(), "--duration", &duration_s.to_string(), "--scratch-dir"])
        .arg(dir)
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
    let client = args.database.connect().await?;
    feature_db::migrate::require_current(&client).await?;
    let spec = RunSpec {
        scenario: args.scenario,
        duration_s: args.duration,
        interval_s: args.interval,
        scratch_dir: args.scratch_dir,
        label: !args.no_label,
        pod: None,
    };
    let report = run(&client, &spec, &node).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs one scenario and records and labels its window.
pub async fn run(client: &Client, spec: &RunSpec, node: &str) -> anyhow::Result<ScenarioReport> {
    let scenario = spec.scenario;
    let duration = Duration::from_secs_f64(spec.duration_s);
    info!(scenario = scenario.name(), node, duration_s = spec.duration_s, "scenario starting");
    let started = SystemTime::now();
    let dir = spec.scratch_dir.clone();
    let pod = spec.pod.clone();
    let duration_s = spec.duration_s;
    let details = tokio::task::spawn_blocking(move || match &pod {
        Some(pod) => run_in_pod(pod, scenario, duration_s, &dir),
        None => scenario.run_workload(duration, &dir),
    })
    .await
    .context("the scenario's workload panicked")?
    .with_context(|| format!("scenario {}", scenario.name()))?;
    let ended = SystemTime::now();
    let interval = spec.interval_s;
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

/// Labels the rows overlapping a recorded run's window: the node's, and when the run was in a
/// pod (details.pod = namespace/name), that pod's rows.
async fn label_window(client: &Client, id: i64) -> anyhow::Result<u64> {
    client
        .execute(
            "WITH r AS (SELECT * FROM scenario_runs WHERE id = $1 AND details ? 'pod')
             UPDATE pod_features f SET attack = 1, attack_type = r.name
             FROM r
             WHERE f.node = r.node AND f.namespace || '/' || f.pod = r.details->>'pod'
               AND f.ts > r.started_at
               AND f.ts < r.ended_at + r.interval_s * interval '1 second'",
            &[&id],
        )
        .await
        .context("labelling the scenario's pod rows")?;
    let n = client
        .execute(
            "WITH r AS (SELECT * FROM scenario_runs WHERE id = $1)
             UPDATE node_features f SET attack = 1, attack_type = r.name
             FROM r
             WHERE f.node = r.node AND f.ts > r.started_at
               AND f.ts < r.ended_at + r.interval_s * interval '1 second'",
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
