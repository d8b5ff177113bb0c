//! THE declaration of a pod_features row: one row per pod, host service and "other" per node
//! per interval. Its eBPF columns are the node row's event columns (same names, per-interval
//! counts; the node row's count equals their sum over the interval's pod rows), so they are
//! derived from [`crate::SCHEMA`], not repeated; its resource columns are declared once in
//! [`RESOURCES`]. From these come the INSERT, the column list export and the tests use.
use std::time::SystemTime;

use agent_common::{Event, EVENT_COUNT};
use tokio_postgres::types::ToSql;

use crate::{event_column, ColumnType, ColumnValue, Value, SCHEMA};

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

/// A resource column read from the pod's (or unit's) cgroup v2 files each interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub name: &'static str,
    /// Cumulative counter (SQL deltas) or gauge.
    pub counter: bool,
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
}

/// The resource columns, in [`Res`] order. NULL where the file is absent (a controller not
/// enabled, or a v1 controller on a hybrid host).
pub const RESOURCES: [Resource; 9] = [
    Resource {
        name: "cpu_usage_usec",
        counter: true,
        unit: "µs",
        source: "cpu.stat usage_usec",
        meaning: "CPU time used by the pod's tasks, cumulative",
    },
    Resource {
        name: "cpu_pressure_usec",
        counter: true,
        unit: "µs",
        source: "cpu.pressure some total",
        meaning: "time some of the pod's tasks waited for a CPU, cumulative",
    },
    Resource {
        name: "memory_pressure_usec",
        counter: true,
        unit: "µs",
        source: "memory.pressure some total",
        meaning: "time some of the pod's tasks stalled on memory, cumulative",
    },
    Resource {
        name: "io_pressure_usec",
        counter: true,
        unit: "µs",
        source: "io.pressure some total",
        meaning: "time some of the pod's tasks stalled on IO, cumulative",
    },
    Resource {
        name: "memory_current",
        counter: false,
        unit: "bytes",
        source: "memory.current",
        meaning: "memory charged to the pod now",
    },
    Resource {
        name: "oom_kills",
        counter: true,
        unit: "kills",
        source: "memory.events oom_kill",
        meaning: "processes of the pod killed by the OOM killer, cumulative",
    },
    Resource {
        name: "pids_current",
        counter: false,
        unit: "tasks",
        source: "pids.current",
        meaning: "tasks in the pod now",
    },
    Resource {
        name: "io_read_bytes",
        counter: true,
        unit: "bytes",
        source: "io.stat rbytes, summed over devices",
        meaning: "bytes the pod read from block devices, cumulative",
    },
    Resource {
        name: "io_write_bytes",
        counter: true,
        unit: "bytes",
        source: "io.stat wbytes, summed over devices",
        meaning: "bytes the pod wrote to block devices, cumulative",
    },
];

/// Number of resource columns.
pub const RESOURCE_COUNT: usize = RESOURCES.len();

/// The identity columns of a pod row, with their SQL types and meanings, in table order.
pub const POD_IDENTITY: [(&str, &str, &str); 9] = [
    ("node", "text NOT NULL", "the node's name, as in node_features"),
    ("ts", "timestamptz NOT NULL", "the interval's boundary, the same as the node row's"),
    ("interval_s", "double precision", "seconds since the agent's previous sample; NULL on the first row after start"),
    ("kind", "text NOT NULL", "pod, service or other"),
    ("owner", "text NOT NULL", "the pod's UID, the service's systemd unit, or 'other'"),
    ("namespace", "text", "the pod's namespace (from /var/log/pods); NULL when unknown"),
    ("pod", "text", "the pod's name (from /var/log/pods); NULL when unknown"),
    ("qos", "text", "the pod's QoS class (Guaranteed, Burstable, BestEffort), from its cgroup path"),
    ("cgroups", "integer", "cgroups whose counts this row adds up (the pod's own and its containers')"),
];

/// One pod's (or service's, or "other"'s) row for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRow {
    pub node: String,
    pub ts: SystemTime,
    pub interval_s: Option<f64>,
    pub kind: OwnerKind,
    pub owner: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub qos: Option<String>,
    pub cgroups: Option<i32>,
    /// Per-interval counts by [`Event`] index; NULL where the event is not counted per cgroup.
    pub events: [Option<i64>; EVENT_COUNT],
    /// By [`Res`] index.
    pub resources: [Option<i64>; RESOURCE_COUNT],
}

impl PodRow {
    pub fn event(&self, e: Event) -> Option<i64> {
        self.events[e as usize]
    }

    pub fn resource(&self, r: Res) -> Option<i64> {
        self.resources[r as usize]
    }

    /// The row's values in [`pod_columns`] order, as bound parameters.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &self.node,
            &self.ts,
            &self.interval_s,
            self.kind_param(),
            &self.owner,
            &self.namespace,
            &self.pod,
            &self.qos,
            &self.cgroups,
        ];
        p.extend(self.events.iter().map(|v| v as &(dyn ToSql + Sync)));
        p.extend(self.resources.iter().map(|v| v as &(dyn ToSql + Sync)));
        p
    }

    fn kind_param(&self) -> &'static (dyn ToSql + Sync) {
        static KINDS: [&str; 3] = ["pod", "service", "other"];
        match self.kind {
            OwnerKind::Pod => &KINDS[0],
            OwnerKind::Service => &KINDS[1],
            OwnerKind::Other => &KINDS[2],
        }
    }
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

impl PodRow {
    /// A row with no identity yet, to be filled by [`PodRow::set`].
    pub fn blank() -> Self {
        PodRow {
            node: String::new(),
            ts: SystemTime::UNIX_EPOCH,
            interval_s: None,
            kind: OwnerKind::Other,
            owner: String::new(),
            namespace: None,
            pod: None,
            qos: None,
            cgroups: None,
            events: [None; EVENT_COUNT],
            resources: [None; RESOURCE_COUNT],
        }
    }

    /// The row's values in [`pod_columns`] order (the spool's encoding).
    pub fn values(&self) -> Vec<Value> {
        let mut v = vec![
            ColumnValue::to_value(&self.node),
            ColumnValue::to_value(&self.ts),
            ColumnValue::to_value(&self.interval_s),
            Value::Text(self.kind.as_str().to_owned()),
            ColumnValue::to_value(&self.owner),
            ColumnValue::to_value(&self.namespace),
            ColumnValue::to_value(&self.pod),
            ColumnValue::to_value(&self.qos),
            ColumnValue::to_value(&self.cgroups),
        ];
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
        let n = POD_IDENTITY.len();
        match i {
            0 => put(&mut self.node, value),
            1 => put(&mut self.ts, value),
            2 => put(&mut self.interval_s, value),
            3 => match value {
                Value::Text(t) => OwnerKind::parse(&t).map(|k| self.kind = k).is_some(),
                _ => false,
            },
            4 => put(&mut self.owner, value),
            5 => put(&mut self.namespace, value),
            6 => put(&mut self.pod, value),
            7 => put(&mut self.qos, value),
            8 => put(&mut self.cgroups, value),
            i if i < n + EVENT_COUNT => put(&mut self.events[i - n], value),
            i if i < n + EVENT_COUNT + RESOURCE_COUNT => put(&mut self.resources[i - n - EVENT_COUNT], value),
            _ => false,
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
    PodRow::blank()
        .values()
        .iter()
        .zip(pod_columns())
        .map(|(v, (_, sql))| match (v, sql) {
            (Value::Text(_), _) => ColumnType::Text,
            (Value::Timestamp(_), _) => ColumnType::Timestamp,
            (_, "double precision") => ColumnType::Float8,
            (_, "integer") => ColumnType::Int4,
            (_, "text") => ColumnType::Text,
            _ => ColumnType::Int8,
        })
        .collect()
}

/// The event column names of a pod row: the node row's, in [`Event`] order.
pub fn event_columns() -> [&'static str; EVENT_COUNT] {
    Event::ALL.map(|e| SCHEMA[event_column(e)].name)
}

/// Every column of a pod row the agent writes, with its SQL type, in table order.
pub fn pod_columns() -> Vec<(&'static str, &'static str)> {
    let mut cols: Vec<(&str, &str)> = POD_IDENTITY.iter().map(|(n, t, _)| (*n, *t)).collect();
    cols.extend(event_columns().iter().map(|n| (*n, "bigint")));
    cols.extend(RESOURCES.iter().map(|r| (r.name, "bigint")));
    cols
}

/// The INSERT of `rows` pod rows; a retried row meets its own key and does nothing.
pub fn pod_insert_sql(rows: usize) -> String {
    let cols: Vec<&str> = pod_columns().iter().map(|(c, _)| *c).collect();
    crate::multi_row_insert("pod_features", &cols, rows, "(node, ts, kind, owner)")
}

/// Most rows one INSERT may carry (Postgres takes at most 65535 parameters).
pub fn pod_rows_per_insert() -> usize {
    65535 / pod_columns().len()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(pod_column_types()[8], ColumnType::Int4);
        assert!(!back.set(3, Value::Text("pets".into())));
    }
}
