//! Several nodes at once: 8 agents, each in its own network namespace (`ip netns`, on this
//! machine only) with its own node name, spool and metrics listener (the same 127.0.0.1:9100 in
//! every namespace), write to one Postgres for several intervals: their own rows each (in the day partitions they share), every
//! row present, and each agent's procfs network features are its own namespace's.
use std::process::{Command, Stdio};

use tests::{agent_bin, fresh_spool_dir, have_root, migrated_database, sql};

const AGENTS: usize = 8;
const ROWS: usize = 5;

/// Network namespaces removed on drop.
struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2 is installed (scripts/setup.sh)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn eight_agents_in_their_own_network_namespaces_write_their_own_rows() {
    if !have_root("eight_agents_in_their_own_network_namespaces_write_their_own_rows") {
        return;
    }
    let db = "multinode";
    let url = migrated_database(db);

    let names: Vec<String> = (0..AGENTS).map(|k| format!("fa-test-{}-{k}", std::process::id())).collect();
    let namespaces = Namespaces(names.clone());
    for ns in &namespaces.0 {
        ip(&["netns", "add", ns]);
        ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    }
    let bin = agent_bin();
    let spools: Vec<_> = (0..AGENTS).map(|_| fresh_spool_dir()).collect();
    let children: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(k, ns)| {
            // The database is reached over its Unix socket, which a network namespace does not hide.
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&bin)
                .args([
                    "run",
                    "--records",
                    &ROWS.to_string(),
                    "--interval",
                    "1",
                    "--node-name",
                    &format!("netns-node-{k}"),
                ])
                .env("DATABASE_URL", &url)
                .env("SPOOL_DIR", &spools[k])
                .env("LISTEN", "127.0.0.1:9100")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (k, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "agent {k}: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(namespaces);

    // The nodes share the day's partition (two across midnight UTC).
    let parts: i64 =
        sql(db, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'node_features'::regclass").parse().unwrap();
    assert!((1..=2).contains(&parts), "day partitions shared by the nodes: {parts}");
    let per_node = sql(db, "SELECT string_agg(node || ':' || n, ',' ORDER BY node) FROM (SELECT node, count(*) AS n FROM node_features GROUP BY node) c");
    let expected: Vec<String> = (0..AGENTS).map(|k| format!("netns-node-{k}:{ROWS}")).collect();
    assert_eq!(per_node, expected.join(","));
    // Each agent described its own namespace: one TCP socket in it (the agent's own metrics
    // listener) and no physical interface. (lis_conn is the eBPF gauge, which counts every
    // namespace's listeners: the README's "Limits" says so.)
    assert_eq!(
        sql(db, "SELECT count(*) FROM node_features WHERE tcp_sock_inuse = 1 AND net_receive = 0"),
        (AGENTS * ROWS).to_string(),
        "{}",
        sql(db, "SELECT node, tcp_sock_inuse, net_receive FROM node_features")
    );
    for s in spools {
        let _ = std::fs::remove_dir_all(s);
    }
}
