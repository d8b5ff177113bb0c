//! exfiltrate: data leaving for the outside world, as a pod stealing a database dump would send
//! it: one TCP connection to a peer outside the cluster's ranges ([`crate::outside`], TEST-NET-3's
//! 203.0.113.1 in a network namespace of its own), 1 MiB writes at most 8 times a second
//! (8 MiB/s) for the duration. In the drill the peer is linked to the application pod's own
//! namespace; alone, to the host's. With --count-bytes the bytes land in the sender's
//! tx_outside_bytes, which nothing else on a quiet node moves.
use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};

use super::bulk_transfer;

pub const CHUNKS_PER_SECOND: u32 = 8;

pub fn run(duration: Duration, sink: Option<SocketAddr>) -> anyhow::Result<Value> {
    let own = match sink {
        Some(_) => None,
        None => Some(crate::outside::OutsidePeer::new(None)?),
    };
    let target = sink.or(own.as_ref().map(|p| p.addr)).expect("a peer either way");
    let sent = bulk_transfer::send(duration, target, CHUNKS_PER_SECOND)?;
    drop(own);
    Ok(json!({ "bytes_sent": sent, "peer": target.to_string() }))
}
