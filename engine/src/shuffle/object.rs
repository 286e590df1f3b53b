//! The shuffle object, written as it is produced: R Arrow IPC streams
//! (LZ4-compressed when they cross a network, see [`Compression`]), one
//! per reduce partition, back to back, then an index
//! of R+1 entries of two little-endian u64s, a partition's start offset and
//! the xxh3-64 checksum of its bytes (the last entry: the data's end, and
//! 0), the u32 R, and the magic `WMRSHUF2`. A reducer reads its
//! partition's entry and the next (24 bytes), and checks what it fetched.
//! Spilled runs use the same layout in local temp files.
//!
//! [`ShuffleWriter`] writes to any `std::io::Write` (an upload, a temp
//! file) and never holds more than one batch; batches are cut to at most
//! [`RUN_BATCH_ROWS`] rows so that a reader merging many runs holds one
//! small batch of each.

use std::io::Write;
use std::ops::Range;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::CompressionType;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};

use super::{Error, internal};

/// The trailer that ends every shuffle object.
pub const MAGIC: &[u8; 8] = b"WMRSHUF2";
/// Bytes of one index entry: an offset and a checksum.
const ENTRY_LEN: u64 = 16;

/// The checksum of a partition's bytes (xxh3-64).
pub fn partition_checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A partition of a shuffle object: its bytes and their checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSlice {
    /// Where its bytes are in the object.
    pub range: Range<u64>,
    /// Their xxh3-64 checksum.
    pub checksum: u64,
}
/// Most rows in one IPC batch of a shuffle object or spilled run.
pub const RUN_BATCH_ROWS: usize = 8 * 1024;
/// About the most bytes in one IPC batch of a shuffle object or spilled run.
pub const RUN_BATCH_BYTES: usize = 1 << 20;

/// Whether a shuffle object's or a run's IPC buffers are compressed.
///
/// Readers need not know: each IPC batch says how it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 frames: for objects in an object store, which cross a network
    /// to their reader.
    Lz4,
    /// Raw buffers: for spills and merge passes on local disk, and shuffle
    /// objects under a filesystem path, where the page cache makes a write
    /// and a read cheaper than compressing and decompressing (the 1 GiB
    /// sort spent a quarter of its CPU time in LZ4). A cluster's shared
    /// directory is a filesystem path too, so its shuffle objects are raw
    /// even when the directory is a network mount.
    None,
}

impl Compression {
    /// The compression for a shuffle object kept under a filesystem path
    /// (`local`) or in an object store.
    pub fn for_object(local: bool) -> Self {
        if local { Compression::None } else { Compression::Lz4 }
    }
}

/// A writer that counts, and checksums, what passes through it.
pub(crate) struct Counting<W> {
    pub(crate) inner: W,
    pub(crate) written: u64,
    /// Boxed: the hasher's state is large, and writers move often.
    hasher: Box<xxhash_rust::xxh3::Xxh3>,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Self {
        Counting {
            inner,
            written: 0,
            hasher: Box::new(xxhash_rust::xxh3::Xxh3::new()),
        }
    }

    /// The checksum of what passed since the last call, and start anew.
    fn take_checksum(&mut self) -> u64 {
        let sum = self.hasher.digest();
        self.hasher.reset();
        sum
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum State<W: Write> {
    /// Between partitions: nothing open.
    Between(Counting<W>),
    /// Writing partition `partition`'s stream.
    In {
        partition: u32,
        writer: Box<StreamWriter<Counting<W>>>,
    },
    /// Poisoned by an earlier error.
    Failed,
}

/// Writes one shuffle object (or spilled run): partitions in ascending
/// order, each as an IPC stream, then the index.
pub struct ShuffleWriter<W: Write> {
    state: State<W>,
    schema: SchemaRef,
    options: IpcWriteOptions,
    partitions: u32,
    /// Where each partition started, for partitions begun so far.
    starts: Vec<u64>,
    /// Each partition's checksum, once it is closed (skipped ones: empty).
    checksums: Vec<u64>,
}

/// An I/O error (the disk, or the upload behind the writer) stays one; any
/// other Arrow error writing our own batches is a bug.
fn write_error(action: &'static str) -> impl FnOnce(ArrowError) -> Error {
    move |e| match e {
        ArrowError::IoError(_, source) => Error::Io { action, source },
        other => internal(action)(other),
    }
}

impl<W: Write> ShuffleWriter<W> {
    /// A writer of `partitions` partitions of `schema` into `out`.
    ///
    /// # Errors
    /// Only on an internal error.
    pub fn new(out: W, schema: &SchemaRef, partitions: u32, compression: Compression) -> Result<Self, Error> {
        let codec = match compression {
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
            Compression::None => None,
        };
        let options = IpcWriteOptions::default()
            .try_with_compression(codec)
            .map_err(internal("configuring IPC"))?;
        Ok(ShuffleWriter {
            state: State::Between(Counting::new(out)),
            schema: schema.clone(),
            options,
            partitions: partitions.max(1),
            starts: Vec::new(),
            checksums: Vec::new(),
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        match &self.state {
            State::Between(c) => c.written,
            State::In { writer, .. } => writer.get_ref().written,
            State::Failed => 0,
        }
    }

    /// Close the open partition, if any, and leave the writer between
    /// partitions.
    fn close(&mut self) -> Result<&mut Counting<W>, Error> {
        if let State::In { .. } = self.state {
            let State::In { writer, .. } = std::mem::replace(&mut self.state, State::Failed) else {
                unreachable!("matched just above");
            };
            let out = writer.into_inner().map_err(write_error("writing shuffle data"))?;
            self.state = State::Between(out);
        }
        match &mut self.state {
            State::Between(out) => Ok(out),
            _ => Err(Error::Io {
                action: "writing shuffle data",
                source: std::io::Error::other("the writer failed earlier"),
            }),
        }
    }

    /// Append `batch` (of the writer's schema, sorted by key) to partition
    /// `partition`. Partitions must come in ascending order; an empty batch
    /// writes nothing.
    ///
    /// # Errors
    /// I/O errors from the writer underneath, or an internal error (a
    /// partition out of order or out of range).
    pub fn write(&mut self, partition: u32, batch: &RecordBatch) -> Result<(), Error> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let open = match &self.state {
            State::In { partition: p, .. } => Some(*p),
            _ => None,
        };
        if open != Some(partition) {
            if partition >= self.partitions || open.is_some_and(|p| p > partition) {
                return Err(internal("writing shuffle data")(ArrowError::InvalidArgumentError(
                    format!("partition {partition} after {open:?} of {}", self.partitions),
                )));
            }
            let out = self.close()?;
            let at = out.written;
            // The closed partition's bytes are all in the checksum now; those
            // skipped over are empty, at this position.
            let closed = out.take_checksum();
            if let Some(p) = open {
                self.checksums.resize(p as usize, partition_checksum(&[]));
                self.checksums.push(closed);
            }
            while self.starts.len() <= partition as usize {
                self.starts.push(at);
            }
            let State::Between(out) = std::mem::replace(&mut self.state, State::Failed) else {
                unreachable!("close leaves the writer between partitions");
            };
            let writer = StreamWriter::try_new_with_options(out, &self.schema, self.options.clone())
                .map_err(write_error("writing shuffle data"))?;
            self.state = State::In {
                partition,
                writer: Box::new(writer),
            };
        }
        let State::In { writer, .. } = &mut self.state else {
            unreachable!("a partition was opened above");
        };
        let rows = batch.num_rows();
        let bytes_per_row = (super::batch_memory(batch) / rows).max(1);
        let step = (RUN_BATCH_BYTES / bytes_per_row).clamp(1, RUN_BATCH_ROWS);
        let mut at = 0;
        while at < rows {
            let len = step.min(rows - at);
            writer
                .write(&batch.slice(at, len))
                .map_err(write_error("writing shuffle data"))?;
            at += len;
        }
        Ok(())
    }

    /// Close the last partition, write the index, and return the writer
    /// and each partition's byte range.
    ///
    /// # Errors
    /// I/O errors from the writer underneath.
    pub fn finish(mut self) -> Result<(W, Vec<Range<u64>>), Error> {
        let partitions = self.partitions;
        let open = match &self.state {
            State::In { partition, .. } => Some(*partition),
            _ => None,
        };
        let out = self.close()?;
        let end = out.written;
        let closed = out.take_checksum();
        let mut checksums = std::mem::take(&mut self.checksums);
        if let Some(p) = open {
            checksums.resize(p as usize, partition_checksum(&[]));
            checksums.push(closed);
        }
        checksums.resize(partitions as usize + 1, partition_checksum(&[]));
        checksums[partitions as usize] = 0;
        let mut offsets = std::mem::take(&mut self.starts);
        offsets.resize(partitions as usize + 1, end);
        let mut index = Vec::with_capacity(offsets.len() * 16 + 12);
        for (o, sum) in offsets.iter().zip(&checksums) {
            index.extend_from_slice(&o.to_le_bytes());
            index.extend_from_slice(&sum.to_le_bytes());
        }
        index.extend_from_slice(&partitions.to_le_bytes());
        index.extend_from_slice(MAGIC);
        let State::Between(mut out) = std::mem::replace(&mut self.state, State::Failed) else {
            unreachable!("close leaves the writer between partitions");
        };
        out.write_all(&index).map_err(|source| Error::Io {
            action: "writing the shuffle index",
            source,
        })?;
        out.flush().map_err(|source| Error::Io {
            action: "writing shuffle data",
            source,
        })?;
        let ranges = offsets.windows(2).map(|w| w[0]..w[1]).collect();
        Ok((out.inner, ranges))
    }
}

/// The bytes of a shuffle object's index for `partitions` partitions: the
/// length of the object's tail to read to find every partition's range.
pub fn index_len(partitions: u32) -> u64 {
    (u64::from(partitions) + 1) * ENTRY_LEN + 4 + MAGIC.len() as u64
}

/// Parse the index at the end of a shuffle object of `partitions`
/// partitions from the object's last [`index_len`] bytes.
///
/// # Errors
/// [`Error::Corrupt`] if the tail is not an index of that many partitions.
pub fn parse_index(what: &str, tail: &[u8], partitions: u32, object_len: u64) -> Result<Vec<PartitionSlice>, Error> {
    let corrupt = |reason: &str| Error::Corrupt {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    let want = index_len(partitions);
    if tail.len() as u64 != want || !tail.ends_with(MAGIC) {
        return Err(corrupt("it does not end with a shuffle index"));
    }
    let r = &tail[tail.len() - 12..tail.len() - 8];
    if u32::from_le_bytes([r[0], r[1], r[2], r[3]]) != partitions {
        return Err(corrupt("its index has another number of partitions"));
    }
    let word = |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let entries: Vec<(u64, u64)> = tail[..tail.len() - 12]
        .chunks_exact(ENTRY_LEN as usize)
        .map(|c| (word(&c[..8]), word(&c[8..])))
        .collect();
    let data_end = object_len.saturating_sub(want);
    if entries.windows(2).any(|w| w[0].0 > w[1].0) || entries.last().is_some_and(|e| e.0 != data_end) {
        return Err(corrupt("its index offsets are out of order or out of bounds"));
    }
    Ok(entries
        .windows(2)
        .map(|w| PartitionSlice {
            range: w[0].0..w[1].0,
            checksum: w[0].1,
        })
        .collect())
}

/// The bytes that end every shuffle object: the u32 partition count and
/// [`MAGIC`].
pub const TRAILER_LEN: u64 = 4 + MAGIC.len() as u64;

/// Check the last [`TRAILER_LEN`] bytes of a shuffle object of `object_len`
/// bytes that should have `partitions` partitions; returns where its index
/// starts.
///
/// # Errors
/// [`Error::Corrupt`] if it is not such a trailer.
pub fn check_trailer(what: &str, trailer: &[u8], partitions: u32, object_len: u64) -> Result<u64, Error> {
    let corrupt = |reason: &str| Error::Corrupt {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    if trailer.len() as u64 != TRAILER_LEN || !trailer.ends_with(MAGIC) {
        return Err(corrupt("it does not end with a shuffle index"));
    }
    if u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) != partitions {
        return Err(corrupt("its index has another number of partitions"));
    }
    object_len
        .checked_sub(index_len(partitions))
        .ok_or_else(|| corrupt("it is shorter than its index"))
}

/// Where partition `partition`'s entry and the next start in an index that
/// starts at `index_start`: read [`ENTRIES_READ`] bytes from there.
pub fn entry_offset(index_start: u64, partition: u32) -> u64 {
    index_start + ENTRY_LEN * u64::from(partition)
}

/// Bytes to read at [`entry_offset`]: a partition's entry and the next
/// offset.
pub const ENTRIES_READ: u64 = ENTRY_LEN + 8;

/// A partition from its index entry and the next offset ([`ENTRIES_READ`]
/// bytes), in an object whose data ends at `data_end`.
///
/// # Errors
/// [`Error::Corrupt`] if they are out of order or out of bounds.
pub fn parse_index_entries(what: &str, entries: &[u8], data_end: u64) -> Result<PartitionSlice, Error> {
    let corrupt = |reason: &str| Error::Corrupt {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    if entries.len() as u64 != ENTRIES_READ {
        return Err(corrupt("its index is cut short"));
    }
    let word = |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let (start, checksum, end) = (word(&entries[..8]), word(&entries[8..16]), word(&entries[16..]));
    if start > end || end > data_end {
        return Err(corrupt("its index offsets are out of order or out of bounds"));
    }
    Ok(PartitionSlice {
        range: start..end,
        checksum,
    })
}
