//! Builds the `agent-ebpf` object for the kernel. One code path for both callers:
//! `agent/build.rs` (so a plain `cargo build` embeds a fresh object in the binary) and
//! `cargo xtask build-ebpf` (to build the object alone while working on the programs).
//!
//! The object is always built in release mode (the verifier rejects debug builds) for
//! `bpfel-unknown-none`, with `-Z build-std=core` allowed on the stable toolchain through
//! RUSTC_BOOTSTRAP=1, and linked by `bpf-linker` (installed by scripts/setup.sh).
use std::{
    env,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// The eBPF target triple.
pub const TARGET: &str = "bpfel-unknown-none";
/// The package holding the programs.
pub const PACKAGE: &str = "agent-ebpf";

/// Why the object could not be built.
#[derive(Debug)]
pub enum BuildError {
    LinkerMissing,
    Spawn(std::io::Error),
    Failed(std::process::ExitStatus),
    NoObject(PathBuf),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::LinkerMissing => write!(
                f,
                "bpf-linker is not on PATH; run scripts/setup.sh (or `cargo install bpf-linker@0.10.0 --locked`) first"
            ),
            BuildError::Spawn(e) => write!(f, "could not start cargo to build {PACKAGE}: {e}"),
            BuildError::Failed(status) => {
                write!(f, "building {PACKAGE} for {TARGET} failed ({status}); see the errors above")
            }
            BuildError::NoObject(p) => write!(f, "the build succeeded but left no object at {}", p.display()),
        }
    }
}

impl std::error::Error for BuildError {}

/// The workspace root, given any crate directory directly inside it.
pub fn workspace_root(crate_dir: &Path) -> PathBuf {
    crate_dir.parent().expect("crates live inside the workspace").to_path_buf()
}

/// Sources whose change must rebuild the object.
pub fn inputs(root: &Path) -> Vec<PathBuf> {
    ["agent-ebpf/src", "agent-ebpf/Cargo.toml", "agent-common/src", "agent-common/Cargo.toml", "Cargo.lock"]
        .iter()
        .map(|p| root.join(p))
        .collect()
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH").map(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file())).unwrap_or(false)
}

/// Builds the object and returns its path, under `<root>/target/ebpf`. That target directory is
/// separate from the caller's, so building from inside a build script cannot deadlock on
/// cargo's lock, and it is shared by build.rs and xtask so neither rebuilds what the other built.
pub fn build(root: &Path) -> Result<PathBuf, BuildError> {
    let mut path = env::var_os("PATH").unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        // bpf-linker lives in cargo's bin directory, which a non-login shell may lack.
        let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
        dirs.push(home.join("bin"));
        path = env::join_paths(dirs).unwrap_or(path);
    }
    // SAFETY-free: only this process's view of PATH for the check below.
    let linker_found = env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) || on_path("bpf-linker");
    if !linker_found {
        return Err(BuildError::LinkerMissing);
    }

    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--package", PACKAGE, "--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1");
    // Settings of an outer cargo (we may run inside a build script) that must not leak into a
    // build for another target.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(BuildError::Spawn)?;
    if !status.success() {
        return Err(BuildError::Failed(status));
    }
    let object = target_dir.join(TARGET).join("release").join(PACKAGE);
    if !object.is_file() {
        return Err(BuildError::NoObject(object));
    }
    Ok(object)
}
