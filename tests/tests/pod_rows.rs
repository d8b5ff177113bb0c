//! `feature-agent run --pod-rows` end to end, with the real eBPF programs and a real Postgres:
//! kubelet-style cgroups made on this host (both drivers' naming, two QoS classes), matching
//! /var/log/pods directories (a hostile namespace and name among them), known workloads run
//! inside them (one pod with two containers). Checked in SQL: each pod's rows add up to exactly its workload's forks, execs,
//! exits and failed connects; a pod whose cgroup is created, used and removed within one
//! interval still has its row with exact counts; and at every interval, for every event
//! column, the node row equals the sum of that interval's pod rows.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_common::Event;
use feature_schema::pods::event_columns;
use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::RowAccessor,
};
use tests::{
    agent_bin,
    cgroup::{in_cgroup, TestCgroup},
    exclusive, have_root, migrated_database, run_lab, sql,
};

const UID_A: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const UID_B: &str = "0a1b2c3d-2222-4222-8333-944455566677";
const UID_C: &str = "0a1b2c3d-3333-4222-8333-944455566677";

#[test]
fn pod_rows_count_each_pods_workload_exactly_and_add_up_to_the_node_row() {
    if !have_root("pod_rows_end_to_end") {
        return;
    }
    let _g = exclusive();
    let db = "pod_rows_e2e";
    let url = migrated_database(db);
    let logs = std::env::temp_dir().join(format!("feature-agent-pod-logs-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    for (ns, pod, uid) in
        [("shop", "web-1", UID_A), ("it's \"ns\"", "pöd-名前", UID_B), ("batch", "short-lived", UID_C)]
    {
        std::fs::create_dir_all(logs.join(format!("{ns}_{pod}_{uid}")).join("main")).unwrap();
    }
    let a = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        UID_A.replace('-', "_"),
        "a".repeat(64)
    );
    let b = format!("kubepods/besteffort/pod{UID_B}/{}", "b".repeat(64));
    // Pod A has a second container.
    let a2 = a.replace(&"a".repeat(64), &"f".repeat(64));
    let cg = TestCgroup::new("e2e", &[&a, &b, &a2]);

    let interval = 2;
    let agent = Command::new(agent_bin())
        .args(["run", "--pod-rows", "--interval", &interval.to_string(), "--listen", "off", "--spool-dir", "off"])
        .env("DATABASE_URL", &url)
        .env("NODE_NAME", "pod-node")
        .env("POD_LOGS_DIR", &logs)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first pod rows come with the second sample (the first sets the baseline).
    tests::process::wait_for("the first pod rows", Duration::from_secs(30), || {
        sql(db, "SELECT count(*) > 0 FROM pod_features") == "t"
    });

    // Pod A: 100 forks of /bin/true; pod B: 7. Pod C: created, 100 forks and 20 refused connects
    // from Python, removed, all well within one interval.
    let loop_of = |n: u32| format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done");
    assert!(in_cgroup("/bin/sh", &["-c", &loop_of(100)], &cg.leaves[0]).status().unwrap().success());
    assert!(in_cgroup("/bin/sh", &["-c", &loop_of(7)], &cg.leaves[1]).status().unwrap().success());
    assert!(in_cgroup("/bin/sh", &["-c", &loop_of(5)], &cg.leaves[2]).status().unwrap().success());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = cg.top.join(format!("kubepods/burstable/pod{UID_C}"));
    let started = Instant::now();
    std::fs::create_dir_all(&c).unwrap();
    let code = format!(
        "import os,socket\nfor _ in range(100):\n    p=os.fork()\n    if p==0: os._exit(0)\n    os.waitpid(p,0)\n\
         for _ in range(20):\n    s=socket.socket()\n    try:\n        s.connect(('127.0.0.1',{closed}))\n    except ConnectionRefusedError:\n        pass\n    s.close()\n"
    );
    assert!(in_cgroup("/usr/bin/python3", &["-c", &code], &c).status().unwrap().success());
    std::fs::remove_dir(&c).unwrap();
    let lived = started.elapsed();
    assert!(lived < Duration::from_secs(interval), "pod C lived {lived:?}, longer than one interval");

    // Two more intervals, then stop the agent (SIGTERM: it flushes and exits).
    let rows_now: i64 = sql(db, "SELECT count(DISTINCT ts) FROM pod_features").parse().unwrap();
    tests::process::wait_for("two more intervals", Duration::from_secs(30), || {
        sql(db, "SELECT count(DISTINCT ts) FROM pod_features").parse::<i64>().unwrap() >= rows_now + 2
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("per-pod rows on"), "{log}");

    let total = |uid: &str, col: &str| {
        sql(db, &format!("SELECT coalesce(sum({col}), -1) FROM pod_features WHERE owner = '{uid}'"))
    };
    // Pod A: its two containers' workloads together.
    assert_eq!(
        [total(UID_A, "ebpf_forks"), total(UID_A, "ebpf_execs"), total(UID_A, "ebpf_exits")],
        ["105", "107", "107"]
    );
    assert_eq!(sql(db, &format!("SELECT max(cgroups) FROM pod_features WHERE owner = '{UID_A}'")), "3");
    assert_eq!([total(UID_B, "ebpf_forks"), total(UID_B, "ebpf_execs"), total(UID_B, "ebpf_exits")], ["7", "8", "8"]);
    // Python: its own exec after joining, 100 forked children exiting, and itself.
    assert_eq!(
        [
            total(UID_C, "ebpf_forks"),
            total(UID_C, "ebpf_execs"),
            total(UID_C, "ebpf_exits"),
            total(UID_C, "tcp_conn_failed"),
            total(UID_C, "tcp_rst_recv")
        ],
        ["100", "1", "101", "20", "20"]
    );
    // Names from the log directories, QoS from the paths; the short-lived pod's row exists
    // although its cgroup was gone when the row was taken.
    assert_eq!(
        sql(db, &format!("SELECT DISTINCT namespace || '|' || pod || '|' || qos || '|' || kind FROM pod_features WHERE owner = '{UID_B}'")),
        "it's \"ns\"|pöd-名前|BestEffort|pod"
    );
    assert_eq!(
        sql(db, &format!("SELECT DISTINCT pod || '|' || qos FROM pod_features WHERE owner = '{UID_A}'")),
        "web-1|Burstable"
    );
    assert_eq!(
        sql(
            db,
            &format!("SELECT DISTINCT pod || '|' || qos FROM pod_features WHERE owner = '{UID_C}' AND ebpf_forks > 0")
        ),
        "short-lived|Burstable"
    );
    // Resource columns: pod A's cgroup has cpu.stat on this host (NULL where the file is absent).
    assert_eq!(
        sql(db, &format!("SELECT bool_and(cpu_usage_usec IS NOT NULL) FROM pod_features WHERE owner = '{UID_A}'")),
        "t"
    );

    // Every interval: node row == sum of pod rows, for every event column the node counts.
    for (e, col) in Event::ALL.iter().zip(event_columns()) {
        let mismatches = sql(
            db,
            &format!(
                "SELECT count(*) FROM node_features n
                 JOIN (SELECT ts, sum({col}) AS s, count({col}) AS k FROM pod_features GROUP BY ts) p USING (ts)
                 WHERE n.node = 'pod-node' AND n.{col} IS DISTINCT FROM p.s AND NOT (n.{col} IS NULL AND p.k = 0)"
            ),
        );
        assert_eq!(mismatches, "0", "{}: node rows differ from the sum of pod rows", e.name());
    }
    let joined =
        sql(db, "SELECT count(*) FROM node_features n JOIN (SELECT DISTINCT ts FROM pod_features) p USING (ts)");
    assert!(joined.parse::<i64>().unwrap() >= 3, "{joined}");

    research_tools_on_pod_rows(db, &url);
    std::fs::remove_dir_all(&logs).unwrap();
}

/// label --pod, the pod z-scores, export --pods, plot --pod and prune on the rows just written.
fn research_tools_on_pod_rows(db: &str, url: &str) {
    let env = [("DATABASE_URL", url)];
    // Pod A's burst: label it as an attack on A's rows only, by NAMESPACE/NAME.
    let burst = sql(db, &format!("SELECT ts FROM pod_features WHERE owner = '{UID_A}' AND ebpf_forks > 50"));
    assert!(!burst.is_empty() && !burst.contains('\n'), "one interval holds A's burst: {burst:?}");
    let out = run_lab(
        &["label", "--pod", "shop/web-1", "--from", &burst, "--to", &burst, "--attack-type", "fork-bomb"],
        &env,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("1 pod rows labelled attack"), "{said}");
    assert_eq!(sql(db, "SELECT count(*) FROM node_features WHERE attack = 1"), "0", "node rows untouched");
    let out =
        run_lab(&["label", "--pod", "nobody/nothing", "--from", &burst, "--to", &burst], &env, Duration::from_secs(60));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no rows of that pod"));
    // It stands out in A's own z-scores, not in its neighbour B's at the same time.
    let z = |uid: &str| {
        sql(
            db,
            &format!(
                "SELECT abs(z) FROM pod_feature_zscores
                 WHERE owner = '{uid}' AND ts = '{burst}' AND feature = 'ebpf_forks'"
            ),
        )
    };
    // Each pod has exactly one row at that time, and a z-score on it (not NULL, not missing).
    let parse = |uid: &str| z(uid).parse::<f64>().unwrap_or_else(|_| panic!("pod {uid}: no z at {burst}"));
    let (za, zb) = (parse(UID_A), parse(UID_B));
    assert!(za > 4.0 && zb < 2.0, "z of ebpf_forks at the burst: pod A {za}, pod B {zb}");

    // Export: every pod row, integers as integers, names as they are.
    let dir = std::env::temp_dir().join(format!("feature-agent-pod-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("pods.csv");
    let out = run_lab(
        &["export", "--pods", "--format", "csv", "--output", csv.to_str().unwrap()],
        &env,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = tests::csv_records(&std::fs::read_to_string(&csv).unwrap());
    assert_eq!(
        records[0][..13],
        [
            "node",
            "ts",
            "kind",
            "owner",
            "namespace",
            "pod",
            "qos",
            "network",
            "workload",
            "anomaly_score",
            "anomalous_features",
            "attack",
            "attack_type"
        ]
    );
    assert_eq!((records.len() - 1).to_string(), sql(db, "SELECT count(*) FROM pod_features"));
    let forks = records[0].iter().position(|c| c == "ebpf_forks").unwrap();
    let a_forks: i64 =
        records.iter().skip(1).filter(|r| r[3] == UID_A).filter_map(|r| r[forks].parse::<i64>().ok()).sum();
    assert_eq!(a_forks, 105);
    assert!(records.iter().any(|r| r[4] == "it's \"ns\"" && r[5] == "pöd-名前"));
    assert!(records.iter().any(|r| r[3] == UID_A && r[11] == "1" && r[12] == "fork-bomb"));
    // Pod A (web-1) is an instance of the workload shop/web, on every row.
    assert!(records.iter().skip(1).filter(|r| r[3] == UID_A).all(|r| r[8] == "shop/web"));
    let parquet = dir.join("pods.parquet");
    let out = run_lab(
        &["export", "--pods", "--format", "parquet", "--output", parquet.to_str().unwrap()],
        &env,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{} rows", records.len() - 1)));
    // Read back: the same rows, the eBPF columns as INT64 (pod A's forks add up as in the CSV).
    let reader = SerializedFileReader::new(std::fs::File::open(&parquet).unwrap()).unwrap();
    let mut parquet_rows = 0;
    let mut parquet_a_forks = 0i64;
    for row in reader.get_row_iter(None).unwrap() {
        let row = row.unwrap();
        parquet_rows += 1;
        if row.get_string(3).unwrap() == UID_A && !row.is_null(forks).unwrap() {
            parquet_a_forks += row.get_long(forks).unwrap();
        }
    }
    assert_eq!((parquet_rows, parquet_a_forks), (records.len() - 1, 105));

    // A scenario run of the node in another pod (recorded as `feature-lab scenario` records
    // one), over the last rows: pod A's plot marks it, named, as a run elsewhere.
    sql(
        db,
        "INSERT INTO scenario_runs (node, name, started_at, ended_at, interval_s, details)
         SELECT 'pod-node', 'port-scan', max(ts) - interval '1 s', max(ts), 0.5, '{\"pod\": \"shop/other-0\"}'
         FROM pod_features WHERE node = 'pod-node'",
    );
    // Plot of pod A: its labelled window shaded and named.
    let png = dir.join("pod.png");
    let out = run_lab(
        &["plot", "--node", "pod-node", "--pod", UID_A, "--output", png.to_str().unwrap()],
        &env,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["shaded"][0]["attack_type"], "fork-bomb", "{summary}");
    assert_eq!(summary["scenario_windows"][0]["attack_type"], "port-scan", "{summary}");
    // Default panels without a value for this pod are left out (and named), never drawn empty:
    // what is left out is exactly what the database holds no value of.
    for f in summary["left_out"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        let n = sql(db, &format!("SELECT count({f}) FROM pod_features WHERE owner = '{UID_A}'"));
        assert_eq!(n, "0", "{f} was left out but has values: {summary}");
    }
    // The agent's verdict on the pod's rows: all in the workload's warm-up here (300 s).
    let warming =
        sql(db, &format!("SELECT count(*) FROM pod_features WHERE owner = '{UID_A}' AND anomaly_score IS NULL"));
    assert_eq!(summary["unjudged"].to_string(), warming, "{summary}");
    assert_ne!(warming, "0");
    // The `other` row is never judged (it has no workload): nothing of it is greyed as warm-up.
    let out = run_lab(
        &["plot", "--node", "pod-node", "--pod", "other", "--output", png.to_str().unwrap()],
        &env,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["unjudged"], 0, "{summary}");

    // Retention keeps today's rows.
    let rows_before = sql(db, "SELECT count(*) FROM pod_features");
    let out = run_lab(&["prune", "--pod-days", "1"], &env, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("0 day partitions"));
    assert_eq!(sql(db, "SELECT count(*) FROM pod_features"), rows_before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Pod rows share their node row's durability: taken while the database does not exist yet,
/// spooled with their node rows, kept across a restart, and written (with exact counts) once it
/// does.
#[test]
fn pod_rows_taken_during_an_outage_are_spooled_and_written_after_a_restart() {
    if !have_root("pod_rows_outage") {
        return;
    }
    let _g = exclusive();
    let db = "pod_rows_outage";
    // The database does not exist during the first run.
    let url = tests::postgres().url(db);
    let spool = std::env::temp_dir().join(format!("feature-agent-pod-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    const UID_D: &str = "0a1b2c3d-4444-4222-8333-944455566677";
    let cg = TestCgroup::new("outage", &[&format!("kubepods/burstable/pod{UID_D}/{}", "d".repeat(64))]);
    let start = |spool: &std::path::Path| {
        Command::new(agent_bin())
            .args(["run", "--pod-rows", "--interval", "1", "--listen", "off", "--shutdown-timeout", "1"])
            .arg("--spool-dir")
            .arg(spool)
            .env("DATABASE_URL", &url)
            .env("NODE_NAME", "outage-node")
            .env("POD_LOGS_DIR", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let agent = start(&spool);
    // Past the first sample (the pod baseline), then the workload, then two more samples.
    std::thread::sleep(Duration::from_millis(2500));
    let work = "i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done";
    assert!(in_cgroup("/bin/sh", &["-c", work], &cg.leaves[0]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("kept in the spool") || log.contains("stopping with rows in the spool"), "{log}");

    // The database appears; the next run writes the spooled intervals first, pod rows included.
    tests::fresh_database(db);
    let agent = start(&spool);
    tests::process::wait_for("the spooled pod rows", Duration::from_secs(60), || {
        sql(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'pod_features'") == "1"
            && sql(db, &format!("SELECT coalesce(sum(ebpf_forks), 0) FROM pod_features WHERE owner = '{UID_D}'"))
                == "50"
    });
    // SAFETY: as above.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        sql(db, &format!("SELECT sum(ebpf_execs) || '/' || sum(ebpf_exits) FROM pod_features WHERE owner = '{UID_D}'")),
        "51/51"
    );
    // Every interval of both runs: the node row equals the sum of its pod rows.
    let mismatches = sql(
        db,
        "SELECT count(*) FROM node_features n
         JOIN (SELECT ts, sum(ebpf_forks) AS s FROM pod_features GROUP BY ts) p USING (ts)
         WHERE n.ebpf_forks IS DISTINCT FROM p.s",
    );
    assert_eq!(mismatches, "0");
    let _ = std::fs::remove_dir_all(&spool);
}

/// A per-cgroup map too small for this machine: the kernel program reports it once through
/// aya-log, forwarded to the agent's own log, and the events still reach the node row (through
/// the other row); `print --pod-rows` writes the pod rows after each node row.
#[test]
fn a_full_cgroup_map_is_logged_once_and_nothing_is_lost() {
    if !have_root("cgroup_map_full_logged") {
        return;
    }
    let _g = exclusive();
    let cg = TestCgroup::new("full", &["a", "b"]);
    let agent = Command::new(agent_bin())
        .args(["print", "--pod-rows", "--cgroup-map-entries", "1", "--records", "4", "--interval", "0.5"])
        .env("POD_LOGS_DIR", "/nonexistent")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Events in two more cgroups while it runs: at most one of them finds room in the map.
    std::thread::sleep(Duration::from_millis(700));
    for leaf in &cg.leaves {
        assert!(in_cgroup("/bin/true", &[], leaf).status().unwrap().success());
    }
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("cgroup map full").count(), 1, "{log}");
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let node_rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["row"] == "node").collect();
    assert_eq!(node_rows.len(), 4);
    // Every interval after the first: its pod rows add up to its node row.
    for node in &node_rows[1..] {
        let ts = &node["ts"];
        let sum: i64 = lines
            .iter()
            .filter(|l| l["row"] == "pod" && &l["ts"] == ts)
            .map(|l| l["ebpf_execs"].as_i64().unwrap())
            .sum();
        assert_eq!(Some(sum), node["ebpf_execs"].as_i64(), "at {ts}");
    }

    // The same through `run`: /metrics counts the overflow and the pod rows of an interval.
    let port = tests::process::free_port();
    let mut agent = Command::new(agent_bin())
        .args(["run", "--pod-rows", "--cgroup-map-entries", "1", "--interval", "0.5", "--spool-dir", "off"])
        .args(["--database-url", "host=/nonexistent-socket-dir", "--listen", &format!("127.0.0.1:{port}")])
        .env("POD_LOGS_DIR", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tests::process::wait_for("the listener", Duration::from_secs(20), || {
        tests::process::http_get(port, "/healthz").is_some()
    });
    tests::process::wait_for("overflow and pod rows in /metrics", Duration::from_secs(20), || {
        for leaf in &cg.leaves {
            assert!(in_cgroup("/bin/true", &[], leaf).status().unwrap().success());
        }
        let m = tests::process::metrics(port);
        m.get("feature_agent_cgroup_overflow_events_total").is_some_and(|v| *v > 0.0)
            && m.get("feature_agent_ebpf_map_full_total{map=CGROUP_EVENT_COUNTS}").is_some_and(|v| *v > 0.0)
            && m.get("feature_agent_pod_rows_last").is_some_and(|v| *v >= 1.0)
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Retention (or anything else) drops today's pod partition under a running agent: the next
/// interval's write fails, the writer forgets the partitions it knew, creates them again and
/// writes on; no node row and no pod row of those intervals is refused or lost.
#[test]
fn a_pod_partition_dropped_under_a_running_agent_is_made_again() {
    if !have_root("pod_partition_dropped") {
        return;
    }
    let _g = exclusive();
    let db = "pod_partition_dropped";
    let url = migrated_database(db);
    let agent = Command::new(agent_bin())
        .args(["run", "--pod-rows", "--interval", "0.5", "--listen", "off", "--spool-dir", "off"])
        .env("DATABASE_URL", &url)
        .env("NODE_NAME", "drop-node")
        .env("POD_LOGS_DIR", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pod_intervals = || sql(db, "SELECT count(DISTINCT ts) FROM pod_features").parse::<i64>().unwrap();
    tests::process::wait_for("pod rows", Duration::from_secs(30), || pod_intervals() >= 2);
    // Every day partition ends before the day after tomorrow: all of them go.
    let dropped: i64 = sql(db, "SELECT drop_pod_features_before(now() + interval '2 days')").parse().unwrap();
    assert!(dropped >= 1);
    let node_before: i64 = sql(db, "SELECT count(*) FROM node_features").parse().unwrap();
    tests::process::wait_for("pod rows after the drop", Duration::from_secs(30), || pod_intervals() >= 4);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("refused"), "{log}");
    // Every node row written since the drop has its pod rows, and the other way round.
    let node_after: i64 = sql(db, "SELECT count(*) FROM node_features").parse().unwrap();
    assert!(node_after >= node_before + 2);
    let unmatched = sql(
        db,
        "SELECT count(*) FROM node_features n WHERE n.interval_s IS NOT NULL
           AND n.ts > (SELECT min(ts) FROM pod_features)
           AND NOT EXISTS (SELECT 1 FROM pod_features p WHERE p.node = n.node AND p.ts = n.ts)",
    );
    assert_eq!(unmatched, "0");
}

/// A pod row with a different value in every column goes through the agent's real INSERT
/// (feature-schema's pod_insert_sql and PodRow::params) and is read back column by column, by
/// names spelled out here: two columns swapped in the declaration, the parameters or the table
/// would fail.
#[test]
fn a_pod_row_with_a_distinct_value_in_every_column_lands_in_its_own_columns() {
    use agent_common::Event as E;
    use feature_schema::pods::{pod_insert_sql, OwnerKind, PodRow, Res};
    if !tests::have_root("a_pod_row_with_a_distinct_value_in_every_column_lands_in_its_own_columns") {
        return;
    }
    let url = tests::migrated_database("pod_row_columns");
    let ts = std::time::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let mut row = PodRow {
        node: "columns-node".into(),
        ts,
        interval_s: Some(1.25),
        kind: OwnerKind::Pod,
        owner: "5f0c1e2d-3b4a-4c5d-8e9f-0a1b2c3d4e5f".into(),
        namespace: Some("shop".into()),
        pod: Some("scanner-7d9f8-x2k4q".into()),
        qos: Some("Burstable".into()),
        cgroups: Some(3),
        network: Some("own".into()),
        workload: Some("shop/scanner".into()),
        anomaly_score: Some(6.5),
        anomalous_features: Some(vec!["ebpf_execs".into(), "cpu_usage_usec".into()]),
        events: [None; agent_common::EVENT_COUNT],
        resources: [None; feature_schema::pods::RESOURCE_COUNT],
    };
    let events = [
        (E::Fork, "ebpf_forks", 101),
        (E::Exec, "ebpf_execs", 102),
        (E::Exit, "ebpf_exits", 103),
        (E::TcpToEstablished, "tcp_to_est", 104),
        (E::TcpToSynSent, "tcp_to_syn_sent", 105),
        (E::TcpToSynRecv, "tcp_to_syn_recv", 106),
        (E::TcpToClose, "tcp_to_close", 107),
        (E::TcpToListen, "tcp_to_listen", 108),
        (E::TcpConnFailed, "tcp_conn_failed", 109),
        (E::TcpRstSent, "tcp_rst_sent", 110),
        (E::TcpRstRecv, "tcp_rst_recv", 111),
        (E::SockAllocTcp, "sock_alloc_tcp", 112),
        (E::SockAllocUdp, "sock_alloc_udp", 113),
        (E::SockAllocUnix, "sock_alloc_unix", 114),
        (E::SockAllocRaw, "sock_alloc_raw", 115),
        (E::SockAllocOther, "sock_alloc_other", 116),
        (E::FolioDirtied, "ebpf_folios_dirtied", 117),
        (E::TxNodeBytes, "tx_node_bytes", 118),
        (E::TxNodePackets, "tx_node_packets", 119),
        (E::TxClusterBytes, "tx_cluster_bytes", 120),
        (E::TxClusterPackets, "tx_cluster_packets", 121),
        (E::TxOutsideBytes, "tx_outside_bytes", 122),
        (E::TxOutsidePackets, "tx_outside_packets", 123),
        (E::RxNodeBytes, "rx_node_bytes", 124),
        (E::RxNodePackets, "rx_node_packets", 125),
        (E::RxClusterBytes, "rx_cluster_bytes", 126),
        (E::RxClusterPackets, "rx_cluster_packets", 127),
        (E::RxOutsideBytes, "rx_outside_bytes", 128),
        (E::RxOutsidePackets, "rx_outside_packets", 129),
    ];
    let resources = [
        (Res::CpuUsage, "cpu_usage_usec", 201),
        (Res::CpuPressure, "cpu_pressure_usec", 202),
        (Res::MemoryPressure, "memory_pressure_usec", 203),
        (Res::IoPressure, "io_pressure_usec", 204),
        (Res::MemoryCurrent, "memory_current", 205),
        (Res::OomKills, "oom_kills", 206),
        (Res::PidsCurrent, "pids_current", 207),
        (Res::IoReadBytes, "io_read_bytes", 208),
        (Res::IoWriteBytes, "io_write_bytes", 209),
        (Res::NetReceive, "net_receive", 210),
        (Res::ReceivePackets, "receive_packets", 211),
        (Res::ReceiveDrop, "receive_drop", 212),
        (Res::ReceiveErrs, "receive_errs", 213),
        (Res::NetTransmit, "net_transmit", 214),
        (Res::TransmitPackets, "transmit_packets", 215),
        (Res::EstConn, "est_conn", 216),
        (Res::LisConn, "lis_conn", 217),
    ];
    assert_eq!(events.len(), agent_common::EVENT_COUNT, "every event column is listed here");
    assert_eq!(resources.len(), feature_schema::pods::RESOURCE_COUNT, "every resource column is listed here");
    for (e, _, v) in events {
        row.events[e as usize] = Some(v);
    }
    for (r, _, v) in resources {
        row.resources[r as usize] = Some(v);
    }
    let mut expected: Vec<(&str, String)> = vec![
        ("node", "columns-node".into()),
        ("interval_s", "1.25".into()),
        ("kind", "pod".into()),
        ("owner", "5f0c1e2d-3b4a-4c5d-8e9f-0a1b2c3d4e5f".into()),
        ("namespace", "shop".into()),
        ("pod", "scanner-7d9f8-x2k4q".into()),
        ("qos", "Burstable".into()),
        ("cgroups", "3".into()),
        ("network", "own".into()),
        ("workload", "shop/scanner".into()),
        ("anomaly_score", "6.5".into()),
        ("array_to_string(anomalous_features, ',')", "ebpf_execs,cpu_usage_usec".into()),
        ("extract(epoch FROM ts)::bigint", "1780000000".into()),
    ];
    expected.extend(events.iter().map(|(_, c, v)| (*c, v.to_string())));
    expected.extend(resources.iter().map(|(_, c, v)| (*c, v.to_string())));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) =
            url.parse::<tokio_postgres::Config>().unwrap().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.query_one("SELECT ensure_day_partitions($1)", &[&row.ts]).await.unwrap();
        assert_eq!(client.execute(&pod_insert_sql(1), &row.params()).await.unwrap(), 1);
        for (column, want) in &expected {
            let got: String = client
                .query_one(&format!("SELECT ({column})::text FROM pod_features WHERE node = $1"), &[&row.node])
                .await
                .unwrap()
                .get(0);
            assert_eq!(&got, want, "column {column}");
        }
    });
}

/// A failed map read (injected at the third sample through --test-fail-map-read, which only the
/// tests' build of the agent has): that row's eBPF columns are NULL and it has no pod rows; the
/// next read is a fresh baseline for both (its row is NULL too, and has none); from the row
/// after, counting resumes, each interval's pod rows cover one interval and add up to their node
/// row.
#[test]
fn a_failed_map_read_gives_null_then_a_fresh_baseline_for_node_and_pod_rows() {
    if !have_root("failed_map_read") {
        return;
    }
    let _g = exclusive();
    let out = Command::new(agent_bin())
        .args(["print", "--pod-rows", "--records", "7", "--interval", "0.5", "--test-fail-map-read", "3"])
        .env("POD_LOGS_DIR", "/nonexistent")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("reading the eBPF counters failed"), "{log}");
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let node_rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["row"] == "node").collect();
    assert_eq!(node_rows.len(), 7);
    let pods_of = |node: &serde_json::Value| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["row"] == "pod" && l["ts"] == node["ts"]).collect()
    };
    // Rows 1 (the first: no interval yet), 3 (the failed read) and 4 (the fresh baseline):
    // NULL eBPF columns and no pod rows. Rows 2, 5, 6, 7: counts, and pod rows that add up.
    for (i, node) in node_rows.iter().enumerate() {
        let counted = !matches!(i + 1, 1 | 3 | 4);
        assert_eq!(node["ebpf_execs"].is_i64(), counted, "row {}: {node}", i + 1);
        let pods = pods_of(node);
        assert_eq!(!pods.is_empty(), counted, "row {} has {} pod rows", i + 1, pods.len());
        if counted {
            let sum: i64 = pods.iter().map(|p| p["ebpf_execs"].as_i64().unwrap()).sum();
            assert_eq!(sum, node["ebpf_execs"].as_i64().unwrap(), "row {}", i + 1);
            let node_interval = node["interval_s"].as_f64().unwrap();
            assert!(node_interval < 0.75, "row {}: one interval, {node_interval} s", i + 1);
            for p in pods {
                assert_eq!(p["interval_s"].as_f64(), Some(node_interval), "row {}: {p}", i + 1);
            }
        }
    }
}
