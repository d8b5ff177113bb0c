//! Harness of the integration tests: one throwaway Postgres per test binary, the agent binary,
//! and the rule on missing privileges.
//!
//! Tests need root (eBPF, and a Postgres started as the `postgres` user). Without it they FAIL,
//! unless FEATURE_AGENT_TEST_ALLOW_SKIP=1 is set outside CI: then they print SKIPPED and pass.
//! In CI (CI=true) skipping is never allowed.
pub mod cgroup;
pub mod cri;
pub mod kernel;
pub mod netns;
pub mod schemas;
use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, Instant},
};

pub use throwaway_pg::ThrowawayPostgres;

pub mod process;

/// Whether the running user may skip privileged tests (explicit opt-in, never in CI).
fn skip_allowed() -> bool {
    let opted_in = std::env::var("FEATURE_AGENT_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1");
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    opted_in && !in_ci
}

/// Returns true if the test can go on as root. Otherwise fails the test, or returns false
/// after printing SKIPPED when skipping was opted into.
#[must_use]
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if skip_allowed() {
        eprintln!("SKIPPED {test}: needs root (eBPF and a throwaway Postgres); FEATURE_AGENT_TEST_ALLOW_SKIP=1");
        return false;
    }
    panic!("{test} needs root for eBPF and the throwaway Postgres; run as root, or set FEATURE_AGENT_TEST_ALLOW_SKIP=1 to skip (not honoured in CI)");
}

/// The test binary's shared Postgres, started on first use from a thread that lives as long
/// as the process, so the server's parent-death signal fires only when the process exits.
pub fn postgres() -> &'static ThrowawayPostgres {
    static PG: OnceLock<ThrowawayPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(ThrowawayPostgres::start()).expect("receiver waits");
            loop {
                std::thread::park();
            }
        });
        match rx.recv().expect("the starter thread answers") {
            Ok(pg) => pg,
            Err(e) => panic!("cannot start the throwaway Postgres: {e}"),
        }
    })
}

/// Returns true if the Citus tests can go on: the citus extension is installed in this
/// machine's PostgreSQL (`../shared/citus/build.sh` builds it; `cargo xtask test` runs that).
/// Otherwise fails the test, or, where skipping is allowed (never in CI), prints SKIPPED.
#[must_use]
pub fn have_citus(test: &str) -> bool {
    if !have_root(test) {
        return false;
    }
    match throwaway_pg::citus::citus_installed() {
        Ok(true) => true,
        _ if skip_allowed() => {
            eprintln!("SKIPPED {test}: Citus is not installed (../shared/citus/build.sh); FEATURE_AGENT_TEST_ALLOW_SKIP=1");
            false
        }
        Ok(false) => panic!("{test} needs Citus installed in this PostgreSQL: run ../shared/citus/build.sh (cargo xtask test does), or install Citus's packages"),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The test binary's shared Citus cluster (a coordinator and two workers), started on first
/// use, like [`postgres`].
pub fn citus() -> &'static throwaway_pg::citus::ThrowawayCitus {
    static CITUS: OnceLock<throwaway_pg::citus::ThrowawayCitus> = OnceLock::new();
    CITUS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(throwaway_pg::citus::ThrowawayCitus::start(2)).expect("receiver waits");
            loop {
                std::thread::park();
            }
        });
        match rx.recv().expect("the starter thread answers") {
            Ok(c) => c,
            Err(e) => panic!("cannot start the throwaway Citus cluster: {e}"),
        }
    })
}

/// A fresh database on the shared server; returns its Unix-socket connection string.
pub fn fresh_database(name: &str) -> String {
    let pg = postgres();
    pg.create_database(name).unwrap_or_else(|e| panic!("{e}"));
    pg.url(name)
}

/// A fresh database with the schema applied by `feature-agent migrate`; returns its URL.
pub fn migrated_database(name: &str) -> String {
    let url = fresh_database(name);
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
    assert!(out.status.success(), "migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    url
}

/// Runs SQL on a database of the shared server; returns psql's unaligned, tuples-only output.
pub fn sql(db: &str, query: &str) -> String {
    postgres().psql(db, query).unwrap_or_else(|e| panic!("{e}")).trim_end().to_owned()
}

/// A binary of this workspace, built (if stale) by cargo with the tests' profile.
fn workspace_bin(package: &str, bin: &str, features: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps").to_path_buf();
    let target_dir = profile_dir.parent().expect("target").to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args(["build", "--quiet", "--package", package, "--bin", bin]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    cmd.arg("--target-dir").arg(&target_dir);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// The feature-agent binary (the node daemon), built (if stale) by cargo for this workspace
/// with the faults the tests inject (agent's `fault-injection` feature, the same build of the
/// agent library as the tests'), or the one FEATURE_AGENT_BIN names (a VM of `cargo xtask
/// kernel-test` has no cargo; its release binary injects nothing).
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("FEATURE_AGENT_BIN")
            .map_or_else(|| workspace_bin("agent", "feature-agent", &["fault-injection"]), PathBuf::from)
    })
    .clone()
}

/// The feature-lab binary (the research tools), built (if stale) by cargo for this workspace.
pub fn lab_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("lab", "feature-lab", &[])).clone()
}

/// `s` as an SQL string literal: single-quoted, its quotes doubled.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A finished process's standard error, as text.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends SIGTERM to a child (an agent) and collects its output once it has exited.
pub fn terminate(child: std::process::Child) -> Output {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().expect("waiting for the child")
}

/// A fresh, empty spool directory for one agent process (agents must not share one).
pub fn fresh_spool_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "feature-agent-test-spool-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The agent binary as a command with the test defaults: its own spool directory, the
/// metrics listener on an ephemeral loopback port, and none of the caller's agent settings.
pub fn agent_command() -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.env_remove("DATABASE_URL").env_remove("NODE_NAME").env_remove("INTERVAL").env_remove("RECORDS_NUM");
    cmd.env("SPOOL_DIR", fresh_spool_dir()).env("LISTEN", "127.0.0.1:0");
    cmd
}

/// Runs `feature-agent` to completion with a time limit; returns its output.
pub fn run_agent(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    run_to_completion(agent_command(), args, env, limit)
}

/// Runs `feature-lab` to completion with a time limit (with the same clean environment as the
/// agent's, and FEATURE_AGENT pointing at the workspace's agent for `drill`); returns its output.
pub fn run_lab(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    run_to_completion(lab_command(), args, env, limit)
}

/// The lab binary as a command with the test defaults (see [`run_lab`]).
pub fn lab_command() -> Command {
    let mut cmd = Command::new(lab_bin());
    cmd.env_remove("DATABASE_URL").env_remove("NODE_NAME");
    cmd.env("FEATURE_AGENT", agent_bin());
    cmd
}

fn run_to_completion(mut cmd: Command, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {program}: {e}"));
    // Both pipes are drained while the child runs: a child that writes more than a pipe holds
    // (a PNG on stdout) would otherwise block and never exit.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            let stdout = stdout.join().expect("reading stdout");
            let stderr = stderr.join().expect("reading stderr");
            return Output { status, stdout, stderr };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().expect("reading stderr");
            panic!("{program} {args:?} did not finish within {limit:?}\nstderr:\n{}", String::from_utf8_lossy(&stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Serialises tests that measure node-wide kernel counters, so that one test's traffic is not
/// counted by another running in parallel in the same binary.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many measurement windows a check of node-wide kernel counts may take: the counts are
/// node-wide, so anything else running on the machine adds to them; such a window is measured
/// again, and a real miscount fails every attempt.
pub const ATTEMPTS: usize = 5;

/// How a window's counts missed what the test made happen.
#[derive(Debug)]
pub enum Miss {
    /// More than made, in a count that other activity on the machine also feeds: the window
    /// was not quiet, and is measured again.
    Noisy(String),
    /// Fewer than made, or a count nothing else feeds (a test's own cgroup): no other activity
    /// explains it, so it fails at once. An intermittent undercount must be able to fail.
    Wrong(String),
}

/// Runs `check` until it returns Ok: a [`Miss::Noisy`] window is retried, at most [`ATTEMPTS`]
/// times; a [`Miss::Wrong`] one fails at once.
pub fn exactly(what: &str, mut check: impl FnMut() -> Result<(), Miss>) {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match check() {
            Ok(()) => return,
            Err(Miss::Wrong(e)) => panic!("{what}: {e} (attempt {attempt}; other activity cannot explain it)"),
            Err(Miss::Noisy(e)) => {
                eprintln!("{what}: attempt {attempt}: {e}");
                last = e;
            }
        }
    }
    panic!("{what}: not exact in {ATTEMPTS} windows; last: {last}");
}

/// Compares node-wide counts with what the test made happen: any count short is
/// [`Miss::Wrong`], any over (and none short) is [`Miss::Noisy`].
pub fn expect_counts<const N: usize>(what: &str, got: [u64; N], want: [u64; N]) -> Result<(), Miss> {
    let text = || format!("{what} = {got:?}, expected {want:?}");
    if got.iter().zip(&want).any(|(g, w)| g < w) {
        return Err(Miss::Wrong(text()));
    }
    if got != want {
        return Err(Miss::Noisy(text()));
    }
    Ok(())
}

/// Parses RFC 4180 CSV text (quoted fields with doubled quotes, commas and newlines inside
/// quotes) into records of fields.
pub fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// CPU time this thread has used (CLOCK_THREAD_CPUTIME_ID), for the benches.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A sampler with per-pod rows on over this host's cgroup v2 tree, with the real eBPF programs
/// (for the benches).
pub fn pod_sampler() -> agent::sources::sampler::Sampler {
    pod_sampler_counting_bytes(None)
}

/// [`pod_sampler`], counting bytes too with `ranges` (--count-bytes) when given.
pub fn pod_sampler_counting_bytes(
    ranges: Option<agent::sources::net_bytes::AddressRanges>,
) -> agent::sources::sampler::Sampler {
    use agent::{
        sources::collector::{DiskSelector, InterfaceSelector, Roots, Sources},
        sources::ebpf::{EbpfCounters, LoadOptions},
        sources::netns::Proc,
    };
    let roots = Roots::default();
    let sources =
        Sources::new(roots.clone(), DiskSelector::default_for(&roots.sysfs), InterfaceSelector::physical(&roots.sysfs));
    agent::sources::ebpf::ensure_tracefs();
    let mut counters =
        EbpfCounters::load_with(LoadOptions { cgroup_map_entries: Some(4096), ..LoadOptions::default() })
            .expect("eBPF loads");
    let root = agent::sources::cgroups::cgroup2_root_of_this_host().expect("a cgroup v2 tree");
    let bytes = ranges.map(|r| {
        agent::sources::net_bytes::ByteCounting::attach(&mut counters, &root, r)
            .expect("the socket-buffer programs attach at the cgroup v2 root")
    });
    let pods = agent::sources::pods::PodSampler::new(root, "/nonexistent".into(), Proc::default());
    agent::sources::sampler::Sampler::new(
        "bench".into(),
        sources,
        Some(counters),
        Duration::from_secs(3600),
        Proc::default(),
    )
    .with_pods(Some(pods))
    .with_byte_counting(bytes)
}
