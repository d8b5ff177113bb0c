//! One row of node_features: identity, the 24 procfs features, the eBPF per-interval counts and
//! the streaming detector's verdict.
//!
//! The columns are declared once, in [`columns!`] below: each one's name, storage type and the
//! field that holds it. The INSERT's column list and parameters, the JSON printed by `print`,
//! and the spool's self-describing records (spool.rs, which replays rows by column name) all
//! follow from that one list, so they cannot disagree with each other.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_common::{Event, EVENT_COUNT};
use serde::{ser::SerializeMap, Serialize, Serializer};
use tokio_postgres::types::ToSql;

use crate::{collector::ProcfsFeatures, features::FEATURE_COUNT, timefmt::rfc3339_micros};

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub node: String,
    pub ts: SystemTime,
    /// Seconds since this agent's previous sample; None on the first row after start.
    pub interval_s: Option<f64>,
    pub procfs: ProcfsFeatures,
    pub est_conn: Option<i32>,
    pub lis_conn: Option<i32>,
    /// Events during this row's interval, in [`Event`] order; None when not counted.
    pub ebpf: [Option<i64>; EVENT_COUNT],
    /// The streaming detector's verdict on this row (see detector.rs).
    pub verdict: Verdict,
}

/// The detector's verdict: both fields are None while it warms up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Largest |z| over the features.
    pub anomaly_score: Option<f64>,
    /// The feature columns whose |z| exceeded the threshold; empty for a normal row.
    pub anomalous_features: Option<Vec<String>>,
}

impl Verdict {
    pub fn is_anomalous(&self) -> bool {
        self.anomalous_features.as_ref().is_some_and(|f| !f.is_empty())
    }
}

/// How a column is stored: its Postgres type, and its tag in the spool's segment header (the
/// tag numbers are part of the spool format and never change meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ColumnType {
    /// `text`, never NULL.
    Text = 1,
    /// `timestamptz`, never NULL; microseconds since the Unix epoch.
    Timestamp = 2,
    /// `double precision`
    Float8 = 3,
    /// `bigint`
    Int8 = 4,
    /// `integer`
    Int4 = 5,
    /// `text[]`
    TextArray = 6,
}

impl ColumnType {
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => ColumnType::Text,
            2 => ColumnType::Timestamp,
            3 => ColumnType::Float8,
            4 => ColumnType::Int8,
            5 => ColumnType::Int4,
            6 => ColumnType::TextArray,
            _ => return None,
        })
    }
}

/// One column's value, typed; `Null` for SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    /// Microseconds since the Unix epoch (negative before it).
    Timestamp(i64),
    Float8(f64),
    Int8(i64),
    Int4(i32),
    TextArray(Vec<String>),
}

impl Value {
    /// The value as a column of type `to`, or None when it does not fit (a spooled value whose
    /// column changed type in a later release). Integers widen, and become floats.
    pub fn convert(self, to: ColumnType) -> Option<Value> {
        use Value as V;
        Some(match (self, to) {
            (V::Null, _) => V::Null,
            (v @ V::Text(_), ColumnType::Text)
            | (v @ V::Timestamp(_), ColumnType::Timestamp)
            | (v @ V::Float8(_), ColumnType::Float8)
            | (v @ V::Int8(_), ColumnType::Int8)
            | (v @ V::Int4(_), ColumnType::Int4)
            | (v @ V::TextArray(_), ColumnType::TextArray) => v,
            (V::Int4(i), ColumnType::Int8) => V::Int8(i.into()),
            (V::Int8(i), ColumnType::Int4) => V::Int4(i32::try_from(i).ok()?),
            (V::Int4(i), ColumnType::Float8) => V::Float8(i.into()),
            (V::Int8(i), ColumnType::Float8) => V::Float8(i as f64),
            _ => return None,
        })
    }
}

/// A Rust type that holds one column.
pub trait ColumnValue: Sized {
    const TYPE: ColumnType;
    fn to_value(&self) -> Value;
    /// None when the value is not of [`Self::TYPE`] (after [`Value::convert`] it always is).
    fn from_value(v: Value) -> Option<Self>;
}

impl ColumnValue for String {
    const TYPE: ColumnType = ColumnType::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl ColumnValue for SystemTime {
    const TYPE: ColumnType = ColumnType::Timestamp;
    fn to_value(&self) -> Value {
        Value::Timestamp(match self.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        })
    }
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Timestamp(m) if m >= 0 => UNIX_EPOCH.checked_add(Duration::from_micros(m as u64)),
            Value::Timestamp(m) => UNIX_EPOCH.checked_sub(Duration::from_micros(m.unsigned_abs())),
            _ => None,
        }
    }
}

macro_rules! nullable_column_value {
    ($($t:ty => $variant:ident),*) => {$(
        impl ColumnValue for Option<$t> {
            const TYPE: ColumnType = ColumnType::$variant;
            fn to_value(&self) -> Value {
                self.clone().map_or(Value::Null, Value::$variant)
            }
            fn from_value(v: Value) -> Option<Self> {
                match v {
                    Value::Null => Some(None),
                    Value::$variant(x) => Some(Some(x)),
                    _ => None,
                }
            }
        }
    )*};
}
nullable_column_value!(f64 => Float8, i64 => Int8, i32 => Int4, Vec<String> => TextArray);

/// Declares every column once: `name => field path in FeatureRow`, in INSERT order. Generates
/// [`COLUMNS`], [`column_types`], [`FeatureRow::params`], [`FeatureRow::values`] and
/// [`FeatureRow::set`]. `attack` and `attack_type` are the labellers', never ours.
macro_rules! columns {
    ($($name:literal => ($($field:tt)+)),* $(,)?) => {
        /// Column names in INSERT order.
        pub const COLUMNS: [&str; [$($name),*].len()] = [$($name),*];

        /// Each column's type, in [`COLUMNS`] order.
        pub fn column_types() -> [ColumnType; COLUMNS.len()] {
            fn type_of<T: ColumnValue>(_: fn(&FeatureRow) -> &T) -> ColumnType {
                T::TYPE
            }
            [$(type_of(|r: &FeatureRow| &r.$($field)+)),*]
        }

        impl FeatureRow {
            /// The row's values in [`COLUMNS`] order, as bound parameters.
            pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$(&self.$($field)+ as &(dyn ToSql + Sync)),*]
            }

            /// The row's values in [`COLUMNS`] order.
            pub fn values(&self) -> [Value; COLUMNS.len()] {
                [$(ColumnValue::to_value(&self.$($field)+)),*]
            }

            /// Sets column `index` of [`COLUMNS`]; false if the value is not of its type.
            pub fn set(&mut self, index: usize, value: Value) -> bool {
                let mut i = 0usize;
                $(
                    if i == index {
                        return match ColumnValue::from_value(value) {
                            Some(v) => {
                                self.$($field)+ = v;
                                true
                            }
                            None => false,
                        };
                    }
                    i += 1;
                )*
                let _ = i;
                false
            }
        }
    };
}

columns! {
    "node" => (node),
    "ts" => (ts),
    "interval_s" => (interval_s),
    "cpu_sec_idle" => (procfs.cpu_sec_idle),
    "disk_av_per" => (procfs.disk_av_per),
    "disk_read" => (procfs.disk_read),
    "disk_write" => (procfs.disk_write),
    "net_receive" => (procfs.net_receive),
    "mem_pressure" => (procfs.mem_pressure),
    "mem_av_per" => (procfs.mem_av_per),
    "forks_total" => (procfs.forks_total),
    "intr" => (procfs.intr),
    "load1" => (procfs.load1),
    "load5" => (procfs.load5),
    "load15" => (procfs.load15),
    "receive_drop" => (procfs.receive_drop),
    "receive_errs" => (procfs.receive_errs),
    "transmit_packets" => (procfs.transmit_packets),
    "tcp_sock_alloc" => (procfs.tcp_sock_alloc),
    "tcp_sock_inuse" => (procfs.tcp_sock_inuse),
    "tcp_sock_mem" => (procfs.tcp_sock_mem),
    "udp_sock_inuse" => (procfs.udp_sock_inuse),
    "udp_sock_mem" => (procfs.udp_sock_mem),
    "ipv4_sock_inuse" => (procfs.ipv4_sock_inuse),
    "est_conn" => (est_conn),
    "lis_conn" => (lis_conn),
    "open_fds" => (procfs.open_fds),
    "ebpf_forks" => (ebpf[Event::Fork as usize]),
    "ebpf_execs" => (ebpf[Event::Exec as usize]),
    "ebpf_exits" => (ebpf[Event::Exit as usize]),
    "tcp_to_est" => (ebpf[Event::TcpToEstablished as usize]),
    "tcp_to_syn_sent" => (ebpf[Event::TcpToSynSent as usize]),
    "tcp_to_syn_recv" => (ebpf[Event::TcpToSynRecv as usize]),
    "tcp_to_close" => (ebpf[Event::TcpToClose as usize]),
    "tcp_to_listen" => (ebpf[Event::TcpToListen as usize]),
    "tcp_conn_failed" => (ebpf[Event::TcpConnFailed as usize]),
    "tcp_rst_sent" => (ebpf[Event::TcpRstSent as usize]),
    "tcp_rst_recv" => (ebpf[Event::TcpRstRecv as usize]),
    "sock_alloc_tcp" => (ebpf[Event::SockAllocTcp as usize]),
    "sock_alloc_udp" => (ebpf[Event::SockAllocUdp as usize]),
    "sock_alloc_unix" => (ebpf[Event::SockAllocUnix as usize]),
    "sock_alloc_raw" => (ebpf[Event::SockAllocRaw as usize]),
    "sock_alloc_other" => (ebpf[Event::SockAllocOther as usize]),
    "anomaly_score" => (verdict.anomaly_score),
    "anomalous_features" => (verdict.anomalous_features),
}

/// Index of a column in [`COLUMNS`].
pub fn column_index(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == name)
}

/// The INSERT of `rows` rows that every row goes through; a retried row meets its own
/// (node, ts) and does nothing.
pub fn insert_sql(rows: usize) -> String {
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("${}", r * COLUMNS.len() + i)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO node_features ({}) VALUES {} ON CONFLICT (node, ts) DO NOTHING",
        COLUMNS.join(", "),
        tuples.join(", ")
    )
}

impl FeatureRow {
    /// A row of `node` at `ts` with every other column NULL.
    pub fn empty(node: String, ts: SystemTime) -> Self {
        FeatureRow {
            node,
            ts,
            interval_s: None,
            procfs: ProcfsFeatures::default(),
            est_conn: None,
            lis_conn: None,
            ebpf: [None; EVENT_COUNT],
            verdict: Verdict::default(),
        }
    }

    /// The scored features' raw values, in [`crate::features::FEATURES`] order.
    pub fn feature_values(&self) -> [Option<f64>; FEATURE_COUNT] {
        let p = &self.procfs;
        let i = |v: Option<i64>| v.map(|v| v as f64);
        let i32f = |v: Option<i32>| v.map(f64::from);
        let mut out = [None; FEATURE_COUNT];
        let procfs = [
            p.cpu_sec_idle,
            p.disk_av_per,
            i(p.disk_read),
            i(p.disk_write),
            i(p.net_receive),
            i(p.mem_pressure),
            p.mem_av_per,
            i(p.forks_total),
            i(p.intr),
            p.load1,
            p.load5,
            p.load15,
            i(p.receive_drop),
            i(p.receive_errs),
            i(p.transmit_packets),
            i32f(p.tcp_sock_alloc),
            i32f(p.tcp_sock_inuse),
            i32f(p.tcp_sock_mem),
            i32f(p.udp_sock_inuse),
            i32f(p.udp_sock_mem),
            i32f(p.ipv4_sock_inuse),
            i32f(self.est_conn),
            i32f(self.lis_conn),
            i(p.open_fds),
        ];
        out[..24].copy_from_slice(&procfs);
        for (o, c) in out[24..].iter_mut().zip(self.ebpf) {
            *o = i(c);
        }
        out
    }

    pub fn ebpf_count(&self, e: Event) -> Option<i64> {
        self.ebpf[e as usize]
    }
}

/// JSON object with exactly the [`COLUMNS`] as keys, in order; ts as RFC 3339 UTC.
impl Serialize for FeatureRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(COLUMNS.len()))?;
        for (name, value) in COLUMNS.iter().zip(self.values()) {
            match value {
                Value::Null => m.serialize_entry(name, &None::<()>)?,
                Value::Text(t) => m.serialize_entry(name, &t)?,
                Value::Timestamp(_) => m.serialize_entry(name, &rfc3339_micros(self.ts))?,
                Value::Float8(f) => m.serialize_entry(name, &f)?,
                Value::Int8(i) => m.serialize_entry(name, &i)?,
                Value::Int4(i) => m.serialize_entry(name, &i)?,
                Value::TextArray(a) => m.serialize_entry(name, &a)?,
            }
        }
        m.end()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row whose every column holds a value no other column holds, so a swapped pair of
    /// columns anywhere shows.
    pub(crate) fn distinct_row() -> FeatureRow {
        let mut row =
            FeatureRow::empty("distinct-node".into(), UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456));
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

    #[test]
    fn every_column_is_set_and_read_back_at_its_own_place() {
        let mut row = distinct_row();
        let values = row.values();
        let mut seen = Vec::new();
        for (i, v) in values.iter().enumerate() {
            assert_ne!(*v, Value::Null, "{}", COLUMNS[i]);
            assert!(!seen.contains(v), "{} repeats a value", COLUMNS[i]);
            seen.push(v.clone());
            let mut copy = FeatureRow::empty(String::new(), UNIX_EPOCH);
            for (j, v) in values.iter().enumerate() {
                assert!(copy.set(j, v.clone()));
            }
            assert_eq!(copy, row);
        }
        assert_eq!(row.params().len(), COLUMNS.len());
        // Field by field, by name: the declaration maps each name to its own field.
        assert_eq!(values[column_index("load5").unwrap()], Value::Float8(row.procfs.load5.unwrap()));
        assert_eq!(values[column_index("load15").unwrap()], Value::Float8(row.procfs.load15.unwrap()));
        assert_eq!(values[column_index("est_conn").unwrap()], Value::Int4(row.est_conn.unwrap()));
        assert_eq!(values[column_index("open_fds").unwrap()], Value::Int8(row.procfs.open_fds.unwrap()));
        assert!(!row.set(column_index("load1").unwrap(), Value::Int8(3)), "a value of another type is refused");
        assert!(!row.set(COLUMNS.len(), Value::Null), "no column past the last");
    }

    #[test]
    fn columns_params_and_json_agree() {
        let row = distinct_row();
        let json = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = COLUMNS.to_vec();
        let mut got = keys.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(COLUMNS[27 + i], e.column());
            assert_eq!(json[e.column()], row.ebpf[i].unwrap());
        }
        assert_eq!(json["est_conn"], row.est_conn.unwrap());
        assert_eq!(json["load15"], row.procfs.load15.unwrap());
        assert_eq!(json["ts"], "2023-11-14T22:13:20.123456Z");
        let sql = insert_sql(1);
        assert!(sql.contains("$45") && !sql.contains("$46"), "{sql}");
        let sql = insert_sql(3);
        assert!(sql.contains("($91, $92") && sql.contains("$135)") && !sql.contains("$136"), "{sql}");
    }
}
