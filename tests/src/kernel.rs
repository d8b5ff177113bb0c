//! What the running kernel lets the agent attach, found by asking it, so that a test expects
//! what this kernel gives and not what the project's CI kernel gives: a stock Debian or Ubuntu
//! kernel has fexit and kprobes, the CI host has neither, and the QEMU matrix's kernels have both.
//!
//! Each socket hook is tried by the agent binary itself with `--require-ebpf` (which fails when
//! any program does not attach). Where a runner knows what its kernel must allow, it says so, and
//! what was found is checked against it, so a kernel that loses an ability fails loudly instead
//! of being expected away: FEATURE_AGENT_SOCKET_HOOKS (every socket hook the kernel must have,
//! comma-separated; `cargo xtask kernel-test` sets `fexit,kprobe,syscalls`) and
//! FEATURE_AGENT_AUTO_SOCKET_HOOK (what `auto` must take; `fexit` there).
use std::{process::Stdio, sync::OnceLock};

/// The socket-creation hooks this kernel allows, beside the syscall tracepoints every supported
/// kernel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketHooks {
    pub fexit: bool,
    pub kprobe: bool,
}

/// Programs the agent attaches whatever the socket hook: fork, exec and exit, the TCP states,
/// both resets, and the dirtied page-cache folios.
pub const BASE_PROGRAMS: usize = 7;

impl SocketHooks {
    /// What `--socket-hook auto` takes here: fexit, else kprobe, else nothing (never the
    /// syscall fallback, whose cost lands on every syscall of the node).
    pub fn auto(self) -> &'static str {
        if self.fexit {
            "fexit"
        } else if self.kprobe {
            "kprobe"
        } else {
            "none"
        }
    }

    /// Programs attached by `print --require-ebpf` with the default `--socket-hook auto`.
    pub fn default_programs(self) -> usize {
        BASE_PROGRAMS + usize::from(self.auto() != "none")
    }

    /// Every hook that counts socket creations here, the syscall fallback last.
    pub fn all(self) -> Vec<&'static str> {
        let mut all = Vec::new();
        if self.fexit {
            all.push("fexit");
        }
        if self.kprobe {
            all.push("kprobe");
        }
        all.push("syscalls");
        all
    }

    /// Every hook of `all`, as the agent's load option.
    pub fn all_options(self) -> Vec<(agent::sources::ebpf::SocketHook, &'static str)> {
        use agent::sources::ebpf::SocketHook;
        let option = |hook| match hook {
            "fexit" => SocketHook::Fexit,
            "kprobe" => SocketHook::Kprobe,
            _ => SocketHook::Syscalls,
        };
        self.all().into_iter().map(|h| (option(h), h)).collect()
    }

    /// Whether the default run counts socket creations (the sock_alloc_* columns).
    pub fn counts_sockets_by_default(self) -> bool {
        self.auto() != "none"
    }
}

/// Programs attached with `--socket-hook syscalls`: the base and the four syscall tracepoints
/// (socket and socketpair, entry and exit).
pub const PROGRAMS_WITH_SYSCALL_HOOKS: usize = BASE_PROGRAMS + 4;

/// Whether `--socket-hook <hook>` attaches here: the run succeeds with --require-ebpf and its log
/// names a program on that hook (not only a run that happened to succeed).
fn attaches(hook: &str) -> bool {
    let out = std::process::Command::new(crate::agent_bin())
        .args(["print", "--records", "1", "--interval", "0.1", "--node-name", "probe", "--require-ebpf"])
        .args(["--socket-hook", hook])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running feature-agent");
    let log = String::from_utf8_lossy(&out.stderr);
    let attached = out.status.success() && log.contains(&format!("hook=\"{hook}\""));
    assert!(attached || !out.status.success(), "--socket-hook {hook} succeeded without a program on that hook:\n{log}");
    attached
}

/// This kernel's socket hooks (asked once per test binary; needs root).
pub fn socket_hooks() -> SocketHooks {
    static FOUND: OnceLock<SocketHooks> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let found = SocketHooks { fexit: attaches("fexit"), kprobe: attaches("kprobe") };
        if let Ok(want) = std::env::var("FEATURE_AGENT_AUTO_SOCKET_HOOK") {
            assert_eq!(found.auto(), want, "FEATURE_AGENT_AUTO_SOCKET_HOOK: this kernel's hooks are {found:?}");
        }
        if let Ok(want) = std::env::var("FEATURE_AGENT_SOCKET_HOOKS") {
            assert_eq!(found.all().join(","), want, "FEATURE_AGENT_SOCKET_HOOKS: this kernel's hooks are {found:?}");
        }
        found
    })
}

/// Whether `tcp_send_reset` fires for a reset sent on behalf of no socket (the RST answering a SYN
/// to a closed port): the tracepoint moved to cover those in Linux 6.10 (before, it fired only
/// for resets a socket sent). Taken from the running kernel's release; where a runner knows its
/// kernel, FEATURE_AGENT_RST_WITHOUT_SOCKET (1 or 0) must agree.
pub fn resets_without_socket() -> bool {
    let found = release() >= (6, 10);
    if let Ok(want) = std::env::var("FEATURE_AGENT_RST_WITHOUT_SOCKET") {
        assert_eq!(found, want == "1", "FEATURE_AGENT_RST_WITHOUT_SOCKET={want} on kernel {:?}", release());
    }
    found
}

/// The running kernel's (major, minor) release.
pub fn release() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("reading the kernel release");
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => panic!("an unreadable kernel release: {release:?}"),
    }
}

/// The largest page-cache folio a buffered write to a file under `dir` can dirty, in bytes:
/// 2 MiB (a PMD, the page cache's largest order on x86-64) where the file system caches regular
/// files in large folios on this kernel (XFS since Linux 5.18, ext4 since 6.16), one 4 KiB page
/// elsewhere. So `written / largest_file_folio(dir)` is the fewest folios `written` new bytes
/// can dirty: 4,096 for 16 MiB on 6.1's ext4, 8 on 6.18's.
pub fn largest_file_folio(dir: &std::path::Path) -> u64 {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    // SAFETY: statfs fills the zeroed struct we own from a NUL-terminated path.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut fs) }, 0, "statfs {}", dir.display());
    let large = match fs.f_type as i64 {
        EXT4 => release() >= (6, 16),
        XFS => release() >= (5, 18),
        _ => false,
    };
    if large {
        2 << 20
    } else {
        4096
    }
}
