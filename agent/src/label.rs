//! `feature-agent label`: marks the rows of a time window as an attack (attack = 1, with an
//! optional attack_type), or with --clear as normal again, on one node or all of them.
//! Timestamps are parsed by Postgres (RFC 3339, or any timestamptz input it accepts).
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::Args;
use tracing::info;

use crate::cli::DatabaseArgs;

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
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// An optional time window, as `evaluate`, `export` and `plot` take it.
#[derive(Debug, Args)]
pub struct TimeWindow {
    /// Start of the window [default: the first row].
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window [default: the last row].
    #[arg(long)]
    pub to: Option<String>,
}

impl TimeWindow {
    /// The bounds, parsed by Postgres.
    pub async fn resolve(
        &self,
        client: &tokio_postgres::Client,
    ) -> anyhow::Result<(Option<SystemTime>, Option<SystemTime>)> {
        let from = match &self.from {
            Some(v) => Some(timestamp(client, "--from", v).await?),
            None => None,
        };
        let to = match &self.to {
            Some(v) => Some(timestamp(client, "--to", v).await?),
            None => None,
        };
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                anyhow::bail!(
                    "--from {} is later than --to {}: the window is empty",
                    self.from.as_deref().unwrap_or_default(),
                    self.to.as_deref().unwrap_or_default()
                );
            }
        }
        Ok((from, to))
    }
}

/// Parses a timestamp with Postgres, naming the option in the error.
pub async fn timestamp(
    client: &tokio_postgres::Client,
    option: &str,
    value: &str,
) -> anyhow::Result<std::time::SystemTime> {
    match client.query_one("SELECT $1::text::timestamptz", &[&value]).await {
        Ok(row) => Ok(row.get(0)),
        Err(e) => bail!(
            "{option} {value:?} is not a timestamp: {}",
            e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
        ),
    }
}

pub async fn command(args: LabelArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    crate::migrate::require_current(&client).await?;
    let from = timestamp(&client, "--from", &args.from).await?;
    let to = timestamp(&client, "--to", &args.to).await?;
    if from > to {
        bail!("--from {} is after --to {}", args.from, args.to);
    }
    let (attack, attack_type): (i16, Option<&str>) =
        if args.clear { (0, None) } else { (1, args.attack_type.as_deref()) };
    let n = client
        .execute(
            "UPDATE node_features SET attack = $1, attack_type = $2
             WHERE ts >= $3 AND ts <= $4 AND ($5::text IS NULL OR node = $5)",
            &[&attack, &attack_type, &from, &to, &args.node],
        )
        .await
        .context("labelling rows")?;
    info!(rows = n, attack, node = args.node.as_deref().unwrap_or("(all)"), "labelled");
    println!("{n} rows labelled {}", if args.clear { "normal" } else { "attack" });
    Ok(())
}
