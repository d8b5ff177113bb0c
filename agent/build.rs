//! Builds the eBPF programs (through ebpf-build, the same code as `cargo xtask build-ebpf`) and
//! copies the object to OUT_DIR, where src/ebpf.rs embeds it with include_bytes_aligned!.
use std::{env, path::PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = ebpf_build::workspace_root(&crate_dir);
    for input in ebpf_build::inputs(&root) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    let object = match ebpf_build::build(&root) {
        Ok(object) => object,
        Err(e) => panic!("cannot build the eBPF programs: {e}"),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("agent-ebpf.o");
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", object.display(), out.display()));
}
