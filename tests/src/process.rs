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

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
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
        let mut agent = Agent { child: cmd.spawn().unwrap(), port };
        // Until it listens, or has already finished (a short --records run).
        wait_for("the metrics listener", Duration::from_secs(30), || {
            http_get(port, "/healthz").is_some() || agent.child.try_wait().unwrap().is_some()
        });
        agent
    }

    pub fn metric(&self, name: &str) -> f64 {
        metrics(self.port).get(name).copied().unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    pub fn stop(mut self) -> std::process::Output {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let child = std::mem::replace(&mut self.child, std::process::Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }

    pub fn kill(mut self) -> std::process::Output {
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
    ["sampled", "skipped", "written", "dropped_full", "corrupt", "rejected", "dropped_shutdown", "spooled"]
        .iter()
        .map(|k| (k.to_string(), field(line, k).parse().unwrap_or_else(|_| panic!("no {k} in {line}"))))
        .collect()
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

impl Agent {
    /// Waits for an agent that stops by itself (--records) to exit.
    pub fn stop_after_flush(mut self) -> std::process::Output {
        let child = std::mem::replace(&mut self.child, std::process::Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }
}
