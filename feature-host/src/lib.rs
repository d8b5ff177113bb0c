//! What both binaries need from the machine they run on and the process they run as, apart from
//! the database: the entry point (`entry`: the command line, logging to stderr, the runtime, the
//! exit status) and host facts (`cgroup_mount`: where the cgroup v2 tree is mounted).
pub mod cgroup_mount;
pub mod entry;

pub use cgroup_mount::{cgroup2_mount, cgroup2_root_of_this_host};
