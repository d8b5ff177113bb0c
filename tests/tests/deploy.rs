//! The Kubernetes manifests against the agent itself: every option a manifest passes (its
//! `args` and its `env` names) is one the agent's command accepts, no password is passed as a
//! plain value, and the DaemonSet keeps its least-privilege settings. (Schema validation and
//! the security scan of the same files run in `cargo xtask deploy-check`.)
use std::path::Path;

use clap::CommandFactory;

/// Per container in a manifest: its args and env names (a deliberately small YAML reader for
/// the shapes our manifests use: `args: [..]` flow lists and `- name: X` under `env:`).
fn containers(yaml: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    let mut in_env = false;
    let mut env_indent = 0;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("args:") {
            let items: Vec<String> = rest
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            out.push((items, Vec::new()));
            in_env = false;
        } else if t == "env:" {
            in_env = true;
            env_indent = indent;
        } else if in_env {
            if indent <= env_indent && !t.is_empty() {
                in_env = false;
            } else if let Some(name) = t.strip_prefix("- name:") {
                out.last_mut().expect("args come before env in our manifests").1.push(name.trim().to_owned());
            }
        }
    }
    out
}

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_option_the_manifests_pass_is_accepted_by_the_agent() {
    let cli = agent::daemon::cli::Cli::command();
    let mut checked = 0;
    for file in ["base/daemonset.yaml", "base/migrate-job.yaml", "overlays/count-bytes/daemonset-count-bytes.yaml"] {
        let yaml = manifest(file);
        for (args, env) in containers(&yaml) {
            let sub = cli
                .find_subcommand(&args[0])
                .unwrap_or_else(|| panic!("{file}: `{}` is not a feature-agent command", args[0]));
            let envs: Vec<String> =
                sub.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
            let longs: Vec<String> =
                sub.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
            for flag in args.iter().skip(1).filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(longs.iter().any(|l| l == flag), "{file}: `{} {flag}` is not accepted", args[0]);
            }
            for name in &env {
                if name == "RUST_LOG" {
                    continue; // tracing's filter, documented in the README
                }
                if yaml.contains(&format!("$({name})")) {
                    continue; // an input to another entry's value, which Kubernetes expands
                }
                assert!(envs.contains(name), "{file}: env {name} is not read by `feature-agent {}`", args[0]);
                assert_ne!(name, "DB_PASSWORD", "{file}: pass the password as a file (DB_PASSWORD_FILE)");
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "the reader found only {checked} env entries");
}

#[test]
fn the_daemonset_is_least_privilege() {
    let ds = manifest("base/daemonset.yaml");
    for needed in [
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
        "- BPF",
        "- PERFMON",
        "hostNetwork: true",
        "fieldPath: spec.nodeName",
        "path: /healthz",
        "path: /readyz",
        "operator: Exists",
        "terminationGracePeriodSeconds:",
        "automountServiceAccountToken: false",
    ] {
        assert!(ds.contains(needed), "daemonset.yaml lacks {needed:?}");
    }
    // Exactly these capabilities are added (an added SYS_ADMIN fails here, not only in the
    // runtime check), each with its reason right above it.
    let lines: Vec<&str> = ds.lines().collect();
    let add = lines.iter().position(|l| l.trim() == "add:").expect("capabilities.add");
    let added: Vec<&str> = lines[add + 1..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with('#'))
        .take_while(|l| l.starts_with("- "))
        .map(|l| l.trim_start_matches("- "))
        .collect();
    assert_eq!(added, ["BPF", "PERFMON"]);
    assert_eq!(lines.iter().filter(|l| l.trim() == "add:" || l.trim().starts_with("add: ")).count(), 1);
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "- BPF" || l.trim() == "- PERFMON" {
            assert!(lines[i - 1].trim().starts_with('#'), "no reason given above {l:?}");
        }
    }
    for mount in ["mountPath: /host/proc", "mountPath: /host/sys", "mountPath: /host/root"] {
        let at = ds.find(mount).unwrap_or_else(|| panic!("{mount} missing"));
        assert!(ds[at..].lines().nth(1).unwrap().contains("readOnly: true"), "{mount} must be read-only");
    }
    assert!(manifest("overlays/privileged/daemonset-privileged.yaml").contains("privileged: true"));
    // The byte-counting overlay adds NET_ADMIN and nothing else, with its reason.
    let bytes = manifest("overlays/count-bytes/daemonset-count-bytes.yaml");
    assert!(bytes.contains("# Attach the socket-buffer programs that count bytes") && bytes.contains("- NET_ADMIN"));
    assert!(!bytes.contains("SYS_ADMIN") && !bytes.contains("privileged: true"));
    assert!(manifest("base/namespace.yaml").contains("pod-security.kubernetes.io/enforce: privileged"));
}
