//! The subcommands beside `run`: `print` (the same samples, judged, as JSON lines on stdout, no
//! database) and `migrate` (apply the migrations and exit).
use std::{io::Write, time::Duration};

use anyhow::bail;
use feature_db::{migrate, DatabaseArgs};
use tracing::info;

use crate::{
    daemon::{config::SamplingArgs, metrics::Metrics, pipeline::sample_loop, signals::Signals},
    delivery::writer,
};

pub async fn print(args: SamplingArgs) -> anyhow::Result<()> {
    let sampler = args.sampler()?;
    let stdout = std::io::stdout();
    let metrics = Metrics::new(args.interval);
    let mut signals = Signals::install()?;
    let state_file = args.detector.state_file(None);
    let tagged = args.pod_rows;
    let result = sample_loop(&args, sampler, &metrics, &mut signals, state_file, |row| {
        let mut out = stdout.lock();
        // With --pod-rows, the interval's pod rows follow their node row, one per line, and
        // every line starts with "row": "node" or "pod" to say which it is.
        write_json_line(&mut out, &row, tagged.then_some("node"))?;
        for pod in &row.pods {
            write_json_line(&mut out, pod, Some("pod"))?;
        }
        out.flush()?;
        Ok(())
    })
    .await;
    match result {
        // The reader went away (`print | head -1`): stop quietly, as Unix tools do.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// One JSON object on its own line; with `row`, a first key "row" naming the kind of row.
fn write_json_line(out: &mut impl Write, value: &impl serde::Serialize, row: Option<&str>) -> anyhow::Result<()> {
    let json = serde_json::to_vec(value)?;
    match row {
        // The object is never empty: its first byte is '{' and a key follows.
        Some(kind) => {
            write!(out, "{{\"row\":\"{kind}\",")?;
            out.write_all(&json[1..])?;
        }
        None => out.write_all(&json)?,
    }
    out.write_all(b"\n")?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// `migrate`: applies the migrations to the named database. A database must be named (DB_NAME
/// or the URL's dbname): without one Postgres picks the user's own, which is seldom the one
/// meant, and a schema in the wrong database is found only when the agents fail.
pub async fn migrate_only(args: DatabaseArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if config.get_dbname().is_none() {
        bail!(
            "no database named: set DB_NAME (or --db-name), or a dbname in DATABASE_URL; without one Postgres would use the user's own database ({:?})",
            config.get_user().unwrap_or("postgres")
        );
    }
    let target = feature_db::args::describe_target(&config);
    // The same deadline as the agent's own start-up migration (plus the connect's), so a hung
    // database fails the Job instead of holding it forever.
    let limit = writer::Deadlines::for_interval(Duration::ZERO).migrate + Duration::from_secs(10);
    let work = async {
        let mut client = args.connect(limit).await?;
        migrate::apply(&mut client).await.map_err(migrate::explain)
    };
    let applied = tokio::time::timeout(limit, work).await.map_err(|_| {
        anyhow::anyhow!("{target}: no answer within {limit:?}; the migrations may not have been applied")
    })??;
    info!(applied, target, "migrations up to date");
    Ok(())
}
