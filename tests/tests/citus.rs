//! The same schema on a real Citus cluster (a coordinator and two workers on local ports,
//! throwaway-pg's citus.rs): `feature-agent migrate` distributes node_features and pod_features
//! by node, colocated, and makes the catalog and the scenario runs reference tables; real
//! agents write node and pod rows through the coordinator with the writer role, sharded on both
//! workers, the node row still the sum of its pod rows; the analysis views give the values one
//! server gives for the same rows; label, evaluate, export and prune run unchanged; a worker's
//! outage loses no row and duplicates none; and a database of the previous plain schema, rows
//! and all, upgrades in place. Citus must be installed (tests/src/lib.rs: have_citus).
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tests::{agent_bin, citus, exclusive, have_citus, run_agent, run_lab, schemas};
use throwaway_pg::citus::ThrowawayCitus;

const LIMIT: Duration = Duration::from_secs(120);

fn q(c: &ThrowawayCitus, db: &str, sql: &str) -> String {
    c.psql(db, sql).unwrap_or_else(|e| panic!("{sql}: {e}")).trim_end().to_owned()
}

/// Migrates `db` on the cluster with `feature-agent migrate`, and creates a login writer
/// (`agent`) and labeller (`labeller`), as a user's set-up would.
fn migrate(c: &ThrowawayCitus, db: &str) {
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &c.url(db))], LIMIT);
    assert!(out.status.success(), "migrate on the coordinator: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
    q(
        c,
        db,
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent') THEN
                 CREATE ROLE agent LOGIN IN ROLE feature_writer;
                 CREATE ROLE labeller LOGIN IN ROLE feature_labeller;
             END IF;
         END $$",
    );
}

/// The coordinator's URL for `db` as role `user`.
fn url_as(c: &ThrowawayCitus, db: &str, user: &str) -> String {
    c.url(db).replace("user=postgres", &format!("user={user}"))
}

/// The index (in `workers`) of the worker that holds `node`'s shard of node_features.
fn worker_of(c: &ThrowawayCitus, db: &str, node: &str) -> usize {
    let port: u16 = q(
        c,
        db,
        &format!(
            "SELECT nodeport FROM citus_shards WHERE table_name = 'node_features'::regclass \
             AND shardid = get_shard_id_for_distribution_column('node_features', {})",
            tests::sql_literal(node)
        ),
    )
    .parse()
    .unwrap();
    c.worker_on_port(port).expect("a worker's port")
}

/// Node names whose rows the cluster places on each of its workers, `per_worker` of each.
fn names_on_every_worker(c: &ThrowawayCitus, db: &str, prefix: &str, per_worker: usize) -> Vec<String> {
    let mut chosen: Vec<Vec<String>> = vec![Vec::new(); c.workers.len()];
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let w = worker_of(c, db, &name);
        if chosen[w].len() < per_worker {
            chosen[w].push(name);
        }
        if chosen.iter().all(|v| v.len() == per_worker) {
            break;
        }
        assert!(i < 1000, "the cluster places no rows on some worker");
    }
    chosen.into_iter().flatten().collect()
}

/// Rows of `table` on each worker (by shard placement), in worker order.
fn rows_per_worker(c: &ThrowawayCitus, db: &str, table: &str) -> Vec<i64> {
    let out = q(
        c,
        db,
        &format!(
            "SELECT s.nodeport, sum(r.result::bigint) FROM run_command_on_shards('{table}', $$SELECT count(*) FROM %s$$) r \
             JOIN citus_shards s USING (shardid) GROUP BY 1"
        ),
    );
    let mut per = vec![0; c.workers.len()];
    for line in out.lines() {
        let (port, n) = line.split_once('|').unwrap();
        per[c.worker_on_port(port.parse().unwrap()).unwrap()] = n.parse().unwrap();
    }
    per
}

fn agent(url: &str, node: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--pod-rows", "--interval", "0.5", "--listen", "off", "--node-name", node])
        .args(extra)
        .env("DATABASE_URL", url)
        .env("POD_LOGS_DIR", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Stops an agent (SIGTERM) that must exit cleanly; its log.
fn stop(child: Child) -> String {
    let out = tests::terminate(child);
    let log = tests::stderr_text(&out);
    assert!(out.status.success(), "{log}");
    log
}

#[test]
fn agents_write_through_the_coordinator_and_the_tools_run_unchanged() {
    if !have_citus("citus_agents_and_tools") {
        return;
    }
    let _serial = exclusive();
    let c = citus();
    let db = &c.create_database("citus_rows").unwrap();
    migrate(c, db);
    // Distributed by node and colocated; the small tables copied to every worker.
    assert_eq!(
        q(
            c,
            db,
            "SELECT string_agg(table_name || ':' || citus_table_type || ':' || distribution_column, ',' ORDER BY table_name::text) \
             FROM citus_tables WHERE table_name::text IN ('feature_catalog', 'node_features', 'pod_features', 'scenario_runs')"
        ),
        "feature_catalog:reference:<none>,node_features:distributed:node,pod_features:distributed:node,scenario_runs:reference:<none>"
    );
    assert_eq!(
        q(c, db, "SELECT count(DISTINCT colocation_id) FROM citus_tables WHERE citus_table_type = 'distributed'"),
        "1"
    );
    // A second migrate has nothing to do.
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &c.url(db))], LIMIT);
    assert!(String::from_utf8_lossy(&out.stderr).contains("applied=0"), "{}", String::from_utf8_lossy(&out.stderr));

    // Four agents, two on each worker's shards, writing as the writer role.
    let nodes = names_on_every_worker(c, db, "citus-node", 2);
    let writer = url_as(c, db, "agent");
    for node in &nodes {
        let out = agent(&writer, node, &["--records", "4", "--spool-dir", "off"]).output().unwrap();
        assert!(out.status.success(), "{node}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(q(c, db, "SELECT count(*) FROM node_features"), "16");
    let per = rows_per_worker(c, db, "node_features");
    assert_eq!(per, vec![8, 8], "node rows on each worker");
    let pods = rows_per_worker(c, db, "pod_features");
    assert!(pods.iter().all(|&n| n > 0), "pod rows on each worker: {pods:?}");
    // Each interval's node row is the sum of its pod rows, as on one server (a local join on
    // the node's worker).
    let mismatches = q(
        c,
        db,
        "SELECT count(*) FROM node_features n
         JOIN (SELECT node, ts, sum(ebpf_forks) AS s, sum(ebpf_execs) AS e FROM pod_features GROUP BY node, ts) p USING (node, ts)
         WHERE n.ebpf_forks IS DISTINCT FROM p.s OR n.ebpf_execs IS DISTINCT FROM p.e",
    );
    assert_eq!(mismatches, "0");
    assert!(
        q(c, db, "SELECT count(*) FROM node_features n JOIN pod_features p USING (node, ts)").parse::<i64>().unwrap()
            > 0
    );

    // The research tools, through the coordinator.
    let url = c.url(db);
    let labeller = url_as(c, db, "labeller");
    let env = [("DATABASE_URL", labeller.as_str())];
    let (from, to) = (
        q(c, db, &format!("SELECT min(ts) FROM node_features WHERE node = {}", tests::sql_literal(&nodes[0]))),
        q(c, db, &format!("SELECT max(ts) FROM node_features WHERE node = {}", tests::sql_literal(&nodes[0]))),
    );
    let out =
        run_lab(&["label", "--node", &nodes[0], "--from", &from, "--to", &to, "--attack-type", "drill"], &env, LIMIT);
    assert!(out.status.success(), "label: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(q(c, db, "SELECT count(*) FROM node_features WHERE attack = 1"), "4");
    // A run of that scenario, as `scenario` records it (scenario_runs is a reference table).
    q(
        c,
        db,
        &format!(
            "INSERT INTO scenario_runs (node, name, started_at, ended_at, interval_s) VALUES ({}, 'drill', '{from}', '{to}', 0.5)",
            tests::sql_literal(&nodes[0])
        ),
    );
    let out = run_lab(&["evaluate", "--json", "--node", &nodes[0]], &[("DATABASE_URL", &url)], LIMIT);
    assert!(out.status.success(), "evaluate: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scenarios"][0]["rows"], 4, "{report}");
    for format in ["csv", "parquet"] {
        let file = std::env::temp_dir().join(format!("citus-export-{}.{format}", std::process::id()));
        let out = run_lab(
            &["export", "--format", format, "--normalized", "--output", file.to_str().unwrap()],
            &[("DATABASE_URL", &url)],
            LIMIT,
        );
        assert!(out.status.success(), "export {format}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::metadata(&file).unwrap().len() > 0);
        if format == "csv" {
            assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 17, "a header and 16 rows");
        }
        let _ = std::fs::remove_file(&file);
    }
    let png = std::env::temp_dir().join(format!("citus-plot-{}.png", std::process::id()));
    let out =
        run_lab(&["plot", "--node", &nodes[0], "--output", png.to_str().unwrap()], &[("DATABASE_URL", &url)], LIMIT);
    assert!(out.status.success(), "plot: {}", String::from_utf8_lossy(&out.stderr));
    let image = std::fs::read(&png).expect("plot wrote its PNG");
    assert!(image.len() > 1000 && image.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG of {} bytes", image.len());
    let _ = std::fs::remove_file(&png);
    // Retention drops day partitions (and their shards on the workers).
    q(c, db, "SELECT ensure_day_partitions('2020-01-01Z')");
    q(c, db, "INSERT INTO pod_features (node, ts, kind, owner) VALUES ('old', '2020-01-01 10:00Z', 'other', 'other')");
    let out = run_lab(&["prune", "--pod-days", "30", "--node-days", "30"], &[("DATABASE_URL", &url)], LIMIT);
    assert!(out.status.success(), "prune: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(q(c, db, "SELECT count(*) FROM pod_features WHERE node = 'old'"), "0");
    assert_eq!(q(c, db, "SELECT count(*) FROM node_features"), "16");
    assert_eq!(q(c, db, "SELECT count(*) FROM citus_shards WHERE table_name::text LIKE '%20200101'"), "0");
}

/// Rows of two nodes over 40 intervals, pods included, with values that vary, as SQL.
fn synthetic_rows() -> String {
    let mut s = String::from(
        "SELECT ensure_day_partitions('2026-05-01 00:00Z');
         SELECT ensure_day_partitions('2026-05-02 00:00Z');",
    );
    for node in ["n-a", "n-b"] {
        for i in 0..40i64 {
            let ts = format!("timestamptz '2026-05-01 23:55:00Z' + interval '{} s'", i * 10);
            let k = if node == "n-a" { 3 } else { 7 };
            s += &format!(
                "INSERT INTO node_features (node, ts, interval_s, cpu_sec_idle, forks_total, load1, open_fds, ebpf_forks, ebpf_execs, tcp_to_close) \
                 VALUES ('{node}', {ts}, 10, {}, {}, {}, {}, {}, {}, {});",
                1000 + i * 9 + (i * k) % 5,
                50_000 + i * 40 + (i * i * k) % 97,
                0.5 + ((i * k) % 7) as f64 / 10.0,
                300 + (i * k) % 11,
                (i * k) % 13,
                (i * 3 + k) % 5,
                if i == 30 { 90 } else { (i + k) % 4 },
            );
            for p in 0..3i64 {
                s += &format!(
                    "INSERT INTO pod_features (node, ts, interval_s, kind, owner, namespace, pod, workload, ebpf_forks, cpu_usage_usec, memory_current) \
                     VALUES ('{node}', {ts}, 10, 'pod', 'uid-{p}', 'shop', 'web-{p}', 'shop/web', {}, {}, {});",
                    (i * (p + 1) + k) % 9,
                    i * 10_000 * (p + 1) + (i * i * k) % 3000,
                    64 << 20 | ((i * 7 + p) % 13) << 16,
                );
            }
        }
    }
    s
}

#[test]
fn the_views_give_the_same_values_as_one_server() {
    if !have_citus("citus_views") {
        return;
    }
    let _serial = exclusive();
    let c = citus();
    let db = &c.create_database("citus_views").unwrap();
    migrate(c, db);
    let plain = "citus_views_plain";
    tests::migrated_database(plain);
    let rows = synthetic_rows();
    q(c, db, &rows);
    tests::sql(plain, &rows);
    for query in [
        "SELECT * FROM node_feature_deltas ORDER BY node, ts",
        "SELECT * FROM node_feature_values ORDER BY node, ts, feature",
        "SELECT node, ts, feature, round(z::numeric, 9) FROM node_feature_zscores(2.0) ORDER BY node, ts, feature",
        "SELECT * FROM pod_feature_deltas ORDER BY node, ts, kind, owner",
        "SELECT node, ts, owner, feature, scored, round(z::numeric, 9) FROM pod_feature_zscores ORDER BY node, ts, owner, feature",
    ] {
        let on_citus = q(c, db, query);
        let on_plain = tests::sql(plain, query);
        assert!(on_plain.lines().count() > 10, "{query}: {on_plain}");
        assert_eq!(on_citus, on_plain, "{query}");
    }
}

#[test]
fn a_worker_outage_loses_no_row_and_duplicates_none() {
    if !have_citus("citus_worker_outage") {
        return;
    }
    let _serial = exclusive();
    // A cluster of its own: one of its workers is stopped.
    let mut c = ThrowawayCitus::start(2).unwrap();
    let db = &c.create_database("citus_outage").unwrap();
    migrate(&c, db);
    let nodes = names_on_every_worker(&c, db, "outage", 1);
    let down = worker_of(&c, db, &nodes[0]);
    let writer = url_as(&c, db, "agent");
    let spools: Vec<_> = nodes.iter().map(|_| tests::fresh_spool_dir()).collect();
    let agents: Vec<Child> = nodes
        .iter()
        .zip(&spools)
        .map(|(n, spool)| agent(&writer, n, &["--spool-dir", spool.to_str().unwrap()]).spawn().unwrap())
        .collect();
    let count = |c: &ThrowawayCitus, node: &str| -> i64 {
        q(c, db, &format!("SELECT count(*) FROM node_features WHERE node = {}", tests::sql_literal(node)))
            .parse()
            .unwrap()
    };
    tests::process::wait_for("rows from both agents", LIMIT, || nodes.iter().all(|n| count(&c, n) >= 2));
    // The worker holding the first node's shards goes down for 6 s: that agent spools, the
    // other keeps writing through the coordinator to its own worker.
    c.workers[down].stop_server();
    let other_before = count(&c, &nodes[1]);
    std::thread::sleep(Duration::from_secs(6));
    let other_after = count(&c, &nodes[1]);
    assert!(other_after > other_before, "the other worker's node keeps writing ({other_before} -> {other_after})");
    c.workers[down].restart_server().unwrap();
    // Every interval of the first node, from its first row to now, arrives: no gap, no duplicate.
    let complete = |node: &str| {
        q(
            &c,
            db,
            &format!(
                "SELECT count(*) = count(DISTINCT ts) AND count(*) = round(extract(epoch FROM max(ts) - min(ts)) / 0.5) + 1 \
                 AND max(ts) > now() - interval '2 s' FROM node_features WHERE node = {}",
                tests::sql_literal(node)
            ),
        ) == "t"
    };
    tests::process::wait_for("the spooled rows of the outage", Duration::from_secs(90), || complete(&nodes[0]));
    let logs: Vec<String> = agents.into_iter().map(stop).collect();
    // The writer logs each change of state: the agent whose worker went down lost its session
    // (probing, rows to the spool) and caught up; the other never left "connected".
    let lost = |log: &str| log.contains("from=\"connected\" to=\"probing\"");
    assert!(
        lost(&logs[0]) && logs[0].contains("to=\"catching up\"") && !lost(&logs[1]),
        "only the agent whose worker was down lost its session:\n{}\n---\n{}",
        logs[0],
        logs[1]
    );
    for node in &nodes {
        assert!(complete(node), "{node}: every interval once");
        let mismatches = q(
            &c,
            db,
            &format!(
                "SELECT count(*) FROM node_features n
                 JOIN (SELECT node, ts, sum(ebpf_forks) AS s FROM pod_features GROUP BY node, ts) p USING (node, ts)
                 WHERE n.node = {} AND n.ebpf_forks IS DISTINCT FROM p.s",
                tests::sql_literal(node)
            ),
        );
        assert_eq!(mismatches, "0", "{node}: node rows and their pod rows arrived together");
    }
    for s in spools {
        let _ = std::fs::remove_dir_all(s);
    }
}

#[test]
fn the_previous_plain_schema_upgrades_on_a_coordinator_with_its_rows() {
    if !have_citus("citus_upgrade") {
        return;
    }
    let _serial = exclusive();
    let c = citus();
    let db = &c.create_database("citus_upgrade").unwrap();
    // The last released schema with a partition per node (4661b77: the step to day
    // partitions is the one a coordinator cannot take without migrate's help), as a plain
    // database left it, with node and pod rows.
    let (release, files) = schemas::releases()
        .into_iter()
        .find(|(release, _)| release == "4661b77")
        .expect("releases.txt has the last per-node schema, 4661b77");
    let mut setup = schemas::release_schema_sql(&files);
    setup += "SELECT ensure_node_partition('old-node');";
    for i in 0..24 {
        let ts = format!("timestamptz '2026-01-01 23:58:00Z' + interval '{} s'", i * 10);
        setup += &format!(
            "INSERT INTO node_features (node, ts, forks_total, ebpf_forks) VALUES ('old-node', {ts}, {}, {i});
             SELECT ensure_pod_partition('old-node', {ts});
             INSERT INTO pod_features (node, ts, kind, owner, ebpf_forks) VALUES ('old-node', {ts}, 'other', 'other', {i});",
            1000 + i
        );
    }
    q(c, db, &setup);
    migrate(c, db);
    assert_eq!(
        q(c, db, "SELECT count(*) || '/' || sum(ebpf_forks) FROM node_features WHERE node = 'old-node'"),
        "24/276",
        "{release}: node rows kept"
    );
    assert_eq!(
        q(c, db, "SELECT count(*) || '/' || sum(ebpf_forks) FROM pod_features WHERE node = 'old-node'"),
        "24/276",
        "{release}: pod rows kept"
    );
    assert_eq!(
        q(
            c,
            db,
            "SELECT count(*) FROM citus_tables WHERE citus_table_type = 'distributed' \
             AND table_name::text IN ('node_features', 'pod_features')"
        ),
        "2",
        "{release}: distributed after the upgrade"
    );
    // And an agent writes on.
    let out = agent(&url_as(c, db, "agent"), "new-node", &["--records", "2", "--spool-dir", "off"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(q(c, db, "SELECT count(*) FROM node_features WHERE node = 'new-node'"), "2");
}

/// A worker that hangs (every process SIGSTOPped for 30 s: its sockets open, nothing answers)
/// while agents write through the coordinator: the agent whose rows live there is cut off by its
/// deadline and spools (the coordinator's own wait on the worker is ended by the statement
/// timeout the agent sets for each transaction); the other worker's agent keeps writing all
/// along; after the thaw every interval arrives once.
#[test]
fn a_hung_worker_loses_no_row_and_the_other_workers_nodes_keep_writing() {
    if !have_citus("citus_hung_worker") {
        return;
    }
    let _serial = exclusive();
    let mut c = ThrowawayCitus::start(2).unwrap();
    let db = &c.create_database("citus_hung").unwrap();
    migrate(&c, db);
    let nodes = names_on_every_worker(&c, db, "hung", 1);
    let hung = worker_of(&c, db, &nodes[0]);
    let writer = url_as(&c, db, "agent");
    let spools: Vec<_> = nodes.iter().map(|_| tests::fresh_spool_dir()).collect();
    let agents: Vec<Child> = nodes
        .iter()
        .zip(&spools)
        .map(|(n, spool)| agent(&writer, n, &["--spool-dir", spool.to_str().unwrap()]).spawn().unwrap())
        .collect();
    let count = |c: &ThrowawayCitus, node: &str| -> i64 {
        q(c, db, &format!("SELECT count(*) FROM node_features WHERE node = {}", tests::sql_literal(node)))
            .parse()
            .unwrap()
    };
    tests::process::wait_for("rows from both agents", LIMIT, || nodes.iter().all(|n| count(&c, n) >= 2));
    c.workers[hung].freeze();
    // The other node's rows keep arriving in every 5 s of the 30 s hang.
    for _ in 0..6 {
        let before = count(&c, &nodes[1]);
        std::thread::sleep(Duration::from_secs(5));
        let after = count(&c, &nodes[1]);
        assert!(after >= before + 5, "the other worker's node keeps writing ({before} -> {after} in 5 s)");
    }
    // The coordinator's backend of the session the agent abandoned stays stuck until the worker
    // answers (Citus cancels a worker's statement with a blocking cancel request); the agent
    // waits for it rather than open more: at most one stuck session besides its probing one,
    // and one for the other agent.
    let sessions = q(&c, db, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'feature-agent/%'");
    assert!(
        sessions.parse::<u32>().unwrap() <= 3,
        "{}",
        q(
            &c,
            db,
            "SELECT application_name, state, query FROM pg_stat_activity WHERE application_name LIKE 'feature-agent/%'"
        )
    );
    c.workers[hung].thaw();
    let complete = |node: &str| {
        q(
            &c,
            db,
            &format!(
                "SELECT count(*) = count(DISTINCT ts) AND count(*) = round(extract(epoch FROM max(ts) - min(ts)) / 0.5) + 1 \
                 AND max(ts) > now() - interval '2 s' FROM node_features WHERE node = {}",
                tests::sql_literal(node)
            ),
        ) == "t"
    };
    tests::process::wait_for("the spooled rows of the hang", Duration::from_secs(90), || complete(&nodes[0]));
    let logs: Vec<String> = agents.into_iter().map(stop).collect();
    assert!(logs[0].contains("did not finish a write within its deadline"), "{}", logs[0]);
    assert!(!logs[1].contains("from=\"connected\" to=\"probing\""), "the other agent kept its session: {}", logs[1]);
    for node in &nodes {
        assert!(complete(node), "{node}: every interval once");
    }
    for s in spools {
        let _ = std::fs::remove_dir_all(s);
    }
}

/// An agent that writes through a worker, not the coordinator: the worker finds the schema
/// current (its bookkeeping is a reference table), routes the rows to their shard, and the
/// coordinator sees them; the day's partitions were made ahead through the coordinator, as
/// docs/citus.md says (a worker cannot run their DDL).
#[test]
fn an_agent_writes_through_a_worker() {
    if !have_citus("citus_through_a_worker") {
        return;
    }
    let _serial = exclusive();
    // A cluster of its own: the shared one's databases are made by other tests meanwhile.
    let c = &ThrowawayCitus::start(2).unwrap();
    let db = &c.create_database("citus_worker_entry").unwrap();
    migrate(c, db);
    q(c, db, "SELECT ensure_day_partitions(now()), ensure_day_partitions(now() + interval '1 day')");
    let url = c.workers[0].url(db).replace("user=postgres", "user=agent");
    let spool = tests::fresh_spool_dir();
    let child = agent(&url, "via-worker", &["--records", "6", "--spool-dir", spool.to_str().unwrap()]).spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("WARN agent::delivery::writer"), "{log}");
    let n = q(c, db, "SELECT count(*) FROM node_features WHERE node = 'via-worker'");
    assert_eq!(n, "6", "{log}");
    // Pod rows came with every interval but the run's first (which has no interval before it).
    let pods = q(c, db, "SELECT count(DISTINCT ts) FROM pod_features WHERE node = 'via-worker'");
    assert!(pods == "5" || pods == "6", "each interval's pod rows arrived with it: {pods}");
    let _ = std::fs::remove_dir_all(spool);
}
