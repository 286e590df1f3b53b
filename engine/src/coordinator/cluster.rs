//! Many jobs and many workers: which job's task a polling worker gets (fair
//! share: the running job with the fewest running attempts goes first), who
//! is alive (leases renewed by heartbeats), and what a lost worker costs
//! (only its running attempts). Pure state, time passed in, no I/O: the
//! gRPC service around it does the waiting, journaling and committing.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::job::{Job, JobState};
use crate::protocol::{Assignment, JobRef, Outcome, ReportResult};
use crate::{AttemptId, JobId, TaskId, WorkerId};

/// A job in the cluster: its state machine and what workers need to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// When a call it held open was dropped (its connection went away),
    /// if it has not been heard from since.
    pub dropped_at: Option<Instant>,
    /// It is shutting down: it is handed nothing more.
    pub draining: bool,
}

/// How long a worker whose held call was dropped has to call again before
/// it counts as lost: a live worker calls again at once, and a dropped
/// connection nearly always means its process died (Spark drops an
/// executor as soon as its connection goes). A worker whose held
/// heartbeat failed sends it again within 100 ms; the rest is room for it
/// to reconnect (TCP, TLS and HTTP/2 handshakes) before it is lost.
pub const DROPPED_GRACE: Duration = Duration::from_millis(600);

/// What expiring silent workers cost.
#[derive(Debug, Default)]
pub struct Expired {
    /// The workers lost.
    pub workers: Vec<WorkerId>,
    /// Their running attempts, now lost: job, task, attempt, worker, start.
    pub attempts: Vec<(JobId, TaskId, AttemptId, WorkerId, SystemTime)>,
    /// Jobs that failed because a task was lost too often.
    pub failed_jobs: Vec<JobId>,
    /// The workers left and handed their attempts back: they do not count
    /// against their tasks.
    pub handed_back: bool,
}

/// An attempt handed to a worker.
#[derive(Debug, Clone)]
struct Handed {
    job: JobId,
    task: TaskId,
    worker: WorkerId,
    at: Instant,
    /// Its worker has reported it. The worker lists it as running until
    /// its report is answered; until it stops listing it, a heartbeat that
    /// names it is not told to cancel it. (Told so, the worker would drop
    /// its held heartbeat to ask again a moment later, and a worker killed
    /// in that moment would be noticed only when its lease lapsed.)
    reported: bool,
}

/// What a worker's heartbeat and the coordinator's view disagree on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Attempts the worker runs that the coordinator no longer wants: their
    /// job ended, another attempt won, they were given up as lost, or they
    /// are not this worker's. The worker stops them.
    pub cancel: Vec<AttemptId>,
    /// Attempts the coordinator handed to the worker a while ago that the
    /// worker does not know (the assignment was lost on its way, or could
    /// not be read): they are failed, so their tasks run again.
    pub unknown: Vec<(JobId, TaskId, AttemptId)>,
}

/// Every job and worker the coordinator knows.
#[derive(Debug)]
pub struct Cluster {
    jobs: BTreeMap<JobId, ClusterJob>,
    workers: HashMap<WorkerId, ClusterWorker>,
    /// Each registration's secret, to the worker it names.
    sessions: HashMap<String, WorkerId>,
    /// Every attempt handed out and not yet lost, for reconciling with
    /// workers' heartbeats; a reported one until its worker no longer
    /// lists it.
    attempts: HashMap<AttemptId, Handed>,
    next_worker: u64,
    /// The next attempt id of this coordinator run, for every job (see
    /// [`Job::set_attempt_base`]).
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

    /// Every job, to snapshot; finished ones beyond the newest `keep` are
    /// forgotten first, so the coordinator's state stays bounded.
    pub fn snapshot_jobs(&mut self, keep: usize) -> Vec<ClusterJob> {
        let mut finished: Vec<(SystemTime, JobId)> = self
            .jobs
            .values()
            .filter(|j| j.job.is_finished())
            .map(|j| (j.ended.unwrap_or(j.submitted), j.job.spec.id.clone()))
            .collect();
        if finished.len() > keep {
            finished.sort();
            for (_, id) in &finished[..finished.len() - keep] {
                self.jobs.remove(id);
            }
        }
        self.jobs.values().cloned().collect()
    }

    /// Forget every job (replay is about to load a snapshot).
    pub fn clear_jobs(&mut self) {
        self.jobs.clear();
        self.attempts.clear();
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
                dropped_at: None,
                draining: false,
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
                w.dropped_at = None;
                true
            }
            None => false,
        }
    }

    /// A call `worker` held open (a poll, a heartbeat) was dropped before
    /// it was answered: its connection went away. Unless it calls again
    /// within [`DROPPED_GRACE`], it is lost then, not at the end of its lease.
    pub fn call_dropped(&mut self, worker: &WorkerId, now: Instant) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.dropped_at = Some(now);
        }
    }

    /// Whether `worker` is registered.
    pub fn knows(&self, worker: &WorkerId) -> bool {
        self.workers.contains_key(worker)
    }

    /// Compare what `worker` says it runs with what it was handed: see
    /// [`Reconciled`]. An attempt counts as unknown only once `grace` has
    /// passed since it was handed out (its assignment may still be on its
    /// way when the heartbeat leaves).
    pub fn reconcile(&mut self, worker: &WorkerId, running: &[AttemptId], now: Instant, grace: Duration) -> Reconciled {
        let live = |jobs: &BTreeMap<JobId, ClusterJob>, h: &Handed, a: AttemptId| {
            jobs.get(&h.job)
                .is_some_and(|j| j.job.state == JobState::Running && j.job.attempt_is_running(h.task, a))
        };
        let mut out = Reconciled::default();
        for a in running {
            let wanted = self
                .attempts
                .get(a)
                .is_some_and(|h| &h.worker == worker && (h.reported || live(&self.jobs, h, *a)));
            if !wanted {
                out.cancel.push(*a);
            }
        }
        let mut done = Vec::new();
        for (a, h) in &self.attempts {
            if &h.worker != worker || running.contains(a) {
                continue;
            }
            if h.reported {
                done.push(*a);
                continue;
            }
            if !live(&self.jobs, h, *a) {
                // Ended some other way (its job, a backup); nothing to do.
                done.push(*a);
            } else if now.duration_since(h.at) > grace {
                out.unknown.push((h.job.clone(), h.task, *a));
            }
        }
        for a in done.iter().chain(out.cancel.iter()) {
            if self.attempts.get(a).is_some_and(|h| &h.worker == worker) {
                self.attempts.remove(a);
            }
        }
        out
    }

    /// Drop workers silent past the lease and re-queue their running
    /// attempts (each lost attempt counts against its task).
    pub fn expire(&mut self, now: Instant, wall: SystemTime) -> Expired {
        let lease = self.lease;
        let lost: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                now.duration_since(w.last_seen) > lease
                    || w.dropped_at.is_some_and(|d| now.duration_since(d) > DROPPED_GRACE)
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.remove_workers(lost, wall, false)
    }

    /// Mark `worker` as draining: it is handed nothing more. False if it
    /// is not registered.
    pub fn drain(&mut self, worker: &WorkerId) -> bool {
        self.workers.get_mut(worker).map(|w| w.draining = true).is_some()
    }

    /// Whether `worker` is draining.
    pub fn is_draining(&self, worker: &WorkerId) -> bool {
        self.workers.get(worker).is_some_and(|w| w.draining)
    }

    /// Forget `worker` at once (it is leaving); what it still ran is handed
    /// back and re-queued, without counting against its task.
    pub fn leave(&mut self, worker: &WorkerId, wall: SystemTime) -> Expired {
        self.remove_workers(vec![worker.clone()], wall, true)
    }

    fn remove_workers(&mut self, lost: Vec<WorkerId>, wall: SystemTime, handed_back: bool) -> Expired {
        let mut expired = Expired {
            handed_back,
            ..Expired::default()
        };
        for id in &lost {
            if let Some(w) = self.workers.remove(id) {
                self.sessions.remove(&w.session);
            }
            self.attempts.retain(|_, h| !(h.reported && &h.worker == id));
            for job in self.jobs.values_mut() {
                let (attempts, failed) = job.job.worker_lost(id, wall, !handed_back);
                for (task, attempt, started) in attempts {
                    self.attempts.remove(&attempt);
                    expired
                        .attempts
                        .push((job.job.spec.id.clone(), task, attempt, id.clone(), started));
                }
                if failed {
                    expired.failed_jobs.push(job.job.spec.id.clone());
                }
            }
        }
        expired.workers = lost;
        expired
    }

    /// The next assignment for `worker`: from the running job with pending
    /// work and the fewest attempts running (ties: the oldest job).
    pub fn next_assignment(&mut self, worker: &WorkerId, now: SystemTime) -> Option<(JobRef, Assignment)> {
        if self.workers.get(worker).is_none_or(|w| w.draining) {
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
        // Attempt ids are unique across jobs: workers and heartbeats name
        // attempts by id alone.
        let next = self.attempt_base;
        let (job, assignment) = running.into_iter().find_map(|j| {
            j.job.set_attempt_base(next);
            j.job.next_assignment(worker, now, self.backup_after).map(|a| (j, a))
        })?;
        let (task, attempt) = assignment.task_and_attempt();
        self.attempt_base = attempt.0 + 1;
        self.attempts.insert(
            attempt,
            Handed {
                job: job.job.spec.id.clone(),
                task,
                worker: worker.clone(),
                at: Instant::now(),
                reported: false,
            },
        );
        Some((job.job_ref.clone(), assignment))
    }

    /// The worker attempt `attempt` of `task` of `job` was assigned to.
    pub fn assigned_worker(&self, job: &JobId, task: TaskId, attempt: AttemptId) -> Option<&WorkerId> {
        self.jobs.get(job)?.job.attempt_worker(task, attempt)
    }

    /// Record how an attempt ended.
    pub fn report(
        &mut self,
        worker: &WorkerId,
        job: &JobId,
        task: TaskId,
        attempt: AttemptId,
        outcome: Outcome,
        now: SystemTime,
    ) -> ReportResult {
        // Kept, marked, until the worker's heartbeats stop naming it.
        if let Some(h) = self.attempts.get_mut(&attempt).filter(|h| &h.worker == worker) {
            h.reported = true;
        }
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
    use crate::ModuleDigest;
    use crate::Phase;
    use crate::limits::Limits;
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
        let handed: Vec<(JobId, AttemptId)> = (0..6)
            .map(|_| {
                let (job, a) = c.next_assignment(&w, SystemTime::now()).expect("work");
                (job.job, a.task_and_attempt().1)
            })
            .collect();
        // Attempt ids are unique across jobs: workers name attempts by id alone.
        let ids: std::collections::BTreeSet<AttemptId> = handed.iter().map(|(_, a)| *a).collect();
        assert_eq!(ids.len(), 6);
        let got: Vec<JobId> = handed.into_iter().map(|(j, _)| j).collect();
        assert_eq!(got.iter().filter(|j| **j == ida).count(), 3);
        assert_eq!(got.iter().filter(|j| **j == idb).count(), 3);
    }

    #[test]
    fn heartbeats_reconcile_what_a_worker_runs_with_what_it_was_handed() {
        let mut c = Cluster::new(Duration::from_secs(10), 0, None);
        let j = job(3, 1);
        let id = j.job.spec.id.clone();
        c.add_job(j);
        let start = Instant::now();
        let (w, _) = c.register("w".into(), 3, "pool".into(), start);
        let (w2, _) = c.register("w2".into(), 1, "pool".into(), start);
        let handed: Vec<(TaskId, AttemptId)> = (0..3)
            .map(|_| {
                c.next_assignment(&w, SystemTime::now())
                    .expect("work")
                    .1
                    .task_and_attempt()
            })
            .collect();
        let grace = Duration::from_secs(2);
        // Another worker claiming w's attempt, and an attempt nobody was
        // handed: both to be stopped.
        let r = c.reconcile(&w2, &[handed[0].1, AttemptId(999)], start, grace);
        assert_eq!(r.cancel, vec![handed[0].1, AttemptId(999)]);
        // w runs the first two; the third is unknown to it, but only past the grace.
        let running = [handed[0].1, handed[1].1];
        assert_eq!(c.reconcile(&w, &running, start, grace), Reconciled::default());
        let r = c.reconcile(&w, &running, start + Duration::from_secs(3), grace);
        assert!(r.cancel.is_empty());
        assert_eq!(r.unknown, vec![(id.clone(), handed[2].0, handed[2].1)]);
        // An attempt w has reported, which it lists until the report is
        // answered, is not one to stop (that would break w's held heartbeat
        // off); once w no longer lists it, it is forgotten.
        let out = Outcome::Map(MapOutput {
            counters: Default::default(),
        });
        let (task, attempt) = handed[0];
        assert_eq!(
            c.report(&w, &id, task, attempt, out, SystemTime::now()),
            ReportResult::Committed
        );
        assert_eq!(
            c.reconcile(&w, &running, start + Duration::from_secs(3), grace).cancel,
            []
        );
        let running = [handed[1].1];
        assert_eq!(c.reconcile(&w, &running, start, grace), Reconciled::default());
        assert_eq!(c.reconcile(&w, &[attempt], start, grace).cancel, [attempt]);
        // Once its job is cancelled, what w still runs is stopped.
        c.job_mut(&id).expect("job").job.cancel();
        let r = c.reconcile(&w, &running, start + Duration::from_secs(4), grace);
        assert_eq!(r.cancel, running.to_vec());
        assert!(r.unknown.is_empty());
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
            c.report(&w, &id, task, attempt, out, SystemTime::now()),
            ReportResult::Committed
        );
        // Within the lease nothing is lost; past it, the worker and its
        // running attempt are.
        assert!(
            c.expire(start + Duration::from_secs(5), SystemTime::now())
                .workers
                .is_empty()
        );
        let expired = c.expire(start + Duration::from_secs(11), SystemTime::now());
        assert_eq!(expired.workers, vec![w.clone()]);
        assert_eq!(expired.attempts.len(), 1);
        assert!(expired.failed_jobs.is_empty());
        assert!(!c.knows(&w));
        assert_eq!(c.worker_of(&session, "pool"), None);
        let job = &c.job(&id).expect("job").job;
        assert_eq!(job.progress().0, (1, 2));
        let (lost_task, lost_attempt) = second.task_and_attempt();
        assert_eq!(lost_task.phase, Phase::Map);
        // The lost attempt's late report is refused; a new worker gets the task.
        let late = Outcome::Failed(crate::task::AttemptFailure::new(crate::task::FailureKind::Guest, "x"));
        assert_eq!(
            c.report(&w, &id, lost_task, lost_attempt, late, SystemTime::now()),
            ReportResult::Stale
        );
        let (w2, _) = c.register("w2".into(), 1, "pool".into(), start);
        let (_, again) = c.next_assignment(&w2, SystemTime::now()).expect("re-queued");
        assert_eq!(again.task_and_attempt().0, lost_task);
        assert_ne!(again.task_and_attempt().1, lost_attempt);
    }
}
