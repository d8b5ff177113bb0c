//! Who a cgroup belongs to, without the API server: the host's cgroup v2 tree (found in
//! mountinfo, pure v2 or hybrid), kubelet's cgroup naming for both cgroup drivers and the common
//! runtimes (pod UID, QoS class, container ID), host services by systemd unit, and pod
//! namespaces and names from kubelet's /var/log/pods directories.
use std::{collections::HashMap, path::Path};

pub use feature_host::{cgroup2_mount, cgroup2_root_of_this_host};

/// Kubernetes QoS class, from the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// Who a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A pod (its own cgroup, or one of its containers').
    Pod { uid: String, qos: Qos, container: Option<Container> },
    /// A host service: a systemd unit under system.slice.
    Service { unit: String },
    /// Anything else: the root, user sessions, kubepods' own slices, unknown layouts.
    Other,
}

/// A container's runtime and ID, from its cgroup's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Container {
    pub runtime: &'static str,
    pub id: String,
}

/// A pod UID: an API server's UUID (36 characters with dashes), or a static pod's, which kubelet
/// makes from the hash of its manifest (32 hex digits, no dashes).
fn is_uid(s: &str) -> bool {
    let uuid = s.len() == 36
        && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    uuid || (s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// A container ID: 64 hex digits (containerd, CRI-O, Docker all use the full SHA-256).
fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())).then(|| s.to_owned())
}

/// The runtime and ID in a systemd-driver scope name (`cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`) or a cgroupfs-driver directory (`<id>`, or
/// `cri-containerd-<id>` / `crio-<id>` / `docker-<id>`).
fn container(component: &str) -> Option<Container> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in [("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("docker-", "docker")] {
        if let Some(id) = name.strip_prefix(prefix).and_then(container_id) {
            return Some(Container { runtime, id });
        }
    }
    container_id(name).map(|id| Container { runtime: "unknown", id })
}

/// The pod UID and QoS of a pod cgroup's own directory name, for either driver:
/// systemd `kubepods-burstable-pod<uid with _>.slice`, `kubepods-pod<uid>.slice` (guaranteed);
/// cgroupfs `pod<uid>` under `kubepods/burstable`, `kubepods/besteffort` or `kubepods`.
fn pod(component: &str, parent: Option<&str>) -> Option<(String, Qos)> {
    if let Some(slice) = component.strip_suffix(".slice") {
        let (qos, rest) = if let Some(r) = slice.strip_prefix("kubepods-burstable-pod") {
            (Qos::Burstable, r)
        } else if let Some(r) = slice.strip_prefix("kubepods-besteffort-pod") {
            (Qos::BestEffort, r)
        } else if let Some(r) = slice.strip_prefix("kubepods-pod") {
            (Qos::Guaranteed, r)
        } else {
            return None;
        };
        let uid = rest.replace('_', "-");
        return is_uid(&uid).then_some((uid, qos));
    }
    let uid = component.strip_prefix("pod")?;
    if !is_uid(uid) {
        return None;
    }
    let qos = match parent {
        Some("burstable") => Qos::Burstable,
        Some("besteffort") => Qos::BestEffort,
        _ => Qos::Guaranteed,
    };
    Some((uid.to_owned(), qos))
}

/// Who owns the cgroup at `path` (relative to the v2 root, with or without a leading '/').
pub fn classify(path: &str) -> Owner {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        if let Some((uid, qos)) = pod(part, parent) {
            // kubelet puts pods only under a kubepods parent.
            if !parts[..i].iter().any(|p| p.contains("kubepods")) {
                continue;
            }
            let container = parts.get(i + 1).and_then(|c| container(c));
            return Owner::Pod { uid, qos, container };
        }
    }
    if parts.first() == Some(&"system.slice") {
        if let Some(unit) = parts.get(1) {
            return Owner::Service { unit: (*unit).to_owned() };
        }
    }
    Owner::Other
}

/// A pod's namespace and name, from kubelet's log directory name `<namespace>_<pod>_<uid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    /// Container names (the directory's subdirectories), sorted.
    pub containers: Vec<String>,
}

/// Reads `/var/log/pods` (or the directory given): pod UID -> names. Directories whose name is
/// not `<namespace>_<pod>_<uid>` are skipped. Namespaces and pod names cannot contain '_', so the
/// split is unambiguous; anything else in them (quotes, unicode) is kept as it is.
pub fn pod_names(dir: &Path) -> HashMap<String, PodName> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let Some((namespace, name, uid)) = split_log_dir(&file_name) else { continue };
        let mut containers: Vec<String> = std::fs::read_dir(entry.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        containers.sort();
        out.insert(uid.to_owned(), PodName { namespace: namespace.to_owned(), name: name.to_owned(), containers });
    }
    out
}

fn split_log_dir(s: &str) -> Option<(&str, &str, &str)> {
    let mut it = s.splitn(3, '_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    (!ns.is_empty() && !pod.is_empty() && is_uid(uid)).then_some((ns, pod, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1f2e3d4c-5b6a-4789-8abc-0123456789ab";

    #[test]
    fn systemd_driver_pods_and_containers() {
        let u = UID.replace('-', "_");
        let id = "ab".repeat(32);
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{id}.scope"
        );
        assert_eq!(
            classify(&path),
            Owner::Pod {
                uid: UID.into(),
                qos: Qos::Burstable,
                container: Some(Container { runtime: "containerd", id: id.clone() })
            }
        );
        let path = format!("kubepods.slice/kubepods-pod{u}.slice/crio-{id}.scope");
        assert_eq!(
            classify(&path),
            Owner::Pod {
                uid: UID.into(),
                qos: Qos::Guaranteed,
                container: Some(Container { runtime: "cri-o", id: id.clone() })
            }
        );
        let path = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice");
        assert_eq!(classify(&path), Owner::Pod { uid: UID.into(), qos: Qos::BestEffort, container: None });
        // Nested under a kubelet slice (kind, some distributions).
        let path = format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{id}.scope");
        assert!(matches!(
            classify(&path),
            Owner::Pod { qos: Qos::BestEffort, container: Some(Container { runtime: "docker", .. }), .. }
        ));
    }

    #[test]
    fn cgroupfs_driver_pods_and_containers() {
        let id = "cd".repeat(32);
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{UID}/{id}")),
            Owner::Pod {
                uid: UID.into(),
                qos: Qos::Burstable,
                container: Some(Container { runtime: "unknown", id: id.clone() })
            }
        );
        assert_eq!(
            classify(&format!("/kubepods/pod{UID}")),
            Owner::Pod { uid: UID.into(), qos: Qos::Guaranteed, container: None }
        );
        assert!(matches!(
            classify(&format!("/kubepods/besteffort/pod{UID}/crio-{id}")),
            Owner::Pod { qos: Qos::BestEffort, .. }
        ));
    }

    /// kubelet names a static pod (a manifest file on the node) by the hash of its manifest:
    /// 32 hex digits, in both drivers' paths and in its log directory.
    #[test]
    fn static_pods_have_hash_uids() {
        let uid = "5f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let id = "ef".repeat(32);
        assert_eq!(
            classify(&format!("/kubepods/besteffort/pod{uid}/{id}")),
            Owner::Pod {
                uid: uid.into(),
                qos: Qos::BestEffort,
                container: Some(Container { runtime: "unknown", id: id.clone() })
            }
        );
        assert_eq!(
            classify(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice")),
            Owner::Pod { uid: uid.into(), qos: Qos::Burstable, container: None }
        );
        assert_eq!(split_log_dir(&format!("kube-system_etcd-node1_{uid}")), Some(("kube-system", "etcd-node1", uid)));
        for not_a_uid in
            ["5f1e2d3c4b5a69788796a5b4c3d2e1f", "5f1e2d3c4b5a69788796a5b4c3d2e1fz", "5f1e2d3c4b5a6978-8796a5b4c3d2e1f0"]
        {
            assert_eq!(classify(&format!("/kubepods/pod{not_a_uid}")), Owner::Other, "{not_a_uid}");
        }
    }

    #[test]
    fn services_and_everything_else() {
        assert_eq!(classify("/system.slice/kubelet.service"), Owner::Service { unit: "kubelet.service".into() });
        assert_eq!(
            classify("/system.slice/containerd.service/sub"),
            Owner::Service { unit: "containerd.service".into() }
        );
        for other in [
            "/",
            "",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods.slice",
            "/kubepods/burstable",
            "/kubepods/burstable/podnot-a-uid",
            &format!("/elsewhere/pod{UID}"),
            "/init.scope",
            "/system.slice",
        ] {
            assert_eq!(classify(other), Owner::Other, "{other}");
        }
    }

    #[test]
    fn pod_names_from_log_directories_hostile_ones_included() {
        let dir = std::env::temp_dir().join(format!("feature-agent-pod-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The longest pod name a log directory can hold: the whole name is at most 255 bytes.
        let long = "p".repeat(255 - "kube-system__".len() - 36);
        let names = [
            ("default", "web-7d9f", "2f2e3d4c-5b6a-4789-8abc-0123456789ab"),
            ("it's \"quoted\"", "pöd-ü-名前", "3f2e3d4c-5b6a-4789-8abc-0123456789ab"),
            ("kube-system", long.as_str(), "4f2e3d4c-5b6a-4789-8abc-0123456789ab"),
        ];
        for (ns, pod, uid) in names {
            std::fs::create_dir_all(dir.join(format!("{ns}_{pod}_{uid}")).join("app")).unwrap();
        }
        std::fs::create_dir_all(dir.join("not-a-pod")).unwrap();
        std::fs::create_dir_all(dir.join("ns_pod_not-a-uid")).unwrap();
        let got = pod_names(&dir);
        assert_eq!(got.len(), 3);
        for (ns, pod, uid) in names {
            assert_eq!(got[uid], PodName { namespace: ns.into(), name: pod.into(), containers: vec!["app".into()] });
        }
        assert!(pod_names(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The pod's (or unit's) resource columns from its cgroup v2 directory, in
/// [`feature_schema::pods::Res`] order; NULL for each file that is absent or unreadable.
pub fn read_resources(dir: &Path) -> [Option<i64>; feature_schema::pods::RESOURCE_COUNT] {
    CgroupDir::open(dir).map_or([None; feature_schema::pods::RESOURCE_COUNT], |mut d| d.read_resources())
}

/// How many walks may trust the leaves the previous walk found before one stats every
/// directory again (a bound on how long a subdirectory made without a report could go unseen).
const FULL_WALK_EVERY: u32 = 32;

/// The walks of a cgroup tree, one an interval: every directory under the root (every cgroup),
/// by inode number (the cgroup id), with its path relative to the root (the root itself is "").
///
/// Each directory is opened relative to its parent, so the kernel looks up one name, not the
/// whole path; and a directory whose link count says it has no subdirectories (2: kernfs counts
/// a directory's subdirectories in its links, as most file systems do) is not opened at all.
/// Most cgroups of a node are such leaves (its containers), so a walk opens about one directory
/// per pod. A file system that does not count them (a link count of 1) is walked into.
///
/// A leaf stays a leaf until a directory is made in it. When the caller hears of every directory
/// made (the cgroup_mkdir hook: [`TreeWalk::made`]), the next walk takes the leaves of the last
/// one without asking their link count again (its inode comes with the directory entry), so a
/// walk of a steady node costs one directory read per pod and no other system call. Without
/// such reports ([`TreeWalk::forget`] before each walk), or every [`FULL_WALK_EVERY`] walks,
/// every directory is asked.
#[derive(Debug, Default)]
pub struct TreeWalk {
    leaves: std::collections::HashSet<String>,
    walks: u32,
    /// The directory listing buffer, reused across directories and walks.
    listing: Vec<u8>,
}

impl TreeWalk {
    /// A directory was made at `path` (relative to the root, a leading '/' allowed): its parent
    /// is no longer a leaf.
    pub fn made(&mut self, path: &str) {
        let path = path.trim_matches('/');
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        self.leaves.remove(parent);
    }

    /// The next walk asks every directory (the caller may have missed a directory made).
    pub fn forget(&mut self) {
        self.leaves.clear();
    }

    /// Directories the last walk found to be leaves.
    pub fn leaves(&self) -> usize {
        self.leaves.len()
    }

    /// Every directory under `root`, down to `max_depth` levels.
    pub fn walk(&mut self, root: &Path, max_depth: usize) -> std::collections::HashMap<u64, String> {
        use std::os::fd::{AsRawFd, FromRawFd};
        if self.walks.is_multiple_of(FULL_WALK_EVERY) {
            self.leaves.clear();
        }
        self.walks = self.walks.wrapping_add(1);
        let known_leaves = std::mem::take(&mut self.leaves);
        let mut out = std::collections::HashMap::new();
        let Ok(top) = std::fs::File::open(root) else { return out };
        if let Ok(m) = top.metadata() {
            out.insert(std::os::unix::fs::MetadataExt::ino(&m), String::new());
        }
        let mut stack = vec![(top, String::new(), 0usize)];
        let mut entries = Vec::new();
        while let Some((dir, rel, depth)) = stack.pop() {
            if list_dir(&dir, &mut self.listing, &mut entries).is_err() {
                continue;
            }
            for entry in &entries {
                let name = entry.name.as_c_str();
                let Ok(name_str) = name.to_str() else { continue };
                let path = if rel.is_empty() { name_str.to_owned() } else { format!("{rel}/{name_str}") };
                if entry.d_type == libc::DT_DIR && known_leaves.contains(&path) {
                    out.insert(entry.ino, path.clone());
                    self.leaves.insert(path);
                    continue;
                }
                // SAFETY: all-zero is a valid stat64.
                let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
                // SAFETY: a valid directory descriptor, a NUL-terminated name and an out-pointer.
                let stat =
                    unsafe { libc::fstatat64(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
                if stat != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    continue;
                }
                if st.st_nlink == 2 {
                    self.leaves.insert(path.clone());
                } else if depth + 1 < max_depth {
                    // SAFETY: as above; the result is checked before it is owned.
                    let sub = unsafe {
                        libc::openat(
                            dir.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        )
                    };
                    if sub >= 0 {
                        // SAFETY: a fresh descriptor that we own.
                        stack.push((unsafe { std::fs::File::from_raw_fd(sub) }, path.clone(), depth + 1));
                    }
                }
                out.insert(st.st_ino, path);
            }
        }
        out
    }
}

/// A subdirectory entry (or one of unknown type) of a directory listing.
struct DirEntry {
    ino: u64,
    d_type: u8,
    name: std::ffi::CString,
}

/// The subdirectories (and entries of unknown type) of the open directory `dir`, but `.` and
/// `..`, into `out`: read with getdents64 on `dir` itself into the reused `buf`, which costs a
/// listing two system calls where `fdopendir` and `readdir` take six (a duplicate descriptor, its
/// fstat, fcntl and close).
fn list_dir(dir: &std::fs::File, buf: &mut Vec<u8>, out: &mut Vec<DirEntry>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BUF: usize = 32 * 1024;
    // The fixed part of struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1).
    const HEAD: usize = 19;
    out.clear();
    buf.resize(BUF, 0);
    loop {
        // SAFETY: getdents64 writes at most BUF bytes of records into buf, a valid buffer of
        // that size, for a directory descriptor we own.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), buf.as_mut_ptr(), BUF) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        let mut at = 0usize;
        while at + HEAD <= n as usize {
            let record = &buf[at..n as usize];
            let ino = u64::from_ne_bytes(record[0..8].try_into().expect("8 bytes"));
            let reclen = usize::from(u16::from_ne_bytes(record[16..18].try_into().expect("2 bytes")));
            let d_type = record[18];
            if reclen < HEAD || reclen > record.len() {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a malformed directory record"));
            }
            at += reclen;
            if d_type != libc::DT_DIR && d_type != libc::DT_UNKNOWN {
                continue;
            }
            let Ok(name) = std::ffi::CStr::from_bytes_until_nul(&record[HEAD..reclen]) else { continue };
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            out.push(DirEntry { ino, d_type, name: name.to_owned() });
        }
    }
}

/// Every directory under `root`, down to `max_depth` levels: one walk of a [`TreeWalk`] that
/// knows nothing yet.
pub fn walk_tree(root: &Path, max_depth: usize) -> std::collections::HashMap<u64, String> {
    TreeWalk::default().walk(root, max_depth)
}

/// The resource files [`CgroupDir::read_resources`] reads, in the order of its absent mask.
const RESOURCE_FILES: [&std::ffi::CStr; 8] = [
    c"cpu.stat",
    c"cpu.pressure",
    c"memory.pressure",
    c"io.pressure",
    c"memory.current",
    c"memory.events",
    c"pids.current",
    c"io.stat",
];

/// How many reads a file found absent is skipped before it is looked for again (a controller
/// enabled in the parent's subtree_control later brings its files then).
const ABSENT_RECHECK: u32 = 32;

/// A pod's (or unit's) cgroup directory, kept open across intervals: each file is opened
/// relative to it, so the kernel looks up one name instead of walking the whole path from the
/// root through cgroupfs (most of the per-pod cost on a node of 500 pods, BENCHMARKS.md "A node
/// full of pods"), read with one `pread` (a cgroup file is a single-record kernfs file: a read
/// shorter than the buffer is its end) and closed; a file found absent (a controller the tree
/// does not enable there) is skipped until it is looked for again.
///
/// The files themselves are not kept open between intervals: on Linux 6.1 and 6.12 a removed
/// cgroup whose interface files a process holds open stays in its parent's listing, so the pod
/// would live on in the agent's rows (the kernel matrix's `pod_counts` test found it).
pub struct CgroupDir {
    dir: std::fs::File,
    absent: u8,
    reads: u32,
    buf: String,
}

/// Raises the soft open-file limit to the hard one, as a daemon that holds descriptors per pod
/// must (each pod's cgroup directory and its namespace's /proc directory stay open: 1,000 at 500
/// pods, against the soft 1024 that systemd and containerd 2 start processes with). Returns the
/// soft limit now.
pub fn raise_open_file_limit() -> u64 {
    // SAFETY: all-zero is a valid rlimit; getrlimit writes it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: a valid resource and a limit within the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

impl CgroupDir {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path)?;
        Ok(CgroupDir { dir, absent: 0, reads: 0, buf: String::new() })
    }

    /// Reads file `i` of [`RESOURCE_FILES`] into `self.buf`.
    fn read_file(&mut self, i: usize) -> std::io::Result<()> {
        self.buf.clear();
        let f = open_at(&self.dir, RESOURCE_FILES[i])?;
        read_whole_record(&f, &mut self.buf)
    }

    /// The resource columns, as [`read_resources`] gives them for a path.
    pub fn read_resources(&mut self) -> [Option<i64>; feature_schema::pods::RESOURCE_COUNT] {
        use feature_schema::pods::Res;
        if self.reads.is_multiple_of(ABSENT_RECHECK) {
            self.absent = 0;
        }
        self.reads = self.reads.wrapping_add(1);
        let mut r = [None; feature_schema::pods::RESOURCE_COUNT];
        for i in 0..RESOURCE_FILES.len() {
            if self.absent & (1 << i) != 0 {
                continue;
            }
            match self.read_file(i) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.absent |= 1 << i;
                    continue;
                }
                Err(_) => continue,
            }
            let t = self.buf.as_str();
            match i {
                0 => r[Res::CpuUsage as usize] = keyed(t, "usage_usec"),
                1 => r[Res::CpuPressure as usize] = pressure_some_total(t),
                2 => r[Res::MemoryPressure as usize] = pressure_some_total(t),
                3 => r[Res::IoPressure as usize] = pressure_some_total(t),
                4 => r[Res::MemoryCurrent as usize] = t.trim().parse().ok(),
                5 => r[Res::OomKills as usize] = keyed(t, "oom_kill"),
                6 => r[Res::PidsCurrent as usize] = t.trim().parse().ok(),
                _ => {
                    if let Some((rbytes, wbytes)) = io_bytes(t) {
                        r[Res::IoReadBytes as usize] = Some(rbytes);
                        r[Res::IoWriteBytes as usize] = Some(wbytes);
                    }
                }
            }
        }
        r
    }
}

/// Opens `name` relative to the open directory `dir`, read-only.
fn open_at(dir: &std::fs::File, name: &std::ffi::CStr) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: openat with a valid directory descriptor and a NUL-terminated name; the result is
    // checked before it is owned.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Reads a single-record kernfs file (every cgroup interface file this module reads) from
/// offset 0 into `buf`: the kernel makes the record anew for a read at 0 and gives all of it
/// that fits, so a read shorter than the space offered is the end (one system call for a
/// file under 4 KiB, where reading until 0 takes two).
fn read_whole_record(f: &std::fs::File, buf: &mut String) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    // Read on the stack and copied, so that `buf` (one per pod) keeps the size of its file, not
    // of the read's buffer.
    let mut chunk = [0u8; 4096];
    let mut bytes = std::mem::take(buf).into_bytes();
    bytes.clear();
    loop {
        match f.read_at(&mut chunk, bytes.len() as u64) {
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                bytes.clear();
                *buf = String::from_utf8(bytes).unwrap_or_default();
                return Err(e);
            }
        }
    }
    *buf = String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(())
}

/// Reads `name` relative to the open directory `dir` into `buf` (appending). Plain reads until
/// the end: `read_to_string` would first ask the file's size (one more system call per file),
/// which these kernel-made files do not know anyway.
pub fn read_file_at(dir: &std::fs::File, name: &std::ffi::CStr, buf: &mut String) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = open_at(dir, name)?;
    let mut chunk = [0u8; 4096];
    let mut bytes = std::mem::take(buf).into_bytes();
    let result = loop {
        match f.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    *buf = String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    result
}

/// `key value` lines (cpu.stat, memory.events): the value of `key`.
pub fn keyed(text: &str, key: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A PSI file's `some ... total=N` (microseconds stalled, cumulative).
pub fn pressure_some_total(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split(' ').find_map(|f| f.strip_prefix("total=")).and_then(|v| v.trim().parse().ok())
}

/// io.stat (`MAJ:MIN rbytes=.. wbytes=.. ...` per device): read and written bytes summed over
/// devices; Some((0, 0)) for an empty file (no IO yet), None if a line is malformed.
pub fn io_bytes(text: &str) -> Option<(i64, i64)> {
    let (mut r, mut w) = (0i64, 0i64);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split(' ');
        fields.next()?.split_once(':')?;
        for f in fields {
            if let Some(v) = f.strip_prefix("rbytes=") {
                r = r.checked_add(v.parse().ok()?)?;
            } else if let Some(v) = f.strip_prefix("wbytes=") {
                w = w.checked_add(v.parse().ok()?)?;
            }
        }
    }
    Some((r, w))
}

#[cfg(test)]
mod resource_tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("feature-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A walk trusts the last walk's leaves: a directory made in a leaf is seen once the caller
    /// reports it (`made`), when it says it may have missed one (`forget`), or at the periodic
    /// full walk; never lost for longer.
    #[test]
    fn a_walk_trusts_known_leaves_until_told_of_a_directory_made_in_one() {
        let root = scratch("walk");
        for d in ["pods/a/c1", "pods/b/c1", "system/unit"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut tree = TreeWalk::default();
        let paths = |m: &std::collections::HashMap<u64, String>| {
            let mut p: Vec<String> = m.values().cloned().collect();
            p.sort();
            p
        };
        let first = tree.walk(&root, 8);
        assert_eq!(paths(&first), ["", "pods", "pods/a", "pods/a/c1", "pods/b", "pods/b/c1", "system", "system/unit"]);
        assert_eq!(tree.leaves(), 3);
        // The ids are the inodes, from the directory entries for trusted leaves too.
        let second = tree.walk(&root, 8);
        assert_eq!(first, second);

        std::fs::create_dir(root.join("pods/a/c1/nested")).unwrap();
        assert!(!tree.walk(&root, 8).values().any(|p| p == "pods/a/c1/nested"), "a trusted leaf is not stat'ed");
        tree.made("/pods/a/c1/nested");
        assert!(tree.walk(&root, 8).values().any(|p| p == "pods/a/c1/nested"));

        std::fs::create_dir(root.join("pods/b/c1/nested")).unwrap();
        tree.forget();
        assert!(tree.walk(&root, 8).values().any(|p| p == "pods/b/c1/nested"));

        std::fs::create_dir(root.join("system/unit/nested")).unwrap();
        let seen = (0..FULL_WALK_EVERY).position(|_| tree.walk(&root, 8).values().any(|p| p == "system/unit/nested"));
        assert!(seen.is_some(), "the periodic full walk finds it");

        // A removed leaf is gone from the next walk.
        std::fs::remove_dir(root.join("system/unit/nested")).unwrap();
        std::fs::remove_dir(root.join("system/unit")).unwrap();
        assert!(!tree.walk(&root, 8).values().any(|p| p.starts_with("system/unit")));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A file is read from offset 0 whole, past one 4 KiB chunk, and again from 0 each time.
    #[test]
    fn a_record_is_read_whole_from_the_start_each_time() {
        let dir = scratch("record");
        let path = dir.join("big");
        let text: String = (0..1500).map(|i| format!("{i:06}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let mut buf = String::from("left over");
        read_whole_record(&f, &mut buf).unwrap();
        assert_eq!(buf, text);
        read_whole_record(&f, &mut buf).unwrap();
        assert_eq!(buf, text, "a second read starts at 0 again");
        std::fs::write(&path, "7\n").unwrap();
        read_whole_record(&f, &mut buf).unwrap();
        assert_eq!(buf, "7\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cgroup_files_parse_and_malformed_ones_are_null() {
        assert_eq!(keyed("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n", "usage_usec"), Some(1234));
        assert_eq!(keyed("usage_usec x\n", "usage_usec"), None);
        assert_eq!(keyed("low 0\nhigh 0\nmax 0\noom 2\noom_kill 3\noom_group_kill 0\n", "oom_kill"), Some(3));
        let psi =
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=98765\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(pressure_some_total(psi), Some(98765));
        assert_eq!(pressure_some_total("full avg10=0.00 total=5\n"), None);
        assert_eq!(pressure_some_total("some total=\n"), None);
        let io = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=1 wbytes=2 rios=1 wios=1\n";
        assert_eq!(io_bytes(io), Some((4097, 8194)));
        assert_eq!(io_bytes(""), Some((0, 0)));
        assert_eq!(io_bytes("garbage rbytes=1\n"), None);
        assert_eq!(io_bytes("8:0 rbytes=x\n"), None);
        assert_eq!(io_bytes(&format!("8:0 rbytes={}\n8:1 rbytes=1\n", i64::MAX)), None);
    }

    #[test]
    fn a_directory_without_the_files_gives_nulls() {
        let r = read_resources(Path::new("/nonexistent-cgroup"));
        assert!(r.iter().all(Option::is_none));
    }
}
