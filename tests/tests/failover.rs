//! A primary that fails over to its streaming replica, against the real agent: the agent has a
//! multi-host URL (`host=primary,replica`, `target_session_attrs=read-write`); the primary
//! crashes (immediate shutdown), the replica is promoted, the old primary comes back read-only,
//! and later the new primary turns read-only too while the old one becomes writable again.
//! Every sampled row lands once, on one server or the other, and none is rejected: a read-only
//! server's "read-only transaction" error is a reason to reconnect, not a bad row.
//!
//! Replication is synchronous here (`synchronous_commit = remote_apply`), so every row the
//! primary acknowledged is on the replica when it is promoted; what asynchronous replication
//! can lose, and how it was measured, is in docs/durability.md.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tests::{
    fresh_spool_dir, have_root,
    process::{assert_accounted, metrics, wait_for, Agent},
};
use throwaway_pg::{Options, ThrowawayPostgres};

fn rows(pg: &ThrowawayPostgres, filter: &str) -> u64 {
    let out = pg
        .psql("fo", &format!("SELECT count(*) FROM node_features WHERE node = 'failover' {filter}"))
        .unwrap_or_else(|e| panic!("counting rows: {e}"));
    out.trim().parse().unwrap()
}

fn rows_if_up(pg: &ThrowawayPostgres) -> Option<u64> {
    pg.psql("fo", "SELECT count(*) FROM node_features WHERE node = 'failover'").ok()?.trim().parse().ok()
}

fn set_read_only(pg: &ThrowawayPostgres, on: bool) {
    let value = if on { "on" } else { "off" };
    pg.psql("postgres", &format!("ALTER SYSTEM SET default_transaction_read_only = {value}")).unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();
}

#[test]
fn a_failover_and_a_read_only_primary_lose_no_row_and_reject_none() {
    if !have_root("a_failover_and_a_read_only_primary_lose_no_row_and_reject_none") {
        return;
    }
    let sync = Options { settings: vec!["synchronous_commit=remote_apply".into()], ..Options::default() };
    let mut primary = ThrowawayPostgres::start_opts(sync.clone()).unwrap();
    primary.create_database("fo").unwrap();
    let mut replica = ThrowawayPostgres::replica_of(&primary, sync).unwrap();
    primary.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
    primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    wait_for("the replica to stream synchronously", Duration::from_secs(30), || {
        primary.psql("postgres", "SELECT sync_state FROM pg_stat_replication").is_ok_and(|s| s.trim() == "sync")
    });

    let url = format!(
        "host={},{} port={},{} user=postgres dbname=fo target_session_attrs=read-write",
        primary.listen_address(),
        replica.listen_address(),
        primary.port(),
        replica.port()
    );
    let spool = fresh_spool_dir();
    let args = ["--interval", "1", "--node-name", "failover", "--no-ebpf", "--shutdown-timeout", "10"];
    let agent = Agent::start(&url, &spool, &args, &[]);
    wait_for("rows on the primary", Duration::from_secs(60), || rows_if_up(&primary).is_some_and(|n| n >= 4));

    // The primary crashes; nothing is writable until the promotion.
    let crashed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    primary.crash();
    wait_for("readiness to fail", Duration::from_secs(20), || metrics(agent.port)["feature_agent_database_up"] == 0.0);
    std::thread::sleep(Duration::from_secs(3));
    assert!(metrics(agent.port)["feature_agent_rows_spooled"] >= 2.0, "rows wait in the spool");
    replica.promote().unwrap();
    agent.wait_for("the spool to drain into the promoted replica", Duration::from_secs(40), || {
        let m = metrics(agent.port);
        m["feature_agent_database_up"] == 1.0 && m["feature_agent_rows_spooled"] == 0.0
    });

    // The old primary comes back read-only: left alone, the agent stays on the new primary.
    primary.start_again(&["default_transaction_read_only=on"]).unwrap();
    let on_replica = rows(&replica, "");
    std::thread::sleep(Duration::from_secs(3));
    assert!(rows(&replica, "") >= on_replica + 2, "rows keep flowing to the new primary");
    assert_eq!(rows(&primary, &format!("AND ts > to_timestamp({crashed_at})")), 0);

    // The new primary turns read-only (fenced), and the old one writable again (started
    // without the command-line setting): the agent's writes fail with "read-only transaction",
    // it reconnects, and the multi-host URL finds the writable one.
    primary.stop_server();
    primary.start_again(&[]).unwrap();
    set_read_only(&primary, true);
    // It has no standby now: its commits must not wait for one.
    primary.psql("postgres", "ALTER SYSTEM RESET synchronous_standby_names").unwrap();
    primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    set_read_only(&replica, true);
    agent.wait_for("the read-only error to send the agent away", Duration::from_secs(20), || {
        metrics(agent.port)["feature_agent_database_up"] == 0.0
    });
    std::thread::sleep(Duration::from_secs(2));
    set_read_only(&primary, false);
    agent.wait_for("rows on the old primary again", Duration::from_secs(40), || {
        rows(&primary, &format!("AND ts > to_timestamp({crashed_at})")) >= 2
            && metrics(agent.port)["feature_agent_rows_spooled"] == 0.0
    });

    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let c = assert_accounted(&stderr);
    assert_eq!(c["rejected"], 0, "a read-only server rejects no row: {stderr}");
    assert_eq!(c["spooled"] + c["dropped_shutdown"] + c["dropped_full"], 0, "{stderr}");
    assert!(stderr.contains("read-only transaction"), "the reason is logged: {stderr}");
    // Every row once: the promoted replica holds everything up to its fencing, the old primary
    // everything after (its rows from before the crash are older than `crashed_at`).
    let after = rows(&primary, &format!("AND ts > to_timestamp({crashed_at})"));
    assert_eq!(rows(&replica, "") + after, c["sampled"], "{stderr}");
    assert_eq!(c["written"], c["sampled"], "{stderr}");
    let _ = std::fs::remove_dir_all(spool);
}
