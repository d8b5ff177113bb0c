//! One Postgres session of the writer: opening it (connect, the schema check, the per-node
//! advisory lock that keeps one writer per node name, today's day partitions, the prepared
//! INSERT), and writing a batch (node rows and their pod rows in one transaction). Nothing here
//! has a deadline of its own: the writer races every call against one (writer/mod.rs) and drops
//! a session whose call was cut off, which also ends its connection task.
use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use anyhow::Context;
use tokio_postgres::{error::SqlState, types::ToSql, Statement};

use feature_db::{
    connect::{connect_owned, explain_connect_error, OwnedClient},
    ensure_day_partitions, migrate, utc_day, Target,
};
use feature_schema::{
    insert_sql,
    pods::{pod_insert_sql, pod_rows_per_insert, PodRow},
    FeatureRow,
};

/// Takes the node's writer lock for the session's lifetime: a 64-bit advisory lock keyed by a
/// hash of the node name (64 bits: two names of one fleet colliding is out of reach).
const LOCK_SQL: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
/// The session holding that lock, to name it in the refusal (pg_locks splits a 64-bit key
/// into classid, the high half, and objid, the low half, with objsubid 1).
const HOLDER_SQL: &str = "SELECT a.pid, coalesce(a.application_name, ''), \
       coalesce(host(a.client_addr), 'a local socket'), coalesce(a.backend_start::text, '?') \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)";

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another session holds this node name's writer lock: another agent writes rows under
    /// the same name (a copied manifest, a renamed node). Writing beside it would make half of
    /// each agent's rows collide; the rows wait in the spool instead.
    #[error(
        "another agent is writing rows for node {node:?} (session pid {pid}, {application}, from {client}, since {since}); \
         two agents with one node name would overwrite each other's intervals: give each node its own --node-name / NODE_NAME"
    )]
    NodeInUse { node: String, pid: i32, application: String, client: String, since: String },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// An open session ready to insert rows.
pub struct Session {
    conn: OwnedClient,
    /// Prepared multi-row INSERTs, by number of rows.
    inserts: HashMap<usize, Statement>,
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

impl Session {
    /// Connects; the caller bounds the time.
    pub async fn connect(target: &Target) -> anyhow::Result<Session> {
        let conn = connect_owned(target).await.map_err(explain_connect_error).context("connecting to the database")?;
        Ok(Session { conn, inserts: HashMap::new(), days: HashSet::new() })
    }

    /// Applies the migrations if the schema is behind (and this role may).
    pub async fn migrate(&mut self) -> anyhow::Result<()> {
        migrate::ensure_current(&mut self.conn.client).await
    }

    /// Takes the node's writer lock, creates today's partitions and prepares the one-row INSERT.
    /// `own_application` is this process's application_name: a session holding the lock under
    /// it is one this agent abandoned (a write that passed its deadline, its server-side end
    /// still alive behind a black hole) and is ended, so the agent does not lock itself out.
    pub async fn prepare(&mut self, node: &str, own_application: &str) -> Result<(), OpenError> {
        let client = &self.conn.client;
        let mut locked: bool = client.query_one(LOCK_SQL, &[&node]).await.map_err(pg)?.get(0);
        if !locked {
            if let Some(row) = client.query_opt(HOLDER_SQL, &[&node]).await.map_err(pg)? {
                let (pid, application): (i32, String) = (row.get(0), row.get(1));
                if application == own_application {
                    client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.map_err(pg)?;
                    // The backend exits, and releases the lock, within moments.
                    for _ in 0..50 {
                        locked = client.query_one(LOCK_SQL, &[&node]).await.map_err(pg)?.get(0);
                        if locked {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
                if !locked {
                    return Err(OpenError::NodeInUse {
                        node: node.to_owned(),
                        pid,
                        application,
                        client: row.get(2),
                        since: row.get(3),
                    });
                }
            } else {
                // Released between the two queries: take it now.
                locked = client.query_one(LOCK_SQL, &[&node]).await.map_err(pg)?.get(0);
                if !locked {
                    return Err(anyhow::anyhow!("the writer lock of node {node:?} changed hands; retrying").into());
                }
            }
        }
        let now = SystemTime::now();
        ensure_day_partitions(client, now).await.map_err(pg).context("creating today's partitions")?;
        self.days.insert(utc_day(now));
        self.statement(1).await.map_err(pg).context("preparing the row INSERT")?;
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.conn.client.is_closed()
    }

    async fn statement(&mut self, rows: usize) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.inserts.get(&rows) {
            return Ok(s.clone());
        }
        let s = self.conn.client.prepare(&insert_sql(rows)).await?;
        self.inserts.insert(rows, s.clone());
        Ok(s)
    }

    /// Forgets which partitions exist (one may have been dropped under us by retention).
    pub fn forget_partitions(&mut self) {
        self.days.clear();
    }

    /// Creates the day partitions the rows (and their pod rows) fall in, where not known to
    /// exist. Before the transaction: on a Citus coordinator a partition's creation is DDL that
    /// reaches every worker, which must not share a transaction with the rows' writes.
    async fn ensure_days(&mut self, rows: &[FeatureRow]) -> Result<(), tokio_postgres::Error> {
        // An interval's pod rows carry its node row's ts: only a pod row that differs (none, as
        // the sampler makes them) needs a look of its own.
        let times = rows
            .iter()
            .flat_map(|r| std::iter::once(r.ts).chain(r.pods.iter().map(|p| p.ts).filter(move |t| *t != r.ts)));
        for ts in times {
            if self.days.insert(utc_day(ts)) {
                if let Err(e) = ensure_day_partitions(&self.conn.client, ts).await {
                    self.days.remove(&utc_day(ts));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Inserts the rows in one statement, and their pod rows with them in the same transaction
    /// (so the database never holds an interval's node row without its pod rows).
    pub async fn write(&mut self, rows: &[FeatureRow]) -> Result<Written, tokio_postgres::Error> {
        self.ensure_days(rows).await?;
        let statement = self.statement(rows.len()).await?;
        let params: Vec<&(dyn ToSql + Sync)> = rows.iter().flat_map(FeatureRow::params).collect();
        let pods: Vec<&PodRow> = rows.iter().flat_map(|r| &r.pods).collect();
        let total = rows.len() as u64;
        if pods.is_empty() {
            let new = self.conn.client.execute(&statement, &params).await?;
            return Ok(Written { new, duplicate: total - new, pod_rows: 0 });
        }
        let tx = self.conn.client.transaction().await?;
        let new = tx.execute(&statement, &params).await?;
        let mut pod_rows = 0;
        for chunk in pods.chunks(pod_rows_per_insert()) {
            let params: Vec<&(dyn ToSql + Sync)> = chunk.iter().flat_map(|p| p.params()).collect();
            pod_rows += tx.execute(&pod_insert_sql(chunk.len()), &params).await?;
        }
        tx.commit().await?;
        Ok(Written { new, duplicate: total - new, pod_rows })
    }
}

fn pg(e: tokio_postgres::Error) -> OpenError {
    OpenError::Failed(anyhow::Error::new(e))
}

/// Whether an error concerns the rows' data (retrying cannot help), rather than the connection.
pub fn is_row_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        class == "22" || class == "23" || *c == SqlState::UNDEFINED_TABLE
    })
}
