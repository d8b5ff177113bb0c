//! Pods made by a real container runtime, the way kubelet makes them: a private containerd
//! (Debian's 1.6, its CRI plugin, runc and the cgroupfs driver, its own root, state and socket),
//! a bridge CNI network of our own (Debian's containernetworking-plugins), and pause and
//! workload images built here with umoci (catatonit as the pause process, busybox-static as the
//! workload). The client side of the CRI is `k8s-cri`: the v1 API generated from the proto
//! kubelet uses, on tonic, the gRPC stack most Rust clients of containerd share; no crate or
//! Debian package offers a CRI client without generated code, and crictl is not packaged.
//!
//! Each pod is sent as kubelet sends it: RunPodSandbox with its metadata (name, UID, namespace,
//! attempt), kubelet's labels, `log_directory` `<logs>/<namespace>_<name>_<uid>` and
//! `cgroup_parent` `/kubepods/besteffort/pod<uid>`; then CreateContainer (log path
//! `<container>/<attempt>.log`) and StartContainer. What kubelet would clean up and containerd
//! does not (the pod's cgroups in every hierarchy, its log directory) is removed here.
//!
//! Every CRI call has a deadline ([`CALL_LIMIT`]).
use std::{
    collections::HashMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata, CreateContainerRequest,
    ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The longest any one CRI call may take (a sandbox's CNI setup included).
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// The bridge's subnet; the host's end (the gateway) is `.1`.
pub const SUBNET: &str = "10.207.0.0/24";
pub const GATEWAY: &str = "10.207.0.1";
const BRIDGE: &str = "fa-cri0";
const NETWORK: &str = "feature-agent-cri";

/// A pod as the test asks for it.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub attempt: u32,
    pub host_network: bool,
}

/// A running sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub spec: PodSpec,
    config: PodSandboxConfig,
    /// Its IP on the bridge (none with the host's network).
    pub ip: Option<String>,
}

impl Sandbox {
    /// The pod's cgroup in the v2 tree, relative to its root.
    pub fn cgroup(&self) -> String {
        format!("kubepods/besteffort/pod{}", self.spec.uid)
    }
}

/// The private containerd. Stops every pod it made, then itself, when dropped.
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    /// Where pods' log directories go (kubelet's /var/log/pods).
    pub logs: PathBuf,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    pods: std::sync::Mutex<HashMap<String, Sandbox>>,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An OCI image (layout tarball) with `files` (host path, image path) and an entrypoint.
fn build_image(
    work: &Path,
    name: &str,
    files: &[(&str, &str)],
    links: &[(&str, &str)],
    entrypoint: &[&str],
) -> PathBuf {
    let layout = work.join(format!("{name}-oci"));
    let bundle = work.join(format!("{name}-bundle"));
    let tag = format!("{}:1", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout)).unwrap();
    run(Command::new("umoci").args(["new", "--image", &tag])).unwrap();
    run(Command::new("umoci").args(["unpack", "--image", &tag]).arg(&bundle)).unwrap();
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    for (from, to) in files {
        std::fs::copy(from, rootfs.join(to)).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
    for (target, link) in links {
        std::os::unix::fs::symlink(target, rootfs.join(link)).unwrap();
    }
    run(Command::new("chmod").arg("1777").arg(rootfs.join("tmp"))).unwrap();
    run(Command::new("umoci").args(["repack", "--image", &tag]).arg(&bundle)).unwrap();
    let mut config = Command::new("umoci");
    config.args(["config", "--image", &tag]);
    for e in entrypoint {
        config.args(["--config.entrypoint", e]);
    }
    run(&mut config).unwrap();
    let tar = work.join(format!("{name}.tar"));
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".")).unwrap();
    tar
}

/// The commands the workload image has (busybox applets).
const APPLETS: [&str; 12] = ["sh", "true", "sleep", "cat", "dd", "nc", "mkfifo", "echo", "wget", "ls", "rm", "touch"];

impl Containerd {
    /// Builds the images, writes the configuration, starts containerd and imports the images.
    pub fn start() -> Containerd {
        for (cmd, package) in [
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("umoci", "umoci"),
            ("catatonit", "catatonit"),
            ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ] {
            let found = if cmd.starts_with('/') {
                Path::new(cmd).exists()
            } else {
                run(Command::new("sh").arg("-c").arg(format!("command -v {cmd}"))).is_ok()
            };
            assert!(found, "{cmd} is missing: run scripts/setup.sh (apt-get install {package})");
        }
        // Short: a Unix socket path has at most 107 bytes.
        let dir = PathBuf::from(format!("/run/fa-cri-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cni, logs, images) = (dir.join("cni"), dir.join("pod-logs"), dir.join("images"));
        for d in [&cni, &logs, &images] {
            std::fs::create_dir_all(d).unwrap();
        }
        let pause = build_image(&images, "pause", &[("/usr/bin/catatonit", "catatonit")], &[], &["/catatonit", "-P"]);
        let links: Vec<(&str, String)> = APPLETS.iter().map(|a| ("busybox", format!("bin/{a}"))).collect();
        let links: Vec<(&str, &str)> = links.iter().map(|(t, l)| (*t, l.as_str())).collect();
        let work = build_image(&images, "work", &[("/bin/busybox", "bin/busybox")], &links, &["/bin/sh"]);
        let socket = dir.join("c.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{socket}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"localhost/pause:1\"\n\
                 # Without CAP_SYS_RESOURCE a sandbox's oom_score_adj of -998 cannot be set.\n  restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{cni}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                cni = cni.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            cni.join("10-feature-agent.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "{NETWORK}", "plugins": [
  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}", "gateway": "{GATEWAY}"}}]]}}}},
  {{"type": "loopback"}}
]}}"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(dir.join("config.toml")).stdout(log.try_clone().unwrap()).stderr(log);
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting containerd");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not listen within 30 s: {}", read_log(&dir));
            std::thread::sleep(Duration::from_millis(100));
        }
        let path = socket.clone();
        let endpoint = Endpoint::try_from("http://[::]").unwrap();
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }));
        let channel = rt
            .block_on(async { tokio::time::timeout(CALL_LIMIT, connect).await })
            .expect("connecting to containerd's CRI socket in time")
            .expect("connecting to containerd's CRI socket");
        let client = RuntimeServiceClient::new(channel);
        let c = Containerd { child, dir, socket, logs, rt, client, pods: Default::default() };
        let version =
            c.call("Version", |mut cl| async move { cl.version(VersionRequest { version: "v1".into() }).await });
        assert_eq!(version.runtime_api_version, "v1", "{version:?}");
        for (image, tar) in [("localhost/pause", &pause), ("localhost/work", &work)] {
            c.ctr(&["images", "import", "--base-name", image, tar.to_str().unwrap()]);
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> String {
        run(Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "k8s.io"]).args(args)).unwrap()
    }

    /// One CRI call with [`CALL_LIMIT`].
    fn call<T, F, Fut>(&self, what: &str, f: F) -> T
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        match self.rt.block_on(async { tokio::time::timeout(CALL_LIMIT, f(client)).await }) {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => panic!("CRI {what}: {status}\ncontainerd logged:\n{}", read_log(&self.dir)),
            Err(_) => panic!("CRI {what} took more than {CALL_LIMIT:?}"),
        }
    }

    /// RunPodSandbox, as kubelet sends it.
    pub fn run_pod(&self, spec: &PodSpec) -> Sandbox {
        let log_directory = self.logs.join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        std::fs::create_dir_all(&log_directory).unwrap();
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), spec.name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), spec.namespace.clone()),
            ("io.kubernetes.pod.uid".to_owned(), spec.uid.clone()),
        ]);
        let network = if spec.host_network { NamespaceMode::Node } else { NamespaceMode::Pod };
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: spec.attempt,
            }),
            // kubelet sends no hostname for a hostNetwork pod (no UTS namespace of its own).
            hostname: if spec.host_network { String::new() } else { spec.name.clone() },
            log_directory: log_directory.display().to_string(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{}", spec.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = self.call("RunPodSandbox", |mut c| async move { c.run_pod_sandbox(request).await }).pod_sandbox_id;
        let status = self.call("PodSandboxStatus", |mut c| {
            let id = id.clone();
            async move { c.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id, verbose: false }).await }
        });
        let ip = status.status.and_then(|s| s.network).map(|n| n.ip).filter(|ip| !ip.is_empty());
        let sandbox = Sandbox { id: id.clone(), spec: spec.clone(), config, ip };
        self.pods.lock().unwrap().insert(id, sandbox.clone());
        sandbox
    }

    /// CreateContainer and StartContainer: busybox `sh -c script`. Returns the container's ID.
    pub fn start_container(&self, pod: &Sandbox, name: &str, attempt: u32, script: &str) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt }),
            image: Some(ImageSpec { image: "localhost/work:1".into(), ..Default::default() }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}/{attempt}.log"),
            labels: HashMap::from([
                ("io.kubernetes.container.name".to_owned(), name.to_owned()),
                ("io.kubernetes.pod.uid".to_owned(), pod.spec.uid.clone()),
            ]),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self.call("CreateContainer", |mut c| async move { c.create_container(request).await }).container_id;
        let start = StartContainerRequest { container_id: id.clone() };
        self.call("StartContainer", |mut c| async move { c.start_container(start).await });
        id
    }

    /// StopContainer (SIGKILL after `grace_s`) and RemoveContainer.
    pub fn remove_container(&self, id: &str, grace_s: i64) {
        let stop = StopContainerRequest { container_id: id.into(), timeout: grace_s };
        self.call("StopContainer", |mut c| async move { c.stop_container(stop).await });
        let remove = RemoveContainerRequest { container_id: id.into() };
        self.call("RemoveContainer", |mut c| async move { c.remove_container(remove).await });
    }

    /// StopPodSandbox and RemovePodSandbox: what kubelet does to recreate a pod's sandbox (the
    /// pod's cgroup stays; a new RunPodSandbox with the next attempt follows).
    pub fn remove_sandbox(&self, pod: &Sandbox) {
        let stop = StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() };
        self.call("StopPodSandbox", |mut c| async move { c.stop_pod_sandbox(stop).await });
        let remove = RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() };
        self.call("RemovePodSandbox", |mut c| async move { c.remove_pod_sandbox(remove).await });
        self.pods.lock().unwrap().remove(&pod.id);
    }

    /// A pod deleted: its sandbox, then what kubelet would remove, its cgroups and log directory.
    pub fn remove_pod(&self, pod: &Sandbox) {
        self.remove_sandbox(pod);
        remove_pod_cgroups(&pod.spec.uid);
        let _ = std::fs::remove_dir_all(
            self.logs.join(format!("{}_{}_{}", pod.spec.namespace, pod.spec.name, pod.spec.uid)),
        );
    }

    /// The PIDs in a container's cgroup of the v2 tree.
    pub fn pids(&self, pod: &Sandbox, container: &str) -> Vec<u32> {
        let procs = agent::sources::cgroups::cgroup2_root_of_this_host()
            .expect("a cgroup v2 tree")
            .join(pod.cgroup())
            .join(container)
            .join("cgroup.procs");
        std::fs::read_to_string(&procs).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    }
}

/// The pod's cgroup directories in every hierarchy (runc makes them in each v1 controller and
/// the v2 tree; kubelet removes them, containerd does not). Children first.
fn remove_pod_cgroups(uid: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let mut tops: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    tops.push(PathBuf::from("/sys/fs/cgroup"));
    for top in tops {
        let pod = top.join(format!("kubepods/besteffort/pod{uid}"));
        if pod.is_dir() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("find '{}' -depth -type d -exec rmdir {{}} \\; 2>/dev/null", pod.display()))
                .status();
        }
    }
}

fn read_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    text[text.floor_char_boundary(start)..].to_owned()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pods: Vec<Sandbox> = self.pods.lock().unwrap().values().cloned().collect();
        for pod in pods {
            let stop = StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() };
            let remove = RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() };
            let client = self.client.clone();
            self.rt.block_on(async move {
                let mut c = client;
                let _ = tokio::time::timeout(CALL_LIMIT, c.stop_pod_sandbox(stop)).await;
                let _ = tokio::time::timeout(CALL_LIMIT, c.remove_pod_sandbox(remove)).await;
            });
            remove_pod_cgroups(&pod.spec.uid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The shims outlive containerd: each serves this instance's socket.
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(format!("containerd-shim.*{}", self.socket.display()))
            .status();
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{NETWORK}"));
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
