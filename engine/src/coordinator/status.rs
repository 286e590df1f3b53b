//! A job's status as users see it (`wmr status --json` prints exactly this),
//! made from the coordinator's state of the job: its state, progress,
//! counters over committed attempts, and every task's attempts with their
//! workers, times and errors. The document's types are
//! [`crate::protocol::status`], which clients read too.

use std::time::SystemTime;

use super::cluster::ClusterJob;
use super::job::{AttemptState, Job, JobState, Task, TaskState};
use crate::protocol::status::{AttemptStatus, JobStatusDoc, Progress, TaskStatus, UserState, millis};
use crate::task::FailureKind;

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
