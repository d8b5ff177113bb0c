//! exec-storm: run a short-lived program (this binary's `--version`, present wherever the agent
//! is), at most 200 times a second. It is executed through /proc/self/exe, which still works
//! when the file was replaced on disk (an upgrade, a rebuild) while the scenario runs.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use serde_json::{json, Value};

use super::pace::Pacer;

pub const EXECS_PER_SECOND: u32 = 200;

pub fn run(duration: Duration) -> anyhow::Result<Value> {
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let mut pacer = Pacer::new(duration, EXECS_PER_SECOND);
    while pacer.next() {
        Command::new(&exe)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
    }
    Ok(json!({ "execs": pacer.done(), "program": exe.display().to_string() }))
}
