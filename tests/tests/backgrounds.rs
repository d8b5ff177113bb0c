//! The drill's background workloads, each started for real for a few seconds: it does what it
//! says (nginx runs and ab opens its connections; pgbench runs; make compiles), in the
//! neighbour pod it is given (web and database here: their processes are in the pod's cgroup),
//! and stopping it leaves no process and no scratch directory behind.
use std::time::Duration;

use lab::background::{self, Background};
use tests::have_root;

fn processes_named(name: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == name)
        .count()
}

/// The node's TCP ActiveOpens counter (/proc/net/snmp): connections this host initiated.
fn active_opens() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let names: Vec<&str> = tcp[0].split_whitespace().collect();
    let values: Vec<&str> = tcp[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == "ActiveOpens").unwrap();
    values[i].parse().unwrap()
}

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("backgrounds-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn leftovers(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The names of the processes in a pod's cgroup.
fn in_pod(pod: &lab::pod::LabPod) -> Vec<String> {
    std::fs::read_to_string(pod.cgroup.join("cgroup.procs"))
        .unwrap()
        .lines()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

#[test]
fn web_serves_requests_and_stops_cleanly() {
    let dir = scratch().join("web");
    std::fs::create_dir_all(&dir).unwrap();
    if !have_root("web_serves_requests_and_stops_cleanly") {
        return;
    }
    let before = processes_named("nginx");
    let mut pods = lab::pod::LabPods::new(&dir).unwrap();
    let pod = pods.add("lab-neighbour", "web-0", false).unwrap();
    let running = background::start(Background::Web, &dir, Some(pod.clone())).unwrap();
    assert!(processes_named("nginx") > before, "nginx runs");
    assert!(in_pod(&pod).iter().any(|c| c == "nginx"), "nginx runs in the pod: {:?}", in_pod(&pod));
    // ab's bursts (20 new connections a second) show in the node's count of active TCP opens:
    // at least two bursts' worth within 4 s.
    let opens = active_opens();
    std::thread::sleep(Duration::from_secs(4));
    let opened = active_opens() - opens;
    assert!(opened >= 40, "only {opened} TCP connections opened in 4 s");
    drop(running);
    assert_eq!(processes_named("nginx"), before, "nginx stopped");
    drop(pods);
    assert_eq!(leftovers(&dir), 0, "scratch directory and pod log directory removed");
}

#[test]
fn database_runs_pgbench_and_stops_cleanly() {
    if !have_root("database_runs_pgbench_and_stops_cleanly") {
        return;
    }
    let dir = scratch().join("db");
    std::fs::create_dir_all(&dir).unwrap();
    let before = processes_named("pgbench");
    let mut pods = lab::pod::LabPods::new(&dir).unwrap();
    let pod = pods.add("lab-neighbour", "database-0", false).unwrap();
    let running = background::start(Background::Database, &dir, Some(pod.clone())).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(processes_named("pgbench"), before + 1, "pgbench runs");
    // The server and the backends it forked after moving, and pgbench, are in the pod.
    let names = in_pod(&pod);
    assert!(
        names.iter().any(|c| c == "pgbench") && names.iter().filter(|c| *c == "postgres").count() >= 2,
        "{names:?}"
    );
    drop(running);
    assert_eq!(processes_named("pgbench"), before, "pgbench stopped");
    drop(pods);
    assert_eq!(leftovers(&dir), 0);
}

#[test]
fn build_compiles_and_stops_cleanly() {
    let dir = scratch().join("build");
    std::fs::create_dir_all(&dir).unwrap();
    let running = background::start(Background::Build, &dir, None).unwrap();
    let project = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let mut built = false;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        if project.join("prog").exists() {
            built = true;
            break;
        }
    }
    assert!(built, "make built the project within 30 s");
    drop(running);
    assert_eq!(leftovers(&dir), 0);
}
