//! /proc/meminfo: mem_av_per = 100 x MemAvailable / MemTotal. Two-key scan: procfs's Meminfo
//! insists on dozens of fields we do not use and reports their absence as a procfs bug.
use super::{keyed_value, number, Malformed};

#[derive(Debug, Clone, PartialEq)]
pub struct MemInfo {
    pub available_percent: f64,
}

impl super::Fill for MemInfo {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.mem_av_per = Some(self.available_percent);
    }
}

pub fn parse(text: &str) -> Result<MemInfo, Malformed> {
    let total: u64 = number("MemTotal", keyed_value(text, "MemTotal"))?;
    let available: u64 = number("MemAvailable (kernel 3.14 or later)", keyed_value(text, "MemAvailable"))?;
    if total == 0 {
        return Err(Malformed::new("MemTotal is 0"));
    }
    Ok(MemInfo { available_percent: 100.0 * available as f64 / total as f64 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        let m = super::parse("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n").unwrap();
        assert_eq!(m.available_percent, 25.0);
        assert!(super::parse("MemTotal: 1000 kB\nMemFree: 100 kB\n").unwrap_err().0.contains("MemAvailable"));
        assert!(super::parse("MemTotal: 0 kB\nMemFree: 0 kB\nMemAvailable: 0 kB\n").is_err());
        assert!(super::parse("MemTotal: lots\nMemAvailable: 1 kB\n").unwrap_err().0.contains("not a number"));
        assert!(super::parse("").is_err());
    }
}
