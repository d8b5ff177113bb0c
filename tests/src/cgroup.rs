//! Cgroups for tests, made in this host's cgroup v2 tree only (shared/spec/platform.md: on the
//! hybrid host, writing a test process's pid to a v2 cgroup.procs changes v2 membership only).
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
        let root = agent::cgroups::cgroup2_root_of_this_host().expect("a cgroup v2 tree is mounted");
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
