//! Lists the numbered migrations (migrations/NNNN_name.sql) for src/migrate.rs, so adding a
//! migration is adding its file. Fails the build when the numbers are not 1, 2, 3, ... in order.
use std::{env, fmt::Write, path::PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = crate_dir.parent().expect("feature-db lives in the workspace").join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(i32, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sql"))
        .map(|n| {
            let version =
                n.split('_').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    panic!("migrations/{n}: the name must start with its number, e.g. 0007_what.sql")
                });
            (version, n)
        })
        .collect();
    files.sort();
    let mut list = String::from("&[\n");
    for (i, (version, name)) in files.iter().enumerate() {
        assert_eq!(*version, i as i32 + 1, "migrations/{name}: expected number {}", i + 1);
        let path = dir.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(list, "    ({version}, {name:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    list.push(']');
    let generated = dir.join("generated/analysis.sql");
    println!("cargo:rerun-if-changed={}", generated.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("migrations.rs"), list).expect("writing OUT_DIR/migrations.rs");
    std::fs::write(out.join("generated.rs"), format!("include_str!({:?})", generated.display().to_string()))
        .expect("writing OUT_DIR/generated.rs");
}
