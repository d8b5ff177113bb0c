//! No lost rows: a 30 s database outage, a SIGKILL with rows in the spool, a full spool, a
//! corrupt spool record, and database errors that must not stop sampling. Each test has its own
//! Postgres (it is stopped and started) and its own spool. /metrics is read and parsed with a
//! Prometheus text-format parser along the way, and its counters are checked against the rows.
use std::time::Duration;

use tests::{
    agent_command, fresh_spool_dir, have_root,
    process::{count, count_if_up, field, gaps, http_get, metrics, pg, stopped_counts, wait_for, Agent},
};

#[test]
fn a_30_s_outage_loses_nothing_and_metrics_match_the_rows() {
    if !have_root("a_30_s_outage_loses_nothing_and_metrics_match_the_rows") {
        return;
    }
    let mut pg = pg();
    let spool = fresh_spool_dir();
    let agent = Agent::start(&pg.url("postgres"), &spool, &["--interval", "1", "--node-name", "outage"], &[]);
    wait_for("3 rows", Duration::from_secs(30), || count_if_up(&pg, "outage").is_some_and(|n| n >= 3));
    assert_eq!(http_get(agent.port, "/readyz").unwrap().0, 200);

    pg.stop_server();
    std::thread::sleep(Duration::from_secs(30));
    // Sampling went on into the spool; the agent is alive but not ready.
    let m = metrics(agent.port);
    assert!(m["feature_agent_rows_spooled"] >= 25.0, "{m:?}");
    assert_eq!(m["feature_agent_database_up"], 0.0);
    assert!(m["feature_agent_spool_bytes"] > 0.0);
    assert_eq!(http_get(agent.port, "/readyz").unwrap().0, 503);
    assert_eq!(http_get(agent.port, "/healthz").unwrap().0, 200);

    pg.restart_server().unwrap();
    // After 30 s the backoff is at its 30 s cap, but the address is probed every second: the
    // spool drains within seconds of the database's return, not after the backoff.
    let back = std::time::Instant::now();
    wait_for("the spool to drain", Duration::from_secs(60), || {
        let m = metrics(agent.port);
        m["feature_agent_rows_spooled"] == 0.0
            && m["feature_agent_rows_queued"] == 0.0
            && m["feature_agent_database_up"] == 1.0
    });
    let recovery = back.elapsed();
    if recovery >= Duration::from_secs(8) {
        let out = agent.stop();
        panic!("rows flowed again only after {recovery:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    // Counters against the database, at a moment when nothing is in flight.
    let mut checked = false;
    for _ in 0..20 {
        let before = metrics(agent.port);
        let rows = count(&pg, "outage") as f64;
        let after = metrics(agent.port);
        if before["feature_agent_rows_written_total"] == after["feature_agent_rows_written_total"]
            && after["feature_agent_rows_written_total"] == rows
        {
            assert_eq!(after["feature_agent_rows_sampled_total"], rows, "{after:?}");
            for r in ["queue_full", "spool_full", "corrupt", "rejected", "shutdown"] {
                assert_eq!(after[&format!("feature_agent_rows_dropped_total{{reason={r}}}")], 0.0, "{r}");
            }
            assert_eq!(after["feature_agent_samples_skipped_total"], 0.0);
            assert_eq!(after["feature_agent_spool_ack_damaged_total"], 0.0);
            assert!(after["feature_agent_last_write_timestamp_seconds"] > 1.7e9);
            assert!(after["feature_agent_ebpf_programs_attached"] >= 1.0);
            // One info series per attached program, naming its hook and columns.
            let info: Vec<&String> =
                after.keys().filter(|k| k.starts_with("feature_agent_ebpf_program_info{")).collect();
            assert_eq!(info.len() as f64, after["feature_agent_ebpf_programs_attached"], "{info:?}");
            assert!(
                info.iter().any(|k| k.contains("program=inet_sock_set_state")
                    && k.contains("hook=tp_btf")
                    && k.contains("columns=tcp_to_est tcp_to_syn_sent")),
                "{info:?}"
            );
            // Each attached program has a recursion-miss series (its value is whatever the
            // kernel counted; what matters here is that /metrics names every program).
            for p in ["inet_sock_set_state", "sched_process_fork", "sched_process_exec", "sched_process_exit"] {
                let misses = after.get(&format!("feature_agent_ebpf_recursion_misses_total{{program={p}}}"));
                assert!(misses.is_some(), "no recursion-miss series for {p}: {after:?}");
            }
            checked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(checked, "metrics never matched the rows");
    let out = agent.stop();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every interval is there exactly once: no gap, ts unique (primary key), and the outage's
    // rows went in in order (their transaction ids do not decrease along ts).
    let g = gaps(&pg, "outage");
    // 3 rows before the outage, about 30 during it, and whatever came after before SIGTERM.
    assert!(g.len() + 1 >= 33, "{} rows", g.len() + 1);
    assert!(g.iter().all(|d| (0.5..1.5).contains(d)), "gaps {g:?}");
    let xmins: Vec<u64> = pg
        .psql("postgres", "SELECT xmin::text::bigint FROM node_features WHERE node = 'outage' ORDER BY ts")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(xmins.windows(2).all(|w| w[0] <= w[1]), "rows were inserted out of order: {xmins:?}");
    let _ = std::fs::remove_dir_all(spool);
}

#[test]
fn sigkill_with_spooled_rows_then_restart_writes_them_once() {
    if !have_root("sigkill_with_spooled_rows_then_restart_writes_them_once") {
        return;
    }
    let mut pg = pg();
    let spool = fresh_spool_dir();
    let args = ["--interval", "0.5", "--node-name", "killed", "--no-ebpf"];
    let agent = Agent::start(&pg.url("postgres"), &spool, &args, &[]);
    wait_for("2 rows", Duration::from_secs(30), || count_if_up(&pg, "killed").is_some_and(|n| n >= 2));
    pg.stop_server();
    wait_for("6 spooled rows", Duration::from_secs(30), || agent.metric("feature_agent_rows_spooled") >= 6.0);
    let sampled = agent.metric("feature_agent_rows_sampled_total");
    agent.kill();
    assert!(std::fs::read_dir(&spool).unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "spool")));

    pg.restart_server().unwrap();
    let args = ["--interval", "0.5", "--node-name", "killed", "--no-ebpf", "--records", "3"];
    let out = Agent::start(&pg.url("postgres"), &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The second start replays the spool first, in one batch here...
    let announced =
        stderr.lines().find(|l| l.contains("rows from an earlier run are in the spool")).expect("replay announced");
    let replayed: u64 = field(announced, "rows").parse().unwrap();
    // Every row the killed agent sampled but did not write is replayed: at most the row being
    // sampled or spooled at the instant of the kill is missing.
    assert!(replayed as f64 >= 6.0 && replayed as f64 >= sampled - 2.0, "{stderr}");
    let batch = stderr.lines().find(|l| l.contains("caught up a batch of rows")).expect("a replay batch");
    assert_eq!(field(batch, "rows"), replayed.to_string(), "{stderr}");
    assert_eq!(field(batch, "new"), replayed.to_string(), "every replayed row was new: {stderr}");
    // ...and the database then holds the rows from before the outage, the spooled ones and
    // the 3 new ones, each once, with no interval missing but at the restart.
    let first = field(batch, "first");
    let before: u64 = pg
        .psql("postgres", &format!("SELECT count(*) FROM node_features WHERE node = 'killed' AND ts < '{first}'"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(before >= 2);
    assert_eq!(count(&pg, "killed"), before + replayed + 3);
    let g = gaps(&pg, "killed");
    assert!(g.iter().filter(|d| **d > 0.75).count() <= 1, "{g:?}");
    assert!(g.iter().all(|d| *d > 0.25), "{g:?}");
    let _ = std::fs::remove_dir_all(spool);
}

#[test]
fn a_full_spool_drops_the_oldest_rows_and_counts_them() {
    if !have_root("a_full_spool_drops_the_oldest_rows_and_counts_them") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    pg.stop_server();
    let spool = fresh_spool_dir();
    let args = [
        "--interval",
        "0.1",
        "--records",
        "100",
        "--node-name",
        "full",
        "--no-ebpf",
        "--spool-max-bytes",
        "16384",
        "--shutdown-timeout",
        "60",
    ];
    // The database stays down: once its 100 rows are sampled the agent tries it once and, every
    // row being spooled or counted, stops without waiting out its 60 s timeout.
    let started = std::time::Instant::now();
    let out = Agent::start(&url, &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(started.elapsed() < Duration::from_secs(40), "{stderr}");
    let c = tests::process::assert_accounted(&stderr);
    let (dropped, spooled) = (c["dropped_full"], c["spooled"]);
    assert!(dropped > 0, "{stderr}");
    assert_eq!(dropped + spooled, 100, "every row is spooled or counted as dropped: {stderr}");
    let on_disk: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 16384, "{on_disk} bytes of segments");
    // The log says how many rows each eviction dropped; together, the count.
    let logged: u64 = stderr
        .lines()
        .filter(|l| l.contains("spool full: dropped its oldest rows"))
        .map(|l| field(l, "rows").parse::<u64>().unwrap())
        .sum();
    assert_eq!(logged, dropped, "{stderr}");

    pg.restart_server().unwrap();
    let args = ["--interval", "0.1", "--records", "1", "--node-name", "full", "--no-ebpf"];
    let out = Agent::start(&url, &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // What arrived is the newest rows, without a hole among them, and the new run's one row.
    assert_eq!(count(&pg, "full"), spooled + 1);
    let g = gaps(&pg, "full");
    assert!(g[..g.len() - 1].iter().all(|d| *d < 0.2), "{g:?}");
    let _ = std::fs::remove_dir_all(spool);
}

#[test]
fn a_corrupt_spool_record_is_skipped_and_the_rest_replayed() {
    if !have_root("a_corrupt_spool_record_is_skipped_and_the_rest_replayed") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    pg.stop_server();
    let spool = fresh_spool_dir();
    let args =
        ["--interval", "0.2", "--records", "10", "--node-name", "corrupt", "--no-ebpf", "--shutdown-timeout", "1"];
    let out = Agent::start(&url, &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("10 rows are not in the database") && stderr.contains("kept in the spool"), "{stderr}");

    // Flip one byte in the middle of the spool: one record's checksum fails.
    let segment = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .max()
        .unwrap();
    let mut data = std::fs::read(&segment).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&segment, data).unwrap();

    pg.restart_server().unwrap();
    let args = ["--interval", "0.2", "--node-name", "corrupt", "--no-ebpf"];
    let agent = Agent::start(&url, &spool, &args, &[]);
    wait_for("the replay and a new row", Duration::from_secs(20), || {
        count_if_up(&pg, "corrupt").is_some_and(|n| n >= 10)
    });
    assert_eq!(agent.metric("feature_agent_rows_dropped_total{reason=corrupt}"), 1.0);
    assert_eq!(agent.metric("feature_agent_rows_spooled"), 0.0);
    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The flipped byte fell in a record's header or in its payload.
    assert!(
        stderr.contains("skipping a damaged spool record") || stderr.contains("skipping damaged spool bytes"),
        "{stderr}"
    );
    // Counted in rows: exactly the one whose bytes were damaged.
    let lost = stderr.lines().find(|l| l.contains("rows lost to damaged spool records")).expect("a loss line");
    assert_eq!(field(lost, "rows"), "1", "{stderr}");
    let c = stopped_counts(&stderr);
    assert_eq!(c["corrupt"], 1);
    assert_eq!(count(&pg, "corrupt"), 9 + c["sampled"], "9 spooled rows survive, plus the new ones");
    let _ = std::fs::remove_dir_all(spool);
}

#[test]
fn database_errors_are_clear_and_sampling_goes_on_into_the_spool() {
    if !have_root("database_errors_are_clear_and_sampling_goes_on_into_the_spool") {
        return;
    }
    let mut pg = pg();
    pg.configure(&[], &["local all pwuser scram-sha-256", "host all pwuser 127.0.0.1/32 scram-sha-256"]).unwrap();
    pg.psql("postgres", "CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'right-horse'").unwrap();
    let out = agent_command().args(["migrate"]).env("DATABASE_URL", pg.url("postgres")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.psql("postgres", "CREATE ROLE readonly_user LOGIN IN ROLE feature_reader").unwrap();

    let socket = pg.socket_dir().display().to_string();
    let port = pg.port().to_string();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 3] = [
        (
            "wrong password",
            vec![
                ("DB_HOST", &socket),
                ("DB_PORT", &port),
                ("DB_USER", "pwuser"),
                ("DB_PASSWORD", "wrong-horse"),
                ("DB_NAME", "postgres"),
            ],
            "password authentication failed",
        ),
        (
            "unknown database",
            vec![("DB_HOST", &socket), ("DB_PORT", &port), ("DB_USER", "postgres"), ("DB_NAME", "no_such_db")],
            "the database does not exist",
        ),
        (
            "permission denied",
            vec![("DB_HOST", &socket), ("DB_PORT", &port), ("DB_USER", "readonly_user"), ("DB_NAME", "postgres")],
            "permission denied for table node_writers",
        ),
    ];
    for (what, env, expected) in cases {
        let spool = fresh_spool_dir();
        let args =
            ["--interval", "0.2", "--records", "5", "--node-name", "errors", "--no-ebpf", "--shutdown-timeout", "1"];
        // It stops by itself after 5 rows, all of them spooled.
        let out = Agent::start("", &spool, &args, &env).stop_after_flush();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(
            stderr.contains("5 rows are not in the database") && stderr.contains("kept in the spool"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("wrong-horse") && !stderr.contains("panicked"), "{what}: {stderr}");
        let _ = std::fs::remove_dir_all(spool);
    }
    assert_eq!(count(&pg, "errors"), 0);
}
