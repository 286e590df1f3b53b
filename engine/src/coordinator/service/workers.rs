//! The worker side of the service: registration, polls, held heartbeats
//! with reconciliation, and reports, each bound to the worker's secret
//! and the identity that registered it.

use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::{ErrorKind, MAX_POLL_WAIT, Service, ServiceError, lock};
use crate::coordinator::JobState;
use crate::coordinator::cluster::Cluster;
use crate::coordinator::journal::{Event, TaskOutput};
use crate::identity::Identity;
use crate::protocol::{Assignment, HeartbeatReply, JobRef, Outcome, Registration, ReportResult};
use crate::task::{AttemptFailure, FailureKind};
use crate::{AttemptId, JobId, TaskId, WorkerId};

impl Service {
    /// Every registered worker as the status page shows it, by name.
    pub fn workers_view(&self) -> Vec<WorkerView> {
        let cluster = lock(&self.cluster);
        let mut running: std::collections::HashMap<&WorkerId, usize> = std::collections::HashMap::new();
        for j in cluster.jobs().filter(|j| !j.job.is_finished()) {
            for t in j.job.maps.iter().chain(&j.job.reduces) {
                for a in t
                    .attempts
                    .iter()
                    .filter(|a| a.state == crate::coordinator::job::AttemptState::Running)
                {
                    *running.entry(&a.worker).or_default() += 1;
                }
            }
        }
        let mut workers: Vec<WorkerView> = cluster
            .workers()
            .map(|(id, w)| WorkerView {
                label: id.to_string(),
                name: w.name.clone(),
                slots: w.slots,
                running: running.get(id).copied().unwrap_or(0),
                draining: w.draining,
                silent_for: w.last_seen.elapsed(),
            })
            .collect();
        workers.sort_by(|a, b| a.label.cmp(&b.label));
        workers
    }

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
                if cluster.is_draining(&worker) {
                    held.answered();
                    return Ok(None);
                }
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

    /// Hand worker `session` nothing more, and answer its open polls now:
    /// it is shutting down. False if it is not registered.
    pub fn drain(&self, caller: &Identity, session: &str) -> bool {
        let mut cluster = lock(&self.cluster);
        let Ok(worker) = Self::worker_of(&cluster, session, caller) else {
            return false;
        };
        cluster.drain(&worker);
        info!(%worker, "worker draining: it finishes its running attempts and is handed no more");
        drop(cluster);
        self.notify();
        true
    }

    /// Forget worker `session` now (it is leaving); what it still runs is
    /// handed back: re-queued without counting against its task.
    pub async fn leave(&self, caller: &Identity, session: &str) {
        let now = SystemTime::now();
        let pending = {
            let mut cluster = lock(&self.cluster);
            let Ok(worker) = Self::worker_of(&cluster, session, caller) else {
                return;
            };
            let expired = cluster.leave(&worker, now);
            if expired.attempts.is_empty() {
                info!(%worker, "worker left");
            } else {
                warn!(%worker, attempts = expired.attempts.len(), "worker left with attempts running; they are re-queued");
            }
            self.lost(&mut cluster, expired, now)
        };
        if let Some(pending) = pending {
            // A failure stops the service.
            let _ = self.durable(pending).await;
        }
        self.notify();
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
        let counters = match &outcome {
            Outcome::Map(m) => Some(m.counters.clone()),
            Outcome::Reduce(r) => Some(r.counters.clone()),
            Outcome::Failed(_) => None,
        };
        let result = cluster.report(worker, job, task, attempt, outcome, now);
        if let Some(a) = cluster.job(job).and_then(|j| j.job.attempt(task, attempt))
            && a.ended == Some(now)
        {
            // Counted once, as it ended now (a stale report changes nothing).
            let seconds = now.duration_since(started).unwrap_or_default().as_secs_f64();
            self.metrics
                .attempt_ended(task.phase, &a.state, counters.as_ref(), seconds);
        }
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
}

/// A registered worker, for the status page.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Its label in status and logs.
    pub label: String,
    /// Its own name for itself (host:pid).
    pub name: String,
    /// Its task slots.
    pub slots: u32,
    /// Attempts it is running.
    pub running: usize,
    /// Whether it is draining (shutting down): it is handed nothing more.
    pub draining: bool,
    /// Since its last call.
    pub silent_for: Duration,
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
