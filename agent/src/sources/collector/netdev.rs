//! /proc/net/dev: net_receive (bytes), receive_drop, receive_errs and transmit_packets, summed
//! over the selected interfaces of the host network namespace. Parsed by procfs.
use procfs::{net::InterfaceDeviceStatus, FromRead};

use super::{InterfaceSelector, Malformed};

#[derive(Debug, Clone, PartialEq)]
pub struct NetTotals {
    pub receive_bytes: i64,
    pub receive_drop: i64,
    pub receive_errs: i64,
    pub transmit_packets: i64,
}

impl super::Fill for NetTotals {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.net_receive = Some(self.receive_bytes);
        row.receive_drop = Some(self.receive_drop);
        row.receive_errs = Some(self.receive_errs);
        row.transmit_packets = Some(self.transmit_packets);
    }
}

pub fn parse(text: &str, interfaces: &mut InterfaceSelector) -> Result<NetTotals, Malformed> {
    if !text.starts_with("Inter-|") {
        return Err(Malformed::new("missing the two header lines"));
    }
    let devices = InterfaceDeviceStatus::from_read(text.as_bytes())?;
    interfaces.start_sample();
    let mut t = NetTotals { receive_bytes: 0, receive_drop: 0, receive_errs: 0, transmit_packets: 0 };
    for d in devices.0.values().filter(|d| interfaces.is_selected(&d.name)) {
        t.receive_bytes = t.receive_bytes.wrapping_add(d.recv_bytes as i64);
        t.receive_drop = t.receive_drop.wrapping_add(d.recv_drop as i64);
        t.receive_errs = t.receive_errs.wrapping_add(d.recv_errs as i64);
        t.transmit_packets = t.transmit_packets.wrapping_add(d.sent_packets as i64);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    const TEXT: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  eth0: 1000      10    1    2    0     0          0         0     2000      20    0    0    0     0       0          0\n  eth1: 3000      30    3    4    0     0          0         0     4000      40    0    0    0     0       0          0\n";

    #[test]
    fn sums_selected_interfaces() {
        let mut sel = InterfaceSelector::matching(Regex::new("^eth").unwrap());
        assert_eq!(
            parse(TEXT, &mut sel).unwrap(),
            NetTotals { receive_bytes: 4000, receive_drop: 6, receive_errs: 4, transmit_packets: 60 }
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut sel = InterfaceSelector::matching(Regex::new("").unwrap());
        assert!(parse("", &mut sel).is_err());
        let truncated = &TEXT[..TEXT.len() - 60];
        assert!(parse(truncated, &mut sel).is_err());
        let garbled = TEXT.replace("1000      10", "x      10");
        assert!(parse(&garbled, &mut sel).is_err());
    }
}
