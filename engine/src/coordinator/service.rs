//! The coordinator service, one for every mode: submit, register, poll,
//! heartbeat, report, cancel, status and commit, over one [`Cluster`] and
//! one [`Journal`]. `wmr coordinator` serves it over gRPC (`rpc::server`
//! only decodes, calls and encodes) with the journal in the object store;
//! `wmr run` calls it in process, with a journal in memory and its task
//! slots as an in-process worker. Retries, backups, leases, fairness and
//! cancel are therefore the same in both.
//!
//! Every state change happens under the cluster lock, and its journal event
//! is queued under that same lock, so the journal's order is the order of
//! the changes. A caller is answered once its event is durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::access::DataAccess;
use super::ceilings::Ceilings;
use super::cluster::{Cluster, ClusterJob, JobRef};
use super::identity::Identity;
use super::journal::{Event, Journal, TaskOutput};
use super::{Assignment, Job, JobSpec, JobState, Outcome, ReportResult, commit_output, remove_all};
use crate::compute::ComputePool;
use crate::data::output::OutputFormat;
use crate::data::{Location, MapInput, plan_map_inputs};
use crate::error_chain;
use crate::layout::{JobLayout, StoreLayout};
use crate::runtime::limits::MAX_MODULE_BYTES;
use crate::runtime::{JobModule, Limits, Runtime};
use crate::spawn::SpawnedTask;
use crate::task::load_module;
use crate::task::{AttemptFailure, FailureKind};
use crate::{AttemptId, JobId, ModuleDigest, TaskId, WorkerId};

/// Longest a poll waits before answering "nothing yet".
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// How many submitted modules are checked at once; the rest wait.
const VALIDATIONS_AT_ONCE: usize = 4;
/// How many checked modules stay compiled for the workers of this process.
const WARM_MODULES: usize = 4;
/// The longest `configure` may run at submit, whatever the job's limit.
const CONFIGURE_AT_SUBMIT: Duration = Duration::from_secs(10);

/// What kind of failure a [`ServiceError`] is: the one place that decides
/// how each is shown (a gRPC status in `rpc::server`, an exit code in the
/// CLI) is a match on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: a flag, a path, a module that is not a job.
    Invalid,
    /// The job's own code failed while being checked (sampling keys).
    JobCode,
    /// No such job, or not the caller's; or a worker not registered.
    NotFound,
    /// The caller may not do this.
    PermissionDenied,
    /// The output exists and may not be replaced.
    AlreadyExists,
    /// The request conflicts with the state: an output in use, a module
    /// never uploaded.
    Conflict,
    /// Over a size the coordinator accepts.
    TooLarge,
    /// The store failed; trying again later may work.
    Unavailable,
    /// Our own bug.
    Internal,
}

/// A failure of a service call: its kind and a line for the user that
/// names the thing, the place and the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The line to show.
    pub message: String,
}

impl ServiceError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            message: message.into(),
        }
    }

    fn invalid(e: &dyn std::error::Error) -> Self {
        Self::new(ErrorKind::Invalid, error_chain(e))
    }

    /// A storage failure: unavailable; any other data error: invalid.
    fn data(e: &crate::data::Error) -> Self {
        match e {
            crate::data::Error::Io { .. } => Self::new(ErrorKind::Unavailable, error_chain(e)),
            _ => Self::invalid(e),
        }
    }
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

/// How the service runs.
#[derive(Clone)]
pub struct ServiceConfig {
    /// A worker silent this long is lost.
    pub lease: Duration,
    /// Backup attempts for tasks slower than this; `None`: never.
    pub backup_after: Option<Duration>,
    /// The wasm runtime submitted modules are checked with (shared with
    /// the in-process worker of `wmr run`, so a module compiles once).
    pub runtime: Arc<Runtime>,
    /// What jobs may use and ask for.
    pub policy: SubmitPolicy,
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] super::journal::Error),
    /// The wasm runtime or the compute pool could not start.
    #[error("starting the coordinator's runtime: {0}")]
    Runtime(String),
}

/// A job as submitted: what a client asks for.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// The uploaded module.
    pub module: ModuleDigest,
    /// How the submitter names it (a path, say) in messages; empty: by digest.
    pub module_name: String,
    /// Inputs: paths, globs or URLs.
    pub inputs: Vec<String>,
    /// The output directory.
    pub output: String,
    /// Reduce partitions.
    pub reducers: u32,
    /// Split size in bytes (0: the default).
    pub split_size: u64,
    /// Output format.
    pub format: OutputFormat,
    /// Parameters for the job's configure.
    pub params: Vec<(String, String)>,
    /// Attempts per task (0: the default).
    pub max_attempts: u32,
    /// Sandbox limits.
    pub limits: Limits,
    /// Replace a non-empty output.
    pub overwrite: bool,
    /// Backup attempts for slow tasks.
    pub speculation: bool,
    /// Task memory budget in bytes (0: the default).
    pub task_memory: u64,
    /// Records per map task that may be skipped.
    pub skip_bad_records: u32,
    /// Range-partition for globally sorted output.
    pub total_order: bool,
}

/// A worker's registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The secret every later call carries.
    pub secret: String,
    /// The worker's public name.
    pub label: WorkerId,
    /// Heartbeat within this.
    pub lease: Duration,
    /// The store modules are read from.
    pub store: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatReply {
    /// False when the worker is not (or no longer) registered.
    pub known: bool,
    /// Attempts the worker should stop.
    pub cancel: Vec<AttemptId>,
}

/// The coordinator service. Background work (expiring silent workers,
/// committing finished jobs) runs while it lives.
pub struct Service {
    cluster: Mutex<Cluster>,
    /// Wakes pollers and watchers after any change.
    changed: Notify,
    journal: Journal,
    store: StoreLayout,
    runtime: Arc<Runtime>,
    /// Samples keys for total order at submit.
    pool: Arc<ComputePool>,
    /// Wakes the committer when a job's reduces are all in.
    commit_wanted: Arc<Notify>,
    policy: SubmitPolicy,
    /// Checks submitted modules (configure) apart from each other and from
    /// the rest of the coordinator.
    validation: ComputePool,
    /// Outputs of submits in progress, so two jobs never write one output.
    claims: Mutex<Vec<(JobId, Location)>>,
    /// The last few modules checked, kept compiled, so that workers sharing
    /// this process's runtime (`wmr run`) do not compile them again.
    warm: Mutex<std::collections::VecDeque<JobModule>>,
    background: Mutex<Vec<SpawnedTask<()>>>,
    /// Why the service stopped (its journal could not be written), once it has.
    stopped: std::sync::OnceLock<String>,
    /// Wakes [`Service::stopped`].
    stopping: Notify,
    /// Coordinator runs on this store, this one included.
    runs: AtomicU64,
    /// Events journaled since the last snapshot.
    since_snapshot: AtomicU64,
}

/// Events between snapshots of the journal.
const SNAPSHOT_EVERY: u64 = 10_000;
/// Finished jobs a snapshot keeps (the oldest beyond are forgotten).
const FINISHED_JOBS_KEPT: usize = 1_000;

fn lock(m: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    // Every change is made whole under the lock, so a panic elsewhere (our
    // bug) leaves a consistent state behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    /// Open the service over `store` with `journal` (and the events it
    /// replayed), and start a new run.
    ///
    /// # Errors
    /// If the journal can't be written, or the runtime can't start.
    pub async fn open(
        store: Location,
        (journal, events): (Journal, Vec<Event>),
        config: ServiceConfig,
    ) -> Result<Arc<Self>, StartError> {
        let history = events.len();
        let snapshot_runs = events.iter().find_map(|e| match e {
            Event::Snapshot { runs, .. } => Some(*runs),
            _ => None,
        });
        let started = events.iter().filter(|e| matches!(e, Event::Started { .. })).count() as u64;
        let runs = snapshot_runs.unwrap_or(0) + started;
        let mut cluster = Cluster::new(config.lease, (runs + 1) << 40, config.backup_after);
        replay(&mut cluster, events);
        journal.append(vec![Event::Started { at: SystemTime::now() }]).await?;
        let pool = ComputePool::new(1).map_err(|e| StartError::Runtime(e.to_string()))?;
        let validation = ComputePool::new(VALIDATIONS_AT_ONCE).map_err(|e| StartError::Runtime(e.to_string()))?;
        let service = Arc::new(Service {
            cluster: Mutex::new(cluster),
            changed: Notify::new(),
            journal,
            store: StoreLayout::new(store),
            runtime: config.runtime,
            pool: Arc::new(pool),
            commit_wanted: Arc::new(Notify::new()),
            policy: config.policy,
            validation,
            claims: Mutex::new(Vec::new()),
            warm: Mutex::new(std::collections::VecDeque::new()),
            background: Mutex::new(Vec::new()),
            stopped: std::sync::OnceLock::new(),
            stopping: Notify::new(),
            runs: AtomicU64::new(0),
            since_snapshot: AtomicU64::new(0),
        });
        let tasks = vec![
            SpawnedTask::spawn(expire_loop(Arc::downgrade(&service))),
            SpawnedTask::spawn(commit_loop(Arc::downgrade(&service))),
        ];
        *service.background.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        service.runs.store(runs + 1, Ordering::Relaxed);
        // Fold what was replayed into a snapshot, so the next restart reads
        // little however long the history.
        if history > 1 {
            service.snapshot().await?;
        }
        Ok(service)
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Queue `events` in the journal (under the cluster lock, so in the
    /// order of the changes), counting them toward the next snapshot.
    fn queue(&self, events: Vec<Event>) -> super::journal::Pending {
        self.since_snapshot.fetch_add(events.len() as u64, Ordering::Relaxed);
        self.journal.queue(events)
    }

    /// Write a snapshot of every job to the journal (older journal objects
    /// are then deleted), forgetting the oldest finished jobs past
    /// [`FINISHED_JOBS_KEPT`].
    async fn snapshot(&self) -> Result<(), StartError> {
        let pending = {
            let mut cluster = lock(&self.cluster);
            let jobs = cluster.snapshot_jobs(FINISHED_JOBS_KEPT);
            self.since_snapshot.store(0, Ordering::Relaxed);
            self.journal.queue(vec![Event::Snapshot {
                runs: self.runs.load(Ordering::Relaxed),
                jobs,
            }])
        };
        self.durable(pending).await.map_err(|e| StartError::Runtime(e.message))
    }

    /// Snapshot once enough events have gone to the journal.
    async fn snapshot_if_due(&self) {
        // One report takes the count, so concurrent ones do not all snapshot.
        if self.since_snapshot.load(Ordering::Relaxed) >= SNAPSHOT_EVERY
            && self.since_snapshot.swap(0, Ordering::Relaxed) >= SNAPSHOT_EVERY
        {
            // A failure stops the service (see `durable`).
            let _ = self.snapshot().await;
        }
    }

    /// Wait until `pending` is durable. If the journal could not be
    /// written, the service stops: its state has moved on in memory, so it
    /// must not go on acknowledging anything; a restart replays what is
    /// durable and resumes.
    async fn durable(&self, pending: super::journal::Pending) -> Result<(), ServiceError> {
        pending.durable().await.map_err(|e| {
            let reason = format!(
                "writing the journal in {} failed ({e}); the coordinator stops: restart it on the same \
                 store once the store is writable, and it resumes every job",
                self.store.root().display
            );
            self.stop(reason.clone());
            ServiceError::new(ErrorKind::Unavailable, reason)
        })
    }

    /// Stop the service for `reason` (the first reason given wins): it
    /// acknowledges nothing more, and [`Service::stopped`] returns.
    pub fn stop(&self, reason: String) {
        if self.stopped.set(reason.clone()).is_ok() {
            warn!(%reason, "stopping");
            self.stopping.notify_waiters();
        }
    }

    /// Wait until the service has stopped; returns why.
    pub async fn stopped(&self) -> String {
        loop {
            let notified = self.stopping.notified();
            if let Some(reason) = self.stopped.get() {
                return reason.clone();
            }
            notified.await;
        }
    }

    /// The store modules live in.
    pub fn store(&self) -> &Location {
        self.store.root()
    }

    /// Task slots of the registered workers (at least 1).
    pub fn slots(&self) -> usize {
        lock(&self.cluster).slots()
    }

    /// The worker lease.
    pub fn lease(&self) -> Duration {
        lock(&self.cluster).lease()
    }

    /// Wait until something changes, or `at_most` passes.
    pub async fn changed_within(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.changed.notified()).await;
    }

    // ------------------------------------------------------------ clients

    /// Store a module by content; returns its digest and size.
    ///
    /// # Errors
    /// Over the module ceiling, or a store failure.
    pub async fn upload_module(&self, bytes: bytes::Bytes) -> Result<(ModuleDigest, u64), ServiceError> {
        let size = bytes.len() as u64;
        self.check_module_size(size)?;
        let digest = ModuleDigest::of(&bytes);
        let object = self.store.module(&digest);
        if object.store.head(&object.path).await.is_err() {
            object
                .store
                .put(&object.path, PutPayload::from(bytes))
                .await
                .map_err(|e| ServiceError::new(ErrorKind::Unavailable, format!("storing module {digest}: {e}")))?;
        }
        Ok((digest, size))
    }

    /// Refuse a module over the operator's ceiling or the hard limit.
    ///
    /// # Errors
    /// [`ErrorKind::TooLarge`] naming the bound.
    pub fn check_module_size(&self, size: u64) -> Result<(), ServiceError> {
        self.policy
            .ceilings
            .check_module(size)
            .map_err(|e| ServiceError::new(ErrorKind::TooLarge, e.to_string()))?;
        if size > MAX_MODULE_BYTES as u64 {
            return Err(ServiceError::new(
                ErrorKind::TooLarge,
                format!(
                    "the module is larger than {} MiB, the most a coordinator accepts",
                    MAX_MODULE_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Check, plan and accept a job for `owner`; returns its id. Nothing of
    /// the job runs, and nothing in its output is deleted, until every
    /// check has passed.
    ///
    /// # Errors
    /// A bad request, data outside the allowed prefixes, a limit over its
    /// ceiling, a module that does not load or rejects its parameters, an
    /// output in use or not empty, or a store that fails.
    pub async fn submit(&self, r: SubmitRequest, owner: String) -> Result<JobId, ServiceError> {
        let invalid = |e: &dyn std::error::Error| ServiceError::invalid(e);
        if r.inputs.is_empty() {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                "no inputs; give at least one --input",
            ));
        }
        if r.reducers == 0 || r.reducers > 100_000 {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                format!("--reducers {} is out of range; use 1 to 100000", r.reducers),
            ));
        }
        let task_memory = if r.task_memory == 0 {
            super::job::DEFAULT_TASK_MEMORY
        } else {
            r.task_memory
        };
        self.policy
            .ceilings
            .check_job(&r.limits, task_memory, r.reducers)
            .map_err(|e| invalid(&e))?;
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
            .map_err(|e| ServiceError::data(&crate::data::Error::io(&output.display, "listing", e)))?;
        if !existing.is_empty() && !r.overwrite {
            return Err(ServiceError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "output {} already exists and is not empty; choose another --output or pass --overwrite",
                    r.output
                ),
            ));
        }
        let job_ref = JobRef {
            job: id.clone(),
            module: r.module.clone(),
            params: r.params,
            limits: r.limits,
        };
        let module = self.validate_module(&job_ref, &r.module_name).await?;
        let split_size = if r.split_size == 0 {
            crate::data::DEFAULT_SPLIT_SIZE
        } else {
            r.split_size
        };
        let slots = lock(&self.cluster).slots();
        let splits = plan_map_inputs(&r.inputs, split_size, slots)
            .await
            .map_err(|e| ServiceError::data(&e))?;
        self.policy
            .ceilings
            .check_map_tasks(splits.len())
            .map_err(|e| invalid(&e))?;
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
                cancel: Default::default(),
            };
            crate::task::sample_partitioner(&ctx, &splits, r.reducers)
                .await
                .map_err(|e| {
                    let message = format!("sampling keys for a total order: {}", error_chain(&e));
                    let kind = match &e {
                        crate::task::Error::Data(crate::data::Error::Io { .. }) => ErrorKind::Unavailable,
                        crate::task::Error::Data(_) => ErrorKind::Invalid,
                        _ => ErrorKind::JobCode,
                    };
                    ServiceError::new(kind, message)
                })?
        } else {
            crate::shuffle::Partitioner::Hash
        };
        if !existing.is_empty() {
            // Every check passed: now the old output goes, its manifest
            // first, so that no reader takes what is left for complete.
            remove_old_output(&output, existing)
                .await
                .map_err(|e| ServiceError::data(&e))?;
        }
        let spec = JobSpec {
            work_dir: JobLayout::scratch_for(&output, &id),
            id: id.clone(),
            inputs: r.inputs,
            output: r.output,
            reducers: r.reducers,
            format: r.format,
            max_attempts: if r.max_attempts == 0 {
                super::job::DEFAULT_MAX_ATTEMPTS
            } else {
                r.max_attempts
            },
            speculation: r.speculation,
            skip_bad_records: r.skip_bad_records,
            task_memory,
            partitioner,
        };
        let name = module.info().name.clone();
        self.accept(spec, splits, job_ref, name, owner).await?;
        drop(claim);
        Ok(id)
    }

    /// Accept a checked job: journal it, then schedule it.
    ///
    /// # Errors
    /// If the journal can't record it; it is then not accepted.
    pub async fn accept(
        &self,
        spec: JobSpec,
        splits: Vec<MapInput>,
        job_ref: JobRef,
        name: String,
        owner: String,
    ) -> Result<(), ServiceError> {
        let id = spec.id.clone();
        let now = SystemTime::now();
        let pending = {
            let mut cluster = lock(&self.cluster);
            let pending = self.queue(vec![Event::Submitted {
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
        self.durable(pending).await?;
        info!(job = %id, "job accepted");
        self.notify();
        Ok(())
    }

    /// Load the job's module and run its `configure` once, to check it and
    /// its parameters: on the validation threads, with `configure` bounded
    /// by [`CONFIGURE_AT_SUBMIT`], so a slow one holds up no other submit.
    async fn validate_module(&self, job: &JobRef, name: &str) -> Result<JobModule, ServiceError> {
        let bytes = self.module_bytes(&job.module).await?;
        self.check_module_size(bytes.len() as u64)?;
        let limits = Limits {
            max_call_time: job.limits.max_call_time.min(CONFIGURE_AT_SUBMIT),
            ..job.limits
        };
        let what = match name {
            "" => job.module.to_string(),
            // The submitter's own words, shown back to them: bounded.
            name => name.chars().take(1024).collect(),
        };
        let checked = load_module(&self.runtime, &self.validation, &what, bytes, &job.params, limits)
            .await
            .map_err(|e| ServiceError::new(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| match e {
                crate::runtime::Error::Internal(_) => ServiceError::new(ErrorKind::Internal, error_chain(&e)),
                _ => ServiceError::invalid(&e),
            })?;
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        warm.push_back(checked.clone());
        if warm.len() > WARM_MODULES {
            warm.pop_front();
        }
        // Tasks run with the job's own limits.
        Ok(checked.with_limits(job.limits))
    }

    /// Reserve `output` for job `id` while it is being submitted: refused if
    /// a running job, or another submit, writes there (or inside, or
    /// around it). The reservation ends when the guard drops; by then the
    /// job, if accepted, holds the output as a running job.
    fn claim_output(&self, id: &JobId, output: &Location) -> Result<OutputClaim<'_>, ServiceError> {
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
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                format!(
                    "output {} is in use by job {other}, which is still running; choose another --output, \
                     or wait for that job to end",
                    output.display
                ),
            ));
        }
        claims.push((id.clone(), output.clone()));
        Ok(OutputClaim {
            service: self,
            id: id.clone(),
        })
    }

    /// Apply `f` to job `id`, if `caller` may see it: another tenant's job
    /// is as absent as one that never existed.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub fn job_view<T>(
        &self,
        caller: &Identity,
        id: &JobId,
        f: impl FnOnce(&ClusterJob) -> T,
    ) -> Result<T, ServiceError> {
        let cluster = lock(&self.cluster);
        let j = cluster
            .job(id)
            .filter(|j| caller.may_see(&j.owner))
            .ok_or_else(|| no_job(id))?;
        Ok(f(j))
    }

    /// Apply `f` to every job `caller` may see, oldest first.
    pub fn jobs_view<T>(&self, caller: &Identity, mut f: impl FnMut(&ClusterJob) -> T) -> Vec<T> {
        let cluster = lock(&self.cluster);
        cluster
            .jobs()
            .filter(|j| caller.may_see(&j.owner))
            .map(&mut f)
            .collect()
    }

    /// Cancel job `id` for `caller`; returns the job's state after.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if the caller may not see it; the journal's
    /// failure.
    pub async fn cancel(&self, caller: &Identity, id: &JobId) -> Result<JobState, ServiceError> {
        let now = SystemTime::now();
        let (pending, work_dir) = {
            let mut cluster = lock(&self.cluster);
            let j = cluster
                .job_mut(id)
                .filter(|j| caller.may_see(&j.owner))
                .ok_or_else(|| no_job(id))?;
            if j.job.is_finished() || j.job.state == JobState::Committing {
                return Ok(j.job.state);
            }
            j.job.cancel();
            j.ended = Some(now);
            let pending = self.queue(vec![Event::Ended {
                job: id.clone(),
                state: JobState::Cancelled,
                error: j.job.error.clone(),
                at: now,
            }]);
            (pending, j.job.spec.work_dir.clone())
        };
        self.durable(pending).await?;
        self.notify();
        // Scratch data of a cancelled job is of no use to anyone.
        if let Ok(dir) = Location::parse(&work_dir)
            && let Err(e) = remove_all(&dir).await
        {
            warn!(job = %id, error = %error_chain(&e), "removing a cancelled job's scratch data");
        }
        Ok(JobState::Cancelled)
    }

    /// A module's bytes, by digest.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] if it was never uploaded; unavailable if the
    /// store fails.
    pub async fn module_bytes(&self, digest: &ModuleDigest) -> Result<bytes::Bytes, ServiceError> {
        let object = self.store.module(digest);
        let unavailable = |e| {
            ServiceError::new(
                ErrorKind::Unavailable,
                format!("reading module {digest} from the store: {e}"),
            )
        };
        match object.store.get(&object.path).await {
            Ok(r) => r.bytes().await.map_err(unavailable),
            Err(object_store::Error::NotFound { .. }) => Err(ServiceError::new(
                ErrorKind::Conflict,
                format!("module {digest} was never uploaded; upload it with UploadModule first"),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }

    // ------------------------------------------------------------ workers

    /// Register a worker of `caller` with `slots` slots.
    pub fn register(&self, caller: &Identity, name: &str, slots: u32) -> Registration {
        let mut cluster = lock(&self.cluster);
        let name: String = name.chars().take(128).collect();
        let (label, secret) = cluster.register(name.clone(), slots, caller.name.clone(), Instant::now());
        info!(worker = %label, %name, slots, "worker registered");
        drop(cluster);
        // New slots may make work assignable (or sampling counts).
        self.notify();
        Registration {
            secret,
            label,
            lease: self.lease(),
            store: self.store.root().display.clone(),
        }
    }

    /// The worker whose registration secret `session` is, if `caller`
    /// registered it.
    fn worker_of(cluster: &Cluster, session: &str, caller: &Identity) -> Result<WorkerId, ServiceError> {
        if session.is_empty() {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                "worker_id is missing; register first",
            ));
        }
        cluster.worker_of(session, &caller.name).ok_or_else(|| {
            ServiceError::new(
                ErrorKind::NotFound,
                "this worker is not registered (its lease expired or the coordinator restarted); register again",
            )
        })
    }

    /// The next assignment for the worker `session`, waiting up to `wait`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if the worker is not registered.
    pub async fn poll(
        &self,
        caller: &Identity,
        session: &str,
        wait: Duration,
    ) -> Result<Option<(JobRef, Assignment)>, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_POLL_WAIT);
        let mut held = HeldCall::new(self);
        loop {
            let changed = self.changed.notified();
            {
                let mut cluster = lock(&self.cluster);
                let worker = Self::worker_of(&cluster, session, caller)?;
                // Asking for work is a sign of life.
                cluster.heartbeat(&worker, Instant::now());
                if let Some(found) = cluster.next_assignment(&worker, SystemTime::now()) {
                    held.answered();
                    return Ok(Some(found));
                }
                held.worker = Some(worker);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                held.answered();
                return Ok(None);
            }
        }
    }

    /// Renew the lease of worker `session`, which runs `running`, and
    /// reconcile: the answer says which of them to stop, and attempts
    /// handed to it that it does not know are failed, so their tasks run
    /// again.
    pub async fn heartbeat(
        &self,
        caller: &Identity,
        session: &str,
        running: &[AttemptId],
        hold: Duration,
    ) -> HeartbeatReply {
        let reply = self.reconcile_heartbeat(caller, session, running).await;
        if !reply.known || !reply.cancel.is_empty() || hold.is_zero() {
            return reply;
        }
        // Held open until something is to be stopped or `hold` passes: the
        // worker learns of a cancel at once, and a worker that dies is
        // noticed when its connection drops, not only when its lease lapses.
        let deadline = tokio::time::Instant::now() + hold.min(MAX_POLL_WAIT);
        let mut held = HeldCall::new(self);
        held.worker = lock(&self.cluster).worker_of(session, &caller.name);
        loop {
            let changed = self.changed.notified();
            let cancel = {
                let mut cluster = lock(&self.cluster);
                let Ok(worker) = Self::worker_of(&cluster, session, caller) else {
                    held.answered();
                    return HeartbeatReply::default();
                };
                cluster
                    .reconcile(&worker, running, Instant::now(), Duration::MAX)
                    .cancel
            };
            if !cancel.is_empty() {
                held.answered();
                return HeartbeatReply { known: true, cancel };
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                held.answered();
                return HeartbeatReply {
                    known: true,
                    cancel: Vec::new(),
                };
            }
        }
    }

    /// Renew the lease and reconcile once (see [`Service::heartbeat`]).
    async fn reconcile_heartbeat(&self, caller: &Identity, session: &str, running: &[AttemptId]) -> HeartbeatReply {
        let now = SystemTime::now();
        let grace = (self.lease() / 2).max(Duration::from_secs(1));
        let (cancel, pending) = {
            let mut cluster = lock(&self.cluster);
            let Ok(worker) = Self::worker_of(&cluster, session, caller) else {
                return HeartbeatReply::default();
            };
            cluster.heartbeat(&worker, Instant::now());
            let reconciled = cluster.reconcile(&worker, running, Instant::now(), grace);
            let mut events = Vec::new();
            for (job, task, attempt) in reconciled.unknown {
                warn!(%job, %task, %attempt, %worker, "the worker does not know an attempt it was handed; running it again");
                let failure = AttemptFailure::new(
                    FailureKind::Lost,
                    format!(
                        "worker {worker} did not know this attempt: its assignment was lost on the way or could not be read"
                    ),
                );
                let (_, more) = self.record(
                    &mut cluster,
                    &worker,
                    (&job, task, attempt),
                    Outcome::Failed(failure),
                    now,
                );
                events.extend(more);
            }
            (reconciled.cancel, (!events.is_empty()).then(|| self.queue(events)))
        };
        if let Some(pending) = pending {
            // A failure stops the service; the worker learns at its next call.
            let _ = self.durable(pending).await;
            self.notify();
        }
        HeartbeatReply { known: true, cancel }
    }

    /// Record how an attempt of `worker` ended, under the cluster lock;
    /// returns the result and the events to journal.
    fn record(
        &self,
        cluster: &mut Cluster,
        worker: &WorkerId,
        (job, task, attempt): (&JobId, TaskId, AttemptId),
        outcome: Outcome,
        now: SystemTime,
    ) -> (ReportResult, Vec<Event>) {
        let event = match &outcome {
            Outcome::Map(m) => Some(TaskOutput::Map(m.clone())),
            Outcome::Reduce(o) => Some(TaskOutput::Reduce(o.clone())),
            Outcome::Failed(_) => None,
        };
        let failure = match &outcome {
            Outcome::Failed(f) => Some(f.clone()),
            _ => None,
        };
        let started = cluster
            .job(job)
            .and_then(|j| j.job.attempt_started(task, attempt))
            .unwrap_or(now);
        let result = cluster.report(job, task, attempt, outcome, now);
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
            (ReportResult::WillRetry | ReportResult::JobFailed, _, Some(failure)) => {
                events.push(Event::Failed {
                    job: job.clone(),
                    task,
                    attempt,
                    worker: worker.clone(),
                    failure,
                    started,
                    at: now,
                });
            }
            _ => {}
        }
        if result == ReportResult::JobFailed
            && let Some(j) = cluster.job_mut(job)
        {
            j.ended = Some(now);
            events.push(Event::Ended {
                job: job.clone(),
                state: JobState::Failed,
                error: j.job.error.clone(),
                at: now,
            });
        }
        (result, events)
    }

    /// Record how attempt `attempt` of `task` of `job` ended, as its worker
    /// `session` reports it. Answered once the change is durable.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unregistered worker,
    /// [`ErrorKind::PermissionDenied`] for another worker's attempt, and
    /// the journal's failure.
    pub async fn report(
        &self,
        caller: &Identity,
        session: &str,
        (job, task, attempt): (&JobId, TaskId, AttemptId),
        outcome: Outcome,
    ) -> Result<ReportResult, ServiceError> {
        let now = SystemTime::now();
        let (result, pending, worker) = {
            let mut cluster = lock(&self.cluster);
            let worker = Self::worker_of(&cluster, session, caller)?;
            // An attempt is bound to the worker it was assigned to: nobody
            // else may report on it.
            if let Some(assigned) = cluster.assigned_worker(job, task, attempt)
                && *assigned != worker
            {
                warn!(%job, %task, %attempt, %worker, %assigned, "refused a report about another worker's attempt");
                return Err(ServiceError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "{task} attempt {attempt} of {job} was assigned to another worker; a worker reports only its own attempts"
                    ),
                ));
            }
            let (result, events) = self.record(&mut cluster, &worker, (job, task, attempt), outcome, now);
            let pending = (!events.is_empty()).then(|| self.queue(events));
            (result, pending, worker)
        };
        if let Some(pending) = pending {
            self.durable(pending).await?;
        }
        if result == ReportResult::Stale {
            info!(%job, %task, %attempt, %worker, "refused a stale report");
        }
        self.notify();
        // The output is moved into place by the committer, so this report
        // (and the worker's slot) does not wait on the renames.
        self.commit_wanted.notify_one();
        self.snapshot_if_due().await;
        Ok(result)
    }

    // --------------------------------------------------------- background

    /// Commit every job whose reduces have all committed but whose output is
    /// not yet in place (after a restart, or a report that just finished it).
    /// Only the committer loop calls this, so no two commits of one job
    /// overlap.
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
                        cj.job.fail(FailureKind::Storage, error_chain(e));
                    }
                }
                cj.ended = Some(now);
                self.queue(vec![Event::Ended {
                    job: id.clone(),
                    state: cj.job.state,
                    error: cj.job.error.clone(),
                    at: now,
                }])
            };
            // A failure stops the service; a restart commits again.
            let _ = self.durable(pending).await;
            self.notify();
        }
    }

    /// Drop workers silent past their lease; their running attempts are
    /// lost (journaled: they count against their tasks), and a job whose
    /// task was lost too often fails.
    async fn expire(&self) {
        let now = SystemTime::now();
        let pending = {
            let mut cluster = lock(&self.cluster);
            let expired = cluster.expire(Instant::now(), now);
            if expired.workers.is_empty() {
                return;
            }
            for w in &expired.workers {
                warn!(worker = %w, "worker lost (its connection dropped, or it was silent past its lease); its running attempts are re-queued");
            }
            let mut events: Vec<Event> = expired
                .attempts
                .into_iter()
                .map(|(job, task, attempt, worker, started)| Event::Lost {
                    job,
                    task,
                    attempt,
                    worker,
                    started,
                    at: now,
                })
                .collect();
            for job in expired.failed_jobs {
                if let Some(j) = cluster.job_mut(&job) {
                    j.ended = Some(now);
                    warn!(%job, error = j.job.error.as_deref().unwrap_or(""), "job failed");
                    events.push(Event::Ended {
                        job: job.clone(),
                        state: JobState::Failed,
                        error: j.job.error.clone(),
                        at: now,
                    });
                }
            }
            (!events.is_empty()).then(|| self.queue(events))
        };
        if let Some(pending) = pending {
            // A failure stops the service; a restart finds the workers anew.
            let _ = self.durable(pending).await;
        }
        self.notify();
    }
}

/// A call a worker holds open (a poll, a held heartbeat): dropped before
/// it was answered, it tells that the worker's connection went away.
struct HeldCall<'a> {
    service: &'a Service,
    worker: Option<WorkerId>,
    answered: bool,
}

impl<'a> HeldCall<'a> {
    fn new(service: &'a Service) -> Self {
        HeldCall {
            service,
            worker: None,
            answered: false,
        }
    }

    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for HeldCall<'_> {
    fn drop(&mut self) {
        if let (false, Some(worker)) = (self.answered, &self.worker) {
            lock(&self.service.cluster).call_dropped(worker, Instant::now());
        }
    }
}

/// Expire silent workers while the service lives.
async fn expire_loop(service: Weak<Service>) {
    let every = match service.upgrade() {
        // Often enough to notice a dropped connection within its grace.
        Some(s) => (s.lease() / 4).clamp(Duration::from_millis(50), super::cluster::DROPPED_GRACE / 2),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(s) = service.upgrade() else { return };
        s.expire().await;
    }
}

/// Commit finished jobs while the service lives: once at start, since a
/// restart may find jobs whose reduces all committed but whose output was
/// not yet moved, then after each report.
async fn commit_loop(service: Weak<Service>) {
    loop {
        let Some(s) = service.upgrade() else { return };
        s.commit_ready().await;
        let wanted = s.commit_wanted.clone();
        drop(s);
        wanted.notified().await;
    }
}

/// A reservation of an output by a submit in progress; see
/// [`Service::claim_output`].
struct OutputClaim<'a> {
    service: &'a Service,
    id: JobId,
}

impl Drop for OutputClaim<'_> {
    fn drop(&mut self) {
        let mut claims = self.service.claims.lock().unwrap_or_else(|p| p.into_inner());
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

fn no_job(id: &JobId) -> ServiceError {
    ServiceError::new(
        ErrorKind::NotFound,
        format!("no job {id} on this coordinator; `wmr jobs` lists yours"),
    )
}

/// Rebuild the cluster's jobs from the journal.
fn replay(cluster: &mut Cluster, events: Vec<Event>) {
    for event in events {
        match event {
            Event::Started { .. } => {}
            Event::Snapshot { jobs, .. } => {
                // The whole state as it stood: what was replayed before is in it.
                cluster.clear_jobs();
                for mut job in jobs {
                    job.job.rebuild();
                    cluster.add_job(job);
                }
            }
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
                failure,
                started,
                at,
            } => {
                if let Some(j) = cluster.job_mut(&job) {
                    j.job.restore_failure(task, attempt, worker, failure, (started, at));
                }
            }
            Event::Lost {
                job,
                task,
                attempt,
                worker,
                started,
                at,
            } => {
                if let Some(j) = cluster.job_mut(&job) {
                    j.job.restore_lost(task, attempt, worker, (started, at));
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
