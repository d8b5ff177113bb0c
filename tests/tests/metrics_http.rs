//! The agent's HTTP listener (/metrics, /healthz, /readyz) against hostile clients, on a real
//! running agent: an oversized request head is refused, a client that never finishes its request
//! is cut off, a crowd of idle connections does not lock out the kubelet's probe, methods other
//! than GET and HEAD are refused, and the exposition parses as Prometheus text.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use tests::{
    agent_command,
    process::{free_port, http_get, metrics, wait_for},
};

/// An agent sampling every second with no database reachable and no spool: it keeps running.
struct Running(std::process::Child, u16);

impl Running {
    fn start() -> Running {
        let port = free_port();
        let child = agent_command()
            .args(["run", "--no-ebpf", "--interval", "1", "--database-url", "host=/nonexistent-socket-dir"])
            .env("SPOOL_DIR", "off")
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting feature-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(port, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "the listener never came up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Running(child, port)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `request` raw and returns the status code of the answer (None: closed without one).
fn raw(port: u16, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(request);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ').nth(1)?.parse().ok()
}

#[test]
fn the_listener_withstands_hostile_clients() {
    let agent = Running::start();
    let port = agent.1;

    // Pages and methods.
    assert_eq!(http_get(port, "/healthz").unwrap(), (200, "ok\n".to_owned()));
    assert_eq!(http_get(port, "/readyz").unwrap().0, 503, "no database is reachable");
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);
    assert_eq!(raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), Some(405));
    let mut head = TcpStream::connect(("127.0.0.1", port)).unwrap();
    head.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    head.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");

    // The exposition parses, and carries the agent's counters.
    wait_for("a sampled row", Duration::from_secs(10), || metrics(port)["feature_agent_rows_sampled_total"] >= 1.0);
    let m = metrics(port);
    assert_eq!(m["feature_agent_database_up"], 0.0);

    // A request head past 8 KiB is refused, and the listener goes on.
    let big = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(raw(port, big.as_bytes()), Some(431));
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);

    // A client that never finishes its request is cut off within the header timeout (5 s).
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(12), "the slow client was held {waited:?}");

    // 200 idle connections do not lock out a probe: it is answered at once.
    let crowd: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(http_get(port, "/healthz").map(|p| p.0), Some(200), "the probe was not answered past the crowd");
    assert!(started.elapsed() < Duration::from_secs(2), "the probe waited {:?}", started.elapsed());
    // Past 256 open connections, new ones are closed unanswered: the agent's memory is bounded.
    let more: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut last = more.last().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(last.read(&mut buf), Ok(0)), "a connection past the limit was kept open");
    drop((crowd, more));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
}
