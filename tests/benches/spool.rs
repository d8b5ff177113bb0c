//! The spool's cost: bytes per row on disk, fdatasync calls per row while the database is away,
//! and how fast a backlog drains when it returns, after a 1-hour outage at 10 s (360 rows) and
//! at 1 s (3,600 rows), through the real agent into a Postgres with production durability.
//!
//! cargo bench -p tests --bench spool      (the numbers in BENCHMARKS.md; strace is needed for
//!                                          the fdatasync count)
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use agent::{
    delivery::spool::Spool,
    sources::collector::{DiskSelector, InterfaceSelector, Roots, Sources},
    sources::sampler::Sampler,
};
use tests::{agent_bin, fresh_spool_dir};

/// Seconds since the epoch of a log line's RFC 3339 timestamp (its first field).
fn log_time(line: &str) -> f64 {
    let ts = line.split_whitespace().next().unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let out = Command::new("date").args(["-u", "-d", ts, "+%s.%N"]).output().unwrap();
    let secs = String::from_utf8_lossy(&out.stdout);
    secs.trim().parse().unwrap_or_else(|_| panic!("date could not read {ts:?}: {secs:?}"))
}

fn main() {
    let roots = Roots::default();
    let sources =
        Sources::new(roots.clone(), DiskSelector::default_for(&roots.sysfs), InterfaceSelector::physical(&roots.sysfs));
    let mut sampler = Sampler::new(
        "bench-node".into(),
        sources,
        None,
        Duration::from_secs(3600),
        agent::sources::netns::Proc::default(),
    );
    // A row as the agent writes it with eBPF: every counter and a verdict present.
    let mut template = sampler.sample();
    for (i, e) in agent_common::Event::ALL.iter().enumerate() {
        template.set_event(*e, Some(i as i64 * 37));
    }
    template.anomaly_score = Some(1.25);
    template.anomalous_features = Some(Vec::new());
    let pg = throwaway_pg::ThrowawayPostgres::start_with(true).expect("throwaway Postgres");
    let url = pg.url("postgres");
    let bin = agent_bin();
    let out = Command::new(&bin).args(["migrate"]).env("DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    println!("| outage | rows | spool bytes/row | append (fdatasync each) | replay rows/s |");
    println!("|---|---|---|---|---|");
    for (label, interval, rows) in [("1 h at 10 s", 10u64, 360u64), ("1 h at 1 s", 1, 3600)] {
        // On the real disk (target/), where fdatasync costs what it costs.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/spool-bench").join(format!("{rows}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 64 << 20).unwrap();
        let start = SystemTime::now() - Duration::from_secs(interval * rows + 3600);
        let t = Instant::now();
        for i in 0..rows {
            let mut row = template.clone();
            row.node = format!("bench-{interval}");
            row.ts = start + Duration::from_secs(i * interval);
            spool.append(&row).unwrap();
        }
        let append = t.elapsed();
        let per_row = spool.bytes() as f64 / rows as f64;
        drop(spool);
        let out = Command::new(&bin)
            .args(["run", "--records", "1", "--interval", "1", "--no-ebpf", "--listen", "off", "--node-name"])
            .arg(format!("bench-{interval}"))
            .env("DATABASE_URL", &url)
            .env("SPOOL_DIR", &dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let connected = log.lines().find(|l| l.contains("connected to the database")).map(log_time).unwrap();
        let last = log.lines().rfind(|l| l.contains("caught up a batch")).map(log_time).unwrap();
        println!(
            "| {label} | {rows} | {per_row:.0} | {:.2} ms/row | {:.0} |",
            append.as_secs_f64() * 1000.0 / rows as f64,
            rows as f64 / (last - connected)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    // fdatasync calls per row while the database is away, counted by strace on the real agent.
    if Command::new("strace").arg("-V").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        let dir = fresh_spool_dir();
        let summary = std::env::temp_dir().join(format!("spool-bench-strace-{}", std::process::id()));
        let rows = 100;
        let status = Command::new("strace")
            .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&summary)
            .arg(&bin)
            .args(["run", "--records", &rows.to_string(), "--interval", "0.05", "--no-ebpf", "--listen", "off"])
            .args(["--shutdown-timeout", "0.1"])
            .env("DATABASE_URL", "host=127.0.0.1 port=1 user=nobody dbname=none")
            .env("SPOOL_DIR", &dir)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        // The agent exits 1: its rows stay in the spool, as intended here.
        assert_eq!(status.code(), Some(1));
        // A syscall strace never saw has no line: that count is 0.
        let text = std::fs::read_to_string(&summary).expect("strace wrote its summary");
        let calls = |name: &str| -> u64 {
            text.lines()
                .find(|l| l.split_whitespace().last() == Some(name))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        };
        println!(
            "\nduring an outage: {} fdatasync + {} fsync calls for {rows} rows spooled ({:.2} per row)",
            calls("fdatasync"),
            calls("fsync"),
            (calls("fdatasync") + calls("fsync")) as f64 / rows as f64
        );
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(summary);
    } else {
        println!("\n(strace not installed: fdatasync count skipped; apt-get install strace)");
    }
}
