//! `feature-lab evaluate`: compares verdicts with labels over a window, per scenario.
//!
//! Two detectors are scored: the agent's streaming detector (a row is positive when its
//! `anomalous_features` is non-empty; rows still in warm-up are left out) and the SQL z-score
//! flags (`node_feature_flags(threshold)`, baseline = the window's rows labelled normal).
//! Per scenario (attack_type): TP = its rows flagged, FN = its rows not flagged, FP = normal
//! rows flagged (the same for every scenario: a false alarm is not any one attack's), and
//! precision, recall and F1 from those. Detection delay = first flagged row of a run's window
//! minus the run's start (a row stamped ts covers the interval ending at ts), averaged over
//! the runs detected.
//!
//! When the agent wrote pod rows, its verdicts on them are scored too, per run that ran inside
//! a pod (`scenario_runs.details.pod`, as the drill's do): detected when the attacking pod was
//! flagged in the run's window (delay from the run's start), attributed when in the first such
//! interval no other pod or service was flagged with it. The SQL z-scores of the pod rows
//! (`pod_feature_zscores`: each pod against its own normal rows; a pod is flagged in an
//! interval when any of its features has |z| above the SQL threshold) are scored the same way,
//! on the same rows.
//!
//! False alarms are reported on their own, per detector: the normal rows it judged, how many it
//! flagged, that as a rate and as alarms per node-hour at a 10 s interval (rate x 360: the unit
//! an on-call engineer feels), and which features raised them.
use std::{collections::BTreeMap, time::SystemTime};

use anyhow::Context;
use clap::Args;
use feature_db::deadline::Db as Client;
use serde::Serialize;

use crate::window::TimeWindow;
use feature_db::DatabaseArgs;

/// How long any one database call of `evaluate` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Only this node's rows [default: every node].
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub window: TimeWindow,
    /// |z| threshold of the SQL flags (the paper's 2.0 by default).
    #[arg(long, default_value_t = 2.0, value_parser = feature_db::parse_positive, allow_negative_numbers = true)]
    pub sql_threshold: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

/// One labelled or unlabelled row and the two verdicts on it.
#[derive(Debug, Clone)]
pub struct JudgedRow {
    pub node: String,
    pub ts: SystemTime,
    pub attack_type: Option<String>,
    pub attack: bool,
    /// None while the agent's detector warmed up.
    pub detector: Option<bool>,
    pub sql: bool,
    /// The features each detector flagged on this row.
    pub detector_features: Vec<String>,
    pub sql_features: Vec<String>,
    /// The pods (namespace/pod, or a unit) the agent flagged in this interval; None without
    /// pod rows.
    pub pods: Option<Vec<String>>,
    /// The pods the SQL pod z-scores flag in this interval; None without pod rows.
    pub sql_pods: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub node: String,
    pub name: String,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    pub interval_s: f64,
    /// The pod it ran in (namespace/name), if it ran in one.
    pub pod: Option<String>,
}

/// The agent's verdicts on pod rows, for the runs of one scenario that ran in a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PodScore {
    /// Runs that ran inside a pod, with pod rows to judge.
    pub runs_in_pods: u64,
    /// Runs whose pod was flagged in their window.
    pub detected: u64,
    /// Runs detected with no other pod or service flagged in that first interval.
    pub attributed: u64,
    pub mean_delay_s: Option<f64>,
}

/// Scores the pod flags `flagged` gives (the agent's, or the SQL z-scores') on the runs.
fn pod_score(rows: &[JudgedRow], runs: &[&Run], flagged: impl Fn(&JudgedRow) -> Option<&Vec<String>>) -> PodScore {
    let mut s = PodScore::default();
    let mut delays = Vec::new();
    for run in runs {
        let Some(pod) = &run.pod else { continue };
        let end = run.ended_at + std::time::Duration::from_secs_f64(run.interval_s);
        let mut window =
            rows.iter().filter(|r| r.node == run.node && r.ts > run.started_at && r.ts < end).filter_map(|r| {
                let flagged = flagged(r)?;
                Some((r.ts, flagged))
            });
        let mut judged = false;
        let first = window.find(|(_, flagged)| {
            judged = true;
            flagged.iter().any(|p| p == pod)
        });
        if !judged && first.is_none() {
            continue;
        }
        s.runs_in_pods += 1;
        if let Some((ts, flagged)) = first {
            s.detected += 1;
            delays.push(ts.duration_since(run.started_at).unwrap_or_default().as_secs_f64());
            if flagged.iter().all(|p| p == pod) {
                s.attributed += 1;
            }
        }
    }
    s.mean_delay_s = (!delays.is_empty()).then(|| delays.iter().sum::<f64>() / delays.len() as f64);
    s
}

/// Precision, recall, F1 and delay of one detector on one scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub runs_detected: u64,
    pub mean_delay_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioScore {
    pub scenario: String,
    pub runs: u64,
    pub rows: u64,
    pub detector: Score,
    pub sql: Score,
    pub pods: PodScore,
    pub sql_pods: PodScore,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn score(rows: &[JudgedRow], runs: &[&Run], name: &str, verdict: impl Fn(&JudgedRow) -> Option<bool>) -> Score {
    let mut s = Score::default();
    for r in rows {
        let Some(flagged) = verdict(r) else { continue };
        match (r.attack && r.attack_type.as_deref() == Some(name), r.attack, flagged) {
            (true, _, true) => s.tp += 1,
            (true, _, false) => s.fn_ += 1,
            (false, false, true) => s.fp += 1,
            _ => {}
        }
    }
    s.precision = ratio(s.tp, s.tp + s.fp);
    s.recall = ratio(s.tp, s.tp + s.fn_);
    s.f1 = match (s.precision, s.recall) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    let mut delays = Vec::new();
    for run in runs {
        let end = run.ended_at + std::time::Duration::from_secs_f64(run.interval_s);
        let first = rows
            .iter()
            .filter(|r| r.node == run.node && r.ts > run.started_at && r.ts < end)
            .find(|r| verdict(r) == Some(true));
        if let Some(r) = first {
            delays.push(r.ts.duration_since(run.started_at).unwrap_or_default().as_secs_f64());
        }
    }
    s.runs_detected = delays.len() as u64;
    s.mean_delay_s = (!delays.is_empty()).then(|| delays.iter().sum::<f64>() / delays.len() as f64);
    s
}

/// One detector's false alarms: flagged rows labelled normal.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FalseAlarms {
    /// Normal rows the detector judged.
    pub normal_rows: u64,
    pub false_alarms: u64,
    /// false_alarms / normal_rows.
    pub rate: Option<f64>,
    /// The rate as alarms per node-hour at a 10 s interval (360 rows an hour).
    pub per_hour_at_10s: Option<f64>,
    /// Feature -> false alarms it took part in, most first.
    pub by_feature: Vec<(String, u64)>,
}

/// Both detectors' false alarms, and the pod verdicts'.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FalseAlarmReport {
    pub detector: FalseAlarms,
    pub sql: FalseAlarms,
    /// Pod and service rows flagged in normal intervals (each flagged pod is one alarm), over
    /// the normal intervals that had pod rows; None without pod rows.
    pub pods: Option<FalseAlarms>,
    /// The node's alarms and its pods' together, over the same intervals: what an on-call
    /// engineer receives.
    pub node_and_pods: Option<FalseAlarms>,
    /// Pod and service rows the SQL pod z-scores flag in normal intervals.
    pub sql_pods: Option<FalseAlarms>,
}

fn false_alarms<'r>(rows: impl Iterator<Item = (Option<bool>, &'r [String])>) -> FalseAlarms {
    let mut fa = FalseAlarms::default();
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for (verdict, features) in rows {
        let Some(flagged) = verdict else { continue };
        fa.normal_rows += 1;
        if flagged {
            fa.false_alarms += 1;
            for f in features {
                *by.entry(f).or_default() += 1;
            }
        }
    }
    fa.rate = ratio(fa.false_alarms, fa.normal_rows);
    fa.per_hour_at_10s = fa.rate.map(|r| r * 360.0);
    let mut by: Vec<(String, u64)> = by.into_iter().map(|(f, n)| (f.to_owned(), n)).collect();
    by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    fa.by_feature = by;
    fa
}

/// The false alarms of both detectors over the normal rows.
pub fn false_alarm_report(rows: &[JudgedRow]) -> FalseAlarmReport {
    let normal = || rows.iter().filter(|r| !r.attack);
    let with_pods = || normal().filter(|r| r.pods.is_some());
    let alarms = |include_node: bool, flagged: &dyn Fn(&JudgedRow) -> Option<&Vec<String>>| {
        let mut fa = FalseAlarms::default();
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for r in with_pods() {
            fa.normal_rows += 1;
            let pods = flagged(r).map(Vec::as_slice).unwrap_or_default();
            fa.false_alarms += pods.len() as u64;
            for p in pods {
                *by.entry(p.clone()).or_default() += 1;
            }
            if include_node && r.detector == Some(true) {
                fa.false_alarms += 1;
                *by.entry("(node)".to_owned()).or_default() += 1;
            }
        }
        fa.rate = ratio(fa.false_alarms, fa.normal_rows);
        fa.per_hour_at_10s = fa.rate.map(|r| r * 360.0);
        let mut by: Vec<(String, u64)> = by.into_iter().collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        fa.by_feature = by;
        fa
    };
    let any_pods = with_pods().next().is_some();
    FalseAlarmReport {
        detector: false_alarms(normal().map(|r| (r.detector, r.detector_features.as_slice()))),
        sql: false_alarms(normal().map(|r| (Some(r.sql), r.sql_features.as_slice()))),
        pods: any_pods.then(|| alarms(false, &|r| r.pods.as_ref())),
        node_and_pods: any_pods.then(|| alarms(true, &|r| r.pods.as_ref())),
        sql_pods: any_pods.then(|| alarms(false, &|r| r.sql_pods.as_ref())),
    }
}

/// Scores both detectors per scenario name found in `runs` (in first-run order).
pub fn evaluate(rows: &[JudgedRow], runs: &[Run]) -> Vec<ScenarioScore> {
    let mut by_name: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in runs {
        if !by_name.contains_key(r.name.as_str()) {
            order.push(&r.name);
        }
        by_name.entry(&r.name).or_default().push(r);
    }
    order
        .into_iter()
        .map(|name| {
            let runs = &by_name[name];
            ScenarioScore {
                scenario: name.to_owned(),
                runs: runs.len() as u64,
                rows: rows.iter().filter(|r| r.attack && r.attack_type.as_deref() == Some(name)).count() as u64,
                detector: score(rows, runs, name, |r| r.detector),
                sql: score(rows, runs, name, |r| Some(r.sql)),
                pods: pod_score(rows, runs, |r| r.pods.as_ref()),
                sql_pods: pod_score(rows, runs, |r| r.sql_pods.as_ref()),
            }
        })
        .collect()
}

/// Reads the window's rows with both verdicts, and the scenario runs inside it.
pub async fn load(
    client: &Client,
    node: Option<&str>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    sql_threshold: f64,
) -> anyhow::Result<(Vec<JudgedRow>, Vec<Run>)> {
    // The SQL flags, computed on their own (scores.rs says why).
    crate::scores::materialize(
        client,
        "evaluate_flags",
        &format!("SELECT * FROM node_feature_flags({sql_threshold:?}::float8, $2, $3, false, $1)"),
        node,
        from,
        to,
    )
    .await?;
    let rows = client
        .query(
            "SELECT f.node, f.ts, f.attack, f.attack_type,
                    CASE WHEN f.anomaly_score IS NULL THEN NULL
                         ELSE coalesce(cardinality(f.anomalous_features), 0) > 0 END,
                    coalesce(z.anomalous, false),
                    coalesce(f.anomalous_features, '{}'), coalesce(z.anomalous_features, '{}'),
                    f.anomalous_pods
             FROM node_features f
             LEFT JOIN evaluate_flags z ON z.node = f.node AND z.ts = f.ts
             WHERE ($1::text IS NULL OR f.node = $1)
               AND ($2::timestamptz IS NULL OR f.ts >= $2)
               AND ($3::timestamptz IS NULL OR f.ts <= $3)
             ORDER BY f.node, f.ts",
            &[&node, &from, &to],
        )
        .await
        .context("reading the rows and their verdicts")?
        .into_iter()
        .map(|r| JudgedRow {
            node: r.get(0),
            ts: r.get(1),
            attack: r.get::<_, i16>(2) == 1,
            attack_type: r.get(3),
            detector: r.get(4),
            sql: r.get(5),
            detector_features: r.get(6),
            sql_features: r.get(7),
            pods: r.get(8),
            sql_pods: None,
        })
        .collect::<Vec<_>>();
    let mut rows = rows;
    // The SQL pod flags: every pod or service row with a feature beyond the threshold.
    let flagged: BTreeMap<(String, SystemTime), Vec<String>> = client
        .query(
            "SELECT node, ts, array_agg(DISTINCT CASE WHEN namespace IS NOT NULL AND pod IS NOT NULL
                                                  THEN namespace || '/' || pod ELSE owner END)
             FROM pod_feature_zscores
             WHERE kind <> 'other' AND abs(z) > $1
               AND ($2::text IS NULL OR node = $2)
               AND ($3::timestamptz IS NULL OR ts >= $3)
               AND ($4::timestamptz IS NULL OR ts <= $4)
             GROUP BY node, ts",
            &[&sql_threshold, &node, &from, &to],
        )
        .await
        .context("reading the SQL z-scores of the pod rows")?
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    for r in rows.iter_mut().filter(|r| r.pods.is_some()) {
        r.sql_pods = Some(flagged.get(&(r.node.clone(), r.ts)).cloned().unwrap_or_default());
    }
    let runs = client
        .query(
            "SELECT node, name, started_at, ended_at, interval_s, details->>'pod' FROM scenario_runs
             WHERE ($1::text IS NULL OR node = $1)
               AND ($2::timestamptz IS NULL OR ended_at >= $2)
               AND ($3::timestamptz IS NULL OR started_at <= $3)
             ORDER BY started_at",
            &[&node, &from, &to],
        )
        .await
        .context("reading scenario_runs")?
        .into_iter()
        .map(|r| Run {
            node: r.get(0),
            name: r.get(1),
            started_at: r.get(2),
            ended_at: r.get(3),
            interval_s: r.get(4),
            pod: r.get(5),
        })
        .collect();
    Ok((rows, runs))
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// The false alarms as two lines under the table.
pub fn false_alarm_lines(report: &FalseAlarmReport, sql_threshold: f64) -> String {
    let line = |who: &str, fa: &FalseAlarms| {
        let features: Vec<String> = fa.by_feature.iter().take(6).map(|(f, n)| format!("{f} {n}")).collect();
        format!(
            "{who}: {} false alarms in {} normal rows ({} %, {} per node-hour at 10 s){}\n",
            fa.false_alarms,
            fa.normal_rows,
            fmt(fa.rate.map(|r| r * 100.0), 2),
            fmt(fa.per_hour_at_10s, 1),
            if features.is_empty() { String::new() } else { format!("; by feature: {}", features.join(", ")) }
        )
    };
    let mut out = line("detector", &report.detector) + &line(&format!("SQL |z|>{sql_threshold}"), &report.sql);
    if let (Some(pods), Some(both)) = (&report.pods, &report.node_and_pods) {
        let pod_line = |who: &str, fa: &FalseAlarms| {
            let top: Vec<String> = fa.by_feature.iter().take(6).map(|(p, n)| format!("{p} {n}")).collect();
            format!(
                "{who}: {} false alarms in {} normal intervals ({} per node-hour at 10 s){}\n",
                fa.false_alarms,
                fa.normal_rows,
                fmt(fa.per_hour_at_10s, 1),
                if top.is_empty() { String::new() } else { format!("; by pod: {}", top.join(", ")) }
            )
        };
        out += &pod_line("pod verdicts", pods);
        out += &pod_line("node + pods", both);
        if let Some(sql_pods) = &report.sql_pods {
            out += &pod_line(&format!("SQL pod |z|>{sql_threshold}"), sql_pods);
        }
    }
    out
}

/// The scores as a Markdown table (the README's table is this output).
pub fn table(scores: &[ScenarioScore], sql_threshold: f64) -> String {
    let mut out = format!(
        "| scenario | runs | rows | detector F1 | detector P / R | detector delay s | detected | SQL \\|z\\|>{sql_threshold} F1 | SQL P / R | SQL delay s | in its pod: detected | attributed | pod delay s | SQL pod \\|z\\|>{sql_threshold}: detected | attributed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for s in scores {
        out += &format!(
            "| {} | {} | {} | {} | {} / {} | {} | {}/{} | {} | {} / {} | {} | {}/{} | {}/{} | {} | {}/{} | {}/{} |\n",
            s.scenario,
            s.runs,
            s.rows,
            fmt(s.detector.f1, 2),
            fmt(s.detector.precision, 2),
            fmt(s.detector.recall, 2),
            fmt(s.detector.mean_delay_s, 1),
            s.detector.runs_detected,
            s.runs,
            fmt(s.sql.f1, 2),
            fmt(s.sql.precision, 2),
            fmt(s.sql.recall, 2),
            fmt(s.sql.mean_delay_s, 1),
            s.pods.detected,
            s.pods.runs_in_pods,
            s.pods.attributed,
            s.pods.runs_in_pods,
            fmt(s.pods.mean_delay_s, 1),
            s.sql_pods.detected,
            s.sql_pods.runs_in_pods,
            s.sql_pods.attributed,
            s.sql_pods.runs_in_pods,
        );
    }
    out
}

/// Windows labelled by hand (rows labelled attack whose attack_type no scenario run of the window
/// names, which is how a real attack gets into a dataset) as runs of their own: each stretch of
/// consecutive rows of one node with one attack_type is a run named by it, starting one interval
/// before its first row (a row covers the interval that ends at its ts) and ending at its last.
pub fn hand_labelled_runs(rows: &[JudgedRow], runs: &[Run]) -> Vec<Run> {
    let mut by_node: BTreeMap<&str, Vec<&JudgedRow>> = BTreeMap::new();
    for r in rows {
        by_node.entry(r.node.as_str()).or_default().push(r);
    }
    let mut out: Vec<Run> = Vec::new();
    for (node, mut node_rows) in by_node {
        node_rows.sort_by_key(|r| r.ts);
        // The node's interval: the smallest step between its rows (10 s if it has one row).
        let interval = node_rows
            .windows(2)
            .filter_map(|w| w[1].ts.duration_since(w[0].ts).ok())
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(std::time::Duration::from_secs(10));
        let mut i = 0;
        while i < node_rows.len() {
            let r = node_rows[i];
            let name = r.attack_type.clone().unwrap_or_else(|| "(no attack_type)".to_owned());
            if !r.attack || runs.iter().any(|run| run.name == name) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < node_rows.len()
                && node_rows[j + 1].attack
                && node_rows[j + 1].attack_type == r.attack_type
                && node_rows[j + 1].ts.duration_since(node_rows[j].ts).is_ok_and(|d| d <= interval * 3 / 2)
            {
                j += 1;
            }
            out.push(Run {
                node: node.to_owned(),
                name,
                started_at: r.ts - interval,
                ended_at: node_rows[j].ts,
                interval_s: interval.as_secs_f64(),
                pod: None,
            });
            i = j + 1;
        }
    }
    out
}

pub async fn command(args: EvaluateArgs) -> anyhow::Result<()> {
    let client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    client.require_current().await?;
    let (from, to) = args.window.resolve(&client).await?;
    let (rows, mut runs) = load(&client, args.node.as_deref(), from, to, args.sql_threshold).await?;
    if rows.is_empty() {
        if let Some(node) = &args.node {
            let known: Vec<String> = client
                .query("SELECT DISTINCT node FROM node_features ORDER BY 1 LIMIT 20", &[])
                .await
                .context("listing the nodes")?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            anyhow::bail!("no rows of node {node:?} in this window; nodes with rows: {}", known.join(", "));
        }
        anyhow::bail!("no rows in this window");
    }
    runs.extend(hand_labelled_runs(&rows, &runs));
    if runs.is_empty() {
        anyhow::bail!(
            "nothing to score in this window: no scenario runs and no rows labelled attack (`feature-lab scenario`, `drill`, or `label` first)"
        );
    }
    print_report(&rows, &runs, args.sql_threshold, args.json)
}

/// Rows labelled attack whose attack_type names no scenario run of the window (labelled by
/// hand, or their run is outside the window): not scored per scenario, and not normal rows
/// either; counted per attack_type so they are not silently lost.
pub fn unmatched_attack_rows(rows: &[JudgedRow], runs: &[Run]) -> Vec<(String, u64)> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.attack) {
        let name = r.attack_type.as_deref().unwrap_or("(no attack_type)");
        if !runs.iter().any(|run| run.name == name) {
            *by.entry(name.to_owned()).or_default() += 1;
        }
    }
    by.into_iter().collect()
}

/// What the report cannot score, said in words: rows no scenario run matches, and a window
/// whose rows are all in the detector's warm-up.
pub fn notes(rows: &[JudgedRow], runs: &[Run]) -> Vec<String> {
    let mut notes = Vec::new();
    let unmatched = unmatched_attack_rows(rows, runs);
    if !unmatched.is_empty() {
        let total: u64 = unmatched.iter().map(|(_, n)| n).sum();
        let types: Vec<String> = unmatched.iter().map(|(t, n)| format!("{t} {n}")).collect();
        notes.push(format!(
            "{total} rows labelled attack match no scenario run in the window ({}): not scored per scenario, and left out of the false alarms",
            types.join(", ")
        ));
    }
    if !rows.is_empty() && rows.iter().all(|r| r.detector.is_none()) {
        notes.push(
            "the agent's detector judged none of these rows: they are all in its warm-up (--detector-warmup, 300 s by default), so its columns are empty; run longer, or give the agent a shorter warm-up".to_owned(),
        );
    }
    notes
}

/// Prints the per-scenario scores and the false alarms, as a table and two lines or as JSON
/// (`{"scenarios": [...], "false_alarms": {"detector": ..., "sql": ...}, "unmatched_attack_rows":
/// [[type, rows], ...], "notes": [...]}`).
pub fn print_report(rows: &[JudgedRow], runs: &[Run], sql_threshold: f64, json: bool) -> anyhow::Result<()> {
    let scores = evaluate(rows, runs);
    let fa = false_alarm_report(rows);
    let notes = notes(rows, runs);
    if json {
        let report = serde_json::json!({
            "scenarios": scores,
            "false_alarms": fa,
            "unmatched_attack_rows": unmatched_attack_rows(rows, runs),
            "notes": notes,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}\n{}", table(&scores, sql_threshold), false_alarm_lines(&fa, sql_threshold));
        for n in notes {
            println!("note: {n}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn row(s: u64, label: Option<&str>, detector: Option<bool>, sql: bool) -> JudgedRow {
        JudgedRow {
            node: "n".into(),
            ts: at(s),
            attack: label.is_some(),
            attack_type: label.map(str::to_owned),
            detector,
            sql,
            detector_features: if detector == Some(true) { vec!["load1".into()] } else { vec![] },
            sql_features: if sql { vec!["open_fds".into(), "load1".into()] } else { vec![] },
            pods: None,
            sql_pods: None,
        }
    }

    /// A window labelled by hand is scored as a run of its attack_type: one per stretch of
    /// consecutive rows, named windows of scenario runs left to those runs.
    #[test]
    fn windows_labelled_by_hand_are_scored_as_runs() {
        let rows = vec![
            row(10, None, Some(false), false),
            row(20, Some("exfil"), Some(false), false),
            row(30, Some("exfil"), Some(true), true),
            row(40, None, Some(false), false),
            row(50, Some("exfil"), Some(true), false),
            row(60, Some("x"), Some(true), false),
        ];
        let scenario = Run {
            node: "n".into(),
            name: "x".into(),
            started_at: at(55),
            ended_at: at(60),
            interval_s: 10.0,
            pod: None,
        };
        let hand = hand_labelled_runs(&rows, std::slice::from_ref(&scenario));
        assert_eq!(hand.len(), 2, "{hand:?}");
        assert_eq!((hand[0].name.as_str(), hand[0].started_at, hand[0].ended_at), ("exfil", at(10), at(30)));
        assert_eq!((hand[1].started_at, hand[1].ended_at, hand[1].interval_s), (at(40), at(50), 10.0));
        let mut runs = vec![scenario];
        runs.extend(hand);
        let scores = evaluate(&rows, &runs);
        let exfil = scores.iter().find(|s| s.scenario == "exfil").unwrap();
        assert_eq!((exfil.runs, exfil.rows, exfil.detector.runs_detected), (2, 3, 2));
        assert!(unmatched_attack_rows(&rows, &runs).is_empty());
    }

    #[test]
    fn counts_precision_recall_f1_and_delay() {
        // Warm-up row (detector None), normal rows (one false alarm each), a 3-row attack
        // window detected from its 2nd row by the detector, from its 1st by SQL.
        let rows = vec![
            row(1, None, None, true),
            row(2, None, Some(true), false),
            row(3, None, Some(false), false),
            row(4, Some("x"), Some(false), true),
            row(5, Some("x"), Some(true), true),
            row(6, Some("x"), Some(true), false),
            row(7, None, Some(false), false),
        ];
        let runs = vec![Run {
            node: "n".into(),
            name: "x".into(),
            started_at: at(3) + Duration::from_millis(500),
            ended_at: at(5) + Duration::from_millis(500),
            interval_s: 1.0,
            pod: None,
        }];
        let s = &evaluate(&rows, &runs)[0];
        assert_eq!((s.runs, s.rows), (1, 3));
        let d = &s.detector;
        assert_eq!((d.tp, d.fp, d.fn_), (2, 1, 1));
        assert_eq!(d.precision, Some(2.0 / 3.0));
        assert_eq!(d.recall, Some(2.0 / 3.0));
        assert!((d.f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((d.runs_detected, d.mean_delay_s), (1, Some(1.5)));
        let q = &s.sql;
        assert_eq!((q.tp, q.fp, q.fn_), (2, 1, 1));
        assert_eq!(q.mean_delay_s, Some(0.5));
        assert!(table(std::slice::from_ref(s), 2.0).contains("| x | 1 | 3 | 0.67 |"));
        // False alarms: the detector judged 3 normal rows (row 1 was warm-up) and flagged one;
        // SQL judged 4 and flagged one (row 1).
        let fa = false_alarm_report(&rows);
        assert_eq!((fa.detector.normal_rows, fa.detector.false_alarms), (3, 1));
        assert_eq!(fa.detector.per_hour_at_10s, Some(120.0));
        assert_eq!(fa.detector.by_feature, vec![("load1".to_owned(), 1)]);
        assert_eq!((fa.sql.normal_rows, fa.sql.false_alarms), (4, 1));
        assert_eq!(fa.sql.by_feature, vec![("load1".to_owned(), 1), ("open_fds".to_owned(), 1)]);
        let lines = false_alarm_lines(&fa, 2.0);
        assert!(
            lines.contains(
                "detector: 1 false alarms in 3 normal rows (33.33 %, 120.0 per node-hour at 10 s); by feature: load1 1"
            ),
            "{lines}"
        );
    }

    #[test]
    fn a_missed_scenario_has_zero_recall_and_no_delay() {
        let rows = vec![row(1, Some("y"), Some(false), false), row(2, None, Some(false), false)];
        let runs = vec![Run {
            node: "n".into(),
            name: "y".into(),
            started_at: at(0),
            ended_at: at(1),
            interval_s: 1.0,
            pod: None,
        }];
        let s = &evaluate(&rows, &runs)[0].detector;
        assert_eq!((s.recall, s.precision, s.f1, s.mean_delay_s), (Some(0.0), None, None, None));
    }

    /// A run inside pod shop/app-0: detected in its second interval, together with a
    /// neighbour in the first run (not attributed), alone in the second (attributed); a normal
    /// interval with two pods flagged is two false alarms, and with the node's own, three.
    #[test]
    fn pod_verdicts_score_detection_attribution_and_false_alarms() {
        let pods = |names: &[&str]| Some(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>());
        let mut rows = vec![
            JudgedRow { pods: pods(&[]), ..row(1, None, Some(false), false) },
            JudgedRow { pods: pods(&[]), ..row(2, Some("x"), Some(false), false) },
            JudgedRow { pods: pods(&["shop/app-0", "lab/web-0"]), ..row(3, Some("x"), Some(true), false) },
            JudgedRow { pods: pods(&["lab/web-0", "kubelet.service"]), ..row(4, None, Some(true), false) },
            JudgedRow { pods: pods(&[]), ..row(5, Some("x"), Some(false), false) },
            JudgedRow { pods: pods(&["shop/app-0"]), ..row(6, Some("x"), Some(false), false) },
        ];
        let run = |start: u64, end: u64| Run {
            node: "n".into(),
            name: "x".into(),
            started_at: at(start) + Duration::from_millis(500),
            ended_at: at(end) + Duration::from_millis(500),
            interval_s: 1.0,
            pod: Some("shop/app-0".into()),
        };
        let s = &evaluate(&rows, &[run(1, 2), run(4, 5)])[0].pods;
        assert_eq!((s.runs_in_pods, s.detected, s.attributed), (2, 2, 1));
        assert_eq!(s.mean_delay_s, Some(1.5));
        let fa = false_alarm_report(&rows);
        let pods_fa = fa.pods.unwrap();
        assert_eq!((pods_fa.normal_rows, pods_fa.false_alarms), (2, 2));
        assert_eq!(fa.node_and_pods.unwrap().false_alarms, 3);
        // Without pod rows, nothing is said about pods.
        for r in &mut rows {
            r.pods = None;
        }
        assert_eq!(false_alarm_report(&rows).pods, None);
        assert_eq!(evaluate(&rows, &[run(1, 2)])[0].pods.runs_in_pods, 0);
    }

    #[test]
    fn unmatched_labels_and_an_unjudged_window_are_said() {
        let rows =
            vec![row(1, Some("x"), None, false), row(2, Some("by hand"), None, false), row(3, None, None, false)];
        let runs = vec![Run {
            node: "n".into(),
            name: "x".into(),
            started_at: at(0),
            ended_at: at(1),
            interval_s: 1.0,
            pod: None,
        }];
        assert_eq!(unmatched_attack_rows(&rows, &runs), vec![("by hand".to_owned(), 1)]);
        let notes = notes(&rows, &runs);
        assert!(
            notes[0].starts_with("1 rows labelled attack match no scenario run in the window (by hand 1)"),
            "{notes:?}"
        );
        assert!(notes[1].contains("all in its warm-up (--detector-warmup"), "{notes:?}");
        assert!(super::notes(&rows[..1], &runs[..0]).len() == 2);
    }
}
