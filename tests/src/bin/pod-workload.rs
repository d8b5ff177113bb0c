//! `pod-workload`: the known workloads the per-pod counting tests (tests/tests/pod_counts.rs) run
//! inside their cgroups, each making an exact number of the kernel events the agent counts. One
//! static binary with no interpreter behind it, so the same tests run on this machine and in
//! the kernel-test VMs, whose root holds only busybox and our binaries.
//!
//! - `spawn N`: starts N children (`exit`) one after another and waits for each: N forks, N
//!   execs and N exits, plus this process's own exec and exit.
//! - `exit`: exits at once.
//! - `tcp-server N`: listens on a loopback port, prints it, accepts N connections, reads one byte
//!   from each and closes it.
//! - `tcp-client PORT CLOSED OK REFUSED`: OK connections to PORT (one byte each), then REFUSED
//!   connects to CLOSED, where nothing listens.
//! - `sockets`: creates 3 TCP (IPv4), 2 UDP (IPv6), 4 Unix stream sockets, one Unix socketpair
//!   and one raw ICMP socket.
//! - `write-pages PATH`: 300 unbuffered 4 KiB writes to a new file, then the same 300 again over
//!   the same pages.
//! - `listen-in-namespaces N`: N times, moves to a new network namespace and listens on a TCP
//!   socket there (N namespaces with one listener each, all closed at exit). Needs CAP_SYS_ADMIN.
//! - `socket-storm THREADS N`: THREADS threads each create and close N Unix datagram sockets, so
//!   many socket() calls are in flight at once.
//! - `sink PORT`: serves TCP and UDP on PORT of every address, prints `ready`, and runs until
//!   killed. A TCP client sends an 8-byte little-endian reply size, then its data, then shuts
//!   its side down; the sink reads to the end, then sends the reply size in bytes and closes.
//!   UDP datagrams are read and dropped.
//! - `send ADDR PORT SEND REPLY`: one TCP exchange with a sink: SEND bytes there, REPLY bytes
//!   back (checked); prints `retransmitted N`, the data bytes TCP sent again (TCP_INFO).
//! - `udp-send ADDR PORT COUNT SIZE`: COUNT datagrams of SIZE bytes to ADDR:PORT (IPv4 or IPv6).
use std::{
    io::{Read, Seek, Write},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    process::{Command, ExitCode},
};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i).ok_or_else(|| format!("missing {what}"))?.parse().map_err(|_| format!("{what}: not a number"))
}

fn spawn(n: u64) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    for _ in 0..n {
        let status = Command::new(&me).arg("exit").status().map_err(|e| format!("spawn: {e}"))?;
        if !status.success() {
            return Err(format!("child: {status}"));
        }
    }
    Ok(())
}

fn tcp_server(n: u64) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("{port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for _ in 0..n {
        let (mut c, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).map_err(|e| format!("recv: {e}"))?;
    }
    Ok(())
}

fn tcp_client(port: u16, closed: u16, ok: u64, refused: u64) -> Result<(), String> {
    for _ in 0..ok {
        let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        c.write_all(b"x").map_err(|e| format!("send: {e}"))?;
    }
    for _ in 0..refused {
        match TcpStream::connect(("127.0.0.1", closed)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => return Err(format!("connect to the closed port {closed}: {other:?}")),
        }
    }
    Ok(())
}

fn sockets() -> Result<(), String> {
    let kinds = [
        (libc::AF_INET, libc::SOCK_STREAM, 0, 3),
        (libc::AF_INET6, libc::SOCK_DGRAM, 0, 2),
        (libc::AF_UNIX, libc::SOCK_STREAM, 0, 4),
        (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP, 1),
    ];
    for (domain, kind, protocol, n) in kinds {
        for _ in 0..n {
            // SAFETY: socket takes plain integers; the descriptor is left open until exit.
            if unsafe { libc::socket(domain, kind, protocol) } < 0 {
                return Err(format!("socket({domain}, {kind}, {protocol}): {}", std::io::Error::last_os_error()));
            }
        }
    }
    let mut pair = [0; 2];
    // SAFETY: pair has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) } != 0 {
        return Err(format!("socketpair: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn write_pages(path: &str) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let page = [0u8; 4096];
    for _ in 0..2 {
        for _ in 0..300 {
            f.write_all(&page).map_err(|e| format!("write: {e}"))?;
        }
        f.rewind().map_err(|e| format!("seek: {e}"))?;
    }
    Ok(())
}

fn listen_in_namespaces(n: u64) -> Result<(), String> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        // SAFETY: unshare takes a flag; this single-threaded process moves to a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error()));
        }
        // The wildcard address: the new namespace's loopback is still down.
        listeners.push(TcpListener::bind("0.0.0.0:0").map_err(|e| format!("listen: {e}"))?);
    }
    Ok(())
}

fn socket_storm(threads: u64, n: u64) -> Result<(), String> {
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..n {
                    // SAFETY: plain socket(2) and close(2) of the descriptor it returned.
                    unsafe {
                        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
                        if fd < 0 {
                            return Err(format!("socket: {}", std::io::Error::last_os_error()));
                        }
                        libc::close(fd);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a thread panicked".to_string())??;
    }
    Ok(())
}

fn sink(port: u16) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind tcp {port}: {e}"))?;
    let udp = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("bind udp {port}: {e}"))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while udp.recv(&mut buf).is_ok() {}
    });
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let mut size = [0u8; 8];
            if c.read_exact(&mut size).is_err() {
                return;
            }
            let _ = std::io::copy(&mut c, &mut std::io::sink());
            let reply = vec![0x5au8; 1 << 16];
            let mut left = u64::from_le_bytes(size);
            while left > 0 {
                let n = left.min(reply.len() as u64) as usize;
                if c.write_all(&reply[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        });
    }
    Ok(())
}

fn send(addr: &str, port: u16, send: u64, reply: u64) -> Result<(), String> {
    // A peer that hangs or vanishes fails the exchange within the deadline instead of holding it.
    let deadline = std::time::Duration::from_secs(30);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(addr, port))
        .map_err(|e| format!("{addr}:{port}: {e}"))?
        .next()
        .ok_or(format!("{addr}:{port}: no address"))?;
    let mut c = TcpStream::connect_timeout(&target, deadline).map_err(|e| format!("connect {addr}:{port}: {e}"))?;
    c.set_read_timeout(Some(deadline)).and_then(|()| c.set_write_timeout(Some(deadline))).map_err(|e| e.to_string())?;
    c.write_all(&reply.to_le_bytes()).map_err(|e| format!("send: {e}"))?;
    let chunk = vec![0xa5u8; 1 << 16];
    let mut left = send;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        c.write_all(&chunk[..n]).map_err(|e| format!("send: {e}"))?;
        left -= n as u64;
    }
    c.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let got = std::io::copy(&mut c, &mut std::io::sink()).map_err(|e| format!("receive: {e}"))?;
    if got != reply {
        return Err(format!("received {got} bytes, expected {reply}"));
    }
    // SAFETY: getsockopt fills at most `len` bytes of the zeroed struct we own.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&c);
    if unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) } != 0 {
        return Err(format!("TCP_INFO: {}", std::io::Error::last_os_error()));
    }
    println!("retransmitted {}", info.tcpi_bytes_retrans);
    Ok(())
}

fn udp_send(addr: &str, port: u16, count: u64, size: usize) -> Result<(), String> {
    let any = if addr.contains(':') { "[::]:0" } else { "0.0.0.0:0" };
    let s = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    let datagram = vec![0x33u8; size];
    for _ in 0..count {
        s.send_to(&datagram, (addr, port)).map_err(|e| format!("send_to {addr}:{port}: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("spawn") => arg(&args, 2, "N").and_then(spawn),
        Some("exit") => Ok(()),
        Some("tcp-server") => arg(&args, 2, "N").and_then(tcp_server),
        Some("tcp-client") => (|| {
            tcp_client(arg(&args, 2, "PORT")?, arg(&args, 3, "CLOSED")?, arg(&args, 4, "OK")?, arg(&args, 5, "REFUSED")?)
        })(),
        Some("sockets") => sockets(),
        Some("listen-in-namespaces") => arg(&args, 2, "N").and_then(listen_in_namespaces),
        Some("socket-storm") => (|| socket_storm(arg(&args, 2, "THREADS")?, arg(&args, 3, "N")?))(),
        Some("sink") => arg(&args, 2, "PORT").and_then(sink),
        Some("send") => (|| {
            let addr = args.get(2).ok_or("missing ADDR")?;
            send(addr, arg(&args, 3, "PORT")?, arg(&args, 4, "SEND")?, arg(&args, 5, "REPLY")?)
        })(),
        Some("udp-send") => (|| {
            let addr = args.get(2).ok_or("missing ADDR")?;
            udp_send(addr, arg(&args, 3, "PORT")?, arg(&args, 4, "COUNT")?, arg(&args, 5, "SIZE")?)
        })(),
        Some("write-pages") => args.get(2).ok_or_else(|| "missing PATH".to_string()).and_then(|p| write_pages(p)),
        _ => Err("usage: pod-workload spawn N | exit | tcp-server N | tcp-client PORT CLOSED OK REFUSED | sockets | write-pages PATH | listen-in-namespaces N | socket-storm THREADS N | sink PORT | send ADDR PORT SEND REPLY | udp-send ADDR PORT COUNT SIZE".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-workload: {e}");
            ExitCode::FAILURE
        }
    }
}
