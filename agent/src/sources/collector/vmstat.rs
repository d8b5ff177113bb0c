//! /proc/vmstat: mem_pressure, the `pgmajfault` counter. A single-key scan: procfs's VmStat
//! would build a map of all ~180 counters every interval to read one.
use super::{keyed_value, number, Malformed};

#[derive(Debug, Clone, PartialEq)]
pub struct VmStat {
    pub pgmajfault: i64,
}

impl super::Fill for VmStat {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.mem_pressure = Some(self.pgmajfault);
    }
}

pub fn parse(text: &str) -> Result<VmStat, Malformed> {
    let value = keyed_value(text, "pgmajfault").ok_or_else(|| Malformed::new("no pgmajfault line"))?;
    Ok(VmStat { pgmajfault: number("pgmajfault", Some(value))? })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        assert_eq!(super::parse("pgfault 10\npgmajfault 7\n").unwrap().pgmajfault, 7);
        assert_eq!(super::parse("pgmajfault_x 1\npgmajfault 8\n").unwrap().pgmajfault, 8);
        assert!(super::parse("pgfault 10\n").unwrap_err().0.contains("pgmajfault"));
        assert!(super::parse("pgmajfault\n").is_err());
        assert!(super::parse("pgmajfault x\n").unwrap_err().0.contains("not a number"));
    }
}
