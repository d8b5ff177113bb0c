//! The SQL analysis layer (migrations/0002_analysis.sql) on a synthetic table with
//! hand-computed expected values: counter deltas and rates with a counter reset, z-scores per
//! node against the rows labelled normal (all, or a window), the paper's raw-counter scoring,
//! anomaly flags at a chosen threshold, and a flat feature scored in units of its catalog floor
//! (min_spread) instead of dividing by zero. disk_read moves in MiB, its floor's unit.

use tests::{have_root, migrated_database, sql};

const EPS: f64 = 1e-9;
const MIB: i64 = 1 << 20;
const T0: &str = "2026-01-01 00:00:00+00";

/// A migrated database holding node 'a' (six rows, the last labelled attack) and node 'b'.
fn synthetic(db: &str) {
    migrated_database(db);
    // node a: disk_read (in MiB below) is a counter that resets between the 3rd and 4th row;
    // load1 a gauge; mem_av_per is constant over the baseline and moves in the attack row.
    let rows_a = [
        (0, 0, 100, 1.0, 50.0),
        (10, 0, 150, 2.0, 50.0),
        (20, 0, 250, 3.0, 50.0),
        (30, 0, 40, 4.0, 50.0),
        (40, 0, 90, 5.0, 50.0),
        (50, 1, 390, 9.0, 70.0),
    ];
    let mut q = String::from("SELECT ensure_day_partitions('2026-01-01 00:00:00Z');");
    // interval_s is the agent's: NULL on the first row after its start, 10 s after that.
    let interval = |s: i32| if s == 0 { "NULL".to_owned() } else { "10".to_owned() };
    for (s, attack, disk, load, mem) in rows_a {
        q += &format!(
            "INSERT INTO node_features (node, ts, interval_s, attack, disk_read, load1, mem_av_per) \
             VALUES ('a', timestamptz '{T0}' + interval '{s} s', {}, {attack}, {}, {load}, {mem});",
            interval(s),
            disk * MIB
        );
    }
    // node b: a flat load1; its baseline must not mix with a's.
    for s in [0, 10, 20] {
        q += &format!(
            "INSERT INTO node_features (node, ts, interval_s, disk_read, load1) \
             VALUES ('b', timestamptz '{T0}' + interval '{s} s', {}, 7, 10.0);",
            interval(s)
        );
    }
    sql(db, &q);
}

fn floats(db: &str, query: &str) -> Vec<Option<f64>> {
    sql(db, query)
        .lines()
        .map(|l| if l.is_empty() { None } else { Some(l.parse().unwrap_or_else(|_| panic!("{l:?} from {query}"))) })
        .collect()
}

fn assert_close(got: &[Option<f64>], want: &[Option<f64>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        match (g, w) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= EPS, "{what}: got {g}, want {w} ({got:?})"),
            (None, None) => {}
            _ => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

/// A delta across a gap is NULL: after an agent restart (interval_s NULL), after missing rows,
/// and after a stalled agent (elapsed more than 1.5 times the previous interval); the rate stays
/// as the average over the gap.
#[test]
fn deltas_across_gaps_are_null() {
    if !have_root("deltas_across_gaps_are_null") {
        return;
    }
    let db = "analysis_gaps";
    migrated_database(db);
    // (second, interval_s, forks_total): steady 10 s rows with 10 forks each; a restart at 60
    // (16 s gap, 160 forks meanwhile); missing rows (90 -> 130); a stall (interval 30 s).
    let rows = [
        (0, None, 0),
        (10, Some(10), 10),
        (20, Some(10), 20),
        (36, None, 180),
        (46, Some(10), 190),
        (56, Some(10), 200),
        (96, Some(10), 600),
        (106, Some(10), 610),
        (136, Some(30), 640),
        (146, Some(10), 650),
    ];
    let mut q = String::from("SELECT ensure_day_partitions('2026-01-01 00:00:00Z');");
    for (s, interval, forks) in rows {
        let interval = interval.map_or("NULL".to_owned(), |i: i32| i.to_string());
        q += &format!(
            "INSERT INTO node_features (node, ts, interval_s, forks_total) \
             VALUES ('g', timestamptz '{T0}' + interval '{s} s', {interval}, {forks});"
        );
    }
    sql(db, &q);
    let deltas = floats(db, "SELECT forks_total_delta FROM node_feature_deltas ORDER BY ts");
    let want = [None, Some(10.0), Some(10.0), None, Some(10.0), Some(10.0), None, Some(10.0), None, Some(10.0)];
    assert_close(&deltas, &want, "forks_total_delta");
    let gaps = sql(db, "SELECT string_agg(after_gap::text, ',' ORDER BY ts) FROM node_feature_deltas");
    assert_eq!(gaps, "true,false,false,true,false,false,true,false,true,false");
    let rates = floats(db, "SELECT forks_total_rate FROM node_feature_deltas WHERE after_gap ORDER BY ts");
    assert_close(&rates, &[None, Some(10.0), Some(10.0), Some(1.0)], "forks_total_rate after gaps");
    // The z-scores never see a gap's delta.
    let scored = sql(db, "SELECT count(*) FROM node_feature_values WHERE feature = 'forks_total' AND scored > 10");
    assert_eq!(scored, "0");
}

#[test]
fn sql_deltas_zscores_and_flags_match_hand_computed_values() {
    if !have_root("sql_deltas_zscores_and_flags_match_hand_computed_values") {
        return;
    }
    let db = "analysis_sql";
    synthetic(db);

    // Deltas and rates: the reset (250 -> 40) gives NULL, never -210.
    let deltas = floats(db, "SELECT disk_read_delta FROM node_feature_deltas WHERE node = 'a' ORDER BY ts");
    let mib = |v: &[Option<f64>]| v.iter().map(|d| d.map(|d| d * MIB as f64)).collect::<Vec<_>>();
    assert_close(&deltas, &mib(&[None, Some(50.0), Some(100.0), None, Some(50.0), Some(300.0)]), "disk_read_delta");
    let rates = floats(db, "SELECT disk_read_rate FROM node_feature_deltas WHERE node = 'a' ORDER BY ts");
    assert_close(&rates, &mib(&[None, Some(5.0), Some(10.0), None, Some(5.0), Some(30.0)]), "disk_read_rate");
    let elapsed = floats(db, "SELECT elapsed_s FROM node_feature_deltas WHERE node = 'b' ORDER BY ts");
    assert_close(&elapsed, &[None, Some(10.0), Some(10.0)], "elapsed_s");

    // Counter scored on its delta. Baseline = normal rows' deltas {50, 100, 50}:
    // mean 200/3, sample variance ((-50/3)^2 * 2 + (100/3)^2) / 2 = 2500/3.
    let mean = 200.0 / 3.0;
    let sd = (2500.0f64 / 3.0).sqrt();
    let z = floats(db, "SELECT z FROM node_feature_zscore WHERE node = 'a' AND feature = 'disk_read' ORDER BY ts");
    let want: Vec<Option<f64>> = [None, Some(50.0), Some(100.0), None, Some(50.0), Some(300.0)]
        .iter()
        .map(|d| d.map(|d| (d - mean) / sd))
        .collect();
    assert_close(&z, &want, "z(disk_read delta)");
    assert_close(
        &floats(db, "SELECT baseline_mean FROM node_feature_zscore WHERE node = 'a' AND feature = 'disk_read' LIMIT 1"),
        &[Some(mean * MIB as f64)],
        "baseline mean",
    );

    // Gauge scored as it is. Baseline {1..5}: mean 3, sample sd sqrt(10/4).
    let z = floats(db, "SELECT z FROM node_feature_zscore WHERE node = 'a' AND feature = 'load1' ORDER BY ts");
    let sd = 2.5f64.sqrt();
    let want: Vec<Option<f64>> = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0].iter().map(|v| Some((v - 3.0) / sd)).collect();
    assert_close(&z, &want, "z(load1)");

    // Zero variance over the baseline: the spread is the catalog's floor (mem_av_per: 0.5 %),
    // so the normal rows score 0 and the attack row's move of 20 points scores 40, flagged.
    let z = floats(db, "SELECT z FROM node_feature_zscore WHERE node = 'a' AND feature = 'mem_av_per' ORDER BY ts");
    assert_close(&z, &[Some(0.0), Some(0.0), Some(0.0), Some(0.0), Some(0.0), Some(40.0)], "z(mem_av_per)");
    // Node b has its own (flat) baseline: nothing flagged there, nothing borrowed from a.
    assert_eq!(sql(db, "SELECT count(*) FROM node_feature_zscore WHERE node = 'b' AND anomalous"), "0");
    assert_eq!(sql(db, "SELECT DISTINCT z FROM node_feature_zscore WHERE node = 'b' AND feature = 'load1'"), "0");

    // Flags at the default threshold 2.0: only the attack row, on disk_read, load1 and
    // mem_av_per (z = 8.08, 3.79 and 40). At threshold 4.0 load1 drops out.
    assert_eq!(
        sql(db, "SELECT ts - timestamptz '2026-01-01 00:00:00+00', anomalous_features FROM node_anomalies"),
        "00:00:50|{disk_read,load1,mem_av_per}"
    );
    assert_eq!(
        sql(db, "SELECT anomalous_features FROM node_feature_flags(4.0) WHERE anomalous"),
        "{disk_read,mem_av_per}"
    );
    assert_close(
        &floats(db, "SELECT max_abs_z FROM node_feature_flags() WHERE node = 'a' ORDER BY ts DESC LIMIT 1"),
        &[Some(40.0)],
        "max_abs_z",
    );

    // A baseline window: rows up to T0 + 20 s give load1 {1, 2, 3}: mean 2, sd 1; z(9) = 7.
    assert_close(
        &floats(
            db,
            "SELECT z FROM node_feature_zscores(2.0, NULL, timestamptz '2026-01-01 00:00:20+00') \
             WHERE node = 'a' AND feature = 'load1' ORDER BY ts DESC LIMIT 1",
        ),
        &[Some(7.0)],
        "windowed z",
    );

    // The paper's way, raw counters: baseline {100, 150, 250, 40, 90}: mean 126,
    // sample variance 25320 / 4; z(390) = 264 / sqrt(6330).
    assert_close(
        &floats(
            db,
            "SELECT z FROM node_feature_zscores(score_raw_counters => true) \
             WHERE node = 'a' AND feature = 'disk_read' ORDER BY ts DESC LIMIT 1",
        ),
        &[Some(264.0 / 6330.0f64.sqrt())],
        "raw-counter z",
    );
}
