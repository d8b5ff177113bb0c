//! Debian's PgBouncer (1.18) in front of a [`ThrowawayPostgres`], as a fleet would run it: a
//! pooler that lends a server connection to each transaction (`pool_mode = transaction`), with
//! a pool much smaller than its clients. It runs as the `postgres` user (PgBouncer refuses
//! root), listens on a free loopback port, trusts every client (as the test server does), and
//! is stopped and deleted on drop.
use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{chown, err, port, postgres_user, Error, ThrowawayPostgres};

/// Where Debian installs it.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// How the pooler is set up.
#[derive(Debug, Clone)]
pub struct PoolerOptions {
    /// Server connections per database and user (`default_pool_size`).
    pub pool_size: u32,
    /// Client connections it accepts (`max_client_conn`).
    pub max_clients: u32,
    /// `pool_mode`: transaction, session or statement.
    pub mode: &'static str,
}

impl Default for PoolerOptions {
    fn default() -> Self {
        PoolerOptions { pool_size: 10, max_clients: 1000, mode: "transaction" }
    }
}

pub struct ThrowawayPgBouncer {
    dir: PathBuf,
    port: u16,
    _port_reservation: port::Reserved,
    child: Option<Child>,
}

/// Whether Debian's PgBouncer is installed.
pub fn pgbouncer_installed() -> bool {
    Path::new(PGBOUNCER).is_file()
}

impl ThrowawayPgBouncer {
    /// Starts a pooler for every database of `pg`; returns once it accepts connections.
    pub fn start(pg: &ThrowawayPostgres, options: PoolerOptions) -> Result<Self, Error> {
        if !pgbouncer_installed() {
            return Err(err(format!("{PGBOUNCER} is not installed: run scripts/setup.sh (apt-get install pgbouncer)")));
        }
        let (uid, gid) = postgres_user()?;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("feature-agent-pgbouncer-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(e.to_string()))?;
        chown(&dir, uid, gid)?;
        let reservation = port::reserve()?;
        let port = reservation.port();
        let users = dir.join("users.txt");
        fs::write(&users, "\"postgres\" \"\"\n").map_err(|e| err(e.to_string()))?;
        let config = dir.join("pgbouncer.ini");
        // The agent's startup packet carries only what PgBouncer tracks (user, database,
        // application_name, client_encoding, ...); nothing needs ignore_startup_parameters.
        let text = format!(
            "[databases]\n* = host={socket} port={pg_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {dir}\nauth_type = trust\nauth_file = {users}\nadmin_users = postgres\n\
             pool_mode = {mode}\ndefault_pool_size = {pool}\nmax_client_conn = {clients}\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\nserver_login_retry = 1\n",
            socket = pg.socket_dir().display(),
            pg_port = pg.port(),
            dir = dir.display(),
            users = users.display(),
            mode = options.mode,
            pool = options.pool_size,
            clients = options.max_clients,
        );
        fs::write(&config, text).map_err(|e| err(e.to_string()))?;
        for f in [&users, &config] {
            chown(f, uid, gid)?;
        }
        let mut cmd = Command::new(PGBOUNCER);
        cmd.arg(&config).uid(uid).gid(gid).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the pooler stops if our process dies.
        unsafe {
            cmd.pre_exec(|| {
                // It needs a descriptor per client and per server connection.
                let limit = libc::rlimit { rlim_cur: 8192, rlim_max: 8192 };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| err(format!("starting pgbouncer: {e}")))?;
        let mut bouncer = ThrowawayPgBouncer { dir, port, _port_reservation: reservation, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = bouncer.child.as_mut().map(Child::try_wait) {
                return Err(err(format!("pgbouncer exited ({status}) while starting:\n{}", bouncer.log())));
            }
            if Instant::now() > deadline {
                return Err(err(format!("pgbouncer did not listen within 20 s:\n{}", bouncer.log())));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(bouncer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A key=value connection string to `dbname` through the pooler.
    pub fn url(&self, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={dbname}", self.port)
    }

    /// The pooler's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// Runs an admin console command (`SHOW POOLS`, `SHOW STATS`, ...) and returns psql's
    /// unaligned output.
    pub fn admin(&self, command: &str) -> Result<String, Error> {
        let psql = crate::find_bin_dir()?.join("psql");
        let out = Command::new(psql)
            .args(["-X", "-A", "-F", ",", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-d", "pgbouncer", "-c", command])
            .output()
            .map_err(|e| err(format!("running psql: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("pgbouncer {command}: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for ThrowawayPgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
