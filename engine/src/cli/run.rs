//! `wmr run`: the embedded mode. One process runs the coordinator logic and
//! N task slots through the same scheduler and task code a cluster uses.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::TryStreamExt;
use serde::Serialize;

use super::compile::CompileArgs;
use super::job_args::JobArgs;
use super::{Failure, exit};
use crate::coordinator::{Coordinator, Job, JobSpec, JobState, remove_all};
use crate::data::output::Manifest;
use crate::data::{Location, check_output_outside, plan_map_inputs};
use crate::layout::JobLayout;
use crate::runtime::Runtime;
use crate::shuffle::Partitioner;
use crate::task::{Counters, JobContext, sample_partitioner};
use crate::worker::{ComputePool, error_chain, load_module, run_slots};
use crate::{JobId, WorkerId};

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

/// A task-layer failure before the job ran (sampling): bad input is a usage
/// error, a store outage infrastructure, a guest failure the job's.
fn task_failure(doing: &str, e: crate::task::Error) -> Failure {
    let code = match &e {
        crate::task::Error::Data(crate::data::Error::Io { .. }) => exit::INFRASTRUCTURE,
        crate::task::Error::Data(_) => exit::USAGE,
        _ => exit::JOB_FAILED,
    };
    Failure {
        code,
        message: format!("{doing}: {}", error_chain(&e)),
    }
}

fn data_failure(e: crate::data::Error) -> Failure {
    use crate::data::Error as E;
    let code = match e {
        E::Io { .. } => exit::INFRASTRUCTURE,
        _ => exit::USAGE,
    };
    Failure {
        code,
        message: error_chain(&e),
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

async fn run_async(args: RunArgs, slots: usize, reducers: u32) -> Result<u8, Failure> {
    let started = Instant::now();
    let limits = args.spec.limits();
    // Validate everything before any work: the module, the output, the input.
    let module_bytes = super::job_args::read_job_module(&args.spec.job).await?;
    let pool = Arc::new(ComputePool::new(slots).map_err(|e| Failure {
        code: exit::INFRASTRUCTURE,
        message: format!("starting compute threads: {e}"),
    })?);
    let wasm = Arc::new(Runtime::new(args.compile.compiler()?).map_err(|e| Failure {
        code: exit::INFRASTRUCTURE,
        message: error_chain(&e),
    })?);
    let module = load_module(&wasm, &pool, &args.spec.job, module_bytes, &args.spec.params, limits)
        .await
        .map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: e.to_string(),
        })?
        .map_err(|e| usage(error_chain(&e)))?;
    let output = Location::parse(&args.spec.output).map_err(data_failure)?;
    check_output_outside(&args.spec.input, &output).map_err(data_failure)?;
    let existing: Vec<_> = output
        .store
        .list(Some(&output.path))
        .try_collect()
        .await
        .map_err(|e| data_failure(crate::data::Error::io(&output.display, "listing", e)))?;
    if !existing.is_empty() {
        if !args.spec.overwrite {
            return Err(usage(format!(
                "output {} already exists and is not empty; choose another --output or pass --overwrite",
                args.spec.output
            )));
        }
        remove_all(&output).await.map_err(data_failure)?;
    }
    let splits = plan_map_inputs(&args.spec.input, args.spec.split_size.as_u64(), slots)
        .await
        .map_err(data_failure)?;
    let ctx = JobContext {
        runtime: wasm,
        module: module.clone(),
        pool,
    };
    let partitioner = if (args.spec.total_order || module.info().total_order) && reducers > 1 {
        sample_partitioner(&ctx, &splits, reducers)
            .await
            .map_err(|e| task_failure("sampling keys for a total order", e))?
    } else {
        Partitioner::Hash
    };
    let id = JobId::generate();
    let spec = JobSpec {
        work_dir: JobLayout::scratch_for(&output, &id),
        id: id.clone(),
        inputs: args.spec.input.clone(),
        output: args.spec.output.clone(),
        reducers,
        format: args.spec.format,
        max_attempts: args.spec.max_attempts,
        // One machine's slots: a slow task is slow on any of them.
        speculation: false,
        task_memory: args.spec.task_memory.as_u64(),
        skip_bad_records: args.spec.skip_bad_records,
        partitioner,
    };
    let coordinator = Arc::new(Coordinator::new(Job::new(spec, splits)));
    let show_progress = std::io::stderr().is_terminal() && !args.json && !args.quiet;
    let slots_done = run_slots(coordinator.clone(), ctx, WorkerId("embedded".into()), slots);
    let progress = progress_loop(coordinator.clone(), show_progress);
    tokio::select! {
        () = slots_done => {}
        () = progress => {}
    }
    let job_name = module.info().name.clone();
    let manifest = if coordinator.snapshot().state == JobState::Committing {
        Some(coordinator.commit(&job_name).await.map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: error_chain(&e),
        })?)
    } else {
        None
    };
    let job = coordinator.snapshot();
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
            code: exit::JOB_FAILED,
            message: format!(
                "job {} ({}) failed: {}",
                summary.job,
                summary.name,
                job.error.unwrap_or_else(|| "unknown error".into())
            ),
        }),
    }
}

/// Draw a progress bar until the job leaves the running state.
async fn progress_loop(coordinator: Arc<Coordinator>, show: bool) {
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
        let job = coordinator.snapshot();
        if job.state != JobState::Running {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            // Keep pending forever: the slots future ends the select.
            std::future::pending::<()>().await;
        }
        if let Some(bar) = &bar {
            let ((md, mt), (rd, rt)) = job.progress();
            let bytes: u64 = job
                .splits
                .iter()
                .enumerate()
                .filter(|(i, _)| job.map_outputs[*i].is_some())
                .map(|(_, s)| s.size_hint())
                .sum();
            let mib_s = bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64().max(0.001);
            bar.set_length((mt + rt) as u64);
            bar.set_position((md + rd) as u64);
            bar.set_message(format!("maps {md}/{mt}  reduces {rd}/{rt}  {mib_s:.1} MiB/s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
