//! The status document of a job, as the coordinator answers `wmr status`
//! (and `--json` prints exactly this): its state, progress, counters over
//! committed attempts, and every task's attempts with their workers, times
//! and errors. The coordinator makes it; clients and the status page read
//! it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

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
