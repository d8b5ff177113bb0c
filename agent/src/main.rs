//! The `feature-agent` binary; everything lives in the library (see cli.rs).
fn main() -> std::process::ExitCode {
    agent::daemon::cli::main()
}
