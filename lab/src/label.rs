//! `feature-lab label`: marks the rows of a time window as an attack (attack = 1, with an
//! optional attack_type), or with --clear as normal again, on one node or all of them; with
//! --pod, the rows of one pod (or service) in pod_features instead of the node rows.
//! Timestamps are parsed by Postgres (RFC 3339, or any timestamptz input it accepts).
use anyhow::{bail, Context};
use clap::Args;
use tracing::info;

use feature_db::{migrate, DatabaseArgs};

use crate::window::timestamp;

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The node whose rows to label [default: every node].
    #[arg(long)]
    pub node: Option<String>,
    /// Start of the window, inclusive (e.g. 2026-11-24T10:00:00Z).
    #[arg(long)]
    pub from: String,
    /// End of the window, inclusive.
    #[arg(long)]
    pub to: String,
    /// What kind of attack the window holds, stored in attack_type.
    #[arg(long, conflicts_with = "clear")]
    pub attack_type: Option<String>,
    /// Mark the window's rows as normal again (attack = 0, attack_type NULL).
    #[arg(long)]
    pub clear: bool,
    /// Label this pod's rows in pod_features (not the node rows): its UID, NAMESPACE/NAME, or a
    /// host service's systemd unit.
    #[arg(long)]
    pub pod: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

pub async fn command(args: LabelArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    migrate::require_current(&client).await?;
    let from = timestamp(&client, "--from", &args.from).await?;
    let to = timestamp(&client, "--to", &args.to).await?;
    if from > to {
        bail!("--from {} is after --to {}", args.from, args.to);
    }
    let (attack, attack_type): (i16, Option<&str>) =
        if args.clear { (0, None) } else { (1, args.attack_type.as_deref()) };
    let n = match &args.pod {
        None => client
            .execute(
                "UPDATE node_features SET attack = $1, attack_type = $2
                 WHERE ts >= $3 AND ts <= $4 AND ($5::text IS NULL OR node = $5)",
                &[&attack, &attack_type, &from, &to, &args.node],
            )
            .await
            .context("labelling rows")?,
        Some(pod) => {
            let n = client
                .execute(
                    "UPDATE pod_features SET attack = $1, attack_type = $2
                     WHERE ts >= $3 AND ts <= $4 AND ($5::text IS NULL OR node = $5)
                       AND (owner = $6 OR namespace || '/' || pod = $6)",
                    &[&attack, &attack_type, &from, &to, &args.node, pod],
                )
                .await
                .context("labelling pod rows")?;
            if n == 0 {
                bail!(
                    "--pod {pod:?}: no rows of that pod (UID, NAMESPACE/NAME or unit) in this window; nothing labelled"
                );
            }
            n
        }
    };
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
