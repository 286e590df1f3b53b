//! `wmr run`: the embedded mode. One process runs the coordinator service
//! (the same one `wmr coordinator` serves, with its journal in memory) and
//! an in-process worker with N task slots: the same scheduler, retries,
//! backups, cancel (Ctrl-C) and task code as a cluster.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::compile::CompileArgs;
use super::job_args::JobArgs;
use super::local_link::LocalLink;
use super::{Failure, exit};
use crate::JobId;
use crate::compute::ComputePool;
use crate::coordinator::JobState;
use crate::coordinator::access::DataAccess;
use crate::coordinator::ceilings::Ceilings;
use crate::coordinator::journal::Journal;
use crate::coordinator::service::{ErrorKind, Service, ServiceConfig, ServiceError, SubmitPolicy, SubmitRequest};
use crate::data::Location;
use crate::data::output::Manifest;
use crate::error_chain;
use crate::identity::Identity;
use crate::spawn::SpawnedTask;
use crate::task::Counters;
use crate::worker::{WorkerSetup, run_worker};

/// Run a job embedded.
#[derive(Debug, Args)]
#[command(after_help = super::exit::HELP)]
pub struct RunArgs {
    /// The job and its data.
    #[command(flatten)]
    pub spec: JobArgs,
    /// Task slots running at once [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
    /// Print the summary as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve the status page and /metrics on this loopback address while
    /// the job runs, e.g. 127.0.0.1:7080 (port 0 picks a free one; the
    /// address is printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Bounds on compiling the module.
    #[command(flatten)]
    pub compile: CompileArgs,
}

fn usage(message: String) -> Failure {
    Failure {
        code: exit::USAGE,
        message,
    }
}

/// A service failure as the CLI shows it: its exit code decided here, once.
fn service_failure(e: ServiceError) -> Failure {
    let code = match e.kind {
        ErrorKind::JobCode => exit::JOB_FAILED,
        ErrorKind::Unavailable | ErrorKind::Internal => exit::INFRASTRUCTURE,
        ErrorKind::Invalid
        | ErrorKind::NotFound
        | ErrorKind::PermissionDenied
        | ErrorKind::AlreadyExists
        | ErrorKind::Conflict
        | ErrorKind::TooLarge => exit::USAGE,
    };
    Failure {
        code,
        message: e.message,
    }
}

fn infrastructure(message: String) -> Failure {
    Failure {
        code: exit::INFRASTRUCTURE,
        message,
    }
}

/// The summary printed at the end (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// The job id.
    pub job: String,
    /// The job's name.
    pub name: String,
    /// succeeded, failed or cancelled.
    pub state: JobState,
    /// The error, if it failed.
    pub error: Option<String>,
    /// The output directory.
    pub output: String,
    /// The manifest, if it succeeded.
    pub manifest: Option<Manifest>,
    /// Map tasks.
    pub maps: usize,
    /// Reduce tasks.
    pub reduces: usize,
    /// Counters over committed attempts.
    pub counters: Counters,
    /// Wall time in seconds.
    pub wall_seconds: f64,
}

/// Run `wmr run`.
pub(super) fn run(args: RunArgs) -> Result<u8, Failure> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if slots == 0 {
        return Err(usage("--slots must be at least 1".into()));
    }
    let reducers = args.spec.reducers.unwrap_or(slots as u32);
    if reducers == 0 || reducers > 100_000 {
        return Err(usage(format!("--reducers {reducers} is out of range; use 1 to 100000")));
    }
    super::io_runtime(2)?.block_on(run_async(args, slots, reducers))
}

/// How long the embedded worker may go silent before it counts as lost.
const EMBEDDED_LEASE: Duration = Duration::from_secs(10);
/// Backup attempts for tasks slower than this, as on a cluster by default.
const EMBEDDED_BACKUP_AFTER: Duration = Duration::from_secs(5);

async fn run_async(args: RunArgs, slots: usize, reducers: u32) -> Result<u8, Failure> {
    let started = Instant::now();
    // Ctrl-C cancels the job (below) from now on, not only once it runs.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| infrastructure(format!("watching for Ctrl-C: {e}")))?;
    if let Some(addr) = args.http.filter(|a| !a.ip().is_loopback()) {
        return Err(usage(format!(
            "--http {addr}: `wmr run` serves its status page on loopback only, as it has no tokens; \
             use 127.0.0.1, or a `wmr coordinator --http --tokens` to show jobs to others"
        )));
    }
    let module_bytes = super::job_args::read_job_module(&args.spec.job).await?;
    // The same coordinator service as a cluster's, in this process: its
    // journal in memory, its store (for the module) in memory, and the
    // user's own rights (no prefixes, no ceilings).
    let store = Location::parse(&format!("memory://wmr-run-{}", JobId::generate()))
        .map_err(|e| infrastructure(error_chain(&e)))?;
    let runtime = Arc::new(args.compile.runtime()?);
    let config = ServiceConfig {
        lease: EMBEDDED_LEASE,
        backup_after: Some(EMBEDDED_BACKUP_AFTER),
        runtime: runtime.clone(),
        policy: SubmitPolicy {
            access: DataAccess::new(vec![], store.clone(), false),
            ceilings: Ceilings::unlimited(),
        },
    };
    let service = Service::open(store, (Journal::memory(), Vec::new()), config)
        .await
        .map_err(|e| infrastructure(error_chain(&e)))?;
    let user = Identity::anonymous();
    let _web = match args.http {
        Some(addr) => {
            let web = crate::web::start_coordinator(addr, Arc::new(service.clone().into()), None, None)
                .await
                .map_err(|e| infrastructure(format!("can't serve the status page on {addr}: {e}")))?;
            // On stderr: stdout carries the summary (or its JSON).
            let _ = writeln!(std::io::stderr(), "wmr run: status page on http://{}/", web.addr);
            Some(web)
        }
        None => None,
    };
    let setup = WorkerSetup {
        slots,
        name: "embedded".into(),
        runtime,
        pool: Arc::new(ComputePool::new(slots).map_err(|e| infrastructure(format!("starting compute threads: {e}")))?),
        metrics: Arc::new(crate::worker::metrics::WorkerMetrics::new()),
    };
    let link = Arc::new(LocalLink {
        service: service.clone(),
        identity: user.clone(),
    });
    // The in-process worker never drains: it ends with this process.
    let never_drain = tokio::sync::watch::channel(false).1;
    let _worker = SpawnedTask::spawn(run_worker(link, setup, never_drain, Duration::ZERO));
    // The split size counts the slots, so the worker registers first.
    while service.slots() < slots {
        service.changed_within(Duration::from_millis(50)).await;
    }
    let (digest, _) = service.upload_module(module_bytes).await.map_err(service_failure)?;
    let request = SubmitRequest {
        module: digest,
        module_name: args.spec.job.clone(),
        inputs: args.spec.input.clone(),
        output: args.spec.output.clone(),
        reducers,
        split_size: args.spec.split_size.as_u64(),
        format: args.spec.format,
        params: args.spec.params.clone(),
        max_attempts: args.spec.max_attempts,
        limits: args.spec.limits(),
        overwrite: args.spec.overwrite,
        speculation: true,
        task_memory: args.spec.task_memory.as_u64(),
        skip_bad_records: args.spec.skip_bad_records,
        total_order: args.spec.total_order,
    };
    let id = service
        .submit(request, user.name.clone())
        .await
        .map_err(service_failure)?;
    let show_progress = std::io::stderr().is_terminal() && !args.json && !args.quiet;
    let interrupted = tokio::select! {
        () = wait_for_end(&service, &user, &id, show_progress) => false,
        signal = interrupt.recv() => signal.is_some(),
    };
    if interrupted {
        // Ctrl-C: cancel as a cluster would, so attempts stop and the
        // scratch data goes; then report the job as it ended.
        service.cancel(&user, &id).await.map_err(service_failure)?;
        wait_for_end(&service, &user, &id, false).await;
    }
    let job = service
        .job_view(&user, &id, |j| (j.name.clone(), j.job.clone()))
        .map_err(service_failure)?;
    let (job_name, job) = job;
    let manifest = match job.state {
        JobState::Succeeded => Some(read_manifest(&args.spec.output).await?),
        _ => None,
    };
    let summary = RunSummary {
        job: id.to_string(),
        name: job_name,
        state: job.state,
        error: job.error.clone(),
        output: args.spec.output.clone(),
        manifest,
        maps: job.maps.len(),
        reduces: job.reduces.len(),
        counters: job.counters(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&summary, args.json, args.quiet);
    match job.state {
        JobState::Succeeded => Ok(exit::SUCCESS),
        _ => Err(Failure {
            // The job did not fail for itself when the store did.
            code: if job.failure_kind == Some(crate::task::FailureKind::Storage) {
                exit::INFRASTRUCTURE
            } else {
                exit::JOB_FAILED
            },
            message: format!(
                "job {} ({}) failed: {}",
                summary.job,
                summary.name,
                job.error.unwrap_or_else(|| "unknown error".into())
            ),
        }),
    }
}

/// The `_SUCCESS` manifest of a committed output.
async fn read_manifest(output: &str) -> Result<Manifest, Failure> {
    let at = Location::parse(output)
        .map_err(|e| infrastructure(error_chain(&e)))?
        .child(crate::data::output::MANIFEST_NAME);
    let bytes = at
        .store
        .get(&at.path)
        .await
        .map_err(|e| infrastructure(format!("reading {}: {e}", at.display)))?
        .bytes()
        .await
        .map_err(|e| infrastructure(format!("reading {}: {e}", at.display)))?;
    serde_json::from_slice(&bytes).map_err(|e| infrastructure(format!("reading {}: {e}", at.display)))
}

/// Wait until job `id` has ended, drawing a progress bar if `show`.
async fn wait_for_end(service: &Service, user: &Identity, id: &JobId, show: bool) {
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    loop {
        let view = service.job_view(user, id, |j| {
            let job = &j.job;
            let bytes: u64 = job
                .splits
                .iter()
                .zip(&job.map_outputs)
                .filter(|(_, o)| o.is_some())
                .map(|(s, _)| s.size_hint())
                .sum();
            (job.is_finished(), job.progress(), bytes)
        });
        let Ok((finished, ((md, mt), (rd, rt)), bytes)) = view else {
            return;
        };
        if finished {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return;
        }
        if let Some(bar) = &bar {
            let mib_s = bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64().max(0.001);
            bar.set_length((mt + rt) as u64);
            bar.set_position((md + rd) as u64);
            bar.set_message(format!("maps {md}/{mt}  reduces {rd}/{rt}  {mib_s:.1} MiB/s"));
        }
        service.changed_within(Duration::from_millis(100)).await;
    }
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn print_summary(s: &RunSummary, json: bool, quiet: bool) {
    let mut out = std::io::stdout().lock();
    let text = if json {
        serde_json::to_string_pretty(s).unwrap_or_default() + "\n"
    } else if quiet {
        return;
    } else {
        let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
        let mut t = format!("{} ({}): {:?} in {:.2} s\n", s.name, s.job, s.state, s.wall_seconds).to_lowercase();
        t.push_str(&format!(
            "  tasks     {} maps, {} reduces, {} attempts retried\n",
            s.maps,
            s.reduces,
            c("wmr.attempts.retried")
        ));
        t.push_str(&format!(
            "  records   {} in, {} mapped, {} shuffled, {} out\n",
            c("wmr.map.input.records"),
            c("wmr.map.output.records"),
            c("wmr.shuffle.records"),
            c("wmr.reduce.output.records")
        ));
        t.push_str(&format!(
            "  bytes     {} in, {} shuffled, {} out\n",
            mib(c("wmr.map.input.bytes")),
            mib(c("wmr.shuffle.bytes")),
            mib(c("wmr.output.bytes"))
        ));
        let guest: Vec<String> = s
            .counters
            .iter()
            .filter(|(k, _)| !k.starts_with("wmr."))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !guest.is_empty() {
            t.push_str(&format!("  counters  {}\n", guest.join(" ")));
        }
        if let Some(m) = &s.manifest {
            t.push_str(&format!(
                "  output    {} ({} files and _SUCCESS)\n",
                s.output,
                m.files.len()
            ));
        }
        t
    };
    // A closed stdout (e.g. piped into `head`) is not an error.
    let _ = out.write_all(text.as_bytes());
}
