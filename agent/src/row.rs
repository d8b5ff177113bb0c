//! One row of node_features: identity, the 24 procfs features, the eBPF per-interval counts and
//! the streaming detector's verdict.
//! The column list and the bound parameters are defined together here, so the INSERT and the
//! JSON printed by `feature-agent print` can never disagree with each other or with the schema.
use std::time::SystemTime;

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

/// Column names in INSERT order. `attack` and `attack_type` are the labellers', never ours.
pub const COLUMNS: [&str; 3 + 24 + EVENT_COUNT + 2] = [
    "node",
    "ts",
    "interval_s",
    "cpu_sec_idle",
    "disk_av_per",
    "disk_read",
    "disk_write",
    "net_receive",
    "mem_pressure",
    "mem_av_per",
    "forks_total",
    "intr",
    "load1",
    "load5",
    "load15",
    "receive_drop",
    "receive_errs",
    "transmit_packets",
    "tcp_sock_alloc",
    "tcp_sock_inuse",
    "tcp_sock_mem",
    "udp_sock_inuse",
    "udp_sock_mem",
    "ipv4_sock_inuse",
    "est_conn",
    "lis_conn",
    "open_fds",
    "ebpf_forks",
    "ebpf_execs",
    "ebpf_exits",
    "tcp_to_est",
    "tcp_to_syn_sent",
    "tcp_to_syn_recv",
    "tcp_to_close",
    "tcp_to_listen",
    "tcp_conn_failed",
    "tcp_rst_sent",
    "tcp_rst_recv",
    "sock_alloc_tcp",
    "sock_alloc_udp",
    "sock_alloc_unix",
    "sock_alloc_raw",
    "sock_alloc_other",
    "anomaly_score",
    "anomalous_features",
];

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
    /// The row's values in [`COLUMNS`] order, as bound parameters.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let p = &self.procfs;
        let mut v: Vec<&(dyn ToSql + Sync)> = vec![
            &self.node,
            &self.ts,
            &self.interval_s,
            &p.cpu_sec_idle,
            &p.disk_av_per,
            &p.disk_read,
            &p.disk_write,
            &p.net_receive,
            &p.mem_pressure,
            &p.mem_av_per,
            &p.forks_total,
            &p.intr,
            &p.load1,
            &p.load5,
            &p.load15,
            &p.receive_drop,
            &p.receive_errs,
            &p.transmit_packets,
            &p.tcp_sock_alloc,
            &p.tcp_sock_inuse,
            &p.tcp_sock_mem,
            &p.udp_sock_inuse,
            &p.udp_sock_mem,
            &p.ipv4_sock_inuse,
            &self.est_conn,
            &self.lis_conn,
            &p.open_fds,
        ];
        v.extend(self.ebpf.iter().map(|c| c as &(dyn ToSql + Sync)));
        v.push(&self.verdict.anomaly_score);
        v.push(&self.verdict.anomalous_features);
        v
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
        let procfs = serde_json::to_value(&self.procfs).map_err(serde::ser::Error::custom)?;
        let mut m = s.serialize_map(Some(COLUMNS.len()))?;
        m.serialize_entry("node", &self.node)?;
        m.serialize_entry("ts", &rfc3339_micros(self.ts))?;
        m.serialize_entry("interval_s", &self.interval_s)?;
        for col in &COLUMNS[3..27] {
            match *col {
                "est_conn" => m.serialize_entry(col, &self.est_conn)?,
                "lis_conn" => m.serialize_entry(col, &self.lis_conn)?,
                _ => m.serialize_entry(col, &procfs[*col])?,
            }
        }
        for e in Event::ALL {
            m.serialize_entry(e.column(), &self.ebpf[e as usize])?;
        }
        m.serialize_entry("anomaly_score", &self.verdict.anomaly_score)?;
        m.serialize_entry("anomalous_features", &self.verdict.anomalous_features)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_params_and_json_agree() {
        let row = FeatureRow {
            node: "n".into(),
            ts: SystemTime::UNIX_EPOCH,
            interval_s: None,
            procfs: ProcfsFeatures::default(),
            est_conn: Some(1),
            lis_conn: Some(2),
            ebpf: [None; EVENT_COUNT],
            verdict: Verdict::default(),
        };
        assert_eq!(row.params().len(), COLUMNS.len());
        let json = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = COLUMNS.to_vec();
        let mut got = keys.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(COLUMNS[27 + i], e.column());
        }
        assert_eq!(json["est_conn"], 1);
        let sql = insert_sql(1);
        assert!(sql.contains("$45") && !sql.contains("$46"), "{sql}");
        let sql = insert_sql(3);
        assert!(sql.contains("($91, $92") && sql.contains("$135)") && !sql.contains("$136"), "{sql}");
    }
}
