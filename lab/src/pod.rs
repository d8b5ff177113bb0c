//! Pods for the drill, made on this host as kubelet makes them, so the agent (with --pod-rows)
//! sees each scenario and each background in a pod of its own: a kubelet-style cgroup
//! (systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//! cri-containerd-<id>.scope`) under `<cgroup v2 root>/feature-lab-<pid>/`, and a
//! `<namespace>_<pod>_<uid>/<container>/` directory in a pod log directory the agent is pointed
//! at (--pod-logs). A process joins a pod by writing itself to the container's cgroup.procs
//! between fork and exec ([`LabPod::command`]); on a hybrid host this changes its v2 membership
//! only (docs/kernels.md, "This project's CI machine"). A pod may have a network namespace of its own, as a
//! Kubernetes pod has: `ip netns` with loopback and one veth pair to the host (the pod's end
//! `eth0` at 10.213.N.2/30, the host's at 10.213.N.1), its processes started through
//! `ip netns exec`. Everything is removed when [`LabPods`] is dropped.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

/// One pod: its names and its container's cgroup.
#[derive(Debug, Clone)]
pub struct LabPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container's cgroup, which the pod's processes join.
    pub cgroup: PathBuf,
    /// The pod's network namespace (`ip netns` name) and the host's address on its veth pair;
    /// None: the pod shares the host's network (hostNetwork).
    pub network: Option<(String, std::net::Ipv4Addr)>,
}

impl LabPod {
    /// `namespace/name`, as the agent's rows and the node row's anomalous_pods name it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `program` as a command that runs in this pod (its cgroup, and its network namespace
    /// when it has one).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = match &self.network {
            Some((netns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        join_before_exec(&mut c, &self.cgroup);
        c
    }

    /// Moves running processes (and so their future children) into this pod.
    pub fn adopt(&self, pids: &[i32]) -> anyhow::Result<()> {
        for pid in pids {
            match std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()) {
                // Gone since it was listed (a short-lived server child): nothing to move.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                r => r.with_context(|| format!("moving process {pid} into pod {}", self.full_name()))?,
            }
        }
        Ok(())
    }
}

/// Makes `command`'s process join `cgroup` between fork and exec.
pub fn join_before_exec(command: &mut Command, cgroup: &Path) {
    let procs = cgroup.join("cgroup.procs");
    // SAFETY: only async-signal-safe work between fork and exec: open, write, close.
    unsafe {
        command.pre_exec(move || std::fs::write(&procs, b"0"));
    }
}

/// The drill's pods, removed on drop.
#[derive(Debug)]
pub struct LabPods {
    top: PathBuf,
    /// The network namespaces made (deleting one deletes its veth pair).
    netns: Vec<String>,
    /// The pod log directory to give the agent (--pod-logs).
    pub logs: PathBuf,
    pods: Vec<LabPod>,
    /// Pods made so far (removed ones included): numbers each new pod's UID and network.
    made: usize,
}

impl LabPods {
    /// An empty set of pods, with its pod log directory under `scratch`.
    pub fn new(scratch: &Path) -> anyhow::Result<Self> {
        let root = feature_host::cgroup2_root_of_this_host()
            .context("no cgroup v2 tree is mounted: the drill's pods need one (or run it with --pods off)")?;
        let top = root.join(format!("feature-lab-{}", std::process::id()));
        let logs = scratch.join(format!("feature-lab-pod-logs-{}", std::process::id()));
        let _ = remove_cgroup_tree(&top);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&top).with_context(|| format!("creating the cgroup {}", top.display()))?;
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Self { top, netns: Vec::new(), logs, pods: Vec::new(), made: 0 })
    }

    /// Makes pod `namespace/name` (a Burstable pod with one container), with a network
    /// namespace of its own when `own_network`.
    pub fn add(&mut self, namespace: &str, name: &str, own_network: bool) -> anyhow::Result<LabPod> {
        self.made += 1;
        let n = self.made;
        let uid = format!("{:08x}-1ab0-4000-8000-{:012x}", std::process::id(), n);
        let container = format!("{n:064x}");
        let cgroup = self.top.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope",
            uid.replace('-', "_")
        ));
        std::fs::create_dir_all(&cgroup).with_context(|| format!("creating the cgroup {}", cgroup.display()))?;
        let log_dir = self.logs.join(format!("{namespace}_{name}_{uid}")).join("main");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let network = match own_network {
            true => Some(self.network(n)?),
            false => None,
        };
        let pod = LabPod { namespace: namespace.to_owned(), name: name.to_owned(), uid, cgroup, network };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Removes pod `pod` as kubelet would once it has ended: its cgroups (the container's and
    /// the pod's), its log directory and its network namespace. Its processes must have exited.
    pub fn remove(&mut self, pod: &LabPod) -> anyhow::Result<()> {
        let pod_cgroup = pod.cgroup.parent().context("a pod cgroup above the container's")?;
        // A process that has just exited leaves its cgroup a moment later.
        let mut removed = remove_cgroup_tree(pod_cgroup);
        for _ in 0..50 {
            if removed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            removed = remove_cgroup_tree(pod_cgroup);
        }
        removed.with_context(|| format!("removing the cgroup {}", pod_cgroup.display()))?;
        let _ = std::fs::remove_dir_all(self.logs.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid)));
        if let Some((ns, _)) = &pod.network {
            ip(&["netns", "del", ns])?;
            self.netns.retain(|n| n != ns);
        }
        self.pods.retain(|p| p.uid != pod.uid);
        Ok(())
    }
}

impl LabPods {
    /// Network namespace `n`: loopback up, and a veth pair to the host (host end
    /// 10.213.n.1/30, pod end `eth0` 10.213.n.2/30, default route through the host end).
    fn network(&mut self, n: usize) -> anyhow::Result<(String, std::net::Ipv4Addr)> {
        anyhow::ensure!(n < 250, "at most 250 pods with a network of their own");
        let name = format!("feature-lab-{}-{n}", std::process::id());
        let host_end = format!("fl{:x}h{n}", std::process::id() & 0xfffff);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        self.netns.push(name.clone());
        let (host_ip, pod_ip) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_end])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &name, "route", "add", "default", "via", &host_ip])?;
        Ok((name, host_ip.parse().expect("a literal address")))
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes a cgroup directory and its children, deepest first (they must hold no process).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

impl Drop for LabPods {
    fn drop(&mut self) {
        // The pods' processes have been stopped by their owners; a straggler (a child that
        // outlived its parent) keeps its cgroup busy for a moment.
        for _ in 0..50 {
            if remove_cgroup_tree(&self.top).is_ok() || !self.top.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.logs);
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
