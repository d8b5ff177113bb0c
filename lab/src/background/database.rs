//! The database background: a throwaway PostgreSQL server (the same the tests use) under
//! `pgbench` (scale 2) at a steady 20 transactions a second over 2 clients, on its Unix socket.
use std::process::Stdio;

use anyhow::Context;

use super::Running;

pub fn start(running: &mut Running) -> anyhow::Result<()> {
    let pg = throwaway_pg::ThrowawayPostgres::start().map_err(|e| anyhow::anyhow!("starting PostgreSQL: {e}"))?;
    // The server (and the backends it forks from now on) in the workload's pod.
    if let Some(pod) = &running.pod {
        pod.adopt(&pg.server_pids())?;
    }
    let pgbench = throwaway_pg::find_bin_dir().map_err(|e| anyhow::anyhow!("{e}"))?.join("pgbench");
    let host = pg.socket_dir().to_path_buf();
    let port = pg.port().to_string();
    let common = |cmd: &mut std::process::Command| {
        cmd.arg("-h").arg(&host).args(["-p", &port, "-U", "postgres"]);
    };
    let mut init = Running::command(running.pod.as_ref(), &pgbench);
    common(&mut init);
    let out = init.args(["-i", "-q", "-s", "2", "postgres"]).output().context("running pgbench -i")?;
    if !out.status.success() {
        anyhow::bail!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut load = Running::command(running.pod.as_ref(), &pgbench);
    common(&mut load);
    let child = load
        .args(["-n", "-c", "2", "-j", "1", "-R", "20", "-T", "86400", "postgres"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbench")?;
    running.children.push(child);
    running.guards.push(Box::new(pg));
    Ok(())
}
