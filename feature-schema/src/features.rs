//! What each column is for ([`Role`]), and the list derived from it at compile time: the scored
//! features ([`FEATURES`]: kind and minimum spread, which the detector, SQL, export and plot
//! share) and the column each eBPF event feeds ([`event_column`]).
use agent_common::{Event, EVENT_COUNT};

use crate::SCHEMA;

/// How a feature is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value as sampled (a level); scored as it is.
    Gauge,
    /// Cumulative since boot; scored on its per-interval delta (a z-score of a running total
    /// only measures uptime).
    Counter,
    /// An eBPF per-interval event count; already a delta, scored as it is.
    Events,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Events => "events",
        }
    }
}

/// What a column is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// Which row this is: node and ts, never NULL.
    Identity,
    /// About the sample itself, not scored.
    Sample,
    /// A feature the detector and the SQL z-scores score.
    Feature {
        kind: Kind,
        /// The detector's floor on the feature's spread, in its scored unit: a change smaller
        /// than `threshold × min_spread` is never anomalous on its own, so features that are
        /// flat in the baseline (no forks, no resets, an idle disk) do not flag on noise.
        min_spread: f64,
        /// The eBPF event counted into this column, if it is one.
        event: Option<Event>,
    },
    /// The agent's detector's verdict on the row.
    Verdict,
}

/// Identity column (node, ts).
pub const fn identity() -> Role {
    Role::Identity
}
/// About the sample, not scored.
pub const fn sample() -> Role {
    Role::Sample
}
/// A level, scored as sampled.
pub const fn gauge(min_spread: f64) -> Role {
    Role::Feature { kind: Kind::Gauge, min_spread, event: None }
}
/// Cumulative since boot, scored on its per-interval delta.
pub const fn counter(min_spread: f64) -> Role {
    Role::Feature { kind: Kind::Counter, min_spread, event: None }
}
/// Exact count of `event` during the interval, counted by eBPF.
pub const fn events(event: Event, min_spread: f64) -> Role {
    Role::Feature { kind: Kind::Events, min_spread, event: Some(event) }
}
/// The detector's verdict.
pub const fn verdict() -> Role {
    Role::Verdict
}

/// A scored feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feature {
    pub column: &'static str,
    pub kind: Kind,
    pub min_spread: f64,
    /// Its index in [`crate::COLUMNS`].
    pub index: usize,
}

/// Number of scored features.
pub const FEATURE_COUNT: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < SCHEMA.len() {
        if let Role::Feature { .. } = SCHEMA[i].role {
            n += 1;
        }
        i += 1;
    }
    n
};

/// The scored features, in column order.
pub const FEATURES: [Feature; FEATURE_COUNT] = {
    let mut out = [Feature { column: "", kind: Kind::Gauge, min_spread: 0.0, index: 0 }; FEATURE_COUNT];
    let (mut i, mut k) = (0, 0);
    while i < SCHEMA.len() {
        if let Role::Feature { kind, min_spread, .. } = SCHEMA[i].role {
            assert!(min_spread > 0.0, "every feature needs a positive min_spread");
            out[k] = Feature { column: SCHEMA[i].name, kind, min_spread, index: i };
            k += 1;
        }
        i += 1;
    }
    out
};

/// Per [`Event`], the index in [`crate::COLUMNS`] of the column it feeds. Checked when the
/// crate compiles: every event feeds exactly one column.
const EVENT_COLUMNS: [usize; EVENT_COUNT] = {
    let mut out = [usize::MAX; EVENT_COUNT];
    let mut i = 0;
    while i < SCHEMA.len() {
        if let Role::Feature { event: Some(e), .. } = SCHEMA[i].role {
            assert!(out[e as usize] == usize::MAX, "an event feeds two columns");
            out[e as usize] = i;
        }
        i += 1;
    }
    let mut e = 0;
    while e < EVENT_COUNT {
        assert!(out[e] != usize::MAX, "an event feeds no column");
        e += 1;
    }
    out
};

/// The index in [`crate::COLUMNS`] of the column `event` feeds.
pub const fn event_column(event: Event) -> usize {
    EVENT_COLUMNS[event as usize]
}

/// The feature's position in [`FEATURES`].
pub fn index_of(column: &str) -> Option<usize> {
    FEATURES.iter().position(|f| f.column == column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::COLUMNS;

    #[test]
    fn features_point_at_their_columns() {
        for f in FEATURES {
            assert_eq!(COLUMNS[f.index], f.column);
        }
        assert_eq!(FEATURES[index_of("open_fds").unwrap()].kind, Kind::Gauge);
        assert_eq!(FEATURES[index_of("forks_total").unwrap()].kind, Kind::Counter);
        assert_eq!(FEATURES[index_of("tcp_rst_sent").unwrap()].kind, Kind::Events);
        assert!(index_of("node").is_none() && index_of("anomaly_score").is_none());
    }
}
