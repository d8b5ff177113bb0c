//! The research tools against a database that does not answer: each of `label`, `export`,
//! `evaluate`, `plot`, `prune` and `scenario`, run as a researcher would, against a server whose
//! every process is SIGSTOPped (its kernel accepts the connection; nothing answers), and against
//! a live server whose rows are locked by another session (the statement itself waits). Each
//! says on stderr that it is waiting within a few seconds, and ends with a clear error and a
//! non-zero exit at its --db-timeout: never a silent wait.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{have_root, process::pg, run_lab};

fn commands(out: &str) -> Vec<(&'static str, Vec<String>)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "label",
            v(&["label", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T01:00:00Z", "--attack-type", "x"]),
        ),
        ("export", v(&["export", "--format", "csv", "--output", &format!("{out}/rows.csv")])),
        ("evaluate", v(&["evaluate"])),
        ("plot", v(&["plot", "--node", "n", "--output", &format!("{out}/plot.png")])),
        ("prune", v(&["prune", "--pod-days", "30"])),
        ("scenario", v(&["scenario", "exec-storm", "--node-name", "n", "--duration", "1"])),
    ]
}

/// Runs each command with --db-timeout 4 and checks its stderr and exit.
fn each_gives_up(url: &str, why: &str, expect: &str) {
    let out = std::env::temp_dir().join(format!("feature-lab-deadlines-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for (name, mut args) in commands(out.to_str().unwrap()) {
        args.extend(["--db-timeout".to_string(), "4".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let o = run_lab(&args, &[("DATABASE_URL", url)], Duration::from_secs(30));
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name} ({why}) must fail: {stderr}");
        assert!(took < Duration::from_secs(10), "{name} ({why}) took {took:?}: {stderr}");
        assert!(stderr.contains("still waiting for the database"), "{name} ({why}) says it waits: {stderr}");
        assert!(stderr.contains(expect), "{name} ({why}): {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn every_lab_command_gives_up_on_a_hung_database_with_a_clear_error() {
    if !have_root("every_lab_command_gives_up_on_a_hung_database_with_a_clear_error") {
        return;
    }
    let mut pg = pg();
    let migrated = tests::run_agent(&["migrate"], &[("DATABASE_URL", &pg.url("postgres"))], Duration::from_secs(60));
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let url = pg.url("postgres");
    // An old day for prune to drop (its DROP waits on the lock below).
    pg.psql("postgres", "SELECT ensure_day_partitions('2020-01-01T12:00:00Z')").unwrap();

    // A statement that waits on the server (the tables locked by another session): the
    // server's statement_timeout ends it, and the command says so.
    let psql = throwaway_pg::find_bin_dir().unwrap().join("psql");
    let mut locker = Command::new(psql)
        .args(["-X", "-q", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", "postgres", "-c"])
        .arg(
            "BEGIN; LOCK TABLE node_features, pod_features, scenario_runs IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_sleep(120); COMMIT;",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    each_gives_up(&url, "rows locked", "canceling statement due to statement timeout");
    let _ = locker.kill();
    let _ = locker.wait();

    // A server that answers nothing at all: only the client's deadline can end the wait.
    pg.freeze();
    each_gives_up(&url, "server stopped", "did not answer within 4s");
    pg.thaw();
}
