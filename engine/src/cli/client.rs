//! The client commands: `wmr submit`, `wmr status`, `wmr jobs`, `wmr cancel`.
//! Each talks to a coordinator (`--coordinator` or `WMR_COORDINATOR`) and
//! prints for people, or JSON with `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::Code;

use super::job_args::JobArgs;
use super::{Failure, exit, io_runtime, print};
use crate::protocol::status::{JobStatusDoc, UserState};
use crate::rpc::auth::Token;
use crate::rpc::client::AuthedChannel;
use crate::rpc::pb::job_service_client::JobServiceClient;
use crate::rpc::tls::ClientTls;
use crate::rpc::{client, convert, pb};

/// How to reach the coordinator: its address, the cluster's token and TLS.
/// Shared by the client commands and `wmr worker`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// The coordinator: host:port, http://host:port, or https://host:port
    /// for TLS (a bare host:port means https when --ca or --tls-cert is
    /// given). Several, comma-separated (a coordinator and its standbys),
    /// are tried in turn.
    #[arg(long, env = "WMR_COORDINATOR", value_name = "URL")]
    pub coordinator: String,
    /// A file holding the cluster's token (else `WMR_TOKEN`, if set).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the coordinator's TLS
    /// certificate [default: the system's trusted roots].
    #[arg(long, env = "WMR_CA", value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// This process's own certificate (PEM), for a coordinator that
    /// requires client certificates; with --tls-key.
    #[arg(long, env = "WMR_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "WMR_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

impl ConnectionArgs {
    /// The token and TLS settings these flags name.
    pub(super) fn load(&self) -> Result<(Option<Token>, ClientTls), Failure> {
        let usage = |message: String| Failure {
            code: exit::USAGE,
            message,
        };
        let token = Token::from_flag_or_env(self.token_file.as_deref()).map_err(|e| usage(e.to_string()))?;
        let tls = ClientTls::from_flags(self.ca.as_deref(), self.tls_cert.as_deref(), self.tls_key.as_deref())
            .map_err(|e| usage(e.to_string()))?;
        Ok((token, tls))
    }
}

/// Where the coordinator is, and how to print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The coordinator and how to reach it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Submit a job to a coordinator.
#[derive(Debug, Args)]
#[command(after_help = super::exit::HELP)]
pub struct SubmitArgs {
    /// The coordinator and output style.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job and its data.
    #[command(flatten)]
    pub spec: JobArgs,
    /// Wait for the job to end (progress bar on a terminal); exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Never run backup attempts of slow tasks.
    #[arg(long)]
    pub no_speculation: bool,
}

/// Show a job's status.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator and output style.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job id.
    pub job: String,
}

/// Cancel a job.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The coordinator and output style.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job id.
    pub job: String,
}

fn rpc_failure(what: &str, status: &tonic::Status) -> Failure {
    let code = match status.code() {
        Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded => exit::INFRASTRUCTURE,
        _ => exit::USAGE,
    };
    Failure {
        code,
        message: format!("{what}: {}", client::explain(status)),
    }
}

async fn connect(args: &ClientArgs) -> Result<JobServiceClient<AuthedChannel>, Failure> {
    let (token, tls) = args.connection.load()?;
    let channel = client::connect(&args.connection.coordinator, &tls)
        .await
        .map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: e.to_string(),
        })?;
    Ok(client::jobs(channel, token))
}

fn doc_of(status: &pb::JobStatus) -> Result<JobStatusDoc, Failure> {
    convert::job_status_doc(status).map_err(|e| Failure {
        code: exit::INFRASTRUCTURE,
        message: format!("the coordinator sent a status this client can't read: {e}"),
    })
}

/// A status for people: one line, then details.
fn render(doc: &JobStatusDoc) -> String {
    let mut t = format!(
        "{} ({}): {}\n  tasks     maps {}/{}, reduces {}/{}\n",
        doc.job,
        doc.name,
        doc.state.as_str(),
        doc.maps.done,
        doc.maps.total,
        doc.reduces.done,
        doc.reduces.total
    );
    if let Some(e) = &doc.error {
        t.push_str(&format!("  error     {e}\n"));
    }
    let counters: Vec<String> = doc.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !counters.is_empty() {
        t.push_str(&format!("  counters  {}\n", counters.join(" ")));
    }
    for task in &doc.tasks {
        for a in task.attempts.iter().filter(|a| a.error.is_some()) {
            t.push_str(&format!(
                "  {} {} attempt {} on {} failed: {}\n",
                task.phase,
                task.index,
                a.attempt,
                a.worker,
                a.error.as_deref().unwrap_or("")
            ));
        }
    }
    if doc.state == UserState::Succeeded {
        t.push_str(&format!("  output    {}\n", doc.output));
    }
    t
}

fn exit_for(doc: &JobStatusDoc) -> Result<u8, Failure> {
    Ok(if doc.state == UserState::Succeeded {
        exit::SUCCESS
    } else if doc.failure_kind == Some(crate::task::FailureKind::Storage) {
        // The job did not fail for itself: the store did.
        exit::INFRASTRUCTURE
    } else {
        exit::JOB_FAILED
    })
}

/// A local path made absolute against this process's directory (as the
/// user meant it); URLs and absolute paths as they are.
fn absolute(location: &str) -> String {
    if location.contains("://") || std::path::Path::new(location).is_absolute() {
        return location.to_string();
    }
    match std::env::current_dir() {
        Ok(dir) => dir.join(location).to_string_lossy().into_owned(),
        // The coordinator will then say where it looked.
        Err(_) => location.to_string(),
    }
}

pub(super) fn submit(args: SubmitArgs) -> Result<u8, Failure> {
    io_runtime(2)?.block_on(async move {
        let spec = &args.spec;
        let bytes = super::job_args::read_job_module(&spec.job).await?;
        let mut jobs = connect(&args.client).await?;
        let chunks: Vec<pb::ModuleChunk> = bytes
            .chunks(1 << 20)
            .map(|c| pb::ModuleChunk { data: c.to_vec() })
            .collect();
        let uploaded = jobs
            .upload_module(futures::stream::iter(chunks))
            .await
            .map_err(|s| rpc_failure("uploading the module", &s))?
            .into_inner();
        let request = pb::SubmitJobRequest {
            module_digest: uploaded.digest,
            // The coordinator runs elsewhere: paths are this shell's.
            inputs: spec.input.iter().map(|i| absolute(i)).collect(),
            output: absolute(&spec.output),
            reducers: spec.reducers.unwrap_or(1),
            split_size: spec.split_size.as_u64(),
            format: pb::OutputFormat::from(spec.format) as i32,
            params: convert::params_to_pb(&spec.params),
            max_attempts: spec.max_attempts,
            limits: Some(spec.limits().into()),
            overwrite: spec.overwrite,
            no_speculation: args.no_speculation,
            task_memory: spec.task_memory.as_u64(),
            total_order: spec.total_order,
            module_name: spec.job.clone(),
            skip_bad_records: spec.skip_bad_records,
        };
        let job = jobs
            .submit_job(request)
            .await
            .map_err(|s| rpc_failure("submitting the job", &s))?
            .into_inner()
            .job_id;
        if !args.wait {
            if args.client.json {
                print(&format!("{}\n", serde_json::json!({ "job": job })));
            } else {
                print(&format!("{job}\n"));
            }
            return Ok(exit::SUCCESS);
        }
        let last = watch(&mut jobs, &job, !args.client.json).await?;
        // The final status with every task, as `wmr status` shows it.
        let full = jobs
            .get_job(pb::GetJobRequest { job_id: job.clone() })
            .await
            .map_err(|s| rpc_failure("reading the job's status", &s))?
            .into_inner();
        let doc = doc_of(&full).unwrap_or(last);
        if args.client.json {
            print(&(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"));
        } else {
            print(&render(&doc));
        }
        exit_for(&doc)
    })
}

/// Follow a job until it ends, drawing progress on a terminal.
async fn watch(jobs: &mut JobServiceClient<AuthedChannel>, job: &str, show: bool) -> Result<JobStatusDoc, Failure> {
    let bar = (show && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = std::time::Instant::now();
    // A watch can break (coordinator restart): watch again until the job ends.
    loop {
        let stream = jobs
            .watch_job(pb::WatchJobRequest {
                job_id: job.to_string(),
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(rpc_failure("watching the job", &s)),
        };
        loop {
            match stream.message().await {
                Ok(Some(status)) => {
                    let doc = doc_of(&status)?;
                    if let Some(bar) = &bar {
                        let mib_s = status.input_bytes_done as f64
                            / (1 << 20) as f64
                            / started.elapsed().as_secs_f64().max(0.001);
                        bar.set_length(u64::from(status.maps_total + status.reduces_total));
                        bar.set_position(u64::from(status.maps_done + status.reduces_done));
                        bar.set_message(format!(
                            "maps {}/{}  reduces {}/{}  {mib_s:.1} MiB/s",
                            status.maps_done, status.maps_total, status.reduces_done, status.reduces_total
                        ));
                    }
                    if doc.state.is_final() {
                        if let Some(bar) = &bar {
                            bar.finish_and_clear();
                        }
                        return Ok(doc);
                    }
                }
                // The stream ended or broke before the job did: watch again.
                Ok(None) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

pub(super) fn status(args: StatusArgs) -> Result<u8, Failure> {
    io_runtime(1)?.block_on(async move {
        let mut jobs = connect(&args.client).await?;
        let status = jobs
            .get_job(pb::GetJobRequest {
                job_id: args.job.clone(),
            })
            .await
            .map_err(|s| rpc_failure(&format!("job {}", args.job), &s))?
            .into_inner();
        let doc = doc_of(&status)?;
        if args.client.json {
            print(&(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"));
        } else {
            print(&render(&doc));
        }
        Ok(exit::SUCCESS)
    })
}

pub(super) fn jobs(args: ClientArgs) -> Result<u8, Failure> {
    io_runtime(1)?.block_on(async move {
        let mut jobs = connect(&args).await?;
        let list = jobs
            .list_jobs(pb::ListJobsRequest {})
            .await
            .map_err(|s| rpc_failure("listing jobs", &s))?
            .into_inner();
        let docs: Vec<JobStatusDoc> = list.jobs.iter().map(doc_of).collect::<Result<_, _>>()?;
        if args.json {
            print(&(serde_json::to_string_pretty(&docs).unwrap_or_default() + "\n"));
        } else {
            let mut t = String::new();
            if docs.is_empty() {
                t.push_str("no jobs\n");
            }
            for d in &docs {
                let state = d.state.as_str();
                t.push_str(&format!(
                    "{}  {:<10} {:<9} maps {}/{}  reduces {}/{}\n",
                    d.job, d.name, state, d.maps.done, d.maps.total, d.reduces.done, d.reduces.total
                ));
            }
            print(&t);
        }
        Ok(exit::SUCCESS)
    })
}

pub(super) fn cancel(args: CancelArgs) -> Result<u8, Failure> {
    io_runtime(1)?.block_on(async move {
        let mut jobs = connect(&args.client).await?;
        let reply = jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: args.job.clone(),
            })
            .await
            .map_err(|s| rpc_failure(&format!("cancelling job {}", args.job), &s))?
            .into_inner();
        let state = match pb::JobState::try_from(reply.state) {
            Ok(pb::JobState::Cancelled) => "cancelled",
            Ok(pb::JobState::Succeeded) => "succeeded",
            Ok(pb::JobState::Failed) => "failed",
            _ => "running",
        };
        if args.client.json {
            print(&format!("{}\n", serde_json::json!({ "job": args.job, "state": state })));
        } else {
            print(&format!("{}: {state}\n", args.job));
        }
        Ok(exit::SUCCESS)
    })
}
