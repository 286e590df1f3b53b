//! The shuffle: hash partitioning, sorting and grouping by key, the shuffle
//! object a map task writes, and the k-way merge a reduce task runs. Knows
//! nothing of gRPC or wasmtime; all of it is CPU work for compute threads.
//!
//! Keys are ordered and hashed through `arrow::row`'s byte-comparable
//! encoding ([`KeyEncoder`]), so any key type, one column or several, sorts
//! and partitions the same way in every process.
//!
//! A shuffle object is R Arrow IPC streams (LZ4-compressed), one per reduce
//! partition, back to back, then an index: R+1 little-endian u64 offsets,
//! the u32 R, and the magic `WMRSHUF1`. Reducers range-read their stream
//! using the offsets the map task reported at commit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, interleave_record_batch, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::row::{RowConverter, Rows, SortField};
use bytes::Bytes;

/// The trailer that ends every shuffle object.
pub const MAGIC: &[u8; 8] = b"WMRSHUF1";

/// Errors of the shuffle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A shuffle object or range that can't be decoded.
    #[error("shuffle data {what} is corrupt: {reason}; the map task that wrote it will be re-run")]
    Corrupt {
        /// Which object and range.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An Arrow kernel failed on data we built.
    #[error("internal error in the shuffle while {action}: {source}; please report this as a bug")]
    Internal {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: arrow::error::ArrowError,
    },
}

fn internal(action: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |source| Error::Internal { action, source }
}

/// Encodes the key columns of batches into byte-comparable rows. Build one
/// per task, not per batch.
pub struct KeyEncoder {
    converter: RowConverter,
    key_columns: usize,
}

impl KeyEncoder {
    /// An encoder for keys of these column types (the first columns of
    /// every batch it sees).
    ///
    /// # Errors
    /// If Arrow can't order one of the types.
    pub fn new(key_types: &[DataType]) -> Result<Self, Error> {
        let converter = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())
            .map_err(internal("building the key encoder"))?;
        Ok(KeyEncoder {
            converter,
            key_columns: key_types.len(),
        })
    }

    /// How many leading columns are the key.
    pub fn key_columns(&self) -> usize {
        self.key_columns
    }

    /// The byte-comparable keys of `batch`'s rows.
    ///
    /// # Errors
    /// If the batch's key columns are not of the encoder's types.
    pub fn rows(&self, batch: &RecordBatch) -> Result<Rows, Error> {
        let keys: Vec<ArrayRef> = batch.columns()[..self.key_columns].to_vec();
        self.converter.convert_columns(&keys).map_err(internal("encoding keys"))
    }
}

/// The reduce partition of an encoded key.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions.max(1))) as u32
}

/// A batch sorted by (partition, key), with where each partition ends and
/// where each group of equal keys ends.
pub struct SortedRun {
    /// The rows, sorted.
    pub batch: RecordBatch,
    /// `partition_ends[p]` is one past the last row of partition `p`.
    pub partition_ends: Vec<usize>,
    /// One past the last row of each group of equal keys, ascending.
    pub group_ends: Vec<usize>,
}

impl SortedRun {
    /// Rows of partition `p`.
    pub fn partition(&self, p: usize) -> Range<usize> {
        let start = if p == 0 { 0 } else { self.partition_ends[p - 1] };
        start..self.partition_ends[p]
    }

    /// Group ends within `range`, relative to its start.
    pub fn group_ends_in(&self, range: &Range<usize>) -> Vec<u32> {
        let from = self.group_ends.partition_point(|&e| e <= range.start);
        let to = self.group_ends.partition_point(|&e| e <= range.end);
        self.group_ends[from..to]
            .iter()
            .map(|&e| (e - range.start) as u32)
            .collect()
    }
}

/// Sort `batch` by (partition, key) into `partitions` partitions.
///
/// # Errors
/// Only on an internal error.
pub fn partition_and_sort(encoder: &KeyEncoder, batch: &RecordBatch, partitions: u32) -> Result<SortedRun, Error> {
    let rows = encoder.rows(batch)?;
    let parts: Vec<u32> = rows.iter().map(|r| partition_of(r.as_ref(), partitions)).collect();
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        parts[a as usize]
            .cmp(&parts[b as usize])
            .then_with(|| rows.row(a as usize).cmp(&rows.row(b as usize)))
    });
    let mut partition_ends = vec![0usize; partitions.max(1) as usize];
    let mut group_ends = Vec::new();
    for (i, &idx) in order.iter().enumerate() {
        partition_ends[parts[idx as usize] as usize] = i + 1;
        if i > 0 {
            let prev = order[i - 1] as usize;
            if parts[prev] != parts[idx as usize] || rows.row(prev) != rows.row(idx as usize) {
                group_ends.push(i);
            }
        }
    }
    if !order.is_empty() {
        group_ends.push(order.len());
    }
    // Empty partitions end where the previous one did.
    for p in 1..partition_ends.len() {
        partition_ends[p] = partition_ends[p].max(partition_ends[p - 1]);
    }
    let sorted = take_record_batch(batch, &UInt32Array::from(order)).map_err(internal("sorting map output"))?;
    Ok(SortedRun {
        batch: sorted,
        partition_ends,
        group_ends,
    })
}

/// Split the key-sorted `batch` (key columns first) into what `combine` and
/// `reduce` take: one key row per group, the value columns of every row, and
/// the group ends.
///
/// # Errors
/// Only on an internal error.
pub fn grouped(
    batch: &RecordBatch,
    key_columns: usize,
    group_ends: &[u32],
) -> Result<(RecordBatch, RecordBatch), Error> {
    let firsts: Vec<u32> = std::iter::once(0)
        .chain(group_ends.iter().copied())
        .take(group_ends.len())
        .collect();
    let keys = take_record_batch(
        &batch
            .project(&(0..key_columns).collect::<Vec<_>>())
            .map_err(internal("projecting keys"))?,
        &UInt32Array::from(firsts),
    )
    .map_err(internal("taking group keys"))?;
    let values = batch
        .project(&(key_columns..batch.num_columns()).collect::<Vec<_>>())
        .map_err(internal("projecting values"))?;
    Ok((keys, values))
}

/// Whether `batch`'s keys are in non-decreasing order.
///
/// # Errors
/// Only on an internal error.
pub fn is_sorted(encoder: &KeyEncoder, batch: &RecordBatch) -> Result<bool, Error> {
    let rows = encoder.rows(batch)?;
    Ok((1..rows.num_rows()).all(|i| rows.row(i - 1) <= rows.row(i)))
}

/// Encode one shuffle object: each partition's batches as an IPC stream,
/// back to back, then the index. Returns the bytes and each partition's
/// byte range.
///
/// # Errors
/// Only on an internal error.
pub fn encode_shuffle(schema: &SchemaRef, partitions: &[Vec<RecordBatch>]) -> Result<(Bytes, Vec<Range<u64>>), Error> {
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .map_err(internal("configuring IPC"))?;
    let mut out: Vec<u8> = Vec::new();
    let mut ranges = Vec::with_capacity(partitions.len());
    for batches in partitions {
        let start = out.len() as u64;
        if batches.iter().any(|b| b.num_rows() > 0) {
            let mut writer = StreamWriter::try_new_with_options(&mut out, schema, options.clone())
                .map_err(internal("writing shuffle"))?;
            for b in batches.iter().filter(|b| b.num_rows() > 0) {
                writer.write(b).map_err(internal("writing shuffle"))?;
            }
            writer.finish().map_err(internal("writing shuffle"))?;
        }
        ranges.push(start..out.len() as u64);
    }
    for r in &ranges {
        out.extend_from_slice(&r.start.to_le_bytes());
    }
    out.extend_from_slice(&(out.len() as u64).to_le_bytes());
    out.extend_from_slice(&(partitions.len() as u32).to_le_bytes());
    out.extend_from_slice(MAGIC);
    Ok((Bytes::from(out), ranges))
}

/// Decode one partition's range of a shuffle object.
///
/// # Errors
/// [`Error::Corrupt`] if the bytes are not a valid IPC stream.
pub fn decode_partition(what: &str, bytes: Bytes) -> Result<Vec<RecordBatch>, Error> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let corrupt = |e: arrow::error::ArrowError| Error::Corrupt {
        what: what.to_string(),
        reason: e.to_string(),
    };
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(corrupt)?;
    reader.collect::<Result<Vec<_>, _>>().map_err(corrupt)
}

/// Merge key-sorted runs into one key-sorted batch, and find its groups.
/// Returns `None` when there are no rows.
///
/// # Errors
/// Only on an internal error (runs of another schema).
pub fn merge_sorted(
    encoder: &KeyEncoder,
    schema: &SchemaRef,
    runs: Vec<RecordBatch>,
) -> Result<Option<(RecordBatch, Vec<u32>)>, Error> {
    let runs: Vec<RecordBatch> = runs.into_iter().filter(|r| r.num_rows() > 0).collect();
    if runs.is_empty() {
        return Ok(None);
    }
    let rows: Vec<Rows> = runs.iter().map(|r| encoder.rows(r)).collect::<Result<_, _>>()?;
    let total: usize = runs.iter().map(RecordBatch::num_rows).sum();
    let mut heap = BinaryHeap::with_capacity(runs.len());
    for (run, r) in rows.iter().enumerate() {
        heap.push(Reverse((r.row(0), run, 0usize)));
    }
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(total);
    let mut group_ends: Vec<u32> = Vec::new();
    let mut last = None;
    while let Some(Reverse((row, run, idx))) = heap.pop() {
        if let Some(prev) = last
            && prev != row
        {
            group_ends.push(order.len() as u32);
        }
        last = Some(row);
        order.push((run, idx));
        if idx + 1 < rows[run].num_rows() {
            heap.push(Reverse((rows[run].row(idx + 1), run, idx + 1)));
        }
    }
    group_ends.push(order.len() as u32);
    let refs: Vec<&RecordBatch> = runs.iter().collect();
    let merged = if refs.len() == 1 {
        refs[0].clone()
    } else {
        interleave_record_batch(&refs, &order).map_err(internal("merging runs"))?
    };
    debug_assert_eq!(merged.schema().fields().len(), schema.fields().len());
    Ok(Some((merged, group_ends)))
}

/// Concatenate batches of one schema.
///
/// # Errors
/// Only on an internal error.
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, Error> {
    concat_batches(schema, batches).map_err(internal("concatenating batches"))
}

/// Cut `group_ends` of a batch into chunks of at least `min_rows` rows that
/// keep groups whole; returns (row range, group ends relative to it).
pub fn chunk_groups(group_ends: &[u32], min_rows: usize) -> Vec<(Range<usize>, Vec<u32>)> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut ends = Vec::new();
    for &e in group_ends {
        ends.push(e - start as u32);
        if e as usize - start >= min_rows {
            chunks.push((start..e as usize, std::mem::take(&mut ends)));
            start = e as usize;
        }
    }
    if !ends.is_empty() {
        let end = start + *ends.last().unwrap_or(&0) as usize;
        chunks.push((start..end, ends));
    }
    chunks
}

/// Rows `range` of `batch`.
pub fn slice(batch: &RecordBatch, range: &Range<usize>) -> RecordBatch {
    batch.slice(range.start, range.end - range.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringArray, UInt64Array};
    use std::sync::Arc;

    fn batch(keys: &[&str], values: &[u64]) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("k0", Arc::new(StringArray::from(keys.to_vec())) as ArrayRef),
            ("v0", Arc::new(UInt64Array::from(values.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    fn keys(b: &RecordBatch) -> Vec<String> {
        let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    }

    #[test]
    fn partitions_sort_and_group() {
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let b = batch(&["b", "a", "c", "a", "b", "d"], &[1, 2, 3, 4, 5, 6]);
        let run = partition_and_sort(&enc, &b, 3).unwrap();
        assert_eq!(*run.partition_ends.last().unwrap(), 6);
        let mut seen = vec![];
        for p in 0..3 {
            let r = run.partition(p);
            let part = slice(&run.batch, &r);
            let ks = keys(&part);
            let mut sorted = ks.clone();
            sorted.sort();
            assert_eq!(ks, sorted, "partition {p} is sorted");
            for k in &ks {
                assert_eq!(
                    partition_of(enc.rows(&batch(&[k], &[0])).unwrap().row(0).as_ref(), 3),
                    p as u32
                );
            }
            let ends = run.group_ends_in(&r);
            let distinct = {
                let mut d = ks.clone();
                d.dedup();
                d.len()
            };
            assert_eq!(ends.len(), distinct);
            seen.extend(ks);
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b", "c", "d"]);
    }

    #[test]
    fn shuffle_objects_round_trip_and_runs_merge() {
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let schema = batch(&[], &[]).schema();
        let (bytes, ranges) = encode_shuffle(
            &schema,
            &[vec![batch(&["a", "c"], &[1, 2])], vec![], vec![batch(&["b"], &[3])]],
        )
        .unwrap();
        assert_eq!(&bytes[bytes.len() - 8..], MAGIC);
        assert!(ranges[1].is_empty());
        let p0 = decode_partition("t", bytes.slice(ranges[0].start as usize..ranges[0].end as usize)).unwrap();
        assert_eq!(keys(&p0[0]), ["a", "c"]);
        let truncated = bytes.slice(ranges[0].start as usize..(ranges[0].end as usize - 10));
        assert!(matches!(decode_partition("t", truncated), Err(Error::Corrupt { .. })));
        let (merged, ends) = merge_sorted(
            &enc,
            &schema,
            vec![batch(&["a", "c"], &[1, 2]), batch(&["a", "b"], &[3, 4])],
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys(&merged), ["a", "a", "b", "c"]);
        assert_eq!(ends, [2, 3, 4]);
        let (k, v) = grouped(&merged, 1, &ends).unwrap();
        assert_eq!(keys(&k), ["a", "b", "c"]);
        assert_eq!(v.num_rows(), 4);
    }

    #[test]
    fn chunks_keep_groups_whole() {
        let chunks = chunk_groups(&[3, 4, 10, 11], 4);
        assert_eq!(chunks, vec![(0..4, vec![3, 4]), (4..10, vec![6]), (10..11, vec![1])]);
    }
}
