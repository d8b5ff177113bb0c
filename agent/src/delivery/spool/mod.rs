//! The on-disk spool: rows the database has not acknowledged yet, in order, surviving a clean
//! stop, a crash or a SIGKILL of the agent, and an upgrade of it.
//!
//! Layout of `--spool-dir`:
//! - `<id>.spool` segments (id: 16 decimal digits, never reused), append-only, in the format of
//!   [`format`]: a self-describing header (format version, first record's sequence number,
//!   the columns), then records framed with a marker, a sequence number and two CRC-32s. Every
//!   record is made durable (fdatasync) before `append` returns.
//! - `ack`: `FAK2 <segment> <offset> <seq> <crc>`, written atomically (temporary file, fsync,
//!   rename): every record before that position reached the database. Fully acknowledged
//!   segments are deleted after it is written.
//! - `lock`: held with an exclusive flock while an agent uses the spool.
//!
//! What is guaranteed (the model test in tests.rs checks it on random sequences): every row
//! `append` accepted is returned by `read_batch` at least once, in order, or counted in
//! [`SpoolStats`]: `dropped` when the size bound evicted it, `corrupt` when its bytes were
//! damaged. Rows are counted when the batch that passed them is acknowledged, so a rewind and
//! a re-read never count twice. Sequence numbers make the count exact wherever a good record
//! follows the damage; a damaged tail at the very end is counted by the record headers found in
//! it (at least one per damaged span). A record torn by a crash mid-append is not counted: its
//! append never returned.
//!
//! A damaged or missing `ack` is detected (checksum) and logged: the spool then replays from
//! its oldest segment, which is harmless (rows are keyed by (node, ts) and inserted with
//! ON CONFLICT DO NOTHING) and deletes nothing. Segments of format 1 (releases up to fc19417)
//! are rewritten in format 2 when the spool is opened (see legacy.rs).
pub mod format;
mod legacy;
#[cfg(test)]
mod tests;

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
};

use bytes::BytesMut;
use thiserror::Error;
use tracing::{info, warn};

use feature_schema::FeatureRow;
use format::{Decoder, Frame};

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

impl SpoolError {
    /// Whether the disk (or the spool's share of it) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT))
    }
}

/// A position in the spool: a segment, a byte offset in it, and the sequence number of the
/// next record expected there. `lost` counts the records found missing by reading up to here
/// since the spool was opened (so acknowledging a position counts them exactly once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    segment: u64,
    offset: u64,
    seq: u64,
    lost: u64,
}

/// Rows read from the spool: `ends[i]` is the position right after `rows[i]`, `end` the
/// position after everything read (damaged records included).
#[derive(Debug)]
struct Batch {
    rows: Vec<FeatureRow>,
    ends: Vec<Cursor>,
    end: Cursor,
}

/// Counters of what the spool did since it was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Rows dropped because the spool was full (oldest first).
    pub dropped: u64,
    /// Rows lost to damaged bytes in the spool.
    pub corrupt: u64,
    /// Times the `ack` file was found damaged (the spool then replays from its start).
    pub ack_damaged: u64,
    /// Rows rewritten from segments of an earlier format.
    pub upgraded: u64,
    /// Segments that could not be read (missing, a directory, unreadable): skipped.
    pub unreadable_segments: u64,
    /// Segments that could not be deleted once done with: forgotten, left on disk.
    pub unremovable_segments: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    id: u64,
    len: u64,
    /// The header's first sequence number; None when the header is damaged.
    first_seq: Option<u64>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held open with an exclusive flock for the spool's lifetime.
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    /// Existing segments, oldest first.
    segments: Vec<Segment>,
    /// The newest segment, open for appending (None: the next append starts a new segment).
    writer: Option<File>,
    next_segment: u64,
    /// Sequence number of the next record appended.
    next_seq: u64,
    /// Everything before it is acknowledged.
    acked: Cursor,
    /// Where the next read starts (at or after `acked`).
    read: Cursor,
    /// The positions after each row of the batch last read and not yet committed, and after
    /// the whole batch: the spool alone keeps its cursors.
    in_flight: Option<(Vec<Cursor>, Cursor)>,
    /// The decoder of the segment being read, by segment id.
    decoder: Option<(u64, Option<Decoder>)>,
    stats: SpoolStats,
    /// Tests only: the next append writes this many bytes of its record, then fails as a full
    /// disk would.
    #[cfg(test)]
    fail_next_append_after: Option<usize>,
}

/// The most of a segment file that is ever read. The agent's segments stay under 1 MiB plus one
/// record; bytes beyond this in a file that grew otherwise are ignored (their rows, if any, are
/// counted as lost), so no file in the directory can make the agent allocate without bound.
const MAX_SEGMENT_READ: u64 = 2 << 20;
/// The same for a format-1 segment (their size bound was 16 MiB).
const MAX_LEGACY_SEGMENT_READ: u64 = 17 << 20;

/// Reads the first `limit` bytes of a file at most.
fn read_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)?.take(limit).read_to_end(&mut data)?;
    Ok(data)
}

/// Decodes a segment's bytes, of either format, the way a replay would: the rows it yields and
/// the records found damaged. For fuzzing the decoders: it must never panic or allocate without
/// bound, whatever the bytes.
pub fn decode_segment_bytes(data: &[u8]) -> (Vec<FeatureRow>, u64) {
    if legacy::looks_like_format_1(data) {
        return legacy::read_segment(data);
    }
    let (decoder, mut at) = match format::parse_segment_header(data) {
        Ok((d, n)) => (Some(d), n),
        Err(_) => (None, 0),
    };
    let (mut rows, mut damaged) = (Vec::new(), 0);
    while at < data.len() {
        match format::frame(&data[at..]) {
            Frame::Record { payload, len, .. } => {
                match decoder.as_ref().map(|d| d.decode(payload)) {
                    Some(Ok((row, _))) => rows.push(row),
                    _ => damaged += 1,
                }
                at += len;
            }
            Frame::BadPayload { len, .. } => {
                damaged += 1;
                at += len;
            }
            Frame::Torn { .. } => break,
            Frame::Damaged => {
                damaged += 1;
                at += format::next_marker(&data[at..]).unwrap_or(data.len() - at);
            }
        }
    }
    (rows, damaged)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.spool"))
}

/// The text of the `ack` file for a position.
fn ack_text(c: &Cursor) -> String {
    let body = format!("FAK2 {} {} {}", c.segment, c.offset, c.seq);
    format!("{body} {:08x}\n", format::crc32(body.as_bytes()))
}

/// What an `ack` file says.
#[derive(Debug, PartialEq)]
enum Ack {
    /// A checksummed position.
    At {
        segment: u64,
        offset: u64,
        seq: u64,
    },
    /// Format 1's unchecked `<segment> <offset>`: not trusted, everything is replayed.
    Legacy,
    Missing,
    Damaged,
}

fn parse_ack(text: Option<&[u8]>) -> Ack {
    let Some(bytes) = text else { return Ack::Missing };
    let Ok(text) = std::str::from_utf8(bytes) else { return Ack::Damaged };
    let fields: Vec<&str> = text.trim_end_matches('\n').split(' ').collect();
    if fields.len() == 2 && text.ends_with('\n') && fields.iter().all(|f| f.parse::<u64>().is_ok()) {
        return Ack::Legacy;
    }
    if fields.len() != 5 || fields[0] != "FAK2" || !text.ends_with('\n') || text.matches('\n').count() != 1 {
        return Ack::Damaged;
    }
    let body = fields[..4].join(" ");
    let crc_ok =
        u32::from_str_radix(fields[4], 16).is_ok_and(|c| c == format::crc32(body.as_bytes())) && fields[4].len() == 8;
    match (crc_ok, fields[1].parse(), fields[2].parse(), fields[3].parse()) {
        (true, Ok(segment), Ok(offset), Ok(seq)) => Ack::At { segment, offset, seq },
        _ => Ack::Damaged,
    }
}

/// A segment's bytes, or what it starts with: format 2, format 1, or nothing usable.
enum Kind {
    V2,
    V1,
}

fn io_err(dir: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { dir: dir.to_owned(), source }
}

impl Spool {
    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (creating if needed) the spool in `dir`, bounded by `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let io = io_err(dir);
        fs::create_dir_all(dir).map_err(&io)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(&io)?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(SpoolError::Locked { dir: dir.to_owned() });
            }
            return Err(io(e));
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(&io)? {
            let entry = entry.map_err(&io)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".spool")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            found.push(id);
        }
        found.sort_unstable();
        let ack_file = fs::read(dir.join("ack")).ok();
        let ack = parse_ack(ack_file.as_deref());
        let mut segments = Vec::new();
        let mut legacy = Vec::new();
        let mut unreadable = Vec::new();
        for &id in &found {
            let path = segment_path(dir, id);
            let mut head = Vec::with_capacity(format::MAX_HEADER_BODY);
            let read = fs::symlink_metadata(&path)
                .and_then(|m| if m.is_file() { Ok(m.len()) } else { Err(std::io::Error::other("not a regular file")) })
                .and_then(|len| {
                    File::open(&path)?.take(format::MAX_HEADER_BODY as u64 + 64).read_to_end(&mut head)?;
                    Ok(len)
                });
            let len = match read {
                Ok(len) => len,
                Err(e) => {
                    // A segment replaced by a directory, unreadable, or gone while listed: its
                    // rows are lost, and counted by the sequence numbers around it.
                    warn!(segment = id, error = %e, "a spool segment cannot be read; its rows are lost and the rest of the spool is used");
                    unreadable.push(id);
                    continue;
                }
            };
            let kind = if legacy::looks_like_format_1(&head) { Kind::V1 } else { Kind::V2 };
            match kind {
                _ if len == 0 => {
                    // Created by a start that crashed before writing its header: no rows.
                    fs::remove_file(&path).map_err(&io)?;
                }
                Kind::V1 => legacy.push(id),
                Kind::V2 => {
                    let first_seq = format::parse_segment_header(&head).ok().map(|(d, _)| d.first_seq);
                    segments.push(Segment { id, len, first_seq });
                }
            }
        }
        let next_segment = found.last().map_or(1, |l| l + 1);
        let mut spool = Spool {
            dir: dir.to_owned(),
            _lock: lock,
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4096, 1 << 20),
            segments,
            writer: None,
            next_segment,
            next_seq: 0,
            acked: Cursor { segment: 0, offset: 0, seq: 0, lost: 0 },
            read: Cursor { segment: 0, offset: 0, seq: 0, lost: 0 },
            in_flight: None,
            decoder: None,
            #[cfg(test)]
            fail_next_append_after: None,
            stats: SpoolStats::default(),
        };
        match ack {
            Ack::At { segment, offset, seq } => {
                spool.next_segment = spool.next_segment.max(segment + 1);
                spool.acked = Cursor { segment, offset, seq, lost: 0 };
                // Segments wholly before the ack are leftovers of a crash between the ack and
                // their deletion.
                while spool.segments.first().is_some_and(|s| s.id < segment) {
                    let s = spool.segments.remove(0);
                    spool.discard_segment_file(s.id);
                }
            }
            Ack::Missing | Ack::Legacy if spool.segments.is_empty() => {}
            Ack::Legacy => info!("the spool's ack is from an earlier release; replaying every spooled row (rows the database has are skipped)"),
            Ack::Missing | Ack::Damaged => {
                spool.stats.ack_damaged += 1;
                warn!(
                    file = %dir.join("ack").display(),
                    "the spool's ack file is damaged or missing; replaying every spooled row from the oldest (rows the database already has are skipped, none are deleted)"
                );
            }
        }
        if !matches!(ack, Ack::At { .. }) {
            let seq = spool.seq_at(0);
            let segment = spool.segments.first().map_or(spool.next_segment, |s| s.id);
            spool.acked = Cursor { segment, offset: 0, seq, lost: 0 };
        }
        spool.next_seq = spool.scan_next_seq();
        spool.read = spool.acked;
        for id in unreadable {
            spool.stats.unreadable_segments += 1;
            let acked = matches!(ack, Ack::At { segment, .. } if id < segment);
            if !acked && spool.segments.last().is_none_or(|last| id > last.id) {
                // After every readable segment no sequence number counts its rows: count one,
                // the least it held.
                spool.stats.corrupt += 1;
            }
            spool.discard_segment_file(id);
        }
        spool.write_ack().map_err(&io)?;
        for id in legacy {
            spool.upgrade_legacy_segment(id)?;
        }
        Ok(spool)
    }

    /// Rewrites a format-1 segment in the current format, then deletes it.
    fn upgrade_legacy_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let path = segment_path(&self.dir, id);
        let data = read_capped(&path, MAX_LEGACY_SEGMENT_READ).map_err(io_err(&self.dir))?;
        let (rows, lost) = legacy::read_segment(&data);
        for row in &rows {
            self.append(row)?;
        }
        self.writer = None;
        fs::remove_file(&path).map_err(io_err(&self.dir))?;
        self.stats.upgraded += rows.len() as u64;
        self.stats.corrupt += lost;
        info!(segment = id, rows = rows.len(), lost, "rewrote a spool segment of format 1 in format 2");
        if lost > 0 {
            warn!(rows = lost, "rows of a format-1 spool segment were damaged and are lost");
        }
        Ok(())
    }

    /// Sequence number of the first record at or after segment index `i`: from its header, or
    /// (header damaged) the first whole record header in it less one for every damaged frame
    /// before that record (which may be records: counting them keeps a loss from going
    /// uncounted, at the price of counting the damaged header too), or the next segment's, or
    /// `next_seq`.
    fn seq_at(&self, i: usize) -> u64 {
        // Damaged frames met on the way, in segments without a good header or record: any of
        // them may be a record, so the answer is lowered by their number.
        let mut damaged = 0u64;
        for s in &self.segments[i.min(self.segments.len())..] {
            if let Some(f) = s.first_seq {
                return f.saturating_sub(damaged);
            }
            if let Ok(data) = read_capped(&segment_path(&self.dir, s.id), MAX_SEGMENT_READ) {
                let mut at = 0;
                while at < data.len() {
                    match format::frame(&data[at..]) {
                        Frame::Record { seq, .. } | Frame::BadPayload { seq, .. } => {
                            return seq.saturating_sub(damaged)
                        }
                        Frame::Torn { .. } => break,
                        Frame::Damaged => {
                            damaged += 1;
                            at += format::next_marker(&data[at..]).unwrap_or(data.len() - at);
                        }
                    }
                }
            }
        }
        self.next_seq.saturating_sub(damaged)
    }

    /// The sequence number the next append gets: one past the newest record whose header
    /// holds, plus one for each damaged frame after it (records whose bytes were damaged; a
    /// record torn at the very end was never appended and is not counted). The scan starts at
    /// the newest segment whose own header holds, so a damaged header never hides the numbers
    /// of the records before it.
    fn scan_next_seq(&self) -> u64 {
        let mut next = self.acked.seq;
        for s in &self.segments {
            next = next.max(s.first_seq.unwrap_or(0));
        }
        let from = self.segments.iter().rposition(|s| s.first_seq.is_some()).unwrap_or(0);
        let mut damaged_after = 0;
        let mut newest = None;
        for seg in self.segments.get(from..).unwrap_or_default() {
            // A segment that cannot be read now is read (and found damaged) later.
            let Ok(data) = read_capped(&segment_path(&self.dir, seg.id), MAX_SEGMENT_READ) else { continue };
            let mut at = match format::parse_segment_header(&data) {
                Ok((_, n)) => n,
                Err(_) if data.is_empty() => continue,
                Err(_) => 0,
            };
            while at < data.len() {
                match format::frame(&data[at..]) {
                    Frame::Record { seq, len, .. } | Frame::BadPayload { seq, len } => {
                        newest = Some(newest.map_or(seq, |n: u64| n.max(seq)));
                        damaged_after = 0;
                        at += len;
                    }
                    Frame::Torn { seq } => {
                        if let Some(seq) = seq {
                            next = next.max(seq);
                        }
                        break;
                    }
                    Frame::Damaged => {
                        damaged_after += 1;
                        at += format::next_marker(&data[at..]).unwrap_or(data.len() - at);
                    }
                }
            }
        }
        if let Some(n) = newest {
            next = next.max(n + 1);
        }
        next + damaged_after
    }

    /// Deletes a segment file that holds nothing to read any more. One that cannot be deleted
    /// (a directory in its place, a read-only or immutable file) is renamed aside if it can be,
    /// else left; either way the spool forgets it and goes on: its rows are acknowledged or
    /// counted, and a file that will not go must not stop new rows from being spooled.
    fn discard_segment_file(&mut self, id: u64) {
        let path = segment_path(&self.dir, id);
        let gone = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(m) if m.is_dir() => fs::remove_dir(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = gone {
            let aside = self.dir.join(format!("{id}.damaged"));
            let renamed = fs::rename(&path, &aside).is_ok();
            self.stats.unremovable_segments += 1;
            warn!(
                segment = id,
                error = %e,
                set_aside = renamed,
                "a spool segment cannot be deleted; the spool forgets it and goes on (remove it by hand)"
            );
        }
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Whether anything remains to be read (rows, or damage not yet counted).
    pub fn has_unread(&self) -> bool {
        let r = self.read;
        self.read.seq < self.next_seq
            || self.segments.iter().any(|s| (s.id == r.segment && s.len > r.offset) || (s.id > r.segment && s.len > 0))
    }

    /// Rows spooled and not acknowledged (rows later found damaged included).
    pub fn pending_rows(&self) -> u64 {
        self.next_seq.saturating_sub(self.acked.seq)
    }

    /// Appends a row durably. Deletes the oldest segments first if the spool would overflow.
    pub fn append(&mut self, row: &FeatureRow) -> Result<(), SpoolError> {
        let mut record = BytesMut::with_capacity(512);
        let payload_len = format::encode_record(row, self.next_seq, &mut record);
        if payload_len > format::MAX_PAYLOAD {
            return Err(SpoolError::TooLarge(payload_len));
        }
        let len = record.len() as u64;
        let needs_new = match (self.writer.as_ref(), self.segments.last()) {
            (Some(_), Some(last)) => last.len + len > self.segment_bytes,
            _ => true,
        };
        let header = if needs_new { format::segment_header(self.next_seq) } else { Vec::new() };
        while self.bytes() + header.len() as u64 + len > self.max_bytes && !self.segments.is_empty() {
            self.drop_oldest_segment()?;
        }
        let io = io_err(&self.dir);
        if needs_new || self.writer.is_none() {
            let id = self.next_segment;
            self.next_segment += 1;
            let path = segment_path(&self.dir, id);
            let created = OpenOptions::new().create_new(true).append(true).open(&path).and_then(|mut f| {
                f.write_all(&header)?;
                f.sync_data()?;
                File::open(&self.dir)?.sync_all()?;
                Ok(f)
            });
            match created {
                Ok(f) => {
                    self.segments.push(Segment { id, len: header.len() as u64, first_seq: Some(self.next_seq) });
                    self.writer = Some(f);
                }
                Err(e) => {
                    // A segment without a whole header holds no rows: leave nothing behind.
                    let _ = fs::remove_file(&path);
                    return Err(io(e));
                }
            }
        }
        let writer = self.writer.as_mut().expect("a segment is open");
        let last = self.segments.last_mut().expect("the open segment");
        #[cfg(test)]
        let result = match self.fail_next_append_after.take() {
            Some(cut) => writer
                .write_all(&record[..cut.min(record.len())])
                .and_then(|()| Err(std::io::Error::from_raw_os_error(libc::ENOSPC))),
            None => writer.write_all(&record).and_then(|()| writer.sync_data()),
        };
        #[cfg(not(test))]
        let result = writer.write_all(&record).and_then(|()| writer.sync_data());
        if let Err(e) = result {
            // Never append after a partial record: the next append starts a new segment, and
            // reuses this record's sequence number (the row was not spooled).
            self.writer = None;
            if let Ok(meta) = segment_path(&self.dir, last.id).metadata() {
                last.len = meta.len();
            }
            return Err(io(e));
        }
        last.len += len;
        self.next_seq += 1;
        Ok(())
    }

    /// Deletes the oldest segment, counting its unacknowledged rows as dropped.
    fn drop_oldest_segment(&mut self) -> Result<(), SpoolError> {
        let seg = self.segments[0];
        let boundary_seq = self.seq_at(1).max(self.acked.seq);
        let lost = boundary_seq - self.acked.seq;
        if self.segments.len() == 1 {
            self.writer = None;
        }
        let boundary_segment = self.segments.get(1).map_or(self.next_segment, |s| s.id);
        self.acked = Cursor { segment: boundary_segment, offset: 0, seq: boundary_seq, lost: self.acked.lost };
        self.read = self.read.max(self.acked);
        self.write_ack().map_err(io_err(&self.dir))?;
        self.discard_segment_file(seg.id);
        self.segments.remove(0);
        self.stats.dropped += lost;
        if lost > 0 {
            warn!(rows = lost, dropped_total = self.stats.dropped, "spool full: dropped its oldest rows");
        }
        Ok(())
    }

    /// Reads up to `max_rows` rows from the read position, skipping damaged records (counted
    /// when the batch is committed). The rows stay pending until [`Spool::commit`]; an empty
    /// batch that passed damaged records is committed like any other (so they are skipped).
    pub fn read_batch(&mut self, max_rows: usize) -> Result<Vec<FeatureRow>, SpoolError> {
        let batch = self.read_rows(max_rows)?;
        self.in_flight = Some((batch.ends, batch.end));
        Ok(batch.rows)
    }

    /// The first `rows` rows of the batch last read are in the database (or refused for good):
    /// they are acknowledged durably and never read again. All of them (`rows` = the batch's
    /// length) also passes the damaged records at its end. The rest are read again after
    /// [`Spool::rewind`]. Nothing in flight: nothing to do.
    pub fn commit(&mut self, rows: usize) -> Result<(), SpoolError> {
        let Some((ends, end)) = self.in_flight.take() else { return Ok(()) };
        let upto = match rows {
            n if n >= ends.len() => end,
            0 => return Ok(()),
            n => ends[n - 1],
        };
        self.ack(upto)
    }

    /// Whether a batch read by [`Spool::read_batch`] awaits [`Spool::commit`] or
    /// [`Spool::rewind`].
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    fn read_rows(&mut self, max_rows: usize) -> Result<Batch, SpoolError> {
        let mut batch = Batch { rows: Vec::new(), ends: Vec::new(), end: self.read };
        while batch.rows.len() < max_rows {
            let Some(i) = self.segments.iter().position(|s| s.id >= self.read.segment) else {
                self.reach_end();
                break;
            };
            let mut seg = self.segments[i];
            if seg.len > MAX_SEGMENT_READ {
                warn!(
                    segment = seg.id,
                    bytes = seg.len,
                    "a spool segment is larger than any the agent writes; reading its first 2 MiB"
                );
                seg.len = MAX_SEGMENT_READ;
            }
            if seg.id != self.read.segment {
                self.read = Cursor { segment: seg.id, offset: 0, ..self.read };
            }
            if self.read.offset >= seg.len {
                match self.segments.get(i + 1) {
                    Some(next) => self.read = Cursor { segment: next.id, offset: 0, ..self.read },
                    None => {
                        self.reach_end();
                        break;
                    }
                }
                continue;
            }
            let data = match read_capped(&segment_path(&self.dir, seg.id), seg.len) {
                Ok(data) => data,
                Err(e) => {
                    // Gone, or replaced by something unreadable since the spool was opened:
                    // its rows are lost, counted by the sequence numbers that follow.
                    warn!(segment = seg.id, error = %e, "a spool segment cannot be read; skipping it");
                    if self.segments.last().is_some_and(|l| l.id == seg.id) {
                        // New rows go to a new segment, not after bytes no one can read.
                        self.writer = None;
                    }
                    self.read = Cursor { segment: seg.id, offset: seg.len, ..self.read };
                    self.stats.unreadable_segments += 1;
                    continue;
                }
            };
            if (data.len() as u64) < seg.len {
                // Shorter on disk than written: the missing bytes are damage like any other.
                warn!(
                    segment = seg.id,
                    expected = seg.len,
                    found = data.len(),
                    "a spool segment is shorter than written"
                );
            }
            if self.decoder.as_ref().is_none_or(|(id, _)| *id != seg.id) {
                let decoder = match format::parse_segment_header(&data) {
                    Ok((d, _)) => {
                        if !d.unknown.is_empty() || !d.missing.is_empty() {
                            info!(
                                segment = seg.id,
                                ignored = d.unknown.join(","),
                                null = d.missing.join(","),
                                "replaying a spool segment with other columns, by name"
                            );
                        }
                        Some(d)
                    }
                    Err(e) => {
                        warn!(segment = seg.id, error = %e, "a spool segment's header is unreadable; its rows are lost");
                        None
                    }
                };
                self.decoder = Some((seg.id, decoder));
            }
            if self.read.offset == 0 {
                match format::parse_segment_header(&data) {
                    Ok((d, n)) => {
                        self.skip_to(d.first_seq);
                        self.read.offset = n as u64;
                    }
                    Err(_) => {
                        // Rows of a segment without a header: lost; they are counted by the
                        // sequence numbers that follow.
                        self.read.offset = seg.len;
                        continue;
                    }
                }
            }
            let decoder = self.decoder.as_ref().and_then(|(_, d)| d.clone());
            let end = (data.len() as u64).min(seg.len) as usize;
            let mut at = self.read.offset as usize;
            while batch.rows.len() < max_rows && at < end {
                match format::frame(&data[at..end]) {
                    Frame::Record { seq, payload, len } => {
                        at += len;
                        if seq < self.read.seq {
                            // A second copy of a record already read: an append whose write
                            // reached the disk but reported an error (a failed fdatasync) was
                            // retried under the same number.
                            self.read.offset = at as u64;
                            continue;
                        }
                        let decoded = decoder.as_ref().map(|d| d.decode(payload));
                        match decoded {
                            Some(Ok((row, unconverted))) => {
                                if unconverted > 0 {
                                    warn!(
                                        segment = seg.id,
                                        values = unconverted,
                                        "spooled values of a changed type are NULL"
                                    );
                                }
                                self.met(seq, true);
                                self.read.offset = at as u64;
                                batch.rows.push(row);
                                batch.ends.push(self.read);
                            }
                            Some(Err(e)) => {
                                warn!(segment = seg.id, offset = at - len, error = %e, "a spool record does not decode; its row is lost");
                                self.met(seq, false);
                            }
                            None => {}
                        }
                    }
                    Frame::BadPayload { len, .. } => {
                        warn!(segment = seg.id, offset = at, "skipping a damaged spool record (checksum)");
                        at += len;
                    }
                    Frame::Damaged => {
                        warn!(segment = seg.id, offset = at, "skipping damaged spool bytes up to the next record");
                        at += format::next_marker(&data[at..end]).unwrap_or(end - at);
                    }
                    // The rest was torn by a crash or a failed write: the row it held was never
                    // spooled (a failed append is retried in a new segment).
                    Frame::Torn { .. } => at = end,
                }
                self.read.offset = at as u64;
            }
            if at >= end {
                self.read.offset = seg.len;
            }
        }
        batch.end = self.read;
        Ok(batch)
    }

    /// The reader reached sequence number `seq`: records between the expected one and `seq`
    /// are lost.
    fn skip_to(&mut self, seq: u64) {
        if seq > self.read.seq {
            self.read.lost += seq - self.read.seq;
            self.read.seq = seq;
        }
    }

    /// The reader met record `seq`; `taken`: its row was read (else it did not decode and is
    /// lost). A record met again (a duplicate of a retried append) changes nothing.
    fn met(&mut self, seq: u64, taken: bool) {
        self.skip_to(seq);
        if self.read.seq == seq {
            if !taken {
                self.read.lost += 1;
            }
            self.read.seq = seq + 1;
        }
    }

    /// The reader passed every byte: records appended but not met are lost.
    fn reach_end(&mut self) {
        if self.read.seq < self.next_seq {
            self.read.lost += self.next_seq - self.read.seq;
            self.read.seq = self.next_seq;
        }
    }

    /// Marks everything before `end` as in the database; counts the damaged rows passed on the
    /// way; deletes finished segments (but not the one being written).
    fn ack(&mut self, end: Cursor) -> Result<(), SpoolError> {
        let lost = end.lost.saturating_sub(self.acked.lost);
        self.acked = end;
        if self.read < end {
            self.read = end;
        }
        if lost > 0 {
            self.stats.corrupt += lost;
            warn!(rows = lost, corrupt_total = self.stats.corrupt, "rows lost to damaged spool records");
        }
        self.write_ack().map_err(io_err(&self.dir))?;
        while let Some(&seg) = self.segments.first() {
            let writing = self.writer.is_some() && self.segments.len() == 1;
            let finished = seg.id < end.segment || (seg.id == end.segment && end.offset >= seg.len);
            if !finished || writing {
                break;
            }
            self.discard_segment_file(seg.id);
            self.segments.remove(0);
        }
        Ok(())
    }

    fn write_ack(&self) -> std::io::Result<()> {
        let tmp = self.dir.join("ack.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(ack_text(&self.acked).as_bytes())?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join("ack"))
    }

    /// Rewinds reading to the acknowledged position (after a failed write of a batch).
    pub fn rewind(&mut self) {
        self.in_flight = None;
        self.read = self.acked;
    }
}
