//! Cgroups for tests, made in this host's cgroup v2 tree only (docs/kernels.md, "This project's
//! CI machine": on a hybrid host, writing a test process's pid to a v2 cgroup.procs changes v2
//! membership only).
use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

/// A cgroup made for one test under the v2 root, removed (with its children) on drop.
pub struct TestCgroup {
    pub top: PathBuf,
    pub leaves: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes `<v2 root>/feature-agent-test-<name>-<pid>/<leaf>` for each leaf.
    pub fn new(name: &str, leaves: &[&str]) -> Self {
        let root = agent::sources::cgroups::cgroup2_root_of_this_host().expect("a cgroup v2 tree is mounted");
        let top = root.join(format!("feature-agent-test-{name}-{}", std::process::id()));
        let _ = Self::remove_tree(&top);
        let leaves = leaves.iter().map(|l| top.join(l)).collect::<Vec<_>>();
        for l in &leaves {
            std::fs::create_dir_all(l).unwrap_or_else(|e| panic!("mkdir {}: {e}", l.display()));
        }
        TestCgroup { top, leaves }
    }

    /// Removes a cgroup directory and its children (they must hold no process).
    pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                Self::remove_tree(&entry.path())?;
            }
        }
        std::fs::remove_dir(dir)
    }

    /// The cgroup id of leaf `leaf`: its directory's inode.
    pub fn id(&self, leaf: usize) -> u64 {
        std::fs::metadata(&self.leaves[leaf]).unwrap().ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = Self::remove_tree(&self.top);
    }
}

/// A command whose process joins `cgroup` before it execs.
pub fn in_cgroup(program: &str, args: &[&str], cgroup: &Path) -> Command {
    let procs = cgroup.join("cgroup.procs");
    let mut c = Command::new(program);
    c.args(args);
    // SAFETY: only async-signal-safe work between fork and exec: open, write, close.
    unsafe {
        c.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    c
}

/// `n` kubelet-style pods for the benches: each a cgroup holding one sleeping process, in a
/// network namespace of its own (`unshare -n`) or in the host's, named in a pod log directory
/// of its own (`bench_web-<i>_<uid>/main`); killed and removed on drop.
pub struct KubeletPods {
    children: Vec<std::process::Child>,
    logs: PathBuf,
    _cgroups: Option<TestCgroup>,
}

impl KubeletPods {
    pub fn new(n: usize, own_namespaces: bool, tag: &str) -> Self {
        let logs = std::env::temp_dir().join(format!("feature-agent-bench-pods-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("the pod log directory");
        if n == 0 {
            return KubeletPods { children: Vec::new(), logs, _cgroups: None };
        }
        // A UID the agent takes for one (hex digits): the tag hashed into its last group.
        let tag_hex =
            tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let uid = |i: usize| format!("0a1b2c3d-{i:04}-4000-8000-{:012x}", tag_hex & 0xffff_ffff_ffff);
        let leaves: Vec<String> =
            (0..n).map(|i| format!("kubepods/besteffort/pod{}/{:0>64}", uid(i), format!("{i:x}"))).collect();
        for i in 0..n {
            std::fs::create_dir_all(logs.join(format!("bench_web-{i}_{}/main", uid(i)))).expect("a pod log directory");
        }
        let refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
        let cg = TestCgroup::new(&format!("bench-{tag}"), &refs);
        let children = cg
            .leaves
            .iter()
            .map(|leaf| {
                let mut c = if own_namespaces {
                    in_cgroup("unshare", &["-n", "sleep", "3600"], leaf)
                } else {
                    in_cgroup("sleep", &["3600"], leaf)
                };
                c.stdout(std::process::Stdio::null()).spawn().expect("sleep runs")
            })
            .collect();
        // Let every process reach its exec (and its namespace) before measuring.
        std::thread::sleep(std::time::Duration::from_millis(300 + n as u64 * 2));
        KubeletPods { children, logs, _cgroups: Some(cg) }
    }

    /// The pods' log directory (kubelet's /var/log/pods).
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The pods' processes' PIDs.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(std::process::Child::id).collect()
    }
}

impl Drop for KubeletPods {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}
