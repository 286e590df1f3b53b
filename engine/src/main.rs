//! The `wmr` binary: parse arguments, install tracing, call `cli::run`, and
//! map the result to an exit code.

use std::io::{IsTerminal, Write};
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
    // A coordinator shows every refused TLS handshake, as it shows every
    // refused token; tonic reports them only at debug level.
    let default = match cli.command {
        wmr::cli::Command::Coordinator(_) => format!("{default},tonic::transport::server::io_stream=debug"),
        _ => default.to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs sent to files stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
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
