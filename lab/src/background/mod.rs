//! Background workloads for `drill --background NAME`: real software from Debian's packages,
//! bounded and loopback-only, started before the drill's agent and stopped after it, so the
//! detector is judged against the kind of normal activity a node has (a web service under load,
//! a database under pgbench, bursts of build jobs) and not only against an idle machine.
//! One workload per file; each returns the processes and threads it started, which [`Running`]
//! stops (and whose scratch directory it removes) when dropped.
mod build;
mod database;
mod web;

use std::{
    path::{Path, PathBuf},
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Background {
    /// Nothing but the machine's own activity.
    Quiet,
    /// nginx serving a static site on loopback, under bursts of `ab` requests (20 a second).
    Web,
    /// A PostgreSQL server under `pgbench` at 20 transactions a second.
    Database,
    /// A C project rebuilt with `make -j2` every 20 s (many short execs, disk writes).
    Build,
}

impl Background {
    pub fn name(self) -> &'static str {
        match self {
            Background::Quiet => "quiet",
            Background::Web => "web",
            Background::Database => "database",
            Background::Build => "build",
        }
    }
}

/// A started background: stopped when dropped.
#[derive(Default)]
pub struct Running {
    children: Vec<Child>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Held until the end (a database server stops when dropped).
    guards: Vec<Box<dyn std::any::Any + Send>>,
    dir: Option<PathBuf>,
    /// The neighbour pod every process of the workload runs in; None: the host.
    pod: Option<crate::pod::LabPod>,
}

impl Running {
    /// `program` as a command of the workload: in its pod when it has one.
    fn command(pod: Option<&crate::pod::LabPod>, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        match pod {
            Some(p) => p.command(program),
            None => std::process::Command::new(program),
        }
    }

    /// Whether the workload's threads should stop.
    fn stopping(stop: &AtomicBool) -> bool {
        stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `d`, waking early when stopping; false when stopping.
    fn pause(stop: &AtomicBool, d: Duration) -> bool {
        let step = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            if Self::stopping(stop) {
                return false;
            }
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
        !Self::stopping(stop)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in &mut self.children {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
        self.guards.clear();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `background` with its scratch files under `scratch`; every process it starts runs
/// in `pod` when one is given (a neighbour pod of the drill's scenarios).
pub fn start(background: Background, scratch: &Path, pod: Option<crate::pod::LabPod>) -> anyhow::Result<Running> {
    let mut running = Running::default();
    running.pod = pod;
    if background == Background::Quiet {
        return Ok(running);
    }
    let dir = scratch.join(format!("feature-lab-background-{}-{}", background.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    running.dir = Some(dir.clone());
    match background {
        Background::Quiet => {}
        Background::Web => web::start(&dir, &mut running)?,
        Background::Database => database::start(&mut running)?,
        Background::Build => build::start(&dir, &mut running)?,
    }
    Ok(running)
}

/// The path of a program, or an error saying which package provides it.
fn program(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_default();
    found.ok_or_else(|| {
        anyhow::anyhow!("{name} is not installed (Debian package {package}; scripts/setup.sh installs it)")
    })
}
