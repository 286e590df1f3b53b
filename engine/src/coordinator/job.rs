//! The job state machine: pure, no I/O and no wasmtime. Events in (a worker
//! asks for work, an attempt reports, a worker is lost), decisions out (an
//! assignment, a commit, a retry, the job's end).
//!
//! ```text
//! job:      Running ──all reduces committed──▶ Committing ──▶ Succeeded
//!              └──a task failed max times / cancel──▶ Failed | Cancelled
//! task:     Pending ──assign──▶ Running ──first success──▶ Committed
//!              ▲                   │ failure (< max) / worker lost
//!              └───────────────────┘            failure (= max) ──▶ Failed
//! attempt:  Running ──▶ Succeeded (committed) | Failed | Lost | Superseded
//! ```
//! Reduces are assigned only once every map has committed. A report from an
//! attempt that is no longer running (lost, superseded, or from a finished
//! job) is refused as stale: only the first successful attempt commits.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::data::MapInput;
use crate::data::output::OutputFormat;
use crate::layout::JobLayout;
use crate::shuffle::Partitioner;
use crate::task::{AttemptFailure, Counters, FailureKind, MapAssignment, MapOutput, ReduceAssignment, ReduceOutput};
use crate::{AttemptId, JobId, Phase, TaskId, WorkerId};

/// Default maximum attempts per task.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// What a job is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's id.
    pub id: JobId,
    /// Inputs as given.
    pub inputs: Vec<String>,
    /// The output directory.
    pub output: String,
    /// Scratch directory for shuffle objects and attempt outputs.
    pub work_dir: String,
    /// Reduce partitions.
    pub reducers: u32,
    /// Output format.
    pub format: OutputFormat,
    /// Maximum attempts per task.
    pub max_attempts: u32,
    /// Whether slow tasks may get backup attempts near the end of a phase.
    #[serde(default = "speculation_default")]
    pub speculation: bool,
    /// The memory budget of one task (map buffer, merges, writers), in
    /// bytes; past it, a task spills to local disk.
    #[serde(default = "task_memory_default", alias = "map_buffer")]
    pub task_memory: u64,
    /// Records a map task may skip after the guest failed on them.
    #[serde(default)]
    pub skip_bad_records: u32,
    /// How map output is divided among reduce partitions.
    #[serde(default)]
    pub partitioner: Partitioner,
}

/// Default for [`JobSpec::task_memory`] (the task layer owns the budget).
pub use crate::task::DEFAULT_TASK_MEMORY;

fn task_memory_default() -> u64 {
    DEFAULT_TASK_MEMORY
}

impl JobSpec {
    /// Where this job's attempts write and its output is committed.
    pub fn layout(&self) -> JobLayout<'_> {
        JobLayout {
            output: &self.output,
            scratch: &self.work_dir,
            format: self.format,
        }
    }
}

fn speculation_default() -> bool {
    true
}

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Tasks are running.
    Running,
    /// Every reduce committed; output files are being moved into place.
    Committing,
    /// Done; `_SUCCESS` is written.
    Succeeded,
    /// A task failed too often.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

/// The state of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a slot.
    Pending,
    /// An attempt is running.
    Running,
    /// An attempt succeeded and its output is the task's.
    Committed,
    /// Every allowed attempt failed.
    Failed,
}

/// How an attempt ended (or that it has not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum AttemptState {
    /// Still running.
    Running,
    /// Succeeded and committed.
    Succeeded,
    /// Failed with this error.
    Failed {
        /// The error, one line.
        error: String,
        /// What kind of failure.
        #[serde(default)]
        kind: FailureKind,
    },
    /// Its worker was lost.
    Lost,
    /// Another attempt of its task (a backup, or the original) committed first.
    Superseded,
}

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its id.
    pub id: AttemptId,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// When it started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: Option<SystemTime>,
    /// How it ended.
    pub state: AttemptState,
}

/// One task and its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// Its state.
    pub state: TaskState,
    /// Every attempt so far.
    pub attempts: Vec<Attempt>,
    /// Failures counted toward the maximum (lost attempts included).
    pub failures: u32,
    /// Failures that do not count (store outages), bounded apart.
    #[serde(default)]
    pub uncounted: u32,
    /// Input records the guest failed on, skipped from then on: text lines
    /// by byte offset, other records by ordinal within their split, with
    /// the split's index among the task's packed files in the top 16 bits
    /// ([`crate::task::record_id`]).
    #[serde(default)]
    pub skipped: Vec<u64>,
}

/// Failures that do not count against `--max-attempts` (store outages)
/// one task may have before the job fails all the same.
pub const MAX_UNCOUNTED_FAILURES: u32 = 16;

/// How far down the pending queue to look for a task that has not failed
/// on the asking worker.
const RETRY_ELSEWHERE_LOOKAHEAD: usize = 64;

impl Task {
    /// Whether an attempt of this task failed on `worker`.
    fn failed_on(&self, worker: &WorkerId) -> bool {
        self.attempts
            .iter()
            .any(|a| &a.worker == worker && matches!(a.state, AttemptState::Failed { .. }))
    }

    fn new(id: TaskId) -> Self {
        Task {
            id,
            state: TaskState::Pending,
            attempts: Vec::new(),
            failures: 0,
            uncounted: 0,
            skipped: Vec::new(),
        }
    }
}

/// A unit of work handed to a worker slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignment {
    /// Run a map attempt.
    Map(MapAssignment),
    /// Run a reduce attempt.
    Reduce(ReduceAssignment),
}

impl Assignment {
    /// The task and attempt this assignment runs.
    pub fn task_and_attempt(&self) -> (TaskId, AttemptId) {
        match self {
            Assignment::Map(a) => (a.task, a.attempt),
            Assignment::Reduce(a) => (a.task, a.attempt),
        }
    }
}

/// What an attempt reports when it ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A map attempt succeeded.
    Map(MapOutput),
    /// A reduce attempt succeeded.
    Reduce(ReduceOutput),
    /// The attempt failed.
    Failed(AttemptFailure),
}

/// The coordinator's answer to a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportResult {
    /// The attempt's output is now the task's.
    Committed,
    /// The failure was recorded; the task will be retried.
    WillRetry,
    /// The failure was the last allowed; the job failed.
    JobFailed,
    /// The attempt is not the live one (lost, superseded, or the job ended).
    Stale,
}

/// A job: its spec, its splits and the state of every task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// What it was asked to do.
    pub spec: JobSpec,
    /// Its state.
    pub state: JobState,
    /// What each map task reads.
    pub splits: Vec<MapInput>,
    /// The map tasks.
    pub maps: Vec<Task>,
    /// The reduce tasks.
    pub reduces: Vec<Task>,
    /// The committed output of each map task.
    pub map_outputs: Vec<Option<MapOutput>>,
    /// The committed output of each reduce task.
    pub reduce_outputs: Vec<Option<ReduceOutput>>,
    /// Why the job failed.
    pub error: Option<String>,
    /// What kind of failure ended it, if an attempt's did.
    #[serde(default)]
    pub failure_kind: Option<FailureKind>,
    next_attempt: u64,
    /// Pending tasks in the order they are handed out, so that choosing the
    /// next one costs O(1) however large the job.
    #[serde(skip)]
    pending_maps: VecDeque<u32>,
    #[serde(skip)]
    pending_reduces: VecDeque<u32>,
    #[serde(skip)]
    maps_committed: usize,
    #[serde(skip)]
    reduces_committed: usize,
    #[serde(skip)]
    running: usize,
    /// (count, total run time) of committed attempts, maps then reduces:
    /// what "slow" is measured against.
    #[serde(skip)]
    committed_time: [(u32, Duration); 2],
    /// Every counter name the job's committed attempts used, up to
    /// [`MAX_JOB_COUNTERS`].
    #[serde(skip)]
    counter_names: std::collections::BTreeSet<String>,
}

/// Most distinct counter names one job keeps; updates of further names are
/// dropped and counted (each attempt's guest is capped too, but many
/// attempts could each name different ones).
pub const MAX_JOB_COUNTERS: usize = 1024;

impl Job {
    /// A new job over `splits`, one map task each.
    pub fn new(spec: JobSpec, splits: Vec<MapInput>) -> Self {
        let maps = (0..splits.len() as u32).map(|i| Task::new(TaskId::map(i))).collect();
        let reduces = (0..spec.reducers).map(|i| Task::new(TaskId::reduce(i))).collect();
        Job {
            pending_maps: (0..splits.len() as u32).collect(),
            pending_reduces: (0..spec.reducers).collect(),
            maps_committed: 0,
            reduces_committed: 0,
            running: 0,
            committed_time: [(0, Duration::ZERO); 2],
            counter_names: Default::default(),
            map_outputs: vec![None; splits.len()],
            reduce_outputs: vec![None; spec.reducers as usize],
            spec,
            state: JobState::Running,
            splits,
            maps,
            reduces,
            error: None,
            failure_kind: None,
            next_attempt: 1,
        }
    }

    /// Recompute what is derived from the tasks (queues, counts, times)
    /// after loading a snapshot. Attempts that were running are dropped,
    /// their tasks pending again: the journal never records that an
    /// attempt started, so a restarted coordinator runs them anew.
    pub fn rebuild(&mut self) {
        for t in self.maps.iter_mut().chain(self.reduces.iter_mut()) {
            t.attempts.retain(|a| a.state != AttemptState::Running);
            if t.state == TaskState::Running {
                t.state = TaskState::Pending;
            }
        }
        let pending = |tasks: &[Task]| {
            tasks
                .iter()
                .filter(|t| t.state == TaskState::Pending)
                .map(|t| t.id.index)
                .collect::<VecDeque<u32>>()
        };
        self.pending_maps = pending(&self.maps);
        self.pending_reduces = pending(&self.reduces);
        let committed = |tasks: &[Task]| tasks.iter().filter(|t| t.state == TaskState::Committed).count();
        self.maps_committed = committed(&self.maps);
        self.reduces_committed = committed(&self.reduces);
        self.running = 0;
        let times = |tasks: &[Task]| {
            tasks
                .iter()
                .flat_map(|t| t.attempts.iter().filter(|a| a.state == AttemptState::Succeeded))
                .fold((0u32, Duration::ZERO), |(n, total), a| {
                    let ran = a
                        .ended
                        .and_then(|e| e.duration_since(a.started).ok())
                        .unwrap_or_default();
                    (n + 1, total + ran)
                })
        };
        self.committed_time = [times(&self.maps), times(&self.reduces)];
        let maps = self.map_outputs.iter().flatten().map(|m| &m.counters);
        let reduces = self.reduce_outputs.iter().flatten().map(|r| &r.counters);
        self.counter_names = maps.chain(reduces).flat_map(|c| c.keys().cloned()).collect();
    }

    /// Start attempt ids at `base`: a restarted coordinator gives each of
    /// its runs its own range, so no attempt id is ever handed out twice.
    pub fn set_attempt_base(&mut self, base: u64) {
        self.next_attempt = self.next_attempt.max(base);
    }

    fn maps_done(&self) -> bool {
        self.maps_committed == self.maps.len()
    }

    /// Attempts running now.
    pub fn running_attempts(&self) -> usize {
        self.running
    }

    /// Whether a task is waiting for a slot.
    pub fn has_pending(&self) -> bool {
        self.state == JobState::Running
            && if self.maps_done() {
                !self.pending_reduces.is_empty()
            } else {
                !self.pending_maps.is_empty()
            }
    }

    /// Whether any attempt has started yet.
    pub fn started(&self) -> bool {
        self.maps.iter().chain(&self.reduces).any(|t| !t.attempts.is_empty())
    }

    fn requeue(&mut self, task: TaskId) {
        match task.phase {
            Phase::Map => self.pending_maps.push_back(task.index),
            Phase::Reduce => self.pending_reduces.push_back(task.index),
        }
    }

    /// Whether the job has ended (succeeded, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// A running task of `phase` that deserves a backup attempt on
    /// `worker`: no task of the phase is waiting, and its one running
    /// attempt (on another worker) has run longer than `backup_after` and
    /// three times the phase's mean. The oldest such task.
    fn backup_candidate(
        &self,
        phase: Phase,
        worker: &WorkerId,
        now: SystemTime,
        backup_after: Option<Duration>,
    ) -> Option<u32> {
        let backup_after = backup_after.filter(|_| self.spec.speculation)?;
        let (count, total) = self.committed_time[phase as usize];
        if count == 0 {
            return None;
        }
        let threshold = backup_after.max(total / count * 3);
        let tasks = match phase {
            Phase::Map => &self.maps,
            Phase::Reduce => &self.reduces,
        };
        tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .filter_map(|t| {
                let mut running = t.attempts.iter().filter(|a| a.state == AttemptState::Running);
                let only = running.next()?;
                let slow = running.next().is_none()
                    && &only.worker != worker
                    && now.duration_since(only.started).is_ok_and(|ran| ran > threshold);
                slow.then_some((only.started, t.id.index))
            })
            .min()
            .map(|(_, index)| index)
    }

    /// Hand the next pending task to `worker`, if any is ready; failing
    /// that, a backup attempt of a slow task (the MapReduce paper's fix for
    /// stragglers) when `backup_after` is given.
    pub fn next_assignment(
        &mut self,
        worker: &WorkerId,
        now: SystemTime,
        backup_after: Option<Duration>,
    ) -> Option<Assignment> {
        if self.state != JobState::Running {
            return None;
        }
        let phase = if self.maps_done() { Phase::Reduce } else { Phase::Map };
        let (queue, tasks) = match phase {
            Phase::Map => (&mut self.pending_maps, &mut self.maps),
            Phase::Reduce => (&mut self.pending_reduces, &mut self.reduces),
        };
        // Entries can be stale (a lost attempt's task re-queued, then
        // committed by the attempt's own late report): skip those. A task
        // that failed on this worker goes to another worker where possible:
        // look a little way down the queue for one that did not.
        let pending = |i: &u32| tasks.get(*i as usize).is_some_and(|t| t.state == TaskState::Pending);
        let index = loop {
            let Some(head) = queue.front() else {
                break self.backup_candidate(phase, worker, now, backup_after)?;
            };
            if !pending(head) {
                queue.pop_front();
                continue;
            }
            let elsewhere = queue
                .iter()
                .take(RETRY_ELSEWHERE_LOOKAHEAD)
                .position(|i| pending(i) && !tasks[*i as usize].failed_on(worker))
                .unwrap_or(0);
            match queue.remove(elsewhere) {
                Some(i) => break i,
                None => return None,
            }
        };
        let tasks = match phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let task = tasks.get_mut(index as usize)?;
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        self.running += 1;
        task.state = TaskState::Running;
        task.attempts.push(Attempt {
            id: attempt,
            worker: worker.clone(),
            started: now,
            ended: None,
            state: AttemptState::Running,
        });
        let index = task.id.index;
        let layout = self.spec.layout();
        Some(match phase {
            Phase::Map => Assignment::Map(MapAssignment {
                task: task.id,
                attempt,
                input: self.splits[index as usize].clone(),
                partitions: self.spec.reducers,
                partitioner: self.spec.partitioner.clone(),
                shuffle_object: layout.shuffle_object(index, attempt),
                memory_bytes: self.spec.task_memory,
                skip_records: task.skipped.clone(),
            }),
            Phase::Reduce => Assignment::Reduce(ReduceAssignment {
                task: task.id,
                attempt,
                map_outputs: self.map_objects(),
                partitions: self.spec.reducers,
                output_file: layout.reduce_output(index, attempt),
                format: self.spec.format,
                memory_bytes: self.spec.task_memory,
            }),
        })
    }

    /// The attempt whose output is `task`'s, once one has committed.
    pub fn committed_attempt(&self, task: TaskId) -> Option<AttemptId> {
        self.tasks(task.phase)
            .get(task.index as usize)?
            .attempts
            .iter()
            .find(|a| a.state == AttemptState::Succeeded)
            .map(|a| a.id)
    }

    /// The shuffle object of every committed map task, as the coordinator
    /// derives it from the committing attempt.
    pub fn map_objects(&self) -> Vec<String> {
        let layout = self.spec.layout();
        self.maps
            .iter()
            .filter_map(|t| {
                let attempt = self.committed_attempt(t.id)?;
                Some(layout.shuffle_object(t.id.index, attempt))
            })
            .collect()
    }

    /// The output file of committed reduce task `index`, as the coordinator
    /// derives it from the committing attempt.
    pub fn reduce_file(&self, index: u32) -> Option<String> {
        let attempt = self.committed_attempt(TaskId::reduce(index))?;
        Some(self.spec.layout().reduce_output(index, attempt))
    }

    /// Record how attempt `attempt` of `task` ended.
    pub fn report(&mut self, task: TaskId, attempt: AttemptId, outcome: Outcome, now: SystemTime) -> ReportResult {
        if self.state != JobState::Running {
            return ReportResult::Stale;
        }
        let max_attempts = self.spec.max_attempts.max(1);
        // Fields, not `task_mut`, so the borrow of the task stays apart
        // from the counters changed below.
        let tasks = match task.phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let Some(t) = tasks.get_mut(task.index as usize) else {
            return ReportResult::Stale;
        };
        if t.state != TaskState::Running {
            return ReportResult::Stale;
        }
        let Some(ai) = t
            .attempts
            .iter()
            .position(|a| a.id == attempt && a.state == AttemptState::Running)
        else {
            return ReportResult::Stale;
        };
        t.attempts[ai].ended = Some(now);
        let ran = now.duration_since(t.attempts[ai].started).unwrap_or_default();
        self.running -= 1;
        let succeeded = match &outcome {
            Outcome::Map(_) => task.phase == Phase::Map,
            Outcome::Reduce(_) => task.phase == Phase::Reduce,
            Outcome::Failed(_) => false,
        };
        if succeeded {
            t.attempts[ai].state = AttemptState::Succeeded;
            t.state = TaskState::Committed;
            // The first to commit wins; any other attempt is superseded.
            for other in t.attempts.iter_mut().filter(|o| o.state == AttemptState::Running) {
                other.state = AttemptState::Superseded;
                other.ended = Some(now);
                self.running -= 1;
            }
            let time = &mut self.committed_time[task.phase as usize];
            *time = (time.0 + 1, time.1 + ran);
        }
        let mut outcome = outcome;
        if succeeded {
            match &mut outcome {
                Outcome::Map(MapOutput { counters }) | Outcome::Reduce(ReduceOutput { counters, .. }) => {
                    cap_counters(&mut self.counter_names, counters);
                }
                Outcome::Failed(_) => {}
            }
        }
        match outcome {
            Outcome::Map(out) if succeeded => {
                self.map_outputs[task.index as usize] = Some(out);
                self.maps_committed += 1;
                ReportResult::Committed
            }
            Outcome::Reduce(out) if succeeded => {
                self.reduce_outputs[task.index as usize] = Some(out);
                self.reduces_committed += 1;
                if self.reduces_committed == self.reduces.len() {
                    self.state = JobState::Committing;
                }
                ReportResult::Committed
            }
            Outcome::Map(_) | Outcome::Reduce(_) => {
                t.attempts[ai].state = AttemptState::Failed {
                    error: "reported output of the wrong kind".into(),
                    kind: FailureKind::Internal,
                };
                if !t.attempts.iter().any(|o| o.state == AttemptState::Running) {
                    t.state = TaskState::Pending;
                    self.requeue(task);
                }
                ReportResult::WillRetry
            }
            Outcome::Failed(failure) => {
                let started = t.attempts[ai].started;
                t.attempts[ai].state = AttemptState::Failed {
                    error: failure.message.clone(),
                    kind: failure.kind,
                };
                // A record the guest fails on is skipped by the next attempts,
                // up to the job's budget (the MapReduce paper's section 4.6);
                // such a failure is not held against the task.
                let skip = failure.record.filter(|r| {
                    task.phase == Phase::Map
                        && !t.skipped.contains(r)
                        && t.skipped.len() < self.spec.skip_bad_records as usize
                });
                match skip {
                    Some(record) => t.skipped.push(record),
                    None if failure.counts() => t.failures += 1,
                    None => t.uncounted += 1,
                }
                let other_running = t.attempts.iter().any(|o| o.state == AttemptState::Running);
                if failure.retryable && t.failures < max_attempts && t.uncounted < MAX_UNCOUNTED_FAILURES {
                    // With a backup still running, let it finish rather than start a third.
                    if !other_running {
                        t.state = TaskState::Pending;
                        self.requeue(task);
                    }
                    // A map output this reduce found gone or corrupt: that
                    // map runs again (fetch-failure semantics), and the
                    // reduces wait for it.
                    if let Some(map) = failure
                        .bad_map
                        .filter(|_| task.phase == Phase::Reduce && failure.kind == FailureKind::MapOutput)
                    {
                        self.map_output_lost(map, started, now, &failure.message);
                    }
                    ReportResult::WillRetry
                } else {
                    t.state = TaskState::Failed;
                    let tries = t.failures + t.uncounted;
                    self.state = JobState::Failed;
                    self.failure_kind = Some(failure.kind);
                    self.error = Some(format!(
                        "{task} failed {tries} time(s); last error ({}): {}",
                        failure.kind.as_str(),
                        failure.message
                    ));
                    ReportResult::JobFailed
                }
            }
        }
    }

    /// Map task `map`'s committed output was found gone or corrupt by a
    /// reduce attempt that started at `seen_from`: the task is pending
    /// again, and its output no longer counts. A reduce that started before
    /// the map's output was last committed read an older one: ignored.
    fn map_output_lost(&mut self, map: u32, seen_from: SystemTime, now: SystemTime, why: &str) {
        let Some(t) = self.maps.get_mut(map as usize) else {
            return;
        };
        if t.state != TaskState::Committed {
            return;
        }
        let committed_after = t
            .attempts
            .iter()
            .find(|a| a.state == AttemptState::Succeeded)
            .and_then(|a| a.ended)
            .is_some_and(|ended| ended > seen_from);
        if committed_after {
            return;
        }
        if let Some(a) = t.attempts.iter_mut().find(|a| a.state == AttemptState::Succeeded) {
            a.state = AttemptState::Failed {
                error: format!("its output was found gone or corrupt: {why}"),
                kind: FailureKind::MapOutput,
            };
            a.ended = a.ended.or(Some(now));
        }
        t.state = TaskState::Pending;
        self.maps_committed -= 1;
        self.map_outputs[map as usize] = None;
        self.requeue(TaskId::map(map));
    }

    /// Mark the job succeeded once its output is committed.
    pub fn committed(&mut self) {
        if self.state == JobState::Committing {
            self.state = JobState::Succeeded;
        }
    }

    /// Mark every running attempt of `worker` lost and re-queue its task;
    /// committed output stays. A lost attempt counts against the task's
    /// `--max-attempts` (unless `counts` is false: its worker handed it back
    /// as it left), so a task that kills its worker every time fails the
    /// job. Returns the attempts lost (none of a job that has ended), and
    /// whether the job failed.
    pub fn worker_lost(
        &mut self,
        worker: &WorkerId,
        now: SystemTime,
        counts: bool,
    ) -> (Vec<(TaskId, AttemptId, SystemTime)>, bool) {
        let running: Vec<(TaskId, AttemptId, SystemTime)> = self
            .maps
            .iter()
            .chain(&self.reduces)
            .flat_map(|t| {
                t.attempts
                    .iter()
                    .filter(|a| &a.worker == worker && a.state == AttemptState::Running)
                    .map(|a| (t.id, a.id, a.started))
            })
            .collect();
        let mut failed = false;
        let mut lost = Vec::new();
        for (task, attempt, started) in running {
            if let Some(failed_job) = self.attempt_lost(task, attempt, now, counts) {
                failed |= failed_job;
                lost.push((task, attempt, started));
            }
        }
        (lost, failed)
    }

    /// Mark attempt `attempt` of `task` lost with its worker, counting it
    /// against the task if `counts`; `Some(true)` if that failed the job,
    /// `None` if nothing changed (the job has ended, or the attempt is not
    /// running).
    fn attempt_lost(&mut self, task: TaskId, attempt: AttemptId, now: SystemTime, counts: bool) -> Option<bool> {
        if self.state != JobState::Running {
            return None;
        }
        let max_attempts = self.spec.max_attempts.max(1);
        let tasks = match task.phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let t = tasks.get_mut(task.index as usize)?;
        let a = t
            .attempts
            .iter_mut()
            .find(|a| a.id == attempt && a.state == AttemptState::Running)?;
        a.state = AttemptState::Lost;
        a.ended = Some(now);
        let worker = a.worker.clone();
        self.running -= 1;
        if counts {
            t.failures += 1;
        }
        if t.failures >= max_attempts {
            t.state = TaskState::Failed;
            let tries = t.failures;
            self.state = JobState::Failed;
            self.failure_kind = Some(FailureKind::Lost);
            self.error = Some(format!(
                "{task} failed {tries} time(s); last error (lost): its worker {worker} died or went silent \
                 while running it; a task that keeps killing its worker (a crash, or memory outside the \
                 sandbox's limits) fails the job after --max-attempts"
            ));
            return Some(true);
        }
        // Re-queue unless a backup attempt elsewhere is still running.
        if t.state == TaskState::Running && !t.attempts.iter().any(|a| a.state == AttemptState::Running) {
            t.state = TaskState::Pending;
            self.requeue(task);
        }
        Some(false)
    }

    /// Replay an attempt lost with its worker from the journal.
    pub fn restore_lost(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        (started, at): (SystemTime, SystemTime),
        counts: bool,
    ) {
        self.restore_attempt(task, attempt, worker, started);
        self.attempt_lost(task, attempt, at, counts);
    }

    /// The tasks of `phase`.
    fn tasks(&self, phase: Phase) -> &[Task] {
        match phase {
            Phase::Map => &self.maps,
            Phase::Reduce => &self.reduces,
        }
    }

    /// Attempt `attempt` of `task`, if there is one.
    pub fn attempt(&self, task: TaskId, attempt: AttemptId) -> Option<&Attempt> {
        self.tasks(task.phase)
            .get(task.index as usize)?
            .attempts
            .iter()
            .find(|a| a.id == attempt)
    }

    /// Whether attempt `attempt` of `task` is still running.
    pub fn attempt_is_running(&self, task: TaskId, attempt: AttemptId) -> bool {
        self.attempt(task, attempt)
            .is_some_and(|a| a.state == AttemptState::Running)
    }

    /// The worker attempt `attempt` of `task` was assigned to.
    pub fn attempt_worker(&self, task: TaskId, attempt: AttemptId) -> Option<&WorkerId> {
        self.attempt(task, attempt).map(|a| &a.worker)
    }

    /// When attempt `attempt` of `task` started.
    pub fn attempt_started(&self, task: TaskId, attempt: AttemptId) -> Option<SystemTime> {
        self.attempt(task, attempt).map(|a| a.started)
    }

    /// Replay a committed attempt from the journal: it ran from `started` to `at`.
    pub fn restore_commit(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        outcome: Outcome,
        (started, at): (SystemTime, SystemTime),
    ) {
        self.restore_attempt(task, attempt, worker, started);
        self.report(task, attempt, outcome, at);
    }

    /// Replay a failed attempt from the journal.
    pub fn restore_failure(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        failure: AttemptFailure,
        (started, at): (SystemTime, SystemTime),
    ) {
        self.restore_attempt(task, attempt, worker, started);
        self.report(task, attempt, Outcome::Failed(failure), at);
    }

    /// Put a journaled attempt back as running, so that its report replays.
    fn restore_attempt(&mut self, task: TaskId, attempt: AttemptId, worker: WorkerId, at: SystemTime) {
        self.next_attempt = self.next_attempt.max(attempt.0 + 1);
        let tasks = match task.phase {
            Phase::Map => &mut self.maps,
            Phase::Reduce => &mut self.reduces,
        };
        let Some(t) = tasks.get_mut(task.index as usize) else {
            return;
        };
        if t.state != TaskState::Pending {
            return;
        }
        t.state = TaskState::Running;
        t.attempts.push(Attempt {
            id: attempt,
            worker,
            started: at,
            ended: None,
            state: AttemptState::Running,
        });
        self.running += 1;
    }

    /// End the job as the journal says it ended.
    pub fn restore_end(&mut self, state: JobState, error: Option<String>) {
        self.state = state;
        self.error = error;
    }

    /// Fail the job for a reason of `kind` outside any attempt (its output
    /// could not be committed).
    pub fn fail(&mut self, kind: FailureKind, error: String) {
        self.state = JobState::Failed;
        self.failure_kind = Some(kind);
        self.error = Some(error);
    }

    /// Cancel the job.
    pub fn cancel(&mut self) {
        if !self.is_finished() {
            self.state = JobState::Cancelled;
            self.error = Some("cancelled".into());
        }
    }

    /// Counters summed over committed attempts only.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::new();
        let maps = self.map_outputs.iter().flatten().map(|m| &m.counters);
        let reduces = self.reduce_outputs.iter().flatten().map(|r| &r.counters);
        for c in maps.chain(reduces) {
            for (k, v) in c {
                let t = total.entry(k.clone()).or_insert(0);
                *t = t.saturating_add(*v);
            }
        }
        let retried = self
            .maps
            .iter()
            .chain(&self.reduces)
            .map(|t| t.attempts.len().saturating_sub(1) as i64)
            .sum::<i64>();
        total.insert("wmr.attempts.retried".into(), retried);
        total
    }

    /// (done, total) for maps and for reduces.
    pub fn progress(&self) -> ((usize, usize), (usize, usize)) {
        (
            (self.maps_committed, self.maps.len()),
            (self.reduces_committed, self.reduces.len()),
        )
    }
}

/// Keep `counters` to names the job already has, or new ones while it has
/// fewer than [`MAX_JOB_COUNTERS`]; the rest are counted as dropped.
fn cap_counters(names: &mut std::collections::BTreeSet<String>, counters: &mut Counters) {
    let dropped_name = crate::runtime::limits::COUNTERS_DROPPED;
    let mut dropped = 0i64;
    counters.retain(|name, _| {
        if names.contains(name) || name == dropped_name {
            return true;
        }
        if names.len() < MAX_JOB_COUNTERS {
            names.insert(name.clone());
            return true;
        }
        dropped += 1;
        false
    });
    if dropped > 0 {
        let v = counters.entry(dropped_name.to_string()).or_insert(0);
        *v = v.saturating_add(dropped);
    }
}

/// A job of `maps` one-split text maps and `reducers` reduces, for tests.
#[cfg(test)]
pub(crate) fn test_job(maps: usize, reducers: u32) -> Job {
    let spec = JobSpec {
        id: JobId::generate(),
        inputs: vec![],
        output: "out".into(),
        work_dir: "out/_temporary/j".into(),
        reducers,
        format: OutputFormat::Text,
        max_attempts: 2,
        speculation: true,
        task_memory: 1 << 20,
        skip_bad_records: 0,
        partitioner: Partitioner::Hash,
    };
    let splits = (0..maps)
        .map(|i| MapInput {
            splits: vec![crate::data::Split {
                file: format!("f{i}"),
                file_size: 10,
                kind: crate::data::SplitKind::Text { start: 0, end: 10 },
            }],
        })
        .collect();
    Job::new(spec, splits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(maps: usize, reducers: u32) -> Job {
        test_job(maps, reducers)
    }

    fn map_ok() -> Outcome {
        Outcome::Map(MapOutput {
            counters: Counters::new(),
        })
    }

    fn ids(a: &Assignment) -> (TaskId, AttemptId) {
        match a {
            Assignment::Map(m) => (m.task, m.attempt),
            Assignment::Reduce(r) => (r.task, r.attempt),
        }
    }

    #[test]
    fn reduces_wait_for_every_map_and_the_first_success_commits() {
        let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
        let now = SystemTime::now();
        let mut j = job(2, 1);
        let a1 = j.next_assignment(&w1, now, None).unwrap();
        let a2 = j.next_assignment(&w2, now, None).unwrap();
        assert!(
            j.next_assignment(&w1, now, None).is_none(),
            "no reduce before maps commit"
        );
        let (t1, at1) = ids(&a1);
        assert_eq!(j.report(t1, at1, map_ok(), now), ReportResult::Committed);
        assert_eq!(
            j.report(t1, at1, map_ok(), now),
            ReportResult::Stale,
            "a duplicate report is refused"
        );
        // w2 dies; its map is re-queued and its late report refused.
        j.worker_lost(&w2, now, true);
        let (t2, at2) = ids(&a2);
        assert_eq!(j.report(t2, at2, map_ok(), now), ReportResult::Stale);
        let retry = j.next_assignment(&w1, now, None).unwrap();
        assert_eq!(ids(&retry).0, t2);
        assert_ne!(ids(&retry).1, at2);
        assert_eq!(j.report(t2, ids(&retry).1, map_ok(), now), ReportResult::Committed);
        let r = j.next_assignment(&w1, now, None).unwrap();
        let Assignment::Reduce(ra) = &r else {
            panic!("expected a reduce")
        };
        assert_eq!(ra.map_outputs.len(), 2);
        let out = Outcome::Reduce(ReduceOutput {
            checksum: 0,
            rows: 1,
            bytes: 1,
            counters: Counters::new(),
        });
        assert_eq!(j.report(ra.task, ra.attempt, out, now), ReportResult::Committed);
        assert_eq!(j.state, JobState::Committing);
        assert_eq!(j.counters()["wmr.attempts.retried"], 1);
    }

    #[test]
    fn a_task_failing_max_attempts_fails_the_job_with_its_error() {
        let w = WorkerId("w".into());
        let now = SystemTime::now();
        let mut j = job(1, 1);
        let fail = || Outcome::Failed(AttemptFailure::new(FailureKind::Guest, "boom"));
        let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
        assert_eq!(j.report(t, a, fail(), now), ReportResult::WillRetry);
        let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
        assert_eq!(j.report(t, a, fail(), now), ReportResult::JobFailed);
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(
            j.error.as_deref(),
            Some("map task 0 failed 2 time(s); last error (guest): boom")
        );
        assert!(j.next_assignment(&w, now, None).is_none());
    }

    #[test]
    fn store_outages_use_up_no_attempts_but_are_bounded_and_losses_count() {
        let w = WorkerId("w".into());
        let now = SystemTime::now();
        let mut j = job(1, 1);
        let outage = || Outcome::Failed(AttemptFailure::new(FailureKind::Storage, "s3 is down"));
        for _ in 0..MAX_UNCOUNTED_FAILURES - 1 {
            let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
            assert_eq!(j.report(t, a, outage(), now), ReportResult::WillRetry);
        }
        assert_eq!(j.maps[0].failures, 0);
        let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
        assert_eq!(j.report(t, a, outage(), now), ReportResult::JobFailed);
        assert_eq!(j.failure_kind, Some(FailureKind::Storage));
        // max_attempts is 2 in test jobs: two lost attempts fail the job.
        let mut j = job(1, 1);
        j.next_assignment(&w, now, None).unwrap();
        assert!(!j.worker_lost(&w, now, true).1);
        j.next_assignment(&w, now, None).unwrap();
        let (lost, failed) = j.worker_lost(&w, now, true);
        assert_eq!((lost.len(), failed), (1, true));
        assert_eq!(j.failure_kind, Some(FailureKind::Lost));
        assert!(j.error.as_deref().unwrap_or("").contains("died or went silent"));
        // Attempts handed back by a leaving worker never fail the job, and
        // a job that has ended loses nothing more.
        let mut j = job(1, 1);
        for _ in 0..5 {
            j.next_assignment(&w, now, None).unwrap();
            let (lost, failed) = j.worker_lost(&w, now, false);
            assert_eq!((lost.len(), failed), (1, false));
        }
        assert_eq!(j.maps[0].failures, 0);
        j.next_assignment(&w, now, None).unwrap();
        j.cancel();
        assert!(j.worker_lost(&w, now, true).0.is_empty());
    }

    #[test]
    fn a_reduce_that_finds_a_map_output_corrupt_gets_that_map_run_again() {
        let w = WorkerId("w".into());
        let now = SystemTime::now();
        let mut j = job(2, 1);
        for _ in 0..2 {
            let (t, a) = ids(&j.next_assignment(&w, now, None).unwrap());
            assert_eq!(j.report(t, a, map_ok(), now), ReportResult::Committed);
        }
        let Assignment::Reduce(r) = j.next_assignment(&w, now, None).unwrap() else {
            panic!("expected a reduce")
        };
        let first_objects = r.map_outputs.clone();
        let mut lost = AttemptFailure::new(FailureKind::MapOutput, "bytes do not match their checksum");
        lost.bad_map = Some(1);
        assert_eq!(
            j.report(r.task, r.attempt, Outcome::Failed(lost), now),
            ReportResult::WillRetry
        );
        // Map 1 runs again before any reduce; the reduce's try was free.
        assert_eq!(j.progress().0, (1, 2));
        let again = j.next_assignment(&w, now, None).unwrap();
        assert_eq!(ids(&again).0, TaskId::map(1));
        assert_eq!(j.reduces[0].failures, 0);
        assert_eq!(
            j.report(ids(&again).0, ids(&again).1, map_ok(), now),
            ReportResult::Committed
        );
        let Assignment::Reduce(r2) = j.next_assignment(&w, now, None).unwrap() else {
            panic!("expected a reduce")
        };
        assert_eq!(r2.map_outputs[0], first_objects[0]);
        assert_ne!(r2.map_outputs[1], first_objects[1], "the new map attempt's object");
    }

    #[test]
    fn a_slow_task_gets_one_backup_near_the_end_and_the_first_commit_wins() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let after = Some(Duration::from_secs(5));
        let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
        let mut j = job(3, 1);
        let slow = j.next_assignment(&w1, at(0), after).unwrap();
        let fast1 = j.next_assignment(&w2, at(0), after).unwrap();
        assert_eq!(
            j.report(ids(&fast1).0, ids(&fast1).1, map_ok(), at(1)),
            ReportResult::Committed
        );
        let fast2 = j.next_assignment(&w2, at(1), after).unwrap();
        assert_eq!(
            j.report(ids(&fast2).0, ids(&fast2).1, map_ok(), at(2)),
            ReportResult::Committed
        );
        // Nothing is pending now, but the slow task is not slow enough yet
        // (5 s and three times the 1 s mean), nor ever for its own worker.
        assert!(j.next_assignment(&w2, at(4), after).is_none());
        assert!(j.next_assignment(&w1, at(60), after).is_none());
        // Without speculation: never.
        assert!(j.next_assignment(&w2, at(60), None).is_none());
        let backup = j.next_assignment(&w2, at(7), after).expect("a backup");
        assert_eq!(ids(&backup).0, ids(&slow).0);
        assert_ne!(ids(&backup).1, ids(&slow).1);
        // Only one backup per task.
        assert!(j.next_assignment(&WorkerId("w3".into()), at(30), after).is_none());
        // The backup commits first; the original is superseded and its late
        // report refused.
        assert_eq!(
            j.report(ids(&backup).0, ids(&backup).1, map_ok(), at(8)),
            ReportResult::Committed
        );
        assert_eq!(
            j.report(ids(&slow).0, ids(&slow).1, map_ok(), at(9)),
            ReportResult::Stale
        );
        let states: Vec<&AttemptState> = j.maps[ids(&slow).0.index as usize]
            .attempts
            .iter()
            .map(|a| &a.state)
            .collect();
        assert_eq!(states, [&AttemptState::Superseded, &AttemptState::Succeeded]);
        assert_eq!(j.running_attempts(), 0);
        assert_eq!(j.progress().0, (3, 3));
    }

    #[test]
    fn losing_the_original_keeps_the_task_with_its_backup() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let after = Some(Duration::from_secs(1));
        let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
        let mut j = job(2, 1);
        let slow = j.next_assignment(&w1, at(0), after).unwrap();
        let fast = j.next_assignment(&w2, at(0), after).unwrap();
        j.report(ids(&fast).0, ids(&fast).1, map_ok(), at(1));
        let backup = j.next_assignment(&w2, at(10), after).expect("a backup");
        j.worker_lost(&w1, at(11), true);
        // Not re-queued: the backup is still running.
        assert!(j.next_assignment(&WorkerId("w3".into()), at(11), None).is_none());
        assert_eq!(
            j.report(ids(&backup).0, ids(&backup).1, map_ok(), at(12)),
            ReportResult::Committed
        );
        assert_eq!(ids(&slow).0, ids(&backup).0);
    }

    #[test]
    fn a_failed_task_is_retried_on_another_worker_where_possible() {
        let now = SystemTime::now();
        let (w1, w2) = (WorkerId("w1".into()), WorkerId("w2".into()));
        let mut j = job(2, 1);
        let first = j.next_assignment(&w1, now, None).unwrap();
        let failed = Outcome::Failed(AttemptFailure::new(FailureKind::Guest, "boom"));
        assert_eq!(
            j.report(ids(&first).0, ids(&first).1, failed.clone(), now),
            ReportResult::WillRetry
        );
        // w1 gets the other task, not the one that failed on it...
        let next = j.next_assignment(&w1, now, None).unwrap();
        assert_ne!(ids(&next).0, ids(&first).0);
        // ...which goes to w2.
        let retry = j.next_assignment(&w2, now, None).unwrap();
        assert_eq!(ids(&retry).0, ids(&first).0);
        // With no other choice, a task is retried on the worker it failed on.
        let mut j = job(1, 1);
        let only = j.next_assignment(&w1, now, None).unwrap();
        j.report(ids(&only).0, ids(&only).1, failed, now);
        assert_eq!(ids(&j.next_assignment(&w1, now, None).unwrap()).0, ids(&only).0);
    }
}
