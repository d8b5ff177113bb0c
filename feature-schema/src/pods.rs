//! THE declaration of a pod_features row: one row per pod, host service and "other" per node
//! per interval, in three parts, each declared once:
//! - the scalar columns (identity, workload and the agent's verdict), in the `pod_scalars!` list
//!   below (from which come [`PodRow`]'s fields, [`POD_SCALARS`], [`POD_SCALAR_TYPES`], and the
//!   row's `blank`, `params`, `values` and `set`);
//! - the eBPF columns: the node row's event columns (same names, per-interval counts; the node
//!   row's count equals their sum over the interval's pod rows), derived from [`crate::SCHEMA`];
//! - the measured columns, in [`RESOURCES`]: the pod's cgroup v2 files, and its own network
//!   namespace's interfaces and TCP sockets.
//!
//! From these come the INSERT, the spool's encoding, the views, export, plot and the pod_features table of docs/schema.md.
use std::time::SystemTime;

use agent_common::{Event, EVENT_COUNT};
use tokio_postgres::types::ToSql;

use crate::{
    event_column,
    features::{Direction, Feature, Kind, Role},
    ColumnType, ColumnValue, Value, SCHEMA,
};

/// What a pod row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    /// A Kubernetes pod (all its containers' cgroups).
    Pod,
    /// A systemd unit under system.slice (kubelet, containerd, sshd, ...).
    Service,
    /// Everything else on the node: the root cgroup, user sessions, sockets with no owner,
    /// cgroups the agent could not name, and events of cgroups beyond the map's capacity.
    Other,
}

impl OwnerKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Pod => "pod",
            OwnerKind::Service => "service",
            OwnerKind::Other => "other",
        }
    }
}

/// A measured column, read each interval from the pod's (or unit's) cgroup v2 files or from the
/// pod's network namespace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resource {
    pub name: &'static str,
    /// Cumulative counter (SQL deltas) or gauge.
    pub counter: bool,
    /// The agent's detector's floor on the column's spread, in its scored unit (per interval
    /// for a counter, the change since the previous row for a gauge), as a node feature's.
    pub min_spread: f64,
    pub unit: &'static str,
    pub source: &'static str,
    pub meaning: &'static str,
}

/// Index of each resource column in [`PodRow::resources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Res {
    CpuUsage,
    CpuPressure,
    MemoryPressure,
    IoPressure,
    MemoryCurrent,
    OomKills,
    PidsCurrent,
    IoReadBytes,
    IoWriteBytes,
    NetReceive,
    ReceivePackets,
    ReceiveDrop,
    ReceiveErrs,
    NetTransmit,
    TransmitPackets,
    EstConn,
    LisConn,
}

impl Res {
    /// The columns read from the pod's network namespace (NULL unless `network` is `own`).
    pub const NETWORK: [Res; 8] = [
        Res::NetReceive,
        Res::ReceivePackets,
        Res::ReceiveDrop,
        Res::ReceiveErrs,
        Res::NetTransmit,
        Res::TransmitPackets,
        Res::EstConn,
        Res::LisConn,
    ];
}

/// The measured columns, in [`Res`] order. A cgroup column is NULL where the file is absent (a
/// controller not enabled, or a v1 controller on a hybrid host); a network column is NULL for a
/// pod that shares the host's namespace (hostNetwork), for services and "other", and for a pod
/// with no process left to read its namespace through.
pub const RESOURCES: [Resource; 17] = [
    Resource {
        name: "cpu_usage_usec",
        min_spread: 50_000.0,
        counter: true,
        unit: "µs",
        source: "cpu.stat usage_usec",
        meaning: "CPU time used by the pod's tasks, cumulative",
    },
    Resource {
        name: "cpu_pressure_usec",
        min_spread: 100_000.0,
        counter: true,
        unit: "µs",
        source: "cpu.pressure some total",
        meaning: "time some of the pod's tasks waited for a CPU, cumulative",
    },
    Resource {
        name: "memory_pressure_usec",
        min_spread: 100_000.0,
        counter: true,
        unit: "µs",
        source: "memory.pressure some total",
        meaning: "time some of the pod's tasks stalled on memory, cumulative",
    },
    Resource {
        name: "io_pressure_usec",
        min_spread: 100_000.0,
        counter: true,
        unit: "µs",
        source: "io.pressure some total",
        meaning: "time some of the pod's tasks stalled on IO, cumulative",
    },
    Resource {
        name: "memory_current",
        min_spread: 16_777_216.0,
        counter: false,
        unit: "bytes",
        source: "memory.current",
        meaning: "memory charged to the pod now",
    },
    Resource {
        name: "oom_kills",
        min_spread: 0.2,
        counter: true,
        unit: "kills",
        source: "memory.events oom_kill",
        meaning: "processes of the pod killed by the OOM killer, cumulative",
    },
    Resource {
        name: "pids_current",
        min_spread: 2.0,
        counter: false,
        unit: "tasks",
        source: "pids.current",
        meaning: "tasks in the pod now",
    },
    Resource {
        name: "io_read_bytes",
        min_spread: 1_048_576.0,
        counter: true,
        unit: "bytes",
        source: "io.stat rbytes, summed over devices",
        meaning: "bytes the pod read from block devices, cumulative",
    },
    Resource {
        name: "io_write_bytes",
        min_spread: 1_048_576.0,
        counter: true,
        unit: "bytes",
        source: "io.stat wbytes, summed over devices",
        meaning: "bytes the pod wrote to block devices, cumulative",
    },
    Resource {
        name: "net_receive",
        min_spread: 65_536.0,
        counter: true,
        unit: "bytes",
        source: "/proc/<pid>/net/dev of a process in the pod, summed over interfaces but lo",
        meaning: "bytes the pod's network namespace received, cumulative",
    },
    Resource {
        name: "receive_packets",
        min_spread: 50.0,
        counter: true,
        unit: "packets",
        source: "/proc/<pid>/net/dev, as net_receive",
        meaning: "packets the pod's network namespace received, cumulative",
    },
    Resource {
        name: "receive_drop",
        min_spread: 1.0,
        counter: true,
        unit: "packets",
        source: "/proc/<pid>/net/dev, as net_receive",
        meaning: "received packets the pod's interfaces dropped, cumulative",
    },
    Resource {
        name: "receive_errs",
        min_spread: 1.0,
        counter: true,
        unit: "packets",
        source: "/proc/<pid>/net/dev, as net_receive",
        meaning: "receive errors on the pod's interfaces, cumulative",
    },
    Resource {
        name: "net_transmit",
        min_spread: 65_536.0,
        counter: true,
        unit: "bytes",
        source: "/proc/<pid>/net/dev, as net_receive",
        meaning: "bytes the pod's network namespace sent, cumulative",
    },
    Resource {
        name: "transmit_packets",
        min_spread: 50.0,
        counter: true,
        unit: "packets",
        source: "/proc/<pid>/net/dev, as net_receive",
        meaning: "packets the pod's network namespace sent, cumulative",
    },
    Resource {
        name: "est_conn",
        min_spread: 1.0,
        counter: false,
        unit: "sockets",
        source: "eBPF state balance of the pod's namespace, seeded from its /proc/<pid>/net/tcp{,6}",
        meaning: "TCP sockets in ESTABLISHED in the pod's network namespace now",
    },
    Resource {
        name: "lis_conn",
        min_spread: 1.0,
        counter: false,
        unit: "sockets",
        source: "as est_conn",
        meaning: "TCP sockets in LISTEN in the pod's network namespace now",
    },
];

/// Number of resource columns.
pub const RESOURCE_COUNT: usize = RESOURCES.len();

/// Number of scored pod features: every eBPF column and every measured column.
pub const POD_FEATURE_COUNT: usize = EVENT_COUNT + RESOURCE_COUNT;

/// The largest floor on a pod's eBPF event counts per interval (the node's are up to 5).
pub const POD_EVENT_FLOOR: f64 = 1.0;

/// The features the agent's detector scores on a pod row, in [`PodRow::feature_values`] order:
/// the eBPF columns as the node row scores them (with floors of at most [`POD_EVENT_FLOOR`]),
/// then the measured columns (a cumulative
/// counter on its rate per interval, a gauge on its change since the previous row). Every one
/// moves up under attack. `index` is the column's position in [`pod_columns`].
pub const POD_FEATURES: [Feature; POD_FEATURE_COUNT] = {
    let mut out = [Feature::BLANK; POD_FEATURE_COUNT];
    let mut e = 0;
    while e < EVENT_COUNT {
        let column = &SCHEMA[event_column(Event::ALL[e])];
        if let Role::Feature { kind, min_spread, direction, on_change, .. } = column.role {
            // A pod's counts are a fraction of the node's: a pod that never execs and runs a
            // few programs is news, so its event floors are at most one event. Traffic keeps
            // its floor (64 KiB, 50 packets, as the pod's interface counters): a pod's first DNS
            // query is no news.
            let min_spread =
                if min_spread < POD_EVENT_FLOOR || Event::ALL[e].is_traffic() { min_spread } else { POD_EVENT_FLOOR };
            out[e] =
                Feature { column: column.name, kind, min_spread, direction, on_change, index: POD_SCALARS.len() + e };
        }
        e += 1;
    }
    let mut r = 0;
    while r < RESOURCE_COUNT {
        let res = &RESOURCES[r];
        assert!(res.min_spread > 0.0, "every pod feature needs a positive min_spread");
        out[EVENT_COUNT + r] = Feature {
            column: res.name,
            kind: if res.counter { Kind::Counter } else { Kind::Gauge },
            min_spread: res.min_spread,
            direction: Direction::Up,
            on_change: !res.counter,
            index: POD_SCALARS.len() + EVENT_COUNT + r,
        };
        r += 1;
    }
    out
};

/// Generates, from one list of scalar columns (`name: Rust type = "SQL type";` under a doc
/// comment saying what the value means): [`PodRow`], [`POD_SCALARS`], [`POD_SCALAR_TYPES`], and
/// the row's `blank`, `params`, `values` and `set`. The eBPF and measured columns follow them.
macro_rules! pod_scalars {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident : $ty:ty = $sql:literal;
    )*) => {
        /// The scalar columns of a pod row, with their SQL types and meanings, in table order.
        pub const POD_SCALARS: [(&str, &str, &str); [$(stringify!($name)),*].len()] =
            [$((stringify!($name), $sql, concat!($($doc),+).trim_ascii())),*];

        /// The value type of each of [`POD_SCALARS`], from its Rust type.
        pub const POD_SCALAR_TYPES: [ColumnType; POD_SCALARS.len()] = [$(<$ty as ColumnValue>::TYPE),*];

        /// One pod's (or service's, or "other"'s) row for one interval.
        #[derive(Debug, Clone, PartialEq)]
        pub struct PodRow {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
            /// Per-interval counts by [`Event`] index; NULL where the event is not counted per
            /// cgroup.
            pub events: [Option<i64>; EVENT_COUNT],
            /// By [`Res`] index.
            pub resources: [Option<i64>; RESOURCE_COUNT],
        }

        impl PodRow {
            /// A row with no identity yet, to be filled by [`PodRow::set`].
            pub fn blank() -> Self {
                PodRow {
                    $($name: ColumnValue::empty(),)*
                    events: [None; EVENT_COUNT],
                    resources: [None; RESOURCE_COUNT],
                }
            }

            /// The row's values in [`pod_columns`] order, as bound parameters.
            pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                let mut p: Vec<&(dyn ToSql + Sync)> = vec![$(&self.$name as &(dyn ToSql + Sync)),*];
                p.extend(self.events.iter().map(|v| v as &(dyn ToSql + Sync)));
                p.extend(self.resources.iter().map(|v| v as &(dyn ToSql + Sync)));
                p
            }

            /// The row's values in [`pod_columns`] order (the spool's encoding).
            pub fn values(&self) -> Vec<Value> {
                let mut v = vec![$(ColumnValue::to_value(&self.$name)),*];
                v.extend(self.events.iter().map(ColumnValue::to_value));
                v.extend(self.resources.iter().map(ColumnValue::to_value));
                v
            }

            /// Sets column `i` of [`pod_columns`]; false if the value is not of its type.
            pub fn set(&mut self, i: usize, value: Value) -> bool {
                fn put<T: ColumnValue>(slot: &mut T, value: Value) -> bool {
                    match T::from_value(value) {
                        Some(v) => {
                            *slot = v;
                            true
                        }
                        None => false,
                    }
                }
                let mut at = 0usize;
                $(
                    if at == i {
                        return put(&mut self.$name, value);
                    }
                    at += 1;
                )*
                let n = at;
                match i {
                    i if i < n + EVENT_COUNT => put(&mut self.events[i - n], value),
                    i if i < n + EVENT_COUNT + RESOURCE_COUNT => put(&mut self.resources[i - n - EVENT_COUNT], value),
                    _ => false,
                }
            }
        }
    };
}

pod_scalars! {
    /// the node's name, as in node_features
    node: String = "text NOT NULL";
    /// the interval's boundary, the same as the node row's
    ts: SystemTime = "timestamptz NOT NULL";
    /// seconds since the agent's previous sample; NULL on the first row after start
    interval_s: Option<f64> = "double precision";
    /// pod, service or other
    kind: OwnerKind = "text NOT NULL";
    /// the pod's UID, the service's systemd unit, or 'other'
    owner: String = "text NOT NULL";
    /// the pod's namespace (from /var/log/pods); NULL when unknown
    namespace: Option<String> = "text";
    /// the pod's name (from /var/log/pods); NULL when unknown
    pod: Option<String> = "text";
    /// what the row is an instance of: for a pod, namespace/name with the name's controller
    /// suffix removed (ReplicaSet hash, random suffix, StatefulSet ordinal; docs/detection.md);
    /// a service's unit; 'other'. The agent's detector keeps one baseline per workload
    workload: Option<String> = "text";
    /// the pod's QoS class (Guaranteed, Burstable, BestEffort), from its cgroup path
    qos: Option<String> = "text";
    /// cgroups whose counts this row adds up (the pod's own and its containers')
    cgroups: Option<i32> = "integer";
    /// 'own': the pod has its own network namespace, which its network columns describe;
    /// 'host': it shares the host's (hostNetwork, and every service), so its network columns
    /// are NULL; NULL when no process of it was left to tell (and for "other")
    network: Option<String> = "text";
    /// largest z over the pod's features against its workload's baseline, each seen from its
    /// attack direction; NULL while the workload warms up
    anomaly_score: Option<f64> = "double precision";
    /// the features whose z exceeded the threshold, largest first; empty for a normal row,
    /// NULL while the workload warms up
    anomalous_features: Option<Vec<String>> = "text[]";
}

crate::verdict_methods!(PodRow);

/// A pod's network namespace as the `network` column names it.
pub const NETWORK_OWN: &str = "own";
pub const NETWORK_HOST: &str = "host";

impl PodRow {
    pub fn event(&self, e: Event) -> Option<i64> {
        self.events[e as usize]
    }

    pub fn resource(&self, r: Res) -> Option<i64> {
        self.resources[r as usize]
    }

    /// The scored features' raw values, in [`POD_FEATURES`] order.
    pub fn feature_values(&self) -> [Option<f64>; POD_FEATURE_COUNT] {
        let mut out = [None; POD_FEATURE_COUNT];
        for (slot, v) in out.iter_mut().zip(self.events.iter().chain(&self.resources)) {
            *slot = v.map(|v| v as f64);
        }
        out
    }

    /// How the row is named in a log line and in the node row: `namespace/pod` for a pod whose
    /// name is known, else its owner (a service's unit, a pod's UID, "other").
    pub fn display_name(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => self.owner.clone(),
        }
    }
}

/// `kind` is stored as its text.
impl ColumnValue for OwnerKind {
    const TYPE: crate::ColumnType = crate::ColumnType::Text;
    fn empty() -> Self {
        OwnerKind::Other
    }
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_owned())
    }
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(t) => OwnerKind::parse(&t),
            _ => None,
        }
    }
}

impl ToSql for OwnerKind {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

impl OwnerKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pod" => Some(OwnerKind::Pod),
            "service" => Some(OwnerKind::Service),
            "other" => Some(OwnerKind::Other),
            _ => None,
        }
    }
}

/// JSON object with exactly the [`pod_columns`] as keys, in order; ts as RFC 3339 UTC (what
/// `feature-agent print --pod-rows` writes after each node row).
impl serde::Serialize for PodRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let columns = pod_columns();
        let mut m = s.serialize_map(Some(columns.len()))?;
        for ((name, _), value) in columns.iter().zip(self.values()) {
            match value {
                Value::Null => m.serialize_entry(name, &None::<()>)?,
                Value::Text(t) => m.serialize_entry(name, &t)?,
                Value::Timestamp(_) => m.serialize_entry(name, &crate::timefmt::rfc3339_micros(self.ts))?,
                Value::Float8(f) => m.serialize_entry(name, &f)?,
                Value::Int8(i) => m.serialize_entry(name, &i)?,
                Value::Int4(i) => m.serialize_entry(name, &i)?,
                Value::TextArray(a) => m.serialize_entry(name, &a)?,
            }
        }
        m.end()
    }
}

/// Each pod column's type, in [`pod_columns`] order.
pub fn pod_column_types() -> Vec<ColumnType> {
    let mut types = POD_SCALAR_TYPES.to_vec();
    types.resize(pod_columns().len(), ColumnType::Int8);
    types
}

/// The event column names of a pod row: the node row's, in [`Event`] order.
pub fn event_columns() -> [&'static str; EVENT_COUNT] {
    Event::ALL.map(|e| SCHEMA[event_column(e)].name)
}

/// Every column of a pod row the agent writes, with its SQL type, in table order.
pub fn pod_columns() -> Vec<(&'static str, &'static str)> {
    let mut cols: Vec<(&str, &str)> = POD_SCALARS.iter().map(|(n, t, _)| (*n, *t)).collect();
    cols.extend(event_columns().iter().map(|n| (*n, "bigint")));
    cols.extend(RESOURCES.iter().map(|r| (r.name, "bigint")));
    cols
}

/// The INSERT of `rows` pod rows; a retried row meets its own key and does nothing.
pub fn pod_insert_sql(rows: usize) -> String {
    let cols: Vec<&str> = pod_columns().iter().map(|(c, _)| *c).collect();
    crate::multi_row_insert("pod_features", &cols, rows, "(node, ts, kind, owner)")
}

/// The parameter types of [`pod_insert_sql`]`(rows)`, in order: each pod column's type (the
/// event and resource columns are bigint), once per row.
pub fn pod_insert_param_types(rows: usize) -> Vec<tokio_postgres::types::Type> {
    let mut one: Vec<tokio_postgres::types::Type> = POD_SCALAR_TYPES.iter().map(|t| t.pg_type()).collect();
    one.extend(std::iter::repeat_n(tokio_postgres::types::Type::INT8, event_columns().len() + RESOURCES.len()));
    (0..rows).flat_map(|_| one.iter().cloned()).collect()
}

/// Most rows one INSERT may carry (Postgres takes at most 65535 parameters).
pub fn pod_rows_per_insert() -> usize {
    65535 / pod_columns().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_score_traffic_with_traffic_floors_and_kernel_events_with_one_event() {
        let floor = |name: &str| POD_FEATURES.iter().find(|f| f.column == name).map(|f| f.min_spread);
        assert_eq!(floor("tx_outside_bytes"), Some(65536.0));
        assert_eq!(floor("rx_cluster_packets"), Some(50.0));
        assert_eq!(floor("ebpf_forks"), Some(1.0));
        assert_eq!(floor("ebpf_folios_dirtied"), Some(1.0));
    }

    #[test]
    fn columns_are_unique_and_params_match() {
        let cols = pod_columns();
        let mut names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cols.len());
        let row = PodRow { node: "n".into(), owner: "other".into(), ..PodRow::blank() };
        assert_eq!(row.params().len(), cols.len());
        assert!(pod_insert_sql(2).contains(&format!("${}", 2 * cols.len())));
        assert_eq!(event_columns()[Event::Fork as usize], "ebpf_forks");
    }

    /// The types an unnamed INSERT declares are the table's: each column's declared SQL type.
    #[test]
    fn insert_param_types_follow_the_declared_sql_types() {
        use tokio_postgres::types::Type;
        let types = pod_insert_param_types(2);
        let cols = pod_columns();
        assert_eq!(types.len(), 2 * cols.len());
        for (i, (name, sql)) in cols.iter().enumerate() {
            let want = match sql.split(" NOT NULL").next().unwrap() {
                "text" => Type::TEXT,
                "timestamptz" => Type::TIMESTAMPTZ,
                "double precision" => Type::FLOAT8,
                "bigint" => Type::INT8,
                "integer" => Type::INT4,
                "text[]" => Type::TEXT_ARRAY,
                other => panic!("{name}: no parameter type for {other:?}"),
            };
            assert_eq!((name, &types[i]), (name, &want));
            assert_eq!(types[i + cols.len()], want, "the second row repeats the first");
        }
    }

    #[test]
    fn values_and_set_round_trip_every_column() {
        let mut row = PodRow::blank();
        row.node = "n".into();
        row.ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        row.interval_s = Some(10.5);
        row.kind = OwnerKind::Pod;
        row.owner = "uid".into();
        row.namespace = Some("ns".into());
        row.qos = Some("Burstable".into());
        row.cgroups = Some(3);
        row.network = Some(NETWORK_OWN.into());
        row.workload = Some("ns/web".into());
        row.anomaly_score = Some(4.5);
        row.anomalous_features = Some(vec!["ebpf_execs".into()]);
        for (i, e) in row.events.iter_mut().enumerate() {
            *e = Some(100 + i as i64);
        }
        row.resources[2] = Some(7);
        let mut back = PodRow::blank();
        for (i, v) in row.values().into_iter().enumerate() {
            assert!(back.set(i, v), "column {i}");
        }
        assert_eq!(back, row);
        assert_eq!(pod_column_types().len(), pod_columns().len());
        assert_eq!(pod_column_types()[3], ColumnType::Text);
        let types = pod_column_types();
        let column = |name: &str| pod_columns().iter().position(|(c, _)| *c == name).unwrap();
        assert_eq!(types[column("cgroups")], ColumnType::Int4);
        assert_eq!(types[column("anomalous_features")], ColumnType::TextArray);
        assert_eq!(types[column("anomaly_score")], ColumnType::Float8);
        assert_eq!(types[column("ebpf_forks")], ColumnType::Int8);
        assert_eq!(POD_SCALARS[3], ("kind", "text NOT NULL", "pod, service or other"));
        assert_eq!(RESOURCES[Res::EstConn as usize].name, "est_conn");
        assert_eq!(RESOURCES[Res::IoWriteBytes as usize].name, "io_write_bytes");
        assert!(!back.set(3, Value::Text("pets".into())));
    }
}
