//! Upgrades in place: a database made by each earlier released schema (tests/fixtures/schemas:
//! the migrations/ of every release that changed them, as they shipped), holding rows, is brought
//! to the current schema by `feature-agent migrate`, and what reads it through the analysis
//! functions works afterwards. The release that changed 0002 in place (fc19417) left databases
//! migrated before it with z-score functions that export, plot and evaluate no longer call;
//! migration 0004 repairs them. After the upgrade the table, the views and the catalog are
//! exactly what the column declaration (feature-schema) says, so a column added by a later
//! migration reaches every view.
use std::time::Duration;

use tests::{fresh_database, have_root, run_agent, run_lab, sql};

use tests::schemas::{fixture, release_schema_sql};

/// A row of the columns every released schema has, for node `node` at second `i`.
fn row_sql(node: &str, i: u32) -> String {
    format!(
        "INSERT INTO node_features (node, ts, cpu_sec_idle, forks_total, load1, open_fds) \
         VALUES ('{node}', timestamptz '2026-01-01 00:00:00Z' + interval '{} s', {}, {}, 0.5, {});",
        i * 10,
        100 + i,
        1000 + i * 3,
        300 + i % 4
    )
}

#[test]
fn every_released_schema_upgrades_in_place() {
    if !have_root("every_released_schema_upgrades_in_place") {
        return;
    }
    let releases = fixture("releases.txt");
    for line in releases.lines() {
        let mut fields = line.split_whitespace();
        let release = fields.next().unwrap();
        let files: Vec<&str> = fields.collect();
        // A release's tag (v0.2.0) has dots, which a database name may not.
        let db = format!("schema_{}", release.replace('.', "_"));
        let url = fresh_database(&db);
        // The schema as that release left it: its migrations, recorded as applied.
        let mut setup = release_schema_sql(&files);
        // A release with day partitions makes each day's partition for the row's ts (its
        // compat ensure_node_partition covers only the days around now); the older ones made the
        // node's partition.
        if files.iter().any(|f| f.starts_with("0011_")) {
            setup += "SELECT ensure_day_partitions(timestamptz '2026-01-01 00:00:00Z');";
        } else {
            setup += "SELECT ensure_node_partition('old-node');";
        }
        for i in 0..12 {
            setup += &row_sql("old-node", i);
        }
        // Releases with per-pod rows: pod rows too, over two days.
        let pods = files.iter().any(|f| f.starts_with("0007_"));
        if pods {
            for i in 0..12 {
                let ts = format!("timestamptz '2026-01-01 23:59:00Z' + interval '{} s'", i * 10);
                setup += &format!(
                    "SELECT ensure_pod_partition('old-node', {ts});
                     INSERT INTO pod_features (node, ts, kind, owner, ebpf_forks) VALUES ('old-node', {ts}, 'other', 'other', {i});"
                );
            }
        }
        sql(&db, &setup);

        let out = run_agent(&["migrate"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{release}: {stderr}");
        assert!(!stderr.contains("NOTICE"), "{release}: {stderr}");
        assert_eq!(
            sql(&db, "SELECT max(version) FROM schema_migrations"),
            feature_db::migrate::MIGRATIONS.len().to_string(),
            "{release}"
        );
        assert_eq!(
            sql(&db, "SELECT sql FROM schema_generated"),
            feature_db::migrate::GENERATED.1.trim_end(),
            "{release}"
        );
        // One z-score function of each name, the current one (with only_node), and the views.
        assert_eq!(
            sql(&db, "SELECT string_agg(pronargs::text, ',' ORDER BY proname) FROM pg_proc WHERE proname IN ('node_feature_zscores', 'node_feature_flags')"),
            "5,5",
            "{release}"
        );
        assert_eq!(sql(&db, "SELECT count(*) FROM node_feature_flags(2.0, NULL, NULL, false, 'old-node')"), "12");
        assert_eq!(sql(&db, "SELECT count(*) FROM node_anomalies WHERE node = 'old-node'"), "0");
        assert_eq!(sql(&db, "SELECT count(*) FROM node_features"), "12", "{release}: the rows are kept");
        if pods {
            assert_eq!(
                sql(&db, "SELECT count(*), sum(ebpf_forks) FROM pod_features WHERE node = 'old-node'"),
                "12|66",
                "{release}: the pod rows are kept"
            );
        }
        // Whatever the release's layout, the tables are now partitioned by day.
        assert_eq!(
            sql(
                &db,
                "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent IN ('node_features'::regclass, 'pod_features'::regclass)"
            ),
            if pods {
                "node_features_20260101,node_features_20260102,pod_features_20260101,pod_features_20260102"
            } else {
                "node_features_20260101,pod_features_20260101"
            },
            "{release}"
        );
        assert_schema_is_the_declaration(&db, release);
        // And the commands that call them work on the upgraded database.
        let out = run_lab(
            &["export", "--format", "csv", "--output", "-", "--node", "old-node", "--normalized"],
            &[("DATABASE_URL", &url)],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{release}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 13, "{release}");
        // A second migrate has nothing to do.
        let out = run_agent(&["migrate"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
        assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("applied=0"), "{release}");

        // Views of an older declaration (same numbered migrations): the readers refuse clearly,
        // and migrate re-applies the generated SQL.
        sql(&db, "UPDATE schema_generated SET sql = '-- an older declaration'");
        let export = ["export", "--format", "csv", "--output", "-", "--node", "old-node"];
        let out = run_lab(&export, &[("DATABASE_URL", &url)], Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("differ from this agent's column declaration"), "{stderr}");
        let out = run_agent(&["migrate"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
        assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("applied=1"), "{release}");
        let out = run_lab(&export, &[("DATABASE_URL", &url)], Duration::from_secs(60));
        assert!(out.status.success(), "{release}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 13, "{release}: a header and the 12 rows");
    }
}

/// A binary older than the database's schema (a later release migrated it) neither downgrades the
/// views nor refuses to run: migrate applies nothing, the newer generated SQL stays.
#[test]
fn an_older_binary_leaves_a_newer_schema_alone() {
    if !have_root("an_older_binary_leaves_a_newer_schema_alone") {
        return;
    }
    let db = "schema_newer";
    let url = tests::migrated_database(db);
    sql(db, "INSERT INTO schema_migrations (version, name) VALUES (999, '0999_from_the_future.sql'); UPDATE schema_generated SET sql = '-- a newer declaration'");
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("applied=0"), "{stderr}");
    assert_eq!(sql(db, "SELECT sql FROM schema_generated"), "-- a newer declaration");
    sql(db, "SELECT ensure_day_partitions(now()); INSERT INTO node_features (node, ts) VALUES ('n', now())");
    let out =
        run_lab(&["export", "--format", "csv", "--output", "-"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(csv.starts_with("node,ts,") && csv.lines().count() == 2, "a header and the row: {csv}");
}

/// The migrated table has exactly the declared columns with their SQL types (plus the labels),
/// both views carry every declared column, and the catalog is the scored-feature list.
fn assert_schema_is_the_declaration(db: &str, release: &str) {
    use feature_schema::{Kind, FEATURES, LABEL_COLUMNS, SCHEMA};
    let columns_of = |relation: &str| {
        sql(
            db,
            &format!(
                "SELECT string_agg(column_name || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY attnum) \
                 FROM information_schema.columns c JOIN pg_attribute a \
                   ON a.attrelid = '{relation}'::regclass AND a.attname = c.column_name \
                 WHERE c.table_name = '{relation}' AND c.table_schema = 'public'"
            ),
        )
    };
    // Postgres spells timestamptz out.
    let mut want: Vec<String> = SCHEMA
        .iter()
        .map(|c| format!("{} {}", c.name, c.ty.sql().replace("timestamptz", "timestamp with time zone")))
        .collect();
    want.extend(LABEL_COLUMNS.iter().map(|(name, ty, _)| format!("{name} {}", ty.split_whitespace().next().unwrap())));
    want.sort();
    let mut have: Vec<String> = columns_of("node_features").split(", ").map(str::to_owned).collect();
    have.sort();
    assert_eq!(have, want, "{release}: node_features is not the declaration");
    let deltas = columns_of("node_feature_deltas");
    for c in SCHEMA.iter() {
        assert!(
            deltas.split(", ").any(|d| d.starts_with(&format!("{} ", c.name))),
            "{release}: deltas lacks {}",
            c.name
        );
    }
    for f in FEATURES.iter().filter(|f| f.kind == Kind::Counter) {
        assert!(deltas.contains(&format!("{}_delta ", f.column)), "{release}: no {}_delta", f.column);
    }
    let catalog = sql(
        db,
        "SELECT string_agg(feature || ':' || kind || ':' || min_spread, ',' ORDER BY ordinal) FROM feature_catalog",
    );
    let want: Vec<String> =
        FEATURES.iter().map(|f| format!("{}:{}:{}", f.column, f.kind.as_str(), f.min_spread)).collect();
    assert_eq!(catalog, want.join(","), "{release}");
    // One line per row and feature in the long view.
    assert_eq!(
        sql(db, "SELECT count(DISTINCT feature) FROM node_feature_values"),
        FEATURES.len().to_string(),
        "{release}"
    );
}
