//! A job's status as users see it (`wmr status --json` prints exactly this):
//! its state, progress, counters over committed attempts, and every task's
//! attempts with their workers, times and errors.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterJob;
use super::job::{AttemptState, Job, JobState, Task, TaskState};
use crate::task::FailureKind;

/// A job's state for users: `queued` until its first attempt starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserState {
    /// Accepted, nothing started yet.
    Queued,
    /// Tasks are running (or the output is being committed).
    Running,
    /// Output committed.
    Succeeded,
    /// A task failed too often, or committing failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl UserState {
    /// The state as `status --json` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Queued => "queued",
            UserState::Running => "running",
            UserState::Succeeded => "succeeded",
            UserState::Failed => "failed",
            UserState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, UserState::Succeeded | UserState::Failed | UserState::Cancelled)
    }
}

/// Done and total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Committed.
    pub done: usize,
    /// In all.
    pub total: usize,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptStatus {
    /// Its id.
    pub attempt: u64,
    /// The worker it ran on.
    pub worker: String,
    /// Start, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// End, likewise.
    pub ended_ms: Option<u64>,
    /// running, succeeded, failed, lost, superseded, or stopped (still
    /// running when its job ended: cancelled, or failed by another task).
    pub state: String,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// What kind of failure ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FailureKind>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// `map` or `reduce`.
    pub phase: String,
    /// Its index.
    pub index: u32,
    /// pending, running, committed, failed, or stopped (running when its
    /// job ended).
    pub state: String,
    /// The input records skipped because the job failed on them: text lines
    /// by byte offset, other records (Parquet rows) by ordinal in their
    /// split; in a task of packed files, the file's index is added in the
    /// top 16 bits.
    #[serde(default)]
    pub skipped: Vec<u64>,
    /// Every attempt.
    pub attempts: Vec<AttemptStatus>,
}

/// A job's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatusDoc {
    /// The job id.
    pub job: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: UserState,
    /// Why it failed.
    pub error: Option<String>,
    /// What kind of failure ended it, if an attempt's did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// The output directory.
    pub output: String,
    /// Submission time, milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// End time, likewise.
    pub ended_ms: Option<u64>,
    /// Map progress.
    pub maps: Progress,
    /// Reduce progress.
    pub reduces: Progress,
    /// Counters over committed attempts.
    pub counters: BTreeMap<String, i64>,
    /// Every task, maps first.
    pub tasks: Vec<TaskStatus>,
}

/// Milliseconds since the Unix epoch.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A job's state as users see it.
pub fn user_state(job: &Job) -> UserState {
    match job.state {
        JobState::Running if !job.started() => UserState::Queued,
        JobState::Running | JobState::Committing => UserState::Running,
        JobState::Succeeded => UserState::Succeeded,
        JobState::Failed => UserState::Failed,
        JobState::Cancelled => UserState::Cancelled,
    }
}

/// A task's status; `job_ended` is when its job ended, if it has: what
/// still ran then was stopped.
fn task_status(t: &Task, job_ended: Option<SystemTime>) -> TaskStatus {
    TaskStatus {
        phase: t.id.phase.to_string(),
        index: t.id.index,
        state: match t.state {
            TaskState::Pending => "pending",
            TaskState::Running if job_ended.is_some() => "stopped",
            TaskState::Running => "running",
            TaskState::Committed => "committed",
            TaskState::Failed => "failed",
        }
        .into(),
        skipped: t.skipped.clone(),
        attempts: t
            .attempts
            .iter()
            .map(|a| {
                let (state, error) = match &a.state {
                    AttemptState::Running if job_ended.is_some() => ("stopped", None),
                    AttemptState::Running => ("running", None),
                    AttemptState::Succeeded => ("succeeded", None),
                    AttemptState::Failed { error, .. } => ("failed", Some(error.clone())),
                    AttemptState::Lost => ("lost", None),
                    AttemptState::Superseded => ("superseded", None),
                };
                let kind = match &a.state {
                    AttemptState::Failed { kind, .. } => Some(*kind),
                    AttemptState::Lost => Some(FailureKind::Lost),
                    _ => None,
                };
                AttemptStatus {
                    kind,
                    attempt: a.id.0,
                    worker: a.worker.to_string(),
                    started_ms: millis(a.started),
                    ended_ms: a.ended.or(job_ended).map(millis),
                    state: state.into(),
                    error,
                }
            })
            .collect(),
    }
}

impl JobStatusDoc {
    /// The status of `job`; with `tasks`, every task's attempts too.
    pub fn of(j: &ClusterJob, tasks: bool) -> Self {
        let job = &j.job;
        let state = user_state(job);
        let ((md, mt), (rd, rt)) = job.progress();
        JobStatusDoc {
            job: job.spec.id.to_string(),
            name: j.name.clone(),
            state,
            error: job.error.clone(),
            failure_kind: job.failure_kind,
            output: job.spec.output.clone(),
            submitted_ms: millis(j.submitted),
            ended_ms: j.ended.map(millis),
            maps: Progress { done: md, total: mt },
            reduces: Progress { done: rd, total: rt },
            counters: job.counters(),
            tasks: if tasks {
                let ended = j.ended.filter(|_| state.is_final());
                job.maps
                    .iter()
                    .chain(&job.reduces)
                    .map(|t| task_status(t, ended))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UserState;

    #[test]
    fn as_str_spells_states_as_the_json_does() {
        for s in [
            UserState::Queued,
            UserState::Running,
            UserState::Succeeded,
            UserState::Failed,
            UserState::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(s).expect("serializes"), s.as_str());
        }
    }
}
