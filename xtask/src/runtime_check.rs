//! `cargo xtask runtime-check`: the Kubernetes containers of deploy/ run by a real container
//! runtime (containerd 1.6 with runc, what kubelets drive), with every security setting taken
//! from the rendered manifests rather than typed again here: capabilities, privileged,
//! allowPrivilegeEscalation, readOnlyRootFilesystem, the seccomp profile, the user (ctr 1.6 has
//! no --user: the user is set on a tag of the same image), host network, volumes and their
//! mount paths, env and args.
//!
//! The image is built without a daemon the way the Dockerfile builds it (the static binary on an
//! empty base with what distroless/static gives it: CA certificates, passwd, group,
//! nsswitch.conf, /tmp; its ENTRYPOINT and CMD read from the Dockerfile) as an OCI layout with
//! umoci, and imported into a private containerd (its own root, state and socket). Then:
//! - the migrate Job's container applies the schema to a throwaway Postgres, as its non-root user;
//! - the base DaemonSet's container attaches every eBPF program and writes rows, and the kernel's
//!   view of it (/proc/PID/status and mountinfo) shows exactly the capabilities the manifest
//!   adds, no_new_privs, a seccomp filter and a read-only root;
//! - the same for the privileged overlay (every capability, no seccomp filter);
//! - a DaemonSet without PERFMON cannot attach its programs (the enforcement is real);
//! - the count-bytes overlay (BPF, PERFMON, NET_ADMIN) attaches the socket-buffer programs and
//!   its rows carry bytes; the base asked to count bytes without NET_ADMIN cannot, and says so.
//!
//! What differs from a cluster, on purpose: the agent reaches the throwaway Postgres (TCP on the
//! host network, or its Unix socket bound in for the Job, which has no host network) instead of
//! the Service; NODE_NAME (downward API) is set by the check, and the node's IP (`status.hostIP`)
//! is loopback, where the check scrapes the agent's listener beside a node_exporter on 9100; INTERVAL is 1 s; the spool's
//! hostPath is a temporary directory; Secrets are files written by the check. The containers'
//! cgroups path is left empty (runc then makes them relative to its caller's own, and removes
//! them with the container), and resource limits are not applied: the check does not change
//! this machine's cgroup hierarchies beyond that.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use throwaway_pg::ThrowawayPostgres;

const NAMESPACE: &str = "feature-agent-check";
const IMAGE: &str = "localhost/feature-agent:check";

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rendered manifests of a kustomization directory, as JSON values.
fn render(python: &Path, root: &Path, dir: &str) -> anyhow::Result<Vec<Value>> {
    let yaml = run(Command::new(python).arg(root.join("scripts/render_overlay.py")).arg(root.join(dir)))?;
    let file = std::env::temp_dir().join(format!("runtime-check-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml)?;
    let json = run(Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&file));
    let _ = std::fs::remove_file(&file);
    Ok(serde_json::from_str(&json?)?)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered manifests"))
}

/// `ENTRYPOINT [...]` and `CMD [...]` of the Dockerfile's last stage.
fn dockerfile_command(root: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let text = std::fs::read_to_string(root.join("Dockerfile"))?;
    let last = |key: &str| -> anyhow::Result<Vec<String>> {
        let line = text.lines().rfind(|l| l.starts_with(key)).with_context(|| format!("no {key} in the Dockerfile"))?;
        serde_json::from_str(line[key.len()..].trim()).with_context(|| format!("{key} is not a JSON array"))
    };
    Ok((last("ENTRYPOINT")?, last("CMD")?))
}

/// The image, as an OCI layout tarball made by umoci; returns its path.
fn build_image(
    work: &Path,
    agent: &Path,
    entrypoint: &[String],
    cmd: &[String],
    uids: &[u32],
) -> anyhow::Result<PathBuf> {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let tag = format!("{}:check", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &tag]))?;
    run(Command::new("umoci").args(["unpack", "--image", &tag]).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    for d in ["etc/ssl/certs", "tmp", "proc", "sys", "dev", "host", "var/lib"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(agent, rootfs.join(entrypoint[0].trim_start_matches('/')))?;
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .context("copying the CA certificates (ca-certificates)")?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    run(Command::new("chmod").arg("1777").arg(rootfs.join("tmp")))?;
    run(Command::new("umoci").args(["repack", "--image", &tag]).arg(&bundle))?;
    let mut config = Command::new("umoci");
    config.args(["config", "--image", &tag]);
    for e in entrypoint {
        config.args(["--config.entrypoint", e]);
    }
    for c in cmd {
        config.args(["--config.cmd", c]);
    }
    run(&mut config)?;
    // ctr has no --user: a manifest's runAsUser becomes the user of a tag of the same image.
    for uid in uids {
        run(Command::new("umoci")
            .args(["config", "--image", &tag, "--tag", &format!("check-uid-{uid}"), "--config.user"])
            .arg(uid.to_string()))?;
    }
    let tar = work.join("image.tar");
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg("."))?;
    Ok(tar)
}

/// A private containerd, stopped when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Containerd {
    fn start() -> anyhow::Result<Self> {
        // Short: a Unix socket path has at most 107 bytes.
        let dir = PathBuf::from(format!("/run/fa-rt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.toml"), "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n")?;
        let socket = dir.join("c.sock");
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd runc)")?;
        let c = Containerd { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.ctr(&["version"]).is_err() {
            ensure!(Instant::now() < deadline, "containerd did not start: {}", c.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(c)
    }

    fn command(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket).args(["--namespace", NAMESPACE]);
        c
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command().args(args))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The host PID of a running task.
    fn pid(&self, id: &str) -> anyhow::Result<u32> {
        let out = self.ctr(&["task", "ls"])?;
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no task {id}: {out}"))
    }

    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.ctr(&["task", "delete", "-f", id]);
        let _ = self.ctr(&["container", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(out) = self.ctr(&["container", "ls", "-q"]) {
            for id in out.lines() {
                self.remove(id);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// How one container of a pod is to be run, translated from its manifest.
#[derive(Debug, Default)]
struct Plan {
    flags: Vec<String>,
    env: BTreeMap<String, String>,
    args: Vec<String>,
    uid: u32,
    gid: u32,
    no_new_privileges: bool,
    privileged: bool,
    /// Capabilities the container must have, exactly (None when privileged: all of them).
    caps: Vec<u32>,
    read_only_root: bool,
    seccomp: bool,
}

/// Linux capabilities by number (capability.h), 0 to 40.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_number(name: &str) -> anyhow::Result<u32> {
    let name = name.trim_start_matches("CAP_");
    CAPABILITIES.iter().position(|c| *c == name).map(|n| n as u32).with_context(|| format!("unknown capability {name}"))
}

/// Translates a pod template's first container into a [`Plan`]: every setting from the
/// manifest, with the stand-ins described in the module header.
fn plan(pod: &Value, work: &Path, overrides: &[(&str, String)], spool: &Path) -> anyhow::Result<Plan> {
    let spec = &pod["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    let psc = &spec["securityContext"];
    let mut p = Plan::default();
    if spec["hostNetwork"] == true {
        p.flags.push("--net-host".into());
    }
    if spec["hostPID"] == true {
        // ctr has no --pid-host: join this process's pid namespace (the host's here; pid 1's
        // namespace link may be unreadable in a sandbox).
        p.flags.push("--with-ns".into());
        p.flags.push(format!("pid:/proc/{}/ns/pid", std::process::id()));
    }
    let seccomp = sc["seccompProfile"]["type"].as_str().or(psc["seccompProfile"]["type"].as_str());
    match seccomp {
        Some("RuntimeDefault") => {
            p.flags.push("--seccomp".into());
            p.seccomp = true;
        }
        Some("Unconfined") | None => {}
        Some(other) => bail!("seccomp profile {other} is not supported by runtime-check"),
    }
    p.privileged = sc["privileged"] == true;
    if p.privileged {
        p.flags.push("--privileged".into());
    }
    p.read_only_root = sc["readOnlyRootFilesystem"] == true;
    if p.read_only_root {
        p.flags.push("--read-only".into());
    }
    p.no_new_privileges = sc["allowPrivilegeEscalation"] == false;
    // Kubernetes drops first, then adds; ctr applies --cap-drop after --cap-add and does not
    // know "ALL" (it silently keeps its default set), so the drop list is spelled out, less what
    // is added.
    for a in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        let a = a.as_str().context("a capability name")?;
        p.caps.push(cap_number(a)?);
    }
    let mut drop = Vec::new();
    for d in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        match d.as_str().context("a capability name")? {
            "ALL" => drop.extend(0..CAPABILITIES.len() as u32),
            name => drop.push(cap_number(name)?),
        }
    }
    for n in drop.into_iter().filter(|n| !p.caps.contains(n)) {
        p.flags.push("--cap-drop".into());
        p.flags.push(format!("CAP_{}", CAPABILITIES[n as usize]));
    }
    for n in &p.caps {
        p.flags.push("--cap-add".into());
        p.flags.push(format!("CAP_{}", CAPABILITIES[*n as usize]));
    }
    p.uid = sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64()).unwrap_or(0) as u32;
    p.gid = sc["runAsGroup"].as_u64().or(psc["runAsGroup"].as_u64()).unwrap_or(0) as u32;
    let non_root = sc["runAsNonRoot"].as_bool().or(psc["runAsNonRoot"].as_bool()).unwrap_or(false);
    ensure!(!non_root || p.uid != 0, "runAsNonRoot with uid 0: the kubelet would refuse to start it");
    // In the manifest's order, as the kubelet expands `$(NAME)` from the entries before it.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env name")?.to_owned();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(f)) if f == "spec.nodeName" => "downward-api-node-name".into(),
            // This host's address for its own scrapes: the node's IP stands in as loopback.
            (_, Value::String(f)) if f == "status.hostIP" => "127.0.0.1".into(),
            _ => bail!("env {name}: only value and fieldRef spec.nodeName or status.hostIP are supported"),
        };
        let value = overrides.iter().find(|(k, _)| *k == name).map_or(value, |(_, v)| v.clone());
        let value = env.iter().fold(value, |v, (k, x)| v.replace(&format!("$({k})"), x));
        env.push((name, value));
    }
    p.env.extend(env);
    for (k, v) in overrides {
        p.env.entry((*k).to_owned()).or_insert_with(|| v.clone());
    }
    p.args = c["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect();
    // Volumes: hostPath bound from the host (the spool's to a temporary directory), Secrets
    // written as files.
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().context("volumeMount name")?;
        let dst = m["mountPath"].as_str().context("mountPath")?;
        let v = volumes.iter().find(|v| v["name"] == name).with_context(|| format!("no volume {name}"))?;
        let src = if let Some(host) = v["hostPath"]["path"].as_str() {
            if host.starts_with("/var/lib/feature-agent") {
                std::fs::create_dir_all(spool)?;
                spool.to_path_buf()
            } else if host == "/var/log/pods" && !Path::new(host).exists() {
                // Not a kubelet node: a stand-in pod log directory, as kubelet lays it out.
                let dir = work.join("pod-logs");
                std::fs::create_dir_all(dir.join("default_web-0_5f2e3d4c-5b6a-4789-8abc-0123456789ab/web"))?;
                dir
            } else {
                PathBuf::from(host)
            }
        } else if v["secret"].is_object() {
            let dir = work.join(format!("secret-{name}"));
            std::fs::create_dir_all(&dir)?;
            for item in v["secret"]["items"].as_array().into_iter().flatten() {
                let path = item["path"].as_str().context("secret item path")?;
                std::fs::write(dir.join(path), "unused-with-trust-auth\n")?;
            }
            dir
        } else {
            bail!("volume {name}: only hostPath and secret are supported");
        };
        let mut options = vec!["rbind", if m["readOnly"] == true { "ro" } else { "rw" }];
        if m["mountPropagation"] == "HostToContainer" {
            options.push("rslave");
        }
        p.flags.push("--mount".into());
        p.flags.push(format!("type=bind,src={},dst={dst},options={}", src.display(), options.join(":")));
    }
    Ok(p)
}

/// The Job's runAsUser (pod or container level).
fn plan_job_uid(job: &Value) -> u64 {
    let spec = &job["spec"]["template"]["spec"];
    spec["containers"][0]["securityContext"]["runAsUser"]
        .as_u64()
        .or(spec["securityContext"]["runAsUser"].as_u64())
        .unwrap_or(0)
}

/// The image a plan runs: the image itself, or its tag whose user is the manifest's runAsUser.
fn image_for(plan: &Plan) -> String {
    if plan.uid == 0 {
        IMAGE.to_owned()
    } else {
        format!("{IMAGE}-uid-{}", plan.uid)
    }
}

/// Starts a container for a plan (`ctr run`); its output goes to `<id>.log`. The process
/// arguments are the image's entrypoint followed by the manifest's args, as the kubelet does.
fn start(
    ctr: &Containerd,
    plan: &Plan,
    id: &str,
    entrypoint: &[String],
    extra_mounts: &[String],
    work: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(work.join(format!("{id}.log")))?;
    let mut cmd = ctr.command();
    // An empty cgroups path: runc makes the container's cgroups relative to its caller's own,
    // not under a containerd namespace of its own, and removes them with the container.
    cmd.args(["run", "--cgroup", ""]).args(&plan.flags);
    if !plan.no_new_privileges {
        cmd.arg("--allow-new-privs");
    }
    for m in extra_mounts {
        cmd.args(["--mount", m]);
    }
    for (k, v) in &plan.env {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    cmd.arg(image_for(plan)).arg(id).args(entrypoint).args(&plan.args);
    Ok(cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?)
}

fn log_of(work: &Path, id: &str) -> String {
    std::fs::read_to_string(work.join(format!("{id}.log"))).unwrap_or_default()
}

/// A `Key:\tvalue` line of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Checks what the kernel enforces on the running container's process.
fn check_confinement(pid: u32, plan: &Plan) -> anyhow::Result<String> {
    let eff = u64::from_str_radix(&status_field(pid, "CapEff")?, 16)?;
    let bnd = u64::from_str_radix(&status_field(pid, "CapBnd")?, 16)?;
    if plan.privileged {
        ensure!(eff.count_ones() >= 38, "privileged container with only CapEff {eff:x}");
    } else {
        let want = plan.caps.iter().fold(0u64, |m, c| m | 1 << c);
        ensure!(eff == want, "CapEff {eff:x}, the manifest gives exactly {want:x}");
        ensure!(bnd == want, "CapBnd {bnd:x}, the manifest gives exactly {want:x}");
    }
    let nnp = status_field(pid, "NoNewPrivs")?;
    ensure!((nnp == "1") == plan.no_new_privileges, "NoNewPrivs {nnp}");
    let seccomp = status_field(pid, "Seccomp")?;
    ensure!((seccomp == "2") == plan.seccomp, "Seccomp mode {seccomp}");
    let uid = status_field(pid, "Uid")?;
    ensure!(uid.split_whitespace().all(|u| u == plan.uid.to_string()), "Uid {uid}, the manifest says {}", plan.uid);
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mountinfo.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).context("no / in mountinfo")?;
    let ro = root.split_whitespace().nth(5).is_some_and(|o| o.split(',').any(|x| x == "ro"));
    ensure!(ro == plan.read_only_root, "root mounted {root}");
    Ok(format!(
        "CapEff={eff:x} NoNewPrivs={nnp} Seccomp={seccomp} Uid={} root={}",
        plan.uid,
        if ro { "ro" } else { "rw" }
    ))
}

fn rows_of(pg: &ThrowawayPostgres, node: &str) -> u64 {
    count_of(pg, "node_features", node)
}

fn count_of(pg: &ThrowawayPostgres, table: &str, node: &str) -> u64 {
    pg.psql("features", &format!("SELECT count(*) FROM {table} WHERE node = '{node}'"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs a DaemonSet's agent container until it has written `rows` rows, checks its confinement,
/// stops it with SIGTERM and checks it exited 0. Returns the confinement summary.
fn check_daemonset(
    ctr: &Containerd,
    pg: &ThrowawayPostgres,
    ds: &Value,
    id: &str,
    entrypoint: &[String],
    work: &Path,
    workload: bool,
) -> anyhow::Result<String> {
    let spool = work.join(format!("{id}-spool"));
    std::fs::create_dir_all(&spool)?;
    let overrides = [
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_PORT", pg.port().to_string()),
        ("NODE_NAME", id.to_owned()),
        ("INTERVAL", "1".to_owned()),
    ];
    let plan = plan(ds, work, &overrides, &spool)?;
    let mut child = start(ctr, &plan, id, entrypoint, &[], work)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // With POD_ROWS on, the container must also write per-pod rows from the host's cgroup tree.
    let pod_rows = ds["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == "POD_ROWS" && e["value"] == "true");
    // And the workload pod's row, with its own network namespace's columns.
    let pod_network = |pg: &ThrowawayPostgres| {
        pg.psql(
            "features",
            &format!(
                "SELECT count(*) FROM pod_features WHERE node = '{id}' AND owner = '{WORKLOAD_UID}' \
                 AND network = 'own' AND receive_packets >= {WORKLOAD_PACKETS} AND net_receive > 0 \
                 AND transmit_packets > 0 AND est_conn = 0 AND lis_conn = 0"
            ),
        )
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
    };
    let pod_rows_there =
        |pg: &ThrowawayPostgres| count_of(pg, "pod_features", id) > 0 && (!workload || pod_network(pg) > 0);
    while rows_of(pg, id) < 3 || (pod_rows && !pod_rows_there(pg)) {
        if let Some(status) = child.try_wait()? {
            bail!("{id} exited ({status}) before writing rows:\n{}", log_of(work, id));
        }
        ensure!(Instant::now() < deadline, "{id} wrote no rows within 60 s:\n{}", log_of(work, id));
        std::thread::sleep(Duration::from_millis(300));
    }
    let summary = check_confinement(ctr.pid(id)?, &plan).with_context(|| format!("{id}:\n{}", log_of(work, id)))?;
    // The manifest's own listener (LISTEN as the manifest writes it, the node's IP standing in
    // as loopback) serves beside node_exporter's on the same host network.
    let listen = plan.env.get("LISTEN").context("the DaemonSet sets no LISTEN")?;
    let agent_metrics = http_get(listen, "/metrics").with_context(|| format!("{id}: nothing serves {listen}"))?;
    ensure!(
        agent_metrics.contains("feature_agent_rows_written_total"),
        "{id}: {listen} is not the agent's:\n{agent_metrics}"
    );
    let node_metrics = http_get(NODE_EXPORTER, "/metrics").context("node_exporter stopped serving")?;
    ensure!(node_metrics.contains("node_exporter_build_info"), "{NODE_EXPORTER} is not node_exporter's");
    ctr.ctr(&["task", "kill", "-s", "SIGTERM", id])?;
    let status = child.wait()?;
    let log = log_of(work, id);
    ensure!(status.success(), "{id} did not exit 0 after SIGTERM ({status}):\n{log}");
    let attached = log
        .lines()
        .find_map(|l| l.split("eBPF programs attached programs=").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .with_context(|| format!("{id}: no eBPF programs attached:\n{log}"))?;
    // Six on a kernel without fexit and kprobes (this one), seven with the socket hook.
    ensure!(attached >= 6, "{id}: only {attached} eBPF programs attached:\n{log}");
    ensure!(!log.contains("could not be attached"), "{id}: a program failed:\n{log}");
    if pod_rows {
        ensure!(log.contains("per-pod rows on"), "{id}: per-pod rows are not on:\n{log}");
        if workload {
            // The connection gauges were seeded from the workload's namespace too, read through
            // the host's /proc of a hostPID container.
            let seeded = log
                .lines()
                .find_map(|l| l.split("every network namespace's table").nth(1))
                .and_then(|r| r.split("namespaces=").nth(1))
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok());
            ensure!(seeded >= Some(2), "{id}: the workload's namespace was not seeded ({seeded:?}):\n{log}");
        }
        let what = if workload { ", the workload pod's with its own network's counters" } else { "" };
        eprintln!(
            "runtime-check: {id}: {} per-pod rows written from the host's cgroup tree{what}",
            count_of(pg, "pod_features", id)
        );
    }
    ctr.remove(id);
    Ok(summary)
}

/// A GET over plain HTTP/1.1 with a 5 s deadline; the body of a 200 answer. `address` is
/// HOST:PORT as the agent's LISTEN takes it (`[IPv4]:PORT` included).
fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let plain = match address.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        Some((ip, port)) if ip.parse::<std::net::Ipv4Addr>().is_ok() => format!("{ip}:{port}"),
        _ => address.to_owned(),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(plain.as_str())?.next().context("no address")?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{address}{path}: {head}");
    Ok(body.to_owned())
}

/// Where node_exporter listens on a node running the usual Prometheus stack: its default
/// port on every interface of the host network.
const NODE_EXPORTER: &str = "127.0.0.1:9100";

/// Debian's node_exporter, as its DaemonSet runs it (host network, `:9100`); killed on drop.
/// One that already serves there (the package's init script may have started it) is used as it is.
struct NodeExporter(Option<Child>);

impl NodeExporter {
    fn start(work: &Path) -> anyhow::Result<Self> {
        if http_get(NODE_EXPORTER, "/metrics").is_ok_and(|m| m.contains("node_exporter_build_info")) {
            return Ok(NodeExporter(None));
        }
        let log = std::fs::File::create(work.join("node-exporter.log"))?;
        let child = Command::new("prometheus-node-exporter")
            .arg("--web.listen-address=:9100")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting node_exporter (apt-get install prometheus-node-exporter)")?;
        let mut child = NodeExporter(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(NODE_EXPORTER, "/metrics").is_err() {
            if let Some(status) = child.0.as_mut().map(Child::try_wait).transpose()?.flatten() {
                let log = std::fs::read_to_string(work.join("node-exporter.log")).unwrap_or_default();
                bail!("node_exporter exited ({status}); is something else on 9100?\n{log}");
            }
            ensure!(Instant::now() < deadline, "node_exporter did not serve {NODE_EXPORTER} within 20 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(child)
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The workload pod runtime-check runs beside the agent: its UID, and the packets sent to it.
const WORKLOAD_UID: &str = "7e57c0de-0000-4000-8000-00000000beef";
const WORKLOAD_PACKETS: usize = 5;

/// A pod container as a kubelet would leave it for the agent to see: the image's own agent in
/// `print --no-ebpf` mode (any long-running process would do) in a network namespace of its own,
/// joined to the host by a veth pair, its process in a kubelet-style cgroup of the v2 tree
/// (v2 membership only: this host's own accounting is in v1: docs/kernels.md, "This project's CI machine"), and
/// its /var/log/pods directory. `WORKLOAD_PACKETS` UDP datagrams are sent into its namespace.
/// Returns what to undo.
fn start_workload_pod(ctr: &Containerd, entrypoint: &[String], work: &Path) -> anyhow::Result<WorkloadPod> {
    let id = "workload";
    let log = std::fs::File::create(work.join(format!("{id}.log")))?;
    let child = ctr
        .command()
        .args(["run", "--cgroup", ""])
        .args(["--env", "RUST_LOG=warn"])
        .args([IMAGE, id])
        .args(entrypoint)
        .args(["print", "--no-ebpf", "--interval", "5", "--records", "100000", "--node-name", "workload"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        if let Ok(pid) = ctr.pid(id) {
            break pid;
        }
        ensure!(Instant::now() < deadline, "the workload pod did not start:\n{}", log_of(work, id));
        std::thread::sleep(Duration::from_millis(200));
    };
    let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
        .context("no cgroup v2 tree")?;
    let top = v2.join("feature-agent-runtime-check");
    let cgroup = top.join(format!("kubepods/besteffort/pod{WORKLOAD_UID}/{}", "e".repeat(64)));
    std::fs::create_dir_all(&cgroup)?;
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).context("moving the workload into its v2 cgroup")?;
    let logs = work.join("pod-logs").join(format!("check_workload-7d9f8-x2k4q_{WORKLOAD_UID}/main"));
    std::fs::create_dir_all(&logs)?;
    // The veth pair: 10.206.0.1 on the host, 10.206.0.2 in the pod.
    let (host_end, pod_end) = ("fa-rtc-h", "fa-rtc-p");
    let _ = Command::new("ip").args(["link", "del", host_end]).output();
    run(Command::new("ip").args(["link", "add", host_end, "type", "veth", "peer", "name", pod_end]))?;
    run(Command::new("ip").args(["link", "set", pod_end, "netns", &pid.to_string()]))?;
    let pid_s = pid.to_string();
    let in_pod = |args: &[&str]| run(Command::new("nsenter").args(["-t", &pid_s, "-n", "ip"]).args(args));
    in_pod(&["addr", "add", "10.206.0.2/24", "dev", pod_end])?;
    in_pod(&["link", "set", pod_end, "up"])?;
    run(Command::new("ip").args(["addr", "add", "10.206.0.1/24", "dev", host_end]))?;
    run(Command::new("ip").args(["link", "set", host_end, "up"]))?;
    let udp = std::net::UdpSocket::bind("10.206.0.1:0")?;
    for _ in 0..WORKLOAD_PACKETS {
        udp.send_to(b"runtime-check", "10.206.0.2:9")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(WorkloadPod { child, top, host_end })
}

/// What [`start_workload_pod`] made.
struct WorkloadPod {
    child: Child,
    top: PathBuf,
    host_end: &'static str,
}

impl WorkloadPod {
    fn stop(mut self, ctr: &Containerd) {
        ctr.remove("workload");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["link", "del", self.host_end]).output();
        // Children first: a cgroup directory goes only when it is empty.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("find '{}' -depth -type d -exec rmdir {{}} \\;", self.top.display()))
            .status();
    }
}

/// Installs containerd, runc and umoci from Debian's packages if they are missing.
fn install_runtime() -> anyhow::Result<()> {
    let have = |c: &str| {
        Command::new("sh").arg("-c").arg(format!("command -v {c}")).output().is_ok_and(|o| o.status.success())
    };
    if ["containerd", "ctr", "runc", "umoci", "prometheus-node-exporter"].iter().all(|c| have(c)) {
        return Ok(());
    }
    eprintln!("runtime-check: installing containerd, runc, umoci and node_exporter");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "containerd", "runc", "umoci", "ca-certificates", "prometheus-node-exporter"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

pub fn runtime_check(root: &Path, python: &Path, agent: &Path) -> anyhow::Result<()> {
    install_runtime()?;
    let base = render(python, root, "deploy/base")?;
    let privileged = render(python, root, "deploy/overlays/privileged")?;
    let count_bytes = render(python, root, "deploy/overlays/count-bytes")?;
    let work = root.join("target/runtime-check");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let (entrypoint, cmd) = dockerfile_command(root)?;
    let job = find(&base, "Job", "feature-agent-migrate")?;
    let job_uid = plan_job_uid(job) as u32;
    let tar = build_image(&work, agent, &entrypoint, &cmd, &[job_uid])?;
    let ctr = Containerd::start()?;
    ctr.ctr(&["image", "import", "--base-name", "localhost/feature-agent", tar.to_str().context("path")?])?;
    let images = ctr.ctr(&["image", "ls", "-q"])?;
    for want in [IMAGE.to_owned(), format!("{IMAGE}-uid-{job_uid}")] {
        ensure!(images.lines().any(|l| l == want), "{want} was not imported: {images}");
    }
    eprintln!("runtime-check: image built with umoci and imported into a private containerd");

    let pg = ThrowawayPostgres::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    pg.create_database("features").map_err(|e| anyhow::anyhow!("{e}"))?;

    // The migrate Job: no host network, so the throwaway Postgres' socket directory is bound in.
    // The socket is linked into a directory only the Job's uid may enter (mode 0700): the Job
    // reaches the database only if it really runs as that uid (it has no CAP_DAC_OVERRIDE).
    let socket_dir = work.join("job-socket");
    std::fs::create_dir_all(&socket_dir)?;
    let socket = format!(".s.PGSQL.{}", pg.port());
    std::fs::hard_link(pg.socket_dir().join(&socket), socket_dir.join(&socket)).context("linking the socket")?;
    run(Command::new("chown").arg(format!("{}:0", plan_job_uid(job))).arg(&socket_dir))?;
    run(Command::new("chmod").arg("0700").arg(&socket_dir))?;
    let socket_dir = socket_dir.display().to_string();
    let overrides = [("DB_HOST", "/run/postgresql-check".to_owned()), ("DB_PORT", pg.port().to_string())];
    let plan_job = plan(job, &work, &overrides, &work)?;
    ensure!(plan_job.uid != 0, "the migrate Job must run as non-root");
    let mount = format!("type=bind,src={socket_dir},dst=/run/postgresql-check,options=rbind:rw");
    let status = start(&ctr, &plan_job, "migrate", &entrypoint, &[mount], &work)?.wait()?;
    let log = log_of(&work, "migrate");
    ensure!(status.success() && log.contains("migrations up to date"), "the migrate Job failed ({status}):\n{log}");
    ctr.remove("migrate");
    eprintln!("runtime-check: migrate Job ok: schema applied through a socket only uid {} can reach", plan_job.uid);
    pg.psql("features", "CREATE ROLE agent LOGIN IN ROLE feature_writer").map_err(|e| anyhow::anyhow!("{e}"))?;

    let node_exporter = NodeExporter::start(&work)?;
    eprintln!("runtime-check: node_exporter serves {NODE_EXPORTER} on the host network");
    let workload = start_workload_pod(&ctr, &entrypoint, &work)?;
    eprintln!("runtime-check: a workload pod runs in its own network namespace, in a kubelet-style cgroup");
    let ds = find(&base, "DaemonSet", "feature-agent")?;
    let summary = check_daemonset(&ctr, &pg, ds, "base", &entrypoint, &work, true);
    workload.stop(&ctr);
    let summary = summary?;
    eprintln!(
        "runtime-check: base DaemonSet ok: every program attached, rows written, its /metrics served beside node_exporter's, {summary}"
    );
    let ds = find(&privileged, "DaemonSet", "feature-agent")?;
    let summary = check_daemonset(&ctr, &pg, ds, "privileged", &entrypoint, &work, false)?;
    eprintln!("runtime-check: privileged overlay ok: every program attached, rows written, {summary}");
    // The byte-counting overlay: BPF, PERFMON and NET_ADMIN are enough for the socket-buffer
    // programs, and its rows carry bytes (the agent's own, to Postgres on loopback, at least).
    let ds = find(&count_bytes, "DaemonSet", "feature-agent")?;
    let summary = check_daemonset(&ctr, &pg, ds, "count-bytes", &entrypoint, &work, false)?;
    let log = log_of(&work, "count-bytes");
    ensure!(log.contains("counting bytes per cgroup"), "count-bytes: the byte counters are not on:\n{log}");
    let counted = pg
        .psql("features", "SELECT count(*) FROM node_features WHERE node = 'count-bytes' AND tx_node_bytes > 0")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(counted.trim() != "0", "count-bytes: no node row counted a byte:\n{log}");
    eprintln!("runtime-check: count-bytes overlay ok: the socket-buffer programs attached with NET_ADMIN, bytes in the rows, {summary}");
    drop(node_exporter);

    // Without PERFMON the programs cannot attach: the runtime really enforces the capability set.
    let mut weakened = find(&base, "DaemonSet", "feature-agent")?.clone();
    let add = &mut weakened["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"];
    *add = Value::Array(vec![Value::String("BPF".into())]);
    weakened["spec"]["template"]["spec"]["containers"][0]["args"] =
        serde_json::json!(["print", "--records", "1", "--require-ebpf"]);
    let plan_weak = plan(&weakened, &work, &[("NODE_NAME", "weak".to_owned())], &work.join("weak-spool"))?;
    let status = start(&ctr, &plan_weak, "weakened", &entrypoint, &[], &work)?.wait()?;
    let log = log_of(&work, "weakened");
    ensure!(
        !status.success() && log.contains("--require-ebpf"),
        "without CAP_PERFMON the agent attached its programs ({status}):\n{log}"
    );
    ctr.remove("weakened");
    eprintln!("runtime-check: without PERFMON the programs do not attach (as expected)");

    // And the base asked to count bytes, without NET_ADMIN: the socket-buffer programs cannot
    // load, and the agent says which capability is missing.
    let mut no_net_admin = find(&base, "DaemonSet", "feature-agent")?.clone();
    no_net_admin["spec"]["template"]["spec"]["containers"][0]["args"] =
        serde_json::json!(["print", "--records", "1", "--require-ebpf"]);
    let overrides = [("NODE_NAME", "no-net-admin".to_owned()), ("COUNT_BYTES", "true".to_owned())];
    let plan_bytes = plan(&no_net_admin, &work, &overrides, &work.join("no-net-admin-spool"))?;
    let status = start(&ctr, &plan_bytes, "no-net-admin", &entrypoint, &[], &work)?.wait()?;
    let log = log_of(&work, "no-net-admin");
    ensure!(
        !status.success() && log.contains("cannot count bytes") && log.contains("CAP_NET_ADMIN"),
        "without CAP_NET_ADMIN the byte counters loaded, or the agent did not say why ({status}):\n{log}"
    );
    ctr.remove("no-net-admin");
    eprintln!("runtime-check: without NET_ADMIN the byte counters do not load, and the agent names the capability");
    eprintln!("runtime-check: ok");
    Ok(())
}
