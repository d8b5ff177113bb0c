//! `feature-agent run` and `migrate` against a real Postgres: rows, partitions, hostile node
//! names, idempotent migrations, an unreachable database, and SIGTERM.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use tests::{fresh_database, have_root, run_agent, sql};

const LIMIT: Duration = Duration::from_secs(60);

fn run_rows(db_url: &str, node: &str, records: &str) -> std::process::Output {
    run_agent(
        &["run", "--records", records, "--interval", "1", "--node-name", node],
        &[("DATABASE_URL", db_url)],
        LIMIT,
    )
}

/// Starts `feature-agent run` in the background with stderr captured; stop it with [`stop`].
fn spawn_run(db_url: &str, args: &[&str]) -> std::process::Child {
    tests::agent_command()
        .arg("run")
        .args(args)
        .env("DATABASE_URL", db_url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn assert_success(out: &std::process::Output) {
    assert!(out.status.success(), "agent failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[test]
fn run_writes_rows_with_every_feature_in_range() {
    if !have_root("run_writes_rows_with_every_feature_in_range") {
        return;
    }
    let url = fresh_database("db_rows");
    let out = run_rows(&url, "node-a", "3");
    assert_success(&out);

    assert_eq!(sql("db_rows", "SELECT count(*) FROM node_features WHERE node = 'node-a'"), "3");
    // Every feature that procfs or sock_diag gives (all but the eBPF event counts, NULL on the
    // first row) is present in every row.
    let features: Vec<&str> =
        feature_schema::FEATURES.iter().filter(|f| f.kind != feature_schema::Kind::Events).map(|f| f.column).collect();
    assert!(features.len() >= 24 && features[0] == "cpu_sec_idle", "{features:?}");
    for f in features {
        assert_eq!(
            sql("db_rows", &format!("SELECT count(*) FROM node_features WHERE {f} IS NULL")),
            "0",
            "{f} has NULLs"
        );
    }
    // Sane ranges.
    let checks = [
        "cpu_sec_idle > 0",
        "disk_av_per BETWEEN 0 AND 100",
        "mem_av_per > 0 AND mem_av_per <= 100",
        "forks_total > 0",
        "intr > 0",
        "load1 >= 0 AND load5 >= 0 AND load15 >= 0",
        "disk_read >= 0 AND disk_write >= 0 AND net_receive >= 0",
        "tcp_sock_inuse >= 0 AND tcp_sock_alloc >= tcp_sock_inuse",
        "ipv4_sock_inuse > 0",
        "est_conn >= 0 AND lis_conn >= 0",
        "open_fds > 0",
        "attack = 0 AND attack_type IS NULL",
    ];
    for c in checks {
        assert_eq!(
            sql("db_rows", &format!("SELECT count(*) FROM node_features WHERE NOT ({c})")),
            "0",
            "violated: {c}"
        );
    }
    // First row: no interval and no eBPF deltas; later rows: about one second apart, with counts.
    assert_eq!(
        sql("db_rows", "SELECT count(*) FROM node_features WHERE interval_s IS NULL AND ebpf_forks IS NULL"),
        "1"
    );
    assert_eq!(
        sql("db_rows", "SELECT count(*) FROM node_features WHERE interval_s BETWEEN 0.5 AND 1.5 AND ebpf_forks >= 0 AND tcp_to_est >= 0"),
        "2"
    );
    // Rows sit on the aligned schedule: each ts is exactly a whole second (the scheduled
    // boundary, not the moment the sample was taken), and they are whole seconds apart.
    assert_eq!(
        sql("db_rows", "SELECT count(*) FROM node_features WHERE date_trunc('second', ts) <> ts"),
        "0",
        "{}",
        sql("db_rows", "SELECT string_agg(ts::text, ', ') FROM node_features")
    );
    assert_eq!(sql("db_rows", "SELECT extract(epoch FROM max(ts) - min(ts)) FROM node_features"), "2.000000");
    // The day's partition exists and holds the rows (a run across midnight UTC uses two).
    let parts = sql(
        "db_rows",
        "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'node_features'::regclass",
    );
    let first = parts.split(',').next().unwrap();
    assert!(first.starts_with("node_features_20") && first.len() == "node_features_20260304".len(), "{parts}");
    let in_parts: i64 = parts
        .split(',')
        .map(|p| sql("db_rows", &format!("SELECT count(*) FROM \"{p}\"")).parse::<i64>().unwrap())
        .sum();
    assert_eq!(in_parts, 3);
}

#[test]
fn nodes_share_day_partitions_and_hostile_names_are_stored_verbatim() {
    if !have_root("nodes_share_day_partitions_and_hostile_names_are_stored_verbatim") {
        return;
    }
    let url = fresh_database("db_nodes");
    let hostile = format!("x'); DROP TABLE node_features; --\"; SELECT pg_sleep(10); ノード-🚀 {}", "é".repeat(260));
    assert!(hostile.chars().count() >= 300, "a 300-character name");
    for node in ["node-one", "node-two", hostile.as_str()] {
        assert_success(&run_rows(&url, node, "2"));
    }
    // Partitions are days, shared by the nodes: a node name never reaches an identifier.
    let parts: i64 = sql("db_nodes", "SELECT count(*) FROM pg_inherits WHERE inhparent = 'node_features'::regclass")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&parts), "one day (two across midnight UTC): {parts}");
    assert_eq!(
        sql(
            "db_nodes",
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'node_features'::regclass AND c.relname !~ '^node_features_[0-9]{8}$'"
        ),
        "0"
    );
    assert_eq!(sql("db_nodes", "SELECT count(DISTINCT node) FROM node_features"), "3");
    // The hostile name comes back byte for byte, with its own rows.
    let stored = sql("db_nodes", "SELECT node FROM node_features WHERE node NOT LIKE 'node-%' LIMIT 1");
    assert_eq!(stored, hostile);
    assert_eq!(
        sql("db_nodes", &format!("SELECT count(*) FROM node_features WHERE node = {}", tests::sql_literal(&hostile))),
        "2"
    );
}

#[test]
fn migrations_twice_are_a_no_op_and_rows_are_unique_per_node_and_ts() {
    if !have_root("migrations_twice_are_a_no_op") {
        return;
    }
    let url = fresh_database("db_migrate");
    for _ in 0..2 {
        let out = run_agent(&["migrate", "--database-url", &url], &[], LIMIT);
        assert_success(&out);
    }
    assert_eq!(
        sql("db_migrate", "SELECT count(*) FROM schema_migrations"),
        feature_db::migrate::MIGRATIONS.len().to_string()
    );
    // (node, ts) is the primary key: the same row twice is one row, and ON CONFLICT keeps it so.
    sql("db_migrate", "SELECT ensure_day_partitions('2026-01-01T00:00:00Z')");
    sql(
        "db_migrate",
        "INSERT INTO node_features (node, ts) VALUES ('n', '2026-01-01T00:00:00Z') ON CONFLICT (node, ts) DO NOTHING",
    );
    sql(
        "db_migrate",
        "INSERT INTO node_features (node, ts) VALUES ('n', '2026-01-01T00:00:00Z') ON CONFLICT (node, ts) DO NOTHING",
    );
    assert_eq!(sql("db_migrate", "SELECT count(*) FROM node_features"), "1");
    // DB_HOST/DB_* (the paper's variables) work as well as DATABASE_URL: on an empty database
    // they migrate it from nothing.
    let pg = tests::postgres();
    fresh_database("db_migrate_env");
    let out = run_agent(
        &["migrate"],
        &[
            ("DB_HOST", pg.socket_dir().to_str().unwrap()),
            ("DB_PORT", &pg.port().to_string()),
            ("DB_USER", "postgres"),
            ("DB_NAME", "db_migrate_env"),
        ],
        LIMIT,
    );
    assert_success(&out);
    let applied = feature_db::migrate::MIGRATIONS.len() + 1; // and the generated SQL
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("applied={applied}")),
        "{}",
        tests::stderr_text(&out)
    );
    assert_eq!(
        sql("db_migrate_env", "SELECT count(*) FROM schema_migrations"),
        feature_db::migrate::MIGRATIONS.len().to_string()
    );
}

#[test]
fn unreachable_database_keeps_sampling_and_reports_clearly() {
    if !have_root("unreachable_database_keeps_sampling") {
        return;
    }
    // Nothing listens on port 1 of loopback.
    let out = run_agent(
        &[
            "run",
            "--records",
            "2",
            "--interval",
            "0.5",
            "--node-name",
            "lonely",
            "--shutdown-timeout",
            "1",
            "--no-ebpf",
        ],
        &[("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")],
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rows were not written, so the run must fail");
    assert!(stderr.contains("database unavailable"), "{stderr}");
    // The closing error says why, and no timeout that did not elapse.
    assert!(stderr.contains("2 rows are not in the database (the database was unreachable"), "{stderr}");
    assert!(!stderr.contains("shutdown timeout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sigterm_flushes_and_exits_zero_promptly() {
    if !have_root("sigterm_flushes_and_exits_zero_promptly") {
        return;
    }
    let url = fresh_database("db_sigterm");
    let child = spawn_run(&url, &["--interval", "0.2", "--node-name", "term"]);
    // Wait until rows arrive, then ask it to stop.
    let deadline = Instant::now() + LIMIT;
    while sql("db_sigterm", "SELECT count(*) FROM pg_tables WHERE tablename = 'node_features'") != "1"
        || sql("db_sigterm", "SELECT count(*) FROM node_features") == "0"
    {
        assert!(Instant::now() < deadline, "no rows arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = Instant::now();
    let out = tests::terminate(child);
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stopped.elapsed() < Duration::from_secs(3), "took {:?} to stop", stopped.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("signal=\"SIGTERM\"") || stderr.contains("SIGTERM"), "{stderr}");
    // Everything sampled was written: nothing left in the spool, nothing lost.
    let c = tests::process::stopped_counts(&stderr);
    assert_eq!((c["written"], c["spooled"], c["dropped_shutdown"]), (c["sampled"], 0, 0), "{stderr}");
}

#[test]
fn database_restart_mid_run_loses_no_row() {
    if !have_root("database_restart_mid_run") {
        return;
    }
    // A server of its own, since this test stops it.
    let mut pg = tests::ThrowawayPostgres::start().unwrap();
    let url = pg.url("postgres");
    // While the server is down (or the table not yet made) the count is unknown: 0 for the waits.
    let count = |pg: &tests::ThrowawayPostgres| tests::process::count_if_up(pg, "outage").unwrap_or(0);
    let child = spawn_run(&url, &["--interval", "0.25", "--node-name", "outage", "--no-ebpf"]);
    let deadline = Instant::now() + LIMIT;
    while count(&pg) < 4 {
        assert!(Instant::now() < deadline, "no rows before the outage");
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.stop_server();
    std::thread::sleep(Duration::from_secs(3));
    pg.restart_server().unwrap();
    // Rows sampled during the outage arrive from the agent's queue.
    let before = tests::process::count(&pg, "outage");
    while count(&pg) < before + 8 {
        assert!(Instant::now() < deadline, "rows did not resume after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = tests::terminate(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("database unavailable") || stderr.contains("reconnecting"), "{stderr}");
    // No gap: consecutive rows are one interval apart, across the outage too.
    let gaps = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM (SELECT ts - lag(ts) OVER (ORDER BY ts) AS gap FROM node_features) g \
             WHERE gap > interval '0.4 seconds'",
        )
        .unwrap();
    assert_eq!(gaps.trim(), "0", "rows missing across the outage\n{stderr}");
    assert!(tests::process::count(&pg, "outage") >= 4 + 12, "the outage's rows are there");
}
