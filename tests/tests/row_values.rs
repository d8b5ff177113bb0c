//! Value-level test of every path a row takes. A row whose every column holds a value no other
//! column holds (feature_schema::distinct_row) goes through the spool, then the real INSERT
//! into Postgres, then `export` as CSV and as Parquet; at each step it is read back by column
//! name and compared with the original, so two columns swapped anywhere (in the declaration,
//! the INSERT's parameters, the spool codec, the views or the export) fail here.
use std::{collections::HashMap, fs::File, time::Duration};

use agent::delivery::spool::Spool;
use feature_schema::{column_index, distinct_row, FeatureRow, Value, FEATURES, SCHEMA};
use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::Field,
};
use tests::{fresh_spool_dir, have_root, migrated_database, run_lab, sql};

const NODE: &str = "value-node";

/// The row's value of `column` as a number, for the export's float8 columns.
fn number(row: &FeatureRow, column: &str) -> Option<f64> {
    match row.get(column_index(column).unwrap_or_else(|| panic!("no column {column}"))) {
        Value::Float8(f) => Some(f),
        Value::Int8(i) => Some(i as f64),
        Value::Int4(i) => Some(i.into()),
        Value::Null => None,
        v => panic!("{column} is not numeric: {v:?}"),
    }
}

#[test]
fn a_distinct_row_reads_back_by_name_through_spool_insert_csv_and_parquet() {
    if !have_root("a_distinct_row_reads_back_by_name_through_spool_insert_csv_and_parquet") {
        return;
    }
    let mut original = distinct_row();
    original.node = NODE.into();

    // 1. The spool: append, read back, equal.
    let dir = fresh_spool_dir();
    let mut spool = Spool::open(&dir, 1 << 20).unwrap();
    spool.append(&original).unwrap();
    let spooled = spool.read_batch(10).unwrap();
    assert_eq!(spooled, vec![original.clone()], "the spool changed the row");
    drop(spool);
    std::fs::remove_dir_all(&dir).unwrap();

    // 2. The INSERT every row goes through, with the row the spool gave back.
    let url = migrated_database("row_values");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.query_one("SELECT ensure_day_partitions($1)", &[&spooled[0].ts]).await.unwrap();
        let n = client.execute(&feature_schema::insert_sql(1), &spooled[0].params()).await.unwrap();
        assert_eq!(n, 1);
    });
    // Read back by name: Postgres' own JSON of the stored row against the original's values.
    let stored: serde_json::Value = serde_json::from_str(&sql(
        "row_values",
        "SELECT row_to_json(f) FROM (SELECT *, extract(epoch FROM ts)::numeric * 1000000 AS ts_us FROM node_features) f",
    ))
    .unwrap();
    for (i, column) in SCHEMA.iter().enumerate() {
        let got = &stored[column.name];
        let ok = match original.get(i) {
            Value::Text(t) => got == &serde_json::Value::String(t),
            Value::Timestamp(us) => stored["ts_us"].as_f64() == Some(us as f64),
            Value::Float8(f) => got.as_f64() == Some(f),
            Value::Int8(n) => got.as_i64() == Some(n),
            Value::Int4(n) => got.as_i64() == Some(n.into()),
            Value::TextArray(a) => got == &serde_json::json!(a),
            Value::Null => got.is_null(),
        };
        assert!(ok, "column {} holds {got} after the INSERT, not {:?}", column.name, original.get(i));
    }

    // 3. CSV export, read by the header's names.
    let out = run_lab(
        &["export", "--format", "csv", "--output", "-", "--node", NODE],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let records = tests::csv_records(&text);
    assert_eq!(records.len(), 2, "a header and one row: {text}");
    let csv: HashMap<&str, &str> =
        records[0].iter().map(String::as_str).zip(records[1].iter().map(String::as_str)).collect();
    assert_eq!(csv["node"], NODE);
    assert_eq!(csv["anomaly_score"].parse::<f64>().ok(), original.anomaly_score);
    let features: Vec<String> = serde_json::from_str(csv["anomalous_features"]).unwrap();
    assert_eq!(Some(features), original.anomalous_features);
    for f in FEATURES {
        assert_eq!(csv[f.column].parse::<f64>().ok(), number(&original, f.column), "CSV column {}", f.column);
    }

    // 4. Parquet export, read by the schema's names.
    let path = std::env::temp_dir().join(format!("row-values-{}.parquet", std::process::id()));
    let out = run_lab(
        &["export", "--format", "parquet", "--output", path.to_str().unwrap(), "--node", NODE],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
    let rows: Vec<_> = reader.get_row_iter(None).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    let parquet: HashMap<String, Field> = rows[0].get_column_iter().map(|(n, f)| (n.clone(), f.clone())).collect();
    assert_eq!(parquet["node"], Field::Str(NODE.into()));
    assert_eq!(parquet["anomaly_score"], Field::Double(original.anomaly_score.unwrap()));
    let Field::ListInternal(list) = &parquet["anomalous_features"] else {
        panic!("{:?}", parquet["anomalous_features"])
    };
    let list: Vec<Field> = list.elements().to_vec();
    let want: Vec<Field> = original.anomalous_features.clone().unwrap().into_iter().map(Field::Str).collect();
    assert_eq!(list, want);
    // Every feature by name, in its declared type.
    for f in FEATURES {
        let want = match original.get(f.index) {
            Value::Int8(x) => Field::Long(x),
            Value::Int4(x) => Field::Int(x),
            Value::Float8(x) => Field::Double(x),
            v => panic!("{v:?}"),
        };
        assert_eq!(parquet[f.column], want, "Parquet column {}", f.column);
    }
    std::fs::remove_file(&path).unwrap();
}
