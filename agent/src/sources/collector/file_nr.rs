//! /proc/sys/fs/file-nr: open_fds, the first field (file handles allocated node-wide).
use super::{number, Malformed};

pub fn parse(text: &str) -> Result<i64, Malformed> {
    number("allocated file handles", text.split_ascii_whitespace().next())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        assert_eq!(super::parse("4096\t0\t9223372036854775807\n").unwrap(), 4096);
        assert!(super::parse("").is_err());
        assert!(super::parse("-x 0 0").is_err());
    }
}
