//! Deadlines for the one-shot commands (`feature-lab label`, `export`, `evaluate`, `plot`,
//! `prune`, `scenario`, `migrate`): every database call they make is bounded on both sides.
//! The server ends a statement that runs past nine tenths of the limit (`statement_timeout`, set
//! when the session opens), and the client gives up on a server that does not answer at all (a
//! SIGSTOPped process, a black-holed path), which no server-side timeout can catch. A call that
//! is still waiting after a few seconds says so on stderr, so a hung database is never a silent
//! wait; one that passes the limit ends the command with an error naming the limit.
//!
//! [`Db`] is a client whose query methods (`query`, `query_one`, `query_opt`, `execute`,
//! `batch_execute`) carry the deadline; anything else (a transaction, a portal) goes through
//! [`Db::bounded`].
use std::{future::Future, time::Duration};

use clap::Args;
use tokio_postgres::{types::ToSql, Client, Row, ToStatement};
use tracing::warn;

/// How long a command waits before it says it is waiting.
const NOTICE_AFTER: Duration = Duration::from_secs(3);

/// `--db-timeout`: every command of feature-lab flattens it, with a default of its own.
#[derive(Debug, Clone, Copy, Args)]
pub struct DbTimeoutArgs {
    /// Seconds any one database call (a connection, a statement, a batch of an export) may take
    /// before the command gives up with an error; also the server's statement_timeout
    /// [default: the command's own, see docs/durability.md].
    #[arg(long, env = "DB_TIMEOUT", value_parser = crate::parse_interval)]
    pub db_timeout: Option<f64>,
}

impl DbTimeoutArgs {
    /// The limit: the option, or the command's default.
    pub fn or(&self, default: Duration) -> Duration {
        self.db_timeout.map_or(default, Duration::from_secs_f64)
    }
}

/// A call that failed: the database's own error, or no answer within the limit.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{}", crate::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "the database did not answer within {0:?} (--db-timeout / DB_TIMEOUT): it is hung, overloaded or unreachable; \
         check the server, or raise the limit for a larger job"
    )]
    TimedOut(Duration),
    /// A failure of a step made of several calls, already described.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl DbError {
    /// The server's error, when it answered with one.
    pub fn as_db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            DbError::Db(e) => e.as_db_error(),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Db(e) => e.code(),
            _ => None,
        }
    }
}

/// Runs `call`, saying on stderr that it waits once [`NOTICE_AFTER`] has passed, and giving up
/// at `limit`.
pub async fn within<T, E>(limit: Duration, call: impl Future<Output = Result<T, E>>) -> Result<T, DbError>
where
    E: Into<DbError>,
{
    tokio::pin!(call);
    if limit > NOTICE_AFTER {
        if let Ok(out) = tokio::time::timeout(NOTICE_AFTER, &mut call).await {
            return out.map_err(Into::into);
        }
        warn!(
            waited = ?NOTICE_AFTER,
            limit = ?limit,
            "still waiting for the database (it gives up at the limit, --db-timeout)"
        );
    }
    match tokio::time::timeout(limit.saturating_sub(NOTICE_AFTER.min(limit)), call).await {
        Ok(out) => out.map_err(Into::into),
        Err(_) => Err(DbError::TimedOut(limit)),
    }
}

/// A connection whose calls are bounded by one limit.
pub struct Db {
    client: Client,
    limit: Duration,
}

impl std::ops::Deref for Db {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Db {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Db {
    /// Connects within `limit` and sets the session's statement_timeout to nine tenths of it.
    pub async fn connect(target: &crate::Target, limit: Duration) -> anyhow::Result<Db> {
        use anyhow::Context;
        let client = match within(limit, crate::connect::connect(target)).await {
            Ok(c) => c,
            Err(DbError::Db(e)) => {
                return Err(crate::connect::explain_connect_error(e)).context("connecting to the database")
            }
            Err(e) => return Err(e).context("connecting to the database"),
        };
        let db = Db { client, limit };
        // A tenth sooner than the client's limit: a live server's own error (its text says what
        // it was waiting on) arrives before the client gives up.
        db.batch_execute(&format!("SET statement_timeout = {}", (limit.as_millis() * 9 / 10).max(1)))
            .await
            .context("setting the statement timeout")?;
        Ok(db)
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Runs any other database call under this connection's limit.
    pub async fn bounded<T, E: Into<DbError>>(&self, call: impl Future<Output = Result<T, E>>) -> Result<T, DbError> {
        within(self.limit, call).await
    }

    pub async fn query<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        within(self.limit, self.client.query(statement, params)).await
    }

    pub async fn query_one<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        within(self.limit, self.client.query_one(statement, params)).await
    }

    pub async fn query_opt<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        within(self.limit, self.client.query_opt(statement, params)).await
    }

    pub async fn execute<S: ToStatement + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        within(self.limit, self.client.execute(statement, params)).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        within(self.limit, self.client.batch_execute(sql)).await
    }

    /// Fails with a clear message unless the schema is current ([`crate::migrate::require_current`]).
    pub async fn require_current(&self) -> anyhow::Result<()> {
        Ok(within(self.limit, crate::migrate::require_current(&self.client)).await?)
    }
}
