//! A reduce attempt: this task's partition of every map output located
//! through the objects' indexes and fetched with bounded bytes in flight,
//! merged k ways, grouped, handed to the guest's `reduce` a bounded number
//! of rows at a time, and written as one output file uploaded as it grows.

use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;

use super::{
    Counters, Error, FETCH_BLOCK, FETCH_CONCURRENCY, JobContext, REDUCE_CALL_ROWS, ReduceAssignment, ReduceOutput,
    TaskMemory, check_output, compute_into_upload, guest_err, record_log,
};
use crate::data::Location;
use crate::data::sink::ObjectSink;
use crate::runtime::{CancelFlag, JobModule, Runtime};
use crate::shuffle::{self, DeferredRun, KeyEncoder, Merger, RunFile, RunReader};
use crate::spawn::SpawnedTask;

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
    let assignment = a.clone();
    let (rows, written, counters) = compute_into_upload(ctx, &file, move |guest, sink| {
        reduce_compute(guest, &assignment, rx, sink)
    })
    .await?;
    Ok(ReduceOutput {
        rows,
        bytes: written.bytes,
        checksum: written.checksum.ok_or_else(|| {
            Error::Data(crate::data::Error::Internal(format!(
                "the upload of {} kept no checksum",
                a.output_file
            )))
        })?,
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
