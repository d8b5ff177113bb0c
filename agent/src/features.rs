//! The scored features: every feature column, how it is scored, and the smallest change the
//! streaming detector treats as meaningful. The same list lives in SQL as `feature_catalog`
//! (migrations/0002_analysis.sql); a test keeps the two equal.

/// How a feature is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value as sampled (a level); scored as it is.
    Gauge,
    /// Cumulative since boot; scored on its per-interval delta (a z-score of a running total
    /// only measures uptime).
    Counter,
    /// An eBPF per-interval event count; already a delta, scored as it is.
    Events,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Events => "events",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feature {
    pub column: &'static str,
    pub kind: Kind,
    /// The detector's floor on a feature's spread, in the feature's scored unit: a change
    /// smaller than `threshold × min_spread` is never anomalous on its own. It keeps features
    /// that are flat in the baseline (no forks, no resets, an idle disk) from flagging on noise.
    pub min_spread: f64,
}

const fn f(column: &'static str, kind: Kind, min_spread: f64) -> Feature {
    Feature { column, kind, min_spread }
}

use Kind::{Counter, Events, Gauge};

/// Number of scored features: the 24 of the paper plus the 16 eBPF counts.
pub const FEATURE_COUNT: usize = 40;

/// The scored features in table order (the row's columns after node, ts, interval_s).
pub const FEATURES: [Feature; FEATURE_COUNT] = [
    f("cpu_sec_idle", Counter, 0.05), // idle seconds per CPU per interval
    f("disk_av_per", Gauge, 0.5),     // percent
    f("disk_read", Counter, 1048576.0),
    f("disk_write", Counter, 1048576.0),
    f("net_receive", Counter, 65536.0),
    f("mem_pressure", Counter, 10.0),
    f("mem_av_per", Gauge, 0.5),
    f("forks_total", Counter, 5.0),
    f("intr", Counter, 1000.0),
    f("load1", Gauge, 0.25),
    f("load5", Gauge, 0.25),
    f("load15", Gauge, 0.25),
    f("receive_drop", Counter, 1.0),
    f("receive_errs", Counter, 1.0),
    f("transmit_packets", Counter, 100.0),
    f("tcp_sock_alloc", Gauge, 2.0),
    f("tcp_sock_inuse", Gauge, 2.0),
    f("tcp_sock_mem", Gauge, 4.0), // pages
    f("udp_sock_inuse", Gauge, 2.0),
    f("udp_sock_mem", Gauge, 4.0),
    f("ipv4_sock_inuse", Gauge, 2.0),
    f("est_conn", Gauge, 2.0),
    f("lis_conn", Gauge, 1.0),
    f("open_fds", Gauge, 16.0),
    f("ebpf_forks", Events, 5.0),
    f("ebpf_execs", Events, 5.0),
    f("ebpf_exits", Events, 5.0),
    f("tcp_to_est", Events, 2.0),
    f("tcp_to_syn_sent", Events, 2.0),
    f("tcp_to_syn_recv", Events, 2.0),
    f("tcp_to_close", Events, 2.0),
    f("tcp_to_listen", Events, 1.0),
    f("tcp_conn_failed", Events, 1.0),
    f("tcp_rst_sent", Events, 1.0),
    f("tcp_rst_recv", Events, 1.0),
    f("sock_alloc_tcp", Events, 2.0),
    f("sock_alloc_udp", Events, 2.0),
    f("sock_alloc_unix", Events, 4.0),
    f("sock_alloc_raw", Events, 1.0),
    f("sock_alloc_other", Events, 1.0),
];

/// The feature's position in [`FEATURES`].
pub fn index_of(column: &str) -> Option<usize> {
    FEATURES.iter().position(|f| f.column == column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::COLUMNS;

    #[test]
    fn features_are_the_row_columns_after_the_identity() {
        let names: Vec<&str> = FEATURES.iter().map(|f| f.column).collect();
        assert_eq!(names, COLUMNS[3..3 + FEATURE_COUNT].to_vec());
        assert!(FEATURES.iter().all(|f| f.min_spread > 0.0));
        assert_eq!(index_of("open_fds"), Some(23));
    }
}
