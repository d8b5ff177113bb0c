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

/// Which way a feature moves under attack: the agent's detector flags only that way (a node
/// quieter than usual, or a load average decaying after a busy spell, is no alarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Both,
}

impl Direction {
    /// The z-score seen from the attack's side: positive when the feature moved that way.
    pub fn toward_attack(self, z: f64) -> f64 {
        match self {
            Direction::Up => z,
            Direction::Down => -z,
            Direction::Both => z.abs(),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
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
        /// Which way an attack moves it (the agent's detector flags that way only).
        direction: Direction,
        /// A gauge that drifts (memory, sockets held, load averages): the agent's detector scores
        /// its change since the previous row, not its level, so a level that stays high after a
        /// burst (the kernel keeps TCP pages) is flagged once, not on every row until it decays.
        on_change: bool,
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
/// A level, scored as sampled; an attack raises it.
pub const fn gauge(min_spread: f64) -> Role {
    Role::Feature { kind: Kind::Gauge, min_spread, event: None, direction: Direction::Up, on_change: false }
}
/// Cumulative since boot, scored on its per-interval delta; an attack raises it.
pub const fn counter(min_spread: f64) -> Role {
    Role::Feature { kind: Kind::Counter, min_spread, event: None, direction: Direction::Up, on_change: false }
}
/// Exact count of `event` during the interval, counted by eBPF; an attack raises it.
pub const fn events(event: Event, min_spread: f64) -> Role {
    Role::Feature { kind: Kind::Events, min_spread, event: Some(event), direction: Direction::Up, on_change: false }
}

impl Role {
    /// An attack lowers this feature (idle time, free memory, free disk).
    pub const fn down(self) -> Role {
        match self {
            Role::Feature { kind, min_spread, event, on_change, .. } => {
                Role::Feature { kind, min_spread, event, direction: Direction::Down, on_change }
            }
            other => other,
        }
    }

    /// A drifting gauge: the agent's detector scores its change since the previous row.
    pub const fn on_change(self) -> Role {
        match self {
            Role::Feature { kind, min_spread, event, direction, .. } => {
                Role::Feature { kind, min_spread, event, direction, on_change: true }
            }
            other => other,
        }
    }
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
    pub direction: Direction,
    /// Scored by the agent's detector on its change since the previous row (drifting gauges).
    pub on_change: bool,
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

impl Feature {
    /// A placeholder, for building the feature lists at compile time.
    pub const BLANK: Feature = Feature {
        column: "",
        kind: Kind::Gauge,
        min_spread: 0.0,
        direction: Direction::Up,
        on_change: false,
        index: 0,
    };
}

/// The scored features, in column order.
pub const FEATURES: [Feature; FEATURE_COUNT] = {
    let mut out = [Feature::BLANK; FEATURE_COUNT];
    let (mut i, mut k) = (0, 0);
    while i < SCHEMA.len() {
        if let Role::Feature { kind, min_spread, direction, on_change, .. } = SCHEMA[i].role {
            assert!(min_spread > 0.0, "every feature needs a positive min_spread");
            assert!(!on_change || matches!(kind, Kind::Gauge), "only gauges are scored on their change");
            out[k] = Feature { column: SCHEMA[i].name, kind, min_spread, direction, on_change, index: i };
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
