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

mod events;

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::data::MapInput;
use crate::data::output::OutputFormat;
use crate::layout::JobLayout;
use crate::protocol::{Assignment, Outcome, ReportResult};
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
    let dropped_name = crate::limits::COUNTERS_DROPPED;
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
mod tests;
