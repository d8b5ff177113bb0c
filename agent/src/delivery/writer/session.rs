//! One Postgres session of the writer: opening it (connect, the schema check, ending this
//! agent's own abandoned sessions, the node's writer lease, today's day partitions), writing a
//! batch (the lease renewed, node rows and their pod rows, in one transaction), and giving the
//! lease back at a clean stop.
//!
//! A batch's statements are prepared once per session and executed by name
//! ([`Statements::Named`], the cheaper for the server), or sent unnamed with their parameter types
//! ([`Statements::Unnamed`], tokio-postgres' `query_typed`: parse, bind and execute in one round
//! trip), which is what works through a transaction pooler (PgBouncer's `pool_mode =
//! transaction`), since it lends each transaction whichever server connection is free. Every
//! other statement is unnamed, and every piece of session state lives inside a transaction
//! (`SET LOCAL`), so nothing else depends on the server connection. Nothing here has a deadline of its own: the writer races every call against one
//! (writer/mod.rs) and drops a session whose call was cut off, which also ends its connection
//! task. The server ends such a session's transaction by itself after the same time
//! (`idle_in_transaction_session_timeout` and `statement_timeout`, set for each transaction).
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use tokio_postgres::{
    error::SqlState,
    types::{ToSql, Type},
    GenericClient, Statement,
};

use feature_db::{
    connect::{connect_owned, explain_connect_error, OwnedClient},
    migrate, utc_day, Target,
};
use feature_schema::{
    insert_param_types, insert_sql,
    pods::{pod_insert_param_types, pod_insert_sql, pod_rows_per_insert, PodRow},
    FeatureRow,
};

/// Takes the node's lease, or renews it for its holder: a row naming this agent, expiring one
/// lease length from the server's now(). Returns no row while another holder's lease runs. (The
/// proposed row's `since` is that now(): a Citus coordinator takes no function in the WHERE of
/// an ON CONFLICT on a distributed table.)
const ACQUIRE_SQL: &str = "INSERT INTO node_writers AS w (node, holder, client, since, expires) \
     VALUES ($1, $2, coalesce(host(inet_client_addr()), 'a local socket'), now(), now() + make_interval(secs => $3)) \
     ON CONFLICT (node) DO UPDATE SET holder = EXCLUDED.holder, client = EXCLUDED.client, \
         since = CASE WHEN w.holder = EXCLUDED.holder THEN w.since ELSE EXCLUDED.since END, \
         expires = EXCLUDED.expires \
     WHERE w.holder = EXCLUDED.holder OR w.expires < EXCLUDED.since \
     RETURNING w.holder";
/// The lease as it stands, to name its holder in a refusal.
const HOLDER_SQL: &str = "SELECT holder, client, since::text, \
       greatest(extract(epoch FROM expires - now()), 0)::float8 \
     FROM node_writers WHERE node = $1";
/// Renews the lease inside a batch's transaction; no row updated means another agent holds it.
const RENEW_SQL: &str =
    "UPDATE node_writers SET expires = now() + make_interval(secs => $3) WHERE node = $1 AND holder = $2";
/// Gives the lease back (a clean stop), so the node's next agent need not wait for it to expire.
const RELEASE_SQL: &str = "DELETE FROM node_writers WHERE node = $1 AND holder = $2";
/// Ends the sessions an earlier connection of this agent (or of its predecessor on the same
/// spool) left behind: a write cut off by its deadline, whose server-side end may still hold a
/// transaction open behind a black-holed path. Returns how many were ended.
const END_ABANDONED_SQL: &str = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::bigint \
     FROM pg_stat_activity WHERE application_name LIKE $1 AND pid <> pg_backend_pid()";
/// The agent's abandoned sessions still there.
const ABANDONED_LEFT_SQL: &str =
    "SELECT count(*)::bigint FROM pg_stat_activity WHERE application_name LIKE $1 AND pid <> pg_backend_pid()";
/// Creates the day partitions (of node_features and pod_features) that hold a time.
const DAY_PARTITIONS_SQL: &str = "SELECT ensure_day_partitions($1)";

/// How a batch's statements reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statements {
    /// Prepared once per session, executed by name: the server parses and plans each only once.
    Named,
    /// Parsed with every batch: no statement outlives its transaction (for a transaction pooler).
    Unnamed,
}

/// Whether an error says the server lost (or already had) a statement name this session
/// prepared: a transaction pooler lent another server connection. SQLSTATE 26000 or 42P05.
pub fn lost_prepared_statement(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::DUPLICATE_PSTATEMENT)
}

/// Who this agent is to the database, and for how long its lease runs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The node name its rows carry.
    pub node: String,
    /// The lease holder: the spool's writer id, shared by every agent process that uses that
    /// spool on this host in turn (so a restarted agent takes over its predecessor's lease at
    /// once).
    pub holder: String,
    /// This process's application_name: `feature-agent/<holder>/<pid>.<nonce>`.
    pub application: String,
    /// How long a lease runs without a renewal.
    pub lease: Duration,
    /// The server-side timeouts of every transaction (statement and idle in transaction).
    pub server_timeout: Duration,
}

impl Identity {
    /// The application_name prefix every process of this holder shares.
    fn holder_prefix(&self) -> String {
        format!("feature-agent/{}/", self.holder)
    }
}

/// Why a session could not be opened, or a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another agent holds this node name's writer lease: another agent writes rows under the
    /// same name (a copied manifest, a renamed node), or this node's previous agent stopped
    /// without giving the lease back. Writing beside it would make half of each agent's rows
    /// collide; the rows wait in the spool instead.
    #[error(
        "another agent is writing rows for node {node:?} (writer {holder}, from {client}, since {since}; its lease \
         expires in {expires_in_s:.0} s unless it renews it); two agents with one node name would overwrite each \
         other's intervals: give each node its own --node-name / NODE_NAME (if it is this node's previous agent, \
         which stopped without giving the lease back, this agent takes over when the lease expires)"
    )]
    NodeInUse { node: String, holder: String, client: String, since: String, expires_in_s: f64 },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// The renewal found the lease held by another agent (this one's had expired, and the
    /// other took it): the batch was rolled back.
    #[error("the writer lease of node {0:?} was taken by another agent")]
    LeaseLost(String),
    /// The transaction ran on another server backend than the one this session's statements
    /// were prepared on: a transaction pooler is in between. Nothing was written; the session
    /// now writes with unnamed statements.
    #[error("a transaction pooler lent another server connection")]
    Pooled,
}

/// An open session ready to insert rows.
pub struct Session {
    conn: OwnedClient,
    /// The server backend the session's statements are prepared on (pg_backend_pid()).
    backend: i32,
    prepared: Prepared,
    /// UTC days whose partitions (of node_features and pod_features) exist.
    days: HashSet<i64>,
}

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Node rows the database did not have.
    pub new: u64,
    /// Node rows whose (node, ts) it already held: not written (ON CONFLICT DO NOTHING).
    pub duplicate: u64,
    /// Pod rows written.
    pub pod_rows: u64,
}

/// Runs one unnamed statement with typed parameters and returns the rows it touched.
async fn execute_typed(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    types: &[Type],
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let stream = client.query_typed_raw(sql, params.iter().copied().zip(types.iter().cloned())).await?;
    futures_util::pin_mut!(stream);
    while stream.try_next().await?.is_some() {}
    Ok(stream.rows_affected().unwrap_or(0))
}

impl Session {
    /// Connects; the caller bounds the time.
    pub async fn connect(target: &Target, statements: Statements) -> anyhow::Result<Session> {
        let conn = connect_owned(target).await.map_err(explain_connect_error).context("connecting to the database")?;
        Ok(Session { conn, backend: 0, prepared: Prepared { statements, cache: HashMap::new() }, days: HashSet::new() })
    }

    /// Applies the migrations if the schema is behind (and this role may).
    pub async fn migrate(&mut self) -> anyhow::Result<()> {
        migrate::ensure_current(&mut self.conn.client).await
    }

    /// Ends this agent's abandoned sessions, takes the node's writer lease and creates today's
    /// partitions. Returns how many abandoned sessions were ended.
    pub async fn prepare(&mut self, me: &Identity) -> Result<u64, OpenError> {
        let client = &self.conn.client;
        // First, so that an abandoned session still holding the lease's row lock (a renewal
        // whose commit never came back) cannot make the lease wait on it.
        let pattern = format!("{}%", like_escape(&me.holder_prefix()));
        let ended: i64 = client.query_typed(END_ABANDONED_SQL, &[(&pattern, Type::TEXT)]).await.map_err(pg)?[0].get(0);
        // A terminated backend exits within moments, unless it is stuck in something it cannot
        // leave: a Citus coordinator cancelling its statement on a hung worker blocks in the
        // cancel request (not interruptible) until the worker answers. Writing now would route
        // this session's batch to the same worker and leave one more such backend; waiting keeps
        // it to one per agent.
        if ended > 0 {
            let mut left: i64 = 0;
            for _ in 0..20 {
                left = client.query_typed(ABANDONED_LEFT_SQL, &[(&pattern, Type::TEXT)]).await.map_err(pg)?[0].get(0);
                if left == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if left > 0 {
                return Err(anyhow::anyhow!(
                    "{left} session(s) this agent abandoned earlier still run on the server after being ended (a Citus \
                     worker may hang); not writing until they are gone"
                )
                .into());
            }
        }
        let lease = me.lease.as_secs_f64();
        let taken = client
            .query_typed(ACQUIRE_SQL, &[(&me.node, Type::TEXT), (&me.holder, Type::TEXT), (&lease, Type::FLOAT8)])
            .await
            .map_err(pg)?;
        if taken.is_empty() {
            let row = client.query_typed(HOLDER_SQL, &[(&me.node, Type::TEXT)]).await.map_err(pg)?;
            let Some(row) = row.first() else {
                return Err(anyhow::anyhow!("the writer lease of node {:?} changed hands; retrying", me.node).into());
            };
            return Err(OpenError::NodeInUse {
                node: me.node.clone(),
                holder: row.get(0),
                client: row.get(1),
                since: row.get(2),
                expires_in_s: row.get(3),
            });
        }
        self.backend = self.conn.client.query_typed("SELECT pg_backend_pid()", &[]).await.map_err(pg)?[0].get(0);
        let now = SystemTime::now();
        self.ensure_day(now).await.map_err(pg).context("creating today's partitions")?;
        Ok(ended as u64)
    }

    /// Gives the lease back (a clean stop).
    pub async fn release(&mut self, me: &Identity) -> Result<(), tokio_postgres::Error> {
        self.conn.client.query_typed(RELEASE_SQL, &[(&me.node, Type::TEXT), (&me.holder, Type::TEXT)]).await?;
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.conn.client.is_closed()
    }

    /// Forgets which partitions exist (one may have been dropped under us by retention).
    pub fn forget_partitions(&mut self) {
        self.days.clear();
    }

    async fn ensure_day(&mut self, ts: SystemTime) -> Result<(), tokio_postgres::Error> {
        if self.days.insert(utc_day(ts)) {
            if let Err(e) = self.conn.client.query_typed(DAY_PARTITIONS_SQL, &[(&ts, Type::TIMESTAMPTZ)]).await {
                self.days.remove(&utc_day(ts));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Creates the day partitions the rows (and their pod rows) fall in, where not known to
    /// exist. Before the transaction: on a Citus coordinator a partition's creation is DDL that
    /// reaches every worker, which must not share a transaction with the rows' writes.
    async fn ensure_days(&mut self, rows: &[FeatureRow]) -> Result<(), tokio_postgres::Error> {
        // An interval's pod rows carry its node row's ts: only a pod row that differs (none, as
        // the sampler makes them) needs a look of its own.
        let times: Vec<SystemTime> = rows
            .iter()
            .flat_map(|r| std::iter::once(r.ts).chain(r.pods.iter().map(|p| p.ts).filter(move |t| *t != r.ts)))
            .collect();
        for ts in times {
            self.ensure_day(ts).await?;
        }
        Ok(())
    }

    /// In one transaction: renews the lease, inserts the rows in one statement and their pod
    /// rows (so the database never holds an interval's node row without its pod rows, nor a
    /// row written after another agent took the lease).
    pub async fn write(&mut self, rows: &[FeatureRow], me: &Identity) -> Result<Written, WriteError> {
        self.ensure_days(rows).await?;
        let params: Vec<&(dyn ToSql + Sync)> = rows.iter().flat_map(FeatureRow::params).collect();
        let pods: Vec<&PodRow> = rows.iter().flat_map(|r| &r.pods).collect();
        let total = rows.len() as u64;
        let Session { conn, prepared, backend, .. } = self;
        // The lease renewal is unnamed in either mode (a small statement).
        let tx = conn.client.transaction().await?;
        let ms = me.server_timeout.as_millis().max(1);
        // The timeouts, and which backend runs this transaction, in one round trip.
        let answer = tx
            .simple_query(&format!(
                "SET LOCAL statement_timeout = {ms}; SET LOCAL idle_in_transaction_session_timeout = {ms}; \
                 SELECT pg_backend_pid()"
            ))
            .await?;
        let pid = answer.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse::<i32>().ok()),
            _ => None,
        });
        if prepared.statements == Statements::Named && pid != Some(*backend) {
            // Not the backend our statements live on: executing one by name here could run
            // nothing, or another client's. Rolled back (dropped) before anything ran.
            prepared.statements = Statements::Unnamed;
            return Err(WriteError::Pooled);
        }
        let lease = me.lease.as_secs_f64();
        let renewed =
            execute_typed(&tx, RENEW_SQL, &[&me.node, &me.holder, &lease], &[Type::TEXT, Type::TEXT, Type::FLOAT8])
                .await?;
        if renewed == 0 {
            // Dropping the transaction rolls it back.
            return Err(WriteError::LeaseLost(me.node.clone()));
        }
        let new = prepared.run(&tx, &insert_sql(rows.len()), &params, &insert_param_types(rows.len())).await?;
        let mut pod_rows = 0;
        for chunk in pods.chunks(pod_rows_per_insert()) {
            let params: Vec<&(dyn ToSql + Sync)> = chunk.iter().flat_map(|p| p.params()).collect();
            pod_rows +=
                prepared.run(&tx, &pod_insert_sql(chunk.len()), &params, &pod_insert_param_types(chunk.len())).await?;
        }
        tx.commit().await?;
        Ok(Written { new, duplicate: total - new, pod_rows })
    }
}

/// A session's statements: prepared once and kept by SQL text, or unnamed.
struct Prepared {
    statements: Statements,
    cache: HashMap<String, Statement>,
}

impl Prepared {
    /// Runs one statement of a batch's transaction, named or unnamed as the session writes.
    async fn run(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        types: &[Type],
    ) -> Result<u64, tokio_postgres::Error> {
        if self.statements == Statements::Unnamed {
            return execute_typed(tx, sql, params, types).await;
        }
        let statement = match self.cache.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = tx.prepare_typed(sql, types).await?;
                self.cache.insert(sql.to_owned(), s.clone());
                s
            }
        };
        tx.execute(&statement, params).await
    }
}

/// `s` as a LIKE pattern matching itself only.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn pg(e: tokio_postgres::Error) -> OpenError {
    OpenError::Failed(anyhow::Error::new(e))
}

/// Whether an error concerns the rows' data (retrying cannot help), rather than the connection
/// or the server's state. A read-only server (SQLSTATE 25006: a demoted primary, a standby after
/// a failover) is the server's state: the writer reconnects, and a multi-host URL with
/// `target_session_attrs=read-write` finds the writable one.
pub fn is_row_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        class == "22" || class == "23" || *c == SqlState::UNDEFINED_TABLE
    })
}
