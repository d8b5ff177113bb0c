//! /proc/stat: cpu_sec_idle (idle seconds averaged over CPUs), forks_total (`processes`), intr
//! (first number of `intr`), ctxt, procs_running and procs_blocked. Our own parser: procfs's
//! KernelStats has no `intr`. The last three are in every kernel since 2.6; a file without them
//! leaves their columns NULL rather than failing the source.
use super::{number, Malformed};

#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub cpu_sec_idle: f64,
    pub forks_total: i64,
    pub intr: i64,
    pub ctxt: Option<i64>,
    pub procs_running: Option<i32>,
    pub procs_blocked: Option<i32>,
}

impl super::Fill for Stat {
    fn fill(&self, row: &mut feature_schema::FeatureRow) {
        row.cpu_sec_idle = Some(self.cpu_sec_idle);
        row.forks_total = Some(self.forks_total);
        row.intr = Some(self.intr);
        row.ctxt = self.ctxt;
        row.procs_running = self.procs_running;
        row.procs_blocked = self.procs_blocked;
    }
}

pub fn parse(text: &str, user_hz: f64) -> Result<Stat, Malformed> {
    let (mut idle_ticks, mut cpus) = (0u64, 0u32);
    let (mut forks, mut intr) = (None, None);
    let (mut ctxt, mut running, mut blocked) = (None, None, None);
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        if let Some(id) = key.strip_prefix("cpu") {
            // "cpu" alone is the sum over CPUs; "cpuN" are the CPUs we average.
            if id.is_empty() {
                continue;
            }
            if id.parse::<u32>().is_err() {
                return Err(Malformed::new(format!("unexpected line {key:?}")));
            }
            // user nice system idle ...
            let idle: u64 = number(&format!("{key} idle"), fields.nth(3))?;
            idle_ticks += idle;
            cpus += 1;
        } else if key == "processes" {
            forks = Some(number("processes", fields.next())?);
        } else if key == "intr" {
            intr = Some(number("intr", fields.next())?);
        } else if key == "ctxt" {
            ctxt = Some(number("ctxt", fields.next())?);
        } else if key == "procs_running" {
            running = Some(number("procs_running", fields.next())?);
        } else if key == "procs_blocked" {
            blocked = Some(number("procs_blocked", fields.next())?);
        }
    }
    if cpus == 0 {
        return Err(Malformed::new("no cpuN lines"));
    }
    Ok(Stat {
        cpu_sec_idle: idle_ticks as f64 / user_hz / cpus as f64,
        forks_total: forks.ok_or_else(|| Malformed::new("no processes line"))?,
        intr: intr.ok_or_else(|| Malformed::new("no intr line"))?,
        ctxt,
        procs_running: running,
        procs_blocked: blocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "cpu  10 0 10 300 0 0 0 0 0 0\n\
        cpu0 5 0 5 100 0 0 0 0 0 0\n\
        cpu1 5 0 5 200 0 0 0 0 0 0\n\
        intr 12345 1 2 3\n\
        ctxt 99\n\
        btime 1700000000\n\
        processes 4242\n\
        procs_running 1\n";

    #[test]
    fn averages_idle_over_cpus() {
        let s = parse(TEXT, 100.0).unwrap();
        assert_eq!(s.cpu_sec_idle, 1.5);
        assert_eq!(s.forks_total, 4242);
        assert_eq!(s.intr, 12345);
        assert_eq!((s.ctxt, s.procs_running, s.procs_blocked), (Some(99), Some(1), None));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(parse("", 100.0).unwrap_err().0.contains("no cpuN"));
        assert!(parse("cpu0 1 2\nprocesses 1\nintr 1\n", 100.0).unwrap_err().0.contains("cpu0 idle"));
        assert!(parse("cpu0 1 2 3 x\nprocesses 1\nintr 1\n", 100.0).unwrap_err().0.contains("not a number"));
        assert!(parse("cpu0 1 2 3 4\nintr 1\n", 100.0).unwrap_err().0.contains("processes"));
        assert!(parse("cpu0 1 2 3 4\nprocesses 1\n", 100.0).unwrap_err().0.contains("intr"));
        assert!(parse("cpuX 1 2 3 4\n", 100.0).is_err());
        assert!(parse("cpu0 1 2 3 4\nprocesses 1\nintr 1\nctxt x\n", 100.0).unwrap_err().0.contains("ctxt"));
    }
}
