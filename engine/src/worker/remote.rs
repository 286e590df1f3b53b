//! `wmr worker`: a worker whose [`Link`] to the coordinator is gRPC. Job
//! modules are read from the coordinator's store, which registration names.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use tonic::Code;

use super::metrics::WorkerMetrics;
use super::{DrainSignal, Link, LinkError, WorkerSetup, run_worker};
use crate::compute::ComputePool;
use crate::data::Location;
use crate::error_chain;
use crate::layout::StoreLayout;
use crate::protocol::{Assignment, HeartbeatReply, JobRef, Outcome, Registration, ReportResult};
use crate::rpc::client::{self, AuthedChannel};
use crate::rpc::convert;
use crate::rpc::pb;
use crate::rpc::pb::worker_service_client::WorkerServiceClient;
use crate::runtime::Runtime;
use crate::{AttemptId, JobId, ModuleDigest, TaskId, WorkerId};

/// A worker's configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's address.
    pub coordinator: String,
    /// Task slots.
    pub slots: usize,
    /// This worker's name in logs and status.
    pub name: String,
    /// This worker's token, if the coordinator wants one.
    pub token: Option<crate::rpc::auth::Token>,
    /// How job modules are compiled.
    pub compiler: crate::runtime::Compiler,
    /// The machine's compile cache, if any.
    pub compile_cache: Option<crate::runtime::CompileCacheConfig>,
    /// TLS settings for an `https://` coordinator.
    pub tls: crate::rpc::tls::ClientTls,
    /// How long a drain waits for running attempts before handing them back.
    pub drain_timeout: Duration,
    /// What `/metrics` shows.
    pub metrics: Arc<WorkerMetrics>,
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The wasm runtime or the compute pool could not start.
    #[error("starting the worker: {0}")]
    Start(String),
}

/// The gRPC link: a client made at registration, reused by every call.
struct GrpcLink {
    config: WorkerConfig,
    client: tokio::sync::Mutex<Option<WorkerServiceClient<AuthedChannel>>>,
}

impl GrpcLink {
    async fn client(&self) -> Result<WorkerServiceClient<AuthedChannel>, LinkError> {
        self.client.lock().await.clone().ok_or(LinkError::Forgotten)
    }
}

/// A failed call: the coordinator forgot us, is away, or said no.
fn link_error(status: &tonic::Status) -> LinkError {
    match status.code() {
        Code::NotFound => LinkError::Forgotten,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            LinkError::Unavailable(client::explain(status))
        }
        _ => LinkError::Refused(client::explain(status)),
    }
}

#[async_trait::async_trait]
impl Link for GrpcLink {
    async fn register(&self, name: &str, slots: u32) -> Result<Registration, LinkError> {
        let channel = client::connect(&self.config.coordinator, &self.config.tls)
            .await
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        let mut client = client::workers(channel, self.config.token.clone());
        let reply = client
            .register_worker(pb::RegisterWorkerRequest {
                name: name.to_string(),
                slots,
            })
            .await
            .map_err(|s| LinkError::Unavailable(client::explain(&s)))?
            .into_inner();
        *self.client.lock().await = Some(client);
        Ok(Registration {
            secret: reply.worker_id,
            label: WorkerId(reply.label),
            lease: Duration::from_millis(reply.lease_ms.max(100)),
            store: reply.store,
        })
    }

    async fn poll(&self, reg: &Registration, wait: Duration) -> Result<Option<(JobRef, Assignment)>, LinkError> {
        let reply = self
            .client()
            .await?
            .poll_task(pb::PollTaskRequest {
                worker_id: reg.secret.clone(),
                wait_ms: wait.as_millis() as u64,
            })
            .await
            .map_err(|s| link_error(&s))?
            .into_inner();
        match reply.assignment {
            None => Ok(None),
            Some(a) => convert::assignment(a).map(Some).map_err(|e| {
                LinkError::Refused(format!(
                    "the coordinator sent an assignment this worker can't read: {e}"
                ))
            }),
        }
    }

    async fn heartbeat(
        &self,
        reg: &Registration,
        running: Vec<AttemptId>,
        hold: Duration,
    ) -> Result<HeartbeatReply, LinkError> {
        let reply = self
            .client()
            .await?
            .heartbeat(pb::HeartbeatRequest {
                worker_id: reg.secret.clone(),
                running_attempts: running.into_iter().map(|a| a.0).collect(),
                hold_ms: hold.as_millis() as u64,
            })
            .await
            .map_err(|s| link_error(&s))?
            .into_inner();
        Ok(HeartbeatReply {
            known: reply.known,
            cancel: reply.cancel_attempts.into_iter().map(AttemptId).collect(),
        })
    }

    async fn report(
        &self,
        reg: &Registration,
        job: &JobId,
        (task, attempt): (TaskId, AttemptId),
        outcome: &Outcome,
    ) -> Result<ReportResult, LinkError> {
        let reply = self
            .client()
            .await?
            .report_task(pb::ReportTaskRequest {
                worker_id: reg.secret.clone(),
                job_id: job.to_string(),
                task: Some(task.into()),
                attempt: attempt.0,
                outcome: Some(convert::outcome_to_pb(outcome)),
            })
            .await
            .map_err(|s| link_error(&s))?
            .into_inner();
        Ok(match pb::ReportResult::try_from(reply.result) {
            Ok(pb::ReportResult::Committed) => ReportResult::Committed,
            Ok(pb::ReportResult::WillRetry) => ReportResult::WillRetry,
            Ok(pb::ReportResult::JobFailed) => ReportResult::JobFailed,
            _ => ReportResult::Stale,
        })
    }

    async fn module(&self, reg: &Registration, digest: &ModuleDigest) -> Result<bytes::Bytes, LinkError> {
        let store = Location::parse(&reg.store).map_err(|e| LinkError::Refused(error_chain(&e)))?;
        let location = StoreLayout::new(store).module(digest);
        let unavailable = |e: object_store::Error| LinkError::Unavailable(format!("reading {}: {e}", location.display));
        location
            .store
            .get(&location.path)
            .await
            .map_err(unavailable)?
            .bytes()
            .await
            .map_err(unavailable)
    }

    async fn drain(&self, reg: &Registration) -> Result<(), LinkError> {
        let reply = self
            .client()
            .await?
            .drain_worker(pb::DrainWorkerRequest {
                worker_id: reg.secret.clone(),
            })
            .await
            .map_err(|s| link_error(&s))?
            .into_inner();
        if reply.known { Ok(()) } else { Err(LinkError::Forgotten) }
    }

    async fn leave(&self, reg: &Registration) -> Result<(), LinkError> {
        self.client()
            .await?
            .leave_cluster(pb::LeaveClusterRequest {
                worker_id: reg.secret.clone(),
            })
            .await
            .map_err(|s| link_error(&s))?;
        Ok(())
    }
}

/// Run a worker until the process is stopped, or until it has drained
/// after `drain` said to.
///
/// # Errors
/// Only if the worker cannot start; coordinator trouble is waited out.
pub async fn run_remote_worker(config: WorkerConfig, drain: DrainSignal) -> Result<(), Error> {
    let setup = WorkerSetup {
        slots: config.slots.max(1),
        name: config.name.clone(),
        runtime: Arc::new(
            Runtime::new(config.compiler.clone())
                .map_err(|e| Error::Start(error_chain(&e)))?
                .with_compile_cache(config.compile_cache.clone()),
        ),
        pool: Arc::new(ComputePool::new(config.slots.max(1)).map_err(|e| Error::Start(e.to_string()))?),
        metrics: config.metrics.clone(),
    };
    let drain_timeout = config.drain_timeout;
    let link = Arc::new(GrpcLink {
        config,
        client: tokio::sync::Mutex::new(None),
    });
    run_worker(link, setup, drain, drain_timeout).await;
    Ok(())
}
