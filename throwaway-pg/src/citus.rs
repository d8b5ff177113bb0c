//! A throwaway Citus cluster on this machine: a coordinator and `workers` workers, each a
//! [`ThrowawayPostgres`] on a loopback port with the citus extension preloaded, joined into one
//! cluster for every database made with [`ThrowawayCitus::create_database`]. Dropping it stops
//! and deletes them all.
//!
//! Citus itself must be installed in the PostgreSQL the servers run (its citus.so and
//! extension files): on this project's machines `../shared/citus/build.sh` builds it from
//! source; elsewhere Citus's own packages install it.
use std::path::PathBuf;

use crate::{err, find_bin_dir, Error, ThrowawayPostgres};

/// Settings every node of the cluster gets. Shards: 8 per distributed table (Citus's default is
/// 32): a test cluster on two cores, where every day partition is one table per shard.
/// Connections between the nodes: plain TCP on loopback (Citus asks for TLS by default).
/// Two-phase commit (prepared transactions) is how Citus commits a change to a reference table
/// on every worker.
const SETTINGS: &[&str] = &[
    "shared_preload_libraries = 'citus'",
    "citus.node_conninfo = 'sslmode=disable'",
    "citus.shard_count = 8",
    "max_prepared_transactions = 100",
    "citus.log_distributed_deadlock_detection = off",
];

pub struct ThrowawayCitus {
    pub coordinator: ThrowawayPostgres,
    pub workers: Vec<ThrowawayPostgres>,
}

/// Whether the citus extension is installed in the PostgreSQL the throwaway servers run
/// (Debian's layout: /usr/lib/postgresql/<version>/lib/citus.so and
/// /usr/share/postgresql/<version>/extension/citus.control).
pub fn citus_installed() -> Result<bool, Error> {
    let bin = find_bin_dir()?;
    let version_dir = bin.parent().ok_or_else(|| err("the server's bin directory has no parent"))?;
    let version = version_dir.file_name().and_then(|v| v.to_str()).unwrap_or_default();
    let control = PathBuf::from("/usr/share/postgresql").join(version).join("extension/citus.control");
    Ok(version_dir.join("lib/citus.so").is_file() && control.is_file())
}

impl ThrowawayCitus {
    /// Starts a coordinator and `workers` workers with citus preloaded, durability off (as
    /// [`ThrowawayPostgres::start`]).
    pub fn start(workers: usize) -> Result<Self, Error> {
        Self::start_with(workers, false)
    }

    /// [`ThrowawayCitus::start`], with a production server's durability on every node when
    /// `durable`: for throughput measurements.
    pub fn start_with(workers: usize, durable: bool) -> Result<Self, Error> {
        if !citus_installed()? {
            return Err(err(
                "Citus is not installed in this PostgreSQL: run ../shared/citus/build.sh (or install Citus's packages)",
            ));
        }
        let node = || -> Result<ThrowawayPostgres, Error> {
            let mut pg = ThrowawayPostgres::start_with(durable)?;
            pg.configure(SETTINGS, &[])?;
            Ok(pg)
        };
        let coordinator = node()?;
        let workers = (0..workers).map(|_| node()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { coordinator, workers })
    }

    /// Creates database `name` on every node with the citus extension, and joins the workers
    /// to the coordinator for it (Citus keeps its cluster's membership per database). Returns
    /// the name.
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        for pg in std::iter::once(&self.coordinator).chain(&self.workers) {
            pg.create_database(name)?;
            pg.psql(name, "CREATE EXTENSION citus")?;
        }
        self.coordinator
            .psql(name, &format!("SELECT citus_set_coordinator_host('127.0.0.1', {})", self.coordinator.port()))?;
        for w in &self.workers {
            self.coordinator.psql(name, &format!("SELECT citus_add_node('127.0.0.1', {})", w.port()))?;
        }
        Ok(name.to_owned())
    }

    /// The coordinator's connection string for `dbname` (where clients connect).
    pub fn url(&self, dbname: &str) -> String {
        self.coordinator.url(dbname)
    }

    /// Runs SQL on the coordinator through psql.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, Error> {
        self.coordinator.psql(dbname, sql)
    }

    /// The index (in `workers`) of the worker listening on `port`.
    pub fn worker_on_port(&self, port: u16) -> Option<usize> {
        self.workers.iter().position(|w| w.port() == port)
    }
}
