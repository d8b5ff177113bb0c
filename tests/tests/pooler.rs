//! A fleet through a pooler: Debian's PgBouncer (1.18) in transaction mode, with a pool far
//! smaller than its clients, between 50 real agent processes and one Postgres. PgBouncer 1.18
//! has no named prepared statements in this mode and lends each transaction whichever server
//! connection is free. Half of the agents are told so (`DB_PREPARED_STATEMENTS=false`: unnamed
//! statements); the other half start with prepared ones and must find out by themselves: a
//! transaction on another backend than their statements' is rolled back before any statement
//! runs by name, and a statement name the server lacks or already has is caught. The
//! one-writer-per-node-name rule (a lease in `node_writers`) holds through it.
//!
//! Agent 0 loads the eBPF programs; the other 49 run with --no-ebpf (their eBPF columns are NULL):
//! fifty processes loading the same programs would measure the kernel, not the pooler.
//! `POOLER_AGENTS` sets the fleet's size (the largest run measured is in BENCHMARKS.md).
use std::time::Duration;

use tests::{
    fresh_spool_dir, have_root,
    process::{assert_accounted, metrics, pg, wait_for, Agent},
};
use throwaway_pg::pgbouncer::{PoolerOptions, ThrowawayPgBouncer};

/// Every agent's rows land exactly once through a 5-connection pool; a second agent with a
/// taken node name is refused through the pooler, and takes over when the first stops.
#[test]
fn fifty_agents_write_every_row_once_through_pgbouncer_in_transaction_mode() {
    if !have_root("fifty_agents_write_every_row_once_through_pgbouncer_in_transaction_mode") {
        return;
    }
    let agents: usize = std::env::var("POOLER_AGENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let rows: u64 = 8;
    let pg = pg();
    pg.create_database("fleet").unwrap();
    let pool_size = 5;
    let bouncer = ThrowawayPgBouncer::start(&pg, PoolerOptions { pool_size, ..PoolerOptions::default() }).unwrap();
    let url = bouncer.url("fleet");

    // Agent 0 runs until stopped; a second agent for its name, from another spool, is refused
    // through the pooler while it writes.
    let spool0 = fresh_spool_dir();
    let first =
        Agent::start(&url, &spool0, &["--interval", "1", "--node-name", "fleet-0", "--shutdown-timeout", "20"], &[]);
    wait_for("agent 0's first row", Duration::from_secs(60), || {
        metrics(first.port)["feature_agent_rows_written_total"] >= 1.0
    });
    let twin_spool = fresh_spool_dir();
    let twin = Agent::start(&url, &twin_spool, &["--interval", "1", "--node-name", "fleet-0", "--no-ebpf"], &[]);
    wait_for("the twin's refusal", Duration::from_secs(30), || {
        metrics(twin.port)["feature_agent_node_name_in_use"] == 1.0
    });
    assert!(twin.log().contains("another agent is writing rows for node \"fleet-0\""), "{}", twin.log());
    assert_eq!(metrics(twin.port)["feature_agent_rows_written_total"], 0.0);

    // The rest of the fleet, each for a fixed number of rows.
    let mut fleet = Vec::new();
    for k in 1..agents {
        let node = format!("fleet-{k}");
        let records = rows.to_string();
        let args =
            ["--interval", "1", "--node-name", &node, "--records", &records, "--shutdown-timeout", "20", "--no-ebpf"];
        let spool = fresh_spool_dir();
        let told: &[(&str, &str)] = if k % 2 == 0 { &[("DB_PREPARED_STATEMENTS", "false")] } else { &[] };
        fleet.push((k, node.clone(), Agent::start(&url, &spool, &args, told), spool));
    }
    assert_eq!(metrics(twin.port)["feature_agent_rows_written_total"], 0.0, "still refused");

    let mut written_total = 0;
    let mut found_out = 0;
    for (k, node, agent, spool) in fleet {
        let out = agent.stop_after_flush();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{node}: {stderr}");
        let c = assert_accounted(&stderr);
        assert_eq!(c["sampled"], rows, "{node}: {stderr}");
        assert_eq!(c["written"], rows, "{node}: every row written, none left or dropped: {stderr}");
        if k % 2 == 0 {
            assert!(!stderr.contains("prepared statement"), "{node}: {stderr}");
        } else if stderr.contains("a transaction pooler is between the agent and the database")
            || stderr.contains("the server does not know this session's prepared statement")
        {
            found_out += 1;
        }
        let n: u64 = pg
            .psql("fleet", &format!("SELECT count(*) FROM node_features WHERE node = '{node}'"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(n, rows, "{node}: each row once in the database");
        written_total += c["written"];
        let _ = std::fs::remove_dir_all(spool);
    }
    // Agent 0 stops: every row it sampled is written once, and its lease is given back.
    let out = first.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let c = assert_accounted(&stderr);
    assert_eq!(c["written"], c["sampled"], "agent 0: {stderr}");
    let n: u64 =
        pg.psql("fleet", "SELECT count(*) FROM node_features WHERE node = 'fleet-0'").unwrap().trim().parse().unwrap();
    assert_eq!(n, c["written"]);
    written_total += c["written"];
    let _ = std::fs::remove_dir_all(spool0);

    assert!(found_out >= agents / 4, "the agents that started with prepared statements found the pooler: {found_out}");
    let all: u64 = pg.psql("fleet", "SELECT count(*) FROM node_features").unwrap().trim().parse().unwrap();
    assert_eq!(all, written_total);
    // (The first row of a run has no eBPF interval before it: NULL there.)
    let ebpf: String =
        pg.psql("fleet", "SELECT count(*) - 1 = count(ebpf_forks) FROM node_features WHERE node = 'fleet-0'").unwrap();
    assert_eq!(ebpf.trim(), "t", "agent 0 counted with eBPF in every row but its first");

    // The pooler never opened more server connections than its pool.
    let pools = bouncer.admin("SHOW POOLS").unwrap();
    let header: Vec<&str> = pools.lines().next().unwrap().split(',').collect();
    let line = pools.lines().find(|l| l.starts_with("fleet,")).unwrap_or_else(|| panic!("{pools}"));
    let field = |name: &str| -> u64 {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("{name} in {pools}"));
        line.split(',').nth(i).unwrap().parse().unwrap()
    };
    let servers = field("sv_active") + field("sv_idle") + field("sv_used") + field("sv_tested") + field("sv_login");
    assert!(servers <= u64::from(pool_size), "{pools}");

    // Agent 0 gave its lease back when it stopped: the twin takes over and writes.
    wait_for("the twin to take over", Duration::from_secs(30), || {
        metrics(twin.port)["feature_agent_node_name_in_use"] == 0.0
            && metrics(twin.port)["feature_agent_rows_written_total"] > 0.0
    });
    let out = twin.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let c = assert_accounted(&stderr);
    assert_eq!(c["spooled"] + c["dropped_shutdown"], 0, "{stderr}");
    let _ = std::fs::remove_dir_all(twin_spool);
}
