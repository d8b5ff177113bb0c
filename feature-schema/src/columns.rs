//! THE declaration of a node_features row: one line per column, in table order. Each line is
//! `name: Rust type = role, unit, source;` under a doc comment saying what the value means.
//! The Rust type gives the SQL type (`Option<f64>` double precision, `Option<i64>` bigint,
//! `Option<i32>` integer, `Option<Vec<String>>` text[]); the role says whether and how the
//! column is scored (see features.rs): `gauge`, `counter` or `events` with the smallest change
//! that counts, `.down()` when an attack lowers it, `.on_change()` for a drifting gauge the
//! agent's detector scores on its change since the previous row. Everything else is generated from this list: see lib.rs.
//! `attack` and `attack_type` are the labellers' ([`crate::LABEL_COLUMNS`]), never the agent's.
use std::time::SystemTime;

use agent_common::Event;
use tokio_postgres::types::ToSql;

use crate::{
    features::{counter, events, gauge, identity, sample, verdict, FEATURES, FEATURE_COUNT},
    Column, ColumnValue, Value,
};

/// Generates, from one list of columns: [`FeatureRow`], [`COLUMNS`], [`SCHEMA`],
/// [`COLUMN_COUNT`], and the row's `empty`, `params`, `values`, `get`, `set` and
/// `feature_values`.
macro_rules! columns {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident : $ty:ty = $role:expr, $unit:literal, $source:literal;
    )*) => {
        /// One row of node_features, and the interval's per-pod rows that travel with it (spooled
        /// in the same record, written in the same transaction).
        #[derive(Debug, Clone, PartialEq)]
        pub struct FeatureRow {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
            /// The interval's pod_features rows (empty without --pod-rows); not a column.
            pub pods: Vec<crate::pods::PodRow>,
        }

        /// Column names in table and INSERT order.
        pub const COLUMNS: [&str; [$(stringify!($name)),*].len()] = [$(stringify!($name)),*];

        /// Number of columns the agent writes.
        pub const COLUMN_COUNT: usize = COLUMNS.len();

        /// Every column's declaration, in [`COLUMNS`] order.
        pub const SCHEMA: [Column; COLUMN_COUNT] = [$(Column {
            name: stringify!($name),
            ty: <$ty as ColumnValue>::TYPE,
            role: $role,
            unit: $unit,
            source: $source,
            meaning: concat!($($doc),+).trim_ascii(),
        }),*];

        impl FeatureRow {
            /// A row of `node` at `ts` with every other column NULL.
            pub fn empty(node: String, ts: SystemTime) -> Self {
                let mut row = FeatureRow { $($name: ColumnValue::empty(),)* pods: Vec::new() };
                row.node = node;
                row.ts = ts;
                row
            }

            /// The row's values in [`COLUMNS`] order, as bound parameters.
            pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$(&self.$name as &(dyn ToSql + Sync)),*]
            }

            /// The row's values in [`COLUMNS`] order.
            pub fn values(&self) -> [Value; COLUMN_COUNT] {
                [$(ColumnValue::to_value(&self.$name)),*]
            }

            /// Column `index` of [`COLUMNS`]; NULL past the last.
            pub fn get(&self, index: usize) -> Value {
                let mut i = 0usize;
                $(
                    if i == index {
                        return ColumnValue::to_value(&self.$name);
                    }
                    i += 1;
                )*
                let _ = i;
                Value::Null
            }

            /// Sets column `index` of [`COLUMNS`]; false if the value is not of its type.
            pub fn set(&mut self, index: usize, value: Value) -> bool {
                let mut i = 0usize;
                $(
                    if i == index {
                        return match ColumnValue::from_value(value) {
                            Some(v) => {
                                self.$name = v;
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

            /// The scored features' raw values, in [`FEATURES`] order.
            pub fn feature_values(&self) -> [Option<f64>; FEATURE_COUNT] {
                let all = [$(ColumnValue::as_f64(&self.$name)),*];
                FEATURES.map(|f| all[f.index])
            }
        }
    };
}

columns! {
    /// The node's name, verbatim; `(node, ts)` is the primary key.
    node: String = identity(), "", "--node-name / NODE_NAME (the downward API), else the hostname";
    /// The interval's scheduled boundary (UTC): every node's rows of one interval share it.
    ts: SystemTime = identity(), "", "the agent's clock, on the interval boundary";
    /// Seconds since this agent's previous sample; NULL on the first row after start.
    interval_s: Option<f64> = sample(), "s", "the agent's monotonic clock";

    // The 24 features of the reference paper (docs/features.md), counters cumulative
    // since boot as the kernel reports them, gauges as sampled.
    /// Idle CPU time per CPU, cumulative.
    cpu_sec_idle: Option<f64> = counter(0.05).down(), "s", "/proc/stat `cpuN` idle ticks / USER_HZ, averaged over CPUs";
    /// Free space on the root filesystem, percent.
    disk_av_per: Option<f64> = gauge(0.5).down().on_change(), "%", "statvfs(rootfs): 100 x f_bavail / f_blocks";
    /// Bytes read from the selected disks, cumulative.
    disk_read: Option<i64> = counter(1048576.0), "bytes", "/proc/diskstats sectors read x 512, selected disks";
    /// Bytes written to the selected disks, cumulative.
    disk_write: Option<i64> = counter(1048576.0), "bytes", "/proc/diskstats sectors written x 512, selected disks";
    /// Bytes received on the selected interfaces of the host's network namespace (the node's own
    /// interfaces: what enters the node; traffic between pods on the node is in their pod rows),
    /// cumulative.
    net_receive: Option<i64> = counter(65536.0), "bytes", "/proc/net/dev receive bytes, selected interfaces";
    /// Major page faults, cumulative.
    mem_pressure: Option<i64> = counter(10.0), "faults", "/proc/vmstat pgmajfault";
    /// Available memory, percent.
    mem_av_per: Option<f64> = gauge(0.5).down().on_change(), "%", "/proc/meminfo: 100 x MemAvailable / MemTotal";
    /// Processes and threads created, cumulative.
    forks_total: Option<i64> = counter(5.0), "forks", "/proc/stat `processes`";
    /// Interrupts serviced, cumulative.
    intr: Option<i64> = counter(1000.0), "interrupts", "/proc/stat `intr`, first number";
    /// Load average over 1 minute.
    load1: Option<f64> = gauge(0.25).on_change(), "", "/proc/loadavg";
    /// Load average over 5 minutes.
    load5: Option<f64> = gauge(0.25).on_change(), "", "/proc/loadavg";
    /// Load average over 15 minutes.
    load15: Option<f64> = gauge(0.25).on_change(), "", "/proc/loadavg";
    /// Received packets dropped on the selected interfaces of the host's network namespace,
    /// cumulative.
    receive_drop: Option<i64> = counter(1.0), "packets", "/proc/net/dev receive drop, selected interfaces";
    /// Receive errors on the selected interfaces of the host's network namespace, cumulative.
    receive_errs: Option<i64> = counter(1.0), "errors", "/proc/net/dev receive errs, selected interfaces";
    /// Packets transmitted on the selected interfaces of the host's network namespace (what
    /// leaves the node), cumulative.
    transmit_packets: Option<i64> = counter(100.0), "packets", "/proc/net/dev transmit packets, selected interfaces";
    /// TCP sockets allocated, node-wide (a kernel-wide count, every namespace's sockets).
    tcp_sock_alloc: Option<i32> = gauge(2.0).on_change(), "sockets", "/proc/net/sockstat `TCP: alloc`";
    /// TCP sockets in use in the host's network namespace only (the kernel keeps this count per
    /// namespace: a pod's sockets are in est_conn and lis_conn, and in its pod row).
    tcp_sock_inuse: Option<i32> = gauge(2.0).on_change(), "sockets", "/proc/net/sockstat `TCP: inuse`";
    /// Memory held by TCP sockets, node-wide (a kernel-wide count).
    tcp_sock_mem: Option<i32> = gauge(4.0).on_change(), "pages", "/proc/net/sockstat `TCP: mem`";
    /// UDP sockets in use in the host's network namespace only (a per-namespace count).
    udp_sock_inuse: Option<i32> = gauge(2.0).on_change(), "sockets", "/proc/net/sockstat `UDP: inuse`";
    /// Memory held by UDP sockets, node-wide (a kernel-wide count).
    udp_sock_mem: Option<i32> = gauge(4.0).on_change(), "pages", "/proc/net/sockstat `UDP: mem`";
    /// Sockets in use, all families, in the host's network namespace only (a per-namespace
    /// count; the paper's name is kept).
    ipv4_sock_inuse: Option<i32> = gauge(2.0).on_change(), "sockets", "/proc/net/sockstat `sockets: used`";
    /// TCP sockets in ESTABLISHED, IPv4 + IPv6, in every network namespace of the node.
    est_conn: Option<i32> = gauge(2.0).on_change(), "sockets", "eBPF state balance per namespace, checked against each namespace's table";
    /// TCP sockets in LISTEN, IPv4 + IPv6, in every network namespace of the node.
    lis_conn: Option<i32> = gauge(1.0).on_change(), "sockets", "eBPF state balance per namespace, checked against each namespace's table";
    /// File handles allocated node-wide.
    open_fds: Option<i64> = gauge(16.0).on_change(), "handles", "/proc/sys/fs/file-nr, first field";

    // Added after the paper, from files the agent already reads each interval.
    /// Threads runnable (running or waiting for a CPU) at the sample.
    procs_running: Option<i32> = gauge(2.0), "threads", "/proc/stat `procs_running`";
    /// Threads blocked waiting for I/O at the sample.
    procs_blocked: Option<i32> = gauge(1.0), "threads", "/proc/stat `procs_blocked`";
    /// Context switches, cumulative.
    ctxt: Option<i64> = counter(10000.0), "switches", "/proc/stat `ctxt`";

    // Exact kernel event counts during the row's interval (deltas), counted by eBPF; NULL on the
    // first row after start and when the program behind the column is not loaded.
    /// Processes and threads forked during the interval.
    ebpf_forks: Option<i64> = events(Event::Fork, 5.0), "events", "sched:sched_process_fork";
    /// Programs executed during the interval.
    ebpf_execs: Option<i64> = events(Event::Exec, 5.0), "events", "sched:sched_process_exec";
    /// Processes and threads that exited during the interval.
    ebpf_exits: Option<i64> = events(Event::Exit, 5.0), "events", "sched:sched_process_exit";
    /// TCP sockets entering ESTABLISHED.
    tcp_to_est: Option<i64> = events(Event::TcpToEstablished, 2.0), "events", "sock:inet_sock_set_state";
    /// TCP sockets entering SYN_SENT (active opens).
    tcp_to_syn_sent: Option<i64> = events(Event::TcpToSynSent, 2.0), "events", "sock:inet_sock_set_state";
    /// TCP sockets entering SYN_RECV (passive handshakes).
    tcp_to_syn_recv: Option<i64> = events(Event::TcpToSynRecv, 2.0), "events", "sock:inet_sock_set_state";
    /// TCP sockets entering CLOSE.
    tcp_to_close: Option<i64> = events(Event::TcpToClose, 2.0), "events", "sock:inet_sock_set_state";
    /// TCP sockets entering LISTEN.
    tcp_to_listen: Option<i64> = events(Event::TcpToListen, 1.0), "events", "sock:inet_sock_set_state";
    /// SYN_SENT -> CLOSE: refused or timed-out connects (scans).
    tcp_conn_failed: Option<i64> = events(Event::TcpConnFailed, 1.0), "events", "sock:inet_sock_set_state";
    /// TCP resets sent.
    tcp_rst_sent: Option<i64> = events(Event::TcpRstSent, 1.0), "events", "tcp:tcp_send_reset";
    /// TCP resets received.
    tcp_rst_recv: Option<i64> = events(Event::TcpRstRecv, 1.0), "events", "tcp:tcp_receive_reset";
    /// Sockets created: AF_INET/AF_INET6 stream.
    sock_alloc_tcp: Option<i64> = events(Event::SockAllocTcp, 2.0), "events", "socket creation hook (docs/kernels.md)";
    /// Sockets created: AF_INET/AF_INET6 datagram.
    sock_alloc_udp: Option<i64> = events(Event::SockAllocUdp, 2.0), "events", "socket creation hook";
    /// Sockets created: AF_UNIX.
    sock_alloc_unix: Option<i64> = events(Event::SockAllocUnix, 4.0), "events", "socket creation hook";
    /// Sockets created: SOCK_RAW of any family, and AF_PACKET.
    sock_alloc_raw: Option<i64> = events(Event::SockAllocRaw, 1.0), "events", "socket creation hook";
    /// Sockets created: every other family and type.
    sock_alloc_other: Option<i64> = events(Event::SockAllocOther, 1.0), "events", "socket creation hook";
    /// Page-cache folios (a 4 KiB page, or several on filesystems with large folios) that file
    /// writes made dirty: data on its way to disk, counted in the writing task's context, so a
    /// pod's row has its own writes even where its cgroup has no io controller.
    ebpf_folios_dirtied: Option<i64> = events(Event::FolioDirtied, 256.0), "folios", "writeback:writeback_dirty_folio";

    // Every byte the node's sockets send and receive, split by where the peer is, counted per
    // cgroup by eBPF socket-buffer programs with --count-bytes (NULL without it): additions to
    // the paper's net_receive and net_transmit, which stay /proc/net/dev's (docs/network.md).
    // Bytes are IP packets' lengths, headers from IP on; a GSO packet counts once.
    /// Bytes sockets sent to this node: loopback, its own addresses, its pod range.
    tx_node_bytes: Option<i64> = events(Event::TxNodeBytes, 65536.0), "bytes", "cgroup_skb/egress";
    /// Packets sockets sent to this node.
    tx_node_packets: Option<i64> = events(Event::TxNodePackets, 50.0), "packets", "cgroup_skb/egress";
    /// Bytes sent to the cluster's pod and service ranges (--cluster-cidrs), beyond this node.
    tx_cluster_bytes: Option<i64> = events(Event::TxClusterBytes, 65536.0), "bytes", "cgroup_skb/egress";
    /// Packets sent to the cluster's pod and service ranges.
    tx_cluster_packets: Option<i64> = events(Event::TxClusterPackets, 50.0), "packets", "cgroup_skb/egress";
    /// Bytes sent to any other address: the exfiltration and command-and-control signal.
    tx_outside_bytes: Option<i64> = events(Event::TxOutsideBytes, 65536.0), "bytes", "cgroup_skb/egress";
    /// Packets sent to any other address.
    tx_outside_packets: Option<i64> = events(Event::TxOutsidePackets, 50.0), "packets", "cgroup_skb/egress";
    /// Bytes sockets received from this node.
    rx_node_bytes: Option<i64> = events(Event::RxNodeBytes, 65536.0), "bytes", "cgroup_skb/ingress";
    /// Packets sockets received from this node.
    rx_node_packets: Option<i64> = events(Event::RxNodePackets, 50.0), "packets", "cgroup_skb/ingress";
    /// Bytes received from the cluster's pod and service ranges, beyond this node.
    rx_cluster_bytes: Option<i64> = events(Event::RxClusterBytes, 65536.0), "bytes", "cgroup_skb/ingress";
    /// Packets received from the cluster's pod and service ranges.
    rx_cluster_packets: Option<i64> = events(Event::RxClusterPackets, 50.0), "packets", "cgroup_skb/ingress";
    /// Bytes received from any other address.
    rx_outside_bytes: Option<i64> = events(Event::RxOutsideBytes, 65536.0), "bytes", "cgroup_skb/ingress";
    /// Packets received from any other address.
    rx_outside_packets: Option<i64> = events(Event::RxOutsidePackets, 50.0), "packets", "cgroup_skb/ingress";

    // The agent's streaming detector (docs/detection.md).
    /// Largest z over the features, each seen from its attack direction; NULL during warm-up.
    anomaly_score: Option<f64> = verdict(), "|z|", "the agent's detector";
    /// The features whose |z| exceeded the threshold, largest first; empty for a normal row.
    anomalous_features: Option<Vec<String>> = verdict(), "", "the agent's detector";
    /// The pods (namespace/pod, or a service's unit) whose own rows the detector flagged in
    /// this interval, most anomalous first; empty when none was; NULL without --pod-rows.
    anomalous_pods: Option<Vec<String>> = verdict(), "", "the agent's detector, on the interval's pod rows";
    /// The workloads of [`FeatureRow::anomalous_pods`], in the same order (one per pod).
    anomalous_workloads: Option<Vec<String>> = verdict(), "", "the agent's detector, on the interval's pod rows";
}
