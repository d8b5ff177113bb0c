//! Fuzzing, bounded in time so it runs in every `cargo xtask test`: the spool's record and
//! segment decoders (both formats), every procfs/sysfs parser, and the sock_diag netlink
//! parser get random bytes and mutations of real inputs (a spool written by the agent, the
//! released format-1 fixture, the procfs fixture files). Nothing may panic; what cannot be
//! decoded is an error or a counted damaged record. FUZZ_CASES sets the cases per target
//! (default 3000; `FUZZ_CASES=200000 cargo test --test fuzz` for a long run).
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, UNIX_EPOCH},
};

use agent::{
    collector::{
        diskstats, file_nr, loadavg, meminfo, netdev, sockstat, stat, vmstat, DiskSelector, InterfaceSelector,
    },
    spool::{decode_segment_bytes, Spool},
    tcp_diag::{parse_messages, TcpConnCounts},
};
use feature_schema::FeatureRow;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A segment written by the agent's own spool: 6 rows, a hostile node name included.
fn real_segment() -> &'static [u8] {
    static SEG: OnceLock<Vec<u8>> = OnceLock::new();
    SEG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fuzz-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..6u64 {
            let mut r =
                FeatureRow::empty(format!("nöde-{i}'\"FAR2FASG"), UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i));
            r.load1 = Some(i as f64);
            r.ebpf_exits = Some(i as i64);
            r.anomalous_features = Some(vec!["load1".into(); i as usize]);
            s.append(&r).unwrap();
        }
        drop(s);
        let seg = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "spool"))
            .unwrap();
        let data = std::fs::read(seg).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(decode_segment_bytes(&data).0.len(), 6);
        data
    })
}

fn legacy_segment() -> &'static [u8] {
    static SEG: OnceLock<Vec<u8>> = OnceLock::new();
    SEG.get_or_init(|| std::fs::read(root().join("../agent/tests/fixtures/spool-v1/0000000000000001.spool")).unwrap())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Copy a span of the input over another place (duplicated headers, lengths, markers).
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<usize>(), any::<usize>(), 1usize..32).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn mutate(input: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut d = input.to_vec();
    for m in ms {
        if d.is_empty() {
            break;
        }
        let len = d.len();
        match m {
            Mutation::Flip(i, x) => d[i % len] ^= x,
            Mutation::Truncate(i) => d.truncate(i % len),
            Mutation::Insert(i, b) => {
                let at = i % len;
                d.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i % len;
                d.drain(at..(at + n).min(len));
            }
            Mutation::Splice(a, b, n) => {
                let (a, b) = (a % len, b % len);
                let n = (*n).min(len - a).min(len - b);
                let span = d[a..a + n].to_vec();
                d[b..b + n].copy_from_slice(&span);
            }
        }
    }
    d
}

fn all_parsers(text: &str) {
    let _ = stat::parse(text, 100.0);
    let _ = diskstats::parse(text, &mut DiskSelector::matching(regex::Regex::new(".").unwrap()));
    let _ = netdev::parse(text, &mut InterfaceSelector::matching(regex::Regex::new(".").unwrap()));
    let _ = vmstat::parse(text);
    let _ = meminfo::parse(text);
    let _ = loadavg::parse(text);
    let _ = sockstat::parse(text);
    let _ = file_nr::parse(text);
}

fn proc_fixtures() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let base = root().join("fixtures/node-basic/proc");
        ["stat", "diskstats", "net/dev", "vmstat", "meminfo", "loadavg", "net/sockstat", "sys/fs/file-nr"]
            .iter()
            .map(|f| std::fs::read(base.join(f)).unwrap())
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn spool_decoders_take_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_segment_bytes(&data);
        let mut legacy = b"FAS1".to_vec();
        legacy.extend_from_slice(&data);
        let _ = decode_segment_bytes(&legacy);
    }

    #[test]
    fn spool_decoders_take_damaged_real_segments(ms in proptest::collection::vec(mutation(), 1..6), legacy: bool) {
        let input = if legacy { legacy_segment() } else { real_segment() };
        let data = mutate(input, &ms);
        let (rows, damaged) = decode_segment_bytes(&data);
        // Damage loses rows only where it lands: never more rows than were written.
        prop_assert!(rows.len() <= if legacy { 12 } else { 6 }, "{} rows, {damaged} damaged", rows.len());
    }

    #[test]
    fn procfs_parsers_take_any_text(text in ".{0,400}") {
        all_parsers(&text);
    }

    #[test]
    fn procfs_parsers_take_damaged_real_files(which in 0usize..8, ms in proptest::collection::vec(mutation(), 1..6)) {
        let data = mutate(&proc_fixtures()[which], &ms);
        all_parsers(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn sock_diag_parser_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512), seq: u32) {
        let _ = parse_messages(&data, seq, &mut TcpConnCounts::default());
        let _ = parse_messages(&data, 0, &mut TcpConnCounts::default());
    }
}

/// The whole replay path, files and all: a damaged segment in a spool directory is opened and
/// drained without a panic, and every row it yields is one that was written.
#[test]
fn a_spool_directory_with_a_damaged_segment_replays_without_panic() {
    let written: Vec<String> = decode_segment_bytes(real_segment()).0.iter().map(|r| r.node.clone()).collect();
    let runner_config = ProptestConfig { cases: (cases() / 10).max(50), ..config() };
    let mut runner = proptest::test_runner::TestRunner::new(runner_config);
    runner
        .run(&proptest::collection::vec(mutation(), 1..6), |ms| {
            let dir = std::env::temp_dir().join(format!("fuzz-spool-dir-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("0000000000000001.spool"), mutate(real_segment(), &ms)).unwrap();
            let mut s = Spool::open(&dir, 1 << 20).unwrap();
            while s.has_unread() {
                let rows = s.read_batch(4).unwrap();
                for r in &rows {
                    prop_assert!(written.contains(&r.node), "a row that was never written: {:?}", r.node);
                }
                s.commit(rows.len()).unwrap();
            }
            drop(s);
            std::fs::remove_dir_all(&dir).unwrap();
            Ok(())
        })
        .unwrap();
}
