//! Task slots. A worker registers with the coordinator through a [`Link`]
//! (over gRPC for `wmr worker`, [`remote`]; in process for `wmr run`, a link
//! the command line makes), heartbeats to keep its lease and learn which
//! attempts to stop, and runs slots that poll for an assignment, run it (I/O
//! on tokio, CPU on the compute pool), and report how it ended. When the
//! coordinator forgets the worker (its lease expired, or the coordinator
//! restarted) or cannot be reached, the worker registers again by itself,
//! with backoff. What it says to the coordinator is [`crate::protocol`].

pub mod metrics;
pub mod remote;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{Instrument, info, info_span, warn};

use self::metrics::WorkerMetrics;
use crate::compute::ComputePool;
use crate::error_chain;
use crate::protocol::{Assignment, HeartbeatReply, JobRef, Outcome, Registration, ReportResult};
use crate::runtime::{CancelFlag, JobModule, Runtime};
use crate::task::{self, AttemptFailure, FailureKind, JobContext, load_module};
use crate::{AttemptId, JobId, ModuleDigest, TaskId};

/// The least time between two heartbeats.
const RESEND_AFTER_CANCEL: Duration = Duration::from_millis(100);

/// How long one poll waits at the coordinator.
const POLL_WAIT: Duration = Duration::from_secs(10);

/// Why a call to the coordinator failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The coordinator does not know this worker: register again.
    #[error("the coordinator does not know this worker")]
    Forgotten,
    /// The coordinator could not be reached or failed; try again.
    #[error("{0}")]
    Unavailable(String),
    /// The coordinator refused the call.
    #[error("{0}")]
    Refused(String),
}

/// A worker's way to its coordinator.
#[async_trait::async_trait]
pub trait Link: Send + Sync + 'static {
    /// Register a worker named `name` with `slots` slots.
    async fn register(&self, name: &str, slots: u32) -> Result<Registration, LinkError>;
    /// The next assignment, waiting up to `wait` for one.
    async fn poll(&self, reg: &Registration, wait: Duration) -> Result<Option<(JobRef, Assignment)>, LinkError>;
    /// Renew the lease, saying which attempts run here; the coordinator
    /// may hold the call open up to `hold` (answering early with attempts
    /// to stop).
    async fn heartbeat(
        &self,
        reg: &Registration,
        running: Vec<AttemptId>,
        hold: Duration,
    ) -> Result<HeartbeatReply, LinkError>;
    /// Say how an attempt ended.
    async fn report(
        &self,
        reg: &Registration,
        job: &JobId,
        (task, attempt): (TaskId, AttemptId),
        outcome: &Outcome,
    ) -> Result<ReportResult, LinkError>;
    /// A job module's bytes.
    async fn module(&self, reg: &Registration, digest: &ModuleDigest) -> Result<bytes::Bytes, LinkError>;
    /// Say this worker is shutting down: it is handed nothing more, and its
    /// open polls are answered at once.
    async fn drain(&self, _reg: &Registration) -> Result<(), LinkError> {
        Ok(())
    }
    /// Say this worker leaves now, so it is forgotten without waiting out
    /// its lease.
    async fn leave(&self, _reg: &Registration) -> Result<(), LinkError> {
        Ok(())
    }
    /// How often to heartbeat, given the lease; each heartbeat is held open
    /// at the coordinator for about as long.
    fn heartbeat_every(&self, lease: Duration) -> Duration {
        lease / 3
    }

    /// Whether heartbeats are held open at the coordinator (over a network,
    /// where that tells when the connection drops).
    fn holds_heartbeats(&self) -> bool {
        true
    }
}

/// What a worker runs with.
#[derive(Clone)]
pub struct WorkerSetup {
    /// Task slots.
    pub slots: usize,
    /// This worker's name in logs and status.
    pub name: String,
    /// The wasm runtime.
    pub runtime: Arc<Runtime>,
    /// The compute pool, one thread per slot.
    pub pool: Arc<ComputePool>,
    /// What `/metrics` shows.
    pub metrics: Arc<WorkerMetrics>,
}

/// Run one attempt and turn its result into an outcome.
pub async fn run_assignment(ctx: &JobContext, assignment: &Assignment) -> Outcome {
    let result = match assignment {
        Assignment::Map(a) => task::run_map(ctx, a).await.map(Outcome::Map),
        Assignment::Reduce(a) => task::run_reduce(ctx, a).await.map(Outcome::Reduce),
    };
    result.unwrap_or_else(|e| {
        let failure = AttemptFailure::of(&e);
        warn!(error = %failure.message, kind = failure.kind.as_str(), "attempt failed");
        Outcome::Failed(failure)
    })
}

/// How many jobs' modules a worker keeps loaded; the least recently used
/// goes first (and its compiled code with it, once no attempt holds it).
const LOADED_JOBS: usize = 16;

/// Compiled modules, configured per job, shared by the slots.
struct Modules {
    setup: WorkerSetup,
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
    async fn context(&self, link: &dyn Link, reg: &Registration, job: &JobRef) -> Result<JobContext, String> {
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
                let bytes = link
                    .module(reg, &job.module)
                    .await
                    .map_err(|e| format!("fetching module {}: {e}", job.module))?;
                // The store is shared: what comes back must be what the
                // coordinator checked, byte for byte.
                let digest = ModuleDigest::of(&bytes);
                if digest != job.module {
                    return Err(format!(
                        "module {} read from the store has digest {digest}: it was altered or corrupted there; \
                         upload it again",
                        job.module
                    ));
                }
                let what = job.module.to_string();
                let module = load_module(
                    &self.setup.runtime,
                    &self.setup.pool,
                    &what,
                    bytes,
                    &job.params,
                    job.limits,
                )
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
            runtime: self.setup.runtime.clone(),
            module,
            pool: self.setup.pool.clone(),
            cancel: CancelFlag::default(),
        })
    }
}

/// How to stop a running attempt: its guest (the flag), and the slot
/// waiting on it.
#[derive(Clone, Default)]
struct Stop {
    guest: CancelFlag,
    slot: Arc<Notify>,
}

impl Stop {
    fn stop(&self) {
        self.guest.cancel();
        self.slot.notify_one();
    }
}

/// The attempts running on this worker, each with a way to stop it.
type Running = Arc<Mutex<HashMap<AttemptId, Stop>>>;

/// An attempt's entry in [`Running`], for as long as its slot holds it.
struct Listed {
    running: Running,
    attempt: AttemptId,
    stop: Stop,
}

impl Listed {
    fn new(running: &Running, attempt: AttemptId, stop: Stop) -> Self {
        running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(attempt, stop.clone());
        Listed {
            running: running.clone(),
            attempt,
            stop,
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.attempt);
        // A slot dropped mid-attempt (the coordinator forgot this worker)
        // leaves no guest running.
        self.stop.guest.cancel();
    }
}

/// Tells a worker to drain: take no more attempts, finish (or, past the
/// drain timeout, hand back) the running ones, leave the cluster, return.
pub type DrainSignal = tokio::sync::watch::Receiver<bool>;

/// Wait until `drain` says to drain (forever if its sender goes).
async fn drain_requested(mut drain: DrainSignal) {
    if drain.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Run a worker through `link` until the future is dropped, or until it
/// has drained after `drain` said to: its running attempts finished and
/// reported (within `drain_timeout`; those still running then are handed
/// back, and run again elsewhere), and it has left the cluster.
pub async fn run_worker(link: Arc<dyn Link>, setup: WorkerSetup, drain: DrainSignal, drain_timeout: Duration) {
    let modules = Arc::new(Modules {
        setup: setup.clone(),
        loaded: Mutex::new(HashMap::new()),
    });
    setup.metrics.slots.set(setup.slots as i64);
    let running: Running = Arc::new(Mutex::new(HashMap::new()));
    let mut backoff = Duration::from_millis(100);
    loop {
        if *drain.borrow() {
            return;
        }
        let reg = match link.register(&setup.name, setup.slots as u32).await {
            Ok(r) => {
                backoff = Duration::from_millis(100);
                Arc::new(r)
            }
            Err(e) => {
                warn!(error = %e, "can't register with the coordinator; retrying in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = drain_requested(drain.clone()) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        info!(worker = %reg.label, "registered");
        let heartbeat = heartbeat_loop(link.as_ref(), &reg, running.clone());
        let slots = futures::future::join_all((0..setup.slots.max(1)).map(|slot| {
            slot_loop(
                link.as_ref(),
                &reg,
                Slot {
                    modules: modules.clone(),
                    running: running.clone(),
                    metrics: setup.metrics.clone(),
                    drain: drain.clone(),
                    index: slot,
                },
            )
        }));
        // Once told to drain: tell the coordinator (so open polls end at
        // once), then give the slots until the timeout to finish.
        let draining = async {
            drain_requested(drain.clone()).await;
            let deadline = tokio::time::Instant::now() + drain_timeout;
            setup.metrics.draining.set(1);
            info!(worker = %reg.label, "draining: finishing the running attempts, taking no more");
            match tokio::time::timeout(reg.lease, link.drain(&reg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "telling the coordinator this worker drains failed; its polls end on their own")
                }
                Err(_) => warn!("the coordinator did not answer the drain; this worker's polls end on their own"),
            }
            tokio::time::sleep_until(deadline).await;
            let left = running.lock().unwrap_or_else(|p| p.into_inner()).len();
            warn!(
                attempts = left,
                "the drain timeout passed with attempts running; handing them back"
            );
        };
        // Either of the first two ends when the coordinator no longer knows
        // this worker; the slots also end once drained.
        tokio::select! {
            () = heartbeat => {}
            _ = slots => {}
            () = draining => {}
        }
        if *drain.borrow() {
            // Slots dropped mid-attempt stopped their guests; leaving now
            // re-queues those attempts at once instead of after the lease.
            match tokio::time::timeout(reg.lease, link.leave(&reg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "leaving the cluster failed; the coordinator forgets this worker after its lease")
                }
                Err(_) => warn!("the coordinator did not answer; it forgets this worker after its lease"),
            }
            info!(worker = %reg.label, "drained and left");
            return;
        }
        warn!(worker = %reg.label, "the coordinator no longer knows this worker; registering again");
    }
}

/// A send time that makes the next heartbeat, every `every`, due in
/// `soon` (never earlier than the clock allows: `Instant` can't go back
/// past its origin).
fn due_in(every: Duration, soon: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_sub(every.saturating_sub(soon)).unwrap_or(now)
}

/// Heartbeat; returns once the coordinator says it does not know this
/// worker, or has not answered for a whole lease.
async fn heartbeat_loop(link: &dyn Link, reg: &Registration, running: Running) {
    let every = link.heartbeat_every(reg.lease);
    let hold = if link.holds_heartbeats() { every } else { Duration::ZERO };
    let mut last_answer = tokio::time::Instant::now();
    let mut sent = due_in(every, Duration::ZERO);
    loop {
        // Held heartbeats go again at once; others (and ones answered
        // early with nothing to stop) wait out the interval.
        let wait = every.saturating_sub(sent.elapsed());
        if hold.is_zero() || !wait.is_zero() {
            tokio::time::sleep(if hold.is_zero() { every } else { wait }).await;
        }
        sent = tokio::time::Instant::now();
        let attempts: Vec<AttemptId> = running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        match tokio::time::timeout(reg.lease + hold, link.heartbeat(reg, attempts, hold)).await {
            Ok(Ok(reply)) => {
                if !reply.cancel.is_empty() {
                    // Answered early to stop attempts: ask again soon.
                    sent = due_in(every, RESEND_AFTER_CANCEL);
                }
                if !reply.known {
                    return;
                }
                last_answer = tokio::time::Instant::now();
                let running = running.lock().unwrap_or_else(|p| p.into_inner());
                for a in reply.cancel {
                    if let Some(stop) = running.get(&a) {
                        info!(attempt = a.0, "stopping an attempt the coordinator no longer needs");
                        stop.stop();
                    }
                }
            }
            Ok(Err(LinkError::Forgotten)) => return,
            Ok(Err(e)) => {
                warn!(error = %e, "heartbeat failed");
                // Try again soon: a dropped call is a sign of death to
                // the coordinator unless another follows.
                sent = due_in(every, RESEND_AFTER_CANCEL);
            }
            Err(_) => warn!("heartbeat timed out"),
        }
        if last_answer.elapsed() > reg.lease {
            return;
        }
    }
}

/// What one slot works with.
struct Slot {
    modules: Arc<Modules>,
    running: Running,
    metrics: Arc<WorkerMetrics>,
    drain: DrainSignal,
    index: usize,
}

/// One slot: poll, run, report, until the coordinator forgets this worker
/// or it drains.
async fn slot_loop(link: &dyn Link, reg: &Registration, slot: Slot) {
    let Slot {
        modules,
        running,
        metrics,
        drain,
        index: slot,
    } = slot;
    loop {
        // Draining: take nothing more. (An assignment a poll already
        // brought back runs to its end first.)
        if *drain.borrow() {
            return;
        }
        let (job, assignment) = match link.poll(reg, POLL_WAIT).await {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(LinkError::Forgotten) => return,
            Err(e) => {
                warn!(slot, error = %e, "polling for a task failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (task, attempt) = assignment.task_and_attempt();
        let span = info_span!("attempt", worker = %reg.label, slot, job = %job.job, %task, attempt = attempt.0);
        let stop = Stop::default();
        // Listed in heartbeats until its report is answered (else it would
        // look unknown while the report is on its way); dropped with the
        // slot, the entry goes and the guest stops.
        let _listed = Listed::new(&running, attempt, stop.clone());
        let _counted = RunningGauge::new(&metrics);
        let started = Instant::now();
        let outcome = async {
            info!("attempt started");
            let ctx = match modules.context(link, reg, &job).await {
                Ok(ctx) => JobContext {
                    cancel: stop.guest.clone(),
                    ..ctx
                },
                Err(error) => return Some(Outcome::Failed(AttemptFailure::new(FailureKind::Module, error))),
            };
            tokio::select! {
                outcome = run_assignment(&ctx, &assignment) => Some(outcome),
                () = stop.slot.notified() => None,
            }
        }
        .instrument(span.clone())
        .await;
        metrics.attempt_ended(task, outcome.as_ref(), started.elapsed().as_secs_f64());
        let Some(outcome) = outcome else { continue };
        report(link, reg, &job.job, (task, attempt), &outcome)
            .instrument(span)
            .await;
    }
}

/// Counts an attempt in the running gauge while it lives.
struct RunningGauge(Arc<WorkerMetrics>);

impl RunningGauge {
    fn new(metrics: &Arc<WorkerMetrics>) -> Self {
        metrics.running.inc();
        RunningGauge(metrics.clone())
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        self.0.running.dec();
    }
}

/// Report an outcome, retrying while the coordinator is unreachable: a
/// committed map output is worth delivering. Gives up after a few leases;
/// the attempt is then lost and re-run elsewhere.
async fn report(link: &dyn Link, reg: &Registration, job: &JobId, ids: (TaskId, AttemptId), outcome: &Outcome) {
    let give_up = tokio::time::Instant::now() + reg.lease * 3;
    loop {
        match link.report(reg, job, ids, outcome).await {
            Ok(result) => {
                info!(?result, "reported");
                return;
            }
            Err(LinkError::Unavailable(error)) => {
                if tokio::time::Instant::now() > give_up {
                    warn!(%error, "giving up reporting");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                warn!(error = %e, "report refused");
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
