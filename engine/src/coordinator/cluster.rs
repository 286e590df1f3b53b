//! Many jobs and many workers: which job's task a polling worker gets (fair
//! share: the running job with the fewest running attempts goes first), who
//! is alive (leases renewed by heartbeats), and what a lost worker costs
//! (only its running attempts). Pure state, time passed in, no I/O: the
//! gRPC service around it does the waiting, journaling and committing.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::job::{Assignment, Job, JobState, Outcome, ReportResult};
use crate::runtime::Limits;
use crate::{AttemptId, JobId, ModuleDigest, TaskId, WorkerId};

/// What a worker needs besides an assignment: which job, module, parameters
/// and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    /// The job.
    pub job: JobId,
    /// Its module.
    pub module: ModuleDigest,
    /// Its parameters.
    pub params: Vec<(String, String)>,
    /// Its sandbox limits.
    pub limits: Limits,
}

/// A job in the cluster: its state machine and what workers need to run it.
#[derive(Debug, Clone)]
pub struct ClusterJob {
    /// The state machine.
    pub job: Job,
    /// Module, parameters and limits.
    pub job_ref: JobRef,
    /// The job's name (from its module).
    pub name: String,
    /// The identity that submitted it: only it (and admins) may see and
    /// cancel it.
    pub owner: String,
    /// When it was submitted.
    pub submitted: SystemTime,
    /// When it ended.
    pub ended: Option<SystemTime>,
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct ClusterWorker {
    /// Its own name for itself (host:pid).
    pub name: String,
    /// The identity that registered it; only that identity may speak for it.
    pub registrant: String,
    /// The secret of its registration, which its every call carries.
    session: String,
    /// Its slots.
    pub slots: u32,
    /// When it was last heard from.
    pub last_seen: Instant,
}

/// Every job and worker the coordinator knows.
#[derive(Debug)]
pub struct Cluster {
    jobs: BTreeMap<JobId, ClusterJob>,
    workers: HashMap<WorkerId, ClusterWorker>,
    /// Each registration's secret, to the worker it names.
    sessions: HashMap<String, WorkerId>,
    /// Which job each running attempt belongs to, for heartbeats.
    attempts: HashMap<AttemptId, JobId>,
    next_worker: u64,
    /// Attempt ids of this coordinator run start here (see [`Job::set_attempt_base`]).
    attempt_base: u64,
    lease: Duration,
    /// Backup attempts for slow tasks start no sooner than this; `None`: never.
    backup_after: Option<Duration>,
}

impl Cluster {
    /// An empty cluster whose workers must heartbeat within `lease`, handing
    /// out attempt ids from `attempt_base` up, and backup attempts for tasks
    /// slower than `backup_after` (see [`Job::next_assignment`]).
    pub fn new(lease: Duration, attempt_base: u64, backup_after: Option<Duration>) -> Self {
        Cluster {
            jobs: BTreeMap::new(),
            workers: HashMap::new(),
            sessions: HashMap::new(),
            attempts: HashMap::new(),
            next_worker: 1,
            attempt_base,
            lease,
            backup_after,
        }
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Add a job (new, or replayed from the journal).
    pub fn add_job(&mut self, mut job: ClusterJob) {
        job.job.set_attempt_base(self.attempt_base);
        self.jobs.insert(job.job.spec.id.clone(), job);
    }

    /// A job by id.
    pub fn job(&self, id: &JobId) -> Option<&ClusterJob> {
        self.jobs.get(id)
    }

    /// A job by id, to change.
    pub fn job_mut(&mut self, id: &JobId) -> Option<&mut ClusterJob> {
        self.jobs.get_mut(id)
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> impl Iterator<Item = &ClusterJob> {
        let mut jobs: Vec<&ClusterJob> = self.jobs.values().collect();
        jobs.sort_by_key(|j| j.submitted);
        jobs.into_iter()
    }

    /// The task slots of every registered worker (at least 1): how many
    /// map tasks a job needs to keep the cluster busy.
    pub fn slots(&self) -> usize {
        (self.workers.values().map(|w| w.slots as usize).sum::<usize>()).max(1)
    }

    /// Register a worker for `registrant`; returns its new id (public: it
    /// names the worker in status) and the secret of this registration,
    /// which the worker's every later call must carry.
    pub fn register(&mut self, name: String, slots: u32, registrant: String, now: Instant) -> (WorkerId, String) {
        let id = WorkerId(format!("w{}-{}", self.attempt_base >> 40, self.next_worker));
        self.next_worker += 1;
        let session = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        self.sessions.insert(session.clone(), id.clone());
        self.workers.insert(
            id.clone(),
            ClusterWorker {
                name,
                registrant,
                session: session.clone(),
                slots,
                last_seen: now,
            },
        );
        (id, session)
    }

    /// The worker a call carrying `session` speaks for, if `caller` is the
    /// identity that registered it.
    pub fn worker_of(&self, session: &str, caller: &str) -> Option<WorkerId> {
        let id = self.sessions.get(session)?;
        let worker = self.workers.get(id)?;
        (worker.registrant == caller).then(|| id.clone())
    }

    /// Registered workers.
    pub fn workers(&self) -> impl Iterator<Item = (&WorkerId, &ClusterWorker)> {
        self.workers.iter()
    }

    /// Renew `worker`'s lease; false if it is not (or no longer) registered.
    pub fn heartbeat(&mut self, worker: &WorkerId, now: Instant) -> bool {
        match self.workers.get_mut(worker) {
            Some(w) => {
                w.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Whether `worker` is registered.
    pub fn knows(&self, worker: &WorkerId) -> bool {
        self.workers.contains_key(worker)
    }

    /// Of `attempts` (running on some worker), those it should stop: their
    /// job has ended, or they are no longer the live attempt of their task.
    pub fn attempts_to_cancel(&self, attempts: &[AttemptId]) -> Vec<AttemptId> {
        attempts
            .iter()
            .filter(|a| match self.attempts.get(a).and_then(|j| self.jobs.get(j)) {
                Some(job) => job.job.state != JobState::Running,
                None => true,
            })
            .copied()
            .collect()
    }

    /// Drop workers silent past the lease and re-queue their running
    /// attempts; returns the workers lost.
    pub fn expire(&mut self, now: Instant, wall: SystemTime) -> Vec<WorkerId> {
        let lease = self.lease;
        let lost: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > lease)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            if let Some(w) = self.workers.remove(id) {
                self.sessions.remove(&w.session);
            }
            for job in self.jobs.values_mut() {
                job.job.worker_lost(id, wall);
            }
        }
        lost
    }

    /// The next assignment for `worker`: from the running job with pending
    /// work and the fewest attempts running (ties: the oldest job).
    pub fn next_assignment(&mut self, worker: &WorkerId, now: SystemTime) -> Option<(JobRef, Assignment)> {
        if !self.workers.contains_key(worker) {
            return None;
        }
        let mut running: Vec<&mut ClusterJob> = self
            .jobs
            .values_mut()
            .filter(|j| j.job.state == JobState::Running)
            .collect();
        running.sort_by_key(|j| (j.job.running_attempts(), j.submitted));
        // The fairest job first; one with nothing to hand out (not even a
        // backup) passes its turn to the next.
        let (job, assignment) = running
            .into_iter()
            .find_map(|j| j.job.next_assignment(worker, now, self.backup_after).map(|a| (j, a)))?;
        let (_, attempt) = assignment.task_and_attempt();
        self.attempts.insert(attempt, job.job.spec.id.clone());
        Some((job.job_ref.clone(), assignment))
    }

    /// The worker attempt `attempt` of `task` of `job` was assigned to.
    pub fn assigned_worker(&self, job: &JobId, task: TaskId, attempt: AttemptId) -> Option<&WorkerId> {
        self.jobs.get(job)?.job.attempt_worker(task, attempt)
    }

    /// Record how an attempt ended.
    pub fn report(
        &mut self,
        job: &JobId,
        task: TaskId,
        attempt: AttemptId,
        outcome: Outcome,
        now: SystemTime,
    ) -> ReportResult {
        self.attempts.remove(&attempt);
        match self.jobs.get_mut(job) {
            Some(j) => j.job.report(task, attempt, outcome, now),
            None => ReportResult::Stale,
        }
    }

    /// Whether any job has work waiting for a slot.
    pub fn has_pending(&self) -> bool {
        self.jobs.values().any(|j| j.job.has_pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Phase;
    use crate::task::MapOutput;

    fn job(maps: usize, submitted_secs: u64) -> ClusterJob {
        let job = crate::coordinator::job::test_job(maps, 1);
        ClusterJob {
            job_ref: JobRef {
                job: job.spec.id.clone(),
                module: ModuleDigest::of(b"m"),
                params: vec![],
                limits: Limits::default(),
            },
            job,
            name: "t".into(),
            owner: "o".into(),
            submitted: SystemTime::UNIX_EPOCH + Duration::from_secs(submitted_secs),
            ended: None,
        }
    }

    #[test]
    fn two_jobs_share_slots_evenly() {
        let mut c = Cluster::new(Duration::from_secs(10), 0, None);
        let (a, b) = (job(10, 1), job(10, 2));
        let (ida, idb) = (a.job.spec.id.clone(), b.job.spec.id.clone());
        c.add_job(a);
        c.add_job(b);
        let (w, _) = c.register("w".into(), 4, "pool".into(), Instant::now());
        let got: Vec<JobId> = (0..6)
            .map(|_| c.next_assignment(&w, SystemTime::now()).expect("work").0.job)
            .collect();
        assert_eq!(got.iter().filter(|j| **j == ida).count(), 3);
        assert_eq!(got.iter().filter(|j| **j == idb).count(), 3);
    }

    #[test]
    fn a_silent_worker_loses_its_attempts_but_not_its_commits() {
        let mut c = Cluster::new(Duration::from_secs(10), 0, None);
        let j = job(2, 1);
        let id = j.job.spec.id.clone();
        c.add_job(j);
        let start = Instant::now();
        let (w, session) = c.register("w".into(), 2, "pool".into(), start);
        assert_eq!(c.worker_of(&session, "pool"), Some(w.clone()));
        assert_eq!(c.worker_of(&session, "another registrant"), None);
        assert_eq!(c.worker_of("a guess", "pool"), None);
        let (_, first) = c.next_assignment(&w, SystemTime::now()).expect("work");
        let (_, second) = c.next_assignment(&w, SystemTime::now()).expect("work");
        let (task, attempt) = first.task_and_attempt();
        let out = Outcome::Map(MapOutput {
            counters: Default::default(),
        });
        assert_eq!(
            c.report(&id, task, attempt, out, SystemTime::now()),
            ReportResult::Committed
        );
        // Within the lease nothing is lost; past it, the worker and its
        // running attempt are.
        assert!(c.expire(start + Duration::from_secs(5), SystemTime::now()).is_empty());
        assert_eq!(
            c.expire(start + Duration::from_secs(11), SystemTime::now()),
            vec![w.clone()]
        );
        assert!(!c.knows(&w));
        assert_eq!(c.worker_of(&session, "pool"), None);
        let job = &c.job(&id).expect("job").job;
        assert_eq!(job.progress().0, (1, 2));
        let (lost_task, lost_attempt) = second.task_and_attempt();
        assert_eq!(lost_task.phase, Phase::Map);
        // The lost attempt's late report is refused; a new worker gets the task.
        let late = Outcome::Failed {
            error: "x".into(),
            retryable: true,
            bad_record: None,
        };
        assert_eq!(
            c.report(&id, lost_task, lost_attempt, late, SystemTime::now()),
            ReportResult::Stale
        );
        let (w2, _) = c.register("w2".into(), 1, "pool".into(), start);
        let (_, again) = c.next_assignment(&w2, SystemTime::now()).expect("re-queued");
        assert_eq!(again.task_and_attempt().0, lost_task);
        assert_ne!(again.task_and_attempt().1, lost_attempt);
    }
}
