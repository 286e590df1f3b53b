//! The `wmr` binary: parse arguments, install tracing, call `cli::run`, and
//! map the result to an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = wmr::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match wmr::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            // stderr is our only channel left; if it is closed there is
            // nowhere to report that either.
            let _ = writeln!(std::io::stderr(), "wmr: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
