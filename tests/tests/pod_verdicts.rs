//! The verdict on pod rows, end to end with the real eBPF programs and a real Postgres: two
//! pods of a kubelet-like cgroup tree (a Deployment's and a StatefulSet's), named in a
//! /var/log/pods directory.
//! - After the warm-up, an exec storm in one pod flags that pod's row and no other pod's; the
//!   node row of that interval names the pod and its workload; the alarm line names them; and
//!   /metrics counts the alarm under the pod's namespace.
//! - Stopped and started again (the warm-up now 300 s), the agent restores the baselines from
//!   the state file in its spool directory: a new pod of the known Deployment (a rollout) gets
//!   a verdict from its first row and its exec storm is flagged at once.
//! - A damaged state file is a cold start with a log line.
use std::time::Duration;

use tests::{
    cgroup::{in_cgroup, TestCgroup},
    exclusive, fresh_spool_dir, have_root, migrated_database,
    process::{wait_for, Agent},
    sql,
};

const UID_WEB: &str = "5e1f0c2a-1111-4222-8333-944455566677";
const UID_DB: &str = "5e1f0c2a-2222-4222-8333-944455566677";
const UID_WEB_NEW: &str = "5e1f0c2a-3333-4222-8333-944455566677";

const WEB: &str = "web-6d94bc8694-lz8g2";
const WEB_NEW: &str = "web-7c6974c4d8-2pkfm";

fn pod_cgroup(uid: &str, container: char) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        uid.replace('-', "_"),
        container.to_string().repeat(64)
    )
}

/// 150 execs of /bin/true in `cgroup`: an exec storm (forks, execs and exits together).
fn exec_storm(cgroup: &std::path::Path) {
    let script = "i=0; while [ $i -lt 150 ]; do /bin/true; i=$((i+1)); done";
    assert!(in_cgroup("/bin/sh", &["-c", script], cgroup).status().unwrap().success());
}

fn q(db: &str, query: &str) -> String {
    sql(db, query)
}

#[test]
fn a_pods_exec_storm_flags_that_pod_alone_and_a_restarted_agent_judges_known_workloads_at_once() {
    if !have_root("pod_verdicts") {
        return;
    }
    let _g = exclusive();
    let db = "pod_verdicts";
    let url = migrated_database(db);
    let logs = std::env::temp_dir().join(format!("feature-agent-pod-logs-verdicts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    for (pod, uid) in [(WEB, UID_WEB), ("db-0", UID_DB), (WEB_NEW, UID_WEB_NEW)] {
        std::fs::create_dir_all(logs.join(format!("shop_{pod}_{uid}")).join("main")).unwrap();
    }
    let cg = TestCgroup::new("verdicts", &[&pod_cgroup(UID_WEB, 'a'), &pod_cgroup(UID_DB, 'b')]);
    let spool = fresh_spool_dir();
    let logs_dir = logs.to_str().unwrap();
    let env = [("NODE_NAME", "verdict-node"), ("POD_LOGS_DIR", logs_dir)];

    // Warm-up of 6 s at a 1 s interval.
    let agent = Agent::start(&url, &spool, &["--pod-rows", "--interval", "1", "--detector-warmup", "6"], &env);
    let warm = format!("SELECT count(*) FROM pod_features WHERE pod = '{WEB}' AND anomaly_score IS NOT NULL");
    wait_for("the web pod's first verdicts", Duration::from_secs(60), || q(db, &warm).parse::<i64>().unwrap() >= 3);
    assert_eq!(
        q(
            db,
            &format!("SELECT DISTINCT workload FROM pod_features WHERE owner IN ('{UID_WEB}', '{UID_DB}') ORDER BY 1")
        ),
        "shop/db\nshop/web"
    );
    exec_storm(&cg.leaves[0]);
    let flagged =
        format!("SELECT count(*) FROM pod_features WHERE pod = '{WEB}' AND 'ebpf_execs' = ANY(anomalous_features)");
    wait_for("the web pod's row flagged", Duration::from_secs(30), || q(db, &flagged) != "0");
    // In the interval it was flagged: no other pod is, and the node row names it.
    let ts =
        q(db, &format!("SELECT min(ts) FROM pod_features WHERE pod = '{WEB}' AND cardinality(anomalous_features) > 0"));
    assert_eq!(
        q(db, &format!("SELECT count(*) FROM pod_features WHERE ts = '{ts}' AND kind = 'pod' AND cardinality(anomalous_features) > 0 AND pod <> '{WEB}'")),
        "0"
    );
    wait_for("the node row of that interval", Duration::from_secs(10), || {
        q(db, &format!("SELECT count(*) FROM node_features WHERE node = 'verdict-node' AND ts = '{ts}'")) == "1"
    });
    let named = q(
        db,
        &format!("SELECT array_to_string(anomalous_pods, ',') || '|' || array_to_string(anomalous_workloads, ',') FROM node_features WHERE node = 'verdict-node' AND ts = '{ts}'"),
    );
    let (pods, workloads) = named.split_once('|').unwrap();
    let pods: Vec<&str> = pods.split(',').collect();
    let at = pods.iter().position(|p| *p == format!("shop/{WEB}")).unwrap_or_else(|| panic!("{named}"));
    assert_eq!(workloads.split(',').nth(at), Some("shop/web"), "{named}");
    assert!(!pods.contains(&"shop/db-0"), "{named}");
    wait_for("the alarm line", Duration::from_secs(10), || agent.log().contains(&format!("verdict-node: shop/{WEB} ")));
    assert!(agent.metric("feature_agent_pod_rows_anomalous_total{namespace=shop}") >= 1.0);
    assert!(agent.metric("feature_agent_pod_baselines") >= 2.0);
    let out = agent.stop();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("detector state saved"), "{log}");
    let state = spool.join("detector-state");
    assert!(state.is_file(), "no state file in the spool directory");

    // Restarted with the default 300 s warm-up; a rollout replaced the web pod.
    let leaf_new = cg.top.join(pod_cgroup(UID_WEB_NEW, 'c'));
    std::fs::create_dir_all(&leaf_new).unwrap();
    let restarted = q(db, "SELECT now()");
    let agent = Agent::start(&url, &spool, &["--pod-rows", "--interval", "1"], &env);
    wait_for("the new web pod's first row", Duration::from_secs(30), || {
        q(db, &format!("SELECT count(*) FROM pod_features WHERE owner = '{UID_WEB_NEW}'")) != "0"
    });
    assert!(agent.log().contains("detector baselines restored"), "{}", agent.log());
    assert_eq!(
        q(db, &format!("SELECT bool_and(anomaly_score IS NOT NULL) FROM pod_features WHERE owner = '{UID_WEB_NEW}'")),
        "t",
        "a new pod of a known workload is judged from its first row"
    );
    assert_eq!(
        q(db, &format!("SELECT bool_and(anomaly_score IS NOT NULL) FROM node_features WHERE node = 'verdict-node' AND ts > '{restarted}'")),
        "t",
        "the node is judged from its first row after the restart"
    );
    exec_storm(&leaf_new);
    let flagged_new = format!(
        "SELECT count(*) FROM pod_features WHERE owner = '{UID_WEB_NEW}' AND 'ebpf_execs' = ANY(anomalous_features)"
    );
    wait_for("the new web pod's exec storm flagged", Duration::from_secs(30), || q(db, &flagged_new) != "0");
    let out = agent.stop();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A damaged state file: a cold start, said in the log.
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    std::fs::write(&state, &bytes).unwrap();
    let agent = Agent::start(&url, &spool, &["--pod-rows", "--interval", "1", "--records", "2"], &env);
    let out = agent.stop_after_flush();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("the detector state is not used") && log.contains("checksum"), "{log}");
    std::fs::remove_dir(&leaf_new).unwrap();
    let _ = std::fs::remove_dir_all(&logs);
}
