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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        // Colours only on a terminal: logs sent to files stay plain text.
        wmr::cli::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        wmr::cli::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    let json = cli.log_format == wmr::cli::LogFormat::Json;
    match wmr::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) if json => {
            // Every line on stderr is a JSON object for a log shipper.
            tracing::error!(exit_code = failure.code, "{}", failure.message);
            ExitCode::from(failure.code)
        }
        Err(failure) => {
            // stderr is our only channel left; if it is closed there is
            // nowhere to report that either.
            let _ = writeln!(std::io::stderr(), "wmr: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
