//! A real cluster's ordinary bad day, against the real agent and a real Postgres: a database that
//! hangs with its sockets open (every server process SIGSTOPped), a database so slow that a
//! catch-up outlasts the stop, a second signal, a stop with everything already spooled, a wall
//! clock stepped back and forward (and across a restart), and two agents with one node name.
//! Each ends with the same check: every sampled row is in Postgres exactly once, or counted.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tests::{
    fresh_spool_dir, have_root,
    process::{assert_accounted, count, count_if_up, gaps, http_get, metrics, pg, signal, wait_for, Agent},
};

/// Every process of the server stopped for over 20 s: readiness fails, the rows go to the
/// spool, they flow again within seconds of the thaw; frozen again, SIGTERM ends the agent
/// within --shutdown-timeout; after the thaw a new agent writes every row, once.
#[test]
fn a_hung_database_loses_no_row_and_never_hangs_the_stop() {
    if !have_root("a_hung_database_loses_no_row_and_never_hangs_the_stop") {
        return;
    }
    let mut pg = pg();
    let spool = fresh_spool_dir();
    let args = ["--interval", "1", "--node-name", "hung", "--shutdown-timeout", "5", "--no-ebpf"];
    let agent = Agent::start(&pg.url("postgres"), &spool, &args, &[]);
    wait_for("3 rows", Duration::from_secs(30), || count_if_up(&pg, "hung").is_some_and(|n| n >= 3));
    assert_eq!(http_get(agent.port, "/readyz").unwrap().0, 200);

    let frozen = pg.freeze();
    assert!(frozen.len() >= 3, "the postmaster and its children: {frozen:?}");
    let hung_at = Instant::now();
    // The write in flight passes its 5 s deadline; the agent drops the session and spools.
    wait_for("readiness to fail", Duration::from_secs(20), || {
        http_get(agent.port, "/readyz").is_some_and(|(status, _)| status == 503)
    });
    std::thread::sleep(Duration::from_secs(22).saturating_sub(hung_at.elapsed()));
    let m = metrics(agent.port);
    assert!(m["feature_agent_database_timeouts_total"] >= 1.0, "{m:?}");
    assert!(m["feature_agent_rows_spooled"] >= 12.0, "rows sampled during the hang are spooled: {m:?}");
    assert!(m["feature_agent_oldest_unwritten_row_age_seconds"] >= 15.0, "{m:?}");
    assert_eq!(m["feature_agent_database_up"], 0.0);
    assert_eq!(http_get(agent.port, "/healthz").unwrap().0, 200, "sampling goes on");

    pg.thaw();
    let thawed = Instant::now();
    wait_for("the spool to drain after the thaw", Duration::from_secs(40), || {
        let m = metrics(agent.port);
        m["feature_agent_rows_spooled"] == 0.0 && m["feature_agent_rows_queued"] == 0.0
    });
    let recovery = thawed.elapsed();
    assert!(recovery < Duration::from_secs(10), "rows flowed again only {recovery:?} after the thaw:\n{}", agent.log());
    wait_for("readiness again", Duration::from_secs(10), || {
        http_get(agent.port, "/readyz").is_some_and(|(status, _)| status == 200)
    });

    // Frozen again, and SIGTERM while a write hangs: the stop takes at most the timeout.
    pg.freeze();
    std::thread::sleep(Duration::from_secs(3));
    let (out, took) = agent.stop_within(Duration::from_secs(9));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(took <= Duration::from_millis(6500), "SIGTERM took {took:?} with --shutdown-timeout 5:\n{stderr}");
    let first = assert_accounted(&stderr);
    assert_eq!(first["dropped_shutdown"] + first["dropped_full"] + first["corrupt"], 0, "{stderr}");
    assert!(first["spooled"] >= 3, "the rows of the second hang are spooled: {first:?}");

    pg.thaw();
    let args = ["--interval", "1", "--node-name", "hung", "--records", "2", "--no-ebpf"];
    let out = Agent::start(&pg.url("postgres"), &spool, &args, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let second = assert_accounted(&stderr);
    assert_eq!(second["recovered"], first["spooled"], "{stderr}");
    // Every sampled row is in the database once (ts is the key), none was lost.
    assert_eq!(count(&pg, "hung"), first["sampled"] + second["sampled"], "{stderr}");
    let g = gaps(&pg, "hung");
    assert!(g.iter().filter(|d| **d > 1.5).count() <= 1, "only the restart may leave a gap: {g:?}");
    let _ = std::fs::remove_dir_all(spool);
}

/// A database that answers, but slowly (every insert sleeps): a catch-up of hundreds of spooled
/// rows cannot finish, and SIGTERM must still end it within --shutdown-timeout; a second
/// SIGTERM ends it at once; a stop with every row already spooled and the database down
/// returns at once too. Afterwards every row is written once.
#[test]
fn stops_are_bounded_in_catch_up_and_with_everything_spooled() {
    if !have_root("stops_are_bounded_in_catch_up_and_with_everything_spooled") {
        return;
    }
    let mut pg = pg();
    let spool = fresh_spool_dir();
    let url = pg.url("postgres");
    let fast = ["--interval", "0.05", "--node-name", "slow", "--no-ebpf", "--shutdown-timeout", "10"];
    let a = Agent::start(&url, &spool, &fast, &[]);
    wait_for("the schema and a row", Duration::from_secs(30), || count_if_up(&pg, "slow").is_some_and(|n| n >= 1));
    pg.stop_server();
    std::thread::sleep(Duration::from_secs(12));
    // Everything is spooled and the database is down: one try, then out, well before 10 s.
    let (out, took) = a.stop_within(Duration::from_secs(12));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(took < Duration::from_secs(3), "a stop with every row spooled took {took:?}:\n{stderr}");
    let mut sampled = assert_accounted(&stderr)["sampled"];
    let spooled = assert_accounted(&stderr)["spooled"];
    assert!(spooled >= 150, "{stderr}");

    pg.restart_server().unwrap();
    pg.psql(
        "postgres",
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
         CREATE TRIGGER slow_insert BEFORE INSERT ON node_features FOR EACH ROW EXECUTE FUNCTION slow_insert();",
    )
    .unwrap();
    // Catching up at 20 rows a second: SIGTERM after 3 s must end it by the 2 s timeout.
    let slow = ["--interval", "0.5", "--node-name", "slow", "--no-ebpf", "--shutdown-timeout", "2"];
    let b = Agent::start(&url, &spool, &slow, &[]);
    wait_for("the catch-up to start", Duration::from_secs(30), || b.log().contains("to=\"catching up\""));
    std::thread::sleep(Duration::from_secs(3));
    let (out, took) = b.stop_within(Duration::from_secs(8));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(took <= Duration::from_millis(3500), "SIGTERM during a catch-up took {took:?}:\n{stderr}");
    let c = assert_accounted(&stderr);
    assert!(c["spooled"] > 0, "the catch-up could not have finished: {stderr}");
    sampled += c["sampled"];

    // A second SIGTERM does not wait for the 30 s timeout.
    let patient = ["--interval", "0.5", "--node-name", "slow", "--no-ebpf", "--shutdown-timeout", "30"];
    let c2 = Agent::start(&url, &spool, &patient, &[]);
    wait_for("the catch-up to start", Duration::from_secs(30), || c2.log().contains("to=\"catching up\""));
    signal(&c2, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let (out, took) = c2.stop_within(Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(took <= Duration::from_millis(2500), "the second SIGTERM took {took:?}:\n{stderr}");
    assert!(stderr.contains("second signal: stopping now"), "{stderr}");
    sampled += assert_accounted(&stderr)["sampled"];

    pg.psql("postgres", "DROP TRIGGER slow_insert ON node_features").unwrap();
    let last = ["--interval", "0.5", "--node-name", "slow", "--no-ebpf", "--records", "1", "--shutdown-timeout", "60"];
    let out = Agent::start(&url, &spool, &last, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let d = assert_accounted(&stderr);
    assert_eq!(d["spooled"], 0, "{stderr}");
    sampled += d["sampled"];
    assert_eq!(count(&pg, "slow"), sampled, "every sampled row is in the database once");
    let _ = std::fs::remove_dir_all(spool);
}

fn write_offset(file: &std::path::Path, seconds: f64) {
    std::fs::write(file, format!("{seconds}\n")).unwrap();
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The wall clock stepped back and forward under a running agent (through its test clock), and
/// back across a restart: rows follow the clock, no ts holds two rows, every repeated interval
/// and every conflict is counted.
#[test]
fn clock_steps_are_followed_counted_and_never_write_a_ts_twice() {
    if !have_root("clock_steps_are_followed_counted_and_never_write_a_ts_twice") {
        return;
    }
    let pg = pg();
    let spool = fresh_spool_dir();
    let offset = std::env::temp_dir().join(format!("clock-offset-{}", std::process::id()));
    write_offset(&offset, 0.0);
    let env = [("FEATURE_AGENT_CLOCK_OFFSET_FILE", offset.to_str().unwrap())];
    let args = ["--interval", "1", "--node-name", "clock", "--no-ebpf"];
    let agent = Agent::start(&pg.url("postgres"), &spool, &args, &env);
    wait_for("3 rows", Duration::from_secs(30), || count_if_up(&pg, "clock").is_some_and(|n| n >= 3));
    // 3.4 s back: the next three boundaries were already stamped.
    write_offset(&offset, -3.4);
    wait_for("the backward step", Duration::from_secs(10), || {
        agent.metric("feature_agent_clock_steps_total{direction=backward}") == 1.0
    });
    wait_for("the repeated intervals to pass", Duration::from_secs(10), || {
        agent.metric("feature_agent_rows_dropped_total{reason=clock_step}") >= 3.0
    });
    // 60 s forward (from the original): rows are stamped a minute ahead of this machine.
    write_offset(&offset, 60.0);
    wait_for("the forward step", Duration::from_secs(10), || {
        agent.metric("feature_agent_clock_steps_total{direction=forward}") == 1.0
    });
    std::thread::sleep(Duration::from_secs(3));
    let latest: f64 = pg
        .psql("postgres", "SELECT extract(epoch FROM max(ts)) FROM node_features WHERE node = 'clock'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (latest - (unix_now() + 60.0)).abs() < 3.0,
        "rows follow the stepped clock: {latest} vs {}",
        unix_now() + 60.0
    );
    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = assert_accounted(&stderr);
    assert_eq!(first["clock_step"], 3, "{stderr}");
    assert!(stderr.contains("the wall clock stepped"), "{stderr}");
    assert_eq!(count(&pg, "clock"), first["written"]);

    // A restart with the clock 5 s behind the last run's (+55 s, not +60 s): its first rows
    // hit boundaries the database holds (the last run wrote its final seconds at +60 s). They
    // are counted as duplicates, not as written.
    write_offset(&offset, 55.0);
    let args = ["--interval", "1", "--node-name", "clock", "--no-ebpf", "--records", "5"];
    let out = Agent::start(&pg.url("postgres"), &spool, &args, &env).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let second = assert_accounted(&stderr);
    assert!(second["duplicate"] >= 2, "{stderr}");
    assert!(stderr.contains("the database already holds rows at these timestamps"), "{stderr}");
    assert_eq!(count(&pg, "clock"), first["written"] + second["written"]);
    let _ = std::fs::remove_file(offset);
    let _ = std::fs::remove_dir_all(spool);
}

/// A second agent with the same node name is refused (not ready, counted, logged with the
/// other session's address) and keeps its rows in its spool; when the first stops it takes
/// over, and its rows at boundaries the first already wrote are counted as duplicates.
#[test]
fn a_second_agent_with_the_same_node_name_is_refused_loudly() {
    if !have_root("a_second_agent_with_the_same_node_name_is_refused_loudly") {
        return;
    }
    let pg = pg();
    let (spool_a, spool_b) = (fresh_spool_dir(), fresh_spool_dir());
    let args = ["--interval", "1", "--node-name", "twin", "--no-ebpf"];
    let a = Agent::start(&pg.url("postgres"), &spool_a, &args, &[]);
    wait_for("the first agent's rows", Duration::from_secs(30), || count_if_up(&pg, "twin").is_some_and(|n| n >= 2));
    let b = Agent::start(&pg.url("postgres"), &spool_b, &args, &[]);
    wait_for("the refusal", Duration::from_secs(20), || metrics(b.port)["feature_agent_node_name_in_use"] == 1.0);
    let (status, body) = http_get(b.port, "/readyz").unwrap();
    assert_eq!((status, body.trim()), (503, "another agent is writing rows under this node name"));
    assert!(b.log().contains("another agent is writing rows for node \"twin\""), "{}", b.log());
    assert_eq!(http_get(a.port, "/readyz").unwrap().0, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(metrics(b.port)["feature_agent_rows_written_total"], 0.0);
    let out_a = a.stop();
    let ca = assert_accounted(&String::from_utf8_lossy(&out_a.stderr));
    wait_for("the second agent to take over", Duration::from_secs(40), || {
        http_get(b.port, "/readyz").is_some_and(|(s, _)| s == 200)
            && metrics(b.port)["feature_agent_rows_spooled"] == 0.0
    });
    let out_b = b.stop();
    let stderr = String::from_utf8_lossy(&out_b.stderr).into_owned();
    let cb = assert_accounted(&stderr);
    assert!(cb["duplicate"] >= 1, "b's rows of a's intervals are duplicates: {stderr}");
    assert_eq!(count(&pg, "twin"), ca["written"] + cb["written"]);
    for s in [spool_a, spool_b] {
        let _ = std::fs::remove_dir_all(s);
    }
}

/// The spool's segment files, oldest first.
fn segments(spool: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut s: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.strip_suffix(".spool")?.parse().ok()?;
            Some((id, e.path()))
        })
        .collect();
    s.sort();
    s.into_iter().map(|(_, p)| p).collect()
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Spool segments deleted, replaced by a directory (empty, so it can be removed, or holding a
/// file, so it cannot), under a running agent and before a start: each is skipped, its rows are
/// counted as corrupt exactly, the writer's CPU stays bounded, and rows keep flowing.
#[test]
fn a_damaged_spool_directory_is_skipped_counted_and_rows_keep_flowing() {
    if !have_root("a_damaged_spool_directory_is_skipped_counted_and_rows_keep_flowing") {
        return;
    }
    let mut pg = pg();
    let spool = fresh_spool_dir();
    let url = pg.url("postgres");
    // 64 KiB of spool: segments of 8 KiB, about 20 rows each.
    let args = ["--interval", "0.1", "--node-name", "damaged", "--no-ebpf", "--spool-max-bytes", "65536"];
    let a = Agent::start(&url, &spool, &args, &[]);
    wait_for("the schema and a row", Duration::from_secs(30), || count_if_up(&pg, "damaged").is_some_and(|n| n >= 1));
    pg.stop_server();
    wait_for("five segments", Duration::from_secs(60), || segments(&spool).len() >= 5);
    // Under the running agent: the oldest segment deleted, the next one a directory with a
    // file in it (which no delete can remove).
    let s = segments(&spool);
    std::fs::remove_file(&s[0]).unwrap();
    std::fs::remove_file(&s[1]).unwrap();
    std::fs::create_dir(&s[1]).unwrap();
    std::fs::write(s[1].join("keep"), b"x").unwrap();
    pg.restart_server().unwrap();
    wait_for("the spool to drain", Duration::from_secs(60), || {
        let m = metrics(a.port);
        m["feature_agent_rows_spooled"] == 0.0 && m["feature_agent_database_up"] == 1.0
    });
    let cpu = cpu_seconds(a.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(a.child.id()) - cpu;
    assert!(used < 0.6, "the agent used {used:.2} s of CPU in 3 s after the damage");
    let m = metrics(a.port);
    assert!(m["feature_agent_spool_segments_damaged_total{kind=unreadable}"] >= 2.0, "{m:?}");
    assert_eq!(m["feature_agent_spool_segments_damaged_total{kind=unremovable}"], 1.0, "{m:?}");
    let out = a.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = assert_accounted(&stderr);
    assert!(first["corrupt"] >= 20, "two segments of rows: {stderr}");
    assert!(stderr.matches("cannot read the spool").count() <= 2, "{stderr}");
    assert_eq!(count(&pg, "damaged") + first["corrupt"], first["sampled"], "{stderr}");

    // Before a start: a segment replaced by an empty directory while no agent runs.
    pg.stop_server();
    let b = Agent::start(&url, &spool, &args, &[]);
    wait_for("three segments", Duration::from_secs(60), || segments(&spool).len() >= 3);
    let (out, _) = b.stop_within(Duration::from_secs(15));
    let second = assert_accounted(&String::from_utf8_lossy(&out.stderr));
    let s = segments(&spool);
    std::fs::remove_file(&s[1]).unwrap();
    std::fs::create_dir(&s[1]).unwrap();
    pg.restart_server().unwrap();
    let last = ["--interval", "0.1", "--node-name", "damaged", "--no-ebpf", "--records", "2"];
    let out = Agent::start(&url, &spool, &last, &[]).stop_after_flush();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let third = assert_accounted(&stderr);
    assert!(third["corrupt"] >= 1 && third["spooled"] == 0, "{stderr}");
    assert!(!s[1].exists(), "the empty directory is removed once passed");
    assert_eq!(
        count(&pg, "damaged") + first["corrupt"] + third["corrupt"],
        first["sampled"] + second["sampled"] + third["sampled"],
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(spool);
}

/// A spool whose disk is full when the agent starts cannot be opened; the agent keeps its rows
/// in memory and opens the spool once the disk has room, so a stop with the database still
/// down spools them instead of dropping them.
#[test]
fn a_spool_that_cannot_be_opened_at_start_is_opened_later() {
    if !have_root("a_spool_that_cannot_be_opened_at_start_is_opened_later") {
        return;
    }
    let mut pg = pg();
    let url = pg.url("postgres");
    pg.stop_server();
    let spool = fresh_spool_dir();
    std::fs::create_dir_all(&spool).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&spool)
        .status()
        .unwrap();
    assert!(mounted.success());
    {
        use std::io::Write;
        let mut f = std::fs::File::create(spool.join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        let _ = f.write_all(&[0u8; 64]);
    }
    let args = ["--interval", "0.2", "--node-name", "late-spool", "--no-ebpf", "--shutdown-timeout", "2"];
    let agent = Agent::start(&url, &spool, &args, &[]);
    wait_for("the warning", Duration::from_secs(10), || agent.log().contains("the spool cannot be used now"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(metrics(agent.port)["feature_agent_rows_queued"] >= 3.0);
    std::fs::remove_file(spool.join("filler")).unwrap();
    wait_for("the spool to open", Duration::from_secs(15), || agent.log().contains("the spool can be used now"));
    wait_for("rows in the spool", Duration::from_secs(10), || metrics(agent.port)["feature_agent_rows_spooled"] >= 3.0);
    let (out, _) = agent.stop_within(Duration::from_secs(8));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let c = assert_accounted(&stderr);
    assert_eq!((c["dropped_shutdown"], c["dropped_full"]), (0, 0), "{stderr}");
    assert_eq!(c["spooled"], c["sampled"], "{stderr}");
    let _ = std::process::Command::new("umount").arg("-l").arg(&spool).status();
    let _ = std::fs::remove_dir_all(spool);
}
