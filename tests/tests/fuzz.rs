//! Fuzzing, bounded in time so it runs in every `cargo xtask test`: the spool's record and
//! segment decoders (both formats), every procfs/sysfs parser, and the sock_diag netlink
//! parser get random bytes and mutations of real inputs (a spool written by the agent, with pod
//! rows, the released format-1 fixture, the procfs fixture files). Mutations of a segment are
//! also re-framed (every length and CRC made to hold again), so they reach the header, record
//! and pod-row decoders behind the checksums. Nothing may panic; what cannot be decoded is an
//! error or a counted damaged record. FUZZ_CASES sets the cases per target (default 3000;
//! `FUZZ_CASES=200000 cargo test --test fuzz` for a long run).
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, UNIX_EPOCH},
};

use agent::{
    delivery::spool::{
        decode_segment_bytes,
        format::{crc32, frame, Frame, RECORD_HEADER},
        Spool,
    },
    sources::collector::{
        diskstats, file_nr, loadavg, meminfo, netdev, sockstat, stat, vmstat, DiskSelector, InterfaceSelector,
    },
    sources::tcp_diag::{parse_messages, TcpConnCounts},
};
use feature_schema::{
    pods::{OwnerKind, PodRow},
    FeatureRow,
};
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
            // Pod rows in every other record, so the pod-row decoder has real input to start from.
            if i % 2 == 0 {
                r.pods = (0..=i).map(|k| pod_row(&r, k)).collect();
            }
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

fn pod_row(row: &FeatureRow, k: u64) -> PodRow {
    PodRow {
        node: row.node.clone(),
        ts: row.ts,
        interval_s: Some(1.0),
        kind: [OwnerKind::Pod, OwnerKind::Service, OwnerKind::Other][k as usize % 3],
        owner: format!("0a1b2c3d-{k:04}-4000-9000-000000000000"),
        namespace: Some(format!("ns-{k}")),
        pod: Some(format!("web-7d9-{k}")),
        qos: Some("Burstable".into()),
        cgroups: Some(k as i32 + 1),
        network: [Some("own".to_owned()), Some("host".to_owned()), None][k as usize % 3].clone(),
        workload: Some(format!("ns-{k}/web")),
        anomaly_score: [Some(1.5), Some(9.0), None][k as usize % 3],
        anomalous_features: [Some(vec![]), Some(vec!["ebpf_execs".to_owned()]), None][k as usize % 3].clone(),
        events: std::array::from_fn(|i| Some((i as i64 + 1) * (k as i64 + 1))),
        resources: std::array::from_fn(|i| if i % 3 == 0 { None } else { Some(i as i64 * 1000) }),
    }
}

/// A segment cut into its header body and its records' (seq, payload).
fn split(segment: &[u8]) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    const PREAMBLE: usize = 14;
    let body_len = u32::from_le_bytes(segment[6..10].try_into().unwrap()) as usize;
    let body = segment[PREAMBLE..PREAMBLE + body_len].to_vec();
    let mut records = Vec::new();
    let mut at = PREAMBLE + body_len;
    while at < segment.len() {
        match frame(&segment[at..]) {
            Frame::Record { seq, payload, len } => {
                records.push((seq, payload.to_vec()));
                at += len;
            }
            other => panic!("the real segment is whole: {other:?} at {at}"),
        }
    }
    (body, records)
}

/// Builds a segment from a header body and records, every length and checksum holding.
fn reframe(segment: &[u8], body: &[u8], records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = segment[..6].to_vec(); // magic and format version, as written
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32(&[&out[4..10], body].concat());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    for (seq, payload) in records {
        let mut h = [0u8; RECORD_HEADER];
        h[..4].copy_from_slice(b"FAR2");
        h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        let header_crc = crc32(&h[..16]);
        h[16..20].copy_from_slice(&header_crc.to_le_bytes());
        h[20..24].copy_from_slice(&crc32(payload).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
    }
    out
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

    /// Mutations behind the checksums: a record's payload (node columns, then the pod-row
    /// block) or the segment header's column list is mutated, then everything is re-framed.
    /// Every record still frames, so each is decoded or counted as damaged, never more rows than
    /// records, and no panic.
    #[test]
    fn spool_decoders_take_reframed_mutations(
        ms in proptest::collection::vec(mutation(), 1..6),
        target in 0usize..7,
    ) {
        let seg = real_segment();
        let (mut body, mut records) = split(seg);
        if target == 6 {
            body = mutate(&body, &ms);
        } else {
            records[target].1 = mutate(&records[target].1, &ms);
        }
        let data = reframe(seg, &body, &records);
        let (rows, damaged) = decode_segment_bytes(&data);
        prop_assert!(rows.len() as u64 + damaged <= 6 || target == 6, "{} rows, {damaged} damaged", rows.len());
        prop_assert!(rows.len() <= 6);
        if target < 6 {
            // The other records are untouched: they decode, pod rows and all.
            prop_assert!(rows.len() >= 5, "{} rows, {damaged} damaged", rows.len());
            let pods: usize = rows.iter().map(|r| r.pods.len()).sum();
            // 1 + 3 + 5 pod rows were written; one record holds at most 5 of them.
            prop_assert!(pods >= 9 - 5, "{pods} pod rows");
        }
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

/// The re-framer is exact: an unmutated segment comes back byte for byte, with its 6 rows and 9
/// pod rows; so a mutation it re-frames is the only change the decoders see.
#[test]
fn reframing_an_unmutated_segment_changes_nothing() {
    let seg = real_segment();
    let (body, records) = split(seg);
    assert_eq!(reframe(seg, &body, &records), seg);
    let (rows, damaged) = decode_segment_bytes(seg);
    assert_eq!((rows.len(), damaged, rows.iter().map(|r| r.pods.len()).sum::<usize>()), (6, 0, 9));
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
