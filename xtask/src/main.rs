//! Developer tasks, run as `cargo xtask <task>`:
//!   setup       install what building and testing need (scripts/setup.sh; a no-op when done)
//!   build-ebpf  build the eBPF object alone (the same code agent/build.rs runs)
//!   demo        set up, start a throwaway Postgres, run the agent against it, show the rows
//!   test        set up and run the whole test suite (what .ci/run calls)
//!   bench       set up and run the benchmarks of BENCHMARKS.md
//!   detection   set up, start a throwaway Postgres, run `feature-agent drill` (the README's
//!               detection table)
//! xtask depends on nothing that needs the eBPF toolchain, so it builds on a fresh machine.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use throwaway_pg::ThrowawayPostgres;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the rust-src component, bpf-linker, tracefs and the PostgreSQL server if missing.
    Setup,
    /// Build the eBPF object (target/ebpf/bpfel-unknown-none/release/agent-ebpf).
    BuildEbpf,
    /// Run the agent against a throwaway local Postgres and show the rows as they arrive.
    Demo {
        /// Seconds between rows.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Rows to take; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 10)]
        records: u64,
    },
    /// Run every test: unit, fixture, CLI, Postgres and eBPF integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (CPU per row, RSS, slowdown of attached programs).
    Bench,
    /// Scripted detection run against a throwaway Postgres: prints F1 and delay per scenario.
    Detection {
        /// Extra arguments for `feature-agent drill` (e.g. --rounds 3 --gap 20).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn setup() -> anyhow::Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

/// Builds the release agent; returns its path.
fn release_agent() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--package", "agent", "--bin", "feature-agent"]))?;
    Ok(root().join("target/release/feature-agent"))
}

fn detection(args: &[String]) -> anyhow::Result<()> {
    setup()?;
    let agent = release_agent()?;
    let pg = ThrowawayPostgres::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = pg.url("postgres");
    eprintln!("detection: throwaway database {url}");
    run(Command::new(&agent).args(["drill", "--node-name", "drill"]).args(args).env("DATABASE_URL", &url))?;
    // Keep what the run produced: the plot, and the labelled dataset.
    let out = root().join("target/detection");
    std::fs::create_dir_all(&out)?;
    let png = out.join("drill.png");
    let parquet = out.join("drill.parquet");
    run(Command::new(&agent)
        .args(["plot", "--node", "drill", "--output"])
        .arg(&png)
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::null()))?;
    run(Command::new(&agent)
        .args(["export", "--format", "parquet", "--normalized", "--output"])
        .arg(&parquet)
        .env("DATABASE_URL", &url))?;
    eprintln!("detection: plot {}, dataset {}", png.display(), parquet.display());
    Ok(())
}

fn demo(interval: f64, records: u64) -> anyhow::Result<()> {
    setup()?;
    let agent = release_agent()?;
    eprintln!("demo: starting a throwaway PostgreSQL");
    let pg = ThrowawayPostgres::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = pg.url("postgres");
    eprintln!("demo: database: {url}");
    eprintln!("demo: running `feature-agent run --interval {interval} --records {records}`; each row is logged as it is written{}",
        if records == 0 { " (Ctrl-C to stop)" } else { "" });
    // Ctrl-C reaches the agent (same process group), which flushes and exits; we stay to clean up.
    // SAFETY: ignoring SIGINT in this process only.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = Command::new(agent)
        .args(["run", "--interval", &interval.to_string(), "--records", &records.to_string()])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .status()
        .context("starting feature-agent")?;
    let summary = pg
        .psql(
            "postgres",
            "SELECT to_char(ts, 'HH24:MI:SS') AS ts, round(interval_s::numeric, 2) AS interval_s, \
             round(cpu_sec_idle::numeric, 1) AS cpu_idle, round(mem_av_per::numeric, 1) AS mem_av, load1, \
             forks_total - lag(forks_total) OVER w AS forks_delta, ebpf_forks, ebpf_execs, \
             est_conn, lis_conn, tcp_to_est, sock_alloc_unix \
             FROM node_features WINDOW w AS (PARTITION BY node ORDER BY ts) ORDER BY ts",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("ts|interval_s|cpu_idle|mem_av|load1|forks_delta|ebpf_forks|ebpf_execs|est_conn|lis_conn|tcp_to_est|sock_alloc_unix");
    print!("{summary}");
    eprintln!("demo: the throwaway database is removed now");
    if !status.success() {
        bail!("feature-agent exited with {status}");
    }
    Ok(())
}

/// Runs `cargo test` (unit, fixture, CLI and integration tests; no doctests, there are none),
/// streams its output, and closes with one `N passed, N failed` line summed over every binary.
fn test(args: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cargo()
        .args(["test", "--no-fail-fast", "--lib", "--bins", "--tests"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word).map(str::trim))
                    .and_then(|n| n.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf => {
            let object = ebpf_build::build(&root())?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Demo { interval, records } => demo(interval, records),
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
        Task::Detection { args } => detection(&args),
        Task::Bench => {
            setup()?;
            run(cargo().args(["bench", "--package", "tests", "--bench", "agent"]))
        }
    }
}
