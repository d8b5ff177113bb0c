//! Which disks and network interfaces the sums cover (docs/features.md, "Which disks and
//! interfaces"). Defaults: whole, non-stacked block devices; physical interfaces. A regex option
//! replaces either default. Decisions are cached by name, so sysfs is read when a device first
//! appears, not every interval; the cache is forgotten now and then so a reused name is re-checked.
use std::{collections::HashMap, path::PathBuf};

use regex::Regex;

/// Block devices that are never summed by default: loop and RAM disks, floppies, and stacked
/// devices (device-mapper, md RAID) whose I/O is already counted on the disks beneath them.
pub const DEFAULT_DISK_EXCLUDE: &str = r"^(loop|ram|zram|fd|dm-|md)";

/// Forget cached decisions after this many samples.
const CACHE_SAMPLES: u32 = 360;

/// A cache of yes/no decisions by device name, forgotten every [`CACHE_SAMPLES`] samples.
#[derive(Debug, Default)]
struct Decisions {
    by_name: HashMap<String, bool>,
    samples: u32,
}

impl Decisions {
    fn start_sample(&mut self) {
        self.samples += 1;
        if self.samples >= CACHE_SAMPLES {
            self.samples = 0;
            self.by_name.clear();
        }
    }

    fn get_or(&mut self, name: &str, decide: impl FnOnce() -> bool) -> bool {
        if let Some(&d) = self.by_name.get(name) {
            return d;
        }
        let d = decide();
        self.by_name.insert(name.to_owned(), d);
        d
    }
}

/// Ok if `path` is a directory (one stat call), else the error a missing file gives.
fn sysfs_dir(path: &std::path::Path) -> Result<(), super::CollectError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(super::CollectError::Read {
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        }),
        Err(source) => Err(super::CollectError::Read { path: path.to_owned(), source }),
    }
}

/// Selects the disks of /proc/diskstats to sum.
#[derive(Debug)]
pub struct DiskSelector {
    rule: DiskRule,
    decisions: Decisions,
}

#[derive(Debug)]
enum DiskRule {
    /// Whole devices (present in `<sysfs>/block`) whose name does not match the exclusion.
    Default { sysfs: PathBuf, exclude: Regex },
    /// Exactly the devices whose name matches.
    Matching(Regex),
}

impl DiskSelector {
    pub fn default_for(sysfs: impl Into<PathBuf>) -> Self {
        let exclude = Regex::new(DEFAULT_DISK_EXCLUDE).expect("constant regex");
        DiskSelector { rule: DiskRule::Default { sysfs: sysfs.into(), exclude }, decisions: Decisions::default() }
    }

    pub fn matching(regex: Regex) -> Self {
        DiskSelector { rule: DiskRule::Matching(regex), decisions: Decisions::default() }
    }

    pub fn start_sample(&mut self) {
        self.decisions.start_sample();
    }

    /// Whether the default rule can decide: it needs `<sysfs>/block`. Without it every disk
    /// would look unselected and the sums would read 0 where they are unknown.
    pub fn available(&self) -> Result<(), super::CollectError> {
        match &self.rule {
            DiskRule::Default { sysfs, .. } => sysfs_dir(&sysfs.join("block")),
            DiskRule::Matching(_) => Ok(()),
        }
    }

    pub fn is_selected(&mut self, name: &str) -> bool {
        let rule = &self.rule;
        self.decisions.get_or(name, || match rule {
            // Partitions are not listed in /sys/block; whole disks are.
            DiskRule::Default { sysfs, exclude } => !exclude.is_match(name) && sysfs.join("block").join(name).exists(),
            DiskRule::Matching(re) => re.is_match(name),
        })
    }
}

/// Selects the interfaces of /proc/net/dev to sum.
#[derive(Debug)]
pub struct InterfaceSelector {
    rule: InterfaceRule,
    decisions: Decisions,
}

#[derive(Debug)]
enum InterfaceRule {
    /// Interfaces whose `<sysfs>/class/net/NAME` link does not point under devices/virtual
    /// (so lo, veth*, bridges, cni0, ifb* are skipped).
    Physical {
        sysfs: PathBuf,
    },
    Matching(Regex),
}

impl InterfaceSelector {
    pub fn physical(sysfs: impl Into<PathBuf>) -> Self {
        InterfaceSelector { rule: InterfaceRule::Physical { sysfs: sysfs.into() }, decisions: Decisions::default() }
    }

    pub fn matching(regex: Regex) -> Self {
        InterfaceSelector { rule: InterfaceRule::Matching(regex), decisions: Decisions::default() }
    }

    pub fn start_sample(&mut self) {
        self.decisions.start_sample();
    }

    /// Whether the default rule can decide: it needs `<sysfs>/class/net`.
    pub fn available(&self) -> Result<(), super::CollectError> {
        match &self.rule {
            InterfaceRule::Physical { sysfs } => sysfs_dir(&sysfs.join("class/net")),
            InterfaceRule::Matching(_) => Ok(()),
        }
    }

    pub fn is_selected(&mut self, name: &str) -> bool {
        let rule = &self.rule;
        self.decisions.get_or(name, || match rule {
            InterfaceRule::Physical { sysfs } => match std::fs::read_link(sysfs.join("class/net").join(name)) {
                Ok(target) => !target.to_string_lossy().contains("devices/virtual/"),
                Err(_) => false,
            },
            InterfaceRule::Matching(re) => re.is_match(name),
        })
    }
}
