//! Tests of the spool: hand-picked cases, then a model-based test that drives thousands of random
//! sequences of appends, reads, partial commits, aborted writes, clean restarts, crashes (a torn
//! append, a lost ack), size-bound eviction and byte damage (in segments and in `ack`) against a
//! simple model of the promise: every appended row is delivered, or counted as lost.
use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, UNIX_EPOCH},
};

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use feature_schema::{FeatureRow, Verdict};

/// Row number `i`: its id is in ts and in a counter, so a decoded row shows which it was.
fn row(i: u64) -> FeatureRow {
    let mut r = FeatureRow::empty(format!("node-{}", i % 3), UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 10));
    r.tcp_to_est = Some(i as i64);
    r.interval_s = Some(10.0);
    r.load1 = Some(i as f64 / 3.0);
    r.tcp_sock_mem = Some(7);
    r.set_verdict(Verdict { anomaly_score: Some(1.5), anomalous_features: Some(vec!["load1".into(), "ünï".into()]) });
    // Every sequence carries intervals with and without pod rows.
    r.pods = (0..i % 3).map(|k| pod_row(&r, k)).collect();
    r
}

/// Pod row `k` of `row`'s interval, its values distinct per (row, k).
fn pod_row(row: &FeatureRow, k: u64) -> feature_schema::pods::PodRow {
    use feature_schema::pods::{OwnerKind, PodRow};
    let mut p = PodRow::blank();
    p.node = row.node.clone();
    p.ts = row.ts;
    p.interval_s = row.interval_s;
    p.kind = if k == 0 { OwnerKind::Pod } else { OwnerKind::Service };
    p.owner = format!("owner-{k}-\u{e9}\"'");
    p.namespace = (k == 0).then(|| "ns".to_owned());
    p.cgroups = Some(k as i32 + 1);
    p.events[0] = row.tcp_to_est.map(|i| i * 10 + k as i64);
    p.resources[4] = Some(1 << 40);
    p.workload = Some(format!("ns/w{k}"));
    p.anomaly_score = Some(k as f64 + 0.5);
    p.anomalous_features = Some(vec![format!("feature-{k}"); k as usize % 3]);
    p
}

fn id_of(r: &FeatureRow) -> u64 {
    r.tcp_to_est.expect("test rows carry their id") as u64
}

/// A fresh directory on a tmpfs when there is one (fdatasync is then free, so thousands of
/// sequences run in seconds), else in the temporary directory.
fn tempdir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let d = base.join(format!("spool-test-{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let _ = fs::remove_dir_all(&d);
    d
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    v.sort();
    v
}

/// Reads and acknowledges everything; returns the rows.
fn drain(s: &mut Spool) -> Vec<FeatureRow> {
    let mut got = Vec::new();
    while s.has_unread() {
        let rows = s.read_batch(50).unwrap();
        s.commit(rows.len()).unwrap();
        got.extend(rows);
    }
    got
}

#[test]
fn crc32_known_value() {
    assert_eq!(format::crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn records_round_trip_and_every_column_lands_in_its_own_place() {
    let dir = tempdir("roundtrip");
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    let distinct = feature_schema::distinct_row();
    s.append(&distinct).unwrap();
    for i in 0..5 {
        s.append(&row(i)).unwrap();
    }
    let mut negative = row(9);
    negative.ts = UNIX_EPOCH - Duration::from_micros(5);
    negative.set_verdict(Verdict::default());
    s.append(&negative).unwrap();
    let got = drain(&mut s);
    assert_eq!(got[0], distinct);
    assert_eq!(got[1..6], (0..5).map(row).collect::<Vec<_>>()[..]);
    assert_eq!(got[6], negative);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn append_read_ack_and_reopen_in_order() {
    let dir = tempdir("order");
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    for i in 0..10 {
        s.append(&row(i)).unwrap();
    }
    assert_eq!(s.pending_rows(), 10);
    let rows = s.read_batch(4).unwrap();
    assert_eq!(rows, (0..4).map(row).collect::<Vec<_>>());
    s.commit(rows.len()).unwrap();
    drop(s);
    // A restart (or a SIGKILL) replays what was not acknowledged, in order.
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.pending_rows(), 6);
    s.append(&row(10)).unwrap();
    assert_eq!(drain(&mut s), (4..11).map(row).collect::<Vec<_>>());
    assert_eq!(s.pending_rows(), 0);
    drop(s);
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert!(!s.has_unread());
    assert!(s.read_batch(10).unwrap().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

/// A regression: after every segment was acknowledged and deleted, the next
/// segment reused the acknowledged segment's number while the ack offset still pointed at the
/// old segment's end, and the next outage's rows were skipped as corrupt.
#[test]
fn a_second_outage_after_a_full_replay_loses_nothing() {
    let dir = tempdir("reuse");
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    for i in 0..9 {
        s.append(&row(i)).unwrap();
    }
    drop(s);
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(drain(&mut s), (0..9).map(row).collect::<Vec<_>>());
    drop(s);
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert!(segment_files(&dir).is_empty(), "{:?}", segment_files(&dir));
    for i in 9..28 {
        s.append(&row(i)).unwrap();
    }
    assert_eq!(drain(&mut s), (9..28).map(row).collect::<Vec<_>>());
    assert_eq!(s.stats(), SpoolStats::default());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_spool_drops_the_oldest_rows_and_counts_them_exactly() {
    let dir = tempdir("full");
    let mut s = Spool::open(&dir, 16 * 1024).unwrap();
    for i in 0..200 {
        s.append(&row(i)).unwrap();
        assert_eq!(s.pending_rows() + s.stats().dropped, i + 1);
    }
    assert!(s.bytes() <= 16 * 1024, "{}", s.bytes());
    let dropped = s.stats().dropped;
    assert!(dropped > 0);
    let got = drain(&mut s);
    assert_eq!(got, (dropped..200).map(row).collect::<Vec<_>>());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_records_are_skipped_and_counted_in_rows() {
    let dir = tempdir("corrupt");
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    // Records of one size (no pod rows), so the damage below lands where it says.
    let bare = |i: u64| FeatureRow { pods: Vec::new(), ..row(i) };
    for i in 0..8 {
        s.append(&bare(i)).unwrap();
    }
    drop(s);
    let seg = segment_files(&dir).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    let (_, header) = format::parse_segment_header(&data).unwrap();
    let rec = (data.len() - header) / 8;
    data[header + rec + 40] ^= 0xff; // a payload byte of record 1: checksum
    data[header + 3 * rec] = b'X'; // record 3's marker
    data[header + 4 * rec + 6] ^= 1; // record 4's length: its header checksum
    data[header + 7 * rec + 30] ^= 1; // the last record, nothing good after it
    fs::write(&seg, &data).unwrap();
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.pending_rows(), 8);
    let got = drain(&mut s);
    assert_eq!(got, [0, 2, 5, 6].map(bare).to_vec());
    assert_eq!(s.stats().corrupt, 4);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_append_is_not_a_lost_row_and_its_number_is_reused() {
    let dir = tempdir("torn");
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    for i in 0..3 {
        s.append(&row(i)).unwrap();
    }
    drop(s);
    let seg = segment_files(&dir).pop().unwrap();
    let mut b = BytesMut::new();
    format::encode_record(&row(3), 3, &mut b);
    let mut data = fs::read(&seg).unwrap();
    data.extend_from_slice(&b[..b.len() / 2]);
    fs::write(&seg, &data).unwrap();
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.pending_rows(), 3);
    s.append(&row(4)).unwrap();
    assert_eq!(drain(&mut s), [0, 1, 2, 4].map(row).to_vec());
    assert_eq!(s.stats(), SpoolStats::default());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_ack_replays_everything_and_deletes_nothing() {
    let dir = tempdir("ack");
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    for i in 0..8 {
        s.append(&row(i)).unwrap();
    }
    let rows = s.read_batch(4).unwrap();
    assert!(rows.len() > 3);
    s.commit(3).unwrap();
    drop(s);
    let ack = fs::read_to_string(dir.join("ack")).unwrap();
    // One flipped bit in the segment number: `5 4018` -> `7 4018`.
    let damaged = ack.replacen("FAK2 1", "FAK2 3", 1);
    assert_ne!(ack, damaged);
    fs::write(dir.join("ack"), damaged).unwrap();
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.stats().ack_damaged, 1);
    assert_eq!(drain(&mut s), (0..8).map(row).collect::<Vec<_>>());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_agent_is_refused_by_the_lock() {
    let dir = tempdir("lock");
    let _s = Spool::open(&dir, 1 << 20).unwrap();
    assert!(matches!(Spool::open(&dir, 1 << 20), Err(SpoolError::Locked { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_released_format_1_spool_is_upgraded_with_nothing_lost() {
    let dir = tempdir("upgrade");
    fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    for f in ["0000000000000001.spool", "ack"] {
        fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    assert_eq!(s.stats().upgraded, 12);
    assert_eq!(s.pending_rows(), 12);
    let got = drain(&mut s);
    crate::delivery::spool::legacy::assert_rows_are_what_that_release_printed(&got, &fixture.join("rows.jsonl"));
    assert!(!dir.join("0000000000000001.spool").exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// A segment written by a later release with one column more and one column less is replayed
/// by name: the unknown column is ignored, the missing one is NULL.
#[test]
fn a_segment_with_other_columns_is_read_by_name() {
    use bytes::BufMut;
    let dir = tempdir("columns");
    fs::create_dir_all(&dir).unwrap();
    let cols: [(&str, u8, u8); 4] = [("ts", 2, 8), ("a_future_column", 4, 8), ("node", 1, 0), ("load1", 3, 8)];
    let mut body = BytesMut::new();
    body.put_u64_le(0);
    body.put_u16_le(cols.len() as u16);
    for (name, tag, width) in cols {
        body.put_u8(tag);
        body.put_u8(width);
        body.put_u8(name.len() as u8);
        body.put_slice(name.as_bytes());
    }
    let mut seg = Vec::new();
    seg.extend_from_slice(format::SEGMENT_MAGIC);
    seg.extend_from_slice(&2u16.to_le_bytes());
    seg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut crc_input = seg[4..10].to_vec();
    crc_input.extend_from_slice(&body);
    seg.extend_from_slice(&format::crc32(&crc_input).to_le_bytes());
    seg.extend_from_slice(&body);
    let mut payload = BytesMut::new();
    payload.put_u8(1);
    payload.put_i64_le(1_700_000_000_000_000);
    payload.put_u8(1);
    payload.put_i64_le(42);
    payload.put_u8(1);
    payload.put_u32_le(2);
    payload.put_slice(b"n1");
    payload.put_u8(1);
    payload.put_f64_le(0.5);
    let mut header = Vec::new();
    header.extend_from_slice(format::RECORD_MAGIC);
    header.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    header.extend_from_slice(&format::crc32(&header).to_le_bytes());
    header.extend_from_slice(&format::crc32(&payload).to_le_bytes());
    seg.extend_from_slice(&header);
    seg.extend_from_slice(&payload);
    fs::write(dir.join("0000000000000007.spool"), seg).unwrap();
    let mut s = Spool::open(&dir, 1 << 20).unwrap();
    let got = drain(&mut s);
    let mut want = FeatureRow::empty("n1".into(), UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    want.load1 = Some(0.5);
    assert_eq!(got, vec![want]);
    assert_eq!((s.stats().dropped, s.stats().corrupt), (0, 0));
    fs::remove_dir_all(&dir).unwrap();
}

// ---- the model-based test ----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Outcome {
    Commit,
    /// The first `n` rows committed (the rest refused by a failing connection).
    CommitPrefix(usize),
    /// The write failed: nothing committed, the batch is read again.
    Abort,
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Deliver(u8, Outcome),
    CleanRestart,
    /// The database committed a batch and the agent died before the ack.
    CrashBeforeAck(u8),
    /// The agent died in the middle of an append: `cut` bytes of the record reached the disk.
    CrashDuringAppend(u16),
    /// One byte of a segment flipped while the agent was stopped.
    DamageSegment(u16, u32, u8),
    /// One byte of `ack` flipped while the agent was stopped.
    DamageAck(u8, u8),
    /// An append fails after `cut` bytes of its record (a full disk, or a failing fdatasync
    /// when `cut` is the whole record); the writer keeps the row and appends it again.
    FailedAppend(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Commit),
        1 => (0usize..8).prop_map(Outcome::CommitPrefix),
        1 => Just(Outcome::Abort),
    ];
    prop_oneof![
        6 => (1u8..30).prop_map(Op::Append),
        5 => (1u8..40, outcome).prop_map(|(n, o)| Op::Deliver(n, o)),
        1 => Just(Op::CleanRestart),
        1 => (1u8..40).prop_map(Op::CrashBeforeAck),
        1 => (1u16..600).prop_map(Op::CrashDuringAppend),
        1 => (any::<u16>(), any::<u32>(), 1u8..=255).prop_map(|(s, p, x)| Op::DamageSegment(s, p, x)),
        1 => (any::<u8>(), 1u8..=255).prop_map(|(p, x)| Op::DamageAck(p, x)),
        1 => (0u16..700).prop_map(Op::FailedAppend),
    ]
}

/// What the model knows: which rows were appended and which the database has.
#[derive(Default)]
struct Model {
    next_id: u64,
    appended: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
    /// Ids in first-delivery order.
    first_deliveries: Vec<u64>,
    /// Rows the database has though the spool never heard so (a crash before the ack): the
    /// spool may still count them as dropped if it evicts them.
    limbo: BTreeSet<u64>,
    damage: u32,
    /// Counters of spool instances already closed.
    closed: SpoolStats,
}

impl Model {
    fn deliver(&mut self, rows: &[FeatureRow]) {
        for r in rows {
            let id = id_of(r);
            assert!(self.appended.contains(&id), "row {id} was never appended");
            if self.delivered.insert(id) {
                self.first_deliveries.push(id);
            }
        }
    }

    fn close(&mut self, s: Spool) {
        let st = s.stats();
        self.closed.dropped += st.dropped;
        self.closed.corrupt += st.corrupt;
        drop(s);
    }
}

fn run_sequence(max_bytes: u64, ops: &[Op]) {
    let dir = tempdir("model");
    let mut m = Model::default();
    let mut s = Spool::open(&dir, max_bytes).unwrap();
    for op in ops {
        match op {
            Op::Append(n) => {
                for _ in 0..*n {
                    s.append(&row(m.next_id)).unwrap();
                    m.appended.insert(m.next_id);
                    m.next_id += 1;
                }
            }
            Op::Deliver(n, outcome) => {
                let rows = s.read_batch(*n as usize).unwrap();
                let ids: Vec<u64> = rows.iter().map(id_of).collect();
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "a batch out of order: {ids:?}");
                match outcome {
                    Outcome::Commit => {
                        m.deliver(&rows);
                        s.commit(rows.len()).unwrap();
                    }
                    // A prefix only: the rest of the batch is read again.
                    Outcome::CommitPrefix(k) if *k > 0 && *k < rows.len() => {
                        m.deliver(&rows[..*k]);
                        s.commit(*k).unwrap();
                        s.rewind();
                    }
                    _ => s.rewind(),
                }
            }
            Op::CleanRestart => {
                m.close(s);
                s = Spool::open(&dir, max_bytes).unwrap();
            }
            Op::CrashBeforeAck(n) => {
                let rows = s.read_batch(*n as usize).unwrap();
                m.deliver(&rows);
                m.limbo.extend(rows.iter().map(id_of));
                m.close(s);
                s = Spool::open(&dir, max_bytes).unwrap();
            }
            Op::CrashDuringAppend(cut) => {
                let room =
                    s.segments.last().is_some_and(|l| l.len + 600 <= s.segment_bytes) && s.bytes() + 600 <= max_bytes;
                // (An append that would evict or rotate first is torn in a new segment: the
                // torn bytes are only simulated where the append would have put them.)
                if s.writer.is_some() && room {
                    let path = segment_path(&dir, s.segments.last().unwrap().id);
                    let mut b = BytesMut::new();
                    format::encode_record(&row(m.next_id), s.next_seq, &mut b);
                    let cut = (*cut as usize).min(b.len() - 1);
                    let mut f = OpenOptions::new().append(true).open(path).unwrap();
                    f.write_all(&b[..cut]).unwrap();
                    // The row was never appended: its id is skipped.
                    m.next_id += 1;
                }
                m.close(s);
                s = Spool::open(&dir, max_bytes).unwrap();
            }
            Op::DamageSegment(which, pos, xor) => {
                m.close(s);
                let files = segment_files(&dir);
                if !files.is_empty() {
                    let f = &files[*which as usize % files.len()];
                    let mut data = fs::read(f).unwrap();
                    if !data.is_empty() {
                        let i = *pos as usize % data.len();
                        data[i] ^= xor;
                        fs::write(f, data).unwrap();
                        m.damage += 1;
                    }
                }
                s = Spool::open(&dir, max_bytes).unwrap();
            }
            Op::FailedAppend(cut) => {
                s.fail_next_append_after = Some(*cut as usize);
                assert!(s.append(&row(m.next_id)).unwrap_err().is_no_space());
                s.append(&row(m.next_id)).unwrap();
                m.appended.insert(m.next_id);
                m.next_id += 1;
            }
            Op::DamageAck(pos, xor) => {
                m.close(s);
                let mut data = fs::read(dir.join("ack")).unwrap();
                let i = *pos as usize % data.len();
                data[i] ^= xor;
                fs::write(dir.join("ack"), data).unwrap();
                // Everything delivered may be replayed, and evicted as unacknowledged.
                m.limbo.extend(m.delivered.iter().copied());
                s = Spool::open(&dir, max_bytes).unwrap();
            }
        }
        assert!(s.bytes() <= max_bytes, "{} bytes over the bound {max_bytes}", s.bytes());
    }
    // The database comes back for good: everything left is delivered.
    m.close(s);
    let mut s = Spool::open(&dir, max_bytes).unwrap();
    m.deliver(&drain(&mut s));
    assert_eq!(s.pending_rows(), 0);
    assert!(!s.has_unread());
    m.close(s);

    assert!(m.first_deliveries.windows(2).all(|w| w[0] < w[1]), "rows first reached the database out of order");
    let lost = m.appended.difference(&m.delivered).count() as u64;
    let counted = m.closed.dropped + m.closed.corrupt;
    if m.damage == 0 {
        assert_eq!(m.closed.corrupt, 0, "nothing was damaged");
        assert!(
            lost <= counted && counted <= lost + m.limbo.len() as u64,
            "{lost} rows lost, {counted} counted ({} committed before a crash)",
            m.limbo.len()
        );
    } else {
        assert!(lost <= counted, "{lost} rows lost, only {counted} counted (after {} damaged bytes)", m.damage);
        // Never low, and high by at most two per damaged byte (a damaged segment header reads
        // as a damaged record too), beyond the replays a crash or a damaged ack allow.
        let bound = lost + m.limbo.len() as u64 + 2 * u64::from(m.damage);
        assert!(
            counted <= bound,
            "{lost} rows lost, {counted} counted: more than two over per damaged byte ({} damaged bytes, {} replayable)",
            m.damage,
            m.limbo.len()
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SPOOL_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(5000),
        // The suite's run is reproducible (a fixed seed); SPOOL_MODEL_SEED=random, or another
        // number, explores further: `SPOOL_MODEL_SEED=random SPOOL_MODEL_CASES=50000 cargo test
        // -p agent --lib every_appended` is how the regressions above were found.
        rng_seed: match std::env::var("SPOOL_MODEL_SEED").as_deref() {
            Ok("random") => proptest::test_runner::RngSeed::Random,
            Ok(n) => proptest::test_runner::RngSeed::Fixed(n.parse().expect("SPOOL_MODEL_SEED: a number or random")),
            Err(_) => proptest::test_runner::RngSeed::Fixed(20_261_125),
        },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_appended_row_is_delivered_or_counted(
        max_bytes in prop_oneof![Just(16u64 * 1024), Just(48 * 1024), Just(1u64 << 20)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run_sequence(max_bytes, &ops);
    }
}

/// Found by the model test: with the segment header and the first record damaged, a damaged
/// `ack` made the replay start after the first record's number, and its loss went uncounted.
#[test]
fn regression_damaged_header_first_record_and_ack() {
    run_sequence(
        16 * 1024,
        &[
            Op::Append(9),
            Op::DamageSegment(0, 1_747_963_674, 1),
            Op::DamageSegment(0, 1_452_263_605, 1),
            Op::DamageAck(0, 1),
        ],
    );
}

/// Found by the model test: the newest segment's header and its only record damaged; the next
/// number was taken from the older segments' headers and the damaged record went uncounted.
#[test]
fn regression_damaged_newest_header_and_record() {
    run_sequence(
        48 * 1024,
        &[
            Op::Append(2),
            Op::CleanRestart,
            Op::Append(1),
            Op::DamageSegment(33589, 3_150_478_102, 1),
            Op::DamageSegment(12179, 973_677_255, 1),
            Op::Append(1),
        ],
    );
}

/// Found by the model test: one flipped bit turned the segment magic FASG into format 1's
/// FAS1, and the segment was read (and deleted) as format 1.
#[test]
fn regression_a_damaged_magic_is_not_format_1() {
    run_sequence(48 * 1024, &[Op::Append(4), Op::DamageSegment(0, 1_054_148_763, 118)]);
}

/// Found by the model test: an oldest segment whose header and only record were damaged, then a
/// damaged `ack`: the replay started at the next segment's number, and the loss went uncounted.
#[test]
fn regression_a_wholly_damaged_oldest_segment_and_ack() {
    run_sequence(
        16 * 1024,
        &[
            Op::Append(1),
            Op::DamageSegment(0, 10_733_077, 1),
            Op::DamageSegment(0, 16_064_067, 1),
            Op::Append(1),
            Op::DamageAck(0, 1),
        ],
    );
}
