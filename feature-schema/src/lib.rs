//! The one declaration of a `node_features` row, and everything that follows from it.
//!
//! [`columns.rs`](columns) lists every column once: its name, Rust type (hence SQL type), role
//! (identity, scored feature with its kind and minimum spread, eBPF event, verdict), unit,
//! source and one-line meaning. From that list come:
//! - [`FeatureRow`], the row type, and its INSERT ([`insert_sql`], [`FeatureRow::params`]);
//! - the JSON `print` writes ([`FeatureRow`]'s `Serialize`);
//! - the spool's self-describing column list ([`COLUMNS`], [`column_types`], [`FeatureRow::set`]);
//! - the scored features ([`FEATURES`]) the detector, export and plot use;
//! - which column each eBPF [`Event`](agent_common::Event) feeds ([`event_column`]);
//! - the generated SQL (feature catalog and analysis views) and the tables of docs/schema.md
//!   ([`generate`], written by `cargo xtask gen`; CI fails when the committed copies are stale).
//!
//! Adding a column is: one line in columns.rs, its source (a procfs parser or an eBPF hook), one
//! migration adding the column, and `cargo xtask gen` (docs/schema.md, "Adding a column").
mod columns;
pub mod features;
pub mod generate;
pub mod pods;
pub mod timefmt;
mod value;

pub use columns::*;
pub use features::{event_column, Direction, Feature, Kind, Role, FEATURES, FEATURE_COUNT};
pub use value::{ColumnType, ColumnValue, Value};

/// One column's declaration, as [`columns!`] records it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub role: Role,
    /// Unit of the stored value ("" when it has none).
    pub unit: &'static str,
    /// Where the value comes from (file, hook or option).
    pub source: &'static str,
    /// One line saying what the value means.
    pub meaning: &'static str,
}

/// The columns that belong to the labellers, never to the agent: in the table, not in the row.
pub const LABEL_COLUMNS: [(&str, &str, &str); 2] = [
    (
        "attack",
        "smallint NOT NULL DEFAULT 0",
        "the label: 0 normal, 1 attack; set by labelling tools, never by the agent",
    ),
    ("attack_type", "text", "optional free-form label, e.g. `port-scan`"),
];

/// Index of a column in [`COLUMNS`].
pub fn column_index(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == name)
}

/// Each column's type, in [`COLUMNS`] order.
pub fn column_types() -> [ColumnType; COLUMN_COUNT] {
    SCHEMA.map(|c| c.ty)
}

/// The parameter types of [`insert_sql`]`(rows)`, in order: the row's column types, once per row.
pub fn insert_param_types(rows: usize) -> Vec<tokio_postgres::types::Type> {
    let one = column_types().map(ColumnType::pg_type);
    (0..rows).flat_map(|_| one.iter().cloned()).collect()
}

/// The INSERT of `rows` rows that every row goes through; a retried row meets its own
/// (node, ts) and does nothing.
pub fn insert_sql(rows: usize) -> String {
    multi_row_insert("node_features", &COLUMNS, rows, "(node, ts)")
}

/// `INSERT INTO table (columns) VALUES ($1, ...), ... ON CONFLICT key DO NOTHING` for `rows`
/// rows: the form both row types are written in.
pub fn multi_row_insert(table: &str, columns: &[&str], rows: usize, key: &str) -> String {
    let n = columns.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=n).map(|i| format!("${}", r * n + i)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    format!("INSERT INTO {table} ({}) VALUES {} ON CONFLICT {key} DO NOTHING", columns.join(", "), tuples.join(", "))
}

/// The detector's verdict on a row: both fields are None while it warms up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Largest |z| over the features.
    pub anomaly_score: Option<f64>,
    /// The feature columns whose |z| exceeded the threshold; empty for a normal row.
    pub anomalous_features: Option<Vec<String>>,
}

impl FeatureRow {
    /// The events the row counts: `event`'s column, or None when the column is NULL.
    pub fn event(&self, event: agent_common::Event) -> Option<i64> {
        match self.get(event_column(event)) {
            Value::Int8(n) => Some(n),
            _ => None,
        }
    }

    /// Sets `event`'s column.
    pub fn set_event(&mut self, event: agent_common::Event, count: Option<i64>) {
        let set = self.set(event_column(event), count.map_or(Value::Null, Value::Int8));
        debug_assert!(set, "event columns are bigint");
    }

    /// Puts the row, and the pod rows of its interval, on the interval's boundary `ts`.
    pub fn stamp(&mut self, ts: std::time::SystemTime) {
        self.ts = ts;
        for pod in &mut self.pods {
            pod.ts = ts;
        }
    }
}

/// The verdict's accessors of a row type with `anomaly_score` and `anomalous_features` columns
/// (the node row and the pod row), declared once.
#[macro_export]
macro_rules! verdict_methods {
    ($row:ty) => {
        impl $row {
            /// The agent detector's verdict on this row.
            pub fn verdict(&self) -> $crate::Verdict {
                $crate::Verdict {
                    anomaly_score: self.anomaly_score,
                    anomalous_features: self.anomalous_features.clone(),
                }
            }

            pub fn set_verdict(&mut self, v: $crate::Verdict) {
                self.anomaly_score = v.anomaly_score;
                self.anomalous_features = v.anomalous_features;
            }

            /// True when the detector flagged at least one of the row's features.
            pub fn is_anomalous(&self) -> bool {
                self.anomalous_features.as_ref().is_some_and(|f| !f.is_empty())
            }
        }
    };
}

verdict_methods!(FeatureRow);

/// JSON object with exactly the [`COLUMNS`] as keys, in order; ts as RFC 3339 UTC.
impl serde::Serialize for FeatureRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(COLUMN_COUNT))?;
        for (name, value) in COLUMNS.iter().zip(self.values()) {
            match value {
                Value::Null => m.serialize_entry(name, &None::<()>)?,
                Value::Text(t) => m.serialize_entry(name, &t)?,
                Value::Timestamp(_) => m.serialize_entry(name, &timefmt::rfc3339_micros(self.ts))?,
                Value::Float8(f) => m.serialize_entry(name, &f)?,
                Value::Int8(i) => m.serialize_entry(name, &i)?,
                Value::Int4(i) => m.serialize_entry(name, &i)?,
                Value::TextArray(a) => m.serialize_entry(name, &a)?,
            }
        }
        m.end()
    }
}

/// A row whose every column holds a value no other column holds, so a swapped pair of columns
/// anywhere shows; for value-level tests of every path a row takes.
pub fn distinct_row() -> FeatureRow {
    use std::time::{Duration, UNIX_EPOCH};
    let mut row = FeatureRow::empty("distinct-node".into(), UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456));
    for (i, ty) in column_types().iter().enumerate() {
        let n = 1000 + i as i64;
        let v = match ty {
            ColumnType::Text | ColumnType::Timestamp => continue,
            ColumnType::Float8 => Value::Float8(n as f64 + 0.25),
            ColumnType::Int8 => Value::Int8(n * 1_000_000_007),
            ColumnType::Int4 => Value::Int4(n as i32),
            ColumnType::TextArray => Value::TextArray(vec![format!("f{n}"), "ü,\"x\"".into()]),
        };
        assert!(row.set(i, v), "column {}", COLUMNS[i]);
    }
    row
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use agent_common::Event;

    use super::*;

    #[test]
    fn every_column_is_set_and_read_back_at_its_own_place() {
        let row = distinct_row();
        let values = row.values();
        let mut seen = Vec::new();
        for (i, v) in values.iter().enumerate() {
            assert_ne!(*v, Value::Null, "{}", COLUMNS[i]);
            assert!(!seen.contains(v), "{} repeats a value", COLUMNS[i]);
            assert_eq!(row.get(i), *v);
            seen.push(v.clone());
        }
        let mut copy = FeatureRow::empty(String::new(), UNIX_EPOCH);
        for (j, v) in values.iter().enumerate() {
            assert!(copy.set(j, v.clone()));
        }
        assert_eq!(copy, row);
        assert_eq!(row.params().len(), COLUMN_COUNT);
        // Field by field, by name: the declaration maps each name to its own field.
        assert_eq!(values[column_index("load5").unwrap()], Value::Float8(row.load5.unwrap()));
        assert_eq!(values[column_index("load15").unwrap()], Value::Float8(row.load15.unwrap()));
        assert_eq!(values[column_index("est_conn").unwrap()], Value::Int4(row.est_conn.unwrap()));
        assert_eq!(values[column_index("open_fds").unwrap()], Value::Int8(row.open_fds.unwrap()));
        assert!(!copy.set(column_index("load1").unwrap(), Value::Int8(3)), "a value of another type is refused");
        assert!(!copy.set(COLUMN_COUNT, Value::Null), "no column past the last");
        assert_eq!(row.get(COLUMN_COUNT), Value::Null);
    }

    #[test]
    fn columns_and_json_agree_by_name() {
        let row = distinct_row();
        let json = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = COLUMNS.to_vec();
        let mut got = keys.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(json["ebpf_forks"], row.ebpf_forks.unwrap());
        assert_eq!(json["tcp_rst_recv"], row.tcp_rst_recv.unwrap());
        assert_eq!(json["est_conn"], row.est_conn.unwrap());
        assert_eq!(json["load15"], row.load15.unwrap());
        assert_eq!(json["ts"], "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn insert_has_one_parameter_per_column_and_row() {
        let n = COLUMN_COUNT;
        let sql = insert_sql(1);
        assert!(sql.contains(&format!("${n})")) && !sql.contains(&format!("${}", n + 1)), "{sql}");
        let sql = insert_sql(3);
        assert!(sql.contains(&format!("(${}, ${}", 2 * n + 1, 2 * n + 2)), "{sql}");
        assert!(sql.contains(&format!("${})", 3 * n)) && !sql.contains(&format!("${}", 3 * n + 1)), "{sql}");
    }

    #[test]
    fn every_event_feeds_its_own_column() {
        let mut row = FeatureRow::empty("n".into(), UNIX_EPOCH);
        for (i, e) in Event::ALL.iter().enumerate() {
            row.set_event(*e, Some(i as i64 + 7));
        }
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(row.event(*e), Some(i as i64 + 7), "{e:?}");
        }
        assert_eq!(row.ebpf_forks, Some(7));
        assert_eq!(row.tcp_to_est, Some(10));
        assert_eq!(row.sock_alloc_other, Some(7 + 15));
        assert_eq!(COLUMNS[event_column(Event::TcpConnFailed)], "tcp_conn_failed");
    }
}
