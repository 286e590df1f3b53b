//! What the coordinator and its workers say to each other, whichever way
//! they are linked (in process for `wmr run`, gRPC for a cluster): a
//! worker's registration and the answers to its heartbeats, the job and
//! assignment it is given, how the attempt ended, and the coordinator's
//! answer to that; and, in [`status`], the job status clients are given.
//! The coordinator and the worker both use this module and never import
//! each other; [`crate::rpc`] carries it between machines.

pub mod status;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::task::{AttemptFailure, MapAssignment, MapOutput, ReduceAssignment, ReduceOutput};
use crate::{AttemptId, JobId, ModuleDigest, TaskId, WorkerId};

/// A worker's registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The secret every later call carries.
    pub secret: String,
    /// The worker's public name.
    pub label: WorkerId,
    /// Heartbeat within this.
    pub lease: Duration,
    /// The store modules are read from.
    pub store: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatReply {
    /// False when the worker is not (or no longer) registered.
    pub known: bool,
    /// Attempts the worker should stop.
    pub cancel: Vec<AttemptId>,
}

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
