//! The shuffle: hash partitioning, sorting and grouping by key, the shuffle
//! object a map task writes, and the streaming k-way merge that map tasks
//! (over their spills) and reduce tasks (over fetched partitions) run.
//! Knows nothing of gRPC or wasmtime; all of it is CPU work for compute
//! threads.
//!
//! Keys are ordered and hashed through `arrow::row`'s byte-comparable
//! encoding ([`KeyEncoder`]), so any key type, one column or several, sorts
//! and partitions the same way in every process.
//!
//! Read [`ShuffleWriter`] (the object's layout), then [`Merger`].

mod merge;
mod object;

use std::ops::Range;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

pub use merge::{
    DeferredRun, FileSection, IpcRun, MIN_FAN_IN, MemoryRun, Merger, RunFile, RunReader, fan_in, reduce_runs,
};
pub use object::{
    Compression, ENTRIES_READ, MAGIC, PartitionSlice, RUN_BATCH_ROWS, ShuffleWriter, TRAILER_LEN, check_trailer,
    entry_offset, index_len, parse_index, parse_index_entries, partition_checksum,
};

/// Errors of the shuffle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A shuffle object or range that can't be decoded.
    #[error("shuffle data {what} is corrupt: {reason}")]
    Corrupt {
        /// Which object and range.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The disk or the upload under a writer failed.
    #[error("{action} failed")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
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

/// The reduce partition of an encoded key, by hash.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions.max(1))) as u32
}

/// How map output is divided among reduce partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// By a hash of the key: even, in no order.
    #[default]
    Hash,
    /// By key ranges: partition `i` holds the keys from `bounds[i-1]`
    /// (inclusive) up to `bounds[i]` (exclusive), so partitions are in key
    /// order. `bounds` are encoded keys ([`KeyEncoder`]), ascending, one
    /// fewer than the partitions: split points sampled from the input, as
    /// TeraSort chooses them.
    Range {
        /// The split points.
        bounds: Vec<Vec<u8>>,
    },
}

impl Partitioner {
    /// The partition of encoded key `key`, of `partitions`.
    pub fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        match self {
            Partitioner::Hash => partition_of(key, partitions),
            Partitioner::Range { bounds } => {
                let p = bounds.partition_point(|b| b.as_slice() <= key) as u32;
                p.min(partitions.max(1) - 1)
            }
        }
    }

    /// Range partitioning for `partitions` partitions, its split points
    /// chosen from `sample` (encoded keys, in any order) at even quantiles.
    pub fn from_sample(mut sample: Vec<Vec<u8>>, partitions: u32) -> Partitioner {
        sample.sort_unstable();
        let n = sample.len();
        let bounds = if n == 0 {
            Vec::new()
        } else {
            (1..partitions as usize)
                .map(|i| sample[(i * n / partitions as usize).min(n - 1)].clone())
                .collect()
        };
        Partitioner::Range { bounds }
    }
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

/// A row's place in a sort, by normalized key.
#[derive(Clone, Copy)]
struct SortEntry {
    /// The key's normalized prefix, as [`key_prefix`] gives it.
    prefix: [u64; 2],
    part: u32,
    row: u32,
}

/// Bytes of a key that [`key_prefix`] keeps; its last byte holds the length.
const PREFIX_KEY_BYTES: usize = 15;

/// A byte-comparable key's normalized prefix, as two big-endian integers:
/// its first 15 bytes, zero-padded, then its length (16 for any longer
/// key). Ordering these orders the keys, except where they tie; a tie of
/// keys no longer than 15 bytes is a tie of whole keys (the length byte
/// tells "ab" from "ab\0"), so no rows need fetching to settle it.
///
/// Fifteen bytes, not seven: a string key's row encoding spends a byte on
/// its null marker and one on a block's continuation, and words built of a
/// few common syllables share their first seven letters often enough that
/// comparing whole rows on each tie took 3% of a Zipf word count's CPU.
pub fn key_prefix(key: &[u8]) -> [u64; 2] {
    let mut bytes = [0u8; 16];
    let n = key.len().min(PREFIX_KEY_BYTES);
    bytes[..n].copy_from_slice(&key[..n]);
    bytes[PREFIX_KEY_BYTES] = key.len().min(PREFIX_KEY_BYTES + 1) as u8;
    let (high, low) = bytes.split_at(8);
    let word = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    [word(high), word(low)]
}

/// Whether a [`key_prefix`] holds its whole key, so that equal prefixes
/// mean equal keys.
fn prefix_is_whole(prefix: &[u64; 2]) -> bool {
    (prefix[1] & 0xff) as usize <= PREFIX_KEY_BYTES
}

/// Sort `batch` by (partition, key) into `partitions` partitions, as
/// `partitioner` divides them.
///
/// # Errors
/// Only on an internal error.
pub fn partition_and_sort(
    encoder: &KeyEncoder,
    batch: &RecordBatch,
    partitioner: &Partitioner,
    partitions: u32,
) -> Result<SortedRun, Error> {
    let rows = encoder.rows(batch)?;
    // Normalized keys: the partition, the key's first 15 bytes and its length
    // settle most comparisons as integers; only rows whose prefixes tie and
    // do not hold their whole keys compare rows.
    let mut order: Vec<SortEntry> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| SortEntry {
            part: partitioner.partition(r.as_ref(), partitions),
            prefix: key_prefix(r.as_ref()),
            row: i as u32,
        })
        .collect();
    let whole_keys_tie = |a: &SortEntry, b: &SortEntry| {
        if prefix_is_whole(&a.prefix) {
            std::cmp::Ordering::Equal
        } else {
            rows.row(a.row as usize).cmp(&rows.row(b.row as usize))
        }
    };
    order.sort_unstable_by(|a, b| {
        (a.part, a.prefix)
            .cmp(&(b.part, b.prefix))
            .then_with(|| whole_keys_tie(a, b))
    });
    let mut partition_ends = vec![0usize; partitions.max(1) as usize];
    let mut group_ends = Vec::new();
    for (i, e) in order.iter().enumerate() {
        partition_ends[e.part as usize] = i + 1;
        if i > 0 {
            let prev = &order[i - 1];
            if (prev.part, prev.prefix) != (e.part, e.prefix) || whole_keys_tie(prev, e).is_ne() {
                group_ends.push(i);
            }
        }
    }
    if !order.is_empty() {
        group_ends.push(order.len());
    }
    let order: Vec<u32> = order.into_iter().map(|e| e.row).collect();
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

/// Concatenate batches of one schema.
///
/// # Errors
/// Only on an internal error.
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, Error> {
    concat_batches(schema, batches).map_err(internal("concatenating batches"))
}

/// The rows of `batch` at `rows`, in that order.
pub fn take_rows(batch: &RecordBatch, rows: Vec<u32>) -> Result<RecordBatch, Error> {
    let rows = arrow::array::UInt32Array::from(rows);
    arrow::compute::take_record_batch(batch, &rows).map_err(internal("taking rows"))
}

/// Rows picked from `batches` (of one schema) as (batch, row) pairs, in
/// that order.
pub fn interleave(batches: &[&RecordBatch], positions: &[(usize, usize)]) -> Result<RecordBatch, Error> {
    arrow::compute::interleave_record_batch(batches, positions).map_err(internal("interleaving rows"))
}

/// The memory `batch`'s rows take: for a slice, its share of the buffers,
/// not the whole buffers it points into (as `get_array_memory_size` counts).
pub fn batch_memory(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
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
        let run = partition_and_sort(&enc, &b, &Partitioner::Hash, 3).unwrap();
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
    fn range_partitions_are_in_key_order() {
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let ks: Vec<String> = (0..1000).map(|i| format!("{:04}", (i * 7919) % 1000)).collect();
        let refs: Vec<&str> = ks.iter().map(String::as_str).collect();
        let b = batch(&refs, &vec![0; refs.len()]);
        let sample: Vec<Vec<u8>> = enc
            .rows(&b)
            .unwrap()
            .iter()
            .step_by(7)
            .map(|r| r.as_ref().to_vec())
            .collect();
        let range = Partitioner::from_sample(sample, 4);
        let Partitioner::Range { bounds } = &range else {
            panic!("a range partitioner")
        };
        assert_eq!(bounds.len(), 3);
        let run = partition_and_sort(&enc, &b, &range, 4).unwrap();
        // Concatenated in partition order, the keys are sorted; each
        // partition holds about a quarter.
        let mut expected = ks.clone();
        expected.sort();
        assert_eq!(keys(&run.batch), expected);
        for p in 0..4 {
            let n = run.partition(p).len();
            assert!((150..350).contains(&n), "partition {p} has {n} rows");
        }
        assert_eq!(Partitioner::from_sample(vec![], 3).partition(b"x", 3), 0);
    }

    #[test]
    fn normalized_keys_sort_as_whole_keys_do() {
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        // Keys that tie on their first bytes, differ only past the prefix's
        // 15 bytes, or are prefixes of each other.
        let mut ks: Vec<String> = Vec::new();
        for i in 0..300u32 {
            ks.push(format!("common-prefix-{}", i % 17));
            ks.push(format!("a-common-prefix-longer-than-sixteen-bytes-{}", i % 13));
            ks.push("ab".repeat((i % 7) as usize));
            ks.push(format!("{}", (i * 7919) % 1000));
        }
        let refs: Vec<&str> = ks.iter().map(String::as_str).collect();
        let run = partition_and_sort(&enc, &batch(&refs, &vec![0; refs.len()]), &Partitioner::Hash, 1).unwrap();
        let mut expected = ks.clone();
        expected.sort();
        assert_eq!(keys(&run.batch), expected);
        let mut distinct = expected.clone();
        distinct.dedup();
        assert_eq!(run.group_ends.len(), distinct.len());
        // A prefix orders as its key does wherever two differ, and equal
        // prefixes of keys of up to 15 bytes are equal keys.
        let tricky: [&[u8]; 14] = [
            b"",
            b"\0",
            b"a",
            b"a\0",
            b"a\0\0",
            b"ab",
            b"ab\x01",
            b"0123456789abcd",
            b"0123456789abcde",
            b"0123456789abcde\0",
            b"0123456789abcdeA",
            b"0123456789abcdeB",
            b"0123456789abcdefA",
            b"0123456789abcdefB",
        ];
        for a in tricky {
            for b in tricky {
                let (pa, pb) = (key_prefix(a), key_prefix(b));
                if pa != pb {
                    assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} against {b:?}");
                } else if prefix_is_whole(&pa) {
                    assert_eq!(a, b);
                } else {
                    assert!(a.len() > 15 && b.len() > 15 && a[..15] == b[..15]);
                }
            }
        }
    }

    #[test]
    fn shuffle_objects_round_trip_through_their_index() {
        use std::io::Write;
        use std::sync::Arc;
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let schema = batch(&[], &[]).schema();
        let mut w = ShuffleWriter::new(Vec::new(), &schema, 3, Compression::Lz4).unwrap();
        w.write(0, &batch(&["a", "c"], &[1, 2])).unwrap();
        w.write(2, &batch(&["b"], &[3])).unwrap();
        assert!(w.write(1, &batch(&["z"], &[3])).is_err(), "partitions go in order");
        let (bytes, ranges) = w.finish().unwrap();
        assert_eq!(&bytes[bytes.len() - 8..], MAGIC);
        assert!(ranges[1].is_empty());
        let tail = &bytes[bytes.len() - index_len(3) as usize..];
        let index = parse_index("t", tail, 3, bytes.len() as u64).unwrap();
        let got: Vec<_> = index.iter().map(|p| p.range.clone()).collect();
        assert_eq!(got, ranges);
        // Each partition's checksum is of its own bytes; an empty one's too.
        for p in &index {
            let data = &bytes[p.range.start as usize..p.range.end as usize];
            assert_eq!(p.checksum, partition_checksum(data));
        }
        assert!(parse_index("t", tail, 4, bytes.len() as u64).is_err());
        assert!(parse_index("t", &bytes[..index_len(3) as usize], 3, bytes.len() as u64).is_err());
        // Past WHOLE_INDEX_UP_TO partitions a reducer reads the trailer, then
        // just its two entries.
        let size = bytes.len() as u64;
        let trailer = &bytes[bytes.len() - TRAILER_LEN as usize..];
        let index_start = check_trailer("t", trailer, 3, size).unwrap();
        let at = entry_offset(index_start, 2) as usize;
        let read = ENTRIES_READ as usize;
        assert_eq!(
            parse_index_entries("t", &bytes[at..at + read], index_start).unwrap(),
            index[2]
        );
        assert!(check_trailer("t", trailer, 4, size).is_err());
        assert!(check_trailer("t", trailer, 3, 10).is_err(), "shorter than its index");
        assert!(
            parse_index_entries("t", &bytes[at..at + read], 1).is_err(),
            "past the data"
        );
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let file = Arc::new(file);
        let run = IpcRun::open(FileSection::new(file.clone(), ranges[0].clone()), "t".into(), &schema).unwrap();
        let other = MemoryRun::new(vec![batch(&["a", "b"], &[3, 4])]);
        let mut m = Merger::new(&enc, vec![Box::new(run), Box::new(other)]).unwrap();
        let (merged, ends) = m.next_chunk(100).unwrap().unwrap();
        assert_eq!(keys(&merged), ["a", "a", "b", "c"]);
        assert_eq!(ends, [2, 3, 4]);
        let (k, v) = grouped(&merged, 1, &ends).unwrap();
        assert_eq!(keys(&k), ["a", "b", "c"]);
        assert_eq!(v.num_rows(), 4);
        // A truncated stream is corrupt, not a panic.
        let cut = ranges[0].start..ranges[0].end - 10;
        let truncated = IpcRun::open(FileSection::new(file, cut), "t".into(), &schema)
            .and_then(|mut r| r.next_batch().and_then(|_| r.next_batch()));
        assert!(matches!(truncated, Err(Error::Corrupt { .. })));
    }
}
