//! conn-flood: open loopback TCP connections to a listener of our own in batches of 200 held
//! open together, at most 1000 connections a second. The server side closes first, so the
//! TIME_WAIT sockets pile up on the one listening port, not on the client's ephemeral ports.
use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::pace::Pacer;

pub const CONNECTIONS_PER_SECOND: u32 = 1000;
const BATCH: usize = 200;

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let accepted: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let server = {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                match s {
                    Ok(s) => accepted.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(_) => break,
                }
            }
        })
    };
    let mut pacer = Pacer::new(duration, CONNECTIONS_PER_SECOND);
    let mut clients = Vec::with_capacity(BATCH);
    let mut opened = 0u64;
    loop {
        let more = pacer.next();
        if more {
            clients.push(TcpStream::connect(addr).context("connecting to our own listener")?);
            opened += 1;
        }
        if clients.len() == BATCH || (!more && !clients.is_empty()) {
            // Wait until the server holds the whole batch, close its side first, then ours.
            let deadline = Instant::now() + Duration::from_secs(5);
            while accepted.lock().unwrap_or_else(|p| p.into_inner()).len() < clients.len() {
                if Instant::now() > deadline {
                    bail!("the listener did not accept {} connections within 5 s", clients.len());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            accepted.lock().unwrap_or_else(|p| p.into_inner()).clear();
            clients.clear();
        }
        if !more {
            break;
        }
    }
    // Unblock the accept loop with one last connection that it keeps; then it is dropped.
    drop(TcpStream::connect(addr));
    std::thread::sleep(Duration::from_millis(10));
    drop(server); // detached: the thread ends with the process; the listener is closed with it.
    Ok(json!({ "connections": opened, "batch": BATCH }))
}
