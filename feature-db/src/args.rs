//! The options both binaries take: where the database is (`DatabaseArgs`, every option with an
//! environment fallback, secrets never from the command line) and which node this is
//! (`NodeArgs`), and the value parsers they share.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::Args;

use crate::connect::{self as db};

/// Longest node name accepted (bytes). Kubernetes allows 253; we store longer ones verbatim too.
pub const NODE_NAME_MAX_BYTES: usize = 1024;

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres connection string (URL or key=value): the whole connection. Setting DB_HOST,
    /// DB_PORT, DB_USER or DB_NAME beside it (or a password when it has one) is refused.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Database host (or a Unix socket directory), as the paper's deployment sets it.
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,
    /// Database port (with --db-host) [default: 5432].
    #[arg(long, env = "DB_PORT")]
    pub db_port: Option<u16>,
    /// Database user (with --db-host) [default: postgres]. The password comes from the DB_PASSWORD
    /// environment variable (never the command line, where every user of the node can read
    /// it) or --db-password-file.
    #[arg(long, env = "DB_USER")]
    pub db_user: Option<String>,
    /// The password; accepted from the environment only (DB_PASSWORD), never on the command
    /// line where every user of the node can read it. See --db-password-file.
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true, hide = true)]
    pub db_password: Option<String>,
    /// File holding the password (e.g. a mounted Kubernetes Secret); trailing newline ignored.
    #[arg(long, env = "DB_PASSWORD_FILE", conflicts_with = "db_password")]
    pub db_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify the server's TLS certificate with; turns TLS on
    /// (sslmode=require unless the URL says verify-full or another mode).
    #[arg(long, env = "DB_CA_FILE")]
    pub db_ca_file: Option<PathBuf>,
    /// Database name (with --db-host).
    #[arg(long, env = "DB_NAME")]
    pub db_name: Option<String>,
}

/// The node's name, as `run` and `scenario` take it.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node name stored with every row [default: the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

impl NodeArgs {
    /// The given name, or the hostname; validated.
    pub fn resolve(&self) -> anyhow::Result<String> {
        let name = match &self.node_name {
            Some(n) => n.clone(),
            None => hostname()?,
        };
        validate_node_name(&name)?;
        Ok(name)
    }
}

/// A finite number above zero (a threshold).
pub fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number above 0")),
    }
}

/// The parser of every boolean option and environment variable: 1/0, true/false, yes/no,
/// on/off (any case), so `NO_EBPF=1` means what it says.
pub fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

pub fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.01..=86_400.0).contains(&v) {
        return Err(format!("{v} is out of range: give seconds between 0.01 and 86400"));
    }
    Ok(v)
}

/// Checks a node name: any text, stored verbatim, but not empty, without NUL (Postgres text
/// cannot hold it) and of bounded length.
pub fn validate_node_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("the node name is empty; set --node-name or NODE_NAME");
    }
    if name.contains('\0') {
        bail!("the node name contains a NUL character, which Postgres text cannot store");
    }
    if name.len() > NODE_NAME_MAX_BYTES {
        bail!("the node name is {} bytes long; the limit is {NODE_NAME_MAX_BYTES}", name.len());
    }
    Ok(())
}

fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates within it on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("gethostname");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

impl DatabaseArgs {
    /// The settings as the environment variables a child agent reads (secrets stay off
    /// command lines).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        env.extend(self.db_port.map(|p| ("DB_PORT", p.to_string())));
        let optional = [
            ("DATABASE_URL", &self.database_url),
            ("DB_HOST", &self.db_host),
            ("DB_USER", &self.db_user),
            ("DB_PASSWORD", &self.db_password),
            ("DB_NAME", &self.db_name),
        ];
        env.extend(optional.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
        let files = [("DB_PASSWORD_FILE", &self.db_password_file), ("DB_CA_FILE", &self.db_ca_file)];
        env.extend(files.into_iter().filter_map(|(k, v)| v.as_ref().map(|p| (k, p.display().to_string()))));
        env
    }

    /// Where to connect, with TLS when --db-ca-file is given.
    pub fn target(&self) -> anyhow::Result<db::Target> {
        let config = self.config()?;
        let tls = match &self.db_ca_file {
            Some(f) => Some(db::tls_connector(f)?),
            None => None,
        };
        Ok(db::Target { config, tls })
    }

    /// Connects with every call bounded by `limit` (the commands other than `run`, which keeps
    /// its own connection and deadlines).
    pub async fn connect(&self, limit: std::time::Duration) -> anyhow::Result<crate::deadline::Db> {
        crate::deadline::Db::connect(&self.target()?, limit).await
    }

    /// The connection settings: DATABASE_URL alone, or the paper's DB_HOST/DB_PORT/...
    /// variables; never a mix of the two, which would connect somewhere neither says.
    pub fn config(&self) -> anyhow::Result<tokio_postgres::Config> {
        let mut config = if let Some(url) = &self.database_url {
            let config = url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| anyhow::anyhow!("--database-url / DATABASE_URL is not a valid connection string: {e}"))?;
            let mut mixed: Vec<&str> = [
                ("--db-host / DB_HOST", self.db_host.is_some()),
                ("--db-port / DB_PORT", self.db_port.is_some()),
                ("--db-user / DB_USER", self.db_user.is_some()),
                ("--db-name / DB_NAME", self.db_name.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if config.get_password().is_some() {
                if self.db_password.is_some() {
                    mixed.push("DB_PASSWORD");
                }
                if self.db_password_file.is_some() {
                    mixed.push("--db-password-file / DB_PASSWORD_FILE");
                }
            }
            if !mixed.is_empty() {
                bail!(
                    "--database-url / DATABASE_URL is set, and so is {}: the URL is the whole connection, so these would \
                     silently change it. Use one or the other (a password may come from DB_PASSWORD or \
                     --db-password-file when the URL has none)",
                    mixed.join(", ")
                );
            }
            config
        } else if let Some(host) = &self.db_host {
            let mut c = tokio_postgres::Config::new();
            c.host(host).port(self.db_port.unwrap_or(5432));
            if let Some(u) = &self.db_user {
                c.user(u);
            }
            if let Some(n) = &self.db_name {
                c.dbname(n);
            }
            c
        } else {
            bail!("no database configured: set --database-url / DATABASE_URL, or DB_HOST (with DB_PORT, DB_USER, DB_PASSWORD, DB_NAME)");
        };
        if let Some(p) = &self.db_password {
            config.password(p);
        }
        if let Some(f) = &self.db_password_file {
            let p = std::fs::read_to_string(f).with_context(|| format!("--db-password-file {}", f.display()))?;
            config.password(p.trim_end_matches(['\r', '\n']));
        }
        if self.db_ca_file.is_some() && config.get_ssl_mode() != tokio_postgres::config::SslMode::Disable {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if config.get_user().is_none() {
            config.user("postgres");
        }
        config.application_name("feature-agent");
        config.connect_timeout(Duration::from_secs(10));
        Ok(config)
    }
}

/// Where a configuration connects, for log lines: host(s), port, user and database (what
/// Postgres will use when none is named: the user's name).
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or(user);
    format!("database {db:?} as {user:?} at {}:{port}", hosts.join(","))
}

/// Refuses a password given on the command line (visible to every user in ps and
/// /proc/PID/cmdline) when the environment or a file can carry it.
pub fn refuse_secrets_on_command_line(matches: &clap::ArgMatches) -> Result<(), String> {
    let Some((_, sub)) = matches.subcommand() else { return Ok(()) };
    let from_cli = |id: &str| {
        sub.try_contains_id(id).unwrap_or(false) && sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    if from_cli("db_password") {
        return Err("refusing --db-password on the command line, where every user of the node can read it: \
                    set DB_PASSWORD in the environment or use --db-password-file"
            .into());
    }
    if from_cli("database_url") {
        let url: Option<&String> = sub.get_one("database_url");
        if url.and_then(|u| u.parse::<tokio_postgres::Config>().ok()).is_some_and(|c| c.get_password().is_some()) {
            return Err("refusing a --database-url with a password on the command line: set DATABASE_URL in the \
                        environment, or leave the password out and use DB_PASSWORD or --db-password-file"
                .into());
        }
    }
    Ok(())
}
