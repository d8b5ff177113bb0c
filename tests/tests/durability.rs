//! No lost rows: a 30 s database outage, a SIGKILL with rows in the spool, a full spool, a
//! corrupt spool record, and database errors that must not stop sampling. Each test has its own
//! Postgres (it is stopped and started) and its own spool. /metrics is read and parsed with a
//! Prometheus text-format parser along the way, and its counters are checked against the rows.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use tests::{agent_command, fresh_spool_dir, have_root, ThrowawayPostgres};

/// A port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// /metrics parsed with prometheus-parse: sample name (with its labels) -> value.
fn metrics(port: u16) -> HashMap<String, f64> {
    let (status, body) = http_get(port, "/metrics").expect("the agent serves /metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = if labels.is_empty() { s.metric } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
        out.insert(key, value);
    }
    out
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    fn start(url: &str, spool: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let port = free_port();
        let mut cmd = agent_command();
        if !url.is_empty() {
            cmd.env("DATABASE_URL", url);
        }
        cmd.arg("run")
            .args(args)
            .env("SPOOL_DIR", spool)
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut agent = Agent { child: cmd.spawn().unwrap(), port };
        // Until it listens, or has already finished (a short --records run).
        wait_for("the metrics listener", Duration::from_secs(30), || {
            http_get(port, "/healthz").is_some() || agent.child.try_wait().unwrap().is_some()
        });
        agent
    }

    fn metric(&self, name: &str) -> f64 {
        metrics(self.port).get(name).copied().unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    fn stop(mut self) -> std::process::Output {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let child = std::mem::replace(&mut self.child, std::process::Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }

    fn kill(mut self) -> std::process::Output {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let child = std::mem::replace(&mut self.child, std::process::Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(pg: &ThrowawayPostgres, node: &str) -> u64 {
    pg.psql("postgres", &format!("SELECT count(*) FROM node_features WHERE node = '{node}'"))
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

/// Gaps between consecutive rows of a node, in seconds, in ts order.
fn gaps(pg: &ThrowawayPostgres, node: &str) -> Vec<f64> {
    pg.psql(
        "postgres",
        &format!(
            "SELECT extract(epoch FROM ts - lag(ts) OVER (ORDER BY ts)) FROM node_features WHERE node = '{node}' ORDER BY ts"
        ),
    )
    .unwrap()
    .lines()
    .skip(1)
    .map(|l| l.parse().unwrap())
    .collect()
}

fn pg() -> ThrowawayPostgres {
    ThrowawayPostgres::start().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_30_s_outage_loses_nothing_and_metrics_match_the_rows() {
    if !have_root("a_30_s_outage_loses_nothing_and_metrics_match_the_rows") {
        return;
    }
    let mut pg = pg();
    let spool = fresh_spool_dir();
    let agent = Agent::start(&pg.url("postgres"), &spool, &["--interval", "1", "--node-name", "outage"], &[]);
    wait_for("3 rows", Duration::from_secs(30), || count(&pg, "outage") >= 3);
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
    wait_for("the spool to drain", Duration::from_secs(60), || {
        let m = metrics(agent.port);
        m["feature_agent_rows_spooled"] == 0.0
            && m["feature_agent_rows_queued"] == 0.0
            && m["feature_agent_database_up"] == 1.0
    });
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
            let dropped: f64 = ["queue_full", "spool_full", "rejected"]
                .iter()
                .map(|r| after[&format!("feature_agent_rows_dropped_total{{reason={r}}}")])
                .sum();
            assert_eq!(dropped, 0.0);
            assert!(after["feature_agent_last_write_timestamp_seconds"] > 1.7e9);
            assert!(after["feature_agent_ebpf_programs_attached"] >= 1.0);
            assert!(after["feature_agent_collection_duration_seconds_count"] >= rows);
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
    wait_for("2 rows", Duration::from_secs(30), || count(&pg, "killed") >= 2);
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
    let field = |line: &str, key: &str| -> String {
        line.split(&format!(" {key}=")).nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default().to_owned()
    };
    let announced =
        stderr.lines().find(|l| l.contains("rows from an earlier run are in the spool")).expect("replay announced");
    let replayed: u64 = field(announced, "rows").parse().unwrap();
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
    let agent = Agent::start(&url, &spool, &args, &[]);
    wait_for("100 rows sampled", Duration::from_secs(40), || agent.metric("feature_agent_rows_sampled_total") >= 100.0);
    std::thread::sleep(Duration::from_millis(300));
    let m = metrics(agent.port);
    let dropped = m["feature_agent_rows_dropped_total{reason=spool_full}"];
    let spooled = m["feature_agent_rows_spooled"];
    assert!(dropped > 0.0, "{m:?}");
    assert!(m["feature_agent_spool_bytes"] <= 16384.0, "{m:?}");
    assert_eq!(dropped + spooled, 100.0, "every row is spooled or counted as dropped: {m:?}");

    pg.restart_server().unwrap();
    let out = agent.stop_after_flush();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spool full: dropped its oldest rows"));
    // What arrived is the newest rows, without a hole among them.
    assert_eq!(count(&pg, "full") as f64, spooled);
    let g = gaps(&pg, "full");
    assert!(g.iter().all(|d| *d < 0.2), "{g:?}");
    let _ = std::fs::remove_dir_all(spool);
}

impl Agent {
    /// Waits for an agent that stops by itself (--records) to exit.
    fn stop_after_flush(mut self) -> std::process::Output {
        let child = std::mem::replace(&mut self.child, std::process::Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }
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
    assert!(stderr.contains("10 rows could not be written") && stderr.contains("kept in the spool"), "{stderr}");

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
    let args = ["--interval", "0.2", "--records", "1", "--node-name", "corrupt", "--no-ebpf"];
    let out = Agent::start(&url, &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping a corrupt spool record"), "{stderr}");
    assert_eq!(count(&pg, "corrupt"), 9 + 1, "9 spooled rows survive, plus the new one");
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
            "permission denied for function ensure_node_partition",
        ),
    ];
    for (what, env, expected) in cases {
        let spool = fresh_spool_dir();
        let args =
            ["--interval", "0.2", "--records", "5", "--node-name", "errors", "--no-ebpf", "--shutdown-timeout", "1"];
        let agent = Agent::start("", &spool, &args, &env);
        let port = agent.port;
        wait_for("5 rows sampled", Duration::from_secs(20), || {
            metrics(port).get("feature_agent_rows_sampled_total").copied().unwrap_or(0.0) >= 5.0
        });
        let out = agent.stop_after_flush();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(
            stderr.contains("5 rows could not be written") && stderr.contains("kept in the spool"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("wrong-horse") && !stderr.contains("panicked"), "{what}: {stderr}");
        let _ = std::fs::remove_dir_all(spool);
    }
    assert_eq!(count(&pg, "errors"), 0);
}
