//! /proc/loadavg: load1, load5, load15. Our own parser: procfs's LoadAverage rounds to f32.
use super::{number, Malformed};

#[derive(Debug, Clone, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
}

impl super::Fill for LoadAvg {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.load1 = Some(self.load1);
        row.load5 = Some(self.load5);
        row.load15 = Some(self.load15);
    }
}

pub fn parse(text: &str) -> Result<LoadAvg, Malformed> {
    let mut f = text.split_ascii_whitespace();
    Ok(LoadAvg {
        load1: number("load1", f.next())?,
        load5: number("load5", f.next())?,
        load15: number("load15", f.next())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let l = parse("0.25 1.50 12.00 2/345 6789\n").unwrap();
        assert_eq!((l.load1, l.load5, l.load15), (0.25, 1.5, 12.0));
        assert!(parse("0.25 1.50").unwrap_err().0.contains("load15"));
        assert!(parse("").is_err());
        assert!(parse("a b c").unwrap_err().0.contains("not a number"));
    }
}
