//! The contract between the eBPF programs (`agent-ebpf`) and the userspace agent: map names,
//! counter indices and the `#[repr(C)]` values stored in the maps. Both sides compile this file,
//! so a counter can never be renumbered on one side only. It names no database column: which
//! column an event feeds is declared with the columns (feature-schema).
#![no_std]

/// Per-CPU array with one [`EventCounts`] entry: every kernel event we count.
pub const MAP_EVENT_COUNTS: &str = "EVENT_COUNTS";
/// Per-CPU array with one [`TcpStateBalance`] entry: +1 on entering a TCP state, -1 on leaving.
pub const MAP_TCP_STATE_BALANCE: &str = "TCP_STATE_BALANCE";
/// Per-CPU hash from a network namespace's key (see [`NetnsKeying`]) to its
/// [`NetnsTcpBalance`]: the TCP state balance of [`MAP_TCP_STATE_BALANCE`], for ESTABLISHED
/// and LISTEN, split by the socket's network namespace, so that each namespace can be seeded and
/// re-checked against its own table.
pub const MAP_NETNS_TCP_BALANCE: &str = "NETNS_TCP_BALANCE";
/// Capacity of [`MAP_NETNS_TCP_BALANCE`]: network namespaces with TCP sockets on one node.
pub const NETNS_TCP_BALANCE_MAX: u32 = 4096;
/// The key of sockets whose namespace could not be read, or whose namespace found
/// [`MAP_NETNS_TCP_BALANCE`] full.
pub const NETNS_UNRESOLVED: u32 = 0;
/// The global the agent sets before loading: where a socket's namespace key is (see
/// [`NetnsKeying`]).
pub const GLOBAL_NETNS_KEYING: &str = "NETNS_KEYING";

/// Hash map from pid_tgid to the arguments of a socket()/socketpair() call in flight, so the
/// exit tracepoint only counts sockets that were really created.
pub const MAP_SOCKET_CALLS_IN_FLIGHT: &str = "SOCKET_CALLS_IN_FLIGHT";

/// Capacity of [`MAP_SOCKET_CALLS_IN_FLIGHT`]: concurrent socket() calls, one per thread at most.
pub const SOCKET_CALLS_IN_FLIGHT_MAX: u32 = 16384;

/// Per-CPU hash from cgroup v2 id to that cgroup's [`EventCounts`]: every event counted per node
/// is also counted here, under the cgroup of the task that caused it (process context) or of the
/// socket's owner (TCP state changes and resets, which the kernel often handles in softirq).
pub const MAP_CGROUP_EVENT_COUNTS: &str = "CGROUP_EVENT_COUNTS";
/// Default capacity of [`MAP_CGROUP_EVENT_COUNTS`] (the agent's --cgroup-map-entries).
pub const CGROUP_EVENT_COUNTS_DEFAULT_MAX: u32 = 2048;
/// Per-CPU array with one [`EventCounts`] entry: events of cgroups that found
/// [`MAP_CGROUP_EVENT_COUNTS`] full. They belong to the "other" row, so the node total still
/// equals the sum of the per-cgroup rows; the agent exports the count.
pub const MAP_CGROUP_OVERFLOW: &str = "CGROUP_OVERFLOW";
/// Hash from cgroup v2 id to its path, written by the cgroup_mkdir hook so that a cgroup that
/// lives less than an interval is still named. The agent removes each entry once it has read it.
pub const MAP_CGROUP_NAMES: &str = "CGROUP_NAMES";
/// Capacity of [`MAP_CGROUP_NAMES`]: cgroups created in one interval.
pub const CGROUP_NAMES_MAX: u32 = 1024;
/// Per-CPU scratch slot the cgroup_mkdir hook builds a [`CgroupName`] in (too big for the stack).
pub const MAP_CGROUP_NAME_SCRATCH: &str = "CGROUP_NAME_SCRATCH";
/// Hash from [`KernelCondition`] to a flag, inserted the first time the condition happens, so
/// it is logged once, never again.
pub const MAP_CONDITIONS_LOGGED: &str = "CONDITIONS_LOGGED";
/// Per-CPU array indexed by [`KernelCondition`]: how many times each map that can fill refused
/// an insert because it was full (each such event lost something: see each condition). The
/// agent exports the sums as `feature_agent_ebpf_map_full_total{map}`.
pub const MAP_INSERTS_REFUSED: &str = "INSERTS_REFUSED";

/// The global the agent sets before loading: what per-cgroup counting needs (see
/// [`CgroupCounting`]).
pub const GLOBAL_CGROUP_COUNTING: &str = "CGROUP_COUNTING";

/// Longest cgroup path the cgroup_mkdir hook keeps (kubelet's are under 250 bytes).
pub const CGROUP_PATH_MAX: usize = 512;

/// A cgroup's path relative to the cgroup v2 root, as the cgroup_mkdir tracepoint reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupName {
    /// Bytes of `path` used, without the NUL.
    pub len: u32,
    pub level: u32,
    pub path: [u8; CGROUP_PATH_MAX],
}

/// Per-cgroup counting settings, written into the object by the agent before it loads it.
/// Offsets come from the kernel's BTF; a zero `socket_owner_known` means the TCP hooks cannot
/// tell a socket's owner, and count nothing per cgroup (those pod columns are NULL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounting {
    /// Non-zero: count events per cgroup at all.
    pub enabled: u32,
    /// Non-zero: the offsets below are valid.
    pub socket_owner_known: u32,
    /// Offset in `struct sock` of `__sk_common.skc_state` (u8).
    pub sk_state: u32,
    /// Offset in `struct sock` of `sk_cgrp_data.cgroup` (a `struct cgroup *`).
    pub sk_cgroup: u32,
    /// Offset in `struct cgroup` of `kn` (a `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// Offset in `struct kernfs_node` of `id` (u64: the cgroup id, the directory's inode).
    pub kernfs_id: u32,
    /// Non-zero: the two offsets below are valid, and the task hooks read the running task's
    /// cgroup id by direct loads instead of calling bpf_get_current_cgroup_id().
    pub task_path_known: u32,
    /// Offset in `struct task_struct` of `cgroups` (a `struct css_set *`).
    pub task_cgroups: u32,
    /// Offset in `struct css_set` of `dfl_cgrp` (the task's cgroup v2 `struct cgroup *`).
    pub css_set_dfl_cgrp: u32,
    pub _pad: u32,
}

/// How the TCP hooks find a socket's network namespace key, written into the object by the agent
/// before it loads it; offsets from the kernel's BTF.
///
/// The key is the inode number of the namespace's `/proc/<pid>/net/stat` directory
/// (`sock->__sk_common.skc_net.net->proc_net_stat->low_ino`). The agent can `stat` that directory
/// through any process in the namespace with no capability, where the namespace's own inode
/// (`/proc/<pid>/ns/net`) needs ptrace access to the process. A zero `known` keys every socket
/// under [`NETNS_UNRESOLVED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsKeying {
    /// Non-zero: the offsets below are valid.
    pub known: u32,
    /// Offset in `struct sock` of `__sk_common.skc_net.net` (a `struct net *`).
    pub sk_net: u32,
    /// Offset in `struct net` of `proc_net_stat` (a `struct proc_dir_entry *`).
    pub net_proc_net_stat: u32,
    /// Offset in `struct proc_dir_entry` of `low_ino` (u32: the directory's inode number).
    pub pde_low_ino: u32,
}

/// Per-CPU running balance of one network namespace's ESTABLISHED and LISTEN TCP sockets, as
/// [`TcpStateBalance`] counts them for the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsTcpBalance {
    pub established: i64,
    pub listening: i64,
}

/// Rare kernel-side conditions: a map that can fill was full. Each is logged once through
/// aya-log and counted every time in [`MAP_INSERTS_REFUSED`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCondition {
    /// [`MAP_CGROUP_EVENT_COUNTS`] is full: new cgroups' events go to the overflow counts.
    CgroupMapFull = 0,
    /// [`MAP_CGROUP_NAMES`] is full: a new cgroup's path was not recorded (a cgroup that is gone
    /// before the agent's next walk goes unnamed, its counts to the other row).
    CgroupNamesFull = 1,
    /// [`MAP_NETNS_TCP_BALANCE`] is full: new namespaces' sockets count under
    /// [`NETNS_UNRESOLVED`].
    NetnsMapFull = 2,
    /// [`MAP_SOCKET_CALLS_IN_FLIGHT`] is full: a socket created through the syscall-tracepoint
    /// hook was not counted.
    SocketCallsFull = 3,
}

/// Number of [`KernelCondition`]s.
pub const KERNEL_CONDITION_COUNT: u32 = 4;

impl KernelCondition {
    /// Every condition, in index order.
    pub const ALL: [KernelCondition; KERNEL_CONDITION_COUNT as usize] = [
        KernelCondition::CgroupMapFull,
        KernelCondition::CgroupNamesFull,
        KernelCondition::NetnsMapFull,
        KernelCondition::SocketCallsFull,
    ];

    /// The map that was full.
    pub const fn map(self) -> &'static str {
        match self {
            KernelCondition::CgroupMapFull => MAP_CGROUP_EVENT_COUNTS,
            KernelCondition::CgroupNamesFull => MAP_CGROUP_NAMES,
            KernelCondition::NetnsMapFull => MAP_NETNS_TCP_BALANCE,
            KernelCondition::SocketCallsFull => MAP_SOCKET_CALLS_IN_FLIGHT,
        }
    }
}

/// Declares [`Event`] (index and name of each counter, in map order), [`EVENT_COUNT`],
/// [`Event::ALL`] and [`Event::name`] from one list.
macro_rules! events {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// Index of each counter in [`EventCounts::counts`]. The order is part of the map layout.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Event {
            $($(#[doc = $doc])* $variant,)*
        }

        /// Number of [`Event`] variants.
        pub const EVENT_COUNT: usize = [$($name),*].len();

        impl Event {
            /// Every event, in map order.
            pub const ALL: [Event; EVENT_COUNT] = [$(Event::$variant),*];

            /// The event's name, for logs and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Event::$variant => $name,)*
                }
            }
        }
    };
}

events! {
    /// sched:sched_process_fork (processes and threads).
    Fork = "fork",
    /// sched:sched_process_exec.
    Exec = "exec",
    /// sched:sched_process_exit.
    Exit = "exit",
    /// A TCP socket entered ESTABLISHED.
    TcpToEstablished = "tcp_to_established",
    /// A TCP socket entered SYN_SENT.
    TcpToSynSent = "tcp_to_syn_sent",
    /// A TCP socket entered SYN_RECV.
    TcpToSynRecv = "tcp_to_syn_recv",
    /// A TCP socket entered CLOSE.
    TcpToClose = "tcp_to_close",
    /// A TCP socket entered LISTEN.
    TcpToListen = "tcp_to_listen",
    /// SYN_SENT -> CLOSE: a connect that failed.
    TcpConnFailed = "tcp_conn_failed",
    /// tcp:tcp_send_reset.
    TcpRstSent = "tcp_rst_sent",
    /// tcp:tcp_receive_reset.
    TcpRstRecv = "tcp_rst_recv",
    /// A socket created: inet stream.
    SockAllocTcp = "sock_alloc_tcp",
    /// A socket created: inet datagram.
    SockAllocUdp = "sock_alloc_udp",
    /// A socket created: AF_UNIX.
    SockAllocUnix = "sock_alloc_unix",
    /// A socket created: SOCK_RAW or AF_PACKET.
    SockAllocRaw = "sock_alloc_raw",
    /// A socket created: anything else.
    SockAllocOther = "sock_alloc_other",
    /// writeback:writeback_dirty_folio: a page-cache folio made dirty by a file write (data on
    /// its way to disk), in the writing task's context.
    FolioDirtied = "folio_dirtied",
    /// Bytes of IP packets a socket sent to an address of this node (cgroup_skb/egress).
    TxNodeBytes = "tx_node_bytes",
    /// IP packets a socket sent to an address of this node.
    TxNodePackets = "tx_node_packets",
    /// Bytes sent to the cluster's pod and service ranges (beyond this node).
    TxClusterBytes = "tx_cluster_bytes",
    /// Packets sent to the cluster's pod and service ranges.
    TxClusterPackets = "tx_cluster_packets",
    /// Bytes sent to any other address.
    TxOutsideBytes = "tx_outside_bytes",
    /// Packets sent to any other address.
    TxOutsidePackets = "tx_outside_packets",
    /// Bytes of IP packets a socket received from an address of this node (cgroup_skb/ingress).
    RxNodeBytes = "rx_node_bytes",
    /// Packets received from an address of this node.
    RxNodePackets = "rx_node_packets",
    /// Bytes received from the cluster's pod and service ranges.
    RxClusterBytes = "rx_cluster_bytes",
    /// Packets received from the cluster's pod and service ranges.
    RxClusterPackets = "rx_cluster_packets",
    /// Bytes received from any other address.
    RxOutsideBytes = "rx_outside_bytes",
    /// Packets received from any other address.
    RxOutsidePackets = "rx_outside_packets",
}

impl Event {
    /// The counters fed by the TCP state-change hook.
    pub const TCP_STATE: [Event; 6] = [
        Event::TcpToEstablished,
        Event::TcpToSynSent,
        Event::TcpToSynRecv,
        Event::TcpToClose,
        Event::TcpToListen,
        Event::TcpConnFailed,
    ];

    /// The counters fed by the socket-creation hooks.
    pub const SOCKET_ALLOC: [Event; 5] =
        [Event::SockAllocTcp, Event::SockAllocUdp, Event::SockAllocUnix, Event::SockAllocRaw, Event::SockAllocOther];

    /// The counters fed by the cgroup socket-buffer programs (the byte counting).
    pub const NET_BYTES: [Event; 12] = [
        Event::TxNodeBytes,
        Event::TxNodePackets,
        Event::TxClusterBytes,
        Event::TxClusterPackets,
        Event::TxOutsideBytes,
        Event::TxOutsidePackets,
        Event::RxNodeBytes,
        Event::RxNodePackets,
        Event::RxClusterBytes,
        Event::RxClusterPackets,
        Event::RxOutsideBytes,
        Event::RxOutsidePackets,
    ];
}

impl Event {
    /// Whether the event is traffic (bytes or packets), not a count of kernel events: its
    /// detector floor is a traffic floor, on pod rows as on the node's.
    pub const fn is_traffic(self) -> bool {
        matches!(
            self,
            Event::TxNodeBytes
                | Event::TxNodePackets
                | Event::TxClusterBytes
                | Event::TxClusterPackets
                | Event::TxOutsideBytes
                | Event::TxOutsidePackets
                | Event::RxNodeBytes
                | Event::RxNodePackets
                | Event::RxClusterBytes
                | Event::RxClusterPackets
                | Event::RxOutsideBytes
                | Event::RxOutsidePackets
        )
    }
}

/// Longest-prefix-match trie from a peer address prefix (a [`NetKey`], IPv4 as ::ffff:a.b.c.d)
/// to its [`AddressClass`], filled by the agent; an address in none of its prefixes is
/// [`AddressClass::Outside`].
pub const MAP_ADDRESS_CLASSES: &str = "ADDRESS_CLASSES";
/// Capacity of [`MAP_ADDRESS_CLASSES`]: the node's own addresses plus the configured ranges.
pub const ADDRESS_CLASSES_MAX: u32 = 1024;

/// An IPv6 address, or an IPv4 address mapped into IPv6 (::ffff:a.b.c.d), in network order: the
/// data of an [`MAP_ADDRESS_CLASSES`] key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    pub addr: [u8; 16],
}

/// Where a packet's peer is, as the byte counters split traffic.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Loopback, the node's own addresses, and the node's pod range: traffic that stays on the
    /// node.
    Node = 1,
    /// The cluster's pod and service ranges, beyond this node.
    Cluster = 2,
    /// Everything else: the internet, the cloud's metadata service, other networks.
    Outside = 3,
}

/// The direction of a counted packet, from the socket's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetDirection {
    Sent,
    Received,
}

/// The (bytes, packets) counters of a packet in `direction` whose peer is in `class`.
pub const fn net_events(direction: NetDirection, class: AddressClass) -> (Event, Event) {
    match (direction, class) {
        (NetDirection::Sent, AddressClass::Node) => (Event::TxNodeBytes, Event::TxNodePackets),
        (NetDirection::Sent, AddressClass::Cluster) => (Event::TxClusterBytes, Event::TxClusterPackets),
        (NetDirection::Sent, AddressClass::Outside) => (Event::TxOutsideBytes, Event::TxOutsidePackets),
        (NetDirection::Received, AddressClass::Node) => (Event::RxNodeBytes, Event::RxNodePackets),
        (NetDirection::Received, AddressClass::Cluster) => (Event::RxClusterBytes, Event::RxClusterPackets),
        (NetDirection::Received, AddressClass::Outside) => (Event::RxOutsideBytes, Event::RxOutsidePackets),
    }
}

/// Cumulative event counts of one CPU since the programs were loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub counts: [u64; EVENT_COUNT],
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
    /// Highest state number plus one; sizes [`super::TcpStateBalance`].
    pub const COUNT: usize = 13;
}

/// Per-CPU running balance of sockets per TCP state since the programs were loaded: entering a
/// state adds one, leaving it subtracts one. One CPU's value can be negative (a socket may enter
/// a state on one CPU and leave it on another); the sum over CPUs is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStateBalance {
    pub by_state: [i64; tcp_state::COUNT],
}

/// Arguments of a socket()/socketpair() call between its enter and exit tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCall {
    pub family: u32,
    pub sock_type: u32,
    /// 1 for socket(), 2 for socketpair().
    pub sockets: u32,
    pub _pad: u32,
}

/// Address families and socket types used to classify created sockets.
pub mod sock {
    pub const AF_UNIX: u32 = 1;
    pub const AF_INET: u32 = 2;
    pub const AF_INET6: u32 = 10;
    pub const AF_PACKET: u32 = 17;
    pub const SOCK_STREAM: u32 = 1;
    pub const SOCK_DGRAM: u32 = 2;
    pub const SOCK_RAW: u32 = 3;
    /// socket(2)'s type argument also carries SOCK_NONBLOCK | SOCK_CLOEXEC above these bits.
    pub const SOCK_TYPE_MASK: u32 = 0xf;
}

/// Which `sock_alloc_*` counter a created socket feeds. Raw first: a SOCK_RAW of any family, or
/// any AF_PACKET socket, is raw; then inet stream/datagram; then unix; everything else is other.
pub const fn classify_socket(family: u32, sock_type: u32) -> Event {
    let t = sock_type & sock::SOCK_TYPE_MASK;
    if t == sock::SOCK_RAW || family == sock::AF_PACKET {
        Event::SockAllocRaw
    } else if family == sock::AF_INET || family == sock::AF_INET6 {
        if t == sock::SOCK_STREAM {
            Event::SockAllocTcp
        } else if t == sock::SOCK_DGRAM {
            Event::SockAllocUdp
        } else {
            Event::SockAllocOther
        }
    } else if family == sock::AF_UNIX {
        Event::SockAllocUnix
    } else {
        Event::SockAllocOther
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integer arrays without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::EventCounts {}
    unsafe impl aya::Pod for super::TcpStateBalance {}
    unsafe impl aya::Pod for super::SocketCall {}
    unsafe impl aya::Pod for super::CgroupCounting {}
    unsafe impl aya::Pod for super::NetnsKeying {}
    unsafe impl aya::Pod for super::NetnsTcpBalance {}
    unsafe impl aya::Pod for super::NetKey {}
    // SAFETY: u32, u32, then a byte array: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::CgroupName {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn event_order_matches_discriminants() {
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?}");
        }
    }

    #[test]
    fn socket_classification() {
        use sock::*;
        assert_eq!(classify_socket(AF_INET, SOCK_STREAM), Event::SockAllocTcp);
        assert_eq!(classify_socket(AF_INET6, SOCK_STREAM | 0o4000 | 0o2000000), Event::SockAllocTcp);
        assert_eq!(classify_socket(AF_INET6, SOCK_DGRAM), Event::SockAllocUdp);
        assert_eq!(classify_socket(AF_INET, SOCK_RAW), Event::SockAllocRaw);
        assert_eq!(classify_socket(AF_PACKET, SOCK_DGRAM), Event::SockAllocRaw);
        assert_eq!(classify_socket(AF_UNIX, SOCK_DGRAM), Event::SockAllocUnix);
        assert_eq!(classify_socket(AF_UNIX, SOCK_RAW), Event::SockAllocRaw);
        assert_eq!(classify_socket(16 /* AF_NETLINK */, SOCK_DGRAM), Event::SockAllocOther);
        assert_eq!(classify_socket(AF_INET, 5 /* SOCK_SEQPACKET */), Event::SockAllocOther);
    }
}
