//! Connecting to Postgres: the target (libpq-style settings plus TLS that verifies the server
//! against a given CA), the connection itself, the node's partition, and error descriptions that
//! say what Postgres said and what to check.
use std::{path::Path, sync::Arc};

use anyhow::{bail, Context};
use tokio_postgres::{error::SqlState, Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

/// Where and how to connect: the libpq-style settings, and the TLS connector when a CA file
/// was given (TLS with certificate and host name verification).
#[derive(Clone)]
pub struct Target {
    pub config: Config,
    pub tls: Option<MakeRustlsConnect>,
}

impl Target {
    pub fn plain(config: Config) -> Self {
        Target { config, tls: None }
    }
}

/// A TLS connector that trusts only the CA certificate(s) in `ca_file` (PEM).
pub fn tls_connector(ca_file: &Path) -> anyhow::Result<MakeRustlsConnect> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| anyhow::anyhow!("--db-ca-file {}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| anyhow::anyhow!("--db-ca-file {}: {e}", ca_file.display()))?;
        roots.add(cert).with_context(|| format!("--db-ca-file {}: not a usable CA certificate", ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("--db-ca-file {}: no certificate in it", ca_file.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Drives a connection on the runtime until the server goes away; the client then reports
/// `is_closed()`. The handle lets an owner that gave up on the server (a deadline passed) end
/// the task at once instead of leaving it waiting on a socket that may never answer.
pub fn drive<S, T>(connection: tokio_postgres::Connection<S, T>) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            // tokio-postgres' Display of a server's error is only "db error": say its message.
            warn!(error = describe(&e), "database connection lost");
        }
    })
}

/// A client together with the task driving its connection; dropping it ends both, whatever
/// the server is doing (a hung server never sees a graceful goodbye, and needs none).
pub struct OwnedClient {
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OwnedClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection (TLS when the target has a connector) and the task that drives it.
async fn connect_driven(target: &Target) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    Ok(match &target.tls {
        None => {
            let (client, connection) = target.config.connect(NoTls).await?;
            (client, drive(connection))
        }
        Some(tls) => {
            let (client, connection) = target.config.connect(tls.clone()).await?;
            (client, drive(connection))
        }
    })
}

/// Opens a connection whose driving task ends with it.
pub async fn connect_owned(target: &Target) -> Result<OwnedClient, tokio_postgres::Error> {
    let (client, task) = connect_driven(target).await?;
    Ok(OwnedClient { client, task })
}

/// Opens a connection; its task lives as long as the server keeps it open or the runtime runs
/// (the one-shot commands, whose runtime ends with them).
pub async fn connect(target: &Target) -> Result<Client, tokio_postgres::Error> {
    connect_driven(target).await.map(|(client, _task)| client)
}

/// [`connect`] with an explained error, for the commands.
pub async fn open(target: &Target) -> anyhow::Result<Client> {
    connect(target).await.map_err(explain_connect_error).context("connecting to the database")
}

/// Creates (if needed) the day partitions of node_features and pod_features for the UTC day
/// holding `at` (ensure_day_partitions() in migrations/0011_day_partitions.sql).
pub async fn ensure_day_partitions(client: &Client, at: std::time::SystemTime) -> Result<(), tokio_postgres::Error> {
    client.query_one("SELECT ensure_day_partitions($1)", &[&at]).await?;
    Ok(())
}

/// The UTC day of a timestamp, as days since 1970-01-01: the day partition a row belongs to.
pub fn utc_day(at: std::time::SystemTime) -> i64 {
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -(e.duration().as_secs().div_ceil(86_400) as i64),
    }
}

/// A database error with what Postgres said (message, detail, hint) or its cause: the
/// error's own Display is only "db error" or "error performing TLS handshake".
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s += &format!(" ({d})");
        }
        if let Some(h) = db.hint() {
            s += &format!(" hint: {h}");
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s += &format!(": {cause}");
        source = cause.source();
    }
    s
}

/// Adds what the user should check to errors whose cause is not obvious from Postgres' text.
pub fn explain_connect_error(e: tokio_postgres::Error) -> anyhow::Error {
    let text = describe(&e);
    let hint = if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("InvalidCertificate")
    {
        Some("the server's TLS certificate did not verify against --db-ca-file (or the host name does not match it)")
    } else if e.code() == Some(&SqlState::INVALID_PASSWORD) {
        Some("wrong password: check DB_PASSWORD / --db-password-file")
    } else if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) {
        Some("the database does not exist: check DB_NAME / the URL")
    } else {
        None
    };
    let explained = anyhow::Error::new(ConnectError { text, code: e.code().cloned() });
    match hint {
        Some(h) => explained.context(h),
        None => explained,
    }
}

/// A failed connection, described as Postgres described it, with its SQLSTATE kept so that the
/// writer can tell a server that is starting up from one that refuses.
#[derive(Debug)]
pub struct ConnectError {
    pub text: String,
    pub code: Option<SqlState>,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ConnectError {}
