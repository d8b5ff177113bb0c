//! How many agents one Postgres takes through PgBouncer on this machine: N real agent
//! processes (eBPF off: one node's kernel cannot stand for N nodes) write through Debian's
//! PgBouncer 1.18 in transaction mode (a pool of 10) to one PostgreSQL 15 with production
//! durability, for FLEET_RECORDS rows each at FLEET_INTERVAL seconds. A 1 s interval makes each
//! agent write ten times as often as the 10 s default, so N agents at 1 s load the database
//! like 10 N agents at 10 s. For each N: whether every row landed once (an agent that could not
//! write its rows before it stopped exits non-zero, counted as failed), and the CPU time of the
//! agents, PgBouncer and Postgres.
//!
//! cargo bench -p tests --bench fleet    (FLEET_SIZES=250,500,1000 FLEET_INTERVAL=1 FLEET_RECORDS=10)
use std::{
    process::{Child, Command, Stdio},
    time::Instant,
};

use throwaway_pg::pgbouncer::{PoolerOptions, ThrowawayPgBouncer};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// CPU seconds (user + system) of a process and its reaped children, from /proc.
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14-17 (1-based), 12-15 after the name.
    let ticks: f64 = fields.iter().skip(11).take(4).filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}

fn pids_named(name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// Waits for a child and returns its exit status and CPU seconds (wait4's rusage).
fn reap(child: &Child) -> (bool, f64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, secs(usage.ru_utime) + secs(usage.ru_stime))
}

fn main() {
    let sizes: Vec<usize> = env_or("FLEET_SIZES", "250,500,1000").split(',').filter_map(|v| v.parse().ok()).collect();
    let interval = env_or("FLEET_INTERVAL", "1");
    let records: u64 = env_or("FLEET_RECORDS", "10").parse().unwrap();
    let pg = throwaway_pg::ThrowawayPostgres::start_with(true).expect("throwaway Postgres");
    let bouncer =
        ThrowawayPgBouncer::start(&pg, PoolerOptions { pool_size: 10, max_clients: 5000, ..Default::default() })
            .expect("pgbouncer");
    let bin = tests::agent_bin();
    println!("| agents | interval s | rows expected | rows in the database | failed agents | agents CPU s | PgBouncer CPU s | Postgres CPU s | wall s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let db = format!("fleet{n}");
        pg.create_database(&db).unwrap();
        let url = bouncer.url(&db);
        let out = Command::new(&bin).arg("migrate").env("DATABASE_URL", pg.url(&db)).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pg_cpu0: f64 = pg.server_pids().iter().map(|p| cpu_seconds(*p)).sum();
        let bouncer_pid = pids_named("pgbouncer");
        let b_cpu0: f64 = bouncer_pid.iter().map(|p| cpu_seconds(*p)).sum();
        let started = Instant::now();
        let spools: Vec<_> = (0..n).map(|_| tests::fresh_spool_dir()).collect();
        let children: Vec<Child> = (0..n)
            .map(|k| {
                Command::new(&bin)
                    .args(["run", "--no-ebpf", "--listen", "off", "--interval", &interval])
                    .args(["--records", &records.to_string(), "--shutdown-timeout", "20"])
                    .args(["--node-name", &format!("fleet-{k}"), "--db-prepared-statements", "false"])
                    .env("DATABASE_URL", &url)
                    .env("SPOOL_DIR", &spools[k])
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawning an agent")
            })
            .collect();
        let mut failed = 0;
        let mut agents_cpu = 0.0;
        for c in &children {
            let (ok, cpu) = reap(c);
            failed += usize::from(!ok);
            agents_cpu += cpu;
        }
        let wall = started.elapsed().as_secs_f64();
        let rows: u64 = pg.psql(&db, "SELECT count(*) FROM node_features").unwrap().trim().parse().unwrap();
        let distinct: u64 =
            pg.psql(&db, "SELECT count(DISTINCT (node, ts)) FROM node_features").unwrap().trim().parse().unwrap();
        assert_eq!(rows, distinct);
        let pg_cpu: f64 = pg.server_pids().iter().map(|p| cpu_seconds(*p)).sum::<f64>() - pg_cpu0;
        let b_cpu: f64 = bouncer_pid.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - b_cpu0;
        println!(
            "| {n} | {interval} | {} | {rows} | {failed} | {agents_cpu:.1} | {b_cpu:.1} | {pg_cpu:.1} | {wall:.0} |",
            n as u64 * records
        );
        for d in spools {
            let _ = std::fs::remove_dir_all(d);
        }
        std::mem::forget(children);
    }
}
