//! Starts a real, throwaway PostgreSQL server from the Debian binaries in
//! /usr/lib/postgresql/*/bin: `initdb` into a fresh directory, `postgres` listening on a Unix
//! socket in that directory and on a loopback TCP port reserved for it, all as the `postgres` user (the
//! server refuses to run as root). Dropping the handle stops the server and deletes everything.
//!
//! The server is spawned with PR_SET_PDEATHSIG, so it also stops if the process that started it
//! dies without running destructors (a test binary holding it in a static); the directories of
//! such servers are removed by the next start.
//!
//! [`Options`] put a server in a network namespace of the caller's (to black-hole its packets)
//! or give it settings; [`ThrowawayPostgres::replica_of`] makes a streaming replica of a running
//! server (pg_basebackup) that [`ThrowawayPostgres::promote`] turns into a primary; [`pgbouncer`]
//! puts Debian's PgBouncer in front of one.
pub mod citus;
pub mod pgbouncer;
pub mod port;

use std::{
    ffi::CString,
    fmt, fs, io,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// Prefix of the directories under the system temp dir; the pid that owns one follows it.
const DIR_PREFIX: &str = "feature-agent-pg-";

/// A running server. Stopped and deleted on drop.
pub struct ThrowawayPostgres {
    dir: PathBuf,
    port: u16,
    /// Keeps `port` this server's while it is stopped (see [`port`]).
    _port_reservation: port::Reserved,
    child: Option<Child>,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    options: Options,
    /// Settings of this run only ([`ThrowawayPostgres::start_again`]).
    run_settings: Vec<String>,
    /// Processes stopped by [`ThrowawayPostgres::freeze`], resumed by thaw, stop or drop.
    frozen: Vec<i32>,
}

/// How a server runs, beyond the defaults (durability off, loopback, no extra settings).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A production server's durability (fsync, synchronous commit, full-page writes).
    pub durable: bool,
    /// The network namespace (`ip netns` name) the server runs in.
    pub netns: Option<String>,
    /// `listen_addresses` (default 127.0.0.1): the server's address inside its namespace.
    pub listen: Option<String>,
    /// More settings, `name=value`, given as `-c` on the command line.
    pub settings: Vec<String>,
}

/// The newest installed server's bin directory.
pub fn find_bin_dir() -> Result<PathBuf, Error> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| err(format!("no PostgreSQL server installed (/usr/lib/postgresql: {e}); run scripts/setup.sh")))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    dirs.pop().ok_or_else(|| err("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; run scripts/setup.sh"))
}

fn postgres_user() -> Result<(u32, u32), Error> {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd record; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(err("there is no `postgres` user (PostgreSQL refuses to run as root); run scripts/setup.sh"));
    }
    // SAFETY: pw is non-null and valid until the next getpw* call.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| err(format!("chown {}: {e}", path.display())))
}

/// Removes the directories of servers whose owning process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

impl ThrowawayPostgres {
    /// initdb + start; returns once the server accepts connections. Durability is off
    /// (fsync, synchronous_commit, full_page_writes): a throwaway server for tests.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(false)
    }

    /// Like [`ThrowawayPostgres::start`], with a production server's durability settings when
    /// `durable` (fsync, synchronous commit, full-page writes): for throughput measurements.
    pub fn start_with(durable: bool) -> Result<Self, Error> {
        Self::start_opts(Options { durable, ..Options::default() })
    }

    /// initdb + start with `options`.
    pub fn start_opts(options: Options) -> Result<Self, Error> {
        let pg = Self::new_dir(options)?;
        let out = Command::new(pg.bin.join("initdb"))
            .args(["-D"])
            .arg(pg.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
            .uid(pg.uid)
            .gid(pg.gid)
            .current_dir(&pg.dir)
            .output()
            .map_err(|e| err(format!("running initdb: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        // Any TCP client of the test's own namespaces may connect (trust, as over the socket).
        let hba = pg.data_dir().join("pg_hba.conf");
        let mut text = fs::read_to_string(&hba).map_err(|e| err(format!("reading pg_hba.conf: {e}")))?;
        text.push_str("host all all 0.0.0.0/0 trust\n");
        fs::write(&hba, text).map_err(|e| err(format!("writing pg_hba.conf: {e}")))?;
        let mut pg = pg;
        pg.spawn_server()?;
        Ok(pg)
    }

    /// A streaming replica of `primary` (pg_basebackup -R over its socket, after an immediate
    /// checkpoint: the default spread one can take minutes on a durable server), started with
    /// `options`: read-only, in recovery, until [`ThrowawayPostgres::promote`].
    pub fn replica_of(primary: &ThrowawayPostgres, options: Options) -> Result<Self, Error> {
        let mut pg = Self::new_dir(options)?;
        let out = Command::new(pg.bin.join("pg_basebackup"))
            .arg("-D")
            .arg(pg.data_dir())
            .arg("-h")
            .arg(&primary.dir)
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ])
            .uid(pg.uid)
            .gid(pg.gid)
            .current_dir(&pg.dir)
            .output()
            .map_err(|e| err(format!("running pg_basebackup: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        pg.spawn_server()?;
        Ok(pg)
    }

    /// Promotes a replica to a primary and waits until it takes writes.
    pub fn promote(&mut self) -> Result<(), Error> {
        let out = Command::new(self.bin.join("pg_ctl"))
            .args(["promote", "-w", "-t", "30", "-D"])
            .arg(self.data_dir())
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .map_err(|e| err(format!("running pg_ctl promote: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("pg_ctl promote failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT pg_is_in_recovery()")?.trim() != "f" {
            if Instant::now() > deadline {
                return Err(err("the promoted server is still in recovery after 30 s"));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, clients cut), keeping
    /// its data.
    pub fn crash(&mut self) {
        self.thaw();
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }

    /// Starts a server stopped by [`ThrowawayPostgres::crash`] or
    /// [`ThrowawayPostgres::stop_server`] again, with `settings` added to its command line for
    /// this run only.
    pub fn start_again(&mut self, settings: &[&str]) -> Result<(), Error> {
        self.run_settings = settings.iter().map(|s| s.to_string()).collect();
        self.spawn_server()
    }

    /// A fresh directory for a server, owned by the postgres user.
    fn new_dir(options: Options) -> Result<Self, Error> {
        let bin = find_bin_dir()?;
        let (uid, gid) = postgres_user()?;
        remove_stale_dirs();
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(e.to_string()))?;
        chown(&dir, uid, gid)?;

        let reservation = port::reserve()?;
        Ok(ThrowawayPostgres {
            dir,
            port: reservation.port(),
            _port_reservation: reservation,
            child: None,
            bin,
            uid,
            gid,
            options,
            run_settings: Vec::new(),
            frozen: Vec::new(),
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Directory of the server's Unix socket (usable as a libpq `host`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Server log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The address the server listens on (127.0.0.1 unless [`Options::listen`] said otherwise).
    pub fn listen_address(&self) -> &str {
        self.options.listen.as_deref().unwrap_or("127.0.0.1")
    }

    /// A key=value connection string over TCP to [`ThrowawayPostgres::listen_address`].
    pub fn tcp_url(&self, dbname: &str) -> String {
        format!("host={} port={} user=postgres dbname={dbname}", self.listen_address(), self.port)
    }

    /// A key=value connection string over the Unix socket, for `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!("host={} port={} user=postgres dbname={dbname}", self.dir.display(), self.port)
    }

    fn spawn_server(&mut self) -> Result<(), Error> {
        let log = fs::File::create(self.log_file()).map_err(|e| err(format!("creating the log file: {e}")))?;
        chown(&self.log_file(), self.uid, self.gid)?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D").arg(self.data_dir()).args(["-p", &self.port.to_string(), "-k"]).arg(&self.dir).args([
            "-c",
            &format!("listen_addresses={}", self.listen_address()),
            "-c",
            "max_connections=200",
        ]);
        if !self.options.durable {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
            cmd.args(["-c", "shared_buffers=64MB"]);
        }
        for s in self.options.settings.iter().chain(&self.run_settings) {
            cmd.arg("-c").arg(s);
        }
        // The namespace is opened here, before the fork, and entered in the child.
        let netns = match &self.options.netns {
            Some(name) => Some(
                fs::File::open(Path::new("/var/run/netns").join(name))
                    .map_err(|e| err(format!("network namespace {name}: {e}")))?,
            ),
            None => None,
        };
        let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| err(e.to_string()))?).stderr(log);
        let (uid, gid) = (self.uid, self.gid);
        // In the child, in this order: enter the namespace (needs root), drop to the postgres
        // user, then ask for a fast shutdown (SIGINT) if our process dies (a change of
        // credentials clears that request, so it comes last).
        // SAFETY: setns, setgroups, setgid, setuid and prctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
                if let Some(fd) = netns_fd {
                    check(libc::setns(fd, libc::CLONE_NEWNET))?;
                }
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT))
            });
        }
        let child = cmd.spawn().map_err(|e| err(format!("starting postgres: {e}")))?;
        drop(netns);
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = fs::read_to_string(self.log_file()).unwrap_or_default();
                return Err(err(format!("postgres exited ({status}) while starting:\n{log}")));
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "postgres did not become ready within {timeout:?}; log: {}",
                    self.log_file().display()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown), keeping its data: for outage tests.
    pub fn stop_server(&mut self) {
        self.thaw();
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// The server's processes: the postmaster and every process it started (backends,
    /// checkpointer, WAL writer, ...), found through /proc.
    pub fn server_pids(&self) -> Vec<i32> {
        let Some(postmaster) = self.child.as_ref().map(|c| c.id() as i32) else { return Vec::new() };
        let mut pids = vec![postmaster];
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
            // The parent pid is the second field after the parenthesised command name.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Sends SIGSTOP to every process of the server: its sockets stay open and nothing
    /// answers, as a frozen VM or a black-holed address. Returns the pids stopped.
    pub fn freeze(&mut self) -> Vec<i32> {
        let pids = self.server_pids();
        for &pid in &pids {
            // SAFETY: signalling the server's own processes.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        self.frozen = pids.clone();
        pids
    }

    /// Sends SIGCONT to the processes [`ThrowawayPostgres::freeze`] stopped.
    pub fn thaw(&mut self) {
        for pid in std::mem::take(&mut self.frozen) {
            // SAFETY: signalling the server's own processes.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart_server(&mut self) -> Result<(), Error> {
        self.stop_server();
        self.spawn_server()
    }

    /// Adds settings to postgresql.conf and lines at the top of pg_hba.conf (first match
    /// wins there), then restarts the server: for TLS and password-authentication tests.
    pub fn configure(&mut self, settings: &[&str], hba_first: &[&str]) -> Result<(), Error> {
        let conf = self.data_dir().join("postgresql.conf");
        let hba = self.data_dir().join("pg_hba.conf");
        let io = |e: io::Error| err(format!("configuring the server: {e}"));
        let mut text = fs::read_to_string(&conf).map_err(io)?;
        for s in settings {
            text.push_str(s);
            text.push('\n');
        }
        fs::write(&conf, text).map_err(io)?;
        let old = fs::read_to_string(&hba).map_err(io)?;
        fs::write(&hba, format!("{}\n{old}", hba_first.join("\n"))).map_err(io)?;
        self.restart_server()
    }

    /// Owner and group of the server's files (to hand it key files it can read).
    pub fn server_ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// Runs SQL through psql over the Unix socket and returns its unaligned output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, Error> {
        self.psql_as("postgres", dbname, sql)
    }

    /// [`ThrowawayPostgres::psql`] as another role (trust authentication over the socket).
    pub fn psql_as(&self, user: &str, dbname: &str, sql: &str) -> Result<String, Error> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", user, "-d", dbname, "-c", sql])
            .output()
            .map_err(|e| err(format!("running psql: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a fresh, empty database and returns its name.
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!("database name {name:?} must be [A-Za-z0-9_]")));
        }
        self.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"))?;
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(name.to_owned())
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop_server();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
