//! `wmr coordinator`: the job service for clients and the worker service,
//! over one [`Cluster`], with the journal making every accepted job, commit
//! and ending durable before it is acknowledged.
//!
//! Every state change happens under the cluster lock, and its journal event
//! is queued under that same lock, so the journal's order is the order of
//! the changes. The reply waits until the event is durable.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::auth::{Authenticate, Identity, Service, Tokens};
use super::convert;
use super::pb;
use super::pb::job_service_server::{JobService, JobServiceServer};
use super::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use super::tls::ServerTls;
use crate::coordinator::access::DataAccess;
use crate::coordinator::ceilings::Ceilings;
use crate::coordinator::cluster::{Cluster, ClusterJob, JobRef};
use crate::coordinator::journal::{Event, Journal, TaskOutput};
use crate::coordinator::status::{JobStatusDoc, UserState};
use crate::coordinator::{Job, JobSpec, JobState, Outcome, ReportResult, commit_output, remove_all};
use crate::data::{Location, plan_map_inputs};
use crate::layout::{JobLayout, StoreLayout};
use crate::runtime::limits::MAX_MODULE_BYTES;
use crate::runtime::{Compiler, Runtime};
use crate::spawn::SpawnedTask;
use crate::worker::{ComputePool, error_chain, load_module};
use crate::{AttemptId, JobId, ModuleDigest, WorkerId};

/// Longest a `PollTask` waits before answering "nothing yet".
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// The coordinator's shared state.
pub struct CoordinatorState {
    cluster: Mutex<Cluster>,
    /// Wakes pollers and watchers after any change.
    changed: Notify,
    journal: Journal,
    store: Location,
    runtime: Arc<Runtime>,
    pool: Arc<ComputePool>,
    /// Wakes the committer (see [`serve`]) when a job's reduces are all in.
    commit_wanted: Notify,
    /// What jobs may use and ask for.
    policy: SubmitPolicy,
    /// Checks submitted modules (configure, sampling) apart from each
    /// other and from the rest of the coordinator.
    validation: ComputePool,
    /// Outputs of submits in progress, so two jobs never write one output.
    claims: Mutex<Vec<(JobId, Location)>>,
}

/// What submitted jobs may use and ask for: the operator's data prefixes
/// and ceilings.
#[derive(Debug, Clone)]
pub struct SubmitPolicy {
    /// Where jobs' data may be.
    pub access: DataAccess,
    /// The most a job may ask for.
    pub ceilings: Ceilings,
}

/// The largest message a worker may send.
const MAX_WORKER_MESSAGE: usize = 4 << 20;

/// How many submitted modules are checked at once; the rest wait.
const VALIDATIONS_AT_ONCE: usize = 4;
/// The longest `configure` may run at submit, whatever the job's limit.
const CONFIGURE_AT_SUBMIT: Duration = Duration::from_secs(10);

/// Errors starting the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] crate::coordinator::journal::Error),
    /// The wasm runtime or the compute pool could not start.
    #[error("starting the coordinator's runtime: {0}")]
    Runtime(String),
}

fn lock(m: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    // Every change is made whole under the lock, so a panic elsewhere (our
    // bug) leaves a consistent state behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CoordinatorState {
    /// Open the store's journal, replay it, and start a new run. Workers
    /// must heartbeat within `lease`; slow tasks get backup attempts once
    /// they have run `backup_after` (never if `None`); submitted modules are
    /// checked by compiling them with `compiler`.
    ///
    /// # Errors
    /// If the journal can't be read or written, or the runtime can't start.
    pub async fn open(
        store: Location,
        lease: Duration,
        backup_after: Option<Duration>,
        compiler: Compiler,
        policy: SubmitPolicy,
    ) -> Result<Arc<Self>, StartError> {
        let (journal, events) = Journal::open(&store).await?;
        let runs = events.iter().filter(|e| matches!(e, Event::Started { .. })).count() as u64;
        let mut cluster = Cluster::new(lease, (runs + 1) << 40, backup_after);
        replay(&mut cluster, events);
        journal.append(vec![Event::Started { at: SystemTime::now() }]).await?;
        let runtime = Runtime::new(compiler).map_err(|e| StartError::Runtime(error_chain(&e)))?;
        let pool = ComputePool::new(1).map_err(|e| StartError::Runtime(e.to_string()))?;
        let validation = ComputePool::new(VALIDATIONS_AT_ONCE).map_err(|e| StartError::Runtime(e.to_string()))?;
        let state = Arc::new(CoordinatorState {
            cluster: Mutex::new(cluster),
            changed: Notify::new(),
            journal,
            store,
            runtime: Arc::new(runtime),
            pool: Arc::new(pool),
            commit_wanted: Notify::new(),
            policy,
            validation,
            claims: Mutex::new(Vec::new()),
        });
        Ok(state)
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Accept a validated job: journal it, then schedule it.
    ///
    /// # Errors
    /// If the journal can't record it; it is then not accepted.
    pub async fn accept(
        &self,
        spec: JobSpec,
        splits: Vec<crate::data::MapInput>,
        job_ref: JobRef,
        name: String,
        owner: String,
    ) -> Result<(), crate::coordinator::journal::Error> {
        let id = spec.id.clone();
        let now = SystemTime::now();
        let pending = {
            let mut cluster = lock(&self.cluster);
            let pending = self.journal.queue(vec![Event::Submitted {
                spec: Box::new(spec.clone()),
                splits: splits.clone(),
                job_ref: job_ref.clone(),
                name: name.clone(),
                owner: owner.clone(),
                at: now,
            }]);
            cluster.add_job(ClusterJob {
                job: Job::new(spec, splits),
                job_ref,
                name,
                owner,
                submitted: now,
                ended: None,
            });
            pending
        };
        pending.durable().await?;
        info!(job = %id, "job accepted");
        self.notify();
        Ok(())
    }

    /// Check, plan and accept a submitted job for `owner`; returns its id.
    /// Nothing of the job runs, and nothing in its output is deleted, until
    /// every check has passed.
    ///
    /// # Errors
    /// A status naming what is wrong: a bad request, data outside the
    /// allowed prefixes, a limit over its ceiling, a module that does not
    /// load or rejects its parameters, an output in use or not empty, or a
    /// store that fails.
    pub async fn submit(&self, r: pb::SubmitJobRequest, owner: String) -> Result<JobId, Status> {
        let invalid = |e: &dyn std::error::Error| Status::invalid_argument(error_chain(e));
        let digest = convert::digest("SubmitJobRequest", &r.module_digest)?;
        if r.inputs.is_empty() {
            return Err(Status::invalid_argument("no inputs; give at least one --input"));
        }
        if r.reducers == 0 || r.reducers > 100_000 {
            return Err(Status::invalid_argument(format!(
                "--reducers {} is out of range; use 1 to 100000",
                r.reducers
            )));
        }
        let limits = convert::limits(r.limits);
        let task_memory = if r.task_memory == 0 {
            crate::coordinator::job::DEFAULT_TASK_MEMORY
        } else {
            r.task_memory
        };
        self.policy
            .ceilings
            .check_job(&limits, task_memory, r.reducers)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Where the data is: the output and every input's base now, every
        // file the inputs expand to once planned.
        let output = Location::parse(&r.output).map_err(|e| invalid(&e))?;
        let access = &self.policy.access;
        access.check_output(&r.output, &output).map_err(|e| invalid(&e))?;
        for input in &r.inputs {
            let base = Location::parse(crate::data::input_base(input)).map_err(|e| invalid(&e))?;
            access.check_input(input, &base).map_err(|e| invalid(&e))?;
        }
        crate::data::check_output_outside(&r.inputs, &output).map_err(|e| invalid(&e))?;
        let id = JobId::generate();
        let claim = self.claim_output(&id, &output)?;
        let existing: Vec<_> = output
            .store
            .list(Some(&output.path))
            .try_collect()
            .await
            .map_err(|e| Status::unavailable(format!("listing output {}: {e}", output.display)))?;
        if !existing.is_empty() && !r.overwrite {
            return Err(Status::already_exists(format!(
                "output {} already exists and is not empty; choose another --output or pass --overwrite",
                r.output
            )));
        }
        let job_ref = JobRef {
            job: id.clone(),
            module: digest.clone(),
            params: convert::params(r.params),
            limits,
        };
        let module = self.validate_module(&job_ref).await?;
        let split_size = if r.split_size == 0 {
            crate::data::DEFAULT_SPLIT_SIZE
        } else {
            r.split_size
        };
        let slots = lock(&self.cluster).slots();
        let splits = plan_map_inputs(&r.inputs, split_size, slots)
            .await
            .map_err(|e| match e {
                crate::data::Error::Io { .. } => Status::unavailable(error_chain(&e)),
                _ => Status::invalid_argument(error_chain(&e)),
            })?;
        self.policy
            .ceilings
            .check_map_tasks(splits.len())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        for split in splits.iter().flat_map(|m| &m.splits) {
            let file = Location::parse(&split.file).map_err(|e| invalid(&e))?;
            access.check_input(&split.file, &file).map_err(|e| invalid(&e))?;
        }
        // Range partitioning samples the job's keys now, running its map on
        // the first records of a few splits (bounded like any guest call).
        let partitioner = if (r.total_order || module.info().total_order) && r.reducers > 1 {
            let ctx = crate::task::JobContext {
                runtime: self.runtime.clone(),
                module: module.clone(),
                pool: self.pool.clone(),
            };
            crate::task::sample_partitioner(&ctx, &splits, r.reducers)
                .await
                .map_err(|e| {
                    let message = format!("sampling keys for a total order: {}", error_chain(&e));
                    match e {
                        crate::task::Error::Data(crate::data::Error::Io { .. }) => Status::unavailable(message),
                        _ => Status::invalid_argument(message),
                    }
                })?
        } else {
            crate::shuffle::Partitioner::Hash
        };
        if !existing.is_empty() {
            // Every check passed: now the old output goes, its manifest
            // first, so that no reader takes what is left for complete.
            remove_old_output(&output, existing)
                .await
                .map_err(|e| Status::unavailable(error_chain(&e)))?;
        }
        let spec = JobSpec {
            work_dir: JobLayout::scratch_for(&output, &id),
            id: id.clone(),
            inputs: r.inputs,
            output: r.output,
            reducers: r.reducers,
            format: convert::output_format(r.format),
            max_attempts: if r.max_attempts == 0 {
                crate::coordinator::job::DEFAULT_MAX_ATTEMPTS
            } else {
                r.max_attempts
            },
            speculation: !r.no_speculation,
            skip_bad_records: r.skip_bad_records,
            task_memory,
            partitioner,
        };
        let name = module.info().name.clone();
        self.accept(spec, splits, job_ref, name, owner)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        drop(claim);
        Ok(id)
    }

    /// Load the job's module and run its `configure` once, to check it and
    /// its parameters: on the validation threads, with `configure` bounded
    /// by [`CONFIGURE_AT_SUBMIT`], so a slow one holds up no other submit.
    async fn validate_module(&self, job: &JobRef) -> Result<crate::runtime::JobModule, Status> {
        let bytes = self.module_bytes(&job.module).await?;
        self.policy
            .ceilings
            .check_module(bytes.len() as u64)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let limits = crate::runtime::Limits {
            max_call_time: job.limits.max_call_time.min(CONFIGURE_AT_SUBMIT),
            ..job.limits
        };
        let what = job.module.to_string();
        let checked = load_module(&self.runtime, &self.validation, &what, bytes, &job.params, limits)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                crate::runtime::Error::Internal(_) => Status::internal(error_chain(&e)),
                _ => Status::invalid_argument(error_chain(&e)),
            })?;
        // Tasks run with the job's own limits.
        Ok(checked.with_limits(job.limits))
    }

    /// Reserve `output` for job `id` while it is being submitted: refused if
    /// a running job, or another submit, writes there (or inside, or
    /// around it). The reservation ends when the guard drops; by then the
    /// job, if accepted, holds the output as a running job.
    fn claim_output(&self, id: &JobId, output: &Location) -> Result<OutputClaim<'_>, Status> {
        let overlaps = |other: &Location| output.is_within(other) || other.is_within(output);
        let cluster = lock(&self.cluster);
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let running = cluster
            .jobs()
            .find(|j| !j.job.is_finished() && Location::parse(&j.job.spec.output).is_ok_and(|o| overlaps(&o)));
        let busy = running
            .map(|j| j.job.spec.id.clone())
            .or_else(|| claims.iter().find(|(_, o)| overlaps(o)).map(|(j, _)| j.clone()));
        if let Some(other) = busy {
            return Err(Status::failed_precondition(format!(
                "output {} is in use by job {other}, which is still running; choose another --output, \
                 or wait for that job to end",
                output.display
            )));
        }
        claims.push((id.clone(), output.clone()));
        Ok(OutputClaim {
            state: self,
            id: id.clone(),
        })
    }

    /// Commit every job whose reduces have all committed but whose output is
    /// not yet in place (after a restart, or a report that just finished it).
    /// Only the committer task started by [`serve`] calls this, so no two
    /// commits of one job overlap.
    async fn commit_ready(&self) {
        let ready: Vec<ClusterJob> = lock(&self.cluster)
            .jobs()
            .filter(|j| j.job.state == JobState::Committing)
            .cloned()
            .collect();
        for j in ready {
            let id = j.job.spec.id.clone();
            let result = commit_output(&j.job, &j.name).await;
            let now = SystemTime::now();
            let pending = {
                let mut cluster = lock(&self.cluster);
                let Some(cj) = cluster.job_mut(&id) else { continue };
                match &result {
                    Ok(_) => {
                        cj.job.committed();
                        info!(job = %id, "output committed");
                    }
                    Err(e) => {
                        warn!(job = %id, error = %error_chain(e), "committing output failed");
                        cj.job.restore_end(JobState::Failed, Some(error_chain(e)));
                    }
                }
                cj.ended = Some(now);
                self.journal.queue(vec![Event::Ended {
                    job: id.clone(),
                    state: cj.job.state,
                    error: cj.job.error.clone(),
                    at: now,
                }])
            };
            if let Err(e) = pending.durable().await {
                warn!(job = %id, error = %e, "journaling the end of a job failed");
            }
            self.notify();
        }
    }

    /// The status of job `id`, if `caller` may see it: another tenant's job
    /// is as absent as one that never existed.
    fn status(&self, id: &JobId, caller: &Identity, tasks: bool) -> Result<pb::JobStatus, Status> {
        let cluster = lock(&self.cluster);
        let j = cluster
            .job(id)
            .filter(|j| caller.may_see(&j.owner))
            .ok_or_else(|| no_job(id))?;
        Ok(status_pb(j, tasks))
    }

    async fn module_bytes(&self, digest: &ModuleDigest) -> Result<bytes::Bytes, Status> {
        let object = StoreLayout::new(self.store.clone()).module(digest);
        match object.store.get(&object.path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| Status::unavailable(format!("reading module {digest} from the store: {e}"))),
            Err(object_store::Error::NotFound { .. }) => Err(Status::failed_precondition(format!(
                "module {digest} was never uploaded; upload it with UploadModule first"
            ))),
            Err(e) => Err(Status::unavailable(format!(
                "reading module {digest} from the store: {e}"
            ))),
        }
    }
}

/// A reservation of an output by a submit in progress; see
/// [`CoordinatorState::claim_output`].
struct OutputClaim<'a> {
    state: &'a CoordinatorState,
    id: JobId,
}

impl Drop for OutputClaim<'_> {
    fn drop(&mut self) {
        let mut claims = self.state.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims.retain(|(id, _)| *id != self.id);
    }
}

/// Delete an old output's files, listed before: `_SUCCESS` first, so the
/// output never looks complete with files missing.
async fn remove_old_output(
    output: &Location,
    mut files: Vec<object_store::ObjectMeta>,
) -> Result<(), crate::data::Error> {
    let manifest = output.child(crate::data::output::MANIFEST_NAME).path;
    files.sort_by_key(|m| m.location != manifest);
    for meta in files {
        match output.store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(crate::data::Error::io(&output.display, "deleting the old output in", e)),
        }
    }
    Ok(())
}

fn no_job(id: &JobId) -> Status {
    Status::not_found(format!("no job {id} on this coordinator; `wmr jobs` lists yours"))
}

fn status_pb(j: &ClusterJob, tasks: bool) -> pb::JobStatus {
    let doc = JobStatusDoc::of(j, tasks);
    let state = match doc.state {
        UserState::Queued => pb::JobState::Queued,
        UserState::Running => pb::JobState::Running,
        UserState::Succeeded => pb::JobState::Succeeded,
        UserState::Failed => pb::JobState::Failed,
        UserState::Cancelled => pb::JobState::Cancelled,
    };
    let input_bytes_done = j
        .job
        .splits
        .iter()
        .zip(&j.job.map_outputs)
        .filter(|(_, o)| o.is_some())
        .map(|(s, _)| s.size_hint())
        .sum();
    pb::JobStatus {
        job_id: doc.job.clone(),
        name: doc.name.clone(),
        state: state as i32,
        error: doc.error.clone().unwrap_or_default(),
        output: doc.output.clone(),
        maps_done: doc.maps.done as u32,
        maps_total: doc.maps.total as u32,
        reduces_done: doc.reduces.done as u32,
        reduces_total: doc.reduces.total as u32,
        counters: doc.counters.clone().into_iter().collect(),
        input_bytes_done,
        submitted_ms: doc.submitted_ms,
        ended_ms: doc.ended_ms.unwrap_or(0),
        detail_json: serde_json::to_string(&doc).unwrap_or_default(),
    }
}

/// Rebuild the cluster's jobs from the journal.
fn replay(cluster: &mut Cluster, events: Vec<Event>) {
    for event in events {
        match event {
            Event::Started { .. } => {}
            Event::Submitted {
                spec,
                splits,
                job_ref,
                name,
                owner,
                at,
            } => cluster.add_job(ClusterJob {
                job: Job::new(*spec, splits),
                job_ref,
                name,
                owner,
                submitted: at,
                ended: None,
            }),
            Event::Committed {
                job,
                task,
                attempt,
                worker,
                output,
                started,
                at,
            } => {
                if let Some(j) = cluster.job_mut(&job) {
                    let outcome = match output {
                        TaskOutput::Map(m) => Outcome::Map(m),
                        TaskOutput::Reduce(r) => Outcome::Reduce(r),
                    };
                    j.job.restore_commit(task, attempt, worker, outcome, (started, at));
                }
            }
            Event::Failed {
                job,
                task,
                attempt,
                worker,
                error,
                retryable,
                bad_record,
                started,
                at,
            } => {
                if let Some(j) = cluster.job_mut(&job) {
                    j.job
                        .restore_failure(task, attempt, worker, error, (retryable, bad_record), (started, at));
                }
            }
            Event::Ended { job, state, error, at } => {
                if let Some(j) = cluster.job_mut(&job) {
                    j.job.restore_end(state, error);
                    j.ended = Some(at);
                }
            }
        }
    }
}

/// The client-facing service.
pub struct JobApi(pub Arc<CoordinatorState>);

/// The worker-facing service.
pub struct WorkerApi(pub Arc<CoordinatorState>);

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
            self.0
                .policy
                .ceilings
                .check_module(size.min(MAX_MODULE_BYTES as u64 + 1))
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            if size > MAX_MODULE_BYTES as u64 {
                return Err(Status::resource_exhausted(format!(
                    "the module is larger than {} MiB, the most a coordinator accepts",
                    MAX_MODULE_BYTES >> 20
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let digest = ModuleDigest::of(&bytes);
        let size = bytes.len() as u64;
        let object = StoreLayout::new(self.0.store.clone()).module(&digest);
        if object.store.head(&object.path).await.is_err() {
            object
                .store
                .put(&object.path, PutPayload::from(bytes))
                .await
                .map_err(|e| Status::unavailable(format!("storing module {digest}: {e}")))?;
        }
        Ok(Response::new(pb::UploadModuleResponse {
            digest: digest.as_str().to_string(),
            size,
        }))
    }

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let owner = Identity::of(&request).name;
        let id = self.0.submit(request.into_inner(), owner).await?;
        Ok(Response::new(pb::SubmitJobResponse { job_id: id.to_string() }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        let caller = Identity::of(&request);
        let id = parse_job(&request.into_inner().job_id)?;
        Ok(Response::new(self.0.status(&id, &caller, true)?))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Identity::of(&request);
        let cluster = lock(&self.0.cluster);
        let jobs = cluster
            .jobs()
            .filter(|j| caller.may_see(&j.owner))
            .map(|j| status_pb(j, false))
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type WatchJobStream = StatusStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<StatusStream>, Status> {
        let caller = Identity::of(&request);
        let id = parse_job(&request.into_inner().job_id)?;
        let state = self.0.clone();
        state.status(&id, &caller, false)?;
        // Send the status now, then on every change (or every second, for
        // progress), until one shows the job ended.
        let stream = futures::stream::unfold(Some((state, id, true)), move |s| {
            let caller = caller.clone();
            async move {
                let (state, id, first) = s?;
                if !first {
                    let changed = state.changed.notified();
                    let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                }
                let status = state.status(&id, &caller, false);
                let ended = match &status {
                    Ok(s) => matches!(
                        pb::JobState::try_from(s.state),
                        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
                    ),
                    Err(_) => true,
                };
                Some((status, (!ended).then_some((state, id, false))))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = Identity::of(&request);
        let id = parse_job(&request.into_inner().job_id)?;
        let state = &self.0;
        let now = SystemTime::now();
        let (pending, work_dir) = {
            let mut cluster = lock(&state.cluster);
            let j = cluster
                .job_mut(&id)
                .filter(|j| caller.may_see(&j.owner))
                .ok_or_else(|| no_job(&id))?;
            if j.job.is_finished() || j.job.state == JobState::Committing {
                let state = status_pb(j, false).state;
                return Ok(Response::new(pb::CancelJobResponse { state }));
            }
            j.job.cancel();
            j.ended = Some(now);
            let pending = state.journal.queue(vec![Event::Ended {
                job: id.clone(),
                state: JobState::Cancelled,
                error: j.job.error.clone(),
                at: now,
            }]);
            (pending, j.job.spec.work_dir.clone())
        };
        pending
            .durable()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        state.notify();
        // Scratch data of a cancelled job is of no use to anyone.
        if let Ok(dir) = Location::parse(&work_dir)
            && let Err(e) = remove_all(&dir).await
        {
            warn!(job = %id, error = %error_chain(&e), "removing a cancelled job's scratch data");
        }
        Ok(Response::new(pb::CancelJobResponse {
            state: pb::JobState::Cancelled as i32,
        }))
    }
}

/// The worker whose registration secret `session` is, if `caller`
/// registered it.
fn worker_of(cluster: &Cluster, session: &str, caller: &Identity) -> Result<WorkerId, Status> {
    if session.is_empty() {
        return Err(Status::invalid_argument("worker_id is missing; register first"));
    }
    cluster.worker_of(session, &caller.name).ok_or_else(|| {
        Status::not_found(
            "this worker is not registered (its lease expired or the coordinator restarted); register again",
        )
    })
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = Identity::of(&request);
        let r = request.into_inner();
        let mut cluster = lock(&self.0.cluster);
        let name: String = r.name.chars().take(128).collect();
        let (id, session) = cluster.register(name.clone(), r.slots, caller.name, Instant::now());
        info!(worker = %id, %name, slots = r.slots, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: session,
            label: id.0,
            lease_ms: cluster.lease().as_millis() as u64,
            store: self.0.store.display.clone(),
        }))
    }

    async fn poll_task(&self, request: Request<pb::PollTaskRequest>) -> Result<Response<pb::PollTaskResponse>, Status> {
        let caller = Identity::of(&request);
        let r = request.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms).min(MAX_POLL_WAIT);
        loop {
            let changed = self.0.changed.notified();
            {
                let mut cluster = lock(&self.0.cluster);
                let worker = worker_of(&cluster, &r.worker_id, &caller)?;
                // Asking for work is a sign of life.
                cluster.heartbeat(&worker, Instant::now());
                if let Some((job, assignment)) = cluster.next_assignment(&worker, SystemTime::now()) {
                    return Ok(Response::new(pb::PollTaskResponse {
                        assignment: Some(convert::assignment_to_pb(&job, &assignment)),
                    }));
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(Response::new(pb::PollTaskResponse { assignment: None }));
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = Identity::of(&request);
        let r = request.into_inner();
        let mut cluster = lock(&self.0.cluster);
        let known = match cluster.worker_of(&r.worker_id, &caller.name) {
            Some(worker) => cluster.heartbeat(&worker, Instant::now()),
            None => false,
        };
        let running: Vec<AttemptId> = r.running_attempts.into_iter().map(AttemptId).collect();
        let cancel = if known {
            cluster.attempts_to_cancel(&running)
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::HeartbeatResponse {
            known,
            cancel_attempts: cancel.into_iter().map(|a| a.0).collect(),
        }))
    }

    async fn report_task(
        &self,
        request: Request<pb::ReportTaskRequest>,
    ) -> Result<Response<pb::ReportTaskResponse>, Status> {
        let caller = Identity::of(&request);
        let r = request.into_inner();
        let job = parse_job(&r.job_id)?;
        let task = crate::TaskId::try_from(r.task)?;
        let attempt = AttemptId(r.attempt);
        let outcome = convert::outcome(r.outcome)?;
        let state = &self.0;
        let now = SystemTime::now();
        let (result, pending, worker) = {
            let mut cluster = lock(&state.cluster);
            let worker = worker_of(&cluster, &r.worker_id, &caller)?;
            // An attempt is bound to the worker it was assigned to: nobody
            // else may report on it.
            if let Some(assigned) = cluster.assigned_worker(&job, task, attempt)
                && *assigned != worker
            {
                warn!(%job, %task, %attempt, %worker, %assigned, "refused a report about another worker's attempt");
                return Err(Status::permission_denied(format!(
                    "{task} attempt {attempt} of {job} was assigned to another worker; a worker reports only its own attempts"
                )));
            }
            let event = match &outcome {
                Outcome::Map(m) => Some(TaskOutput::Map(m.clone())),
                Outcome::Reduce(o) => Some(TaskOutput::Reduce(o.clone())),
                Outcome::Failed { .. } => None,
            };
            let failure = match &outcome {
                Outcome::Failed {
                    error,
                    retryable,
                    bad_record,
                } => Some((error.clone(), *retryable, *bad_record)),
                _ => None,
            };
            let started = cluster
                .job(&job)
                .and_then(|j| j.job.attempt_started(task, attempt))
                .unwrap_or(now);
            let result = cluster.report(&job, task, attempt, outcome, now);
            let mut events = Vec::new();
            match (result.clone(), event, failure) {
                (ReportResult::Committed, Some(output), _) => events.push(Event::Committed {
                    job: job.clone(),
                    task,
                    attempt,
                    worker: worker.clone(),
                    output,
                    started,
                    at: now,
                }),
                (ReportResult::WillRetry | ReportResult::JobFailed, _, Some((error, retryable, bad_record))) => {
                    events.push(Event::Failed {
                        job: job.clone(),
                        task,
                        attempt,
                        worker: worker.clone(),
                        error,
                        retryable,
                        bad_record,
                        started,
                        at: now,
                    });
                }
                _ => {}
            }
            if result == ReportResult::JobFailed
                && let Some(j) = cluster.job_mut(&job)
            {
                j.ended = Some(now);
                events.push(Event::Ended {
                    job: job.clone(),
                    state: JobState::Failed,
                    error: j.job.error.clone(),
                    at: now,
                });
            }
            let pending = (!events.is_empty()).then(|| state.journal.queue(events));
            (result, pending, worker)
        };
        if let Some(pending) = pending {
            pending
                .durable()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        if result == ReportResult::Stale {
            info!(%job, %task, %attempt, %worker, "refused a stale report");
        }
        state.notify();
        // The output is moved into place by the committer, so this report
        // (and the worker's slot) does not wait on the renames.
        state.commit_wanted.notify_one();
        Ok(Response::new(pb::ReportTaskResponse {
            result: pb::ReportResult::from(result) as i32,
        }))
    }
}

/// Serve both services, health and reflection on `listener` until `shutdown`
/// resolves; also expires silent workers and finishes interrupted commits.
/// With tokens or client certificates, each service takes only the roles it
/// serves (health and reflection stay open, for probes); with TLS settings,
/// every connection is TLS.
///
/// # Errors
/// If the server fails.
pub async fn serve(
    state: Arc<CoordinatorState>,
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
        .build_v1()
        .ok();
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .ok();
    let expiry_state = state.clone();
    let _expiry = SpawnedTask::spawn(async move {
        let every = (lock(&expiry_state.cluster).lease() / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let lost = lock(&expiry_state.cluster).expire(Instant::now(), SystemTime::now());
            for w in &lost {
                warn!(worker = %w, "worker lost: silent past its lease; its running attempts are re-queued");
            }
            if !lost.is_empty() {
                expiry_state.notify();
            }
        }
    });
    // The committer: moves each finished job's output into place. It looks
    // once at start, since a restart may find jobs whose reduces all
    // committed but whose output was not yet moved, then after each report.
    let commit_state = state.clone();
    let _commits = SpawnedTask::spawn(async move {
        loop {
            commit_state.commit_ready().await;
            commit_state.commit_wanted.notified().await;
        }
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        // A client that fails the handshake is dropped by tonic, which logs
        // it at debug level (`RUST_LOG=tonic=debug`); it never reaches a service.
        server = server.tls_config(tls.config())?;
    }
    let mut router = server
        .add_service(health)
        .add_service(InterceptedService::new(
            JobServiceServer::new(JobApi(state.clone())).max_decoding_message_size(64 << 20),
            Authenticate {
                tokens: tokens.clone(),
                certificates,
                service: Service::Jobs,
            },
        ))
        .add_service(InterceptedService::new(
            // Workers send reports and heartbeats, small by construction.
            WorkerServiceServer::new(WorkerApi(state)).max_decoding_message_size(MAX_WORKER_MESSAGE),
            Authenticate {
                tokens,
                certificates,
                service: Service::Workers,
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
