//! The `feature-lab` binary; everything lives in the library (see cli.rs).
fn main() -> std::process::ExitCode {
    lab::cli::main()
}
