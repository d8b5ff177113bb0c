//! What the agent reads, and the sampler that makes one row of it each interval: the procfs and
//! sysfs features (`collector/`), the eBPF programs and their maps (`ebpf`, with `btf` for the
//! kernel's field offsets), the cgroup tree and the pods in it (`cgroups`, `pods`, `workload`),
//! network namespaces and their TCP tables (`netns`, `tcp_diag`, `conn_gauges`), and the byte
//! counting's socket-buffer programs and address ranges (`net_bytes`).
pub mod btf;
pub mod cgroups;
pub mod collector;
pub mod conn_gauges;
pub mod ebpf;
pub mod net_bytes;
pub mod netns;
pub mod pods;
pub mod sampler;
pub mod tcp_diag;
pub mod workload;
