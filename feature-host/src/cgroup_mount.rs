//! Facts about the host both binaries need: where its cgroup v2 tree is mounted (the agent
//! names cgroups under it; the lab makes its scenario pods there).
use std::path::{Path, PathBuf};

/// Where the cgroup v2 tree is mounted, from a mountinfo text: the cgroup2 mount of the tree's
/// root, preferring /sys/fs/cgroup (pure v2) over any other (hybrid: /sys/fs/cgroup/unified).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split(' ').collect();
        let fstype = right.split(' ').next();
        if fstype == Some("cgroup2") && fields.len() >= 5 && fields[3] == "/" {
            found.push(PathBuf::from(unescape_mount_path(fields[4])));
        }
    }
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 tree of the host the agent runs on (this process's mount namespace).
pub fn cgroup2_root_of_this_host() -> Option<PathBuf> {
    cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_tree_pure_or_hybrid() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n\
                    31 1 0:26 / /host/sys\\040fs rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let only_host = "31 1 0:26 / /host/sys\\040fs rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(only_host), Some(PathBuf::from("/host/sys fs")));
        // A container's own view (root is not "/") and v1-only hosts have none.
        assert_eq!(cgroup2_mount("40 1 0:26 /kubepods/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"), None);
        assert_eq!(cgroup2_mount("27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }
}
