//! A network path that black-holes packets (a firewall change, a dead NAT entry), against the
//! real agent: the database runs in a network namespace of its own, reached over a veth pair,
//! and nftables in that namespace drops every packet to and from the agent's address, both
//! ways. Unlike a SIGSTOPped server, whose kernel still answers, nothing comes back at all.
//!
//! Twice: while the connection is idle, and mid-batch (the batch's transaction holds a lock
//! wait on the server when the path goes). Each time the agent notices within its deadline,
//! spools, reports it as for a hung server (not ready, the oldest unwritten row ageing), and
//! writes everything once when the path returns; the session it left behind is ended, by the
//! server itself (its transaction's idle timeout) or by the agent's next session, as
//! pg_stat_activity shows.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    fresh_spool_dir, have_root,
    netns::NetNs,
    process::{assert_accounted, http_get, metrics, Agent},
};
use throwaway_pg::{Options, ThrowawayPostgres};

const DB_IP: &str = "10.205.0.2";
const AGENT_IP: &str = "10.205.0.1";

/// Drops every packet between the agent's address and the database's, both ways.
fn black_hole(ns: &NetNs) {
    let rules = format!(
        "table inet blackhole {{\n chain in {{ type filter hook input priority 0; ip saddr {AGENT_IP} drop; }}\n \
         chain out {{ type filter hook output priority 0; ip daddr {AGENT_IP} drop; }}\n}}\n"
    );
    let mut nft = ns.command(&["nft", "-f", "-"]).stdin(Stdio::piped()).spawn().expect("nft runs (scripts/setup.sh)");
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    drop(nft.stdin.take());
    assert!(nft.wait().unwrap().success(), "nft refused the rules");
}

fn restore(ns: &NetNs) {
    ns.run(&["nft", "delete", "table", "inet", "blackhole"]);
}

/// The agent's sessions on the server, by state.
fn agent_sessions(pg: &ThrowawayPostgres) -> Vec<String> {
    pg.psql("postgres", "SELECT state FROM pg_stat_activity WHERE application_name LIKE 'feature-agent/%'")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rows(pg: &ThrowawayPostgres) -> u64 {
    pg.psql("postgres", "SELECT count(*) FROM node_features WHERE node = 'blackhole'").unwrap().trim().parse().unwrap()
}

/// Waits for the agent to notice, within its 5 s deadline (plus the interval, and a second of
/// slack for the probe), and checks what it reports meanwhile.
fn notices(agent: &Agent, since: Instant) {
    agent.wait_for("readiness to fail", Duration::from_secs(15), || {
        http_get(agent.port, "/readyz").is_some_and(|(status, _)| status == 503)
    });
    let took = since.elapsed();
    assert!(took <= Duration::from_secs(8), "noticed only after {took:?}:\n{}", agent.log());
    std::thread::sleep(Duration::from_secs(4));
    let m = metrics(agent.port);
    assert_eq!(m["feature_agent_database_up"], 0.0);
    assert!(m["feature_agent_rows_spooled"] >= 3.0, "rows sampled meanwhile are spooled: {m:?}");
    assert!(m["feature_agent_oldest_unwritten_row_age_seconds"] >= 5.0, "{m:?}");
    assert_eq!(http_get(agent.port, "/healthz").unwrap().0, 200, "sampling goes on");
}

fn recovers(agent: &Agent, pg: &ThrowawayPostgres) {
    let back = Instant::now();
    agent.wait_for("the spool to drain after the path returns", Duration::from_secs(30), || {
        let m = metrics(agent.port);
        m["feature_agent_rows_spooled"] == 0.0 && m["feature_agent_database_up"] == 1.0
    });
    assert!(back.elapsed() < Duration::from_secs(10), "rows flowed only {:?} after the path returned", back.elapsed());
    let sessions = agent_sessions(pg);
    assert_eq!(sessions.len(), 1, "only the new session is left: {sessions:?}");
}

#[test]
fn a_black_holed_database_is_noticed_within_the_deadline_and_loses_no_row() {
    if !have_root("a_black_holed_database_is_noticed_within_the_deadline_and_loses_no_row") {
        return;
    }
    let ns = NetNs::new("bhdb");
    ns.veth_to(None, DB_IP, AGENT_IP);
    let options = Options { netns: Some(ns.name.clone()), listen: Some(DB_IP.into()), ..Options::default() };
    let pg = ThrowawayPostgres::start_opts(options).unwrap();
    let spool = fresh_spool_dir();
    let args = ["--interval", "1", "--node-name", "blackhole", "--no-ebpf", "--shutdown-timeout", "5"];
    let agent = Agent::start(&pg.tcp_url("postgres"), &spool, &args, &[]);
    agent.wait_for("3 rows", Duration::from_secs(60), || rows(&pg) >= 3);

    // While idle: the next write goes into the hole. The server still holds the idle session
    // (its kernel never heard of the agent's trouble); the agent's next session ends it.
    black_hole(&ns);
    let since = Instant::now();
    notices(&agent, since);
    assert_eq!(agent_sessions(&pg).len(), 1, "the abandoned session is still alive on the server");
    restore(&ns);
    recovers(&agent, &pg);
    assert!(metrics(agent.port)["feature_agent_abandoned_sessions_ended_total"] >= 1.0, "{}", agent.log());

    // Mid-batch: a lock holds the batch's lease renewal on the server; the path goes while it
    // waits; the lock is released, the renewal completes into the hole, and the server ends the
    // transaction itself (idle in transaction for the deadline) while the path is still gone.
    let mut locker = Command::new(pg_psql())
        .args(["-X", "-q", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", "postgres", "-c"])
        .arg("BEGIN; LOCK TABLE node_writers IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    agent.wait_for("a batch waiting on the lock", Duration::from_secs(10), || {
        pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'feature-agent/%' AND wait_event_type = 'Lock'")
            .is_ok_and(|n| n.trim() == "1")
    });
    black_hole(&ns);
    let since = Instant::now();
    assert!(locker.wait().unwrap().success());
    notices(&agent, since);
    agent.wait_for("the server to end the abandoned transaction", Duration::from_secs(20), || {
        agent_sessions(&pg).is_empty()
    });
    restore(&ns);
    recovers(&agent, &pg);

    let out = agent.stop();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let c = assert_accounted(&stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(c["spooled"] + c["dropped_shutdown"] + c["dropped_full"] + c["rejected"], 0, "{stderr}");
    assert_eq!(rows(&pg), c["sampled"], "every sampled row once: {stderr}");
    let _ = std::fs::remove_dir_all(spool);
}

fn pg_psql() -> std::path::PathBuf {
    throwaway_pg::find_bin_dir().unwrap().join("psql")
}
