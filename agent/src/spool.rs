//! The on-disk spool: rows the database has not acknowledged yet, in order, surviving a crash
//! or a SIGKILL of the agent.
//!
//! Layout of `--spool-dir`:
//! - `<seq>.spool` segments (seq: 16 decimal digits), append-only. Each record is
//!   `b"FAS1" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload`, the payload
//!   being one row in the binary encoding of [`encode_row`]. A record is made durable
//!   (fdatasync) before `append` returns.
//! - `ack`: `<seq> <offset>`, written atomically (temporary file + rename): every record before
//!   that position reached the database. Fully acknowledged segments are deleted.
//!
//! Each start writes into a new segment, so a record torn by a crash is never followed by new
//! data in the same file. Reading skips and counts a record whose header, CRC or encoding is
//! bad, then resynchronises on the next `FAS1` marker; the rest is replayed. The spool is
//! bounded by `max_bytes`: when an append would exceed it, the oldest segments are deleted and
//! their unacknowledged rows counted as dropped. Rows are keyed by (node, ts) in the database
//! and inserted with ON CONFLICT DO NOTHING, so a row replayed after a crash between the
//! database's commit and the ack is not duplicated.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use agent_common::EVENT_COUNT;
use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

use crate::{
    collector::ProcfsFeatures,
    row::{FeatureRow, Verdict},
};

const MAGIC: &[u8; 4] = b"FAS1";
const HEADER: usize = 12;
/// Larger payloads are corrupt by definition (a row is well under 4 KiB).
const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a row of {0} bytes is too large to spool")]
    TooLarge(usize),
    #[error(
        "spool directory {dir} is in use by another agent (it holds {dir}/lock); give each agent its own --spool-dir"
    )]
    Locked { dir: PathBuf },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record ends early")]
    Truncated,
    #[error("invalid text in record")]
    Utf8,
    #[error("invalid presence tag {0}")]
    Tag(u8),
    #[error("{0} trailing bytes after the row")]
    Trailing(usize),
}

/// CRC-32 (IEEE 802.3, reflected, the one zlib and PNG use).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

// ---- row encoding ------------------------------------------------------------------------

fn put_opt_f64(b: &mut BytesMut, v: Option<f64>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_f64_le(v);
        }
        None => b.put_u8(0),
    }
}

fn put_opt_i64(b: &mut BytesMut, v: Option<i64>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_i64_le(v);
        }
        None => b.put_u8(0),
    }
}

fn put_opt_i32(b: &mut BytesMut, v: Option<i32>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_i32_le(v);
        }
        None => b.put_u8(0),
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s.as_bytes());
}

/// Appends the binary encoding of a row (version 1 of the spool format).
pub fn encode_row(row: &FeatureRow, b: &mut BytesMut) {
    let p = &row.procfs;
    put_str(b, &row.node);
    let micros = match row.ts.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    };
    b.put_i64_le(micros);
    put_opt_f64(b, row.interval_s);
    for v in [p.cpu_sec_idle, p.disk_av_per] {
        put_opt_f64(b, v);
    }
    for v in [p.disk_read, p.disk_write, p.net_receive, p.mem_pressure] {
        put_opt_i64(b, v);
    }
    put_opt_f64(b, p.mem_av_per);
    for v in [p.forks_total, p.intr] {
        put_opt_i64(b, v);
    }
    for v in [p.load1, p.load5, p.load15] {
        put_opt_f64(b, v);
    }
    for v in [p.receive_drop, p.receive_errs, p.transmit_packets] {
        put_opt_i64(b, v);
    }
    for v in [p.tcp_sock_alloc, p.tcp_sock_inuse, p.tcp_sock_mem, p.udp_sock_inuse, p.udp_sock_mem, p.ipv4_sock_inuse] {
        put_opt_i32(b, v);
    }
    put_opt_i64(b, p.open_fds);
    put_opt_i32(b, row.est_conn);
    put_opt_i32(b, row.lis_conn);
    for v in row.ebpf {
        put_opt_i64(b, v);
    }
    put_opt_f64(b, row.verdict.anomaly_score);
    match &row.verdict.anomalous_features {
        Some(f) => {
            b.put_u8(1);
            b.put_u32_le(f.len() as u32);
            for s in f {
                put_str(b, s);
            }
        }
        None => b.put_u8(0),
    }
}

/// A cursor over one record's payload.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn tag(&mut self) -> Result<bool, DecodeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::Tag(t)),
        }
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.take(4)?.get_u32_le())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.take(8)?.get_i64_le())
    }
    fn opt_f64(&mut self) -> Result<Option<f64>, DecodeError> {
        Ok(if self.tag()? { Some(self.take(8)?.get_f64_le()) } else { None })
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, DecodeError> {
        Ok(if self.tag()? { Some(self.i64()?) } else { None })
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, DecodeError> {
        Ok(if self.tag()? { Some(self.take(4)?.get_i32_le()) } else { None })
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Utf8)
    }
}

/// Decodes a row encoded by [`encode_row`].
pub fn decode_row(payload: &[u8]) -> Result<FeatureRow, DecodeError> {
    let mut r = Reader(payload);
    let node = r.string()?;
    let micros = r.i64()?;
    let ts = if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    };
    let interval_s = r.opt_f64()?;
    let mut p = ProcfsFeatures { cpu_sec_idle: r.opt_f64()?, disk_av_per: r.opt_f64()?, ..Default::default() };
    p.disk_read = r.opt_i64()?;
    p.disk_write = r.opt_i64()?;
    p.net_receive = r.opt_i64()?;
    p.mem_pressure = r.opt_i64()?;
    p.mem_av_per = r.opt_f64()?;
    p.forks_total = r.opt_i64()?;
    p.intr = r.opt_i64()?;
    p.load1 = r.opt_f64()?;
    p.load5 = r.opt_f64()?;
    p.load15 = r.opt_f64()?;
    p.receive_drop = r.opt_i64()?;
    p.receive_errs = r.opt_i64()?;
    p.transmit_packets = r.opt_i64()?;
    p.tcp_sock_alloc = r.opt_i32()?;
    p.tcp_sock_inuse = r.opt_i32()?;
    p.tcp_sock_mem = r.opt_i32()?;
    p.udp_sock_inuse = r.opt_i32()?;
    p.udp_sock_mem = r.opt_i32()?;
    p.ipv4_sock_inuse = r.opt_i32()?;
    p.open_fds = r.opt_i64()?;
    let est_conn = r.opt_i32()?;
    let lis_conn = r.opt_i32()?;
    let mut ebpf = [None; EVENT_COUNT];
    for e in &mut ebpf {
        *e = r.opt_i64()?;
    }
    let anomaly_score = r.opt_f64()?;
    let anomalous_features = if r.tag()? {
        let n = r.u32()? as usize;
        if n > payload.len() {
            return Err(DecodeError::Truncated);
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(r.string()?);
        }
        Some(v)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(FeatureRow {
        node,
        ts,
        interval_s,
        procfs: p,
        est_conn,
        lis_conn,
        ebpf,
        verdict: Verdict { anomaly_score, anomalous_features },
    })
}

// ---- the spool ---------------------------------------------------------------------------

/// A position in the spool: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Rows read from the spool, and the position right after the last of them.
#[derive(Debug)]
pub struct Batch {
    pub rows: Vec<FeatureRow>,
    pub end: Position,
}

/// Counters of what the spool did since it was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Rows dropped because the spool was full (oldest first).
    pub dropped: u64,
    /// Corrupt or truncated records skipped while reading.
    pub corrupt: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held open with an exclusive flock for the spool's lifetime.
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    /// Existing segments, oldest first, with their sizes.
    segments: Vec<(u64, u64)>,
    writer: Option<File>,
    /// Everything before it is acknowledged.
    acked: Position,
    /// Where the next read starts (at or after `acked`).
    read: Position,
    /// Records appended or found on disk and not yet acknowledged (corrupt ones included until
    /// they are read and skipped).
    pending_rows: u64,
    stats: SpoolStats,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.spool"))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded by `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let io = |source| SpoolError::Io { dir: dir.to_owned(), source };
        fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(io)?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(SpoolError::Locked { dir: dir.to_owned() });
            }
            return Err(io(e));
        }
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".spool")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push((seq, entry.metadata().map_err(io)?.len()));
        }
        segments.sort_unstable();
        let acked = fs::read_to_string(dir.join("ack"))
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(str::parse::<u64>);
                Some(Position { segment: it.next()?.ok()?, offset: it.next()?.ok()? })
            })
            .unwrap_or(Position { segment: 0, offset: 0 });
        // Segments wholly before the ack are leftovers of a crash between ack and delete.
        segments.retain(|&(seq, _)| {
            let keep = seq >= acked.segment;
            if !keep {
                let _ = fs::remove_file(segment_path(dir, seq));
            }
            keep
        });
        let first = segments.first().map_or(acked, |&(seq, _)| {
            if seq == acked.segment {
                acked
            } else {
                Position { segment: seq, offset: 0 }
            }
        });
        let mut spool = Spool {
            dir: dir.to_owned(),
            _lock: lock,
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(1024, 16 << 20),
            segments,
            writer: None,
            acked: first,
            read: first,
            pending_rows: 0,
            stats: SpoolStats::default(),
        };
        spool.pending_rows = spool
            .segments
            .iter()
            .map(|&(seq, len)| spool.count_records(seq, if seq == first.segment { first.offset } else { 0 }, len))
            .sum();
        spool.write_ack().map_err(io)?;
        Ok(spool)
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// The first segment with bytes not read yet.
    fn next_unread(&self) -> Option<(u64, u64)> {
        let r = self.read;
        self.segments.iter().copied().find(|&(s, l)| (s == r.segment && l > r.offset) || (s > r.segment && l > 0))
    }

    /// Whether any record remains to be read.
    pub fn has_unread(&self) -> bool {
        self.next_unread().is_some()
    }

    /// Rows spooled and not acknowledged (see the field's note).
    pub fn pending_rows(&self) -> u64 {
        self.pending_rows
    }

    /// Appends a row durably. Deletes the oldest segments first if the spool would overflow.
    pub fn append(&mut self, row: &FeatureRow) -> Result<(), SpoolError> {
        // The header is filled in once the payload, encoded in place behind it, is known.
        let mut record = BytesMut::with_capacity(512);
        record.put_bytes(0, HEADER);
        encode_row(row, &mut record);
        let payload_len = record.len() - HEADER;
        if payload_len > MAX_PAYLOAD {
            return Err(SpoolError::TooLarge(payload_len));
        }
        let crc = crc32(&record[HEADER..]);
        record[..4].copy_from_slice(MAGIC);
        record[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
        record[8..12].copy_from_slice(&crc.to_le_bytes());
        let len = record.len() as u64;
        while self.bytes() + len > self.max_bytes && !self.segments.is_empty() {
            self.drop_oldest_segment()?;
        }
        let io = |source| SpoolError::Io { dir: self.dir.clone(), source };
        let needs_new = match (self.writer.as_ref(), self.segments.last()) {
            (Some(_), Some(&(_, size))) => size + len > self.segment_bytes,
            _ => true,
        };
        if needs_new {
            let seq = self.segments.last().map_or(self.acked.segment.max(1), |s| s.0 + 1);
            let path = segment_path(&self.dir, seq);
            let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io)?;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
            self.segments.push((seq, 0));
            self.writer = Some(file);
        }
        let writer = self.writer.as_mut().expect("a segment is open");
        let result = writer.write_all(&record).and_then(|()| writer.sync_data());
        if let Err(e) = result {
            // Never append after a partial record: the next append opens a new segment.
            self.writer = None;
            if let Ok(meta) = segment_path(&self.dir, self.segments.last().expect("open segment").0).metadata() {
                self.segments.last_mut().expect("open segment").1 = meta.len();
            }
            return Err(io(e));
        }
        self.segments.last_mut().expect("open segment").1 += len;
        self.pending_rows += 1;
        Ok(())
    }

    /// Deletes the oldest segment, counting its unacknowledged rows as dropped.
    fn drop_oldest_segment(&mut self) -> Result<(), SpoolError> {
        let (seq, len) = self.segments[0];
        let from = if seq == self.acked.segment { self.acked.offset } else { 0 };
        let lost = self.count_records(seq, from, len);
        if self.segments.len() == 1 {
            self.writer = None;
        }
        fs::remove_file(segment_path(&self.dir, seq))
            .map_err(|source| SpoolError::Io { dir: self.dir.clone(), source })?;
        self.segments.remove(0);
        let next = self
            .segments
            .first()
            .map_or(Position { segment: seq + 1, offset: 0 }, |&(s, _)| Position { segment: s, offset: 0 });
        self.acked = self.acked.max(next);
        self.read = self.read.max(next);
        self.stats.dropped += lost;
        self.pending_rows = self.pending_rows.saturating_sub(lost);
        tracing::warn!(rows = lost, dropped_total = self.stats.dropped, "spool full: dropped its oldest rows");
        self.write_ack().map_err(|source| SpoolError::Io { dir: self.dir.clone(), source })
    }

    /// Records in a segment between two offsets (for counting drops; corrupt ones included).
    fn count_records(&self, seq: u64, from: u64, to: u64) -> u64 {
        let Ok(mut f) = File::open(segment_path(&self.dir, seq)) else { return 0 };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut buf).is_err() {
            return 0;
        }
        buf.truncate((to - from) as usize);
        let mut n = 0;
        let mut at = 0;
        while at + HEADER <= buf.len() {
            if &buf[at..at + 4] == MAGIC {
                n += 1;
                let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
                at += HEADER + len.min(MAX_PAYLOAD);
            } else {
                at += 1;
            }
        }
        n
    }

    /// Reads up to `max_rows` rows from the read position, skipping (and counting) corrupt
    /// records. The rows stay pending until [`Spool::ack`] of the batch's end.
    pub fn read_batch(&mut self, max_rows: usize) -> Result<Batch, SpoolError> {
        let io = |source| SpoolError::Io { dir: self.dir.clone(), source };
        let mut rows = Vec::new();
        while rows.len() < max_rows {
            let Some((seq, len)) = self.next_unread() else { break };
            if seq != self.read.segment {
                self.read = Position { segment: seq, offset: 0 };
            }
            let mut f = File::open(segment_path(&self.dir, seq)).map_err(io)?;
            f.seek(SeekFrom::Start(self.read.offset)).map_err(io)?;
            let want = ((len - self.read.offset) as usize).min(READ_CHUNK.max(HEADER + MAX_PAYLOAD));
            let mut buf = vec![0u8; want];
            f.read_exact(&mut buf).map_err(io)?;
            let at_end = self.read.offset + want as u64 == len;
            let mut at = 0usize;
            while rows.len() < max_rows && at < buf.len() {
                match parse_record(&buf[at..]) {
                    Parsed::Row(row, used) => {
                        rows.push(*row);
                        at += used;
                    }
                    Parsed::NeedMore if !at_end => break,
                    // A record cut short at a segment's end was torn by a crash or a failed
                    // write (after which appends move to a new segment): corrupt like the rest.
                    Parsed::NeedMore | Parsed::Corrupt => {
                        self.stats.corrupt += 1;
                        tracing::warn!(
                            segment = seq,
                            offset = self.read.offset + at as u64,
                            corrupt_total = self.stats.corrupt,
                            "skipping a corrupt spool record"
                        );
                        self.pending_rows = self.pending_rows.saturating_sub(1);
                        at += 1 + resync(&buf[at + 1..]).unwrap_or(buf.len() - at - 1);
                    }
                }
            }
            self.read.offset += at as u64;
            if at == 0 {
                break;
            }
        }
        Ok(Batch { rows, end: self.read })
    }

    /// Marks everything before `end` as in the database; deletes finished segments (but not
    /// the one being written, which is deleted once it is full and read).
    pub fn ack(&mut self, end: Position, rows: u64) -> Result<(), SpoolError> {
        let io = |source| SpoolError::Io { dir: self.dir.clone(), source };
        self.acked = end;
        self.pending_rows = self.pending_rows.saturating_sub(rows);
        while let Some(&(seq, len)) = self.segments.first() {
            let writing = self.writer.is_some() && self.segments.len() == 1;
            let finished = seq < end.segment || (seq == end.segment && end.offset >= len);
            if !finished || writing {
                break;
            }
            fs::remove_file(segment_path(&self.dir, seq)).map_err(io)?;
            self.segments.remove(0);
        }
        if !self.has_unread() && self.read == self.acked {
            self.pending_rows = 0;
        }
        self.write_ack().map_err(io)
    }

    fn write_ack(&self) -> std::io::Result<()> {
        let tmp = self.dir.join("ack.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{} {}", self.acked.segment, self.acked.offset)?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join("ack"))
    }

    /// Rewinds reading to the acknowledged position (after a failed write of a batch).
    pub fn rewind(&mut self) {
        self.read = self.acked;
    }
}

enum Parsed {
    Row(Box<FeatureRow>, usize),
    NeedMore,
    Corrupt,
}

fn parse_record(buf: &[u8]) -> Parsed {
    if buf.len() < HEADER {
        return if MAGIC.starts_with(&buf[..buf.len().min(4)]) { Parsed::NeedMore } else { Parsed::Corrupt };
    }
    if &buf[..4] != MAGIC {
        return Parsed::Corrupt;
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Parsed::Corrupt;
    }
    if buf.len() < HEADER + len {
        return Parsed::NeedMore;
    }
    let payload = &buf[HEADER..HEADER + len];
    if crc32(payload) != crc {
        return Parsed::Corrupt;
    }
    match decode_row(payload) {
        Ok(row) => Parsed::Row(Box::new(row), HEADER + len),
        Err(_) => Parsed::Corrupt,
    }
}

/// Offset of the next record marker in `buf`, if any.
fn resync(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> FeatureRow {
        let mut ebpf = [None; EVENT_COUNT];
        ebpf[3] = Some(i as i64);
        FeatureRow {
            node: format!("node-{}", i % 2),
            ts: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i * 10),
            interval_s: Some(10.0),
            procfs: ProcfsFeatures {
                load1: Some(i as f64 / 3.0),
                disk_read: Some(-5),
                tcp_sock_mem: Some(7),
                ..Default::default()
            },
            est_conn: Some(1),
            lis_conn: None,
            ebpf,
            verdict: Verdict {
                anomaly_score: Some(1.5), anomalous_features: Some(vec!["load1".into(), "ünï".into()])
            },
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spool-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rows_round_trip_through_the_encoding() {
        for i in 0..5 {
            let mut b = BytesMut::new();
            encode_row(&row(i), &mut b);
            assert_eq!(decode_row(&b).unwrap(), row(i));
            assert_eq!(decode_row(&b[..b.len() - 1]), Err(DecodeError::Truncated));
        }
        let mut r = row(1);
        r.verdict = Verdict::default();
        r.ts = UNIX_EPOCH - Duration::from_micros(5);
        let mut b = BytesMut::new();
        encode_row(&r, &mut b);
        assert_eq!(decode_row(&b).unwrap(), r);
    }

    #[test]
    fn append_read_ack_and_reopen_in_order() {
        let dir = tempdir("order");
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..10 {
            s.append(&row(i)).unwrap();
        }
        let b = s.read_batch(4).unwrap();
        assert_eq!(b.rows, (0..4).map(row).collect::<Vec<_>>());
        s.ack(b.end, 4).unwrap();
        drop(s);
        // A restart (or a SIGKILL) replays what was not acknowledged, in order.
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&row(10)).unwrap();
        let b = s.read_batch(100).unwrap();
        assert_eq!(b.rows, (4..11).map(row).collect::<Vec<_>>());
        s.ack(b.end, 7).unwrap();
        assert!(!s.has_unread());
        assert_eq!(s.pending_rows(), 0);
        drop(s);
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        assert!(s.read_batch(10).unwrap().rows.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_spool_drops_the_oldest_rows_and_counts_them() {
        let dir = tempdir("full");
        let mut s = Spool::open(&dir, 8 * 1024).unwrap();
        for i in 0..200 {
            s.append(&row(i)).unwrap();
        }
        assert!(s.bytes() <= 8 * 1024, "{}", s.bytes());
        let dropped = s.stats().dropped;
        assert!(dropped > 0);
        let mut got = Vec::new();
        loop {
            let b = s.read_batch(50).unwrap();
            if b.rows.is_empty() {
                break;
            }
            s.ack(b.end, b.rows.len() as u64).unwrap();
            got.extend(b.rows);
        }
        // What is left is the newest rows, in order, and nothing is lost unaccounted.
        assert_eq!(got.len() as u64 + dropped, 200);
        assert_eq!(got, (dropped..200).map(row).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_records_are_skipped_and_counted() {
        let dir = tempdir("corrupt");
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..6 {
            s.append(&row(i)).unwrap();
        }
        drop(s);
        let seg = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "spool"))
            .unwrap();
        let mut data = fs::read(&seg).unwrap();
        let rec = data.len() / 6;
        data[rec + 40] ^= 0xff; // flip a payload byte of record 1: CRC mismatch
        data[3 * rec] = b'X'; // break record 3's marker
        data.truncate(data.len() - 10); // tear record 5
        fs::write(&seg, &data).unwrap();
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        let b = s.read_batch(100).unwrap();
        assert_eq!(b.rows, vec![row(0), row(2), row(4)]);
        assert_eq!(s.stats().corrupt, 3);
        s.ack(b.end, 3).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
