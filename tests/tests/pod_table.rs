//! The pod_features table against its declaration (feature-schema/src/pods.rs), its day
//! partitions (shared by every node, as node_features'), and retention:
//! drop_day_partitions_before drops whole day partitions, keeping every row after the cut and
//! none before it.
use feature_schema::pods::pod_columns;
use tests::{have_root, migrated_database, sql};

#[test]
fn the_table_has_exactly_the_declared_columns() {
    if !have_root("pod_table_columns") {
        return;
    }
    let db = "pod_table_columns";
    migrated_database(db);
    let got = sql(
        db,
        "SELECT string_agg(column_name || ' ' || data_type, ',' ORDER BY ordinal_position)
         FROM information_schema.columns WHERE table_name = 'pod_features'",
    );
    // Columns added by later migrations sit at the end of the table, so compare by name: every
    // statement names its columns.
    let mut got: Vec<&str> = got.split(',').collect();
    got.sort_unstable();
    let mut want: Vec<String> = pod_columns()
        .iter()
        .map(|(name, ty)| {
            let ty = ty.trim_end_matches(" NOT NULL");
            let ty = match ty {
                "timestamptz" => "timestamp with time zone",
                "text[]" => "ARRAY",
                other => other,
            };
            format!("{name} {ty}")
        })
        .collect();
    // The labellers' columns, as in node_features.
    want.push("attack smallint".into());
    want.push("attack_type text".into());
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn retention_drops_whole_days_before_the_cut_and_keeps_the_rest() {
    if !have_root("pod_retention") {
        return;
    }
    let db = "pod_retention";
    migrated_database(db);
    // Three nodes (one with a hostile name) with node and pod rows every hour over five days.
    let q = "SELECT ensure_day_partitions(timestamptz '2026-03-01 00:00:00Z' + d * interval '1 day') FROM generate_series(0, 4) d;
             INSERT INTO node_features (node, ts)
                 SELECT n, timestamptz '2026-03-01 00:30:00Z' + h * interval '1 hour'
                 FROM unnest(ARRAY['a', 'b-node', 'it''s \"odd\" ü']) n, generate_series(0, 119) h;
             INSERT INTO pod_features (node, ts, kind, owner, ebpf_forks)
                 SELECT n, timestamptz '2026-03-01 00:30:00Z' + h * interval '1 hour', 'other', 'other', h
                 FROM unnest(ARRAY['a', 'b-node', 'it''s \"odd\" ü']) n, generate_series(0, 119) h;";
    sql(db, q);
    let parts =
        |table: &str| sql(db, &format!("SELECT count(*) FROM pg_inherits WHERE inhparent = '{table}'::regclass"));
    // One partition per day, shared by the nodes.
    assert_eq!(parts("pod_features"), "5");
    assert_eq!(parts("node_features"), "5");
    assert_eq!(sql(db, "SELECT count(*) FROM pod_features"), "360");
    // Cut in the middle of March 3rd: March 1st and 2nd go, the 3rd (it ends after the cut) stays.
    assert_eq!(sql(db, "SELECT drop_pod_features_before('2026-03-03 12:00:00Z')"), "2");
    assert_eq!(parts("pod_features"), "3");
    assert_eq!(sql(db, "SELECT count(*) FROM pod_features"), (3 * 3 * 24).to_string());
    assert_eq!(sql(db, "SELECT min(ts) = '2026-03-03 00:30:00Z' FROM pod_features"), "t");
    // Node rows are kept until their own cut.
    assert_eq!(sql(db, "SELECT count(*) FROM node_features"), "360");
    assert_eq!(sql(db, "SELECT drop_day_partitions_before('node_features', '2026-03-02 00:00:00Z')"), "1");
    assert_eq!(sql(db, "SELECT count(*) FROM node_features"), (3 * 4 * 24).to_string());
    // Again: nothing more to drop; a dropped day comes back when rows for it arrive.
    assert_eq!(sql(db, "SELECT drop_pod_features_before('2026-03-03 12:00:00Z')"), "0");
    sql(db, "SELECT ensure_day_partitions('2026-03-01 05:00:00Z')");
    assert_eq!(parts("pod_features"), "4");
    assert_eq!(parts("node_features"), "5");
    // Nothing but the two day-partitioned tables can be pruned this way.
    let refused = tests::postgres()
        .psql(db, "SELECT drop_day_partitions_before('scenario_runs', now())")
        .expect_err("scenario_runs is not partitioned by day");
    assert!(refused.to_string().contains("only node_features and pod_features are partitioned by day"), "{refused}");
}

/// `pod_feature_deltas` on a pod's first row and across a recreated sandbox, as the agent's pod
/// detector scores them: a pod that appeared while the agent ran counts from zero (its first
/// reading is its delta), one already running at the agent's start has no first delta, a
/// counter not readable in a new pod's first row gets its whole count in the first row that
/// reads it, and a pod first seen after a gap in the node's rows gets none.
#[test]
fn a_new_pods_first_row_counts_from_zero_in_the_delta_view() {
    if !have_root("pod_first_row_deltas") {
        return;
    }
    let db = "pod_first_row_deltas";
    migrated_database(db);
    // Intervals of 10 s at t0..t5 (the agent's first interval has interval_s NULL), then one
    // at t8 after a gap. Pod "old" runs throughout; "new" appears at t2 having sent 32 MiB;
    // "late" appears at t3 with no network reading until t4; "after-gap" appears at t8.
    let q = "SELECT ensure_day_partitions('2026-03-01 00:00:00Z');
             CREATE TEMP TABLE r (t int, owner text, tx bigint);
             INSERT INTO r VALUES (0,'old',1000),(1,'old',2000),(2,'old',3000),(3,'old',4000),(4,'old',5000),
                 (5,'old',6000),(8,'old',9000),(2,'new',33554432),(3,'new',33654432),(3,'late',NULL),
                 (4,'late',4096),(5,'late',8192),(8,'after-gap',777);
             INSERT INTO pod_features (node, ts, interval_s, kind, owner, net_transmit)
                 SELECT 'n', timestamptz '2026-03-01 00:00:00Z' + t * interval '10 s',
                        CASE WHEN t = 0 THEN NULL ELSE 10 END, 'pod', owner, tx FROM r;";
    sql(db, q);
    let delta = |owner: &str, t: i32| {
        sql(
            db,
            &format!(
                "SELECT coalesce(net_transmit_delta::text, 'NULL') FROM pod_feature_deltas WHERE owner = '{owner}' \
                 AND ts = timestamptz '2026-03-01 00:00:00Z' + {t} * interval '10 s'"
            ),
        )
    };
    assert_eq!(delta("old", 0), "NULL", "running before the agent: no first delta");
    assert_eq!(delta("old", 1), "1000");
    assert_eq!(delta("new", 2), "33554432", "a new pod's first row is its whole count");
    assert_eq!(delta("new", 3), "100000");
    assert_eq!(delta("late", 3), "NULL", "nothing read yet");
    assert_eq!(delta("late", 4), "4096", "the first reading of a new pod's counter is its delta");
    assert_eq!(delta("late", 5), "4096");
    assert_eq!(delta("old", 8), "NULL", "across a gap");
    assert_eq!(delta("after-gap", 8), "NULL", "first seen after a gap: it may have started before it");
    let elapsed =
        sql(db, "SELECT elapsed_s, after_gap FROM pod_feature_deltas WHERE owner = 'new' ORDER BY ts LIMIT 1");
    assert_eq!(elapsed, "10|f");
}
