//! Byte counting (--count-bytes): attaches the two cgroup socket-buffer programs at the root of
//! the cgroup v2 tree, and keeps their map of address classes, which splits every packet by where
//! its peer is (this node, the cluster's ranges, outside).
//!
//! The node's side of the map is loopback, the addresses of the agent's network namespace (the
//! host's, under hostNetwork) and --node-cidrs (the node's pod range); the cluster's is
//! --cluster-cidrs. The node's addresses are read again every [`ADDRESS_REFRESH`], so an address
//! a DHCP lease or a new interface brings joins the node's side within a minute.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
    time::{Duration, Instant},
};

use agent_common::{AddressClass, NetKey, MAP_ADDRESS_CLASSES};
use aya::{
    maps::lpm_trie::{Key, LpmTrie},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use tracing::{info, warn};

use crate::sources::ebpf::{EbpfCounters, EbpfError};

/// How often the node's own addresses are read again.
pub const ADDRESS_REFRESH: Duration = Duration::from_secs(60);

/// An address range: an address and how many of its leading bits match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.96.0.0/12`, `fd00::/8`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| format!("{s:?} is not an address range like 10.96.0.0/12 or fd00::/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The trie key: IPv4 mapped into IPv6 (::ffff:a.b.c.d, 96 more bits of prefix), the
    /// address bits past the prefix cleared.
    fn key(&self) -> Key<NetKey> {
        let (addr, prefix) = match self.addr {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), u32::from(self.prefix) + 96),
            IpAddr::V6(v6) => (v6.octets(), u32::from(self.prefix)),
        };
        let mut masked = [0u8; 16];
        for (i, (m, a)) in masked.iter_mut().zip(addr).enumerate() {
            let bits = prefix.saturating_sub(i as u32 * 8).min(8);
            *m = if bits == 0 { 0 } else { a & (0xffu8 << (8 - bits)) };
        }
        Key::new(prefix, NetKey { addr: masked })
    }
}

/// Parses a comma-separated list of ranges (clap's value parser for --cluster-cidrs and
/// --node-cidrs); empty entries are skipped.
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(Cidr::from_str).collect()
}

/// Loopback, as the node's: 127.0.0.0/8 and ::1.
fn loopback() -> [Cidr; 2] {
    [
        Cidr { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 },
        Cidr { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: 128 },
    ]
}

/// Every address of the agent's network namespace's interfaces, each as a /32 or /128.
pub fn own_addresses() -> std::io::Result<BTreeSet<Cidr>> {
    let mut out = BTreeSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            let addr = match family {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if let Some(addr) = addr {
                out.insert(Cidr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } });
            }
        }
        at = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// The ranges the byte counters split traffic by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRanges {
    /// The node's pod ranges (beside loopback and its own addresses, found by the agent).
    pub node: Vec<Cidr>,
    /// The cluster's pod and service ranges.
    pub cluster: Vec<Cidr>,
}

/// The attached byte counting: the address map, and when the node's addresses were last read.
pub struct ByteCounting {
    classes: LpmTrie<aya::maps::MapData, NetKey, u32>,
    ranges: AddressRanges,
    own: BTreeSet<Cidr>,
    refreshed: Instant,
}

/// The two programs: (program, attach type, hook name for the log and /metrics, the prefix of
/// the columns it feeds).
const PROGRAMS: [(&str, CgroupSkbAttachType, &str, &str); 2] = [
    ("cgroup_skb_egress", CgroupSkbAttachType::Egress, "cgroup_skb/egress", "tx_"),
    ("cgroup_skb_ingress", CgroupSkbAttachType::Ingress, "cgroup_skb/ingress", "rx_"),
];

impl ByteCounting {
    /// Fills the address map, then attaches both programs at `cgroup_root` (the cgroup v2 tree's
    /// root) as bpf_links, which run beside any other program there (systemd's, Cilium's). Needs
    /// CAP_BPF to load them and CAP_NET_ADMIN to attach them to a cgroup; on failure nothing
    /// stays attached and the byte columns stay NULL.
    pub fn attach(ebpf: &mut EbpfCounters, cgroup_root: &Path, ranges: AddressRanges) -> Result<Self, EbpfError> {
        let missing = || aya::maps::MapError::InvalidName { name: MAP_ADDRESS_CLASSES.into() };
        let map = ebpf
            .object_mut()
            .take_map(MAP_ADDRESS_CLASSES)
            .ok_or_else(|| EbpfError::Map { name: MAP_ADDRESS_CLASSES, source: missing() })?;
        let classes = LpmTrie::try_from(map).map_err(|source| EbpfError::Map { name: MAP_ADDRESS_CLASSES, source })?;
        let mut counting = ByteCounting { classes, ranges, own: BTreeSet::new(), refreshed: Instant::now() };
        counting.fill();
        let root = std::fs::File::open(cgroup_root)
            .map_err(|source| EbpfError::CgroupRoot { path: cgroup_root.to_path_buf(), source })?;
        for (name, attach_type, hook, columns) in PROGRAMS {
            let err = |source| EbpfError::Program { program: name, source };
            let program: &mut CgroupSkb = ebpf
                .object_mut()
                .program_mut(name)
                .ok_or(EbpfError::Program { program: name, source: aya::programs::ProgramError::NotLoaded })?
                .try_into()
                .map_err(err)?;
            program.load().map_err(err)?;
            // A bpf_link (kernels >= 5.7) always runs beside the cgroup's other programs: the
            // kernel refuses the ALLOW_MULTI flag on a link and attaches it as multi itself.
            program.attach(&root, attach_type, CgroupAttachMode::Single).map_err(err)?;
            let feeds: Vec<_> =
                agent_common::Event::NET_BYTES.into_iter().filter(|e| e.name().starts_with(columns)).collect();
            ebpf.mark_attached(name, hook, "cgroup v2 root", &feeds);
        }
        info!(
            root = %cgroup_root.display(),
            node = counting.ranges.node.len() + counting.own.len() + 2,
            cluster = counting.ranges.cluster.len(),
            "counting bytes per cgroup (cgroup_skb egress and ingress)"
        );
        Ok(counting)
    }

    /// Reads the node's own addresses again if [`ADDRESS_REFRESH`] has passed, and updates the
    /// map where they changed. A failure is logged; the map keeps the last addresses.
    pub fn refresh(&mut self) {
        if self.refreshed.elapsed() < ADDRESS_REFRESH {
            return;
        }
        self.refreshed = Instant::now();
        match own_addresses() {
            Ok(now) if now != self.own => {
                for gone in self.own.difference(&now) {
                    // The same key may stand for a configured range or loopback too (::1/128).
                    let configured = self.ranges.node.contains(gone) || self.ranges.cluster.contains(gone);
                    if !configured && !loopback().contains(gone) {
                        let _ = self.classes.remove(&gone.key());
                    }
                }
                for new in now.difference(&self.own) {
                    if let Err(e) = self.classes.insert(&new.key(), AddressClass::Node as u32, 0) {
                        warn!(address = %new, error = %e, "cannot add a node address to the byte counters' map");
                    }
                }
                info!(addresses = now.len(), "the node's addresses changed; the byte counters follow");
                self.own = now;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the node's addresses; the byte counters keep the last ones"),
        }
    }

    /// The ranges in the map, by class: the node's (loopback, own addresses, --node-cidrs), then
    /// the cluster's.
    pub fn ranges(&self) -> (Vec<Cidr>, Vec<Cidr>) {
        let mut node: Vec<Cidr> = loopback().into_iter().chain(self.own.iter().copied()).collect();
        node.extend(&self.ranges.node);
        (node, self.ranges.cluster.clone())
    }

    fn fill(&mut self) {
        self.own = own_addresses().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the node's addresses; only loopback and --node-cidrs count as the node's");
            BTreeSet::new()
        });
        // The cluster's first: a node range inside a cluster range is the longer prefix, and an
        // equal one is the node's (inserted last, it replaces the entry).
        let entries = self
            .ranges
            .cluster
            .iter()
            .map(|c| (c, AddressClass::Cluster))
            .chain(loopback().iter().chain(&self.own).chain(&self.ranges.node).map(|c| (c, AddressClass::Node)))
            .map(|(c, class)| (*c, class))
            .collect::<Vec<_>>();
        if entries.len() > agent_common::ADDRESS_CLASSES_MAX as usize {
            warn!(
                ranges = entries.len(),
                max = agent_common::ADDRESS_CLASSES_MAX,
                "more address ranges than the byte counters' map holds; the last ones count as outside"
            );
        }
        for (cidr, class) in entries {
            if let Err(e) = self.classes.insert(&cidr.key(), class as u32, 0) {
                warn!(range = %cidr, error = %e, "cannot add an address range to the byte counters' map");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_clearly() {
        assert_eq!(
            parse_cidrs("10.96.0.0/12, fd00::/8,192.0.2.7,").unwrap(),
            vec![
                Cidr { addr: "10.96.0.0".parse().unwrap(), prefix: 12 },
                Cidr { addr: "fd00::".parse().unwrap(), prefix: 8 },
                Cidr { addr: "192.0.2.7".parse().unwrap(), prefix: 32 },
            ]
        );
        assert!(parse_cidrs("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(parse_cidrs("fd00::/129").unwrap_err().contains("0 to 128"));
        assert!(parse_cidrs("cluster.local").unwrap_err().contains("not an address range"));
        assert!(parse_cidrs("").unwrap().is_empty());
    }

    #[test]
    fn keys_map_ipv4_into_ipv6_and_clear_the_host_bits() {
        let k = Cidr::from_str("10.244.3.77/24").unwrap().key();
        let (prefix, data) = (k.prefix_len(), k.data());
        assert_eq!(prefix, 120);
        assert_eq!(data.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 3, 0]);
        let k = Cidr::from_str("fd00:1234::1/20").unwrap().key();
        assert_eq!(k.prefix_len(), 20);
        assert_eq!(&k.data().addr[..4], &[0xfd, 0x00, 0x10, 0x00]);
        assert!(k.data().addr[4..].iter().all(|b| *b == 0));
        let k = Cidr::from_str("0.0.0.0/0").unwrap().key();
        assert_eq!(k.prefix_len(), 96);
    }
}
