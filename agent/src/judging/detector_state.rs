//! The detector's state file: the node's and the workloads' warm baselines, kept beside the
//! spool so that an agent that restarts (a rolling update, an OOM kill) judges from its first
//! interval instead of going blind for the warm-up.
//!
//! Format, version 1: one header line, then a JSON body.
//!
//! ```text
//! feature-agent detector state 1 <CRC-32 of the body, 8 hex digits> <body length>\n
//! {"node": ..., "interval_s": ..., "saved_unix_s": ..., "node_baselines": [...] | null,
//!  "workloads": [{"workload": ..., "features": [{"feature": ..., "mean": ..., "var": ...}]}]}
//! ```
//!
//! It is written to a temporary file, synced and renamed over the old one, so a crash leaves
//! the old state or the new, never half of one. It is used only when it is whole (length and
//! checksum), of this version, of this node, of this interval (rates are per interval) and
//! younger than [`MAX_AGE`] (older baselines describe a node that has since changed). Anything
//! else is a cold start with a log line saying why, never a failure.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{delivery::spool::format::crc32, judging::detector::Baseline};

const MAGIC: &str = "feature-agent detector state";
const VERSION: u32 = 1;

/// Baselines older than this are not restored.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Largest state file read (a node with the most workloads the agent keeps is far smaller).
const MAX_BYTES: u64 = 64 << 20;

/// The baselines a state file holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DetectorState {
    /// The node's baselines; None while the node detector was still warming up.
    pub node: Option<Vec<(String, Baseline)>>,
    /// Warm workloads' baselines, most recently seen first.
    pub workloads: Vec<(String, Vec<(String, Baseline)>)>,
}

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no state file yet")]
    Missing,
    #[error("cannot read it: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("it is damaged: {0}")]
    Damaged(String),
    #[error("it is of format version {0}; this release reads version {VERSION}")]
    Version(String),
    #[error("it is node {found:?}'s, not this node's")]
    OtherNode { found: String },
    #[error("it was saved at a {found} s interval; this agent samples every {expected} s")]
    OtherInterval { found: f64, expected: f64 },
    #[error("it was saved {age_s:.0} s ago, more than {} s", MAX_AGE.as_secs())]
    Stale { age_s: f64 },
}

#[derive(Serialize, Deserialize)]
struct SavedFeature {
    feature: String,
    mean: f64,
    var: f64,
}

#[derive(Serialize, Deserialize)]
struct SavedWorkload {
    workload: String,
    features: Vec<SavedFeature>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    node: String,
    interval_s: f64,
    saved_unix_s: f64,
    node_baselines: Option<Vec<SavedFeature>>,
    workloads: Vec<SavedWorkload>,
}

fn to_saved(features: &[(String, Baseline)]) -> Vec<SavedFeature> {
    features
        .iter()
        .filter(|(_, b)| b.mean.is_finite() && b.var.is_finite())
        .map(|(f, b)| SavedFeature { feature: f.clone(), mean: b.mean, var: b.var })
        .collect()
}

fn from_saved(features: Vec<SavedFeature>) -> Vec<(String, Baseline)> {
    features.into_iter().map(|f| (f.feature, Baseline { mean: f.mean, var: f.var })).collect()
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The file's bytes for `state`.
pub fn encode(state: &DetectorState, node: &str, interval_s: f64, now: SystemTime) -> Vec<u8> {
    let body = Body {
        node: node.to_owned(),
        interval_s,
        saved_unix_s: unix_seconds(now),
        node_baselines: state.node.as_deref().map(to_saved),
        workloads: state
            .workloads
            .iter()
            .map(|(w, f)| SavedWorkload { workload: w.clone(), features: to_saved(f) })
            .collect(),
    };
    let body = serde_json::to_vec(&body).expect("the state serializes: finite numbers and strings");
    let mut out = format!("{MAGIC} {VERSION} {:08x} {}\n", crc32(&body), body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Reads a state file's bytes, checking everything [`StateError`] names.
pub fn decode(data: &[u8], node: &str, interval_s: f64, now: SystemTime) -> Result<DetectorState, StateError> {
    let damaged = |why: &str| StateError::Damaged(why.to_owned());
    let newline = data.iter().position(|&b| b == b'\n').ok_or_else(|| damaged("no header line"))?;
    let header = std::str::from_utf8(&data[..newline]).map_err(|_| damaged("the header is not text"))?;
    let rest = header
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| damaged("not a detector state file"))?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [version, crc, len] = fields[..] else { return Err(damaged("the header has the wrong number of fields")) };
    if version != VERSION.to_string() {
        return Err(StateError::Version(version.to_owned()));
    }
    // Exactly as written: 8 lowercase hex digits and a decimal length, so no changed byte of
    // the header reads as the same value.
    if crc.len() != 8 || !crc.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(damaged("the checksum is not 8 lowercase hex digits"));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| damaged("the checksum is not hexadecimal"))?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || (len.len() > 1 && len.starts_with('0')) {
        return Err(damaged("the length is not a decimal number"));
    }
    let len: usize = len.parse().map_err(|_| damaged("the length is not a number"))?;
    let body = &data[newline + 1..];
    if body.len() != len {
        return Err(StateError::Damaged(format!("the body is {} bytes, the header says {len}", body.len())));
    }
    if crc32(body) != crc {
        return Err(damaged("the checksum does not match"));
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| StateError::Damaged(e.to_string()))?;
    if body.node != node {
        return Err(StateError::OtherNode { found: body.node });
    }
    if (body.interval_s - interval_s).abs() > 1e-9 {
        return Err(StateError::OtherInterval { found: body.interval_s, expected: interval_s });
    }
    let age_s = unix_seconds(now) - body.saved_unix_s;
    // A state from the future beyond a small clock difference is as unknown as an old one.
    if !(age_s <= MAX_AGE.as_secs_f64() && age_s >= -300.0) {
        return Err(StateError::Stale { age_s });
    }
    Ok(DetectorState {
        node: body.node_baselines.map(from_saved),
        workloads: body.workloads.into_iter().map(|w| (w.workload, from_saved(w.features))).collect(),
    })
}

/// Loads the state file at `path`.
pub fn load(path: &Path, node: &str, interval_s: f64, now: SystemTime) -> Result<DetectorState, StateError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::Missing),
        Err(e) => return Err(StateError::Unreadable(e)),
    };
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_BYTES), &mut data).map_err(StateError::Unreadable)?;
    decode(&data, node, interval_s, now)
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, synced, renamed.
pub fn save(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp: PathBuf = path.to_owned();
    tmp.as_mut_os_string().push(".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DetectorState {
        DetectorState {
            node: Some(vec![("ebpf_execs".into(), Baseline { mean: 3.0, var: 1.5 })]),
            workloads: vec![
                ("shop/web".into(), vec![("cpu_usage_usec".into(), Baseline { mean: 1e5, var: 4e8 })]),
                ("kubelet.service".into(), vec![]),
            ],
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&state(), "worker-3", 10.0, at(1_000_000));
        assert_eq!(decode(&bytes, "worker-3", 10.0, at(1_000_060)).unwrap(), state());
    }

    #[test]
    fn every_mismatch_is_a_cold_start_with_its_reason() {
        let bytes = encode(&state(), "worker-3", 10.0, at(1_000_000));
        let later = at(1_000_060);
        assert!(matches!(decode(&bytes, "worker-4", 10.0, later), Err(StateError::OtherNode { .. })));
        assert!(matches!(decode(&bytes, "worker-3", 2.0, later), Err(StateError::OtherInterval { .. })));
        assert!(matches!(decode(&bytes, "worker-3", 10.0, at(1_000_000 + 86_401)), Err(StateError::Stale { .. })));
        assert!(matches!(decode(&bytes, "worker-3", 10.0, at(999_000)), Err(StateError::Stale { .. })));
        let v2 = String::from_utf8(bytes.clone()).unwrap().replacen(" 1 ", " 2 ", 1);
        assert!(matches!(decode(v2.as_bytes(), "worker-3", 10.0, later), Err(StateError::Version(_))));
        assert!(matches!(decode(&bytes[..bytes.len() - 1], "worker-3", 10.0, later), Err(StateError::Damaged(_))));
        assert!(matches!(decode(b"", "worker-3", 10.0, later), Err(StateError::Damaged(_))));
    }

    /// Every single-byte change and every truncation is refused, never a panic and never a
    /// state with other numbers in it.
    #[test]
    fn damage_is_detected() {
        let bytes = encode(&state(), "worker-3", 10.0, at(1_000_000));
        let later = at(1_000_060);
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                if let Ok(s) = decode(&bad, "worker-3", 10.0, later) {
                    panic!("byte {i} ^ {flip:#x} gave {s:?}");
                }
            }
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], "worker-3", 10.0, later).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn saves_atomically_and_loads() {
        let dir = std::env::temp_dir().join(format!("detector-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("detector-state");
        assert!(matches!(load(&path, "n", 10.0, SystemTime::now()), Err(StateError::Missing)));
        save(&path, &encode(&state(), "n", 10.0, SystemTime::now())).unwrap();
        assert_eq!(load(&path, "n", 10.0, SystemTime::now()).unwrap(), state());
        assert!(!dir.join("detector-state.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
