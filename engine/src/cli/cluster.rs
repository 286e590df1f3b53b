//! `wmr coordinator` and `wmr worker`: the two long-running processes of a
//! cluster.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tracing::warn;

use super::client::ConnectionArgs;
use super::compile::CompileArgs;
use super::{Failure, exit, io_runtime};
use crate::coordinator::access::DataAccess;
use crate::coordinator::ceilings::Ceilings;
use crate::coordinator::grpc::{Security, bind, serve};
use crate::coordinator::journal::Journal;
use crate::coordinator::lease::{LeaseError, StoreLease};
use crate::coordinator::service::{Service, ServiceConfig, SubmitPolicy};
use crate::data::Location;
use crate::error_chain;
use crate::layout::StoreLayout;
use crate::rpc::auth::Tokens;
use crate::rpc::tls::ServerTls;
use crate::spawn::SpawnedTask;
use crate::worker::remote::{WorkerConfig, run_remote_worker};

/// Serve the job API and the worker protocol.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to listen on, e.g. 127.0.0.1:7070 (port 0 picks a free one;
    /// the address is printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where modules, shuffle data and the journal live: a directory,
    /// file://, or s3://bucket/prefix (AWS_* variables, AWS_ENDPOINT for a
    /// custom server).
    #[arg(long, value_name = "URL")]
    pub store: String,
    /// A worker silent this long is lost and its running attempts
    /// re-queued; a coordinator that has not renewed its hold on the store
    /// for this long loses it to a standby.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub lease: humantime::Duration,
    /// If another coordinator holds the store, wait, and take over (jobs,
    /// workers and all) when its lease lapses; without it, such a start is
    /// refused. Listens only once it holds the store.
    #[arg(long)]
    pub standby: bool,
    /// Near the end of a phase, start a backup attempt of a task that has run
    /// longer than this and three times the phase's mean (the first attempt
    /// to commit wins). Jobs opt out with `submit --no-speculation`.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub backup_after: humantime::Duration,
    /// The tokens file: one `TOKEN,NAME,ROLE` line per identity, ROLE
    /// `client` (submits, sees and cancels its own jobs), `admin` (every
    /// job), `worker` (runs tasks, nothing else) or `metrics` (reads
    /// /metrics on --http, nothing else). Every call must then carry one.
    #[arg(long, value_name = "PATH")]
    pub tokens: Option<std::path::PathBuf>,
    /// Listen on a non-loopback address with neither a token nor client
    /// certificates (anyone who can reach the port can then run code on the
    /// workers).
    #[arg(long)]
    pub insecure: bool,
    /// Serve TLS with this certificate chain (PEM); with --tls-key.
    /// Clients then connect to https://HOST:PORT.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require every client and worker to present a certificate signed by
    /// this CA (PEM): mutual TLS. Needs --tls-cert and --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub ca: Option<std::path::PathBuf>,
    /// Serve the status pages and Prometheus metrics (/metrics) over HTTP
    /// on this address, e.g. 127.0.0.1:7080 (port 0 picks a free one; the
    /// address is printed on stdout); over HTTPS with --tls-cert and
    /// --tls-key. With --tokens, every request needs a token: a browser
    /// logs in at /login, Prometheus sends a `metrics` token; a client sees
    /// only its own jobs.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Bounds on compiling a submitted module (to check it).
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Where jobs' data may be, and the most a job may ask for.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// What submitted jobs may use and ask for.
#[derive(Debug, Args)]
#[command(next_help_heading = "What jobs may use")]
pub struct PolicyArgs {
    /// A URL prefix (directory, file://, s3://bucket/prefix) under which
    /// jobs may read and write; repeat for several. With --tokens or
    /// client certificates, a job outside them is refused (and none is
    /// allowed until one is given). The coordinator's own --store is always
    /// refused.
    #[arg(long, value_name = "URL")]
    pub allow_prefix: Vec<String>,
    /// The most guest memory a job may ask for (--max-memory).
    #[arg(long, value_name = "SIZE", default_value = "4GiB")]
    pub ceiling_memory: bytesize::ByteSize,
    /// The longest guest call a job may ask for (--max-call-time).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub ceiling_call_time: humantime::Duration,
    /// The most one attempt may write (--max-output).
    #[arg(long, value_name = "SIZE", default_value = "64GiB")]
    pub ceiling_output: bytesize::ByteSize,
    /// The most guest log an attempt may keep (--max-log).
    #[arg(long, value_name = "SIZE", default_value = "16MiB")]
    pub ceiling_log: bytesize::ByteSize,
    /// The longest input record a job may allow (--max-record).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub ceiling_record: bytesize::ByteSize,
    /// The largest task memory budget a job may ask for (--task-memory).
    #[arg(long, value_name = "SIZE", default_value = "4GiB")]
    pub ceiling_task_memory: bytesize::ByteSize,
    /// The most reduce tasks a job may ask for (--reducers).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub ceiling_reducers: u32,
    /// The most map tasks a job's input may make.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub ceiling_map_tasks: u64,
    /// The largest job module accepted.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    pub ceiling_module: bytesize::ByteSize,
}

impl PolicyArgs {
    fn ceilings(&self) -> Ceilings {
        Ceilings {
            memory_bytes: self.ceiling_memory.as_u64(),
            call_time: *self.ceiling_call_time,
            output_bytes: self.ceiling_output.as_u64(),
            log_bytes: self.ceiling_log.as_u64(),
            record_bytes: self.ceiling_record.as_u64(),
            task_memory_bytes: self.ceiling_task_memory.as_u64(),
            reducers: self.ceiling_reducers,
            map_tasks: self.ceiling_map_tasks,
            module_bytes: self.ceiling_module.as_u64(),
        }
    }
}

/// Run tasks for a coordinator.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator and how to reach it.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Task slots running at once [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
    /// On SIGTERM or Ctrl-C, the worker drains: it takes no more attempts,
    /// finishes the running ones and leaves. Attempts still running after
    /// this long are handed back to run elsewhere. A second signal stops
    /// it at once.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub drain_timeout: humantime::Duration,
    /// Serve this worker's Prometheus metrics at /metrics on this address,
    /// e.g. 0.0.0.0:9090 (they carry no job's data and need no token).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Bounds on compiling a job's module.
    #[command(flatten)]
    pub compile: CompileArgs,
}

pub(super) fn coordinator(args: CoordinatorArgs) -> Result<u8, Failure> {
    let infra = |message: String| Failure {
        code: exit::INFRASTRUCTURE,
        message,
    };
    let usage = |message: String| Failure {
        code: exit::USAGE,
        message,
    };
    let tokens = args
        .tokens
        .as_deref()
        .map(Tokens::from_file)
        .transpose()
        .map_err(|e| usage(e.to_string()))?
        .map(std::sync::Arc::new);
    let tls = ServerTls::from_flags(args.tls_cert.as_deref(), args.tls_key.as_deref(), args.ca.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let public = !args.listen.ip().is_loopback();
    let authenticated = tokens.is_some() || tls.as_ref().is_some_and(ServerTls::requires_client_certificates);
    if public && !authenticated && !args.insecure {
        return Err(usage(format!(
            "refusing to listen on {} without a token: anyone who reaches it could run code on the workers; \
             give --tokens (or --ca for client certificates), or --insecure if the network is private",
            args.listen
        )));
    }
    if let Some(http) = args.http {
        if tokens.is_none() && authenticated {
            return Err(usage(
                "--http needs --tokens on a coordinator that requires client certificates: browsers and \
                 Prometheus prove who they are to the status page with a token"
                    .into(),
            ));
        }
        if !http.ip().is_loopback() && !authenticated && !args.insecure {
            return Err(usage(format!(
                "refusing to serve the status page on {http} without a token: anyone who reaches it could read \
                 every job; give --tokens, or --insecure if the network is private"
            )));
        }
        if !http.ip().is_loopback() && tokens.is_some() && tls.is_none() {
            warn!(
                "the status page on {http} is plain HTTP: tokens travel in clear text; give --tls-cert and \
                 --tls-key (it serves HTTPS with them, as gRPC does)"
            );
        }
    }
    if public && tokens.is_some() && tls.is_none() {
        warn!(
            "tokens travel in clear text on {}; give --tls-cert and --tls-key to encrypt it",
            args.listen
        );
    }
    let runtime = args.compile.runtime();
    io_runtime(2)?.block_on(async move {
        let store = Location::parse(&args.store).map_err(|e| Failure {
            code: exit::USAGE,
            message: error_chain(&e),
        })?;
        let lease: Duration = *args.lease;
        if lease < Duration::from_millis(100) {
            return Err(Failure {
                code: exit::USAGE,
                message: format!("--lease {} is too short; give at least 100ms", args.lease),
            });
        }
        let allowed = args
            .policy
            .allow_prefix
            .iter()
            .map(|p| Location::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure {
                code: exit::USAGE,
                message: format!("--allow-prefix: {}", error_chain(&e)),
            })?;
        let policy = SubmitPolicy {
            access: DataAccess::new(allowed, store.clone(), authenticated),
            ceilings: args.policy.ceilings(),
        };
        // The status page (and its /healthz) serves from the start: a
        // standby is alive while it waits; its pages serve once it takes over.
        let page: crate::web::ServiceSlot = std::sync::Arc::default();
        let _web = match args.http {
            Some(http) => {
                let https = tls
                    .as_ref()
                    .map(ServerTls::http_acceptor)
                    .transpose()
                    .map_err(|e| usage(e.to_string()))?;
                let scheme = if https.is_some() { "https" } else { "http" };
                let web = crate::web::start_coordinator(http, page.clone(), tokens.clone(), https)
                    .await
                    .map_err(|e| infra(format!("can't serve the status page on {http}: {e}")))?;
                super::print(&format!("wmr coordinator status page on {scheme}://{}/\n", web.addr));
                Some(web)
            }
            None => None,
        };
        // One coordinator per store: take it (or wait for it) before
        // reading the journal, and keep it while serving.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        let holder = format!("{}:{} for {}", host.trim(), std::process::id(), args.listen);
        let hold = StoreLease::take(&StoreLayout::new(store.clone()), &holder, lease, args.standby)
            .await
            .map_err(|e| match e {
                LeaseError::Held { .. } => usage(e.to_string()),
                e => infra(e.to_string()),
            })?;
        let journal = Journal::open(&store).await.map_err(|e| infra(error_chain(&e)))?;
        let runtime = runtime?;
        let config = ServiceConfig {
            lease,
            backup_after: Some(*args.backup_after),
            runtime: std::sync::Arc::new(runtime),
            policy,
        };
        let state = Service::open(store, journal, config)
            .await
            .map_err(|e| infra(error_chain(&e)))?;
        let _ = page.set(state.clone());
        let tls_on = tls.is_some();
        let listener = bind(args.listen)
            .await
            .map_err(|e| infra(format!("can't listen on {}: {e}", args.listen)))?;
        let addr = listener.local_addr().map_err(|e| infra(e.to_string()))?;
        {
            let mut out = std::io::stdout().lock();
            // Scripts and tests read the bound address from this line.
            let scheme = if tls_on { "https" } else { "http" };
            let _ = writeln!(
                out,
                "wmr coordinator listening on {scheme}://{addr}, store {}",
                args.store
            );
            let _ = out.flush();
        }
        let _renewing = SpawnedTask::spawn(keep_the_store(hold, std::sync::Arc::downgrade(&state)));
        let service = state.clone();
        let mut signals = super::StopSignals::watch();
        let (stop_reason, stopped) = tokio::sync::oneshot::channel::<String>();
        let shutdown = async move {
            let interrupted = async move { signals.next().await };
            tokio::select! {
                () = interrupted => {}
                // The journal could not be written: stop serving at once.
                reason = service.stopped() => {
                    let _ = stop_reason.send(reason);
                }
            }
        };
        let serving = serve(state, listener, Security { tokens, tls }, shutdown);
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => {
                served.map_err(|e| infra(format!("serving on {addr}: {}", error_chain(&e))))?;
                Ok(exit::SUCCESS)
            }
            Ok(reason) = stopped => {
                // Open calls (long polls, watches) get a moment to end.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut serving).await;
                Err(infra(reason))
            }
        }
    })
}

/// Renew the hold on the store while the service lives; stop the service
/// once the store is lost (taken, or not renewed within the lease).
async fn keep_the_store(hold: StoreLease, service: std::sync::Weak<Service>) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(hold.renew_every()).await;
        let Some(service) = service.upgrade() else { return };
        match hold.renew().await {
            Ok(()) => renewed = tokio::time::Instant::now(),
            Err(e @ LeaseError::Taken { .. }) => return service.stop(e.to_string()),
            Err(e) if renewed.elapsed() >= hold.ttl() => {
                return service.stop(format!(
                    "{e}; the hold on the store lapsed, so another coordinator may take it: this one stops"
                ));
            }
            Err(e) => warn!(error = %e, "renewing the hold on the store failed; trying again"),
        }
    }
}

pub(super) fn worker(args: WorkerArgs) -> Result<u8, Failure> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if slots == 0 {
        return Err(Failure {
            code: exit::USAGE,
            message: "--slots must be at least 1".into(),
        });
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let (token, tls) = args.connection.load()?;
    let config = WorkerConfig {
        compiler: args.compile.compiler()?,
        compile_cache: args.compile.cache(),
        token,
        tls,
        coordinator: args.connection.coordinator,
        slots,
        name: format!("{}:{}", host.trim(), std::process::id()),
        drain_timeout: *args.drain_timeout,
        metrics: std::sync::Arc::new(crate::worker::metrics::WorkerMetrics::new()),
    };
    io_runtime(2)?.block_on(async move {
        let _metrics = match args.metrics {
            Some(addr) => {
                let metrics = config.metrics.clone();
                let served = crate::web::start_metrics(addr, std::sync::Arc::new(move || metrics.encode()))
                    .await
                    .map_err(|e| Failure {
                        code: exit::INFRASTRUCTURE,
                        message: format!("can't serve metrics on {addr}: {e}"),
                    })?;
                super::print(&format!("wmr worker metrics on http://{}/metrics\n", served.addr));
                Some(served)
            }
            None => None,
        };
        let mut signals = super::StopSignals::watch();
        let (drain, drain_signal) = tokio::sync::watch::channel(false);
        let worker = run_remote_worker(config, drain_signal);
        tokio::pin!(worker);
        tokio::select! {
            ran = &mut worker => ran,
            () = signals.next() => {
                let _ = drain.send(true);
                tokio::select! {
                    ran = &mut worker => ran,
                    // A second signal: stop now; the running attempts are
                    // lost and run again elsewhere.
                    () = signals.next() => Ok(()),
                }
            }
        }
        .map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: error_chain(&e),
        })?;
        Ok(exit::SUCCESS)
    })
}
