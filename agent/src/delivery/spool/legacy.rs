//! Reading spool segments of format 1, written by releases up to commit fc19417: headerless
//! segments of `b"FAS1" | payload length u32 | CRC-32 u32 | payload` records whose payload is a
//! row in a fixed column order. [`Spool::open`](super::Spool::open) turns such segments into
//! format 2 ones, by column name like any other segment, then deletes them.
use feature_schema::{column_index, column_types, ColumnType, FeatureRow, Value};

use super::format::{blank_row, crc32, decode_value, set_converted, Cursor, DecodeError};

pub const MAGIC: &[u8; 4] = b"FAS1";
const HEADER: usize = 12;
const MAX_PAYLOAD: usize = 64 * 1024;

/// Format 1's columns in payload order, as that release wrote them (`node` and `ts` carry no
/// presence tag; `ts` is microseconds since the epoch). Frozen: never edit.
const COLUMNS_V1: [(&str, ColumnType); 45] = {
    use ColumnType::{Float8 as F, Int4 as I4, Int8 as I8};
    [
        ("node", ColumnType::Text),
        ("ts", ColumnType::Timestamp),
        ("interval_s", F),
        ("cpu_sec_idle", F),
        ("disk_av_per", F),
        ("disk_read", I8),
        ("disk_write", I8),
        ("net_receive", I8),
        ("mem_pressure", I8),
        ("mem_av_per", F),
        ("forks_total", I8),
        ("intr", I8),
        ("load1", F),
        ("load5", F),
        ("load15", F),
        ("receive_drop", I8),
        ("receive_errs", I8),
        ("transmit_packets", I8),
        ("tcp_sock_alloc", I4),
        ("tcp_sock_inuse", I4),
        ("tcp_sock_mem", I4),
        ("udp_sock_inuse", I4),
        ("udp_sock_mem", I4),
        ("ipv4_sock_inuse", I4),
        ("open_fds", I8),
        ("est_conn", I4),
        ("lis_conn", I4),
        ("ebpf_forks", I8),
        ("ebpf_execs", I8),
        ("ebpf_exits", I8),
        ("tcp_to_est", I8),
        ("tcp_to_syn_sent", I8),
        ("tcp_to_syn_recv", I8),
        ("tcp_to_close", I8),
        ("tcp_to_listen", I8),
        ("tcp_conn_failed", I8),
        ("tcp_rst_sent", I8),
        ("tcp_rst_recv", I8),
        ("sock_alloc_tcp", I8),
        ("sock_alloc_udp", I8),
        ("sock_alloc_unix", I8),
        ("sock_alloc_raw", I8),
        ("sock_alloc_other", I8),
        ("anomaly_score", F),
        ("anomalous_features", ColumnType::TextArray),
    ]
};

/// Decodes one format-1 payload into a row of this release, by column name.
pub fn decode_row(payload: &[u8]) -> Result<FeatureRow, DecodeError> {
    let types = column_types();
    let mut r = Cursor(payload);
    let mut row = blank_row();
    for (i, (name, t)) in COLUMNS_V1.iter().enumerate() {
        let value = match t {
            _ if i == 0 => Value::Text(r.string()?),
            _ if i == 1 => decode_value(*t, r.take(8)?)?,
            _ if !r.tag()? => Value::Null,
            ColumnType::Float8 | ColumnType::Int8 => decode_value(*t, r.take(8)?)?,
            ColumnType::Int4 => decode_value(*t, r.take(4)?)?,
            ColumnType::TextArray => {
                let n = r.u32()? as usize;
                if n > payload.len() {
                    return Err(DecodeError::Truncated);
                }
                Value::TextArray((0..n).map(|_| r.string()).collect::<Result<_, _>>()?)
            }
            ColumnType::Text | ColumnType::Timestamp => unreachable!("only node and ts"),
        };
        if let Some(target) = column_index(name) {
            set_converted(&mut row, (target, types[target]), value);
        }
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(row)
}

/// Whether a segment that starts with format 1's marker really is one: its first record
/// verifies, or (damaged) nothing in it is a format-2 record. One flipped byte turns format 2's
/// segment magic `FASG` into `FAS1`; such a segment must not be read, and deleted, as format 1.
pub fn looks_like_format_1(head: &[u8]) -> bool {
    if !head.starts_with(MAGIC) {
        return false;
    }
    let first_verifies = head.len() >= HEADER && {
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        len <= MAX_PAYLOAD && head.get(HEADER..HEADER + len).is_some_and(|p| crc32(p) == crc)
    };
    first_verifies || !head.windows(4).any(|w| w == super::format::RECORD_MAGIC)
}

/// The rows of a format-1 segment, and how many records were lost to damage (each damaged
/// span counts the record markers in it, at least one; a record cut short at the very end is a
/// write torn by a crash, not a row that was ever spooled).
pub fn read_segment(data: &[u8]) -> (Vec<FeatureRow>, u64) {
    let mut rows = Vec::new();
    let mut lost = 0;
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let parsed = if rest.len() < HEADER {
            Err(MAGIC.starts_with(&rest[..rest.len().min(4)]))
        } else if &rest[..4] != MAGIC {
            Err(false)
        } else {
            let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
            match rest.get(HEADER..HEADER + len) {
                _ if len > MAX_PAYLOAD => Err(false),
                None => Err(true),
                Some(p) if crc32(p) == crc => decode_row(p).map(|row| (row, HEADER + len)).map_err(|_| false),
                Some(_) => Err(false),
            }
        };
        match parsed {
            Ok((row, used)) => {
                rows.push(row);
                at += used;
            }
            // Cut short by the end of the segment: torn.
            Err(true) => break,
            Err(false) => {
                let skip = rest[1..].windows(4).position(|w| w == MAGIC).map_or(rest.len(), |p| p + 1);
                lost += 1;
                at += skip;
            }
        }
    }
    (rows, lost)
}

/// Compares rows with the JSON lines the release that wrote format 1 printed for them: every
/// column it printed has the same value (as JSON text), and every column added since is NULL.
#[cfg(test)]
pub(crate) fn assert_rows_are_what_that_release_printed(rows: &[FeatureRow], jsonl: &std::path::Path) {
    let expected = std::fs::read_to_string(jsonl).unwrap();
    assert_eq!(rows.len(), expected.lines().count());
    for (row, line) in rows.iter().zip(expected.lines()) {
        let want: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        // Both sides go through the same JSON text parser, so equal text gives equal values.
        let got: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&serde_json::to_string(row).unwrap()).unwrap();
        for (k, v) in &got {
            match want.get(k) {
                Some(w) => assert_eq!(w, v, "column {k} of {line}"),
                None => assert!(v.is_null(), "column {k} is new since format 1 and must be NULL: {v}"),
            }
        }
        assert!(want.keys().all(|k| got.contains_key(k)), "a column of {line} is gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-v1");

    #[test]
    fn the_released_format_1_segment_decodes_to_the_rows_that_release_read() {
        let data = std::fs::read(format!("{FIXTURE}/0000000000000001.spool")).unwrap();
        let (rows, lost) = read_segment(&data);
        assert_eq!(lost, 0);
        assert_rows_are_what_that_release_printed(&rows, std::path::Path::new(&format!("{FIXTURE}/rows.jsonl")));
        assert!(rows.iter().any(|r| r.anomaly_score.is_some() && r.ebpf_forks.is_some()));
    }

    #[test]
    fn damaged_format_1_records_are_counted() {
        let mut data = std::fs::read(format!("{FIXTURE}/0000000000000001.spool")).unwrap();
        let rec = data.len() / 12;
        data[rec + 50] ^= 1; // a payload byte of one record
        data.truncate(data.len() - 7); // the last one torn
        let (rows, lost) = read_segment(&data);
        assert_eq!((rows.len(), lost), (10, 1));
    }
}
