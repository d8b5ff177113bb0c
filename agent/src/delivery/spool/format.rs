//! The spool's on-disk format, version 2: self-describing segments of framed, checksummed
//! records, each carrying a sequence number so that a reader can tell exactly how many rows a
//! damaged span held.
//!
//! A segment starts with a header:
//!   `b"FASG" | version u16 | body length u32 | CRC-32 of (version, length, body) u32 | body`
//!   body: `first record seq u64 | column count u16 | per column: type tag u8, value width u8
//!   (0: a u32 length prefix follows each value), name length u8, name`.
//! Then records, each
//!   `b"FAR2" | payload length u32 | seq u64 | CRC-32 of the previous 16 bytes u32 |
//!    CRC-32 of the payload u32 | payload`
//!   payload: per header column, `0` (NULL) or `1` and the value (fixed width little-endian, or
//!   length-prefixed bytes).
//! A reader maps a segment's columns onto its own by name: a column it does not know is skipped
//! (the header gives every value's width, so even a type added later can be skipped), a column
//! the segment lacks is NULL. A change that cannot be expressed that way needs a new version.
//!
//! The last header column, `pod_rows` (type tag 0xF0, length-prefixed), holds the interval's
//! per-pod rows, so a node row and its pod rows are spooled, dropped and written together. Its
//! value is self-describing the same way: `column count u16 | per column: type tag, width,
//! name length, name | row count u32 | per row, per column: 0 or 1 and the value`. A release
//! that predates it skips the column like any unknown one.
use bytes::{Buf, BufMut, BytesMut};

use feature_schema::{
    column_index, column_types,
    pods::{pod_column_types, pod_columns, PodRow},
    ColumnType, FeatureRow, Value, COLUMNS,
};

pub const SEGMENT_MAGIC: &[u8; 4] = b"FASG";
pub const FORMAT_VERSION: u16 = 2;
pub const RECORD_MAGIC: &[u8; 4] = b"FAR2";
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 24;
/// Larger payloads are corrupt by definition (a node row is well under 4 KiB; with its pod
/// rows, about 250 bytes each, a few hundred KiB at most).
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The header column that carries an interval's pod rows, and its type tag.
pub const POD_ROWS_COLUMN: &str = "pod_rows";
pub const POD_ROWS_TAG: u8 = 0xF0;
/// Larger segment header bodies are corrupt by definition.
pub const MAX_HEADER_BODY: usize = 64 * 1024;
const SEGMENT_PREAMBLE: usize = 14;

/// CRC-32 (IEEE 802.3, reflected, the one zlib and PNG use).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(!0, data) ^ !0
}

fn crc32_update(crc: u32, data: &[u8]) -> u32 {
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
    data.iter().fold(crc, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// Fixed width of a type's values in a record; 0 for length-prefixed ones.
fn width(t: ColumnType) -> u8 {
    match t {
        ColumnType::Text | ColumnType::TextArray => 0,
        ColumnType::Timestamp | ColumnType::Float8 | ColumnType::Int8 => 8,
        ColumnType::Int4 => 4,
    }
}

/// The header of a segment written by this release: its columns are [`COLUMNS`].
pub fn segment_header(first_seq: u64) -> Vec<u8> {
    let mut body = BytesMut::with_capacity(1024);
    body.put_u64_le(first_seq);
    body.put_u16_le(COLUMNS.len() as u16 + 1);
    for (name, t) in COLUMNS.iter().zip(column_types()) {
        body.put_u8(t as u8);
        body.put_u8(width(t));
        body.put_u8(name.len() as u8);
        body.put_slice(name.as_bytes());
    }
    body.put_u8(POD_ROWS_TAG);
    body.put_u8(0);
    body.put_u8(POD_ROWS_COLUMN.len() as u8);
    body.put_slice(POD_ROWS_COLUMN.as_bytes());
    let mut out = Vec::with_capacity(SEGMENT_PREAMBLE + body.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32_update(crc32_update(!0, &out[4..10]), &body) ^ !0;
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// One column of a segment, as this release reads it.
#[derive(Debug, Clone, PartialEq)]
struct SegmentColumn {
    /// The segment's type, if this release knows the tag.
    kind: Option<ColumnType>,
    width: u8,
    /// Index in this release's [`COLUMNS`] and its type there, if it has the column.
    target: Option<(usize, ColumnType)>,
    /// The `pod_rows` column.
    pods: bool,
}

/// How to turn one segment's records into rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoder {
    pub first_seq: u64,
    columns: Vec<SegmentColumn>,
    /// Columns of the segment this release does not have (ignored).
    pub unknown: Vec<String>,
    /// Columns of this release the segment lacks (NULL in its rows).
    pub missing: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a spool segment (no header)")]
    NoMagic,
    #[error("segment header cut short")]
    Truncated,
    #[error("segment header checksum mismatch")]
    Checksum,
    #[error("segment format version {0} is newer than this release reads ({FORMAT_VERSION})")]
    Version(u16),
    #[error("segment header is malformed")]
    Malformed,
}

/// Parses a segment header; returns its decoder and the header's length in bytes.
pub fn parse_segment_header(data: &[u8]) -> Result<(Decoder, usize), HeaderError> {
    if data.len() < 4 || &data[..4] != SEGMENT_MAGIC {
        return Err(if SEGMENT_MAGIC.starts_with(&data[..data.len().min(4)]) {
            HeaderError::Truncated
        } else {
            HeaderError::NoMagic
        });
    }
    if data.len() < SEGMENT_PREAMBLE {
        return Err(HeaderError::Truncated);
    }
    let version = u16::from_le_bytes([data[4], data[5]]);
    let body_len = u32::from_le_bytes(data[6..10].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[10..14].try_into().expect("4 bytes"));
    if body_len > MAX_HEADER_BODY {
        return Err(HeaderError::Malformed);
    }
    let Some(body) = data.get(SEGMENT_PREAMBLE..SEGMENT_PREAMBLE + body_len) else {
        return Err(HeaderError::Truncated);
    };
    if crc32_update(crc32_update(!0, &data[4..10]), body) ^ !0 != crc {
        return Err(HeaderError::Checksum);
    }
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let mut r = Cursor(body);
    let bad = |_| HeaderError::Malformed;
    let first_seq = r.u64().map_err(bad)?;
    let n = r.u16().map_err(bad)? as usize;
    // Each column takes at least 3 bytes of the body.
    if n > body.len() / 3 {
        return Err(HeaderError::Malformed);
    }
    let types = column_types();
    let mut decoder = Decoder { first_seq, columns: Vec::with_capacity(n), unknown: Vec::new(), missing: Vec::new() };
    let mut seen = vec![false; COLUMNS.len()];
    for _ in 0..n {
        let tag = r.u8().map_err(bad)?;
        let width = r.u8().map_err(bad)?;
        let len = r.u8().map_err(bad)? as usize;
        let name = std::str::from_utf8(r.take(len).map_err(bad)?).map_err(|_| HeaderError::Malformed)?;
        if name == POD_ROWS_COLUMN && tag == POD_ROWS_TAG && width == 0 {
            decoder.columns.push(SegmentColumn { kind: None, width, target: None, pods: true });
            continue;
        }
        let kind = ColumnType::from_tag(tag);
        if kind.is_some_and(|k| self::width(k) != width) || !matches!(width, 0 | 1 | 2 | 4 | 8) {
            return Err(HeaderError::Malformed);
        }
        let target = column_index(name).filter(|&i| kind.is_some() && !std::mem::replace(&mut seen[i], true));
        if target.is_none() {
            decoder.unknown.push(name.to_owned());
        }
        decoder.columns.push(SegmentColumn { kind, width, target: target.map(|i| (i, types[i])), pods: false });
    }
    if !r.0.is_empty() {
        return Err(HeaderError::Malformed);
    }
    decoder.missing = COLUMNS.iter().zip(&seen).filter(|(_, s)| !**s).map(|(c, _)| *c).collect();
    Ok((decoder, SEGMENT_PREAMBLE + body_len))
}

/// Appends one value of `t` (or NULL).
fn put_value(b: &mut BytesMut, v: &Value) {
    match v {
        Value::Null => b.put_u8(0),
        Value::Text(s) => {
            b.put_u8(1);
            b.put_u32_le(s.len() as u32);
            b.put_slice(s.as_bytes());
        }
        Value::Timestamp(m) | Value::Int8(m) => {
            b.put_u8(1);
            b.put_i64_le(*m);
        }
        Value::Float8(f) => {
            b.put_u8(1);
            b.put_f64_le(*f);
        }
        Value::Int4(i) => {
            b.put_u8(1);
            b.put_i32_le(*i);
        }
        Value::TextArray(a) => {
            b.put_u8(1);
            let at = b.len();
            b.put_u32_le(0);
            b.put_u32_le(a.len() as u32);
            for s in a {
                b.put_u32_le(s.len() as u32);
                b.put_slice(s.as_bytes());
            }
            let len = (b.len() - at - 4) as u32;
            b[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
}

/// Appends a whole record (header and payload) holding `row` with sequence number `seq`.
pub fn encode_record(row: &FeatureRow, seq: u64, b: &mut BytesMut) -> usize {
    let start = b.len();
    b.put_bytes(0, RECORD_HEADER);
    for v in row.values() {
        put_value(b, &v);
    }
    put_pods(b, &row.pods);
    let payload_len = b.len() - start - RECORD_HEADER;
    let payload_crc = crc32(&b[start + RECORD_HEADER..]);
    let h = &mut b[start..start + RECORD_HEADER];
    h[..4].copy_from_slice(RECORD_MAGIC);
    h[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let header_crc = crc32(&h[..16]);
    h[16..20].copy_from_slice(&header_crc.to_le_bytes());
    h[20..24].copy_from_slice(&payload_crc.to_le_bytes());
    payload_len
}

/// Appends the `pod_rows` value: NULL when there are none, else the self-describing block.
fn put_pods(b: &mut BytesMut, pods: &[PodRow]) {
    if pods.is_empty() {
        b.put_u8(0);
        return;
    }
    b.put_u8(1);
    let at = b.len();
    b.put_u32_le(0);
    let columns = pod_columns();
    b.put_u16_le(columns.len() as u16);
    for ((name, _), t) in columns.iter().zip(pod_column_types()) {
        b.put_u8(t as u8);
        b.put_u8(width(t));
        b.put_u8(name.len() as u8);
        b.put_slice(name.as_bytes());
    }
    b.put_u32_le(pods.len() as u32);
    for p in pods {
        for v in p.values() {
            put_value(b, &v);
        }
    }
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes a `pod_rows` block into this release's pod rows, by column name as for node rows.
pub(crate) fn decode_pods(bytes: &[u8]) -> Result<Vec<PodRow>, DecodeError> {
    let mut r = Cursor(bytes);
    let n = r.u16()? as usize;
    if n > bytes.len() / 3 {
        return Err(DecodeError::Truncated);
    }
    let names = pod_columns();
    let types = pod_column_types();
    // A row must have the identity columns that are its key.
    let at = |column: &str| names.iter().position(|(c, _)| *c == column);
    let (node_at, owner_at) = (at("node"), at("owner"));
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let (tag, width, len) = (r.u8()?, r.u8()?, r.u8()? as usize);
        let name = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::Utf8)?;
        let kind = ColumnType::from_tag(tag);
        if kind.is_some_and(|k| self::width(k) != width) || !matches!(width, 0 | 1 | 2 | 4 | 8) {
            return Err(DecodeError::Tag(tag));
        }
        let target = names.iter().position(|(c, _)| *c == name).filter(|_| kind.is_some());
        columns.push((kind, width, target));
    }
    let rows = r.u32()? as usize;
    // Each row takes at least one presence byte per column.
    if rows > r.0.len() / n.max(1) {
        return Err(DecodeError::Truncated);
    }
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut row = PodRow::blank();
        let (mut have_node, mut have_owner) = (false, false);
        for (kind, width, target) in &columns {
            if !r.tag()? {
                continue;
            }
            let bytes = if *width == 0 {
                let n = r.u32()? as usize;
                r.take(n)?
            } else {
                r.take(*width as usize)?
            };
            let (Some(kind), Some(i)) = (kind, target) else { continue };
            let value = decode_value(*kind, bytes)?;
            if value.convert(types[*i]).is_some_and(|v| row.set(*i, v)) {
                have_node |= Some(*i) == node_at;
                have_owner |= Some(*i) == owner_at;
            }
        }
        if !(have_node && have_owner) {
            return Err(DecodeError::NoIdentity);
        }
        out.push(row);
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(out)
}

/// What is at a position of a segment.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A record whose header and payload checksums hold; `len` bytes in all.
    Record { seq: u64, payload: &'a [u8], len: usize },
    /// A record header that holds, with a payload that does not (its seq is known).
    BadPayload { seq: u64, len: usize },
    /// The start of a record cut short by the end of the data: a write torn by a crash or a
    /// failed write (`seq` when the header is whole).
    Torn { seq: Option<u64> },
    /// Not a record: skip to the next marker.
    Damaged,
}

/// Reads the frame at the start of `data` (which runs to the end of the segment).
pub fn frame(data: &[u8]) -> Frame<'_> {
    if data.len() < RECORD_HEADER {
        let n = data.len().min(4);
        return if RECORD_MAGIC[..n] == data[..n] { Frame::Torn { seq: None } } else { Frame::Damaged };
    }
    if &data[..4] != RECORD_MAGIC {
        return Frame::Damaged;
    }
    let h = &data[..RECORD_HEADER];
    if crc32(&h[..16]) != u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) {
        return Frame::Damaged;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Frame::Damaged;
    }
    let Some(payload) = data.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Frame::Torn { seq: Some(seq) };
    };
    if crc32(payload) != u32::from_le_bytes(h[20..24].try_into().expect("4 bytes")) {
        return Frame::BadPayload { seq, len: RECORD_HEADER + len };
    }
    Frame::Record { seq, payload, len: RECORD_HEADER + len }
}

/// Offset of the next record marker in `data` after its first byte, if any.
pub fn next_marker(data: &[u8]) -> Option<usize> {
    data.get(1..)?.windows(4).position(|w| w == RECORD_MAGIC).map(|p| p + 1)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early")]
    Truncated,
    #[error("invalid text in record")]
    Utf8,
    #[error("invalid presence tag {0}")]
    Tag(u8),
    #[error("{0} trailing bytes after the row")]
    Trailing(usize),
    #[error("the record has no node or no timestamp")]
    NoIdentity,
}

/// A cursor over bytes.
pub(crate) struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(self.take(2)?.get_u16_le())
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.take(4)?.get_u32_le())
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(self.take(8)?.get_u64_le())
    }
    pub fn tag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::Tag(t)),
        }
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Utf8)
    }
}

/// Decodes the bytes of one value of type `t`.
pub(crate) fn decode_value(t: ColumnType, bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Cursor(bytes);
    let v = match t {
        ColumnType::Text => Value::Text(String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8)?),
        ColumnType::Timestamp => Value::Timestamp(r.u64()? as i64),
        ColumnType::Int8 => Value::Int8(r.u64()? as i64),
        ColumnType::Float8 => Value::Float8(f64::from_bits(r.u64()?)),
        ColumnType::Int4 => Value::Int4(r.u32()? as i32),
        ColumnType::TextArray => {
            let n = r.u32()? as usize;
            // Each element takes at least its 4-byte length: a count beyond that is corrupt.
            if n > bytes.len() / 4 {
                return Err(DecodeError::Truncated);
            }
            let mut a = Vec::with_capacity(n);
            for _ in 0..n {
                a.push(r.string()?);
            }
            Value::TextArray(a)
        }
    };
    if t == ColumnType::Text || r.0.is_empty() {
        Ok(v)
    } else {
        Err(DecodeError::Trailing(r.0.len()))
    }
}

/// Fills `row` from named values: the way every spooled row, of any format, becomes a row of
/// this release. Returns the number of values whose type could not be converted (left NULL).
pub(crate) fn set_converted(row: &mut FeatureRow, target: (usize, ColumnType), value: Value) -> bool {
    match value.convert(target.1) {
        Some(v) => row.set(target.0, v),
        None => false,
    }
}

/// A row with no node and no timestamp yet, to be filled by a decoder.
pub(crate) fn blank_row() -> FeatureRow {
    FeatureRow::empty(String::new(), std::time::UNIX_EPOCH)
}

impl Decoder {
    /// Decodes a record's payload into a row of this release. Values of a changed type that
    /// cannot be converted are left NULL and counted in the second element.
    pub fn decode(&self, payload: &[u8]) -> Result<(FeatureRow, usize), DecodeError> {
        let mut r = Cursor(payload);
        let mut row = blank_row();
        let (mut have_node, mut have_ts, mut unconverted) = (false, false, 0);
        for c in &self.columns {
            if !r.tag()? {
                continue;
            }
            let bytes = if c.width == 0 {
                let n = r.u32()? as usize;
                r.take(n)?
            } else {
                r.take(c.width as usize)?
            };
            if c.pods {
                row.pods = decode_pods(bytes)?;
                continue;
            }
            let (Some(kind), Some(target)) = (c.kind, c.target) else { continue };
            let value = decode_value(kind, bytes)?;
            if set_converted(&mut row, target, value) {
                have_node |= COLUMNS[target.0] == "node";
                have_ts |= COLUMNS[target.0] == "ts";
            } else {
                unconverted += 1;
            }
        }
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing(r.0.len()));
        }
        if !(have_node && have_ts) {
            return Err(DecodeError::NoIdentity);
        }
        Ok((row, unconverted))
    }
}
