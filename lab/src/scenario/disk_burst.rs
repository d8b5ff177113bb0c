//! disk-burst: write a file in 4 MiB chunks, each made durable with fdatasync, at most
//! 64 MiB a second and 1 GiB in all, then read it back after dropping it from the page cache,
//! and delete it. The directory must be on a disk the agent measures (default /var/tmp).
use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::fd::AsRawFd,
    path::Path,
    time::Duration,
};

use anyhow::Context;
use serde_json::{json, Value};

use super::pace::Pacer;

const CHUNK: usize = 4 << 20;
pub const CHUNKS_PER_SECOND: u32 = 16;
const MAX_CHUNKS: u64 = 256;

/// Removes the file however the scenario ends.
struct Cleanup<'a>(&'a Path);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

pub fn run(duration: Duration, dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join(format!("feature-agent-disk-burst-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .read(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _cleanup = Cleanup(&path);
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let mut pacer = Pacer::new(duration, CHUNKS_PER_SECOND);
    while pacer.done() < MAX_CHUNKS && pacer.next() {
        file.write_all(&chunk).with_context(|| format!("writing {}", path.display()))?;
        file.sync_data().with_context(|| format!("syncing {}", path.display()))?;
    }
    let written = pacer.done() * CHUNK as u64;
    // SAFETY: advisory call on our own open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut read = 0u64;
    let mut f = File::open(&path)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok(json!({ "bytes_written": written, "bytes_read": read, "dir": dir.display().to_string() }))
}
