//! `feature-lab prune`: retention for per-pod rows. Drops every day partition of pod_features
//! that ends at or before now minus --pod-days, in time proportional to the number of
//! partitions (a DROP TABLE each), never deleting rows one by one. Run it from cron or a
//! Kubernetes CronJob with the migrating user (it drops tables).
use anyhow::Context;
use clap::Args;

use feature_db::DatabaseArgs;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep this many days of pod rows; whole days older than that are dropped.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub pod_days: u32,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

pub async fn command(args: PruneArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    feature_db::migrate::require_current(&client).await?;
    let days = i32::try_from(args.pod_days).context("--pod-days")?;
    let row = client
        .query_one(
            "WITH c AS (SELECT now() - make_interval(days => $1) AS cutoff)
             SELECT drop_pod_features_before(cutoff), cutoff FROM c",
            &[&days],
        )
        .await
        .context("dropping old pod partitions")?;
    let dropped: i32 = row.get(0);
    let cutoff: std::time::SystemTime = row.get(1);
    tracing::info!(dropped, days, "pruned pod rows");
    println!(
        "{dropped} day partitions of pod_features dropped (everything before {})",
        feature_schema::timefmt::rfc3339_micros(cutoff)
    );
    Ok(())
}
