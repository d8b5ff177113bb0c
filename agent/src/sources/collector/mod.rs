//! The 24 procfs/sysfs features of the reference paper (docs/features.md), one source per file. Every source
//! reads from a configurable root (`--procfs`, `--sysfs`, `--rootfs`), so the agent in a pod
//! reads the host's files under /host/..., and the tests read fixture trees.
//!
//! A source that fails (missing or malformed file) leaves its features empty for that row and
//! reports why; the other sources still fill theirs. Nothing here panics on bad input.
pub mod devices;
pub mod diskstats;
pub mod file_nr;
pub mod loadavg;
pub mod meminfo;
pub mod netdev;
pub mod rootfs;
pub mod sockstat;
pub mod stat;
pub mod vmstat;

use std::{
    fs::File,
    io::{self, Read},
    path::PathBuf,
};

use feature_schema::FeatureRow;

pub use devices::{DiskSelector, InterfaceSelector};

/// Why one source could not be read. The path says which file; the reason says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("malformed {}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
}

/// A parser's complaint about the text it was given; [`Sources::read`] adds the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    pub fn new(reason: impl Into<String>) -> Self {
        Malformed(reason.into())
    }
}

impl From<procfs::ProcError> for Malformed {
    /// procfs reports unparsable input as "Internal error: bug at FILE:LINE (please report this
    /// procfs bug)" followed by what it could not parse; for us it is a malformed file, so keep
    /// only what it says about the text.
    fn from(e: procfs::ProcError) -> Self {
        let text = match e {
            procfs::ProcError::InternalError(i) => i.msg,
            other => other.to_string(),
        };
        let about_input = match text.split_once("procfs bug)\n") {
            Some((_, rest)) => rest,
            None => &text,
        };
        Malformed(about_input.trim_start_matches("Internal Unwrap Error: ").replace("NoneError", "missing field"))
    }
}

/// The value of the first line `key value...` whose key is exactly `key` (keys end at
/// whitespace or at a colon, as in /proc/meminfo).
pub(crate) fn keyed_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
            return None;
        }
        Some(rest.split_ascii_whitespace().next().unwrap_or(""))
    })
}

/// Parses a whitespace-separated number, naming the field on failure.
pub(crate) fn number<T: std::str::FromStr>(field: &str, text: Option<&str>) -> Result<T, Malformed> {
    let text = text.ok_or_else(|| Malformed(format!("missing {field}")))?;
    text.parse().map_err(|_| Malformed(format!("{field} is not a number: {text:?}")))
}

/// A parsed source puts its values in their columns of the row; each source file says which.
pub trait Fill {
    fn fill(&self, row: &mut FeatureRow);
}

/// Where the host's files are.
#[derive(Debug, Clone)]
pub struct Roots {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub rootfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots { procfs: "/proc".into(), sysfs: "/sys".into(), rootfs: "/".into() }
    }
}

/// Reads the procfs sources into one reused buffer, so a sample allocates almost nothing.
pub struct Sources {
    roots: Roots,
    buf: String,
    user_hz: f64,
    disks: DiskSelector,
    interfaces: InterfaceSelector,
}

impl Sources {
    pub fn new(roots: Roots, disks: DiskSelector, interfaces: InterfaceSelector) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Sources {
            roots,
            buf: String::with_capacity(16 * 1024),
            user_hz: if hz > 0 { hz as f64 } else { 100.0 },
            disks,
            interfaces,
        }
    }

    /// Reads `<procfs>/<rel>` and hands its text to `parse`.
    fn read<T>(
        &mut self,
        rel: &str,
        parse: impl FnOnce(&str, &mut Ctx<'_>) -> Result<T, Malformed>,
    ) -> Result<T, CollectError> {
        let path = self.roots.procfs.join(rel);
        self.buf.clear();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut self.buf))
            .map_err(|source| CollectError::Read { path: path.clone(), source })?;
        let mut ctx = Ctx { user_hz: self.user_hz, disks: &mut self.disks, interfaces: &mut self.interfaces };
        parse(&self.buf, &mut ctx).map_err(|m| CollectError::Malformed { path, reason: m.0 })
    }

    /// Collects every procfs feature into `f`'s columns. Returns the errors of the sources that
    /// could not be read (their columns are left as they were: NULL in a new row).
    pub fn collect(&mut self, f: &mut FeatureRow) -> Vec<CollectError> {
        let mut errors = Vec::new();
        let mut keep = |r: Result<(), CollectError>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };

        keep(self.read("stat", |t, c| stat::parse(t, c.user_hz)).map(|s| s.fill(f)));
        keep(rootfs::available_percent(&self.roots.rootfs).map(|p| f.disk_av_per = Some(p)));
        keep(
            self.disks
                .available()
                .and_then(|()| self.read("diskstats", |t, c| diskstats::parse(t, c.disks)))
                .map(|d| d.fill(f)),
        );
        keep(
            self.interfaces
                .available()
                .and_then(|()| self.read("net/dev", |t, c| netdev::parse(t, c.interfaces)))
                .map(|n| n.fill(f)),
        );
        keep(self.read("vmstat", |t, _| vmstat::parse(t)).map(|v| v.fill(f)));
        keep(self.read("meminfo", |t, _| meminfo::parse(t)).map(|m| m.fill(f)));
        keep(self.read("loadavg", |t, _| loadavg::parse(t)).map(|l| l.fill(f)));
        keep(self.read("net/sockstat", |t, _| sockstat::parse(t)).map(|s| s.fill(f)));
        keep(self.read("sys/fs/file-nr", |t, _| file_nr::parse(t)).map(|n| f.open_fds = Some(n)));
        errors
    }
}

/// What a parser may need besides the text.
pub struct Ctx<'a> {
    user_hz: f64,
    disks: &'a mut DiskSelector,
    interfaces: &'a mut InterfaceSelector,
}
