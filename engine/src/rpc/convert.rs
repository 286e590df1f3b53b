//! Every conversion between wire messages (`pb`) and domain types, in one
//! place. Incoming messages are checked here: a missing field or a bad id is
//! a [`MalformedMessage`], never a panic or a default invented downstream.

use std::time::Duration;

use super::MalformedMessage;
use super::pb;
use crate::data::output::OutputFormat;
use crate::data::{MapInput, Split, SplitKind};
use crate::limits::Limits;
use crate::protocol::status::{AttemptStatus, JobStatusDoc, Progress, TaskStatus, UserState};
use crate::protocol::{Assignment, JobRef, Outcome, ReportResult};
use crate::shuffle::Partitioner;
use crate::task::{AttemptFailure, Counters, FailureKind, MapAssignment, MapOutput, ReduceAssignment, ReduceOutput};
use crate::{AttemptId, JobId, ModuleDigest, Phase, TaskId};

/// A job id from the wire.
///
/// # Errors
/// If it is not a well-formed job id.
pub fn job_id(message: &'static str, s: &str) -> Result<JobId, MalformedMessage> {
    JobId::parse(s).ok_or_else(|| MalformedMessage {
        message,
        problem: format!("{s:?} is not a job id (job-<letters and digits>)"),
    })
}

/// A module digest from the wire.
///
/// # Errors
/// If it is not 64 hex digits.
pub fn digest(message: &'static str, s: &str) -> Result<ModuleDigest, MalformedMessage> {
    ModuleDigest::parse(s).ok_or_else(|| MalformedMessage {
        message,
        problem: format!("{s:?} is not a sha256 digest in hex"),
    })
}

impl From<OutputFormat> for pb::OutputFormat {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Parquet => pb::OutputFormat::Parquet,
            OutputFormat::Text => pb::OutputFormat::Text,
        }
    }
}

/// An output format from the wire (unspecified means Parquet).
pub fn output_format(f: i32) -> OutputFormat {
    match pb::OutputFormat::try_from(f) {
        Ok(pb::OutputFormat::Text) => OutputFormat::Text,
        _ => OutputFormat::Parquet,
    }
}

impl From<Limits> for pb::Limits {
    fn from(l: Limits) -> Self {
        pb::Limits {
            max_memory_bytes: l.max_memory_bytes,
            max_call_time_ms: l.max_call_time.as_millis() as u64,
            max_log_bytes: l.max_log_bytes as u64,
            max_output_bytes: l.max_output_bytes,
            max_record_bytes: l.max_record_bytes,
        }
    }
}

/// Limits from the wire; zero or absent fields take the defaults.
pub fn limits(l: Option<pb::Limits>) -> Limits {
    let d = Limits::default();
    let l = l.unwrap_or_default();
    Limits {
        max_memory_bytes: if l.max_memory_bytes == 0 {
            d.max_memory_bytes
        } else {
            l.max_memory_bytes
        },
        max_call_time: if l.max_call_time_ms == 0 {
            d.max_call_time
        } else {
            Duration::from_millis(l.max_call_time_ms)
        },
        max_log_bytes: if l.max_log_bytes == 0 {
            d.max_log_bytes
        } else {
            usize::try_from(l.max_log_bytes).unwrap_or(usize::MAX)
        },
        max_output_bytes: if l.max_output_bytes == 0 {
            d.max_output_bytes
        } else {
            l.max_output_bytes
        },
        max_record_bytes: if l.max_record_bytes == 0 {
            d.max_record_bytes
        } else {
            l.max_record_bytes
        },
    }
}

/// Parameters as wire pairs.
pub fn params_to_pb(params: &[(String, String)]) -> Vec<pb::Param> {
    params
        .iter()
        .map(|(name, value)| pb::Param {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Parameters from wire pairs.
pub fn params(params: Vec<pb::Param>) -> Vec<(String, String)> {
    params.into_iter().map(|p| (p.name, p.value)).collect()
}

impl From<TaskId> for pb::TaskRef {
    fn from(t: TaskId) -> Self {
        pb::TaskRef {
            phase: match t.phase {
                Phase::Map => pb::Phase::Map,
                Phase::Reduce => pb::Phase::Reduce,
            } as i32,
            index: t.index,
        }
    }
}

impl TryFrom<Option<pb::TaskRef>> for TaskId {
    type Error = MalformedMessage;

    fn try_from(t: Option<pb::TaskRef>) -> Result<Self, MalformedMessage> {
        let t = t.ok_or_else(|| MalformedMessage::missing("TaskRef", "task"))?;
        match pb::Phase::try_from(t.phase) {
            Ok(pb::Phase::Map) => Ok(TaskId::map(t.index)),
            Ok(pb::Phase::Reduce) => Ok(TaskId::reduce(t.index)),
            _ => Err(MalformedMessage {
                message: "TaskRef",
                problem: format!("phase {} is neither map nor reduce", t.phase),
            }),
        }
    }
}

fn range(message: &'static str, r: Option<pb::ByteRange>) -> Result<std::ops::Range<u64>, MalformedMessage> {
    let r = r.ok_or_else(|| MalformedMessage::missing(message, "range"))?;
    if r.start > r.end {
        return Err(MalformedMessage {
            message,
            problem: format!("byte range {}..{} runs backwards", r.start, r.end),
        });
    }
    Ok(r.start..r.end)
}

impl From<&Split> for pb::Split {
    fn from(s: &Split) -> Self {
        pb::Split {
            file: s.file.clone(),
            file_size: s.file_size,
            kind: Some(match &s.kind {
                SplitKind::Text { start, end } => pb::split::Kind::Text(pb::ByteRange {
                    start: *start,
                    end: *end,
                }),
                SplitKind::Parquet { row_groups } => pb::split::Kind::Parquet(pb::RowGroups {
                    row_groups: row_groups.iter().map(|&g| g as u64).collect(),
                }),
            }),
        }
    }
}

impl TryFrom<pb::Split> for Split {
    type Error = MalformedMessage;

    fn try_from(s: pb::Split) -> Result<Self, MalformedMessage> {
        let kind = match s.kind.ok_or_else(|| MalformedMessage::missing("Split", "kind"))? {
            pb::split::Kind::Text(r) => {
                let r = range("Split", Some(r))?;
                SplitKind::Text {
                    start: r.start,
                    end: r.end,
                }
            }
            pb::split::Kind::Parquet(g) => SplitKind::Parquet {
                row_groups: g
                    .row_groups
                    .into_iter()
                    .map(|g| usize::try_from(g).unwrap_or(usize::MAX))
                    .collect(),
            },
        };
        Ok(Split {
            file: s.file,
            file_size: s.file_size,
            kind,
        })
    }
}

/// An assignment for the wire.
pub fn assignment_to_pb(job: &JobRef, a: &Assignment) -> pb::Assignment {
    let (task, attempt) = a.task_and_attempt();
    pb::Assignment {
        job_id: job.job.to_string(),
        task: Some(task.into()),
        attempt: attempt.0,
        module_digest: job.module.as_str().to_string(),
        params: params_to_pb(&job.params),
        limits: Some(job.limits.into()),
        work: Some(match a {
            Assignment::Map(m) => pb::assignment::Work::Map(pb::MapWork {
                splits: m.input.splits.iter().map(pb::Split::from).collect(),
                partitions: m.partitions,
                shuffle_object: m.shuffle_object.clone(),
                memory_bytes: m.memory_bytes,
                skip_records: m.skip_records.clone(),
                range_partitioned: matches!(m.partitioner, Partitioner::Range { .. }),
                range_bounds: match &m.partitioner {
                    Partitioner::Range { bounds } => bounds.clone(),
                    Partitioner::Hash => Vec::new(),
                },
            }),
            Assignment::Reduce(r) => pb::assignment::Work::Reduce(pb::ReduceWork {
                map_outputs: r.map_outputs.clone(),
                partitions: r.partitions,
                output_file: r.output_file.clone(),
                format: pb::OutputFormat::from(r.format) as i32,
                memory_bytes: r.memory_bytes,
            }),
        }),
    }
}

/// A task memory budget from the wire (zero means the default).
fn memory_or_default(bytes: u64) -> u64 {
    if bytes == 0 {
        crate::task::DEFAULT_TASK_MEMORY
    } else {
        bytes
    }
}

/// An assignment from the wire.
///
/// # Errors
/// If a field is missing or malformed.
pub fn assignment(a: pb::Assignment) -> Result<(JobRef, Assignment), MalformedMessage> {
    let job = JobRef {
        job: job_id("Assignment", &a.job_id)?,
        module: digest("Assignment", &a.module_digest)?,
        params: params(a.params),
        limits: limits(a.limits),
    };
    let task = TaskId::try_from(a.task)?;
    let attempt = AttemptId(a.attempt);
    let work = match a.work.ok_or_else(|| MalformedMessage::missing("Assignment", "work"))? {
        pb::assignment::Work::Map(m) if m.partitions == 0 => {
            return Err(MalformedMessage {
                message: "MapWork",
                problem: "it has 0 partitions".into(),
            });
        }
        pb::assignment::Work::Reduce(r) if r.partitions == 0 || task.index >= r.partitions => {
            return Err(MalformedMessage {
                message: "ReduceWork",
                problem: format!("{task} is not one of its {} partitions", r.partitions),
            });
        }
        pb::assignment::Work::Map(m) if task.phase == Phase::Map => Assignment::Map(MapAssignment {
            task,
            attempt,
            input: MapInput {
                splits: if m.splits.is_empty() {
                    return Err(MalformedMessage::missing("MapWork", "splits"));
                } else {
                    m.splits.into_iter().map(Split::try_from).collect::<Result<_, _>>()?
                },
            },
            partitions: m.partitions,
            shuffle_object: m.shuffle_object,
            memory_bytes: memory_or_default(m.memory_bytes),
            skip_records: m.skip_records,
            partitioner: if m.range_partitioned {
                Partitioner::Range { bounds: m.range_bounds }
            } else {
                Partitioner::Hash
            },
        }),
        pb::assignment::Work::Reduce(r) if task.phase == Phase::Reduce => Assignment::Reduce(ReduceAssignment {
            task,
            attempt,
            map_outputs: r.map_outputs,
            partitions: r.partitions,
            output_file: r.output_file,
            format: output_format(r.format),
            memory_bytes: memory_or_default(r.memory_bytes),
        }),
        _ => {
            return Err(MalformedMessage {
                message: "Assignment",
                problem: format!("its work does not match {task}"),
            });
        }
    };
    Ok((job, work))
}

/// Most counters one report may carry (the guest's capped ones, and the
/// engine's own).
pub const MAX_REPORTED_COUNTERS: usize = 512;

fn counters(c: std::collections::HashMap<String, i64>) -> Result<Counters, MalformedMessage> {
    use crate::limits::MAX_COUNTER_NAME_BYTES;
    if c.len() > MAX_REPORTED_COUNTERS || c.keys().any(|k| k.len() > MAX_COUNTER_NAME_BYTES) {
        return Err(MalformedMessage {
            message: "ReportTaskRequest",
            problem: format!("over {MAX_REPORTED_COUNTERS} counters, or a name over {MAX_COUNTER_NAME_BYTES} bytes"),
        });
    }
    Ok(c.into_iter().collect())
}

/// An attempt's outcome for the wire.
pub fn outcome_to_pb(o: &Outcome) -> pb::report_task_request::Outcome {
    use pb::report_task_request::Outcome as O;
    match o {
        Outcome::Map(m) => O::Map(pb::MapDone {
            counters: m.counters.clone().into_iter().collect(),
        }),
        Outcome::Reduce(r) => O::Reduce(pb::ReduceDone {
            checksum: r.checksum,
            rows: r.rows,
            bytes: r.bytes,
            counters: r.counters.clone().into_iter().collect(),
        }),
        Outcome::Failed(f) => O::Failed(pb::AttemptFailed {
            error: f.message.clone(),
            retryable: f.retryable,
            bad_record: f.record,
            kind: failure_kind_to_pb(f.kind) as i32,
            bad_map: f.bad_map,
        }),
    }
}

fn failure_kind_to_pb(k: FailureKind) -> pb::FailureKind {
    match k {
        FailureKind::Guest => pb::FailureKind::Guest,
        FailureKind::Limit => pb::FailureKind::Limit,
        FailureKind::Input => pb::FailureKind::Input,
        FailureKind::Storage => pb::FailureKind::Storage,
        FailureKind::Module => pb::FailureKind::Module,
        FailureKind::Lost => pb::FailureKind::Lost,
        FailureKind::MapOutput => pb::FailureKind::MapOutput,
        FailureKind::Internal => pb::FailureKind::Internal,
    }
}

/// A failure kind from the wire; an unknown one is the guest's.
fn failure_kind(k: i32) -> FailureKind {
    match pb::FailureKind::try_from(k) {
        Ok(pb::FailureKind::Limit) => FailureKind::Limit,
        Ok(pb::FailureKind::Input) => FailureKind::Input,
        Ok(pb::FailureKind::Storage) => FailureKind::Storage,
        Ok(pb::FailureKind::Module) => FailureKind::Module,
        Ok(pb::FailureKind::Lost) => FailureKind::Lost,
        Ok(pb::FailureKind::MapOutput) => FailureKind::MapOutput,
        Ok(pb::FailureKind::Internal) => FailureKind::Internal,
        _ => FailureKind::Guest,
    }
}

/// An attempt's outcome from the wire.
///
/// # Errors
/// If the outcome is missing or a range is malformed.
pub fn outcome(o: Option<pb::report_task_request::Outcome>) -> Result<Outcome, MalformedMessage> {
    use pb::report_task_request::Outcome as O;
    Ok(
        match o.ok_or_else(|| MalformedMessage::missing("ReportTaskRequest", "outcome"))? {
            O::Map(m) => Outcome::Map(MapOutput {
                counters: counters(m.counters)?,
            }),
            O::Reduce(r) => Outcome::Reduce(ReduceOutput {
                checksum: r.checksum,
                rows: r.rows,
                bytes: r.bytes,
                counters: counters(r.counters)?,
            }),
            O::Failed(f) => Outcome::Failed(AttemptFailure {
                kind: failure_kind(f.kind),
                // A worker's word, kept in memory and the journal: bounded.
                message: crate::limits::bounded_message(&f.error),
                record: f.bad_record,
                retryable: f.retryable,
                bad_map: f.bad_map,
            }),
        },
    )
}

impl From<ReportResult> for pb::ReportResult {
    fn from(r: ReportResult) -> Self {
        match r {
            ReportResult::Committed => pb::ReportResult::Committed,
            ReportResult::WillRetry => pb::ReportResult::WillRetry,
            ReportResult::JobFailed => pb::ReportResult::JobFailed,
            ReportResult::Stale => pb::ReportResult::Stale,
        }
    }
}

/// A job's status for the wire, from the status document (and the input
/// bytes its committed maps read).
pub fn job_status_to_pb(doc: &JobStatusDoc, input_bytes_done: u64) -> pb::JobStatus {
    let state = match doc.state {
        UserState::Queued => pb::JobState::Queued,
        UserState::Running => pb::JobState::Running,
        UserState::Succeeded => pb::JobState::Succeeded,
        UserState::Failed => pb::JobState::Failed,
        UserState::Cancelled => pb::JobState::Cancelled,
    };
    let task_state = |s: &str| match s {
        "pending" => pb::TaskState::Pending,
        "running" => pb::TaskState::Running,
        "committed" => pb::TaskState::Committed,
        "failed" => pb::TaskState::Failed,
        "stopped" => pb::TaskState::Stopped,
        _ => pb::TaskState::Unspecified,
    };
    let attempt_state = |s: &str| match s {
        "running" => pb::AttemptState::Running,
        "succeeded" => pb::AttemptState::Succeeded,
        "failed" => pb::AttemptState::Failed,
        "lost" => pb::AttemptState::Lost,
        "superseded" => pb::AttemptState::Superseded,
        "stopped" => pb::AttemptState::Stopped,
        _ => pb::AttemptState::Unspecified,
    };
    let tasks = doc
        .tasks
        .iter()
        .map(|t| pb::TaskStatus {
            task: Some(pb::TaskRef {
                phase: if t.phase == "reduce" {
                    pb::Phase::Reduce
                } else {
                    pb::Phase::Map
                } as i32,
                index: t.index,
            }),
            state: task_state(&t.state) as i32,
            skipped: t.skipped.clone(),
            attempts: t
                .attempts
                .iter()
                .map(|a| pb::AttemptStatus {
                    attempt: a.attempt,
                    worker: a.worker.clone(),
                    started_ms: a.started_ms,
                    ended_ms: a.ended_ms.unwrap_or(0),
                    state: attempt_state(&a.state) as i32,
                    error: a.error.clone().unwrap_or_default(),
                    kind: a.kind.map_or(pb::FailureKind::Unspecified, failure_kind_to_pb) as i32,
                })
                .collect(),
        })
        .collect();
    pb::JobStatus {
        job_id: doc.job.clone(),
        name: doc.name.clone(),
        state: state as i32,
        error: doc.error.clone().unwrap_or_default(),
        output: doc.output.clone(),
        maps_done: doc.maps.done as u32,
        maps_total: doc.maps.total as u32,
        reduces_done: doc.reduces.done as u32,
        reduces_total: doc.reduces.total as u32,
        counters: doc.counters.clone().into_iter().collect(),
        input_bytes_done,
        submitted_ms: doc.submitted_ms,
        ended_ms: doc.ended_ms.unwrap_or(0),
        tasks,
        failure_kind: doc
            .failure_kind
            .map_or(pb::FailureKind::Unspecified, failure_kind_to_pb) as i32,
    }
}

/// The status document (what `status --json` prints) of a job's status
/// from the wire.
///
/// # Errors
/// If the job's state is unknown.
pub fn job_status_doc(s: &pb::JobStatus) -> Result<JobStatusDoc, MalformedMessage> {
    let state = match pb::JobState::try_from(s.state) {
        Ok(pb::JobState::Queued) => UserState::Queued,
        Ok(pb::JobState::Running) => UserState::Running,
        Ok(pb::JobState::Succeeded) => UserState::Succeeded,
        Ok(pb::JobState::Failed) => UserState::Failed,
        Ok(pb::JobState::Cancelled) => UserState::Cancelled,
        _ => {
            return Err(MalformedMessage {
                message: "JobStatus",
                problem: format!("unknown job state {}", s.state),
            });
        }
    };
    let kind = |k: i32| (k != pb::FailureKind::Unspecified as i32).then(|| failure_kind(k));
    let tasks = s
        .tasks
        .iter()
        .map(|t| {
            let task = t.task.unwrap_or_default();
            TaskStatus {
                phase: if task.phase == pb::Phase::Reduce as i32 {
                    "reduce"
                } else {
                    "map"
                }
                .into(),
                index: task.index,
                state: match pb::TaskState::try_from(t.state) {
                    Ok(pb::TaskState::Running) => "running",
                    Ok(pb::TaskState::Committed) => "committed",
                    Ok(pb::TaskState::Failed) => "failed",
                    Ok(pb::TaskState::Stopped) => "stopped",
                    _ => "pending",
                }
                .into(),
                skipped: t.skipped.clone(),
                attempts: t
                    .attempts
                    .iter()
                    .map(|a| AttemptStatus {
                        attempt: a.attempt,
                        worker: a.worker.clone(),
                        started_ms: a.started_ms,
                        ended_ms: (a.ended_ms != 0).then_some(a.ended_ms),
                        state: match pb::AttemptState::try_from(a.state) {
                            Ok(pb::AttemptState::Succeeded) => "succeeded",
                            Ok(pb::AttemptState::Failed) => "failed",
                            Ok(pb::AttemptState::Lost) => "lost",
                            Ok(pb::AttemptState::Superseded) => "superseded",
                            Ok(pb::AttemptState::Stopped) => "stopped",
                            _ => "running",
                        }
                        .into(),
                        error: (!a.error.is_empty()).then(|| a.error.clone()),
                        kind: kind(a.kind),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(JobStatusDoc {
        job: s.job_id.clone(),
        name: s.name.clone(),
        state,
        error: (!s.error.is_empty()).then(|| s.error.clone()),
        failure_kind: kind(s.failure_kind),
        output: s.output.clone(),
        submitted_ms: s.submitted_ms,
        ended_ms: (s.ended_ms != 0).then_some(s.ended_ms),
        maps: Progress {
            done: s.maps_done as usize,
            total: s.maps_total as usize,
        },
        reduces: Progress {
            done: s.reduces_done as usize,
            total: s.reduces_total as usize,
        },
        counters: s.counters.clone().into_iter().collect(),
        tasks,
    })
}
