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
        Self::start_in(None, ip)
    }

    /// Listens on `ip` in network namespace `netns` (a path such as /var/run/netns/NAME; None:
    /// this process's). Only the sink's own thread enters the namespace.
    pub fn start_in(netns: Option<&str>, ip: std::net::IpAddr) -> anyhow::Result<Sink> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let (bound, listening) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
        let netns = netns.map(str::to_owned);
        let thread = std::thread::spawn(move || {
            let listener = match listen_in(netns.as_deref(), ip) {
                Ok(l) => {
                    let _ = bound.send(l.local_addr().context("the sink's address"));
                    l
                }
                Err(e) => {
                    let _ = bound.send(Err(e));
                    return;
                }
            };
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
        let addr = listening.recv().context("the sink's thread ended")??;
        Ok(Sink { addr, stop, thread: Some(thread) })
    }
}

/// A non-blocking listener on an ephemeral port of `ip`, in namespace `netns` (this thread
/// enters it for good).
fn listen_in(netns: Option<&str>, ip: std::net::IpAddr) -> anyhow::Result<TcpListener> {
    if let Some(path) = netns {
        let ns = std::fs::File::open(path).with_context(|| format!("opening the network namespace {path}"))?;
        // SAFETY: setns on a descriptor we own; it moves this thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {path}"));
        }
    }
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("listening on {ip} for the transfer"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
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
    let sent = send(duration, target, CHUNKS_PER_SECOND)?;
    drop(local);
    Ok(json!({ "bytes_sent": sent, "sink": target.to_string() }))
}

/// One TCP connection to `target` carrying 1 MiB writes, `per_second` a second at most, for
/// `duration`; returns the bytes sent.
pub fn send(duration: Duration, target: SocketAddr, per_second: u32) -> anyhow::Result<u64> {
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connecting to the sink {target}"))?;
    // A sink that stops reading (hung, or gone behind a firewall) ends the scenario with an
    // error instead of blocking a write forever.
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 253) as u8).collect();
    let mut pacer = Pacer::new(duration, per_second);
    while pacer.next() {
        conn.write_all(&chunk).with_context(|| format!("sending to {target}"))?;
    }
    Ok(pacer.done() * CHUNK as u64)
}
