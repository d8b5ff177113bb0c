//! Developer tasks, run as `cargo xtask <task>`:
//!   gen         write what follows from the column declaration (feature-schema): the
//!               generated SQL and the tables of docs/schema.md; `--check` fails when they are stale
//!   setup       install what building and testing need (scripts/setup.sh; a no-op when done)
//!   build-ebpf  build the eBPF object alone (the same code agent/build.rs runs)
//!   demo        set up, start a throwaway Postgres, run the agent against it, show the rows
//!   test        set up and run the whole test suite (what .ci/run calls)
//!   bench       set up and run the benchmarks of BENCHMARKS.md
//!   detection   set up, start a throwaway Postgres, run `feature-lab drill` (the README's
//!               detection table), then the IsolationForest baseline on its dataset
//!   build-static  the fully static release binary the Dockerfile ships (glibc, static-pie)
//!   image-check   build-static, then run that binary in an empty root directory (what the
//!               distroless/static image gives it): eBPF loads and a row is taken
//!   kernel-test   boot Debian's 6.1 and 6.12 kernels under QEMU and run the eBPF truth tests
//!               inside each (kernel_test.rs)
//!   runtime-check run deploy/'s containers under a private containerd with the manifests'
//!               security settings (runtime_check.rs)
//!   deploy-check  validate deploy/ offline against the Kubernetes schemas and scan it with
//!               checkov (both from PyPI, in target/deploy-venv)
//! xtask depends on nothing that needs the eBPF toolchain, so it builds on a fresh machine.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use throwaway_pg::ThrowawayPostgres;

mod kernel_test;
mod runtime_check;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write the files generated from feature-schema/src/columns.rs (migrations/generated/
    /// analysis.sql, docs/schema.md's tables); with --check, only say whether they are current.
    Gen {
        /// Change nothing; fail when a generated file differs from what the declaration gives.
        #[arg(long)]
        check: bool,
    },
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
    /// Build the fully static release binary that the Dockerfile ships.
    BuildStatic,
    /// Build the static binary and run it in an empty root directory (no libc, no /etc but
    /// hosts and nsswitch.conf), as the image runs it: eBPF must load and a row be taken.
    ImageCheck,
    /// Validate deploy/ (base and overlays, rendered offline) against the Kubernetes schemas
    /// and scan it with checkov; any finding without a written reason fails.
    DeployCheck,
    /// Boot Debian's 6.1 and 6.12 cloud kernels under QEMU and run the eBPF truth tests and the
    /// agent's hook checks inside each; see kernel_test.rs.
    KernelTest,
    /// Run the Kubernetes containers of deploy/ (migrate Job, DaemonSet, privileged overlay)
    /// under a private containerd with the manifests' security settings; see runtime_check.rs.
    RuntimeCheck,
    /// Scripted detection run against a throwaway Postgres: prints F1 and delay per scenario.
    Detection {
        /// Extra arguments for `feature-lab drill` (e.g. --rounds 3 --gap 20).
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

/// Builds the release research tools (beside the agent, where `drill` finds it); returns the
/// path of feature-lab.
fn release_lab() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--package", "lab", "--bin", "feature-lab"]))?;
    Ok(root().join("target/release/feature-lab"))
}

/// Builds feature-agent as a static-pie glibc binary (glibc >= 2.34 has the files and dns name
/// services built in, so it resolves names without any shared library) with the `dist` profile
/// (fat LTO, one codegen unit, symbols stripped); returns its path.
fn build_static() -> anyhow::Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    run(cargo()
        .args(["build", "--profile", "dist", "--locked", "--package", "agent", "--bin", "feature-agent"])
        .args(["--target", target])
        .args(["--target-dir", "target/static"])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static"))?;
    Ok(root().join("target/static").join(target).join("dist/feature-agent"))
}

/// Builds one integration test of the tests crate as a static binary (as build_static builds
/// the agent, sharing its target directory); returns its path, and the paths of the crate's
/// programs cargo built with it (each at the path the test binary names them by).
fn build_static_test(test: &str) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let target = "x86_64-unknown-linux-gnu";
    let out = cargo()
        .args(["test", "--release", "--locked", "--package", "tests", "--test", test, "--no-run", "--target", target])
        .args(["--target-dir", "target/static", "--message-format=json"])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the static test binary")?;
    if !out.status.success() {
        bail!("building the static {test} test binary failed");
    }
    let artifacts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .collect();
    let executable = |m: &serde_json::Value| m["executable"].as_str().map(PathBuf::from);
    let programs = artifacts
        .iter()
        .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
        .filter(|m| m["manifest_path"].as_str().is_some_and(|p| p.ends_with("/tests/Cargo.toml")))
        .filter_map(executable)
        .collect();
    let binary = artifacts
        .iter()
        .filter(|m| m["target"]["name"] == test)
        .find_map(executable)
        .with_context(|| format!("cargo named no executable for the {test} test"))?;
    Ok((binary, programs))
}

/// Runs the static binary in an empty root with only /proc and /sys bound in.
fn image_check() -> anyhow::Result<()> {
    setup()?;
    let bin = build_static()?;
    let empty = root().join("target/image-root");
    let script = format!(
        r#"set -eu
R={root}
rm -rf "$R"; mkdir -p "$R/etc" "$R/proc" "$R/sys" "$R/tmp"
cp {bin} "$R/feature-agent"
echo 'hosts: files dns' > "$R/etc/nsswitch.conf"
echo '127.0.0.1 localhost' > "$R/etc/hosts"
unshare --mount --propagation private sh -c '
  mount --bind /proc "$0/proc" && mount --rbind /sys "$0/sys" &&
  chroot "$0" /feature-agent print --records 2 --interval 0.3 --node-name image-check --require-ebpf' "$R"
"#,
        root = empty.display(),
        bin = bin.display()
    );
    let out =
        Command::new("sh").arg("-c").arg(script).output().context("running the static binary in an empty root")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.lines().count() != 2 {
        bail!(
            "the static binary failed in an empty root: {}
{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&empty);
    // The image's binary carries none of the faults the tests inject (agent's fault-injection
    // feature): its option is unknown there.
    let faults = Command::new(&bin).args(["print", "--records", "1", "--test-fail-map-read", "1"]).output()?;
    let said = String::from_utf8_lossy(&faults.stderr);
    if faults.status.success() || !said.contains("unexpected argument '--test-fail-map-read'") {
        bail!("the image's binary takes the tests' fault options: {said}");
    }
    eprintln!("image-check: {} runs alone in an empty root (eBPF loaded, 2 rows) and injects no faults", bin.display());
    Ok(())
}

/// Kubernetes versions the manifests are validated against (oldest supported and newest).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.34.0"];
const PYTHON_TOOLS: [&str; 2] = ["checkov==3.3.30", "kubernetes-validate==1.37.0"];

/// What examples/isolation_forest.py needs, from PyPI. Ranges rather than pins: pip picks the
/// newest release that supports the machine's Python (Debian 12: 3.11).
const ML_TOOLS: [&str; 3] = ["pandas>=2.2,<4", "pyarrow>=15", "scikit-learn>=1.4,<2"];

/// Citus for the tests of tests/tests/citus.rs: where this project's shared/ directory is beside
/// the repository (its machines and CI), its build.sh builds and installs Citus 13.2.2 into
/// the machine's PostgreSQL (a no-op once done). Elsewhere install Citus from its own packages;
/// without it those tests fail (or, where allowed, skip: tests/src/lib.rs).
fn citus() -> anyhow::Result<()> {
    let build = root().join("../shared/citus/build.sh");
    if build.is_file() {
        run(Command::new("bash").arg(build))?;
    } else {
        eprintln!("setup: no ../shared/citus/build.sh; the Citus tests need Citus installed (its own packages)");
    }
    Ok(())
}

/// A Python venv under target/ with `packages` from PyPI, made (or remade) when its list of
/// packages changed; returns its bin directory.
fn venv(name: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = root().join("target").join(name);
    let stamp = venv.join("installed.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(&packages.join("\n")) {
        eprintln!("setup: installing {} into {}", packages.join(", "), venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages))?;
        std::fs::write(&stamp, packages.join("\n"))?;
    }
    Ok(venv.join("bin"))
}

/// The venv of the machine-learning baseline (examples/isolation_forest.py); returns its python.
fn ml_venv() -> anyhow::Result<PathBuf> {
    Ok(venv("ml-venv", &ML_TOOLS)?.join("python"))
}

/// The venv of the deploy tools (checkov, kubernetes-validate, PyYAML); returns its bin directory.
fn deploy_venv() -> anyhow::Result<PathBuf> {
    venv("deploy-venv", &PYTHON_TOOLS)
}

fn deploy_check() -> anyhow::Result<()> {
    setup()?;
    let bin = deploy_venv()?;
    let rendered = root().join("target/deploy-rendered");
    let _ = std::fs::remove_dir_all(&rendered);
    std::fs::create_dir_all(&rendered)?;
    let mut files = vec![root().join("deploy/base/secret.example.yaml")];
    for (name, dir) in [
        ("base", "deploy/base"),
        ("privileged", "deploy/overlays/privileged"),
        ("count-bytes", "deploy/overlays/count-bytes"),
    ] {
        let out = Command::new(bin.join("python"))
            .arg(root().join("scripts/render_overlay.py"))
            .arg(root().join(dir))
            .output()
            .context("rendering the manifests")?;
        if !out.status.success() {
            bail!("rendering {dir}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let file = rendered.join(format!("{name}.yaml"));
        std::fs::write(&file, out.stdout)?;
        files.push(file);
    }
    for version in KUBERNETES_VERSIONS {
        eprintln!("deploy-check: validating against the Kubernetes {version} schemas");
        run(Command::new(bin.join("kubernetes-validate")).args(["--strict", "--quiet", "-k", version]).args(&files))?;
    }
    eprintln!("deploy-check: checkov (every accepted finding carries its reason in a checkov.io/skip annotation)");
    for dir in [rendered, root().join("deploy/base")] {
        run(Command::new(bin.join("checkov"))
            .args(["--framework", "kubernetes", "--compact", "--quiet", "--skip-download", "-d"])
            .arg(&dir)
            .env("BC_SKIP_MAPPING", "TRUE"))?;
    }
    eprintln!("deploy-check: ok");
    Ok(())
}

fn detection(args: &[String]) -> anyhow::Result<()> {
    setup()?;
    let agent = release_agent()?;
    let lab = release_lab()?;
    let python = ml_venv()?;
    let pg = ThrowawayPostgres::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = pg.url("postgres");
    eprintln!("detection: throwaway database {url}");
    run(Command::new(&lab)
        .arg("drill")
        .arg("--agent")
        .arg(&agent)
        .args(["--node-name", "drill"])
        .args(args)
        .env("DATABASE_URL", &url))?;
    // Keep what the run produced: the plot, and the labelled dataset.
    let out = root().join("target/detection");
    std::fs::create_dir_all(&out)?;
    let png = out.join("drill.png");
    let parquet = out.join("drill.parquet");
    run(Command::new(&lab)
        .args(["plot", "--node", "drill", "--output"])
        .arg(&png)
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::null()))?;
    run(Command::new(&lab)
        .args(["export", "--format", "parquet", "--normalized", "--output"])
        .arg(&parquet)
        .env("DATABASE_URL", &url))?;
    let pods = out.join("drill-pods.parquet");
    run(Command::new(&lab)
        .args(["export", "--pods", "--format", "parquet", "--output"])
        .arg(&pods)
        .env("DATABASE_URL", &url))?;
    eprintln!("detection: plot {}, datasets {} and {}", png.display(), parquet.display(), pods.display());
    // The machine-learning baseline on the same rows (examples/isolation_forest.py): the node
    // rows, then the pod rows (a model per workload).
    run(Command::new(&python).arg(root().join("examples/isolation_forest.py")).arg(&parquet))?;
    run(Command::new(&python).arg(root().join("examples/isolation_forest.py")).arg(&pods))?;
    Ok(())
}

fn demo(interval: f64, records: u64) -> anyhow::Result<()> {
    setup()?;
    let agent = release_agent()?;
    let lab = release_lab()?;
    eprintln!("demo: starting a throwaway PostgreSQL");
    let pg = ThrowawayPostgres::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = pg.url("postgres");
    eprintln!("demo: database: {url}");
    eprintln!("demo: running `feature-agent run --pod-rows --interval {interval} --records {records}`; each row is logged as it is written{}",
        if records == 0 { " (Ctrl-C to stop)" } else { "" });
    // Ctrl-C reaches the agent (same process group), which flushes and exits; we stay to clean up.
    // SAFETY: ignoring SIGINT in this process only.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = Command::new(&agent)
        .args(["run", "--pod-rows", "--interval", &interval.to_string(), "--records", &records.to_string()])
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
    // The per-pod rows of the same intervals (on a machine without Kubernetes: host services
    // and "other"), and the check that they add up to the node row.
    let pods = pg
        .psql(
            "postgres",
            "SELECT p.kind, p.owner, count(*) AS intervals, sum(p.ebpf_forks) AS forks, sum(p.ebpf_execs) AS execs, \
             sum(p.tcp_to_est) AS tcp_to_est FROM pod_features p GROUP BY p.kind, p.owner ORDER BY forks DESC NULLS LAST LIMIT 10",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("\nper-pod rows (kind|owner|intervals|forks|execs|tcp_to_est), busiest first:");
    print!("{pods}");
    let mismatched = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM node_features n JOIN (SELECT ts, sum(ebpf_forks) AS s FROM pod_features GROUP BY ts) p \
             USING (ts) WHERE n.ebpf_forks IS DISTINCT FROM p.s",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("intervals whose pod rows do not add up to the node row's ebpf_forks: {}", mismatched.trim());
    // The research tools, on the same rows: the dataset as CSV.
    let csv = root().join("target/demo/rows.csv");
    std::fs::create_dir_all(csv.parent().expect("a directory"))?;
    run(Command::new(&lab).args(["export", "--format", "csv", "--output"]).arg(&csv).env("DATABASE_URL", &url))?;
    eprintln!(
        "demo: `feature-lab export` wrote {}; the binaries are {} and {}",
        csv.display(),
        agent.display(),
        lab.display()
    );
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
    // The benches are built (not run) with the tests, so they cannot rot unnoticed.
    run(cargo().args(["test", "--no-run", "--benches", "--package", "tests"]))?;
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

/// Writes (or with `check`, compares) every file generated from the column declaration.
fn generate(check: bool) -> anyhow::Result<()> {
    use feature_schema::generate;
    let doc_path = root().join(generate::SCHEMA_DOC_PATH);
    let doc = std::fs::read_to_string(&doc_path).with_context(|| format!("reading {}", doc_path.display()))?;
    let Some(new_doc) = generate::schema_doc_with_tables(&doc) else {
        bail!(
            "{} lacks the table markers:\n{}\n{}\n{}\n{}",
            doc_path.display(),
            generate::TABLE_BEGIN,
            generate::TABLE_END,
            generate::POD_TABLE_BEGIN,
            generate::POD_TABLE_END
        );
    };
    let files = [(root().join(generate::ANALYSIS_SQL_PATH), generate::analysis_sql()), (doc_path, new_doc)];
    let mut stale = Vec::new();
    for (path, text) in files {
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::create_dir_all(path.parent().expect("a file in the workspace"))?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        bail!("generated files are stale (run `cargo xtask gen` and commit): {}", stale.join(", "));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Gen { check } => generate(check),
        Task::Setup => setup(),
        Task::BuildEbpf => {
            let object = ebpf_build::build(&root())?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Demo { interval, records } => demo(interval, records),
        Task::Test { args } => {
            setup()?;
            citus()?;
            ml_venv()?;
            test(&args)
        }
        Task::Detection { args } => detection(&args),
        Task::DeployCheck => deploy_check(),
        Task::BuildStatic => {
            setup()?;
            println!("{}", build_static()?.display());
            Ok(())
        }
        Task::ImageCheck => image_check(),
        Task::KernelTest => {
            setup()?;
            let agent = build_static()?;
            let tests = kernel_test::TestBinaries {
                truth: build_static_test("ebpf_truth")?.0,
                cli: build_static_test("cli")?.0,
                pod_counts: build_static_test("pod_counts")?,
                fixtures: root().join("tests/fixtures"),
            };
            kernel_test::kernel_test(&root(), &agent, &tests)
        }
        Task::RuntimeCheck => {
            setup()?;
            let agent = build_static()?;
            runtime_check::runtime_check(&root(), &deploy_venv()?.join("python"), &agent)
        }
        Task::Bench => {
            setup()?;
            run(cargo().args(["bench", "--package", "tests", "--bench", "agent"]))?;
            run(cargo().args(["bench", "--package", "tests", "--bench", "spool"]))
        }
    }
}
