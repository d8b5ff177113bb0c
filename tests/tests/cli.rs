//! The command line as a user meets it: bad flags and values fail fast with a clear message,
//! `print` emits one JSON object per row with every column, and without privileges the agent
//! still runs on procfs alone (or refuses to, with --require-ebpf).
use std::{path::Path, time::Duration};

use feature_schema::COLUMNS;
use tests::{
    have_root,
    kernel::{socket_hooks, BASE_PROGRAMS, PROGRAMS_WITH_SYSCALL_HOOKS},
    run_agent, run_lab,
};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn bad_flags_and_values_are_rejected_clearly() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["print", "--bogus"], 2, "unexpected argument '--bogus'"),
        (&["print", "--interval", "0"], 2, "out of range"),
        (&["print", "--interval", "ten"], 2, "is not a number of seconds"),
        (&["print", "--interval", "NaN"], 2, "out of range"),
        (&["print", "--disk-devices", "("], 2, "invalid regex"),
        (&["print", "--node-name", ""], 1, "node name is empty"),
        (&["print", "--procfs", "/nonexistent"], 1, "does not look like a procfs root"),
        (&["run", "--no-ebpf"], 1, "no database configured"),
        (&["run", "--no-ebpf", "--database-url", "host=x port=notaport"], 1, "not a valid connection string"),
        (&["print", "--require-ebpf", "--no-ebpf"], 2, "cannot be used with"),
        (&["run", "--listen", "garbage"], 2, "is not ADDRESS:PORT"),
        (&["run", "--listen", "127.0.0.1:99999"], 2, "is not ADDRESS:PORT"),
        (&["run", "--listen", "[$(NODE_IP)]:19100"], 2, "is not ADDRESS:PORT"),
        (&["export"], 2, "unrecognized subcommand 'export'"),
    ];
    for (args, code, needle) in cases {
        expect_refusal(&run_agent(args, &[], LIMIT), args, *code, needle);
    }
}

/// The research tools' bad flags, apart from the agent's (a VM of `cargo xtask kernel-test`
/// runs this file without the research tools).
#[test]
fn the_research_tools_reject_bad_flags_clearly() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["evaluate", "--sql-threshold", "-1"], 2, "is not a number above 0"),
        (&["evaluate", "--sql-threshold", "NaN"], 2, "is not a number above 0"),
        (&["export", "--format", "xml"], 2, "invalid value 'xml'"),
        (&["run"], 2, "unrecognized subcommand 'run'"),
    ];
    for (args, code, needle) in cases {
        expect_refusal(&run_lab(args, &[], LIMIT), args, *code, needle);
    }
}

fn expect_refusal(out: &std::process::Output, args: &[&str], code: i32, needle: &str) {
    let err = tests::stderr_text(out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn node_name_with_nul_is_refused() {
    // NUL cannot travel in argv; it can in a file the user points NODE_NAME at via the
    // environment only if the shell lets it, so test the validator directly.
    assert!(feature_db::validate_node_name("a\0b").unwrap_err().to_string().contains("NUL"));
    assert!(feature_db::validate_node_name(&"x".repeat(1025)).is_err());
    assert!(feature_db::validate_node_name("ok; DROP TABLE x; --").is_ok());
}

#[test]
fn print_emits_every_column_from_the_fixture_tree() {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/node-basic");
    let out = run_agent(
        &[
            "print",
            "--records",
            "2",
            "--interval",
            "0.2",
            "--no-ebpf",
            "--node-name",
            "fixture",
            "--procfs",
            tree.join("proc").to_str().unwrap(),
            "--sysfs",
            tree.join("sys").to_str().unwrap(),
            "--rootfs",
            tree.join("root").to_str().unwrap(),
        ],
        &[],
        LIMIT,
    );
    assert!(out.status.success(), "{}", tests::stderr_text(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2);
    let keys: Vec<&str> = lines[0].as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = COLUMNS.to_vec();
    expected.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, expected);
    assert_eq!(lines[1]["node"], "fixture");
    assert_eq!(lines[1]["disk_read"], 40960000);
    assert_eq!(lines[1]["forks_total"], 123456);
    assert!(lines[0]["interval_s"].is_null());
    assert!((lines[1]["interval_s"].as_f64().unwrap() - 0.2).abs() < 0.1);
    assert!(lines[1]["ebpf_forks"].is_null(), "--no-ebpf leaves eBPF columns NULL");
}

/// Runs the agent as `nobody`, who may not load eBPF programs.
fn run_unprivileged(extra: &[&str]) -> std::process::Output {
    let bin = tests::agent_bin();
    let mut args =
        vec!["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", bin.to_str().unwrap()];
    args.extend_from_slice(&["print", "--records", "2", "--interval", "0.2", "--node-name", "nobody"]);
    args.extend_from_slice(extra);
    let out = std::process::Command::new("setpriv").args(&args).env("RUST_LOG", "info").output().unwrap();
    out
}

#[test]
fn without_privileges_ebpf_columns_are_null_and_procfs_still_written() {
    if !have_root("without_privileges") {
        return;
    }
    let out = run_unprivileged(&[]);
    let err = tests::stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("eBPF programs not loaded").count(), 1, "exactly one warning:\n{err}");
    assert!(err.contains("CAP_BPF"), "the warning says what is missing:\n{err}");
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("rows")).unwrap();
    assert!(last["ebpf_forks"].is_null() && last["tcp_to_est"].is_null());
    assert!(last["forks_total"].as_i64().unwrap() > 0 && last["est_conn"].is_number());

    let out = run_unprivileged(&["--require-ebpf"]);
    let err = tests::stderr_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--require-ebpf: cannot load the eBPF programs"), "{err}");
    assert!(out.stdout.is_empty(), "no rows with --require-ebpf");
}

/// The DaemonSet adds only CAP_BPF and CAP_PERFMON (deploy/base/daemonset.yaml): with exactly
/// those two (every other capability out of the bounding set), every program of the default
/// hooks attaches and their columns are counted. The syscall-tracepoint socket hooks open perf
/// events, which a kernel with `perf_event_paranoid` above 2 (Debian's and Ubuntu's patch)
/// allows only with CAP_SYS_ADMIN: there they are refused, with a hint that says so.
#[test]
fn cap_bpf_and_cap_perfmon_are_enough() {
    if !have_root("cap_bpf_and_cap_perfmon_are_enough") {
        return;
    }
    let bin = tests::agent_bin();
    let with_two_caps = |hook: &str| {
        std::process::Command::new("setpriv")
            .args(["--bounding-set=-all,+bpf,+perfmon", "--inh-caps=-all", "--"])
            .arg(&bin)
            .args(["print", "--records", "2", "--interval", "0.3", "--node-name", "two-caps", "--require-ebpf"])
            .args(["--socket-hook", hook])
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let hooks = socket_hooks();
    let out = with_two_caps("auto");
    let err = tests::stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("could not be attached") && !err.contains("not loaded"), "{err}");
    assert!(err.contains(&format!("eBPF programs attached programs={}", hooks.default_programs())), "{err}");
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("rows")).unwrap();
    assert!(last["ebpf_forks"].is_number() && last["tcp_to_est"].is_number(), "{last}");
    assert_eq!(last["sock_alloc_unix"].is_number(), hooks.counts_sockets_by_default(), "{hooks:?}: {last}");

    let paranoid: i32 =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap().trim().parse().unwrap();
    let out = with_two_caps("syscalls");
    let err = tests::stderr_text(&out);
    if paranoid <= 2 {
        assert!(out.status.success(), "{err}");
        assert!(err.contains(&format!("eBPF programs attached programs={PROGRAMS_WITH_SYSCALL_HOOKS}")), "{err}");
        let last: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("rows")).unwrap();
        assert!(last["sock_alloc_unix"].is_number(), "{last}");
    } else {
        assert_eq!(out.status.code(), Some(1), "perf_event_paranoid {paranoid}: {err}");
        assert!(err.contains("--require-ebpf: 4 of the eBPF programs could not be attached"), "{err}");
        assert!(err.contains("perf_event_paranoid is above 2"), "{err}");
    }
    // And without CAP_PERFMON the programs cannot attach: the second capability is needed too.
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all,+bpf", "--inh-caps=-all", "--"])
        .arg(&bin)
        .args(["print", "--records", "1", "--interval", "0.3", "--node-name", "one-cap", "--require-ebpf"])
        .output()
        .unwrap();
    let err = tests::stderr_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Refused by the kernel for want of privilege, every program, and said so (the automatic
    // socket hook's tries are not failures: a kernel may lack those hooks).
    let programs = BASE_PROGRAMS;
    assert!(err.contains(&format!("--require-ebpf: {programs} of the eBPF programs could not be attached")), "{err}");
    assert_eq!(err.matches("BPF_PROG_LOAD syscall returned Operation not permitted").count(), programs, "{err}");
    assert!(err.contains("CAP_BPF + CAP_PERFMON"), "{err}");
}

/// With the default `--socket-hook auto`, socket creations are counted with fexit or a kprobe
/// where the kernel allows one. Where it allows neither (this project's CI host), the syscall
/// fallback is not attached: the other programs are, the sock_alloc_* columns are NULL, and one
/// startup line says why and what the fallback would cost. The log names every program's hook.
#[test]
fn socket_columns_follow_the_socket_hook_the_kernel_allows() {
    if !have_root("socket_columns_follow_the_socket_hook_the_kernel_allows") {
        return;
    }
    let hooks = socket_hooks();
    let out = std::process::Command::new(tests::agent_bin())
        .args(["print", "--records", "2", "--interval", "0.3", "--node-name", "no-socket-hook", "--require-ebpf"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = tests::stderr_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("eBPF programs attached programs={}", hooks.default_programs())), "{hooks:?}: {err}");
    assert!(!err.contains("sys_enter_socket"), "auto never takes the syscall fallback: {err}");
    assert!(err.contains("program=\"inet_sock_set_state\" hook=\"tp_btf\""), "{err}");
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("rows")).unwrap();
    let counted = hooks.counts_sockets_by_default();
    assert_eq!(err.matches("socket creations are not counted").count(), usize::from(!counted), "{hooks:?}: {err}");
    if counted {
        assert!(err.contains(&format!("hook=\"{}\"", hooks.auto())), "{hooks:?}: {err}");
    } else {
        assert!(err.contains("--socket-hook syscalls"), "the line names the fallback: {err}");
    }
    for c in ["sock_alloc_tcp", "sock_alloc_udp", "sock_alloc_unix", "sock_alloc_raw", "sock_alloc_other"] {
        assert_eq!(last[c].is_number(), counted, "{c} with {hooks:?}: {last}");
    }
    assert!(last["ebpf_forks"].is_number() && last["tcp_to_est"].is_number(), "{last}");
}

/// Boolean environment variables take the usual spellings: NO_EBPF=1 (or yes, on, true) turns
/// eBPF off, 0 (no, off, false) leaves it on; anything else is a clear error before any work.
#[test]
fn boolean_environment_variables_take_the_usual_spellings() {
    let bin = tests::agent_bin();
    for (value, off) in [("1", true), ("yes", true), ("TRUE", true), ("on", true), ("0", false), ("no", false)] {
        let out = std::process::Command::new(&bin)
            .args(["print", "--records", "1", "--interval", "0.1", "--node-name", "bool-env"])
            .env("NO_EBPF", value)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let err = tests::stderr_text(&out);
        assert!(out.status.success(), "NO_EBPF={value}: {err}");
        assert_eq!(err.contains("eBPF disabled (--no-ebpf)"), off, "NO_EBPF={value}: {err}");
    }
    let out =
        std::process::Command::new(&bin).args(["print", "--records", "1"]).env("NO_EBPF", "maybe").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", tests::stderr_text(&out));
    assert!(tests::stderr_text(&out).contains("value was not a boolean"), "{}", tests::stderr_text(&out));
}

/// `print | head -1`: when the reader goes away the agent stops quietly with exit 0, as Unix
/// tools do, instead of logging "Broken pipe" and failing. It runs without --records, so a
/// broken pipe is the only way it can end (a slow reader cannot let it finish first).
#[test]
fn print_into_a_closed_pipe_exits_quietly() {
    let mut child = std::process::Command::new(tests::agent_bin())
        .args(["print", "--records", "0", "--interval", "0.1", "--no-ebpf", "--node-name", "pipe"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = wait_with_limit(child, std::time::Duration::from_secs(20));
    let err = tests::stderr_text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("ERROR") && !err.contains("Broken pipe"), "{err}");
}

/// `print 2>&1 | head -3`: a closed standard error (where the logs go) neither panics nor
/// stops the rows: with stderr closed from the start, every row still reaches stdout.
#[test]
fn print_with_a_closed_stderr_keeps_going() {
    let child = std::process::Command::new(tests::agent_bin())
        .args(["print", "--records", "3", "--interval", "0.1", "--node-name", "nostderr"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    drop(child.stderr.take());
    let out = wait_with_limit(child, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "exit status {:?}", out.status);
    let rows = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("\"node\":\"nostderr\"")).count();
    assert_eq!(rows, 3, "{}", String::from_utf8_lossy(&out.stdout));
}

/// Waits for a child, killing it (and failing) past `limit`.
fn wait_with_limit(mut child: std::process::Child, limit: std::time::Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `--help` documents every database option, and says where the password comes from.
#[test]
fn help_documents_the_database_options_and_the_password() {
    let out = std::process::Command::new(tests::agent_bin()).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--db-port", "--db-user", "--db-name"] {
        let line = help.lines().position(|l| l.trim_start().starts_with(option)).unwrap_or_else(|| panic!("{option}"));
        let text = help.lines().nth(line + 1).unwrap_or_default();
        assert!(text.trim().len() > 10, "{option} has no help text: {help}");
    }
    assert!(help.contains("DB_PASSWORD environment variable"), "{help}");
}

/// A URL and a DB_* setting together are refused before anything is tried, naming both: the
/// URL is the whole connection, and a DB_USER or DB_NAME from a manifest must not silently
/// change where it goes.
#[test]
fn a_url_and_db_settings_together_are_refused_naming_both() {
    for (flag, value, named) in [
        ("--db-host", "/nonexistent-socket-dir", "--db-host / DB_HOST"),
        ("--db-user", "other", "--db-user / DB_USER"),
        ("--db-name", "other", "--db-name / DB_NAME"),
        ("--db-port", "5433", "--db-port / DB_PORT"),
    ] {
        let out = std::process::Command::new(tests::agent_bin())
            .args(["migrate", flag, value])
            .env("DATABASE_URL", "host=127.0.0.1 port=1 user=x dbname=y")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let err = tests::stderr_text(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--database-url / DATABASE_URL is set, and so is") && err.contains(named), "{err}");
        assert!(!err.contains("Connection refused"), "nothing may be tried: {err}");
    }
    // A password beside a URL without one is the documented way, not a conflict.
    let out = std::process::Command::new(tests::agent_bin())
        .args(["migrate"])
        .env("DATABASE_URL", "host=127.0.0.1 port=1 user=x dbname=y")
        .env("DB_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(tests::stderr_text(&out).contains("Connection refused"), "{}", tests::stderr_text(&out));
}

/// `migrate` without a database name refuses rather than migrating the user's own database.
#[test]
fn migrate_without_a_database_name_is_refused() {
    let out = std::process::Command::new(tests::agent_bin())
        .args(["migrate"])
        .env("DATABASE_URL", "host=127.0.0.1 port=1 user=x")
        .output()
        .unwrap();
    let err = tests::stderr_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no database named: set DB_NAME") && err.contains("\"x\""), "{err}");
}
