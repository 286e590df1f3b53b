//! The command line: clap types (one file per subcommand), rendering, and
//! progress. A thin shell over the library; knows nothing of wasmtime or
//! object_store directly.

mod cat;
mod client;
mod cluster;
mod compile;
pub mod exit;
mod health;
mod job_args;
mod local_link;
mod project;
mod run;

use clap::{Parser, Subcommand};

pub use run::RunArgs;

/// wmr runs MapReduce jobs whose map, combine and reduce are WebAssembly
/// components, over local files or object storage, writing Parquet.
#[derive(Debug, Parser)]
#[command(name = "wmr", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// Show more log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How log lines on stderr are written: `text` for people, `json` (one
    /// object per line) for log shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value = "text",
        env = "WMR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain lines, coloured on a terminal.
    Text,
    /// One JSON object per line (timestamp, level, message, fields, spans).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job in this process: the coordinator and N task slots, no servers.
    Run(RunArgs),
    /// Print a finished job's output rows as `key value` lines.
    Cat(cat::CatArgs),
    /// Serve the job API and the worker protocol (the cluster's coordinator).
    Coordinator(cluster::CoordinatorArgs),
    /// Run tasks for a coordinator.
    Worker(cluster::WorkerArgs),
    /// Submit a job to a coordinator; prints its id, or waits with --wait.
    Submit(client::SubmitArgs),
    /// Show a job's state, progress, counters and failed attempts.
    Status(client::StatusArgs),
    /// List the coordinator's jobs.
    Jobs(client::ClientArgs),
    /// Cancel a job.
    Cancel(client::CancelArgs),
    /// Check that a coordinator serves (its gRPC health service); exit 0 if it does.
    Health(health::HealthArgs),
    /// Scaffold a job (word count) in Rust, Python or JavaScript that builds and runs as it is.
    New(project::NewArgs),
    /// Build a job into a checked .wasm component (cargo, componentize-py or componentize-js).
    Build(project::BuildArgs),
    /// Print a shell completion script, e.g. `wmr completions bash > /etc/bash_completion.d/wmr`.
    Completions(CompletionsArgs),
    /// Compile a module read on stdin (run by wmr itself, within limits).
    #[command(hide = true)]
    CompileModule(compile::CompileModuleArgs),
}

/// An error for the binary's edge: its line and exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The message, `what: cause: cause`.
    pub message: String,
}

/// Run the parsed command; `Ok(code)` is the exit code.
///
/// # Errors
/// A [`Failure`] with the line to print and the exit code.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Cat(args) => cat::run(args),
        Command::Coordinator(args) => cluster::coordinator(args),
        Command::Worker(args) => cluster::worker(args),
        Command::Submit(args) => client::submit(args),
        Command::Status(args) => client::status(args),
        Command::Jobs(args) => client::jobs(args),
        Command::Cancel(args) => client::cancel(args),
        Command::Health(args) => health::health(args),
        Command::New(args) => project::new(args),
        Command::Build(args) => project::build(args),
        Command::Completions(args) => Ok(completions(&args)),
        Command::CompileModule(args) => compile::compile_module(args),
    }
}

/// `wmr completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

fn completions(args: &CompletionsArgs) -> u8 {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "wmr", &mut script);
    print(&String::from_utf8_lossy(&script));
    exit::SUCCESS
}

/// Write `text` to stdout; a closed stdout (piped into `head`) is not an error.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The signals that stop a long-running process: SIGINT (Ctrl-C) and
/// SIGTERM (what Kubernetes and systemd send).
struct StopSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Start watching (call within the runtime).
    fn watch() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// The next SIGINT or SIGTERM; never, if neither can be watched.
    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.interrupt) => {}
            () = recv(&mut self.terminate) => {}
        }
    }
}

/// A tokio runtime for I/O only (`threads` threads); CPU work goes to the
/// compute pool.
fn io_runtime(threads: usize) -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("wmr-io")
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: format!("starting the I/O runtime: {e}"),
        })
}
