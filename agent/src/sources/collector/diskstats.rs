//! /proc/diskstats: disk_read and disk_write, sectors x 512 summed over the selected disks
//! (sectors here are always 512 bytes, whatever the device's block size). Parsed by procfs.
use procfs::{DiskStats, FromRead};

use super::{DiskSelector, Malformed};

const SECTOR_BYTES: u64 = 512;

#[derive(Debug, Clone, PartialEq)]
pub struct DiskTotals {
    pub read_bytes: i64,
    pub written_bytes: i64,
}

impl super::Fill for DiskTotals {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.disk_read = Some(self.read_bytes);
        row.disk_write = Some(self.written_bytes);
    }
}

pub fn parse(text: &str, disks: &mut DiskSelector) -> Result<DiskTotals, Malformed> {
    let stats = DiskStats::from_read(text.as_bytes())?;
    disks.start_sample();
    let (mut read, mut written) = (0u64, 0u64);
    for d in stats.0.iter().filter(|d| disks.is_selected(&d.name)) {
        read = read.wrapping_add(d.sectors_read.wrapping_mul(SECTOR_BYTES));
        written = written.wrapping_add(d.sectors_written.wrapping_mul(SECTOR_BYTES));
    }
    Ok(DiskTotals { read_bytes: read as i64, written_bytes: written as i64 })
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    const TEXT: &str = "   8       0 sda 100 0 10 0 200 0 20 0 0 0 0 0 0 0 0 0 0\n\
                           8       1 sda1 100 0 10 0 200 0 20 0 0 0 0 0 0 0 0 0 0\n\
                           7       0 loop0 1 0 1000 0 1 0 1000 0 0 0 0\n";

    #[test]
    fn sums_selected_disks() {
        let mut sel = DiskSelector::matching(Regex::new("^sda$").unwrap());
        assert_eq!(parse(TEXT, &mut sel).unwrap(), DiskTotals { read_bytes: 5120, written_bytes: 10240 });
        let mut all = DiskSelector::matching(Regex::new("").unwrap());
        assert_eq!(parse(TEXT, &mut all).unwrap().read_bytes, (10 + 10 + 1000) * 512);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut sel = DiskSelector::matching(Regex::new("").unwrap());
        assert!(parse("8 0 sda 1 2 3\n", &mut sel).is_err());
        assert!(parse("8 0 sda x 0 10 0 200 0 20 0 0 0 0\n", &mut sel).is_err());
        assert_eq!(parse("", &mut sel).unwrap().read_bytes, 0);
    }
}
