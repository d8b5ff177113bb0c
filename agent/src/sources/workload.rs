//! Names the workload a pod is an instance of from what the node has (its namespace and name,
//! from /var/log/pods), without the API server: the pod name with the suffix its controller
//! generated removed. The detector keeps one baseline per workload, so a new pod of a known
//! workload (a rollout, a rescheduled replica) is judged from its first interval.
//!
//! The rules, tried in order on the pod name (docs/detection.md lists them with examples):
//! - a static pod (a manifest in the kubelet's manifest directory) is named `<name>-<node>`:
//!   the node's name is the suffix;
//! - a CronJob's Job is `<cronjob>-<minutes since the epoch>` and its pod adds a 5-character
//!   random suffix: both go;
//! - a Deployment's pod is `<deployment>-<ReplicaSet hash>-<5 random>`: the hash is 6 to 10
//!   characters of the same alphabet as the random suffix;
//! - an indexed Job's pod is `<job>-<index>-<5 random>`;
//! - a DaemonSet's, a bare ReplicaSet's or a Job's pod is `<owner>-<5 random>`;
//! - a StatefulSet's pod is `<statefulset>-<ordinal>`.
//!
//! The random parts come from the API server's name generator, whose alphabet has no vowels
//! and none of 0, 1 and 3 (`bcdfghjklmnpqrstvwxz2456789`), so a word such as `nginx-proxy` or
//! `api-server` is never taken for one. A name that fits no rule is its own workload.
use feature_schema::pods::{OwnerKind, PodRow};

/// The characters of a Kubernetes-generated name suffix.
const GENERATED: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated(part: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&part.len()) && part.bytes().all(|b| GENERATED.contains(&b))
}

fn number(part: &str) -> bool {
    !part.is_empty() && part.len() <= 10 && part.bytes().all(|b| b.is_ascii_digit())
}

/// The workload name of pod `pod` on node `node` (without its namespace).
pub fn workload_name<'a>(pod: &'a str, node: &str) -> &'a str {
    if let Some(base) = pod.strip_suffix(node).and_then(|b| b.strip_suffix('-')) {
        if !node.is_empty() && !base.is_empty() {
            return base;
        }
    }
    let parts: Vec<&str> = pod.split('-').collect();
    let n = parts.len();
    // Keeps the first `keep` dash-separated parts.
    let first = |keep: usize| -> &'a str {
        let len = parts[..keep].iter().map(|p| p.len()).sum::<usize>() + keep - 1;
        &pod[..len]
    };
    if n >= 3 && generated(parts[n - 1], 5..=5) {
        let middle = parts[n - 2];
        // CronJob: the Job's name ends in the scheduled time in minutes since the epoch.
        if middle.len() >= 8 && number(middle) {
            return first(n - 2);
        }
        // Deployment: the ReplicaSet's pod-template hash.
        if generated(middle, 6..=10) && middle.bytes().any(|b| !b.is_ascii_digit()) {
            return first(n - 2);
        }
        // Indexed Job: the completion index.
        if number(middle) {
            return first(n - 2);
        }
    }
    if n >= 2 && generated(parts[n - 1], 5..=5) {
        return first(n - 1);
    }
    if n >= 2 && number(parts[n - 1]) {
        return first(n - 1);
    }
    pod
}

/// The workload of a row: `namespace/name` for a pod whose name is known, a service's unit,
/// "other" for other, and a pod's UID when its name is not known.
pub fn workload_of(row: &PodRow) -> String {
    match (row.kind, &row.namespace, &row.pod) {
        (OwnerKind::Pod, Some(ns), Some(pod)) => format!("{ns}/{}", workload_name(pod, &row.node)),
        _ => row.owner.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of real pods, as `kubectl get pods -A` shows them on clusters of each controller
    /// kind, with the workload each belongs to.
    const REAL: &[(&str, &str)] = &[
        // Deployments: <deployment>-<pod-template hash>-<random>.
        ("coredns-5dd5756b68-4xjqk", "coredns"),
        ("coredns-76f75df574-wzv2b", "coredns"),
        ("metrics-server-6d94bc8694-lz8g2", "metrics-server"),
        ("ingress-nginx-controller-7c6974c4d8-2pkfm", "ingress-nginx-controller"),
        ("local-path-provisioner-6c86858495-qmn5p", "local-path-provisioner"),
        ("cert-manager-cainjector-7477d56b47-zlx4k", "cert-manager-cainjector"),
        // StatefulSets: <statefulset>-<ordinal>.
        ("postgres-0", "postgres"),
        ("redis-master-12", "redis-master"),
        ("prometheus-kube-prometheus-stack-prometheus-0", "prometheus-kube-prometheus-stack-prometheus"),
        // DaemonSets: <daemonset>-<random>.
        ("kube-proxy-x7bqz", "kube-proxy"),
        ("calico-node-4wd8t", "calico-node"),
        ("fluent-bit-9xk2m", "fluent-bit"),
        // Jobs: <job>-<random>; indexed Jobs: <job>-<index>-<random>.
        ("db-migrate-r5m7w", "db-migrate"),
        ("pi-bd4xp", "pi"),
        ("sample-job-2-x9jzk", "sample-job"),
        // CronJobs: <cronjob>-<scheduled minute since the epoch>-<random>.
        ("hello-28345678-vkz9p", "hello"),
        ("nightly-backup-29012040-b7k2n", "nightly-backup"),
        // Static pods: <manifest name>-<node>.
        ("kube-apiserver-worker-3", "kube-apiserver"),
        ("etcd-worker-3", "etcd"),
        // Bare pods and names that fit no rule: their own workload.
        ("debug", "debug"),
        ("nginx-proxy", "nginx-proxy"),
        ("api-server", "api-server"),
        ("my-app-v2", "my-app-v2"),
        ("scanner", "scanner"),
    ];

    #[test]
    fn real_pod_names_of_every_controller_kind() {
        for (pod, workload) in REAL {
            assert_eq!(workload_name(pod, "worker-3"), *workload, "{pod}");
        }
    }

    /// Words of the name are never taken for a generated suffix: they have vowels, or the
    /// digits 0, 1 and 3, which the generator never emits.
    #[test]
    fn words_are_not_generated_suffixes() {
        for pod in ["web-frontend", "shop-orders-api", "a-b", "x-", "-", "", "job-1234567890123"] {
            assert_eq!(workload_name(pod, "n"), pod);
        }
        // Only the exact node name is a static pod's suffix.
        assert_eq!(workload_name("etcd-worker-30", "worker-3"), "etcd-worker");
        assert_eq!(workload_name("worker-3", "worker-3"), "worker");
    }

    #[test]
    fn rows_name_their_workload_with_its_namespace() {
        let mut row = PodRow {
            node: "worker-3".into(),
            kind: OwnerKind::Pod,
            owner: "0f4c-uid".into(),
            namespace: Some("shop".into()),
            pod: Some("scanner-7d9c5b6f4d-k2x8p".into()),
            ..PodRow::blank()
        };
        assert_eq!(workload_of(&row), "shop/scanner");
        row.pod = None;
        assert_eq!(workload_of(&row), "0f4c-uid");
        let service = PodRow { kind: OwnerKind::Service, owner: "containerd.service".into(), ..PodRow::blank() };
        assert_eq!(workload_of(&service), "containerd.service");
    }
}
