//! bulk-transfer: a large outbound copy, as data exfiltration looks from a pod: one TCP
//! connection to a sink, 1 MiB writes at most 32 times a second (32 MiB/s) for the duration.
//! Run in a pod with a network of its own (the drill's), the sink is on the host's end of the
//! pod's veth pair, so the bytes leave the pod's namespace through its interface, as they would
//! leave a Kubernetes pod; run on its own, the sink is a loopback listener in this process.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use serde_json::{json, Value};

use super::pace::Pacer;

const CHUNK: usize = 1 << 20;
pub const CHUNKS_PER_SECOND: u32 = 32;

/// A listener that reads and discards whatever it is sent, until dropped.
pub struct Sink {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on `ip` (an ephemeral port).
    pub fn start(ip: std::net::IpAddr) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind((ip, 0)).with_context(|| format!("listening on {ip} for the transfer"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => {}
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    if stopping.load(Ordering::Relaxed) {
                                        break;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Sink { addr, stop, thread: Some(thread) })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(duration: Duration, sink: Option<SocketAddr>) -> anyhow::Result<Value> {
    let local = match sink {
        Some(_) => None,
        None => Some(Sink::start(std::net::Ipv4Addr::LOCALHOST.into())?),
    };
    let target = sink.or(local.as_ref().map(|s| s.addr)).expect("a sink either way");
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connecting to the sink {target}"))?;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 253) as u8).collect();
    let mut pacer = Pacer::new(duration, CHUNKS_PER_SECOND);
    while pacer.next() {
        conn.write_all(&chunk).with_context(|| format!("sending to {target}"))?;
    }
    drop(conn);
    drop(local);
    Ok(json!({ "bytes_sent": pacer.done() * CHUNK as u64, "sink": target.to_string() }))
}
