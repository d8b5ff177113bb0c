//! A running agent process for the durability tests: started with its own spool and metrics
//! port, its /metrics parsed with a Prometheus text-format parser, stopped by SIGTERM, SIGKILL
//! or its own --records; and queries on a test Postgres that count and space a node's rows.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{agent_command, ThrowawayPostgres};

/// A loopback port reserved for the rest of this test process (see [`throwaway_pg::port`]): an
/// agent restarted on it cannot find it taken by another test's outgoing connection.
pub fn free_port() -> u16 {
    let reserved = throwaway_pg::port::reserve().expect("reserving a loopback port");
    let port = reserved.port();
    std::mem::forget(reserved);
    port
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// /metrics parsed with prometheus-parse: sample name (with its labels) -> value.
pub fn metrics(port: u16) -> HashMap<String, f64> {
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

/// Starts `command` with its stdout piped and waits for the first line it prints to be `ready`
/// (the servers of tests/src/bin/pod-workload.rs and the connection holders print it once
/// they listen).
pub fn spawn_ready(command: &mut std::process::Command) -> std::process::Child {
    use std::io::BufRead;
    let mut child =
        command.stdout(std::process::Stdio::piped()).spawn().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{command:?} did not start");
    child
}

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running agent. Its stderr is read all along by a thread (a chatty agent must never block
/// on a full pipe while a test waits), and can be looked at before it exits ([`Agent::log`]).
pub struct Agent {
    pub child: Child,
    pub port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(url: &str, spool: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
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
        let mut child = cmd.spawn().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut agent = Agent { child, port, log, reader: Some(reader) };
        // Until it listens, or has already finished (a short --records run).
        wait_for("the metrics listener", Duration::from_secs(30), || {
            http_get(port, "/healthz").is_some() || agent.child.try_wait().unwrap().is_some()
        });
        agent
    }

    /// [`wait_for`], failing with what the agent logged so far.
    pub fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; the agent logged:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    pub fn metric(&self, name: &str) -> f64 {
        metrics(self.port).get(name).copied().unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// Waits for the exit and returns the status with everything logged.
    fn finish(mut self) -> std::process::Output {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stderr = std::mem::take(&mut *self.log.lock().unwrap());
        std::process::Output { status, stdout: Vec::new(), stderr }
    }

    pub fn stop(self) -> std::process::Output {
        signal(&self, libc::SIGTERM);
        self.finish()
    }

    pub fn kill(self) -> std::process::Output {
        signal(&self, libc::SIGKILL);
        self.finish()
    }

    /// Sends SIGTERM and waits for the exit, failing past `limit`; returns the output and the
    /// time the exit took.
    pub fn stop_within(mut self, limit: Duration) -> (std::process::Output, Duration) {
        let started = Instant::now();
        signal(&self, libc::SIGTERM);
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let out = self.finish();
                panic!("the agent did not stop within {limit:?} of SIGTERM:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        (self.finish(), took)
    }

    /// Waits for an agent that stops by itself (--records) to exit.
    pub fn stop_after_flush(self) -> std::process::Output {
        self.finish()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Rows of `node` in the database; a failed query fails the test (it is not 0 rows).
pub fn count(pg: &ThrowawayPostgres, node: &str) -> u64 {
    let out = pg
        .psql("postgres", &format!("SELECT count(*) FROM node_features WHERE node = '{node}'"))
        .unwrap_or_else(|e| panic!("counting rows: {e}"));
    out.trim().parse().unwrap_or_else(|_| panic!("count(*) gave {out:?}"))
}

/// Rows of `node`, or None while the server is down (for waits during an outage).
pub fn count_if_up(pg: &ThrowawayPostgres, node: &str) -> Option<u64> {
    pg.psql("postgres", &format!("SELECT count(*) FROM node_features WHERE node = '{node}'"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// A `key=value` field of a log line (values without spaces).
pub fn field(line: &str, key: &str) -> String {
    line.split(&format!(" {key}=")).nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default().to_owned()
}

/// The agent's closing `stopped` line: its counters by name.
pub fn stopped_counts(stderr: &str) -> HashMap<String, u64> {
    let line = stderr
        .lines()
        .rfind(|l| l.ends_with(" stopped") || l.contains(" stopped "))
        .unwrap_or_else(|| panic!("no stopped line: {stderr}"));
    [
        "sampled",
        "recovered",
        "skipped",
        "written",
        "duplicate",
        "dropped_full",
        "corrupt",
        "rejected",
        "clock_step",
        "dropped_shutdown",
        "spooled",
    ]
    .iter()
    .map(|k| (k.to_string(), field(line, k).parse().unwrap_or_else(|_| panic!("no {k} in {line}"))))
    .collect()
}

/// Checks a run's closing line adds up: every row that entered (sampled, or recovered from the
/// spool) left exactly one way. Returns the counts.
pub fn assert_accounted(stderr: &str) -> HashMap<String, u64> {
    let c = stopped_counts(stderr);
    let line = stderr.lines().rfind(|l| l.contains(" stopped")).unwrap_or_default();
    assert_eq!(field(line, "unaccounted"), "0", "the closing totals do not add up: {line}");
    let left: u64 =
        ["written", "duplicate", "dropped_full", "corrupt", "rejected", "clock_step", "dropped_shutdown", "spooled"]
            .iter()
            .map(|k| c[*k])
            .sum();
    assert_eq!(c["sampled"] + c["recovered"], left, "{line}");
    c
}

/// Sends a signal to a running agent.
pub fn signal(agent: &Agent, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.child.id() as i32, sig) };
}

/// Gaps between consecutive rows of a node, in seconds, in ts order.
pub fn gaps(pg: &ThrowawayPostgres, node: &str) -> Vec<f64> {
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

pub fn pg() -> ThrowawayPostgres {
    ThrowawayPostgres::start().unwrap_or_else(|e| panic!("{e}"))
}
