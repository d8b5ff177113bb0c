//! The procfs collectors on fixture trees (tests/fixtures), node_exporter style: a healthy node
//! against hand-computed golden values (expected.json), and a tree where every file is broken
//! in its own way: each source reports a clear error naming its file, nothing panics, and the
//! sources that still work fill their columns. No privileges needed.
use std::path::{Path, PathBuf};

use agent::sources::collector::{CollectError, DiskSelector, InterfaceSelector, Roots, Sources};
use feature_schema::FeatureRow;
use serde_json::{Map, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn sources(tree: &Path) -> Sources {
    let roots = Roots { procfs: tree.join("proc"), sysfs: tree.join("sys"), rootfs: tree.join("root") };
    let disks = DiskSelector::default_for(&roots.sysfs);
    let ifaces = InterfaceSelector::physical(&roots.sysfs);
    Sources::new(roots, disks, ifaces)
}

/// What `sources` put in a new row: its columns as JSON, without the identity (node, ts).
fn collect(mut sources: Sources) -> (Map<String, Value>, Vec<CollectError>) {
    let mut row = FeatureRow::empty("n".into(), std::time::UNIX_EPOCH);
    let errors = sources.collect(&mut row);
    let Value::Object(mut json) = serde_json::to_value(&row).unwrap() else { unreachable!() };
    json.remove("node");
    json.remove("ts");
    (json, errors)
}

#[test]
fn healthy_tree_matches_golden_values() {
    let tree = fixture("node-basic");
    let (mut got, errors) = collect(sources(&tree));
    assert!(errors.is_empty(), "{errors:?}");
    // statvfs of the fixture's root reads a real filesystem: checked for range, not value.
    let disk_av = got.remove("disk_av_per").unwrap();
    assert!((0.0..=100.0).contains(&disk_av.as_f64().unwrap()), "{disk_av}");
    // The procfs sources fill exactly the golden columns; the others (eBPF, verdict) stay NULL.
    got.retain(|_, v| !v.is_null());
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(tree.join("expected.json")).unwrap()).unwrap();
    assert_eq!(Value::Object(got), expected);
}

#[test]
fn device_selection_follows_sysfs() {
    let tree = fixture("node-basic");
    let mut disks = DiskSelector::default_for(tree.join("sys"));
    // Whole, non-stacked devices only.
    let picked: Vec<&str> = ["sda", "sda1", "nvme0n1", "loop0", "dm-0", "md0", "zram0"]
        .into_iter()
        .filter(|d| disks.is_selected(d))
        .collect();
    assert_eq!(picked, ["sda", "nvme0n1"]);
    let mut ifaces = InterfaceSelector::physical(tree.join("sys"));
    let picked: Vec<&str> = ["eth0", "lo", "veth1a2b", "gone0"].into_iter().filter(|i| ifaces.is_selected(i)).collect();
    assert_eq!(picked, ["eth0"]);
    // A regex replaces the default.
    let mut only_loop = DiskSelector::matching(regex_lite("^loop"));
    assert!(only_loop.is_selected("loop0") && !only_loop.is_selected("sda"));
}

fn regex_lite(re: &str) -> agent_regex::Regex {
    agent_regex::Regex::new(re).unwrap()
}

mod agent_regex {
    pub use regex::Regex;
}

#[test]
fn malformed_tree_gives_one_clear_error_per_source_and_no_panic() {
    let tree = fixture("node-malformed");
    let (json, errors) = collect(sources(&tree));
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for file in ["stat", "diskstats", "net/dev", "vmstat", "meminfo", "loadavg", "net/sockstat", "sys/fs/file-nr"] {
        let hit = errors.iter().find(|e| matches!(e, CollectError::Malformed { path, .. } if path.ends_with(file)));
        assert!(hit.is_some(), "no error for {file}: {text:#?}");
    }
    assert_eq!(errors.len(), 8, "{text:#?}");
    for t in &text {
        assert!(t.starts_with("malformed "), "{t}");
        assert!(!t.contains("procfs bug"), "procfs's internal wording leaked: {t}");
    }
    // Every procfs feature is empty; statvfs of the root still works.
    for (k, v) in &json {
        if k == "disk_av_per" {
            assert!(v.is_number());
        } else {
            assert!(v.is_null(), "{k} = {v}");
        }
    }
}

#[test]
fn missing_tree_reports_unreadable_files() {
    let (_, errors) = collect(sources(Path::new("/nonexistent-feature-agent-root")));
    assert_eq!(errors.len(), 9, "every source, rootfs included: {errors:?}");
    assert!(errors.iter().all(|e| matches!(e, CollectError::Read { .. })));
}

/// Without sysfs (an empty directory, or a file given as --sysfs) the default device rules
/// cannot tell which disks and interfaces to sum: those columns are NULL with an error naming
/// the sysfs path, never 0.
#[test]
fn missing_sysfs_gives_null_device_sums_not_zero() {
    let tree = fixture("node-basic");
    let empty = std::env::temp_dir().join(format!("feature-agent-empty-sysfs-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let file = tree.join("expected.json");
    for sysfs in [empty.clone(), file] {
        let roots = Roots { procfs: tree.join("proc"), sysfs: sysfs.clone(), rootfs: tree.join("root") };
        let disks = DiskSelector::default_for(&roots.sysfs);
        let ifaces = InterfaceSelector::physical(&roots.sysfs);
        let (json, errors) = collect(Sources::new(roots, disks, ifaces));
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{text:#?}");
        assert!(text[0].contains(&format!("{}/block", sysfs.display())), "{text:#?}");
        assert!(text[1].contains(&format!("{}/class/net", sysfs.display())), "{text:#?}");
        for k in ["disk_read", "disk_write", "net_receive", "receive_drop", "receive_errs", "transmit_packets"] {
            assert!(json[k].is_null(), "{k} = {}", json[k]);
        }
        assert!(json["load1"].is_number() && json["cpu_sec_idle"].is_number());
    }
    std::fs::remove_dir_all(empty).unwrap();
}
