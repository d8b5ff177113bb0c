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
