//! A map attempt: its splits read one ahead of the one being mapped, the
//! guest's `map` over each batch, and the output buffered, partitioned,
//! sorted, combined (while that pays), spilled and merged into one shuffle
//! object uploaded as it is written. Records to skip (bad records from
//! earlier attempts) are named by [`record_id`].

use arrow::array::{Array, Int64Array, RecordBatch};
use tokio::sync::mpsc;

use super::combine::{CombinePlan, Combining, calls_of, place_combined};
use super::{
    COMBINE_EVERY_ROWS, Counters, Error, JobContext, MapAssignment, MapOutput, REDUCE_CALL_ROWS, TaskMemory,
    check_output, compute_into_upload, guest_err, record_log, spill,
};
use crate::data::parquet_input::{ParquetSplitReader, fetch_parquet_split};
use crate::data::sink::ObjectSink;
use crate::data::text::{TextSplitReader, stream_text_split};
use crate::data::{Location, Split, SplitKind};
use crate::runtime::{CancelFlag, GuestInstance, JobModule, Runtime};
use crate::shuffle::{self, Compression, KeyEncoder, MemoryRun, Merger, ShuffleWriter};
use crate::spawn::SpawnedTask;

pub(super) enum InputReader {
    Text(TextSplitReader),
    Parquet(Box<ParquetSplitReader>),
}

impl InputReader {
    pub(super) fn next_batch(&mut self) -> Result<Option<RecordBatch>, crate::data::Error> {
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

/// Where an input batch came from, for errors of no one row in it.
fn batch_position_of(batch: &RecordBatch, source: &str, split: &Split, ids: &RecordIds) -> String {
    let last = u32::try_from(batch.num_rows().saturating_sub(1)).unwrap_or(u32::MAX);
    let ends = |of: &dyn Fn(u32) -> Option<u64>| of(0).zip(of(last));
    match (ends(&|row| offset_of(batch, row)), ends(&|row| ids.of(batch, row))) {
        (Some((first, last)), _) => format!("{source} byte offsets {first}-{last} (a batch)"),
        (None, Some((first, last))) => format!("records {first}-{last} of {} (a batch)", split.describe()),
        (None, None) => format!("a batch of {}", split.describe()),
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
    let assignment = a.clone();
    let compression = Compression::for_object(object.is_local());
    let counters = compute_into_upload(ctx, &object, move |guest, sink| {
        map_compute(guest, &assignment, rx, (sink, compression))
    })
    .await?;
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
pub(super) struct OpenedSplit {
    source: String,
    reader: OpenedReader,
    /// Owns a text split's fetch; dropping it stops the fetch.
    _fetch: Option<SpawnedTask<()>>,
}

impl OpenedSplit {
    /// Its source name, a reader for the compute thread (decoding a
    /// Parquet split's footer and row groups here), and its fetch.
    pub(super) fn into_reader(self) -> Result<(String, InputReader, Option<SpawnedTask<()>>), Error> {
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
pub(super) async fn open_splits(splits: Vec<Split>, max_record: u64, tx: mpsc::Sender<Result<OpenedSplit, Error>>) {
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
            out.push(self.combine_in_calls(&part, &ends)?);
        }
        Ok(out)
    }

    /// Combine the groups of `sorted` (ending at `ends`) in calls of at most
    /// [`REDUCE_CALL_ROWS`] rows (or one group, if it is larger), so that a
    /// guest's memory for one call stays bounded however much the map
    /// buffer holds: an interpreter's heap is the first to run out. The
    /// results, in order, are sorted by key.
    fn combine_in_calls(&mut self, sorted: &RecordBatch, ends: &[u32]) -> Result<Vec<RecordBatch>, Error> {
        let mut out = Vec::new();
        for groups in calls_of(ends, REDUCE_CALL_ROWS) {
            let start = groups.start.checked_sub(1).map_or(0, |g| ends[g]);
            let end = ends[groups.end - 1];
            let chunk = sorted.slice(start as usize, (end - start) as usize);
            let chunk_ends: Vec<u32> = ends[groups].iter().map(|&e| e - start).collect();
            out.push(self.combine_sorted(&chunk, &chunk_ends)?);
        }
        Ok(out)
    }

    /// Combine the groups of `sorted` (ending at `ends`) with the guest's
    /// `combine` in one call; the result is sorted by key. Only groups of
    /// more than one row go to the guest (combining is optional, so a key's
    /// lone value needs no call): after an SDK's in-mapper combining, most
    /// keys of a pass arrive once, and copying them into the guest and back
    /// would be all the pass did for them.
    fn combine_sorted(&mut self, sorted: &RecordBatch, ends: &[u32]) -> Result<RecordBatch, Error> {
        let plan = CombinePlan::of(ends);
        if plan.multi_groups == 0 {
            return Ok(sorted.clone());
        }
        let (to_combine, to_combine_ends) = if plan.all_multi() {
            (sorted.clone(), ends.to_vec())
        } else {
            (shuffle::take_rows(sorted, plan.multi_rows())?, plan.multi_ends())
        };
        let (keys, values) = shuffle::grouped(&to_combine, self.encoder.key_columns(), &to_combine_ends)?;
        let combined = self.guest.combine(&keys, &values, &to_combine_ends).map_err(guest_err(
            self.a.task,
            self.a.attempt,
            None,
        ))?;
        self.combining.removed += to_combine.num_rows().saturating_sub(combined.num_rows()) as u64;
        place_combined(&self.encoder, sorted, &plan, &combined)
    }
}

fn map_compute(
    (runtime, module, cancel): (&Runtime, &JobModule, &CancelFlag),
    a: &MapAssignment,
    mut splits: mpsc::Receiver<Result<OpenedSplit, Error>>,
    (sink, compression): (ObjectSink, Compression),
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
                    // A failure of the whole batch (a job that maps column by
                    // column) is placed by its first and last record.
                    let position = Some(match row {
                        Some(row) => position_of(&batch, row, source, split, &ids),
                        None => batch_position_of(&batch, source, split, &ids),
                    });
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
    let mut out = ShuffleWriter::new(sink.without_checksum(), &schema, a.partitions, compression)?;
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
