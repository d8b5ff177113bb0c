//! The entry point both binaries share: parse the command line (refusing what the binary refuses
//! on it, a password for one),
//! log to stderr (RUST_LOG, default info), run the command on a single-threaded runtime, and
//! turn its error into one logged line and exit status 1.
use std::{future::Future, process::ExitCode};

use clap::{CommandFactory, FromArgMatches};
use tracing::error;

/// Runs the binary whose command line is `C`, with `command` doing the work. `refuse` looks at
/// the parsed command line first and names what it refuses (exit status 2), such as a password
/// given on it (feature-db's `refuse_secrets_on_command_line`).
pub fn main<C, F, Fut>(refuse: fn(&clap::ArgMatches) -> Result<(), String>, command: F) -> ExitCode
where
    C: CommandFactory + FromArgMatches,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = C::command().get_matches();
    if let Err(e) = refuse(&matches) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = match C::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Standard error for log lines, losing what it cannot write. A closed stderr (`2>&1 | head`,
/// a collector that went away) must not stop the agent: tracing-subscriber reports a failed
/// write with `eprintln!`, which panics when stderr itself is the broken pipe.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
