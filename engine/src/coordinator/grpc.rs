//! `wmr coordinator` over gRPC: the job service for clients and the worker
//! service, each handler decoding its request, calling the coordinator
//! [`Service`], and encoding the answer. [`status`] is the one place a
//! [`ServiceError`] becomes a gRPC status.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use super::cluster::ClusterJob;
use super::service::{ErrorKind, Service, ServiceError, SubmitRequest};
use crate::limits::MAX_MODULE_BYTES;
use crate::protocol::status::JobStatusDoc;
use crate::rpc::auth::{Api, Authenticate, Tokens, caller};
use crate::rpc::convert;
use crate::rpc::pb;
use crate::rpc::pb::job_service_server::{JobService, JobServiceServer};
use crate::rpc::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use crate::rpc::tls::ServerTls;
use crate::{AttemptId, JobId};

/// The largest message a worker may send.
const MAX_WORKER_MESSAGE: usize = 4 << 20;

/// The gRPC status of a service failure.
pub fn status(e: ServiceError) -> Status {
    let code = match e.kind {
        ErrorKind::Invalid | ErrorKind::JobCode => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::Conflict => tonic::Code::FailedPrecondition,
        ErrorKind::TooLarge => tonic::Code::ResourceExhausted,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Internal => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

/// The client-facing service.
pub struct JobApi(pub Arc<Service>);

/// The worker-facing service.
pub struct WorkerApi(pub Arc<Service>);

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::JobStatus, Status>> + Send>>;

fn parse_job(id: &str) -> Result<JobId, Status> {
    Ok(convert::job_id("request", id)?)
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn upload_module(
        &self,
        request: Request<Streaming<pb::ModuleChunk>>,
    ) -> Result<Response<pb::UploadModuleResponse>, Status> {
        let mut stream = request.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.try_next().await? {
            let size = (bytes.len() + chunk.data.len()) as u64;
            // Refuse as soon as it is too big, not once it is all here.
            self.0
                .check_module_size(size.min(MAX_MODULE_BYTES as u64 + 1))
                .map_err(status)?;
            bytes.extend_from_slice(&chunk.data);
        }
        let (digest, size) = self.0.upload_module(bytes.into()).await.map_err(status)?;
        Ok(Response::new(pb::UploadModuleResponse {
            digest: digest.as_str().to_string(),
            size,
        }))
    }

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let owner = caller(&request).name;
        let r = request.into_inner();
        let submit = SubmitRequest {
            module: convert::digest("SubmitJobRequest", &r.module_digest)?,
            module_name: r.module_name,
            inputs: r.inputs,
            output: r.output,
            reducers: r.reducers,
            split_size: r.split_size,
            format: convert::output_format(r.format),
            params: convert::params(r.params),
            max_attempts: r.max_attempts,
            limits: convert::limits(r.limits),
            overwrite: r.overwrite,
            speculation: !r.no_speculation,
            task_memory: r.task_memory,
            skip_bad_records: r.skip_bad_records,
            total_order: r.total_order,
        };
        let id = self.0.submit(submit, owner).await.map_err(status)?;
        Ok(Response::new(pb::SubmitJobResponse { job_id: id.to_string() }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        let caller = caller(&request);
        let id = parse_job(&request.into_inner().job_id)?;
        let job = self.0.job_view(&caller, &id, |j| status_pb(j, true)).map_err(status)?;
        // What it shows is journaled before it is shown.
        self.0.journaled().await.map_err(status)?;
        Ok(Response::new(job))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self.0.jobs_view(&caller(&request), |j| status_pb(j, false));
        self.0.journaled().await.map_err(status)?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type WatchJobStream = StatusStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<StatusStream>, Status> {
        let caller = caller(&request);
        let id = parse_job(&request.into_inner().job_id)?;
        let service = self.0.clone();
        service.job_view(&caller, &id, |_| ()).map_err(status)?;
        // Send the status now, then on every change (or every second, for
        // progress), until one shows the job ended.
        let stream = futures::stream::unfold(Some((service, id, true)), move |s| {
            let caller = caller.clone();
            async move {
                let (service, id, first) = s?;
                if !first {
                    service.changed_within(Duration::from_secs(1)).await;
                }
                let status = match service.job_view(&caller, &id, |j| status_pb(j, false)) {
                    Ok(s) => service.journaled().await.map(|()| s),
                    Err(e) => Err(e),
                }
                .map_err(status);
                let ended = match &status {
                    Ok(s) => matches!(
                        pb::JobState::try_from(s.state),
                        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
                    ),
                    Err(_) => true,
                };
                Some((status, (!ended).then_some((service, id, false))))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = caller(&request);
        let id = parse_job(&request.into_inner().job_id)?;
        self.0.cancel(&caller, &id).await.map_err(status)?;
        let state = self
            .0
            .job_view(&caller, &id, |j| status_pb(j, false).state)
            .map_err(status)?;
        Ok(Response::new(pb::CancelJobResponse { state }))
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let reg = self.0.register(&caller, &r.name, r.slots);
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: reg.secret,
            label: reg.label.0,
            lease_ms: reg.lease.as_millis() as u64,
            store: reg.store,
        }))
    }

    async fn poll_task(&self, request: Request<pb::PollTaskRequest>) -> Result<Response<pb::PollTaskResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let found = self
            .0
            .poll(&caller, &r.worker_id, Duration::from_millis(r.wait_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PollTaskResponse {
            assignment: found.map(|(job, a)| convert::assignment_to_pb(&job, &a)),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let running: Vec<AttemptId> = r.running_attempts.into_iter().map(AttemptId).collect();
        let reply = self
            .0
            .heartbeat(&caller, &r.worker_id, &running, Duration::from_millis(r.hold_ms))
            .await;
        Ok(Response::new(pb::HeartbeatResponse {
            known: reply.known,
            cancel_attempts: reply.cancel.into_iter().map(|a| a.0).collect(),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let caller = caller(&request);
        let known = self.0.drain(&caller, &request.into_inner().worker_id);
        Ok(Response::new(pb::DrainWorkerResponse { known }))
    }

    async fn leave_cluster(
        &self,
        request: Request<pb::LeaveClusterRequest>,
    ) -> Result<Response<pb::LeaveClusterResponse>, Status> {
        let caller = caller(&request);
        self.0.leave(&caller, &request.into_inner().worker_id).await;
        Ok(Response::new(pb::LeaveClusterResponse {}))
    }

    async fn report_task(
        &self,
        request: Request<pb::ReportTaskRequest>,
    ) -> Result<Response<pb::ReportTaskResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let job = parse_job(&r.job_id)?;
        let task = crate::TaskId::try_from(r.task)?;
        let outcome = convert::outcome(r.outcome)?;
        let result = self
            .0
            .report(&caller, &r.worker_id, (&job, task, AttemptId(r.attempt)), outcome)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReportTaskResponse {
            result: pb::ReportResult::from(result) as i32,
        }))
    }
}

fn status_pb(j: &ClusterJob, tasks: bool) -> pb::JobStatus {
    let input_bytes_done = j
        .job
        .splits
        .iter()
        .zip(&j.job.map_outputs)
        .filter(|(_, o)| o.is_some())
        .map(|(s, _)| s.size_hint())
        .sum();
    convert::job_status_to_pb(&JobStatusDoc::of(j, tasks), input_bytes_done)
}

/// Serve both services, health and reflection on `listener` until `shutdown`
/// resolves.
/// With tokens or client certificates, each service takes only the roles it
/// serves (health and reflection stay open, for probes); with TLS settings,
/// every connection is TLS.
///
/// # Errors
/// If the server fails.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    security: Security,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let Security { tokens, tls } = security;
    let certificates = tls.as_ref().is_some_and(ServerTls::requires_client_certificates);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<JobServiceServer<JobApi>>().await;
    health_reporter.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    // Reflection in both versions: grpcurl speaks v1, Python's grpcio
    // reflection client and many GUI tools still speak v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .ok();
    // No Nagle: a report's answer, then the next poll, are small writes
    // that would otherwise wait on the peer's delayed ACK (40 ms a task).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        // A client that fails the handshake is dropped by tonic, which logs
        // it at debug level (`RUST_LOG=tonic=debug`); it never reaches a service.
        server = server.tls_config(tls.config())?;
    }
    let mut router = server
        .add_service(health)
        .add_service(InterceptedService::new(
            JobServiceServer::new(JobApi(service.clone())).max_decoding_message_size(64 << 20),
            Authenticate {
                tokens: tokens.clone(),
                certificates,
                service: Api::Jobs,
            },
        ))
        .add_service(InterceptedService::new(
            // Workers send reports and heartbeats, small by construction.
            WorkerServiceServer::new(WorkerApi(service)).max_decoding_message_size(MAX_WORKER_MESSAGE),
            Authenticate {
                tokens,
                certificates,
                service: Api::Workers,
            },
        ));
    if let Some(reflection) = reflection {
        router = router.add_service(reflection);
    }
    if let Some(reflection) = reflection_alpha {
        router = router.add_service(reflection);
    }
    router.serve_with_incoming_shutdown(incoming, shutdown).await
}

/// Who may call the coordinator: the tokens file naming every identity and
/// its role, and TLS (with client certificates if it has a client CA).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The tokens file, if the coordinator has one.
    pub tokens: Option<Arc<Tokens>>,
    /// TLS settings; `None` serves plain HTTP/2.
    pub tls: Option<ServerTls>,
}

/// Bind `addr` for [`serve`].
///
/// # Errors
/// If the address can't be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod status_tests {
    use std::time::{Duration, SystemTime};

    use crate::coordinator::cluster::ClusterJob;
    use crate::protocol::status::JobStatusDoc;
    use crate::protocol::{Assignment, Outcome};
    use crate::rpc::convert::{job_status_doc, job_status_to_pb};
    use crate::task::{AttemptFailure, FailureKind};

    #[test]
    fn a_status_crosses_the_wire_typed_and_comes_back_the_same() {
        let mut job = crate::coordinator::job::test_job(2, 1);
        let (w, now) = (
            crate::WorkerId("w1-1".into()),
            SystemTime::UNIX_EPOCH + Duration::from_secs(9),
        );
        let a = job.next_assignment(&w, now, None).expect("work");
        let (task, attempt) = a.task_and_attempt();
        let failure = AttemptFailure::new(FailureKind::Limit, "over --max-memory");
        job.report(task, attempt, Outcome::Failed(failure), now);
        let Some(Assignment::Map(_)) = job.next_assignment(&w, now, None) else {
            panic!("a map")
        };
        let j = ClusterJob {
            job_ref: crate::protocol::JobRef {
                job: job.spec.id.clone(),
                module: crate::ModuleDigest::of(b"m"),
                params: vec![],
                limits: Default::default(),
            },
            job,
            name: "wc".into(),
            owner: "alice".into(),
            submitted: now,
            ended: None,
        };
        let doc = JobStatusDoc::of(&j, true);
        let back = job_status_doc(&job_status_to_pb(&doc, 0)).expect("readable");
        assert_eq!(back, doc);
        let failed = &back.tasks[0].attempts[0];
        assert_eq!(
            (failed.state.as_str(), failed.kind),
            ("failed", Some(FailureKind::Limit))
        );
    }
}
