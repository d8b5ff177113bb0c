//! Applies the SQL files of migrations/ (embedded at build time) in order, once each, recorded in
//! schema_migrations; then the generated SQL (migrations/generated/analysis.sql: the feature
//! catalog and the views that list columns, written from the column declaration), whenever it
//! differs from the copy recorded in schema_generated. An advisory lock serialises agents that
//! start at the same moment, so re-running, or running from many nodes at once, is a no-op.
//! The check that runs at every agent's start ([`require_current`]) uses unnamed statements only,
//! so it works through a transaction pooler; the migrations run in one transaction.
//! On a Citus coordinator (the citus extension installed), the feature tables are distributed
//! by node, colocated, and the small tables made reference tables (distribute_feature_tables(),
//! migrations/0011_day_partitions.sql), before the views are made.
use anyhow::Context;
use tokio_postgres::{types::Type, Client, GenericClient};
use tracing::info;

/// (version, file name, SQL), in the order they apply: every migrations/NNNN_*.sql, listed by
/// build.rs.
pub const MIGRATIONS: &[(i32, &str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The generated SQL, as committed (a test in feature-schema keeps it equal to what the
/// declaration gives), and its name in schema_generated.
pub const GENERATED: (&str, &str) = ("analysis", include!(concat!(env!("OUT_DIR"), "/generated.rs")));

/// Key of the advisory lock held while migrating ("feature-agent migrate" in ASCII, truncated).
const LOCK_KEY: i64 = 0x6665_6174_7572_6561;

/// Applies the pending migrations; returns how many were applied.
pub async fn apply(client: &mut Client) -> anyhow::Result<usize> {
    let tx = client.transaction().await.context("starting the migration transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await.context("taking the migration lock")?;
    // "already exists, skipping" and the like are not news to whoever runs migrate.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await.context("setting client_min_messages")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .context("creating schema_migrations")?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .context("reading schema_migrations")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // On a Citus coordinator, every view an old migration makes over a table not yet
    // distributed draws a warning that the view stays local. Migration 0011 drops those views,
    // and they are made again after the tables are distributed (below), so those warnings say
    // nothing true of the schema migrate leaves: they are kept out of the numbered migrations.
    let citus: bool = tx
        .query_one("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')", &[])
        .await
        .context("looking for the citus extension")?
        .get(0);
    if citus {
        tx.batch_execute("SET LOCAL client_min_messages = error").await.context("setting client_min_messages")?;
    }
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.with_context(|| format!("applying migration {name}"))?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .await
            .with_context(|| format!("recording migration {name}"))?;
        info!(migration = name, "applied");
        count += 1;
    }
    if citus {
        tx.batch_execute("SET LOCAL client_min_messages = warning").await.context("setting client_min_messages")?;
    }
    // On a Citus coordinator, the feature tables are distributed (once) before the views are
    // made over them; on a plain server this says "plain" and does nothing.
    if newest_applied_or(&applied, count) >= DISTRIBUTE_SINCE {
        let layout: String = tx
            .query_one("SELECT distribute_feature_tables()", &[])
            .await
            .context("distributing the feature tables (citus)")?
            .get(0);
        if layout.starts_with("citus: ") {
            info!(layout, "citus coordinator: tables distributed");
        }
    }
    let (name, sql) = GENERATED;
    let recorded = recorded_generated(&tx).await?;
    let newest_applied = applied.iter().copied().max().unwrap_or(0);
    // A binary older than the schema leaves the newer views alone.
    if recorded.as_deref() != Some(sql) && newest_applied <= latest_version() {
        tx.batch_execute(sql).await.context("applying the generated SQL (migrations/generated/analysis.sql)")?;
        tx.execute(
            // now() in VALUES, not in the SET: on a Citus coordinator this is a reference table,
            // whose ON CONFLICT takes no function in its SET.
            "INSERT INTO schema_generated (name, sql, applied_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO UPDATE SET sql = EXCLUDED.sql, applied_at = EXCLUDED.applied_at",
            &[&name, &sql],
        )
        .await
        .context("recording the generated SQL")?;
        info!(generated = name, "applied");
        count += 1;
    }
    tx.commit().await.context("committing migrations")?;
    Ok(count)
}

/// The generated SQL the database last applied (None before any).
async fn recorded_generated(client: &impl GenericClient) -> anyhow::Result<Option<String>> {
    Ok(client
        .query_typed_opt("SELECT sql FROM schema_generated WHERE name = $1", &[(&GENERATED.0, Type::TEXT)])
        .await
        .context("reading schema_generated")?
        .map(|r| r.get(0)))
}

/// The migration that defines distribute_feature_tables().
const DISTRIBUTE_SINCE: i32 = 11;

/// The newest version the database holds after this run: the newest applied before, or, when
/// this run applied any, the newest there is.
fn newest_applied_or(applied: &[i32], applied_now: usize) -> i32 {
    let before = applied.iter().copied().max().unwrap_or(0);
    if applied_now > 0 {
        before.max(latest_version())
    } else {
        before
    }
}

/// The version of the newest numbered migration.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Adds what Postgres said, and what to do, to a migration that failed for want of privilege
/// (a writer role running `migrate`): tokio-postgres' own text is only "db error".
pub fn explain(e: anyhow::Error) -> anyhow::Error {
    let db = e.chain().find_map(|c| c.downcast_ref::<tokio_postgres::Error>());
    match db {
        Some(pg) if pg.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            let text = crate::connect::describe(pg);
            e.context(format!(
                "{text}; this role may not change the schema: run `feature-agent migrate` as the schema's owner (the role that created it), and the agents as writers"
            ))
        }
        Some(pg) => {
            let text = crate::connect::describe(pg);
            e.context(text)
        }
        None => e,
    }
}

/// Fails with a clear message unless every migration has been applied (for the commands that
/// read or label rows and must not change the schema themselves).
pub async fn require_current(client: &Client) -> anyhow::Result<()> {
    let latest = latest_version();
    let have: Option<i32> = match client.query_typed_one("SELECT max(version) FROM schema_migrations", &[]).await {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => return Err(e).context("reading schema_migrations"),
    };
    match have {
        Some(v) if v > latest => Ok(()),
        Some(v) if v == latest => {
            if recorded_generated(client).await?.as_deref() == Some(GENERATED.1) {
                Ok(())
            } else {
                anyhow::bail!(
                    "the database's analysis views differ from this agent's column declaration: run `feature-agent migrate`"
                )
            }
        }
        Some(v) => anyhow::bail!(
            "the database schema is at version {v}, this agent needs {latest}: run `feature-agent migrate`"
        ),
        None => anyhow::bail!("the database has no feature-agent schema: run `feature-agent migrate` (or `run`) first"),
    }
}

/// Applies the migrations only if the schema is behind, so a role that may insert rows but not
/// change the schema (the writer role) starts fine on a migrated database.
pub async fn ensure_current(client: &mut Client) -> anyhow::Result<()> {
    if require_current(client).await.is_ok() {
        return Ok(());
    }
    apply(client).await.map(|_| ()).context(
        "the database schema is behind and this role cannot migrate it: run `feature-agent migrate` as the schema's owner",
    )
}
