//! Pods made by containerd's CRI, as kubelet makes them (tests/src/cri.rs), seen by a running
//! agent writing to a real Postgres: every case a node sees in a day.
//! - a pod with its own network namespace on a bridge: named from its log directory, its execs
//!   exact, the 4 MiB it sends over TCP in its network columns;
//! - a hostNetwork pod: its own execs, network `host` and NULL network columns;
//! - a two-container pod: one row with both containers' execs;
//! - a container restarted in place (attempt 1, a new container ID, the same pod): one row goes
//!   on, its CPU and network deltas never NULL or negative;
//! - a sandbox recreated (attempt 1, a new network namespace): the same;
//! - a pod deleted in the middle of an interval: its row keeps what it did;
//! - a static pod, whose UID is kubelet's 32-digit hash of its manifest.
//!
//! Each workload waits on a FIFO until the test writes to it, so the execs after that moment
//! are exactly the workload's (container start-up is runc's business, not the workload's).
//! Every interval, the node row's execs equal the sum of its pod rows'.
use std::{
    io::Read,
    path::PathBuf,
    time::{Duration, Instant},
};

use tests::{
    cri::{Containerd, PodSpec, Sandbox, GATEWAY},
    exclusive, fresh_spool_dir, have_root, migrated_database,
    process::Agent,
    sql,
};

const DB: &str = "cri_pods";
const NODE: &str = "cri-node";

/// A workload script: run `prep` (shell words), make the FIFO, wait for the test, run `execs`
/// /bin/true, then `more`, mark itself done, and wait again without exec'ing anything. (`read`
/// and `echo` are shell builtins; busybox runs some applets, dd among them, in a forked shell
/// without an exec, so what must be counted is exec'd by path.)
fn script(execs: u32, prep: &str, more: &str) -> String {
    format!(
        "{prep} mkfifo /tmp/go; read x < /tmp/go; i=0; while [ $i -lt {execs} ]; do /bin/true; i=$((i+1)); done; \
         {more} echo > /tmp/done; read y < /tmp/go"
    )
}

/// The single process of a container (its shell), from its cgroup.
fn shell_of(cri: &Containerd, pod: &Sandbox, container: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = cri.pids(pod, container).first() {
            let root = PathBuf::from(format!("/proc/{pid}/root/tmp/go"));
            if root.exists() {
                return *pid;
            }
        }
        assert!(Instant::now() < deadline, "{container} did not make its FIFO within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The database's clock now (rows are stamped with the same host clock).
fn now() -> String {
    sql(DB, "SELECT now()")
}

/// Lets the workload of `container` go once a row of its pod has closed the interval its
/// start-up was in, waits until it is done; returns when it was let go.
fn trigger(cri: &Containerd, pod: &Sandbox, container: &str) -> String {
    let pid = shell_of(cri, pod, container);
    let ready = now();
    let q = format!("SELECT count(*) FROM pod_features WHERE owner = '{}' AND ts > '{ready}'", pod.spec.uid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(DB, &q) == "0" {
        assert!(Instant::now() < deadline, "no row of {} within 30 s", pod.spec.uid);
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = now();
    std::fs::write(format!("/proc/{pid}/root/tmp/go"), "go\n").unwrap();
    let done = PathBuf::from(format!("/proc/{pid}/root/tmp/done"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.exists() {
        assert!(Instant::now() < deadline, "{container} did not finish its workload within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    at
}

/// Waits until the agent has written two intervals after now (the last events are in a row).
fn two_more_rows() {
    let since = now();
    let q = format!("SELECT count(*) FROM node_features WHERE node = '{NODE}' AND ts > '{since}'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(DB, &q).parse::<i64>().unwrap() < 2 {
        assert!(Instant::now() < deadline, "no rows within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Execs in `uid`'s rows stamped after `since`.
fn execs_since(uid: &str, since: &str) -> i64 {
    sql(DB, &format!("SELECT coalesce(sum(ebpf_execs), 0) FROM pod_features WHERE owner = '{uid}' AND ts > '{since}'"))
        .parse()
        .unwrap()
}

/// A pod's rows, for a failure's message.
fn rows_of(uid: &str) -> String {
    sql(DB, &format!("SELECT ts, kind, namespace, pod, network, ebpf_forks, ebpf_execs, net_transmit FROM pod_features WHERE owner = '{uid}' ORDER BY ts"))
}

fn spec(namespace: &str, name: &str, uid: &str, attempt: u32, host_network: bool) -> PodSpec {
    PodSpec { namespace: namespace.into(), name: name.into(), uid: uid.into(), attempt, host_network }
}

#[test]
fn pods_made_through_containerds_cri_are_named_and_counted_exactly() {
    if !have_root("cri_pods") {
        return;
    }
    let _g = exclusive();
    let url = migrated_database(DB);
    let cri = Containerd::start();
    let spool = fresh_spool_dir();
    let logs = cri.logs.to_str().unwrap().to_owned();
    let agent =
        Agent::start(&url, &spool, &["--pod-rows", "--interval", "1"], &[("NODE_NAME", NODE), ("POD_LOGS_DIR", &logs)]);
    // Its first sample is the per-cgroup baseline: pods made after its first pod rows count
    // from their first event.
    agent.wait_for("the first pod rows", Duration::from_secs(30), || {
        sql(DB, &format!("SELECT count(*) FROM pod_features WHERE node = '{NODE}'")) != "0"
    });

    // A pod with its own network: 25 execs, then 4 MiB over TCP to the host (nc: one more).
    const WEB: &str = "0b7c4b1e-1a2b-4c3d-8e4f-000000000001";
    let web = cri.run_pod(&spec("shop", "web-0", WEB, 0, false));
    assert!(web.ip.is_some(), "the bridge gave the pod an address");
    let listener = std::net::TcpListener::bind((GATEWAY, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut n = 0u64;
        let mut buf = [0u8; 65536];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let payload = "dd if=/dev/zero of=/tmp/payload bs=65536 count=64 2>/dev/null;";
    let send = format!("nc {GATEWAY} {port} < /tmp/payload;");
    let main = cri.start_container(&web, "main", 0, &script(25, payload, &send));
    // A hostNetwork pod and a two-container pod.
    const AGENT_UID: &str = "0b7c4b1e-1a2b-4c3d-8e4f-000000000002";
    let host = cri.run_pod(&spec("kube-system", "node-agent-7xk2p", AGENT_UID, 0, true));
    let host_main = cri.start_container(&host, "agent", 0, &script(10, "", ""));
    const DB_UID: &str = "0b7c4b1e-1a2b-4c3d-8e4f-000000000003";
    let dbpod = cri.run_pod(&spec("shop", "db-0", DB_UID, 0, false));
    let db_main = cri.start_container(&dbpod, "db", 0, &script(7, "", ""));
    let db_side = cri.start_container(&dbpod, "sidecar", 0, &script(5, "", ""));
    // A static pod: kubelet's UID for it is the hash of its manifest.
    const STATIC_UID: &str = "5f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let static_pod = cri.run_pod(&spec("kube-system", "kube-apiserver-cri-node", STATIC_UID, 0, true));
    let static_main = cri.start_container(&static_pod, "kube-apiserver", 0, &script(3, "", ""));

    let t_web = trigger(&cri, &web, &main);
    let sent = received.join().unwrap();
    assert_eq!(sent, 4 << 20, "the host received the pod's 4 MiB");
    let t_host = trigger(&cri, &host, &host_main);
    let t_db = trigger(&cri, &dbpod, &db_main);
    trigger(&cri, &dbpod, &db_side);
    let t_static = trigger(&cri, &static_pod, &static_main);
    two_more_rows();
    assert_eq!(execs_since(WEB, &t_web), 26, "25 /bin/true and nc, after {t_web}:\n{}", rows_of(WEB));
    assert_eq!(execs_since(AGENT_UID, &t_host), 10);
    assert_eq!(execs_since(DB_UID, &t_db), 12, "both containers' execs in the pod's row");
    assert_eq!(execs_since(STATIC_UID, &t_static), 3);
    let named = |uid: &str| {
        sql(DB, &format!("SELECT DISTINCT namespace || '/' || pod || '|' || workload || '|' || coalesce(network, 'NULL') FROM pod_features WHERE owner = '{uid}' AND namespace IS NOT NULL"))
    };
    assert_eq!(named(WEB), "shop/web-0|shop/web|own");
    assert_eq!(named(AGENT_UID), "kube-system/node-agent-7xk2p|kube-system/node-agent|host");
    assert_eq!(named(DB_UID), "shop/db-0|shop/db|own");
    assert_eq!(named(STATIC_UID), "kube-system/kube-apiserver-cri-node|kube-system/kube-apiserver|host");
    // The web pod's network columns show what it sent, within its packets' headers (TCP, IP and
    // Ethernet: under 10 % at this MTU), and the hostNetwork pod has none of its own.
    let transmit: i64 = sql(
        DB,
        &format!("SELECT max(net_transmit) - min(net_transmit) FROM pod_features WHERE owner = '{WEB}' AND ts >= (SELECT max(ts) FROM pod_features WHERE owner = '{WEB}' AND ts <= '{t_web}')"),
    )
    .parse()
    .unwrap();
    assert!((4 << 20..=(4 << 20) * 11 / 10).contains(&transmit), "the web pod's row says it sent {transmit} bytes");
    assert_eq!(
        sql(DB, &format!("SELECT count(*) FROM pod_features WHERE owner = '{AGENT_UID}' AND (net_transmit IS NOT NULL OR net_receive IS NOT NULL)")),
        "0"
    );

    // Restarted in place: attempt 1, a new container ID, the same pod.
    cri.remove_container(&main, 0);
    let main = cri.start_container(&web, "main", 1, &script(9, "", ""));
    let t_restart = trigger(&cri, &web, &main);
    // The sandbox recreated: attempt 1, a new network namespace, the same pod UID.
    let packets_before: i64 =
        sql(DB, &format!("SELECT max(transmit_packets) FROM pod_features WHERE owner = '{DB_UID}'")).parse().unwrap();
    cri.remove_sandbox(&dbpod);
    let dbpod = cri.run_pod(&spec("shop", "db-0", DB_UID, 1, false));
    let db_main = cri.start_container(
        &dbpod,
        "db",
        0,
        &script(4, "", "/bin/wget -q -T 1 -O /dev/null http://10.207.0.1:9/ 2>/dev/null;"),
    );
    let t_recreated = trigger(&cri, &dbpod, &db_main);
    // A pod deleted in the middle of an interval, right after its workload.
    const JOB_UID: &str = "0b7c4b1e-1a2b-4c3d-8e4f-000000000004";
    let job = cri.run_pod(&spec("ops", "backup-28417920-x7bqz", JOB_UID, 0, false));
    let job_main = cri.start_container(&job, "backup", 0, &script(15, "", ""));
    let t_job = trigger(&cri, &job, &job_main);
    cri.remove_pod(&job);
    two_more_rows();
    two_more_rows();
    assert_eq!(execs_since(WEB, &t_restart), 9);
    assert_eq!(execs_since(DB_UID, &t_recreated), 5, "4 /bin/true and wget");
    assert_eq!(execs_since(JOB_UID, &t_job), 15, "a deleted pod's row keeps its last interval");
    // One row per interval for each pod. Across the restart in place (the sandbox and its
    // network stay) every CPU and network delta after the first row is there and not negative.
    // Across the recreation the CPU deltas are (the pod's cgroup stays); the network has no
    // reading while no sandbox runs, and its counters go on from the old namespace's: they never
    // go back, and the new namespace's packets are added.
    let deltas = |uid: &str, columns: &[&str]| {
        let bad: Vec<String> = columns.iter().map(|c| format!("{c}_delta IS NULL OR {c}_delta < 0")).collect();
        sql(
            DB,
            &format!(
                "SELECT count(*) FROM (SELECT *, row_number() OVER (ORDER BY ts) AS n FROM pod_feature_deltas WHERE owner = '{uid}') d \
                 WHERE n > 1 AND NOT after_gap AND ({})",
                bad.join(" OR ")
            ),
        )
    };
    assert_eq!(deltas(WEB, &["cpu_usage_usec", "net_receive", "net_transmit", "transmit_packets"]), "0");
    assert_eq!(deltas(DB_UID, &["cpu_usage_usec"]), "0");
    for column in ["net_receive", "net_transmit", "transmit_packets"] {
        let back = sql(
            DB,
            &format!(
                "SELECT count(*) FROM (SELECT {column} AS v, lag({column}) OVER (ORDER BY ts) AS p FROM pod_features \
                 WHERE owner = '{DB_UID}' AND {column} IS NOT NULL) t WHERE v < p"
            ),
        );
        assert_eq!(back, "0", "{column} of the recreated pod went back");
    }
    let packets_after: i64 =
        sql(DB, &format!("SELECT max(transmit_packets) FROM pod_features WHERE owner = '{DB_UID}'")).parse().unwrap();
    assert!(
        packets_after > packets_before,
        "the new namespace's packets are added ({packets_before} -> {packets_after})"
    );
    for uid in [WEB, DB_UID] {
        assert_eq!(
            sql(DB, &format!("SELECT count(*) - count(DISTINCT ts) FROM pod_features WHERE owner = '{uid}'")),
            "0"
        );
    }
    // The node row's execs are the sum of its pod rows', every interval.
    let off = sql(
        DB,
        &format!(
            "SELECT count(*) FROM node_features n WHERE n.node = '{NODE}' AND n.ebpf_execs IS NOT NULL AND n.ebpf_execs <> \
             (SELECT sum(p.ebpf_execs) FROM pod_features p WHERE p.node = n.node AND p.ts = n.ts)"
        ),
    );
    assert_eq!(off, "0", "an interval whose node execs are not the sum of its pods'");
    let out = agent.stop();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
