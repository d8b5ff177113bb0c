//! `feature-lab prune`: retention. Drops every day partition of pod_features (--pod-days) and
//! of node_features (--node-days) that ends at or before now minus that many days, in time
//! proportional to the number of partitions (a DROP TABLE each), never deleting rows one by
//! one. The same on one PostgreSQL server and on a Citus coordinator (which drops the
//! partition's shards on the workers). Run it from cron or a Kubernetes CronJob with the
//! migrating user (it drops tables).
use anyhow::Context;
use clap::Args;

use feature_db::DatabaseArgs;

/// How long any one database call of `prune` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("keep").required(true).multiple(true).args(["pod_days", "node_days"])))]
pub struct PruneArgs {
    /// Keep this many days of pod rows; whole days older than that are dropped.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub pod_days: Option<u32>,
    /// Keep this many days of node rows; whole days older than that are dropped.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub node_days: Option<u32>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

pub async fn command(args: PruneArgs) -> anyhow::Result<()> {
    let client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    client.require_current().await?;
    for (table, days) in [("pod_features", args.pod_days), ("node_features", args.node_days)] {
        let Some(days) = days else { continue };
        let days = i32::try_from(days).context("days")?;
        let row = client
            .query_one(
                "WITH c AS (SELECT now() - make_interval(days => $2) AS cutoff)
                 SELECT drop_day_partitions_before($1::text::regclass, cutoff), cutoff FROM c",
                &[&table, &days],
            )
            .await
            .with_context(|| format!("dropping old day partitions of {table}"))?;
        let dropped: i32 = row.get(0);
        let cutoff: std::time::SystemTime = row.get(1);
        tracing::info!(table, dropped, days, "pruned");
        println!(
            "{dropped} day partitions of {table} dropped (everything before {})",
            feature_schema::timefmt::rfc3339_micros(cutoff)
        );
    }
    Ok(())
}
