//! `wmr worker`: task slots serving a coordinator over gRPC. Each slot long-
//! polls for an assignment, runs it (the same task code as `wmr run`), and
//! reports; a heartbeat keeps the lease and learns which attempts to stop.
//! When the coordinator forgets the worker (its lease expired, or the
//! coordinator restarted) or cannot be reached, the worker registers again
//! by itself, with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use tokio::sync::Notify;
use tonic::Code;
use tracing::{Instrument, info, info_span, warn};

use super::{ComputePool, error_chain, load_module, run_assignment};
use crate::coordinator::Outcome;
use crate::coordinator::cluster::JobRef;
use crate::data::Location;
use crate::rpc::client;
use crate::rpc::convert;
use crate::rpc::pb;
use crate::rpc::pb::worker_service_client::WorkerServiceClient;
use crate::runtime::{JobModule, Runtime};
use crate::task::JobContext;
use crate::{AttemptId, JobId, WorkerId};

/// How long one `PollTask` waits at the coordinator.
const POLL_WAIT: Duration = Duration::from_secs(10);

/// A worker's configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's address.
    pub coordinator: String,
    /// Task slots.
    pub slots: usize,
    /// This worker's name in logs and status.
    pub name: String,
    /// The cluster's token, if it has one.
    pub token: Option<crate::rpc::auth::Token>,
    /// How job modules are compiled.
    pub compiler: crate::runtime::Compiler,
    /// TLS settings for an `https://` coordinator.
    pub tls: crate::rpc::tls::ClientTls,
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The wasm runtime or the compute pool could not start.
    #[error("starting the worker: {0}")]
    Start(String),
}

/// How many jobs' modules a worker keeps loaded; the least recently used
/// goes first (and its compiled code with it, once no attempt holds it).
const LOADED_JOBS: usize = 16;

/// Compiled modules, configured per job, shared by the slots.
struct Modules {
    runtime: Arc<Runtime>,
    pool: Arc<ComputePool>,
    /// Each job's module, and when an attempt last asked for it.
    loaded: Mutex<HashMap<JobId, (JobModule, Instant)>>,
}

/// Drop the least recently used entries of `map` until at most `keep` remain.
fn evict_least_recent<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, (V, Instant)>, keep: usize) {
    while map.len() > keep {
        let Some(oldest) = map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) else {
            return;
        };
        map.remove(&oldest);
    }
}

impl Modules {
    async fn context(&self, store: &str, job: &JobRef) -> Result<JobContext, String> {
        let cached = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&job.job)
            .map(|(module, used)| {
                *used = Instant::now();
                module.clone()
            });
        let module = match cached {
            Some(m) => m,
            None => {
                let store = Location::parse(store).map_err(|e| error_chain(&e))?;
                let location = crate::layout::StoreLayout::new(store).module(&job.module);
                let bytes = location
                    .store
                    .get(&location.path)
                    .await
                    .map_err(|e| format!("fetching module {} from {}: {e}", job.module, location.display))?
                    .bytes()
                    .await
                    .map_err(|e| format!("fetching module {} from {}: {e}", job.module, location.display))?;
                let what = job.module.to_string();
                let module = load_module(&self.runtime, &self.pool, &what, bytes, &job.params, job.limits)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| error_chain(&e))?;
                let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
                loaded.insert(job.job.clone(), (module.clone(), Instant::now()));
                evict_least_recent(&mut loaded, LOADED_JOBS);
                module
            }
        };
        Ok(JobContext {
            runtime: self.runtime.clone(),
            module,
            pool: self.pool.clone(),
        })
    }
}

/// The attempts running on this worker, each with a way to stop it.
type Running = Arc<Mutex<HashMap<AttemptId, Arc<Notify>>>>;

/// One registration with the coordinator.
struct Session {
    client: WorkerServiceClient<client::AuthedChannel>,
    /// Its public name, for logs.
    id: WorkerId,
    /// The secret of the registration, which every call carries.
    secret: String,
    lease: Duration,
    store: String,
}

/// Run a worker until the process is stopped.
///
/// # Errors
/// Only if the worker cannot start; coordinator trouble is waited out.
pub async fn run_worker(config: WorkerConfig) -> Result<(), Error> {
    let modules = Arc::new(Modules {
        runtime: Arc::new(Runtime::new(config.compiler.clone()).map_err(|e| Error::Start(error_chain(&e)))?),
        pool: Arc::new(ComputePool::new(config.slots.max(1)).map_err(|e| Error::Start(e.to_string()))?),
        loaded: Mutex::new(HashMap::new()),
    });
    let running: Running = Arc::new(Mutex::new(HashMap::new()));
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = match register(&config).await {
            Ok(s) => {
                backoff = Duration::from_millis(100);
                s
            }
            Err(e) => {
                warn!(error = %e, "can't register with the coordinator; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        info!(worker = %session.id, "registered");
        let session = Arc::new(session);
        let heartbeat = heartbeat_loop(session.clone(), running.clone());
        let slots = futures::future::join_all(
            (0..config.slots.max(1)).map(|slot| slot_loop(session.clone(), modules.clone(), running.clone(), slot)),
        );
        // Either ends when the coordinator no longer knows this worker.
        tokio::select! {
            () = heartbeat => {}
            _ = slots => {}
        }
        warn!(worker = %session.id, "the coordinator no longer knows this worker; registering again");
    }
}

async fn register(config: &WorkerConfig) -> Result<Session, String> {
    let channel = client::connect(&config.coordinator, &config.tls)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = client::workers(channel, config.token.clone());
    let reply = client
        .register_worker(pb::RegisterWorkerRequest {
            name: config.name.clone(),
            slots: config.slots as u32,
        })
        .await
        .map_err(|s| client::explain(&s))?
        .into_inner();
    Ok(Session {
        client,
        id: WorkerId(reply.label),
        secret: reply.worker_id,
        lease: Duration::from_millis(reply.lease_ms.max(100)),
        store: reply.store,
    })
}

/// Heartbeat every third of the lease; returns once the coordinator says it
/// does not know this worker, or has not answered for a whole lease.
async fn heartbeat_loop(session: Arc<Session>, running: Running) {
    let every = session.lease / 3;
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let attempts: Vec<u64> = running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|a| a.0)
            .collect();
        let mut client = session.client.clone();
        let request = pb::HeartbeatRequest {
            worker_id: session.secret.clone(),
            running_attempts: attempts,
        };
        match tokio::time::timeout(session.lease, client.heartbeat(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                if !reply.known {
                    return;
                }
                last_answer = tokio::time::Instant::now();
                let running = running.lock().unwrap_or_else(|p| p.into_inner());
                for a in reply.cancel_attempts {
                    if let Some(stop) = running.get(&AttemptId(a)) {
                        info!(attempt = a, "stopping an attempt the coordinator no longer needs");
                        stop.notify_one();
                    }
                }
            }
            Ok(Err(status)) => warn!(error = %client::explain(&status), "heartbeat failed"),
            Err(_) => warn!("heartbeat timed out"),
        }
        if last_answer.elapsed() > session.lease {
            return;
        }
    }
}

/// One slot: poll, run, report, until the coordinator forgets this worker.
async fn slot_loop(session: Arc<Session>, modules: Arc<Modules>, running: Running, slot: usize) {
    loop {
        let mut client = session.client.clone();
        let polled = client
            .poll_task(pb::PollTaskRequest {
                worker_id: session.secret.clone(),
                wait_ms: POLL_WAIT.as_millis() as u64,
            })
            .await;
        let assignment = match polled {
            Ok(reply) => match reply.into_inner().assignment {
                Some(a) => a,
                None => continue,
            },
            Err(status) if status.code() == Code::NotFound => return,
            Err(status) => {
                warn!(slot, error = %client::explain(&status), "polling for a task failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (job, assignment) = match convert::assignment(assignment) {
            Ok(a) => a,
            Err(e) => {
                warn!(slot, error = %e, "the coordinator sent an assignment this worker can't read");
                continue;
            }
        };
        let (task, attempt) = assignment.task_and_attempt();
        let span = info_span!("attempt", worker = %session.id, slot, job = %job.job, %task, attempt = attempt.0);
        let stop = Arc::new(Notify::new());
        running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(attempt, stop.clone());
        let outcome = async {
            let ctx = match modules.context(&session.store, &job).await {
                Ok(ctx) => ctx,
                Err(error) => {
                    return Some(Outcome::Failed {
                        error,
                        retryable: true,
                        bad_record: None,
                    });
                }
            };
            tokio::select! {
                outcome = run_assignment(&ctx, &assignment) => Some(outcome),
                () = stop.notified() => None,
            }
        }
        .instrument(span.clone())
        .await;
        running.lock().unwrap_or_else(|p| p.into_inner()).remove(&attempt);
        let Some(outcome) = outcome else { continue };
        report(&session, &job, task, attempt, &outcome).instrument(span).await;
    }
}

/// Report an outcome, retrying while the coordinator is unreachable: a
/// committed map output is worth delivering. Gives up after a few leases;
/// the attempt is then lost and re-run elsewhere.
async fn report(session: &Session, job: &JobRef, task: crate::TaskId, attempt: AttemptId, outcome: &Outcome) {
    let request = pb::ReportTaskRequest {
        worker_id: session.secret.clone(),
        job_id: job.job.to_string(),
        task: Some(task.into()),
        attempt: attempt.0,
        outcome: Some(convert::outcome_to_pb(outcome)),
    };
    let give_up = tokio::time::Instant::now() + session.lease * 3;
    loop {
        let mut client = session.client.clone();
        match client.report_task(request.clone()).await {
            Ok(reply) => {
                let result = pb::ReportResult::try_from(reply.into_inner().result);
                info!(?result, "reported");
                return;
            }
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) => {
                if tokio::time::Instant::now() > give_up {
                    warn!(error = %client::explain(&status), "giving up reporting");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => {
                warn!(error = %client::explain(&status), "report refused");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_modules_go_first() {
        let start = Instant::now();
        let mut map: HashMap<&str, ((), Instant)> = HashMap::new();
        for (i, job) in ["a", "b", "c", "d"].into_iter().enumerate() {
            map.insert(job, ((), start + Duration::from_secs(i as u64)));
        }
        // "a" was used again most recently.
        map.get_mut("a").unwrap().1 = start + Duration::from_secs(10);
        evict_least_recent(&mut map, 2);
        let mut left: Vec<_> = map.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, ["a", "d"]);
    }
}
