//! The time window `evaluate`, `export` and `plot` take (--from, --to), timestamps parsed by
//! Postgres (RFC 3339, or any timestamptz input it accepts) naming the option in the error, and
//! the one rule by which a row belongs to a labelled window ([`overlaps`]), which `label` and
//! `scenario` share.
use std::time::SystemTime;

use anyhow::bail;
use clap::Args;

/// An optional time window, as `evaluate`, `export` and `plot` take it.
#[derive(Debug, Args)]
pub struct TimeWindow {
    /// Start of the window [default: the first row].
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window [default: the last row].
    #[arg(long)]
    pub to: Option<String>,
}

impl TimeWindow {
    /// The bounds, parsed by Postgres.
    pub async fn resolve(
        &self,
        client: &feature_db::deadline::Db,
    ) -> anyhow::Result<(Option<SystemTime>, Option<SystemTime>)> {
        let from = match &self.from {
            Some(v) => Some(timestamp(client, "--from", v).await?),
            None => None,
        };
        let to = match &self.to {
            Some(v) => Some(timestamp(client, "--to", v).await?),
            None => None,
        };
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                anyhow::bail!(
                    "--from {} is later than --to {}: the window is empty",
                    self.from.as_deref().unwrap_or_default(),
                    self.to.as_deref().unwrap_or_default()
                );
            }
        }
        Ok((from, to))
    }
}

/// Parses a timestamp with Postgres, naming the option in the error.
pub async fn timestamp(
    client: &feature_db::deadline::Db,
    option: &str,
    value: &str,
) -> anyhow::Result<std::time::SystemTime> {
    match client.query_one("SELECT $1::text::timestamptz", &[&value]).await {
        Ok(row) => Ok(row.get(0)),
        Err(e) => bail!(
            "{option} {value:?} is not a timestamp: {}",
            e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
        ),
    }
}

/// The SQL condition "row `alias` overlaps the window [`from`, `to`]" (both SQL expressions):
/// a row stamped `ts` covers the interval (ts - interval_s, ts], so it overlaps when
/// `ts >= from` and its interval starts before `to` by more than 1 % of its length
/// (`ts - 0.99 x interval_s < to`: interval_s is the measured elapsed time, a little over the
/// boundaries' spacing, so the next row, whose interval starts exactly at a boundary `to`, is
/// not taken); a row with no interval_s (the first after an agent's start) is the instant `ts`,
/// in the window when `ts <= to`. So a window [t, t] holds the row stamped t, not the next one.
/// `label` and the scenarios' labels use this one rule. It is written with immutable operators
/// only (`ts - to`, a difference of timestamps, against a scaled interval; not `ts - interval`,
/// which depends on the time zone): a Citus coordinator refuses an UPDATE whose condition calls
/// a time-zone-dependent function on a column.
pub fn overlaps(alias: &str, from: &str, to: &str) -> String {
    format!(
        "{alias}.ts >= {from} AND ({alias}.ts <= {to} OR {alias}.ts - {to} < coalesce({alias}.interval_s, 0) * interval '0.99 second')"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_overlap_rule_reads_as_sql() {
        assert_eq!(
            super::overlaps("f", "$1", "$2"),
            "f.ts >= $1 AND (f.ts <= $2 OR f.ts - $2 < coalesce(f.interval_s, 0) * interval '0.99 second')"
        );
    }
}
