//! `feature-lab label`: marks the rows of a time window as an attack (attack = 1, with an
//! optional attack_type), or with --clear as normal again, on one node or all of them; with
//! --pod, the rows of one pod (or service) in pod_features instead of the node rows; with
//! --scenarios, re-applies the labels of the recorded scenario runs in the window (after a
//! --clear that wiped them). A row is in the window when its interval overlaps it, the rule the
//! scenarios label by (window.rs). A window with no rows to label is an error, not "0 rows".
//! Timestamps are parsed by Postgres (RFC 3339, or any timestamptz input it accepts).
use anyhow::{bail, Context};
use clap::Args;
use tracing::info;

use feature_db::DatabaseArgs;

use crate::window::{overlaps, timestamp};

/// How long any one database call of `label` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The node whose rows to label [default: every node].
    #[arg(long)]
    pub node: Option<String>,
    /// Start of the window (e.g. 2026-11-24T10:00:00Z). A row is in the window when the
    /// interval it covers (its ts minus its interval_s, to its ts) overlaps [--from, --to].
    #[arg(long)]
    pub from: String,
    /// End of the window.
    #[arg(long)]
    pub to: String,
    /// What kind of attack the window holds, stored in attack_type.
    #[arg(long, conflicts_with_all = ["clear", "scenarios"])]
    pub attack_type: Option<String>,
    /// Re-apply the labels of every scenario run recorded in scenario_runs that overlaps the
    /// window (its node rows, and its pod's rows when it ran in a pod).
    #[arg(long, conflicts_with_all = ["clear", "pod"])]
    pub scenarios: bool,
    /// Mark the window's rows as normal again (attack = 0, attack_type NULL).
    #[arg(long)]
    pub clear: bool,
    /// Label this pod's rows in pod_features (not the node rows): its UID, NAMESPACE/NAME, or a
    /// host service's systemd unit.
    #[arg(long)]
    pub pod: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

pub async fn command(args: LabelArgs) -> anyhow::Result<()> {
    let client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    client.require_current().await?;
    let from = timestamp(&client, "--from", &args.from).await?;
    let to = timestamp(&client, "--to", &args.to).await?;
    if from > to {
        bail!("--from {} is after --to {}", args.from, args.to);
    }
    if args.scenarios {
        return reapply_scenarios(&client, args.node.as_deref(), from, to).await;
    }
    let (attack, attack_type): (i16, Option<&str>) =
        if args.clear { (0, None) } else { (1, args.attack_type.as_deref()) };
    let window = overlaps("f", "$3", "$4");
    let n = match &args.pod {
        None => client
            .execute(
                &format!(
                    "UPDATE node_features f SET attack = $1, attack_type = $2
                     WHERE {window} AND ($5::text IS NULL OR f.node = $5)"
                ),
                &[&attack, &attack_type, &from, &to, &args.node],
            )
            .await
            .context("labelling rows")?,
        Some(pod) => client
            .execute(
                &format!(
                    "UPDATE pod_features f SET attack = $1, attack_type = $2
                     WHERE {window} AND ($5::text IS NULL OR f.node = $5)
                       AND (f.owner = $6 OR f.namespace || '/' || f.pod = $6)"
                ),
                &[&attack, &attack_type, &from, &to, &args.node, pod],
            )
            .await
            .context("labelling pod rows")?,
    };
    if n == 0 {
        let whose = match (&args.pod, &args.node) {
            (Some(pod), _) => format!("--pod {pod:?}: no rows of that pod (UID, NAMESPACE/NAME or unit)"),
            (None, Some(node)) => format!("--node {node:?}: no rows of that node"),
            (None, None) => "no rows of any node".to_owned(),
        };
        bail!("{whose} in this window; nothing labelled");
    }
    if args.clear {
        let runs: i64 = client
            .query_one(
                "SELECT count(*) FROM scenario_runs
                 WHERE started_at <= $2 AND ended_at >= $1 AND ($3::text IS NULL OR node = $3)",
                &[&from, &to, &args.node],
            )
            .await
            .context("looking for scenario runs in the window")?
            .get(0);
        if runs > 0 {
            eprintln!(
                "note: {runs} recorded scenario runs overlap this window and lost their labels; `feature-lab label --scenarios` with the same window re-applies them"
            );
        }
    }
    info!(
        rows = n,
        attack,
        node = args.node.as_deref().unwrap_or("(all)"),
        pod = args.pod.as_deref().unwrap_or("-"),
        "labelled"
    );
    let what = if args.pod.is_some() { "pod rows" } else { "rows" };
    println!("{n} {what} labelled {}", if args.clear { "normal" } else { "attack" });
    Ok(())
}

/// Re-applies the labels of the scenario runs recorded in the window.
async fn reapply_scenarios(
    client: &feature_db::deadline::Db,
    node: Option<&str>,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> anyhow::Result<()> {
    let runs = client
        .query(
            "SELECT id FROM scenario_runs
             WHERE started_at <= $2 AND ended_at >= $1 AND ($3::text IS NULL OR node = $3)
             ORDER BY started_at",
            &[&from, &to, &node],
        )
        .await
        .context("reading scenario_runs")?;
    if runs.is_empty() {
        bail!("no scenario runs recorded in this window; nothing re-applied");
    }
    let mut rows = 0;
    for r in &runs {
        rows += crate::scenario::label_window(client, r.get(0)).await?;
    }
    println!("{rows} rows labelled attack from {} scenario runs", runs.len());
    Ok(())
}
