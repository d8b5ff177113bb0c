//! No lost rows, in sequences: the real agent process and a real Postgres through several
//! outages in one run, a clean stop with rows spooled and another outage under the next agent,
//! a crash between the database's commit and the spool's ack, a full disk (ENOSPC on a small
//! tmpfs), no spool at all, rows the database refuses, a damaged `ack`, a second agent on the
//! same spool, and a spool written by the previous release. In each, every row the agents
//! sampled is in the database exactly once or counted as dropped with its reason.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tests::{
    agent_command, fresh_spool_dir, have_root,
    process::{count, count_if_up, field, metrics, pg, stopped_counts, wait_for, Agent},
};

fn sleep(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

/// Rows of `node` whose ts occurs more than once (the primary key forbids it; checked anyway).
/// A tmpfs of `kib` KiB mounted at a fresh directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(kib: u32) -> Tmpfs {
        let dir = fresh_spool_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", dir.display());
        Tmpfs(dir)
    }

    /// Fills the filesystem with a file until ENOSPC.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "spool"))
        .count()
}

/// A restart sequence: an agent stops cleanly with rows spooled; the next
/// one replays them (every segment is then acknowledged and deleted) and lives through two more
/// outages. Every sampled row arrives exactly once.
#[test]
fn outages_across_a_clean_restart_lose_nothing() {
    if !have_root("outages_across_a_clean_restart_lose_nothing") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    let spool = fresh_spool_dir();
    let node = ["--node-name", "restarts", "--no-ebpf", "--interval", "0.2", "--shutdown-timeout", "1"];

    // Agent 1: 25 rows; the database goes away after the first few.
    let a1 = Agent::start(&url, &spool, &[&node[..], &["--records", "25"]].concat(), &[]);
    wait_for("3 rows", Duration::from_secs(20), || count_if_up(&pg, "restarts").is_some_and(|n| n >= 3));
    pg.stop_server();
    let out1 = a1.stop_after_flush();
    let e1 = String::from_utf8_lossy(&out1.stderr);
    let c1 = stopped_counts(&e1);
    assert_eq!(c1["sampled"], 25, "{e1}");
    assert!(c1["spooled"] >= 15 && c1["written"] + c1["spooled"] == 25, "{e1}");

    // Agent 2: replays, then two outages under it.
    pg.restart_server().unwrap();
    let a2 = Agent::start(&url, &spool, &[&node[..], &["--records", "70"]].concat(), &[]);
    wait_for("the replay", Duration::from_secs(20), || count_if_up(&pg, "restarts").is_some_and(|n| n >= 27));
    wait_for("the spool emptied", Duration::from_secs(20), || {
        spool_files(&spool) == 0 || a2.metric("feature_agent_rows_spooled") == 0.0
    });
    for outage in [3.0, 2.5] {
        pg.stop_server();
        sleep(outage);
        assert!(metrics(a2.port)["feature_agent_rows_spooled"] > 5.0);
        pg.restart_server().unwrap();
        sleep(2.0);
    }
    let out2 = a2.stop_after_flush();
    let e2 = String::from_utf8_lossy(&out2.stderr);
    assert!(out2.status.success(), "{e2}");
    let c2 = stopped_counts(&e2);
    assert_eq!(c2["sampled"], 70);
    for k in ["dropped_full", "corrupt", "rejected", "dropped_shutdown", "spooled", "skipped"] {
        assert_eq!(c2[k], 0, "{k}: {e2}");
    }
    assert!(!e2.contains("damaged"), "{e2}");
    // Exactly every row: none lost (a second row of one ts is impossible, the table's key).
    assert_eq!(count(&pg, "restarts"), 25 + 70);
    let _ = std::fs::remove_dir_all(spool);
}

/// The database committed a replayed batch, the spool could not record it (its disk was full),
/// and the agent was killed: the next agent replays the batch again, and the database keeps one
/// copy of each row.
#[test]
fn a_crash_between_commit_and_ack_writes_each_row_once() {
    if !have_root("a_crash_between_commit_and_ack_writes_each_row_once") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    let fs = Tmpfs::mount(1024);
    let spool = fs.0.join("spool");
    let node = ["--node-name", "commit-ack", "--no-ebpf", "--shutdown-timeout", "0.5"];
    pg.stop_server();
    let out = Agent::start(&url, &spool, &[&node[..], &["--records", "8", "--interval", "0.2"]].concat(), &[])
        .stop_after_flush();
    assert_eq!(stopped_counts(&String::from_utf8_lossy(&out.stderr))["spooled"], 8);

    // Agent 2 opens the spool with the database down; then the disk fills; then the database
    // returns: the replay commits, and the ack cannot be written.
    let a2 = Agent::start(&url, &spool, &[&node[..], &["--interval", "0.5"]].concat(), &[]);
    let filler = fs.fill();
    pg.restart_server().unwrap();
    let mut a2 = a2;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the replay to commit", Duration::from_secs(20), || {
            count_if_up(&pg, "commit-ack").is_some_and(|n| n >= 8)
        })
    }));
    if waited.is_err() {
        let _ = a2.child.kill();
        let out = std::mem::replace(&mut a2.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        panic!("no replay: {}", String::from_utf8_lossy(&out.stderr));
    }
    sleep(0.5);
    let out = a2.kill();
    let e2 = String::from_utf8_lossy(&out.stderr);
    assert!(e2.contains("cannot record progress in the spool"), "{e2}");
    let before = count(&pg, "commit-ack");
    std::fs::remove_file(filler).unwrap();

    // Agent 3 replays the same rows: all already there.
    let out = Agent::start(&url, &spool, &[&node[..], &["--records", "1", "--interval", "0.2"]].concat(), &[])
        .stop_after_flush();
    let e3 = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{e3}");
    let batch = e3.lines().find(|l| l.contains("caught up a batch of rows")).unwrap_or_else(|| panic!("{e3}"));
    // The 8 rows of agent 1, and any agent 2 spooled before the disk filled.
    let replayed: u64 = field(batch, "rows").parse().unwrap();
    assert!(replayed >= 8, "{e3}");
    assert_eq!(field(batch, "new"), "0", "every replayed row was already in the database: {e3}");
    assert_eq!(count(&pg, "commit-ack"), before + 1);
}

/// The spool's disk fills up during an outage: rows wait in memory, the oldest beyond
/// --queue-max-rows are dropped and counted; sampling keeps its schedule; when space returns
/// the spool works again; when the database returns everything left arrives within seconds.
#[test]
fn a_full_disk_drops_counted_rows_and_recovers() {
    if !have_root("a_full_disk_drops_counted_rows_and_recovers") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    let fs = Tmpfs::mount(256);
    let spool = fs.0.join("spool");
    pg.stop_server();
    let args = ["--node-name", "enospc", "--no-ebpf", "--interval", "0.1", "--queue-max-rows", "20"];
    let agent = Agent::start(&url, &spool, &args, &[]);
    let filler = fs.fill();
    wait_for("rows dropped from memory", Duration::from_secs(30), || {
        metrics(agent.port)["feature_agent_rows_dropped_total{reason=queue_full}"] >= 10.0
    });
    let m = metrics(agent.port);
    assert_eq!(m["feature_agent_samples_skipped_total"], 0.0, "sampling kept its schedule: {m:?}");
    // Space returns: the spool takes the rows again.
    std::fs::remove_file(filler).unwrap();
    wait_for("the memory queue spilled", Duration::from_secs(20), || {
        metrics(agent.port)["feature_agent_rows_queued"] == 0.0
    });
    sleep(1.0);
    pg.restart_server().unwrap();
    let back = std::time::Instant::now();
    wait_for("the backlog written", Duration::from_secs(30), || {
        let m = metrics(agent.port);
        m["feature_agent_rows_spooled"] == 0.0
            && m["feature_agent_rows_queued"] == 0.0
            && m["feature_agent_database_up"] == 1.0
    });
    assert!(back.elapsed() < Duration::from_secs(8), "rows flowed again only after {:?}", back.elapsed());
    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the spool works again"), "{stderr}");
    let c = stopped_counts(&stderr);
    let m_dropped = c["dropped_full"];
    assert!(m_dropped >= 10, "{stderr}");
    assert_eq!(c["skipped"], 0);
    assert_eq!(c["dropped_shutdown"], 0);
    // The invariant, exactly: every sampled row is in the database or counted as dropped.
    assert_eq!(count(&pg, "enospc") + m_dropped, c["sampled"], "{stderr}");
}

/// Without a spool, rows wait in memory; those beyond --queue-max-rows are dropped and counted;
/// at shutdown with the database still away, the rest are lost and counted too.
#[test]
fn without_a_spool_every_lost_row_is_counted() {
    if !have_root("without_a_spool_every_lost_row_is_counted") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    pg.stop_server();
    let args =
        ["--node-name", "nospool", "--no-ebpf", "--interval", "0.1", "--queue-max-rows", "5", "--spool-dir", "off"];
    let agent = Agent::start(&url, Path::new("off"), &args, &[]);
    wait_for("20 rows sampled", Duration::from_secs(20), || agent.metric("feature_agent_rows_sampled_total") >= 20.0);
    let m = metrics(agent.port);
    assert!(m["feature_agent_rows_dropped_total{reason=queue_full}"] >= 10.0, "{m:?}");
    pg.restart_server().unwrap();
    wait_for("the queue written", Duration::from_secs(20), || {
        let m = metrics(agent.port);
        m["feature_agent_rows_queued"] == 0.0 && m["feature_agent_database_up"] == 1.0
    });
    pg.stop_server();
    sleep(1.0);
    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let c = stopped_counts(&stderr);
    assert!(c["dropped_shutdown"] >= 1, "{stderr}");
    assert!(stderr.contains("stopping with rows the database never received: they are lost"), "{stderr}");
    pg.restart_server().unwrap();
    assert_eq!(count(&pg, "nospool") + c["dropped_full"] + c["dropped_shutdown"], c["sampled"], "{stderr}");
}

/// A row the database refuses for its content (here a CHECK constraint refusing odd seconds)
/// is dropped, logged and counted as rejected; its neighbours are written.
#[test]
fn rows_the_database_refuses_are_counted_as_rejected() {
    if !have_root("rows_the_database_refuses_are_counted_as_rejected") {
        return;
    }
    let pg = pg();
    let url = pg.url("postgres");
    let out = agent_command().args(["migrate"]).env("DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.psql(
        "postgres",
        "ALTER TABLE node_features ADD CONSTRAINT even_seconds CHECK (floor(extract(epoch FROM ts))::bigint % 2 = 0)",
    )
    .unwrap();
    let spool = fresh_spool_dir();
    let args = ["--node-name", "refused", "--no-ebpf", "--interval", "1", "--records", "6"];
    let out = Agent::start(&url, &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let c = stopped_counts(&stderr);
    assert_eq!(c["rejected"], 3, "{stderr}");
    assert_eq!(stderr.matches("the database refused a row; it is dropped").count(), 3, "{stderr}");
    assert_eq!(count(&pg, "refused") + c["rejected"], 6);
    let _ = std::fs::remove_dir_all(spool);
}

/// A damaged ack: one flipped bit in `ack` (segment 1 -> 3). The spool notices,
/// deletes nothing, replays everything; the database has every row once.
#[test]
fn a_damaged_ack_loses_no_row() {
    if !have_root("a_damaged_ack_loses_no_row") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    let spool = fresh_spool_dir();
    let node = ["--node-name", "bad-ack", "--no-ebpf", "--interval", "0.2", "--shutdown-timeout", "0.5"];
    pg.stop_server();
    let out = Agent::start(&url, &spool, &[&node[..], &["--records", "8"]].concat(), &[]).stop_after_flush();
    assert_eq!(stopped_counts(&String::from_utf8_lossy(&out.stderr))["spooled"], 8);
    let ack = std::fs::read_to_string(spool.join("ack")).unwrap();
    let mut bytes = ack.into_bytes();
    bytes[5] ^= 0b10; // the segment number's first digit
    std::fs::write(spool.join("ack"), &bytes).unwrap();
    pg.restart_server().unwrap();
    let out = Agent::start(&url, &spool, &[&node[..], &["--records", "2"]].concat(), &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the spool's ack file is damaged or missing"), "{stderr}");
    assert_eq!(count(&pg, "bad-ack"), 10);
}

/// Two agents cannot share a spool: the second exits at once with a clear error, and the first
/// goes on.
#[test]
fn a_second_agent_on_the_same_spool_is_refused() {
    if !have_root("a_second_agent_on_the_same_spool_is_refused") {
        return;
    }
    let pg = pg();
    let url = pg.url("postgres");
    let spool = fresh_spool_dir();
    let first = Agent::start(&url, &spool, &["--node-name", "locked", "--no-ebpf", "--interval", "0.2"], &[]);
    wait_for("a row", Duration::from_secs(20), || count_if_up(&pg, "locked").is_some_and(|n| n >= 1));
    let out = agent_command()
        .args(["run", "--node-name", "locked2", "--no-ebpf"])
        .env("DATABASE_URL", &url)
        .env("SPOOL_DIR", &spool)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is in use by another agent"), "{stderr}");
    let n = count(&pg, "locked");
    wait_for("the first agent writing on", Duration::from_secs(10), || {
        count_if_up(&pg, "locked").is_some_and(|c| c > n)
    });
    assert!(first.stop().status.success());
    let _ = std::fs::remove_dir_all(spool);
}

/// An upgrade during an outage: the spool the previous release left (a real segment, kept as a
/// fixture) is replayed by this release with nothing lost, every value as that release read it.
#[test]
fn the_previous_releases_spool_is_replayed_after_an_upgrade() {
    if !have_root("the_previous_releases_spool_is_replayed_after_an_upgrade") {
        return;
    }
    let pg = pg();
    let url = pg.url("postgres");
    let spool = fresh_spool_dir();
    std::fs::create_dir_all(&spool).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/spool-v1");
    for f in ["0000000000000001.spool", "ack"] {
        std::fs::copy(fixture.join(f), spool.join(f)).unwrap();
    }
    let args = ["--node-name", "upgraded", "--no-ebpf", "--interval", "0.2", "--records", "1"];
    let out = Agent::start(&url, &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("rewrote a spool segment of format 1 in format 2"), "{stderr}");
    let node = "fixture-nöde \"v1\"";
    assert_eq!(count(&pg, &node.replace('\'', "''")), 12);
    // Every value of every row, as that release printed it.
    let expected = std::fs::read_to_string(fixture.join("rows.jsonl")).unwrap();
    let got = pg
        .psql(
            "postgres",
            "SELECT row_to_json(f) FROM (SELECT n.*, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS ts_text \
             FROM node_features n WHERE node LIKE 'fixture-%' ORDER BY ts) f",
        )
        .unwrap();
    for (want, got) in expected.lines().zip(got.lines()) {
        let want: serde_json::Value = serde_json::from_str(want).unwrap();
        let got: serde_json::Value = serde_json::from_str(got).unwrap();
        for (k, v) in want.as_object().unwrap() {
            let g = if k == "ts" { &got["ts_text"] } else { &got[k] };
            match (v, g) {
                (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
                    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                    assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{k}: {a} vs {b}");
                }
                _ => assert_eq!(v, g, "{k}"),
            }
        }
    }
    assert_eq!(got.lines().count(), 12);
    let _ = std::fs::remove_dir_all(spool);
}

/// The database returns while the writer waits out a long backoff, and the agent is stopped at
/// once. The stop tries the database immediately: every row held in memory (no
/// spool here, the worst case) is written, none is lost.
#[test]
fn a_stop_right_after_the_database_returns_writes_everything() {
    if !have_root("a_stop_right_after_the_database_returns_writes_everything") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    pg.stop_server();
    let args = [
        "--node-name",
        "quick-stop",
        "--no-ebpf",
        "--interval",
        "0.1",
        "--spool-dir",
        "off",
        "--shutdown-timeout",
        "10",
    ];
    let agent = Agent::start(&url, Path::new("off"), &args, &[]);
    // Long enough for the backoff to reach several seconds.
    sleep(12.0);
    pg.restart_server().unwrap();
    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let c = stopped_counts(&stderr);
    assert!(c["sampled"] >= 100, "{stderr}");
    assert_eq!((c["dropped_full"], c["dropped_shutdown"], c["spooled"]), (0, 0, 0), "{stderr}");
    assert_eq!(count(&pg, "quick-stop"), c["sampled"]);
}
