//! The coordinator service, one for every mode: submit, register, poll,
//! heartbeat, report, cancel, status and commit, over one [`Cluster`] and
//! one [`Journal`]. `wmr coordinator` serves it over gRPC (`coordinator::grpc`
//! only decodes, calls and encodes) with the journal in the object store;
//! `wmr run` calls it in process, with a journal in memory and its task
//! slots as an in-process worker. Retries, backups, leases, fairness and
//! cancel are therefore the same in both.
//!
//! Every state change happens under the cluster lock, and its journal event
//! is queued under that same lock, so the journal's order is the order of
//! the changes. A caller is answered once its event is durable. Submitting
//! is in `submit.rs`, the worker side in `workers.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use object_store::ObjectStoreExt;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::cluster::{Cluster, ClusterJob};
use super::journal::{Event, Journal, TaskOutput};
use super::metrics::CoordinatorMetrics;
use super::{Job, JobState, commit_output, remove_all};
use crate::compute::ComputePool;
use crate::data::Location;
use crate::error_chain;
use crate::identity::Identity;
use crate::layout::StoreLayout;
use crate::protocol::Outcome;
use crate::runtime::{JobModule, Runtime};
use crate::spawn::SpawnedTask;
use crate::task::FailureKind;
use crate::{JobId, ModuleDigest};

mod submit;
mod workers;

pub use submit::{SubmitPolicy, SubmitRequest};
pub use workers::WorkerView;

/// Longest a poll waits before answering "nothing yet".
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// How many submitted modules are checked at once; the rest wait.
const VALIDATIONS_AT_ONCE: usize = 4;

/// What kind of failure a [`ServiceError`] is: the one place that decides
/// how each is shown (a gRPC status in `coordinator::grpc`, an exit code in the
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
    /// What `/metrics` shows.
    metrics: CoordinatorMetrics,
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
            metrics: CoordinatorMetrics::new(),
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

    /// The metrics in the OpenMetrics text format, gauges read now.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode(&lock(&self.cluster))
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
    // (submitting: `submit.rs`)

    /// Wait until every change made so far is in the journal, so that what
    /// a view showed before survives this coordinator's death: changes are
    /// applied in memory, then journaled, and a status read in between
    /// would show a commit that a restart does not know. (The journal
    /// writes in queue order; an empty append writes nothing.)
    ///
    /// # Errors
    /// The journal's failure (the service then stops).
    pub async fn journaled(&self) -> Result<(), ServiceError> {
        let pending = self.journal.queue(Vec::new());
        self.durable(pending).await
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

    // (workers: `workers.rs`)

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
            self.lost(&mut cluster, expired, now)
        };
        if let Some(pending) = pending {
            // A failure stops the service; a restart finds the workers anew.
            let _ = self.durable(pending).await;
        }
        self.notify();
    }

    /// Journal what losing workers cost (under the cluster lock): their
    /// running attempts, and jobs that failed for it.
    fn lost(
        &self,
        cluster: &mut Cluster,
        expired: super::cluster::Expired,
        now: SystemTime,
    ) -> Option<super::journal::Pending> {
        for (_, task, _, _, _) in &expired.attempts {
            self.metrics
                .attempt_ended(task.phase, &super::job::AttemptState::Lost, None, 0.0);
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
                handed_back: expired.handed_back,
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
    }
}

/// Expire silent workers while the service lives.
async fn expire_loop(service: Weak<Service>) {
    let every = match service.upgrade() {
        // Often enough to notice a dropped connection within its grace.
        Some(s) => (s.lease() / 4).clamp(Duration::from_millis(50), super::cluster::DROPPED_GRACE / 4),
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
                handed_back,
            } => {
                if let Some(j) = cluster.job_mut(&job) {
                    j.job.restore_lost(task, attempt, worker, (started, at), !handed_back);
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
