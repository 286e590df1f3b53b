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

mod failure;
mod sample;
mod spill;

pub use failure::{AttemptFailure, FailureKind};
pub use sample::sample_partitioner;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::compute::{ComputePanic, ComputePool};
use crate::data::output::OutputFormat;
use crate::data::parquet_input::{ParquetSplitReader, fetch_parquet_split};
use crate::data::sink::{self, ObjectSink, Upload};
use crate::data::text::{TextSplitReader, stream_text_split};
use crate::data::{Location, MapInput, Split, SplitKind};
use crate::runtime::{CancelFlag, GuestInstance, JobModule, Runtime};
use crate::shuffle::{
    self, DeferredRun, KeyEncoder, MemoryRun, Merger, Partitioner, RunFile, RunReader, ShuffleWriter,
};
use crate::spawn::SpawnedTask;
use crate::{AttemptId, TaskId};

/// Named counters: the engine's own (`wmr.` prefix) and the guest's.
pub type Counters = BTreeMap<String, i64>;

/// Map output rows collected before they are sorted and combined in place.
pub const COMBINE_EVERY_ROWS: usize = 1 << 20;
/// Smallest number of rows handed to one `reduce` or merge-time `combine`
/// call (groups stay whole).
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
    limits: crate::runtime::Limits,
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

enum InputReader {
    Text(TextSplitReader),
    Parquet(Box<ParquetSplitReader>),
}

impl InputReader {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, crate::data::Error> {
        match self {
            InputReader::Text(r) => r.next_batch(),
            InputReader::Parquet(r) => r.next_batch(),
        }
    }
}

/// How a record is named across a map task's splits: its id within its
/// split (a text line's byte offset, else its ordinal), with the split's
/// index in the top 16 bits. A task of one split names records as before.
pub fn record_id(split_index: usize, id_in_split: u64) -> u64 {
    ((split_index as u64) << 48) | (id_in_split & ((1 << 48) - 1))
}

/// The ids within split `split_index` of the records to skip there.
fn skip_ids_of(skip: &[u64], split_index: usize) -> Vec<u64> {
    skip.iter()
        .filter(|&&id| (id >> 48) as usize == split_index)
        .map(|&id| id & ((1 << 48) - 1))
        .collect()
}

/// Where row `row` of an input batch came from, for error messages.
fn position_of(batch: &RecordBatch, row: u32, source: &str, split: &Split, ids: &RecordIds) -> String {
    match (offset_of(batch, row), ids.of(batch, row)) {
        (Some(offset), _) => format!("{source} byte offset {offset}"),
        (None, Some(ordinal)) => format!("record {ordinal} of {}", split.describe()),
        (None, None) => format!("{} (row {row} of a batch)", split.describe()),
    }
}

/// The byte offset of row `row` of a text input batch.
fn offset_of(batch: &RecordBatch, row: u32) -> Option<u64> {
    let offsets = batch.column_by_name("offset")?.as_any().downcast_ref::<Int64Array>()?;
    ((row as usize) < offsets.len()).then(|| offsets.value(row as usize) as u64)
}

/// How the records of one input batch are named, the same in every
/// attempt: a text line by its byte offset (its `offset` column), any other
/// record by its ordinal within the split, counted from 0.
struct RecordIds {
    /// The ordinal of the batch's first record, before any were skipped.
    first: u64,
    /// The ordinals of the rows left after skipping, if any were skipped.
    kept: Option<Vec<u64>>,
}

impl RecordIds {
    /// The id of row `row` of `batch` (after skipping).
    fn of(&self, batch: &RecordBatch, row: u32) -> Option<u64> {
        if let Some(offset) = offset_of(batch, row) {
            return Some(offset);
        }
        match &self.kept {
            Some(kept) => kept.get(row as usize).copied(),
            None => ((row as usize) < batch.num_rows()).then(|| self.first + u64::from(row)),
        }
    }
}

/// `batch` (whose first record has ordinal `first` in the split) without
/// the records whose ids are in `skip`; how many went; and how the rest are
/// named.
fn without_records(batch: RecordBatch, first: u64, skip: &[u64]) -> Result<(RecordBatch, usize, RecordIds), Error> {
    let offsets = batch
        .column_by_name("offset")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
    let ids: Vec<u64> = match offsets {
        Some(offsets) => offsets.iter().map(|o| o.map_or(u64::MAX, |o| o as u64)).collect(),
        None => (first..first + batch.num_rows() as u64).collect(),
    };
    let keep: Vec<bool> = ids.iter().map(|id| !skip.contains(id)).collect();
    let skipped = keep.iter().filter(|k| !**k).count();
    if skipped == 0 {
        return Ok((batch, 0, RecordIds { first, kept: None }));
    }
    let kept_ids = ids
        .into_iter()
        .zip(&keep)
        .filter_map(|(id, k)| k.then_some(id))
        .collect();
    let keep = arrow::array::BooleanArray::from(keep);
    let kept = arrow::compute::filter_record_batch(&batch, &keep)
        .map_err(|e| Error::Data(crate::data::Error::Internal(format!("skipping records: {e}"))))?;
    Ok((
        kept,
        skipped,
        RecordIds {
            first,
            kept: Some(kept_ids),
        },
    ))
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

/// Run one map attempt: read the split, map, combine, partition, sort and
/// write one shuffle object as it is produced.
///
/// # Errors
/// Input errors, guest failures (with the input position), and I/O errors
/// writing the shuffle object.
pub async fn run_map(ctx: &JobContext, a: &MapAssignment) -> Result<MapOutput, Error> {
    // One split opened ahead of the one being read.
    let (tx, rx) = mpsc::channel(1);
    let _open = SpawnedTask::spawn(open_splits(
        a.input.splits.clone(),
        ctx.module.limits().max_record_bytes,
        tx,
    ));
    let object = Location::parse(&a.shuffle_object)?;
    let (sink, upload) = sink::upload(&object);
    let runtime = ctx.runtime.clone();
    let module = ctx.module.clone();
    let cancel = ctx.cancel.clone();
    let assignment = a.clone();
    let computed = ctx
        .pool
        .run(move || map_compute((&runtime, &module, &cancel), &assignment, rx, sink))
        .await;
    let counters = finish_upload(computed, upload).await?;
    Ok(MapOutput { counters })
}

/// The split a map attempt is reading.
struct ReadingSplit {
    /// Its index in the task's input.
    index: usize,
    source: String,
    reader: InputReader,
    _fetch: Option<SpawnedTask<()>>,
}

/// One split of a map task, opened: its reader, and the fetch feeding it.
struct OpenedSplit {
    source: String,
    reader: OpenedReader,
    /// Owns a text split's fetch; dropping it stops the fetch.
    _fetch: Option<SpawnedTask<()>>,
}

impl OpenedSplit {
    /// Its source name, a reader for the compute thread (decoding a
    /// Parquet split's footer and row groups here), and its fetch.
    fn into_reader(self) -> Result<(String, InputReader, Option<SpawnedTask<()>>), Error> {
        let reader = match self.reader {
            OpenedReader::Text(r) => InputReader::Text(r),
            OpenedReader::Parquet(fetched) => InputReader::Parquet(Box::new(ParquetSplitReader::new(fetched)?)),
        };
        Ok((self.source, reader, self._fetch))
    }
}

enum OpenedReader {
    Text(TextSplitReader),
    /// Fetched bytes, decoded on the compute thread.
    Parquet(crate::data::parquet_input::FetchedParquet),
}

/// Open each split in turn and hand it to the compute job: a text split
/// starts its streamed fetch; a Parquet split is fetched whole (its row
/// groups). Stops at the first error, which it sends on.
async fn open_splits(splits: Vec<Split>, max_record: u64, tx: mpsc::Sender<Result<OpenedSplit, Error>>) {
    for split in splits {
        // Fetch the next split only once the reader has room for it: one
        // split read, one opened ahead, never more.
        let Ok(permit) = tx.reserve().await else {
            // The compute job is gone only if the attempt failed or was cancelled.
            return;
        };
        let opened = async {
            let file = Location::parse(&split.file)?;
            Ok(match &split.kind {
                SplitKind::Text { start, end } => {
                    // Two blocks in flight: one being read while one is cut into lines.
                    let (btx, brx) = mpsc::channel(2);
                    let fetch = SpawnedTask::spawn(stream_text_split(file.clone(), *start, *end, split.file_size, btx));
                    let reader = TextSplitReader::new(brx, file.display.clone(), *start, *end, split.file_size)
                        .with_max_record(max_record);
                    OpenedSplit {
                        source: file.display,
                        reader: OpenedReader::Text(reader),
                        _fetch: Some(fetch),
                    }
                }
                SplitKind::Parquet { row_groups } => OpenedSplit {
                    reader: OpenedReader::Parquet(fetch_parquet_split(&file, split.file_size, row_groups).await?),
                    source: file.display,
                    _fetch: None,
                },
            })
        }
        .await;
        let failed = opened.is_err();
        permit.send(opened);
        if failed {
            return;
        }
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

/// Whether a map task still combines, judged from what combining has
/// achieved so far: once the task has seen enough rows from the guest to
/// tell, and combining removed less than a tenth of them (keys mostly
/// distinct), it stops.
struct Combining {
    on: bool,
    /// Rows the guest emitted that reached a combine pass.
    seen: u64,
    /// Rows combining removed.
    removed: u64,
}

impl Combining {
    fn new(combines: bool) -> Self {
        Combining {
            on: combines,
            seen: 0,
            removed: 0,
        }
    }

    /// `fresh` rows from the guest went into a pass.
    fn saw(&mut self, fresh: usize) {
        self.seen += fresh as u64;
        if self.seen >= COMBINE_JUDGED_AFTER_ROWS && self.removed * 10 < self.seen * (10 - COMBINE_USELESS_TENTHS) {
            self.on = false;
        }
    }
}

/// The guest, the key encoder and what a map task needs to combine.
struct MapWork<'a> {
    guest: GuestInstance,
    encoder: KeyEncoder,
    combining: Combining,
    a: &'a MapAssignment,
}

impl MapWork<'_> {
    /// Sort `batch` by (partition, key) and, while combining pays, combine
    /// each partition's groups. Returns each partition's sorted batches.
    fn sort_and_combine(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<RecordBatch>>, Error> {
        let partitions = self.a.partitions;
        let run = shuffle::partition_and_sort(&self.encoder, batch, &self.a.partitioner, partitions)?;
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions as usize {
            let range = run.partition(p);
            if range.is_empty() {
                out.push(Vec::new());
                continue;
            }
            let part = shuffle::slice(&run.batch, &range);
            if !self.combining.on {
                out.push(vec![part]);
                continue;
            }
            let ends = run.group_ends_in(&range);
            out.push(vec![self.combine_sorted(&part, &ends)?]);
        }
        Ok(out)
    }

    /// Combine the groups of `sorted` (ending at `ends`) with the guest's
    /// `combine`; the result is sorted by key.
    fn combine_sorted(&mut self, sorted: &RecordBatch, ends: &[u32]) -> Result<RecordBatch, Error> {
        let (keys, values) = shuffle::grouped(sorted, self.encoder.key_columns(), ends)?;
        let combined =
            self.guest
                .combine(&keys, &values, ends)
                .map_err(guest_err(self.a.task, self.a.attempt, None))?;
        self.combining.removed += sorted.num_rows().saturating_sub(combined.num_rows()) as u64;
        // The SDK combines group by group, in order; a hand-written guest
        // might not, so its output is re-sorted rather than trusted.
        Ok(if shuffle::is_sorted(&self.encoder, &combined)? {
            combined
        } else {
            shuffle::partition_and_sort(&self.encoder, &combined, &Partitioner::Hash, 1)?.batch
        })
    }
}

fn map_compute(
    (runtime, module, cancel): (&Runtime, &JobModule, &CancelFlag),
    a: &MapAssignment,
    mut splits: mpsc::Receiver<Result<OpenedSplit, Error>>,
    sink: ObjectSink,
) -> Result<Counters, Error> {
    let guest = module
        .instantiate(runtime, cancel)
        .map_err(guest_err(a.task, a.attempt, None))?;
    let info = guest.info().clone();
    let schema = info.map_output_schema();
    let mut work = MapWork {
        encoder: KeyEncoder::new(&info.key_types)?,
        guest,
        combining: Combining::new(info.combines),
        a,
    };
    let memory = TaskMemory(a.memory_bytes);
    let max_output = module.limits().max_output_bytes;
    let mut counters = Counters::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    // Rows from the guest since the last sort, and what is held in all.
    let (mut fresh_rows, mut pending_bytes) = (0usize, 0usize);
    let buffer = memory.map_buffer();
    let mut spills = spill::Spills::new();
    let (mut records_in, mut map_out) = (0i64, 0i64);
    let mut more_input = true;
    let mut skipped_records = 0i64;
    let (mut input_bytes, mut invalid_utf8_lines) = (0u64, 0u64);
    // The split being read, and the ordinal of its next record.
    let mut current: Option<ReadingSplit> = None;
    let mut next_index = 0usize;
    let mut records_read = 0u64;
    while more_input {
        // The next batch, from the current split or the next one; `None`
        // once every split is read.
        let batch = loop {
            if current.is_none() {
                let Some(opened) = splits.blocking_recv() else {
                    if next_index < a.input.splits.len() {
                        return Err(Error::Data(crate::data::Error::Internal(
                            "the input stopped before its last split without an error".into(),
                        )));
                    }
                    break None;
                };
                let (source, reader, _fetch) = opened?.into_reader()?;
                current = Some(ReadingSplit {
                    index: next_index,
                    source,
                    reader,
                    _fetch,
                });
                next_index += 1;
                records_read = 0;
            }
            let Some(reading) = &mut current else { break None };
            match reading.reader.next_batch()? {
                Some(batch) => break Some(batch),
                None => {
                    if let InputReader::Text(r) = &reading.reader {
                        input_bytes += r.bytes_read;
                        invalid_utf8_lines += r.invalid_utf8_lines;
                    }
                    current = None;
                }
            }
        };
        // The guest's output for the next batch, or at the end what it held back.
        let out = match (batch, &current) {
            (Some(batch), Some(reading)) => {
                let (index, source) = (reading.index, reading.source.as_str());
                let split = &a.input.splits[index];
                let first = records_read;
                records_read += batch.num_rows() as u64;
                let skip = skip_ids_of(&a.skip_records, index);
                let (batch, skipped, ids) = if skip.is_empty() {
                    (batch, 0, RecordIds { first, kept: None })
                } else {
                    without_records(batch, first, &skip)?
                };
                skipped_records += skipped as i64;
                records_in += batch.num_rows() as i64;
                work.guest.map(source, &batch).map_err(|e| {
                    let row = e.guest_row();
                    let position = row.map(|row| position_of(&batch, row, source, split, &ids));
                    let record = row.and_then(|row| ids.of(&batch, row)).map(|id| record_id(index, id));
                    Error::Guest {
                        task: a.task,
                        attempt: a.attempt,
                        position,
                        record,
                        source: e,
                    }
                })?
            }
            _ => {
                more_input = false;
                work.guest.flush().map_err(guest_err(a.task, a.attempt, None))?
            }
        };
        map_out += out.num_rows() as i64;
        fresh_rows += out.num_rows();
        pending_bytes += shuffle::batch_memory(&out);
        pending.push(out);
        let full = pending_bytes >= buffer;
        if full || (work.combining.on && fresh_rows >= COMBINE_EVERY_ROWS) {
            // Sort (and combine) what we have so far; if it still fills half
            // the buffer, spill it to disk, else keep it in memory.
            let all = shuffle::concat(&schema, &pending)?;
            pending.clear();
            let parts = work.sort_and_combine(&all)?;
            if work.combining.on {
                work.combining.saw(fresh_rows);
            }
            fresh_rows = 0;
            drop(all);
            let kept: usize = parts.iter().flatten().map(shuffle::batch_memory).sum();
            if full && kept >= buffer / 2 {
                spills.spill(&schema, &parts)?;
                check_output("the map output spilled", spills.bytes, max_output)?;
            } else {
                pending = parts.into_iter().flatten().collect();
            }
            pending_bytes = pending.iter().map(shuffle::batch_memory).sum();
        }
    }
    let all = shuffle::concat(&schema, &pending)?;
    drop(pending);
    let partitions = work.sort_and_combine(&all)?;
    drop(all);
    let mut out = ShuffleWriter::new(sink, &schema, a.partitions)?;
    let mut shuffled = 0i64;
    let mut merge_spilled = 0u64;
    let fan_in = memory.fan_in();
    for (p, in_memory) in partitions.into_iter().enumerate() {
        let p32 = p as u32;
        if spills.is_empty() {
            for batch in &in_memory {
                out.write(p32, batch)?;
                shuffled += batch.num_rows() as i64;
            }
        } else {
            // Merge this partition's spilled runs with what is still in
            // memory, combining again while that pays.
            let mut runs = spills.partition(p, &schema);
            runs.push(Box::new(MemoryRun::new(in_memory)));
            let (runs, passes) = shuffle::reduce_runs(&work.encoder, &schema, runs, fan_in)?;
            merge_spilled += passes;
            let encoder = KeyEncoder::new(&info.key_types)?;
            let mut merger = Merger::new(&encoder, runs)?;
            loop {
                // Combining needs whole groups; passing rows through does not.
                let chunk = if work.combining.on {
                    match merger.next_chunk(REDUCE_CALL_ROWS)? {
                        Some((chunk, ends)) => work.combine_sorted(&chunk, &ends)?,
                        None => break,
                    }
                } else {
                    match merger.next_rows(REDUCE_CALL_ROWS)? {
                        Some(chunk) => chunk,
                        None => break,
                    }
                };
                out.write(p32, &chunk)?;
                shuffled += chunk.num_rows() as i64;
            }
        }
        check_output("the map output", out.written(), max_output)?;
    }
    let (sink, _) = out.finish()?;
    let size = sink
        .finish()
        .map_err(|source| shuffle::Error::Io {
            action: "uploading the shuffle object",
            source,
        })?
        .bytes;
    check_output("the map output", size, max_output)?;
    counters.extend(work.guest.counters().clone());
    record_log(&work.guest, a.task, a.attempt, &mut counters);
    counters.insert("wmr.map.input.records".into(), records_in);
    if skipped_records > 0 {
        counters.insert("wmr.map.skipped.records".into(), skipped_records);
    }
    if input_bytes > 0 {
        counters.insert("wmr.map.input.bytes".into(), input_bytes as i64);
    }
    if invalid_utf8_lines > 0 {
        counters.insert("input.invalid_utf8_lines".into(), invalid_utf8_lines as i64);
    }
    if info.combines && !work.combining.on {
        // Summed over the job: how many map tasks found combining useless.
        counters.insert("wmr.map.combine.stopped.tasks".into(), 1);
    }
    counters.insert("wmr.map.output.records".into(), map_out);
    counters.insert(
        "wmr.map.spilled.bytes".into(),
        i64::try_from(spills.bytes + merge_spilled).unwrap_or(i64::MAX),
    );
    counters.insert("wmr.shuffle.records".into(), shuffled);
    counters.insert("wmr.shuffle.bytes".into(), size as i64);
    Ok(counters)
}

/// What a reduce task's fetch sends its compute job.
enum Fetched {
    /// First: this task's partition in each map output, from their indexes.
    Ranges(Vec<shuffle::PartitionSlice>),
    /// Then, when every map output is a local file, their paths: they are
    /// read where they are rather than copied.
    Local(Vec<std::path::PathBuf>),
    /// Else the bytes, block by block.
    Block {
        /// Which map output.
        input: usize,
        /// Where in that output's range the bytes start.
        offset: u64,
        bytes: Bytes,
    },
}

/// Up to this many partitions, a reducer reads a shuffle object's whole
/// index in one request; past it, the trailer and then just its two
/// entries, so the bytes read stay small however many reducers there are.
pub const WHOLE_INDEX_UP_TO: u32 = 4096;

/// Read the index at the end of `object` (of `partitions` partitions) and
/// return partition `partition`'s byte range.
async fn partition_range(object: &Location, partitions: u32, partition: u32) -> Result<shuffle::PartitionSlice, Error> {
    let io = |e| Error::Data(crate::data::Error::io(&object.display, "reading the index of", e));
    let suffix = |len| object_store::GetOptions {
        range: Some(object_store::GetRange::Suffix(len)),
        ..Default::default()
    };
    if partitions <= WHOLE_INDEX_UP_TO {
        let got = object
            .store
            .get_opts(&object.path, suffix(shuffle::index_len(partitions)))
            .await
            .map_err(io)?;
        let size = got.meta.size;
        let tail = got.bytes().await.map_err(io)?;
        let slices = shuffle::parse_index(&object.display, &tail, partitions, size)?;
        return slices.get(partition as usize).cloned().ok_or_else(|| {
            Error::Shuffle(shuffle::Error::Corrupt {
                what: object.display.clone(),
                reason: format!("its index has no partition {partition}"),
            })
        });
    }
    let got = object
        .store
        .get_opts(&object.path, suffix(shuffle::TRAILER_LEN))
        .await
        .map_err(io)?;
    let size = got.meta.size;
    let trailer = got.bytes().await.map_err(io)?;
    let index_start = shuffle::check_trailer(&object.display, &trailer, partitions, size)?;
    let at = shuffle::entry_offset(index_start, partition);
    let entries = object
        .store
        .get_range(&object.path, at..at + shuffle::ENTRIES_READ)
        .await
        .map_err(io)?;
    Ok(shuffle::parse_index_entries(&object.display, &entries, index_start)?)
}

/// A map output that is gone or corrupt is the map's loss, not the
/// reduce's: the error names the map task, so that it runs again.
fn map_output_lost(map: usize, e: Error) -> Error {
    let gone = matches!(
        &e,
        Error::Data(crate::data::Error::Io {
            source: object_store::Error::NotFound { .. },
            ..
        }) | Error::Shuffle(shuffle::Error::Corrupt { .. })
    );
    if gone {
        Error::MapOutputLost {
            map: map as u32,
            reason: crate::error_chain(&e),
        }
    } else {
        e
    }
}

/// Read each map output's index for this task's partition, send the
/// ranges, then read the ranges in blocks of [`FETCH_BLOCK`],
/// [`FETCH_CONCURRENCY`] at a time, in order. Stops at the first error,
/// which it sends on.
async fn fetch_inputs(a: ReduceAssignment, tx: mpsc::Sender<Result<Fetched, Error>>) {
    use futures::{StreamExt, TryStreamExt};
    let located = async {
        let objects = a
            .map_outputs
            .iter()
            .map(|o| Location::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        // Index reads are small: more of them in flight.
        let (partitions, partition) = (a.partitions, a.task.index);
        let ranges: Vec<shuffle::PartitionSlice> = futures::stream::iter(objects.clone().into_iter().enumerate())
            .map(|(map, o)| async move {
                partition_range(&o, partitions, partition)
                    .await
                    .map_err(|e| map_output_lost(map, e))
            })
            .buffered(FETCH_CONCURRENCY * 4)
            .try_collect()
            .await?;
        Ok::<_, Error>((objects, ranges))
    }
    .await;
    let (objects, ranges) = match located {
        Ok(found) => found,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    if tx.send(Ok(Fetched::Ranges(ranges.clone()))).await.is_err() {
        return;
    }
    let local: Option<Vec<std::path::PathBuf>> = objects.iter().map(Location::local_path).collect();
    if let Some(paths) = local {
        let _ = tx.send(Ok(Fetched::Local(paths))).await;
        return;
    }
    let mut blocks = Vec::new();
    for (i, (object, slice)) in objects.into_iter().zip(ranges).enumerate() {
        let range = slice.range;
        let mut at = range.start;
        while at < range.end {
            let end = (at + FETCH_BLOCK).min(range.end);
            blocks.push((i, object.clone(), range.start, at..end));
            at = end;
        }
    }
    let mut reads = futures::stream::iter(blocks)
        .map(|(input, object, base, range)| async move {
            let what = format!("{} bytes {}..{}", object.display, range.start, range.end);
            object
                .store
                .get_range(&object.path, range.clone())
                .await
                .map(|bytes| Fetched::Block {
                    input,
                    offset: range.start - base,
                    bytes,
                })
                .map_err(|e| map_output_lost(input, Error::Data(crate::data::Error::io(&what, "reading", e))))
        })
        .buffered(FETCH_CONCURRENCY);
    while let Some(item) = reads.next().await {
        let failed = item.is_err();
        // The compute job is gone only if the attempt failed or was cancelled.
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Run one reduce attempt: fetch this partition of every map output,
/// merge, reduce, and write the attempt's output file as it is produced.
///
/// # Errors
/// I/O errors, corrupt shuffle data, and guest failures.
pub async fn run_reduce(ctx: &JobContext, a: &ReduceAssignment) -> Result<ReduceOutput, Error> {
    let (tx, rx) = mpsc::channel(FETCH_CONCURRENCY);
    let _fetch = SpawnedTask::spawn(fetch_inputs(a.clone(), tx));
    let file = Location::parse(&a.output_file)?;
    let (sink, upload) = sink::upload(&file);
    let runtime = ctx.runtime.clone();
    let module = ctx.module.clone();
    let cancel = ctx.cancel.clone();
    let assignment = a.clone();
    let computed = ctx
        .pool
        .run(move || reduce_compute((&runtime, &module, &cancel), &assignment, rx, sink))
        .await;
    let (rows, written, counters) = finish_upload(computed, upload).await?;
    Ok(ReduceOutput {
        rows,
        bytes: written.bytes,
        checksum: written.checksum,
        counters,
    })
}

/// Receive every fetched block into one local temp file, each input at its
/// own place, and open each input's range as a run.
fn receive_inputs(
    a: &ReduceAssignment,
    schema: &SchemaRef,
    mut rx: mpsc::Receiver<Result<Fetched, Error>>,
) -> Result<(Vec<Box<dyn RunReader>>, u64), Error> {
    use std::os::unix::fs::FileExt;
    let stopped = || {
        Error::Data(crate::data::Error::Internal(
            "the shuffle fetch stopped without an error".into(),
        ))
    };
    let slices = match rx.blocking_recv() {
        Some(Ok(Fetched::Ranges(slices))) => slices,
        Some(Err(e)) => return Err(e),
        _ => return Err(stopped()),
    };
    let ranges: Vec<Range<u64>> = slices.iter().map(|s| s.range.clone()).collect();
    // What was fetched must be what the map wrote: each input's bytes are
    // checked against the checksum in its index, as they arrive.
    let mut hashers: Vec<xxhash_rust::xxh3::Xxh3> = slices.iter().map(|_| xxhash_rust::xxh3::Xxh3::new()).collect();
    let mut arrived = vec![0u64; slices.len()];
    let check = |input: usize, sum: u64| -> Result<(), Error> {
        match slices.get(input) {
            Some(s) if s.checksum == sum => Ok(()),
            _ => Err(Error::MapOutputLost {
                map: input as u32,
                reason: format!(
                    "{} bytes {}..{} do not match their checksum",
                    a.map_outputs.get(input).map_or("?", String::as_str),
                    ranges.get(input).map_or(0, |r| r.start),
                    ranges.get(input).map_or(0, |r| r.end)
                ),
            }),
        }
    };
    let mut bases = Vec::with_capacity(ranges.len());
    let mut total = 0u64;
    for range in &ranges {
        bases.push(total);
        total += range.end - range.start;
    }
    let mut runs: Vec<Box<dyn RunReader>> = Vec::new();
    let file = tempfile::tempfile().map_err(Error::Spill)?;
    let mut received = 0u64;
    while let Some(fetched) = rx.blocking_recv() {
        let (input, offset, bytes) = match fetched? {
            Fetched::Block { input, offset, bytes } => (input, offset, bytes),
            Fetched::Local(paths) => {
                for (input, path) in paths.iter().enumerate() {
                    check(input, checksum_of(path, &ranges[input]).map_err(Error::Spill)?)?;
                }
                for ((path, range), object) in paths.into_iter().zip(&ranges).zip(&a.map_outputs) {
                    if !range.is_empty() {
                        let what = format!("{object} bytes {}..{}", range.start, range.end);
                        runs.push(Box::new(DeferredRun::new(
                            RunFile::Path(path),
                            range.clone(),
                            what,
                            schema,
                        )));
                    }
                }
                return Ok((runs, total));
            }
            Fetched::Ranges(_) => return Err(stopped()),
        };
        let at = bases.get(input).copied().unwrap_or(0) + offset;
        file.write_all_at(&bytes, at).map_err(Error::Spill)?;
        received += bytes.len() as u64;
        // Blocks of one input come in order: hash them as they come.
        if let (Some(h), Some(n), Some(r)) = (hashers.get_mut(input), arrived.get_mut(input), ranges.get(input)) {
            h.update(&bytes);
            *n += bytes.len() as u64;
            if *n == r.end - r.start {
                check(input, h.digest())?;
            }
        }
    }
    if received != total {
        return Err(stopped());
    }
    // Empty inputs never got a block: theirs is the empty checksum.
    for (input, r) in ranges.iter().enumerate() {
        if r.is_empty() {
            check(input, shuffle::partition_checksum(&[]))?;
        }
    }
    let file = Arc::new(file);
    for ((object, range), base) in a.map_outputs.iter().zip(&ranges).zip(bases) {
        if range.is_empty() {
            continue;
        }
        let what = format!("{object} bytes {}..{}", range.start, range.end);
        let section = base..base + (range.end - range.start);
        runs.push(Box::new(DeferredRun::new(
            RunFile::Open(file.clone()),
            section,
            what,
            schema,
        )));
    }
    Ok((runs, total))
}

/// The checksum of `range` of the local file `path`.
fn checksum_of(path: &std::path::Path, range: &Range<u64>) -> std::io::Result<u64> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(range.start))?;
    let mut left = range.end - range.start;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(hasher.digest())
}

fn reduce_compute(
    (runtime, module, cancel): (&Runtime, &JobModule, &CancelFlag),
    a: &ReduceAssignment,
    rx: mpsc::Receiver<Result<Fetched, Error>>,
    sink: ObjectSink,
) -> Result<(u64, crate::data::sink::Written, Counters), Error> {
    let mut guest = module
        .instantiate(runtime, cancel)
        .map_err(guest_err(a.task, a.attempt, None))?;
    let info = guest.info().clone();
    let schema = info.map_output_schema();
    let encoder = KeyEncoder::new(&info.key_types)?;
    let max_output = module.limits().max_output_bytes;
    let (runs, fetched) = receive_inputs(a, &schema, rx)?;
    let (runs, merge_spilled) = shuffle::reduce_runs(&encoder, &schema, runs, TaskMemory(a.memory_bytes).fan_in())?;
    let mut writer = a.format.writer(&a.output_file, &info.output_schema, sink)?;
    let mut merger = Merger::new(&encoder, runs)?;
    let (mut records_in, mut groups) = (0usize, 0usize);
    while let Some((chunk, ends)) = merger.next_chunk(REDUCE_CALL_ROWS)? {
        let (keys, values) = shuffle::grouped(&chunk, encoder.key_columns(), &ends)?;
        let first_row = records_in;
        let out = guest.reduce(&keys, &values, &ends).map_err(|e| {
            let position = e.guest_row().map(|r| {
                format!(
                    "reduce group starting at row {} of partition {}",
                    first_row + r as usize,
                    a.task.index
                )
            });
            guest_err(a.task, a.attempt, position)(e)
        })?;
        records_in += chunk.num_rows();
        groups += ends.len();
        writer.write(&out)?;
        check_output("the reduce output", writer.written(), max_output)?;
    }
    let rows = writer.rows();
    let written = writer.finish()?;
    let bytes = written.bytes;
    check_output("the reduce output", bytes, max_output)?;
    let mut counters = guest.counters().clone();
    record_log(&guest, a.task, a.attempt, &mut counters);
    counters.insert("wmr.reduce.input.records".into(), records_in as i64);
    counters.insert("wmr.reduce.input.groups".into(), groups as i64);
    counters.insert("wmr.reduce.output.records".into(), rows as i64);
    counters.insert("wmr.reduce.shuffle.bytes".into(), fetched as i64);
    if merge_spilled > 0 {
        counters.insert("wmr.reduce.spilled.bytes".into(), merge_spilled as i64);
    }
    counters.insert("wmr.output.bytes".into(), bytes as i64);
    Ok((rows, written, counters))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(offsets: Option<Vec<i64>>, lines: &[&str]) -> RecordBatch {
        let mut fields = vec![Field::new("line", DataType::Utf8, false)];
        let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(StringArray::from(lines.to_vec()))];
        if let Some(o) = offsets {
            fields.push(Field::new("offset", DataType::Int64, false));
            columns.push(Arc::new(Int64Array::from(o)));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn text_records_are_skipped_by_byte_offset() {
        let b = batch(Some(vec![0, 5, 16]), &["fine", "BOOM once", "again"]);
        let (kept, skipped, ids) = without_records(b, 0, &[5]).unwrap();
        assert_eq!((kept.num_rows(), skipped), (2, 1));
        assert_eq!(ids.of(&kept, 1), Some(16));
    }

    #[test]
    fn other_records_are_skipped_by_ordinal_across_batches() {
        // The second batch of a split: its records are 3, 4 and 5.
        let b = batch(None, &["fine", "BOOM", "after"]);
        let (kept, skipped, ids) = without_records(b.clone(), 3, &[4, 1]).unwrap();
        assert_eq!((kept.num_rows(), skipped), (2, 1));
        // Row 1 of what is left is record 5, not 4.
        assert_eq!(ids.of(&kept, 1), Some(5));
        assert_eq!(ids.of(&kept, 2), None);
        let (_, skipped, ids) = without_records(b.clone(), 3, &[9]).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(ids.of(&b, 2), Some(5));
    }
}
