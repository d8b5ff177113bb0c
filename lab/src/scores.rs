//! The node z-score functions (node_feature_zscores, node_feature_flags: PL/pgSQL functions
//! that read node_features) as temporary tables of this session, for the tools that join their
//! results with rows (evaluate, export --normalized, plot).
//!
//! Why not join the function call itself: on a Citus coordinator, a query about one node is
//! routed whole to the worker holding that node's shards, the function call with it, and the
//! function's own queries of the distributed tables cannot run from inside a shard query
//! ("cannot execute a distributed query from a query on a shard"). Run on its own, the
//! function executes on the coordinator, its queries distributed as usual; the join is then
//! with a local table, which Citus plans like any other. On one server it is the same result.
//! The temporary table lives as long as the session (these commands are one-shot).
use std::time::SystemTime;

use anyhow::Context;
use feature_db::deadline::Db as Client;

/// Creates temporary table `name` from `select`, a query whose parameters are $1 the node (or
/// NULL), $2 and $3 the window's ends (or NULL). Utility statements take no bound parameters,
/// so the values are quoted by the server (quote_nullable) and written in.
pub async fn materialize(
    client: &Client,
    name: &str,
    select: &str,
    node: Option<&str>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> anyhow::Result<()> {
    debug_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "a plain identifier");
    let quoted = client
        .query_one(
            "SELECT quote_nullable($1::text), quote_nullable($2::timestamptz), quote_nullable($3::timestamptz)",
            &[&node, &from, &to],
        )
        .await
        .context("quoting the window")?;
    let (node, from, to): (String, String, String) = (quoted.get(0), quoted.get(1), quoted.get(2));
    // Replaced highest first, so "$1" never eats the start of another placeholder.
    let select = select
        .replace("$3", &format!("{to}::timestamptz"))
        .replace("$2", &format!("{from}::timestamptz"))
        .replace("$1", &format!("{node}::text"));
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning; DROP TABLE IF EXISTS pg_temp.{name}; RESET client_min_messages; \
             CREATE TEMP TABLE {name} AS {select}"
        ))
        .await
        .with_context(|| format!("computing the z-scores ({name})"))?;
    Ok(())
}
