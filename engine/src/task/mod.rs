//! Running one map or one reduce attempt, on top of `runtime`, `data` and
//! `shuffle`. Knows nothing of gRPC or scheduling.
//!
//! Each attempt is an async orchestrator that does the I/O and hands whole
//! batches to a compute thread over a bounded channel:
//!
//! ```text
//! map:    read split ──chunks──▶ [compute: lines → guest map → combine →
//!         partition + sort → combine → encode] ──bytes──▶ put shuffle object
//! reduce: range-read every map output ──▶ [compute: decode → k-way merge →
//!         group → guest reduce → encode Parquet/text] ──bytes──▶ put file
//! ```

mod spill;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::data::output::OutputFormat;
use crate::data::parquet_input::{ParquetSplitReader, fetch_parquet_split};
use crate::data::text::{TextSplitReader, stream_text_split};
use crate::data::{Location, Split, SplitKind};
use crate::runtime::{GuestInstance, JobModule, Runtime};
use crate::shuffle::{self, KeyEncoder};
use crate::spawn::SpawnedTask;
use crate::worker::ComputePool;
use crate::{AttemptId, TaskId};

/// Named counters: the engine's own (`wmr.` prefix) and the guest's.
pub type Counters = BTreeMap<String, i64>;

/// Map output rows collected before they are sorted and combined in place.
pub const COMBINE_EVERY_ROWS: usize = 1 << 20;
/// Smallest number of rows handed to one `reduce` call (groups stay whole).
pub const REDUCE_CALL_ROWS: usize = 32 * 1024;

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
    Panic(#[from] crate::worker::ComputePanic),
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
            Error::Data(crate::data::Error::MissingInput { .. } | crate::data::Error::BadLocation { .. })
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
}

/// One map attempt to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapAssignment {
    /// The task.
    pub task: TaskId,
    /// This attempt.
    pub attempt: AttemptId,
    /// The input.
    pub split: Split,
    /// Number of reduce partitions.
    pub partitions: u32,
    /// Where to write the shuffle object (path or URL).
    pub shuffle_object: String,
    /// Map output held in memory before it is sorted and spilled to local disk.
    pub buffer_bytes: u64,
    /// Records to skip, because the guest failed on them before: text lines
    /// by byte offset, other records by ordinal within the split.
    #[serde(default)]
    pub skip_records: Vec<u64>,
}

/// What a successful map attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOutput {
    /// The shuffle object.
    pub object: String,
    /// Each partition's byte range in it.
    pub ranges: Vec<Range<u64>>,
    /// Counters of this attempt.
    pub counters: Counters,
}

/// One partition's input for a reduce: a range of a committed shuffle object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleInput {
    /// The shuffle object.
    pub object: String,
    /// The partition's byte range in it.
    pub range: Range<u64>,
}

/// One reduce attempt to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceAssignment {
    /// The task (its index is the partition).
    pub task: TaskId,
    /// This attempt.
    pub attempt: AttemptId,
    /// The partition of every committed map output.
    pub inputs: Vec<ShuffleInput>,
    /// Where to write this attempt's output file (path or URL).
    pub output_file: String,
    /// The output format.
    pub format: OutputFormat,
}

/// What a successful reduce attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceOutput {
    /// The attempt's output file.
    pub file: String,
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

fn put_error(what: &str, e: object_store::Error) -> Error {
    Error::Data(crate::data::Error::Io {
        what: what.to_string(),
        action: "writing",
        source: e,
    })
}

/// Run one map attempt: read the split, map, combine, partition, sort and
/// write one shuffle object.
///
/// # Errors
/// Input errors, guest failures (with the input position), and I/O errors
/// writing the shuffle object.
pub async fn run_map(ctx: &JobContext, a: &MapAssignment) -> Result<MapOutput, Error> {
    let file = Location::parse(&a.split.file)?;
    let (reader, _fetch): (InputReader, Option<SpawnedTask<()>>) = match &a.split.kind {
        SplitKind::Text { start, end } => {
            // Two blocks in flight: one being read while one is cut into lines.
            let (tx, rx) = mpsc::channel(2);
            let fetch = SpawnedTask::spawn(stream_text_split(file.clone(), *start, *end, a.split.file_size, tx));
            (
                InputReader::Text(TextSplitReader::new(
                    rx,
                    file.display.clone(),
                    *start,
                    *end,
                    a.split.file_size,
                )),
                Some(fetch),
            )
        }
        SplitKind::Parquet { row_groups } => {
            let fetched = fetch_parquet_split(&file, a.split.file_size, row_groups).await?;
            let reader = ctx.pool.run(move || ParquetSplitReader::new(fetched)).await??;
            (InputReader::Parquet(Box::new(reader)), None)
        }
    };
    let runtime = ctx.runtime.clone();
    let module = ctx.module.clone();
    let assignment = a.clone();
    let source = file.display.clone();
    let (bytes, ranges, counters) = ctx
        .pool
        .run(move || map_compute(&runtime, &module, &assignment, &source, reader))
        .await??;
    let object = Location::parse(&a.shuffle_object)?;
    let size = bytes.len();
    object
        .store
        .put(&object.path, PutPayload::from(bytes))
        .await
        .map_err(|e| put_error(&object.display, e))?;
    let mut counters = counters;
    *counters.entry("wmr.shuffle.bytes".into()).or_insert(0) += size as i64;
    Ok(MapOutput {
        object: a.shuffle_object.clone(),
        ranges,
        counters,
    })
}

/// Put the guest's captured log in this process's log (`-v` shows it), and
/// count what the log limit dropped.
fn record_log(guest: &GuestInstance, task: TaskId, attempt: AttemptId, counters: &mut Counters) {
    let log = guest.log();
    if !log.is_empty() {
        tracing::info!(%task, attempt = attempt.0, "guest log:\n{}", log.trim_end());
    }
    let dropped = guest.log_dropped_bytes();
    if dropped > 0 {
        counters.insert("wmr.log.dropped.bytes".into(), dropped as i64);
    }
}

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

/// Sort `batch` by (partition, key) and, for a combining job, combine each
/// partition's groups. Returns each partition's sorted batches.
fn sort_and_combine(
    guest: &mut GuestInstance,
    encoder: &KeyEncoder,
    batch: &RecordBatch,
    partitions: u32,
    task: TaskId,
    attempt: AttemptId,
) -> Result<Vec<Vec<RecordBatch>>, Error> {
    let run = shuffle::partition_and_sort(encoder, batch, partitions)?;
    let combines = guest.info().combines;
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions as usize {
        let range = run.partition(p);
        if range.is_empty() {
            out.push(Vec::new());
            continue;
        }
        let part = shuffle::slice(&run.batch, &range);
        if !combines {
            out.push(vec![part]);
            continue;
        }
        let ends = run.group_ends_in(&range);
        out.push(vec![combine_sorted(guest, encoder, &part, &ends, task, attempt)?]);
    }
    Ok(out)
}

/// Combine the groups of `sorted` (ending at `ends`) with the guest's
/// `combine`; the result is sorted by key.
fn combine_sorted(
    guest: &mut GuestInstance,
    encoder: &KeyEncoder,
    sorted: &RecordBatch,
    ends: &[u32],
    task: TaskId,
    attempt: AttemptId,
) -> Result<RecordBatch, Error> {
    let (keys, values) = shuffle::grouped(sorted, encoder.key_columns(), ends)?;
    let combined = guest
        .combine(&keys, &values, ends)
        .map_err(guest_err(task, attempt, None))?;
    // The SDK combines group by group, in order; a hand-written guest
    // might not, so its output is re-sorted rather than trusted.
    Ok(if shuffle::is_sorted(encoder, &combined)? {
        combined
    } else {
        shuffle::partition_and_sort(encoder, &combined, 1)?.batch
    })
}

fn map_compute(
    runtime: &Runtime,
    module: &JobModule,
    a: &MapAssignment,
    source: &str,
    mut reader: InputReader,
) -> Result<(Bytes, Vec<Range<u64>>, Counters), Error> {
    let mut guest = module
        .instantiate(runtime)
        .map_err(guest_err(a.task, a.attempt, None))?;
    let info = guest.info().clone();
    let schema = info.map_output_schema();
    let encoder = KeyEncoder::new(&info.key_types)?;
    let mut counters = Counters::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let (mut pending_rows, mut pending_bytes) = (0usize, 0usize);
    let buffer = usize::try_from(a.buffer_bytes).unwrap_or(usize::MAX).max(1);
    let mut spills = spill::Spills::new();
    let (mut records_in, mut map_out) = (0i64, 0i64);
    let mut more_input = true;
    let mut skipped_records = 0i64;
    // Input records read so far, skipped ones included: the ordinal of the
    // next batch's first record.
    let mut records_read = 0u64;
    while more_input {
        // The guest's output for the next batch, or at the end what it held back.
        let out = match reader.next_batch()? {
            Some(batch) => {
                let first = records_read;
                records_read += batch.num_rows() as u64;
                let (batch, skipped, ids) = if a.skip_records.is_empty() {
                    (batch, 0, RecordIds { first, kept: None })
                } else {
                    without_records(batch, first, &a.skip_records)?
                };
                skipped_records += skipped as i64;
                records_in += batch.num_rows() as i64;
                guest.map(source, &batch).map_err(|e| {
                    let row = e.guest_row();
                    let position = row.map(|row| position_of(&batch, row, source, &a.split, &ids));
                    let record = row.and_then(|row| ids.of(&batch, row));
                    Error::Guest {
                        task: a.task,
                        attempt: a.attempt,
                        position,
                        record,
                        source: e,
                    }
                })?
            }
            None => {
                more_input = false;
                guest.flush().map_err(guest_err(a.task, a.attempt, None))?
            }
        };
        map_out += out.num_rows() as i64;
        pending_rows += out.num_rows();
        pending_bytes += out.get_array_memory_size();
        pending.push(out);
        let full = pending_bytes >= buffer;
        if full || (info.combines && pending_rows >= COMBINE_EVERY_ROWS) {
            // Sort and combine what we have so far; if it still fills half
            // the buffer, spill it to disk, else keep it (combined) in memory.
            let all = shuffle::concat(&schema, &pending)?;
            let parts = sort_and_combine(&mut guest, &encoder, &all, a.partitions, a.task, a.attempt)?;
            let kept: usize = parts.iter().flatten().map(RecordBatch::get_array_memory_size).sum();
            if full && kept >= buffer / 2 {
                spills.spill(&schema, &parts)?;
                check_output("the map output spilled", spills.bytes, module.limits().max_output_bytes)?;
                pending.clear();
            } else {
                pending = parts.into_iter().flatten().collect();
            }
            pending_rows = pending.iter().map(RecordBatch::num_rows).sum();
            pending_bytes = pending.iter().map(RecordBatch::get_array_memory_size).sum();
        }
    }
    let all = shuffle::concat(&schema, &pending)?;
    let mut partitions = sort_and_combine(&mut guest, &encoder, &all, a.partitions, a.task, a.attempt)?;
    if !spills.is_empty() {
        // Merge each partition's spilled runs with what is still in memory.
        for (p, in_memory) in partitions.iter_mut().enumerate() {
            let mut runs = spills.partition(p)?;
            runs.append(in_memory);
            if let Some((merged, ends)) = shuffle::merge_sorted(&encoder, &schema, runs)? {
                let merged = if info.combines {
                    combine_sorted(&mut guest, &encoder, &merged, &ends, a.task, a.attempt)?
                } else {
                    merged
                };
                in_memory.push(merged);
            }
        }
    }
    counters.insert("wmr.map.spilled.bytes".into(), spills.bytes as i64);
    let shuffled: i64 = partitions.iter().flatten().map(|b| b.num_rows() as i64).sum();
    let (bytes, ranges) = shuffle::encode_shuffle(&schema, &partitions)?;
    check_output("the map output", bytes.len() as u64, module.limits().max_output_bytes)?;
    counters.extend(guest.counters().clone());
    record_log(&guest, a.task, a.attempt, &mut counters);
    counters.insert("wmr.map.input.records".into(), records_in);
    if skipped_records > 0 {
        counters.insert("wmr.map.skipped.records".into(), skipped_records);
    }
    if let InputReader::Text(r) = &reader {
        counters.insert("wmr.map.input.bytes".into(), r.bytes_read as i64);
        if r.invalid_utf8_lines > 0 {
            counters.insert("input.invalid_utf8_lines".into(), r.invalid_utf8_lines as i64);
        }
    }
    counters.insert("wmr.map.output.records".into(), map_out);
    counters.insert("wmr.shuffle.records".into(), shuffled);
    Ok((bytes, ranges, counters))
}

/// Run one reduce attempt: fetch this partition of every map output, merge,
/// reduce, and write the attempt's output file.
///
/// # Errors
/// I/O errors, corrupt shuffle data, and guest failures.
pub async fn run_reduce(ctx: &JobContext, a: &ReduceAssignment) -> Result<ReduceOutput, Error> {
    let mut fetches = Vec::new();
    for input in &a.inputs {
        if input.range.is_empty() {
            continue;
        }
        let object = Location::parse(&input.object)?;
        let range = input.range.clone();
        fetches.push(async move {
            let what = format!("{} bytes {}..{}", object.display, range.start, range.end);
            object
                .store
                .get_range(&object.path, range)
                .await
                .map(|b| (what.clone(), b))
                .map_err(|e| {
                    Error::Data(crate::data::Error::Io {
                        what,
                        action: "reading",
                        source: e,
                    })
                })
        });
    }
    let parts: Vec<(String, Bytes)> = futures::future::try_join_all(fetches).await?;
    let fetched: i64 = parts.iter().map(|(_, b)| b.len() as i64).sum();
    let runtime = ctx.runtime.clone();
    let module = ctx.module.clone();
    let assignment = a.clone();
    let (bytes, rows, mut counters) = ctx
        .pool
        .run(move || reduce_compute(&runtime, &module, &assignment, parts))
        .await??;
    let file = Location::parse(&a.output_file)?;
    let size = bytes.len() as u64;
    file.store
        .put(&file.path, PutPayload::from(bytes))
        .await
        .map_err(|e| put_error(&file.display, e))?;
    counters.insert("wmr.reduce.shuffle.bytes".into(), fetched);
    counters.insert("wmr.output.bytes".into(), size as i64);
    Ok(ReduceOutput {
        file: a.output_file.clone(),
        rows,
        bytes: size,
        counters,
    })
}

fn reduce_compute(
    runtime: &Runtime,
    module: &JobModule,
    a: &ReduceAssignment,
    parts: Vec<(String, Bytes)>,
) -> Result<(Bytes, u64, Counters), Error> {
    let mut guest = module
        .instantiate(runtime)
        .map_err(guest_err(a.task, a.attempt, None))?;
    let info = guest.info().clone();
    let schema = info.map_output_schema();
    let encoder = KeyEncoder::new(&info.key_types)?;
    let mut runs = Vec::with_capacity(parts.len());
    for (what, bytes) in parts {
        let batches = shuffle::decode_partition(&what, bytes)?;
        if batches
            .iter()
            .any(|b| b.schema().fields().len() != schema.fields().len())
        {
            return Err(shuffle::Error::Corrupt {
                what,
                reason: "its schema is not this job's map output schema".into(),
            }
            .into());
        }
        let run = shuffle::concat(&schema, &batches).map_err(|_| shuffle::Error::Corrupt {
            what,
            reason: "mismatched column types".into(),
        })?;
        runs.push(run);
    }
    let records_in: usize = runs.iter().map(RecordBatch::num_rows).sum();
    let mut outputs = Vec::new();
    let mut groups = 0usize;
    if let Some((merged, ends)) = shuffle::merge_sorted(&encoder, &schema, runs)? {
        groups = ends.len();
        for (range, chunk_ends) in shuffle::chunk_groups(&ends, REDUCE_CALL_ROWS) {
            let chunk = shuffle::slice(&merged, &range);
            let (keys, values) = shuffle::grouped(&chunk, encoder.key_columns(), &chunk_ends)?;
            let out = guest.reduce(&keys, &values, &chunk_ends).map_err(|e| {
                let position = e.guest_row().map(|r| {
                    format!(
                        "reduce group starting at row {} of partition {}",
                        range.start + r as usize,
                        a.task.index
                    )
                });
                guest_err(a.task, a.attempt, position)(e)
            })?;
            outputs.push(out);
        }
    }
    let rows: u64 = outputs.iter().map(|b| b.num_rows() as u64).sum();
    let bytes = a.format.encode(&a.output_file, &info.output_schema, &outputs)?;
    check_output(
        "the reduce output",
        bytes.len() as u64,
        module.limits().max_output_bytes,
    )?;
    let mut counters = guest.counters().clone();
    record_log(&guest, a.task, a.attempt, &mut counters);
    counters.insert("wmr.reduce.input.records".into(), records_in as i64);
    counters.insert("wmr.reduce.input.groups".into(), groups as i64);
    counters.insert("wmr.reduce.output.records".into(), rows as i64);
    Ok((bytes, rows, counters))
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
