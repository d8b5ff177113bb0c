//! `cargo xtask kernel-test`: the eBPF truth checks on the kernels clusters run. For each kernel
//! of the matrix (Debian 12's current 6.1 and 6.12 cloud kernels, resolved through their
//! meta-packages and downloaded from Debian's archive, cached in target/kernels), boot it under
//! QEMU (software emulation: nested KVM hangs here) with an initramfs of busybox, the static
//! release agent and the statically linked `ebpf_truth` test binary (the same tests `cargo
//! xtask test` runs on this machine's kernel, with every socket hook the kernel has), and run:
//! - the truth tests: forks against /proc/stat, handshakes, refused connects and resets, both
//!   TCP-state attachments, sockets by kind through fexit, kprobe and the syscall fallback, the
//!   automatic choice of socket hook, the connection gauges against sock_diag;
//! - the per-pod counting tests (`pod_counts`, with its static workload program): forks, execs,
//!   TCP events and sockets by kind through every socket hook, and bytes over loopback through
//!   the socket-buffer programs (--count-bytes), counted in the right cgroup of a pure v2 tree;
//!   all but the dirtied-folio test, which needs a disk filesystem (the VM's root is its
//!   initramfs);
//! - the command-line tests (the static `cli` test binary, with setpriv and the fixture tree
//!   copied in), whose expectations follow from what the kernel allows (tests::kernel): with
//!   fexit here, the default run attaches the socket hook and fills the sock_alloc_* columns
//!   that this project's CI host leaves NULL. Only the research tools' flag checks are left out
//!   (no feature-lab in the VM);
//! - `feature-agent print --require-ebpf`: every program attaches; which hook feeds which columns;
//! - an unprivileged run: eBPF not loaded, procfs rows still written; with --require-ebpf, exit 1;
//! - per-pod rows on a pure cgroup v2 tree with every controller (what this machine's hybrid
//!   layout cannot give): a kubelet-style pod cgroup with a process in its container, and
//!   `feature-agent print --pod-rows` must name the pod from its log directory and fill the
//!   memory, pids and io columns that are NULL on the host.
//!
//! Results go to target/kernel-test/matrix.md (the README's "Kernels" table). A kernel that
//! cannot be downloaded or booted fails the task.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context};

/// The matrix: a label and the Debian meta-package whose dependency is the current kernel.
/// The third field: whether tcp_send_reset fires for a reset sent without a socket (a SYN to a
/// closed port): only since Linux 6.10.
const KERNELS: [(&str, &str, bool); 2] =
    [("6.1", "linux-image-cloud-amd64", false), ("6.12", "linux-image-6.12-cloud-amd64", true)];

/// The checks `/init` reports, in order, with `KT <name> ok|FAIL ...` lines.
const CHECKS: [&str; 7] =
    ["truth", "cli", "pod-counts", "require-ebpf", "unprivileged", "unprivileged-require", "pod-rows"];

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().is_ok_and(|o| o.status.success())
}

/// qemu-system-x86, busybox-static and cpio from Debian's packages, if missing.
fn install_tools() -> anyhow::Result<()> {
    if have("qemu-system-x86_64") && Path::new("/bin/busybox").exists() && have("cpio") && have("xz") {
        return Ok(());
    }
    eprintln!("kernel-test: installing qemu-system-x86, busybox-static, cpio, xz-utils");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "qemu-system-x86",
            "busybox-static",
            "cpio",
            "xz-utils",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// The kernel package a meta-package currently depends on.
fn resolve(meta: &str) -> anyhow::Result<String> {
    let find = || -> Option<String> {
        let out = Command::new("apt-cache").args(["depends", meta]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .map(str::to_owned)
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    find().with_context(|| format!("{meta}: no kernel package in Debian's archive"))
}

/// Downloads and unpacks a kernel package once; returns its directory.
fn fetch_kernel(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let dir = cache.join(package);
    if dir.join("ok").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache)?;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("kernel-test: downloading {package}");
    let download = || run(Command::new("apt-get").args(["download", package]).current_dir(cache));
    if download().is_err() {
        // A stale package index names files the archive no longer has: refresh it once.
        run(Command::new("apt-get").args(["update", "-q"]))?;
        download().with_context(|| format!("downloading {package} from Debian's archive"))?;
    }
    let deb = std::fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .context("the downloaded .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_file(deb)?;
    std::fs::write(dir.join("ok"), "")?;
    Ok(dir)
}

fn find_file(dir: &Path, pred: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, pred) {
                return Some(f);
            }
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
            return Some(p);
        }
    }
    None
}

const INIT: &str = r#"#!/bin/sh
# PID 1 of the kernel-test VM: mounts, loads the sock_diag modules, runs the checks, powers off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs nodev /sys/kernel/tracing
# A pure cgroup v2 tree, as a cgroup v2 node has (the per-pod tests make their cgroups in it).
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
insmod /lib/modules/inet_diag.ko
insmod /lib/modules/tcp_diag.ko
echo "KT kernel $(uname -r)"
export CI=true RUST_LOG=info RUST_BACKTRACE=1
export FEATURE_AGENT_SOCKET_HOOKS=fexit,kprobe,syscalls FEATURE_AGENT_AUTO_SOCKET_HOOK=fexit
export FEATURE_AGENT_BIN=/feature-agent
export FEATURE_AGENT_RST_WITHOUT_SOCKET=@RST@
/ebpf_truth --test-threads=1 > /tmp/truth 2>&1
rc=$?
cat /tmp/truth
if [ $rc -eq 0 ]; then echo "KT truth ok $(grep '^test result' /tmp/truth)"; else echo "KT truth FAIL exit=$rc"; fi
/cli --test-threads=1 --skip the_research_tools_reject_bad_flags_clearly > /tmp/cli 2>&1
rc=$?
cat /tmp/cli
if [ $rc -eq 0 ]; then echo "KT cli ok $(grep '^test result' /tmp/cli)"; else echo "KT cli FAIL exit=$rc"; fi
# The folio test needs a disk filesystem with writeback; the VM's root is the initramfs.
/pod_counts --test-threads=1 --skip file_writes_in_a_pod_count_the_folios_they_dirty > /tmp/pod_counts 2>&1
rc=$?
cat /tmp/pod_counts
if [ $rc -eq 0 ]; then echo "KT pod-counts ok $(grep '^test result' /tmp/pod_counts)"; else echo "KT pod-counts FAIL exit=$rc"; fi
/feature-agent print --records 2 --interval 0.5 --require-ebpf --node-name vm > /tmp/rows 2> /tmp/log
rc=$?
grep -E 'eBPF program|socket' /tmp/log | sed 's/^/KT log /'
if [ $rc -eq 0 ] && [ "$(wc -l < /tmp/rows)" -eq 2 ]; then echo "KT require-ebpf ok"; else echo "KT require-ebpf FAIL exit=$rc"; cat /tmp/log; fi
# As an unprivileged user (su from root to nobody: no capabilities left).
su -s /bin/sh nobody -c '/feature-agent print --records 1 --interval 0.5 --node-name vm' > /tmp/rows 2> /tmp/log
rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l < /tmp/rows)" -eq 1 ] && grep -q 'eBPF programs not loaded' /tmp/log; then echo "KT unprivileged ok"; else echo "KT unprivileged FAIL exit=$rc"; cat /tmp/log; fi
su -s /bin/sh nobody -c '/feature-agent print --records 1 --interval 0.5 --node-name vm --require-ebpf' > /tmp/rows 2> /tmp/log
rc=$?
if [ $rc -eq 1 ] && grep -q 'require-ebpf' /tmp/log; then echo "KT unprivileged-require ok"; else echo "KT unprivileged-require FAIL exit=$rc"; cat /tmp/log; fi
# Per-pod rows on the pure cgroup v2 tree with the cpu, memory, pids and io controllers.
UID=5f2e3d4c-5b6a-4789-8abc-0123456789ab
P=/sys/fs/cgroup/kubepods/burstable/pod$UID
C=$P/c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00
mkdir -p $C /pods/vm-ns_web-0_$UID/web
for d in /sys/fs/cgroup /sys/fs/cgroup/kubepods /sys/fs/cgroup/kubepods/burstable $P; do
  echo "+cpu +memory +pids +io" > $d/cgroup.subtree_control
done
sh -c "echo 0 > $C/cgroup.procs; exec sleep 60" &
sleep 1
/feature-agent print --pod-rows --records 3 --interval 0.5 --cgroup-root /sys/fs/cgroup --pod-logs /pods --node-name vm > /tmp/pods 2> /tmp/log
rc=$?
grep "\"owner\":\"$UID\"" /tmp/pods | tail -1 > /tmp/pod
sed 's/^/KT pod /' /tmp/pod
ok=1
for f in '"namespace":"vm-ns"' '"pod":"web-0"' '"qos":"Burstable"' '"memory_current":[0-9]' '"pids_current":[1-9]' '"io_read_bytes":[0-9]' '"cpu_usage_usec":[0-9]' '"memory_pressure_usec":[0-9]' '"oom_kills":[0-9]'; do
  grep -q "$f" /tmp/pod || { ok=0; echo "KT missing $f"; }
done
kill %1
if [ $rc -eq 0 ] && [ $ok -eq 1 ]; then echo "KT pod-rows ok"; else echo "KT pod-rows FAIL exit=$rc"; cat /tmp/log; fi
echo "KT done"
poweroff -f
"#;

/// The initramfs (gzip-compressed newc cpio) for one kernel.
/// Copies a dynamically linked program and the libraries `ldd` lists into `root`, each at its
/// own path.
fn copy_with_libraries(root: &Path, program: &str) -> anyhow::Result<()> {
    let mut files = vec![PathBuf::from(program)];
    for line in run(Command::new("ldd").arg(program))?.lines() {
        let path = line.split("=>").last().and_then(|r| r.split_whitespace().next()).unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    for f in files {
        let dst = root.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(dst.parent().context("a parent")?)?;
        std::fs::copy(&f, &dst).with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(())
}

fn initramfs(
    work: &Path,
    kernel: &Path,
    agent: &Path,
    tests: &TestBinaries,
    rst_without_socket: bool,
) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "lib/modules"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    for applet in [
        "sh", "mount", "insmod", "ip", "true", "poweroff", "su", "cat", "grep", "sed", "wc", "uname", "echo", "mkdir",
        "sleep", "kill", "tail",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::copy(agent, root.join("feature-agent"))?;
    std::fs::copy(&tests.truth, root.join("ebpf_truth"))?;
    std::fs::copy(&tests.cli, root.join("cli"))?;
    std::fs::copy(&tests.pod_counts.0, root.join("pod_counts"))?;
    // The workload program at the path the test binary was built to find it at.
    for program in &tests.pod_counts.1 {
        let dst = root.join(program.strip_prefix("/")?);
        std::fs::create_dir_all(dst.parent().context("a parent")?)?;
        std::fs::copy(program, &dst)?;
    }
    // What the cli tests use beside the agent: setpriv, and the fixture tree at the path the
    // test binary was built with.
    copy_with_libraries(&root, "/usr/bin/setpriv")?;
    let fixtures = tests.fixtures.strip_prefix("/")?;
    std::fs::create_dir_all(root.join(fixtures).parent().context("a parent")?)?;
    run(Command::new("cp").arg("-a").arg(&tests.fixtures).arg(root.join(fixtures)))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(root.join("init"), INIT.replace("@RST@", if rst_without_socket { "1" } else { "0" }))?;
    run(Command::new("chmod").arg("755").arg(root.join("init")))?;
    for module in ["inet_diag", "tcp_diag"] {
        let found = find_file(&kernel.join("lib/modules"), &|n: &str| {
            n == format!("{module}.ko") || n == format!("{module}.ko.xz")
        })
        .with_context(|| format!("{module} module in {}", kernel.display()))?;
        let dst = root.join(format!("lib/modules/{module}.ko"));
        if found.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz").arg("-dc").arg(&found).output()?;
            ensure!(out.status.success(), "decompressing {}", found.display());
            std::fs::write(&dst, out.stdout)?;
        } else {
            std::fs::copy(&found, &dst)?;
        }
    }
    let image = work.join("initramfs.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        image.display()
    )))?;
    std::fs::remove_dir_all(&root)?;
    Ok(image)
}

/// One kernel's outcome.
struct Outcome {
    label: String,
    release: String,
    checks: Vec<(String, bool, String)>,
    /// (columns, hook) as the agent reported them.
    hooks: Vec<(String, String)>,
    programs: usize,
}

/// Boots the kernel with the initramfs; returns the serial console's text.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> anyhow::Result<String> {
    let out = Command::new("timeout")
        .args(["900", "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .output()
        .context("starting qemu-system-x86_64")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    std::fs::write(log, &text)?;
    ensure!(
        text.contains("KT done"),
        "the VM did not finish its checks (exit {:?}); console in {}",
        out.status.code(),
        log.display()
    );
    Ok(text)
}

fn parse(label: &str, text: &str) -> Outcome {
    let mut o =
        Outcome { label: label.into(), release: String::new(), checks: Vec::new(), hooks: Vec::new(), programs: 0 };
    for line in text.lines().filter_map(|l| l.split_once("KT ").map(|(_, rest)| rest)) {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "kernel" => o.release = rest.to_owned(),
            "log" => {
                let field = |k: &str| {
                    rest.split(&format!(" {k}="))
                        .nth(1)
                        .and_then(|r| r.split(' ').next())
                        .map(|v| v.trim_matches('"').to_owned())
                };
                if let (Some(hook), Some(columns)) = (field("hook"), field("columns")) {
                    o.hooks.push((columns, hook));
                }
                if let Some(n) = field("programs").and_then(|n| n.parse().ok()) {
                    o.programs = n;
                }
            }
            k if CHECKS.contains(&k) => o.checks.push((k.to_owned(), rest.starts_with("ok"), rest.to_owned())),
            _ => {}
        }
    }
    o
}

/// Which hook feeds each group of columns, in the table's words.
fn hooks_cell(o: &Outcome) -> String {
    let group = |prefix: &str| {
        o.hooks
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c.starts_with(prefix)))
            .map_or("-".to_owned(), |(_, h)| h.clone())
    };
    format!(
        "forks/execs/exits {}, TCP states {}, resets {}, sockets {}",
        group("ebpf_forks"),
        group("tcp_to_est"),
        group("tcp_rst"),
        group("sock_alloc")
    )
}

/// The static test binaries the VM runs, and the fixtures the cli tests read.
pub struct TestBinaries {
    pub truth: PathBuf,
    pub cli: PathBuf,
    /// The per-pod counting tests, and the workload program they run (pod-workload).
    pub pod_counts: (PathBuf, Vec<PathBuf>),
    pub fixtures: PathBuf,
}

pub fn kernel_test(root: &Path, agent: &Path, tests: &TestBinaries) -> anyhow::Result<()> {
    install_tools()?;
    let cache = root.join("target/kernels");
    let work = root.join("target/kernel-test");
    std::fs::create_dir_all(&work)?;
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for (label, meta, rst_without_socket) in KERNELS {
        let package = resolve(meta)?;
        let dir = fetch_kernel(&cache, &package)?;
        let vmlinuz = find_file(&dir.join("boot"), &|n: &str| n.starts_with("vmlinuz-")).context("vmlinuz")?;
        let initrd = initramfs(&work, &dir, agent, tests, rst_without_socket)?;
        eprintln!("kernel-test: booting {package} under QEMU (software emulation)");
        let log = work.join(format!("console-{label}.txt"));
        let booted = std::time::Instant::now();
        let text = boot(&vmlinuz, &initrd, &log)?;
        eprintln!("kernel-test: {package}: VM ran its checks in {:.0} s", booted.elapsed().as_secs_f64());
        let o = parse(label, &text);
        let all = o.checks.len() == CHECKS.len() && o.checks.iter().all(|c| c.1);
        if !all {
            failed.push(format!(
                "{label}: {:?} (console in {})",
                o.checks.iter().filter(|c| !c.1).collect::<Vec<_>>(),
                log.display()
            ));
        }
        outcomes.push(o);
    }
    let mut table =
        String::from("| kernel | hooks (per column group) | programs attached | checks passed |\n|---|---|---|---|\n");
    for o in &outcomes {
        let passed = o.checks.iter().filter(|c| c.1).count();
        let truth = o.checks.iter().find(|c| c.0 == "truth").map(|c| c.2.clone()).unwrap_or_default();
        let truth = truth.split("test result: ").nth(1).and_then(|t| t.split(';').next()).unwrap_or("-").to_owned();
        table += &format!(
            "| {} ({}) | {} | {} | {passed}/{} (truth tests: {truth}) |\n",
            o.label,
            o.release,
            hooks_cell(o),
            o.programs,
            CHECKS.len()
        );
    }
    std::fs::write(work.join("matrix.md"), &table)?;
    println!("{table}");
    if !failed.is_empty() {
        bail!("kernel-test failed:\n{}", failed.join("\n"));
    }
    eprintln!("kernel-test: ok");
    Ok(())
}
