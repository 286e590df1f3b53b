//! Running one map or one reduce attempt, on top of `runtime`, `data` and
//! `shuffle`. Knows nothing of gRPC or scheduling.
//!
//! Each attempt is an async orchestrator that does the I/O, and one job on
//! a compute thread that does the work; they meet at bounded channels, so
//! an attempt holds a bounded amount of memory whatever the data:
//!
//! ```text
//! map:    read split ──chunks──▶ [compute: lines → guest map → buffer (≤ ¼ of
//!         the task memory) → partition + sort → combine → spill runs to
//!         local disk → merge runs → combine] ──chunks──▶ upload shuffle object
//! reduce: ranged reads of every map output ──blocks──▶ [compute: to a local
//!         file → k-way merge (in passes past the fan-in) → groups → guest
//!         reduce → Parquet/text] ──chunks──▶ upload output file
//! ```
//!
//! Combining is adaptive: when a combine pass leaves most rows as they were
//! (keys mostly distinct), the task stops combining, as DuckDB and Spark
//! stop partial aggregation.

mod combine;
mod failure;
mod map;
mod reduce;
mod sample;
mod spill;

pub use failure::{AttemptFailure, FailureKind};
pub use map::{record_id, run_map};
pub use reduce::{WHOLE_INDEX_UP_TO, run_reduce};
pub use sample::sample_partitioner;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::compute::{ComputePanic, ComputePool};
use crate::data::output::OutputFormat;
use crate::data::sink::{self, ObjectSink, Upload};
use crate::data::{Location, MapInput};
use crate::runtime::{CancelFlag, GuestInstance, JobModule, Runtime};
use crate::shuffle::{self, Partitioner};
use crate::{AttemptId, TaskId};

/// Named counters: the engine's own (`wmr.` prefix) and the guest's.
pub type Counters = BTreeMap<String, i64>;

/// Map output rows collected before they are sorted and combined in place.
pub const COMBINE_EVERY_ROWS: usize = 1 << 20;
/// Rows handed to one `reduce` or `combine` call, groups kept whole: calls
/// over merged runs take groups until they hold at least this many rows;
/// combine calls over the sorted map buffer take groups while they hold at
/// most this many (one larger group goes alone).
pub const REDUCE_CALL_ROWS: usize = 32 * 1024;
/// Rows a combine pass must see before the task judges whether combining
/// pays.
pub const COMBINE_JUDGED_AFTER_ROWS: u64 = 256 * 1024;
/// A combine pass that keeps more than this share of its rows (in tenths)
/// turns combining off for the rest of the task.
pub const COMBINE_USELESS_TENTHS: u64 = 9;
/// Bytes of one ranged read of a shuffle object by a reduce task.
pub const FETCH_BLOCK: u64 = 4 << 20;
/// Ranged reads a reduce task keeps in flight.
pub const FETCH_CONCURRENCY: usize = 4;

/// Errors of a task attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading input or writing output failed.
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    /// The guest failed, at this input position if known.
    #[error("{task}, {attempt}{}", position.as_ref().map(|p| format!(", at {p}")).unwrap_or_default())]
    Guest {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: AttemptId,
        /// Where in the input: `file offset N` or a row.
        position: Option<String>,
        /// The record it failed on (a text line's byte offset, else its
        /// ordinal in the split), if known.
        record: Option<u64>,
        /// The runtime's error.
        #[source]
        source: crate::runtime::Error,
    },
    /// Shuffle data could not be read.
    #[error(transparent)]
    Shuffle(#[from] shuffle::Error),
    /// A compute thread panicked.
    #[error(transparent)]
    Panic(#[from] crate::compute::ComputePanic),
    /// The attempt wrote more than its limit allows.
    #[error("{what} is {written} bytes, over the task output limit of {limit} bytes; raise it with --max-output")]
    OutputLimit {
        /// What was being written.
        what: &'static str,
        /// Its size.
        written: u64,
        /// The limit.
        limit: u64,
    },
    /// A map output this reduce needs is gone or corrupt: that map must run
    /// again.
    #[error("the output of map task {map} is gone or corrupt ({reason}); the map runs again")]
    MapOutputLost {
        /// The map task.
        map: u32,
        /// What was found.
        reason: String,
    },
    /// Map output could not be spilled to local disk, or read back.
    #[error("spilling map output to local disk failed; check the free space in the temp directory ($TMPDIR)")]
    Spill(#[source] std::io::Error),
}

impl Error {
    /// The input record a guest failure happened on (a text line's byte
    /// offset, else its ordinal in the split), if known.
    pub fn bad_record(&self) -> Option<u64> {
        match self {
            Error::Guest { record, .. } => *record,
            _ => None,
        }
    }

    /// Whether running the task again could succeed: guest failures and
    /// corrupt input are retried too (another worker may differ), up to the
    /// job's maximum attempts.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            Error::Data(
                crate::data::Error::MissingInput { .. }
                    | crate::data::Error::BadLocation { .. }
                    | crate::data::Error::RecordTooLong { .. }
            )
        )
    }
}

/// What a worker needs to run attempts of one job.
#[derive(Clone)]
pub struct JobContext {
    /// The wasm runtime.
    pub runtime: Arc<Runtime>,
    /// The job's module.
    pub module: JobModule,
    /// The compute pool.
    pub pool: Arc<ComputePool>,
    /// Stops this attempt's guest when set (one flag per attempt).
    pub cancel: CancelFlag,
}

/// Compile (once per digest), validate and configure a job module on the
/// compute pool: compiling is CPU work.
///
/// # Errors
/// The outer error if the compute thread panicked, the inner one if the
/// module is not a valid wmr job or rejects its parameters.
pub async fn load_module(
    runtime: &Arc<crate::runtime::Runtime>,
    pool: &ComputePool,
    what: &str,
    bytes: bytes::Bytes,
    params: &[(String, String)],
    limits: crate::limits::Limits,
) -> Result<Result<crate::runtime::JobModule, crate::runtime::Error>, ComputePanic> {
    let (runtime, what, params) = (runtime.clone(), what.to_string(), params.to_vec());
    pool.run(move || runtime.load(&what, &bytes, &params, limits)).await
}

/// One map attempt to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapAssignment {
    /// The task.
    pub task: TaskId,
    /// This attempt.
    pub attempt: AttemptId,
    /// What it reads: one split, or small files packed together.
    pub input: MapInput,
    /// Number of reduce partitions.
    pub partitions: u32,
    /// How map output is divided among them.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// Where to write the shuffle object (path or URL).
    pub shuffle_object: String,
    /// The task's memory budget, in bytes ([`TaskMemory`]).
    #[serde(alias = "buffer_bytes")]
    pub memory_bytes: u64,
    /// Records to skip, because the guest failed on them before: text lines
    /// by byte offset, other records by ordinal within their split; the
    /// split's index in [`MapAssignment::input`] is in the top 16 bits
    /// ([`record_id`]).
    #[serde(default)]
    pub skip_records: Vec<u64>,
}

/// What a successful map attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOutput {
    /// Counters of this attempt.
    pub counters: Counters,
}

/// One reduce attempt to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceAssignment {
    /// The task (its index is the partition).
    pub task: TaskId,
    /// This attempt.
    pub attempt: AttemptId,
    /// Every committed shuffle object, whose index says where this
    /// task's partition is in it.
    pub map_outputs: Vec<String>,
    /// The number of partitions, which every index has.
    pub partitions: u32,
    /// Where to write this attempt's output file (path or URL).
    pub output_file: String,
    /// The output format.
    pub format: OutputFormat,
    /// The task's memory budget, in bytes ([`TaskMemory`]).
    #[serde(default = "default_task_memory")]
    pub memory_bytes: u64,
}

/// Default task memory budget: 128 MiB per task slot. A process's peak RSS
/// is about 300 MiB plus its slots times this, whatever the input
/// (`cargo xtask bench scale` measures it).
pub const DEFAULT_TASK_MEMORY: u64 = 128 << 20;

fn default_task_memory() -> u64 {
    DEFAULT_TASK_MEMORY
}

/// How a task divides its memory budget.
#[derive(Debug, Clone, Copy)]
pub struct TaskMemory(pub u64);

impl TaskMemory {
    /// Map output held before it is sorted and combined or spilled: a
    /// quarter, since sorting copies it and encoding keys adds to it.
    pub fn map_buffer(self) -> usize {
        usize::try_from(self.0 / 4).unwrap_or(usize::MAX).max(1)
    }

    /// Runs one merge opens at once: half the budget, one batch each.
    pub fn fan_in(self) -> usize {
        shuffle::fan_in(self.0 / 2)
    }
}

/// What a successful reduce attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceOutput {
    /// The xxh3-64 checksum of the file's bytes.
    #[serde(default)]
    pub checksum: u64,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Counters of this attempt.
    pub counters: Counters,
}

/// Run `compute` on the compute pool with the attempt's guest runtime,
/// module and cancel flag, writing into a sink that uploads `object` as it
/// is written; then wait for the upload.
async fn compute_into_upload<T: Send + 'static>(
    ctx: &JobContext,
    object: &Location,
    compute: impl FnOnce((&Runtime, &JobModule, &CancelFlag), ObjectSink) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let (sink, upload) = sink::upload(object);
    let (runtime, module, cancel) = (ctx.runtime.clone(), ctx.module.clone(), ctx.cancel.clone());
    let computed = ctx.pool.run(move || compute((&runtime, &module, &cancel), sink)).await;
    finish_upload(computed, upload).await
}

/// Wait for an upload once the compute job that fed it is done. When the
/// compute job failed because the upload had stopped, the upload's own
/// error is the one worth showing.
async fn finish_upload<T>(computed: Result<Result<T, Error>, ComputePanic>, upload: Upload) -> Result<T, Error> {
    match computed {
        Ok(Ok(value)) => {
            upload.finish().await?;
            Ok(value)
        }
        Ok(Err(e)) => match upload.finish().await {
            Err(store @ crate::data::Error::Io { .. }) => Err(Error::Data(store)),
            _ => Err(e),
        },
        Err(panic) => Err(panic.into()),
    }
}

/// Put the guest's captured log in this process's log (`-v` shows it), and
/// count what the log limit dropped and the time spent in the guest.
fn record_log(guest: &GuestInstance, task: TaskId, attempt: AttemptId, counters: &mut Counters) {
    counters.insert(GUEST_TIME_COUNTER.into(), guest.guest_time().as_millis() as i64);
    let log = guest.log();
    if !log.is_empty() {
        tracing::info!(%task, attempt = attempt.0, "guest log:\n{}", log.trim_end());
    }
    let dropped = guest.log_dropped_bytes();
    if dropped > 0 {
        counters.insert("wmr.log.dropped.bytes".into(), dropped as i64);
    }
}

/// The counter of the milliseconds an attempt spent in its guest's calls.
pub const GUEST_TIME_COUNTER: &str = "wmr.guest.time.ms";

fn check_output(what: &'static str, written: u64, limit: u64) -> Result<(), Error> {
    if written > limit {
        return Err(Error::OutputLimit { what, written, limit });
    }
    Ok(())
}

fn guest_err(
    a_task: TaskId,
    attempt: AttemptId,
    position: Option<String>,
) -> impl FnOnce(crate::runtime::Error) -> Error {
    move |source| Error::Guest {
        task: a_task,
        attempt,
        position,
        record: None,
        source,
    }
}
