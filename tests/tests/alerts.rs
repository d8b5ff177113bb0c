//! The operators' side: deploy/alerts' rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`: each alert fires when it should and stays quiet when it should not),
//! and a real Prometheus (Debian's package) scrapes a running agent, loads the same rules, and
//! fires FeatureAgentRowsDropped when the agent drops rows. promtool and prometheus come from
//! scripts/setup.sh; a machine without them fails these tests.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tests::{
    fresh_spool_dir, have_root,
    process::{free_port, http_get, wait_for, Agent},
};

fn alerts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/alerts")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(alerts_dir())
        .output()
        .unwrap_or_else(|e| panic!("promtool (Debian's prometheus package, installed by scripts/setup.sh): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    assert!(promtool(&["check", "rules", "feature-agent.rules.yml"]).contains("SUCCESS: 9 rules found"));
    assert!(promtool(&["test", "rules", "feature-agent.rules.test.yml"]).contains("SUCCESS"));
}

/// Every alert of the rules file has a test that expects it to fire.
#[test]
fn every_alert_has_a_firing_test() {
    let rules = std::fs::read_to_string(alerts_dir().join("feature-agent.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(alerts_dir().join("feature-agent.rules.test.yml")).unwrap();
    let names: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(names.len(), 9);
    for name in names {
        let fired = tests.split("alertname: ").skip(1).any(|t| t.starts_with(name) && t.contains("exp_labels"));
        assert!(fired, "no test expects {name} to fire");
    }
}

/// A Prometheus process, killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(agent_port: u16) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("feature-agent-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rules = alerts_dir().join("feature-agent.rules.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: feature-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("prometheus (Debian's package, installed by scripts/setup.sh): {e}"));
    let p = Prometheus { child, port, dir };
    wait_for("Prometheus to be ready", Duration::from_secs(60), || {
        http_get(p.port, "/-/ready").is_some_and(|(s, _)| s == 200)
    });
    p
}

/// Prometheus scrapes the agent's /metrics (OpenMetrics) and evaluates the shipped rules on
/// it: the agent runs without a database or spool and a one-row queue, so it drops rows
/// (queue_full) and is not ready; FeatureAgentRowsDropped fires with that reason.
#[test]
fn a_real_prometheus_scrapes_the_agent_and_fires_its_alert() {
    if !have_root("a_real_prometheus_scrapes_the_agent_and_fires_its_alert") {
        return;
    }
    let spool = fresh_spool_dir();
    let args = [
        "--interval",
        "0.2",
        "--node-name",
        "scraped",
        "--no-ebpf",
        "--spool-dir",
        "off",
        "--queue-max-rows",
        "1",
        "--db-host",
        "127.0.0.1",
        "--db-port",
        "1",
    ];
    let agent = Agent::start("", &spool, &args, &[]);
    let prom = start_prometheus(agent.port);
    let query = |q: &str| {
        let path = format!("/api/v1/query?query={}", q.replace(' ', "%20"));
        http_get(prom.port, &path).map(|(_, body)| body).unwrap_or_default()
    };
    wait_for("the scrape to succeed", Duration::from_secs(30), || {
        query("up{job=\"feature-agent\"}").contains("\"value\":[") && query("up").contains("\"1\"]")
    });
    wait_for("sampled rows in Prometheus", Duration::from_secs(30), || {
        query("feature_agent_rows_sampled_total > 3").contains("\"result\":[{")
    });
    assert!(query("feature_agent_ready").contains("\"0\"]"), "{}", query("feature_agent_ready"));
    wait_for("FeatureAgentRowsDropped to fire", Duration::from_secs(30), || {
        let (_, body) = http_get(prom.port, "/api/v1/alerts").unwrap_or_default();
        body.contains("\"alertname\":\"FeatureAgentRowsDropped\"")
            && body.contains("\"reason\":\"queue_full\"")
            && body.contains("\"state\":\"firing\"")
    });
    let (_, body) = http_get(prom.port, "/api/v1/alerts").unwrap();
    assert!(!body.contains("FeatureAgentNodeNameTaken"), "{body}");
    drop(agent);
}
