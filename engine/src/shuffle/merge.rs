//! The streaming k-way merge: key-sorted runs in, key-sorted chunks of whole
//! groups out, holding one small batch per run at a time.
//!
//! A run is anything that yields key-sorted batches ([`RunReader`]): batches
//! in memory ([`MemoryRun`]) or an IPC stream in a section of a local file
//! ([`IpcRun`], a spilled run or a fetched shuffle partition). [`Merger`]
//! keeps a binary heap of run cursors ordered by their current row's
//! byte-comparable key, so each row costs one key comparison against the
//! previous row and about log k comparisons in the heap. When there are
//! more runs than a merge may open at once, [`reduce_runs`] merges them in
//! passes through local temp files, as Hadoop does with `io.sort.factor`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::row::Rows;

use super::object::{Compression, RUN_BATCH_ROWS, ShuffleWriter};
use super::{Error, KeyEncoder, internal, key_prefix, prefix_is_whole};

/// Fewest runs a merge opens at once, whatever the memory budget.
pub const MIN_FAN_IN: usize = 4;

/// A source of key-sorted batches: one run of a merge.
pub trait RunReader: Send {
    /// The next batch, or `None` at the end of the run.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for data that does not decode, I/O errors.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, Error>;
}

/// A run already in memory.
pub struct MemoryRun(std::vec::IntoIter<RecordBatch>);

impl MemoryRun {
    /// A run of these key-sorted batches, in order.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        MemoryRun(batches.into_iter())
    }
}

impl RunReader for MemoryRun {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, Error> {
        Ok(self.0.next())
    }
}

/// A byte range of a shared local file, read with positional reads so many
/// sections of one file can be read side by side.
pub struct FileSection {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl FileSection {
    /// Bytes `range` of `file`.
    pub fn new(file: Arc<File>, range: std::ops::Range<u64>) -> Self {
        FileSection {
            file,
            pos: range.start,
            end: range.end,
        }
    }
}

impl Read for FileSection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Read buffer of one [`IpcRun`].
const RUN_READ_BUFFER: usize = 64 << 10;

/// A run stored as an Arrow IPC stream in a section of a local file.
pub struct IpcRun {
    reader: StreamReader<BufReader<FileSection>>,
    schema: SchemaRef,
    what: String,
}

impl IpcRun {
    /// Open the IPC stream in `section` (named `what` in errors), whose
    /// batches must have the column types of `schema`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the stream does not open or has other columns.
    pub fn open(section: FileSection, what: String, schema: &SchemaRef) -> Result<Self, Error> {
        let corrupt = |reason: String| Error::Corrupt {
            what: what.clone(),
            reason,
        };
        let reader = StreamReader::try_new(BufReader::with_capacity(RUN_READ_BUFFER, section), None)
            .map_err(|e| corrupt(e.to_string()))?;
        let theirs = reader.schema();
        let same = theirs.fields().len() == schema.fields().len()
            && theirs
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.data_type() == b.data_type());
        if !same {
            return Err(corrupt("its schema is not this job's map output schema".into()));
        }
        Ok(IpcRun {
            reader,
            schema: schema.clone(),
            what,
        })
    }
}

impl RunReader for IpcRun {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, Error> {
        let corrupt = |reason: String| Error::Corrupt {
            what: self.what.clone(),
            reason,
        };
        match self.reader.next() {
            None => Ok(None),
            Some(Err(e)) => Err(corrupt(e.to_string())),
            // Re-labelled with the job's schema (the types were checked at
            // open; nullability is checked here).
            Some(Ok(b)) => RecordBatch::try_new(self.schema.clone(), b.columns().to_vec())
                .map(Some)
                .map_err(|e| corrupt(e.to_string())),
        }
    }
}

/// Where a [`DeferredRun`]'s bytes are.
pub enum RunFile {
    /// A file already open (a spill file, or fetched shuffle data).
    Open(Arc<File>),
    /// A local file to open (a map output on a local store).
    Path(std::path::PathBuf),
}

/// An IPC run in a section of a file, opened only when first read: a merge
/// over thousands of map outputs or spilled runs then holds buffers (and
/// file handles) only for the runs of the merge pass it is running.
pub struct DeferredRun {
    file: Option<RunFile>,
    range: std::ops::Range<u64>,
    what: String,
    schema: SchemaRef,
    opened: Option<IpcRun>,
}

impl DeferredRun {
    /// Bytes `range` of `file` (named `what` in errors), an IPC stream of
    /// `schema`'s column types.
    pub fn new(file: RunFile, range: std::ops::Range<u64>, what: String, schema: &SchemaRef) -> Self {
        DeferredRun {
            file: Some(file),
            range,
            what,
            schema: schema.clone(),
            opened: None,
        }
    }
}

impl RunReader for DeferredRun {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>, Error> {
        if self.opened.is_none() {
            let file = match self.file.take() {
                Some(RunFile::Open(file)) => file,
                Some(RunFile::Path(path)) => Arc::new(File::open(&path).map_err(|source| Error::Io {
                    action: "opening a map output",
                    source,
                })?),
                None => return Ok(None),
            };
            let section = FileSection::new(file, self.range.clone());
            self.opened = Some(IpcRun::open(section, std::mem::take(&mut self.what), &self.schema)?);
        }
        match &mut self.opened {
            Some(run) => run.next_batch(),
            None => Ok(None),
        }
    }
}

/// One run's place in the merge.
struct Cursor {
    run: Box<dyn RunReader>,
    batch: RecordBatch,
    rows: Rows,
    pos: usize,
    /// The normalized prefix of the key at `pos` ([`key_prefix`]).
    prefix: [u64; 2],
    /// Index of `batch` among the chunk's source batches.
    slot: usize,
}

impl Cursor {
    /// Take in the key at `pos`.
    fn refresh(&mut self) {
        if self.pos < self.rows.num_rows() {
            self.prefix = key_prefix(self.rows.row(self.pos).as_ref());
        }
    }
}

/// Merges key-sorted runs into key-sorted chunks that keep groups of equal
/// keys whole.
pub struct Merger<'a> {
    encoder: &'a KeyEncoder,
    cursors: Vec<Cursor>,
    /// Indexes into `cursors`, a min-heap by current row.
    heap: Vec<usize>,
    /// The prefix of the last row handed out, and its whole key when the
    /// prefix does not hold it, to find group boundaries.
    last_prefix: [u64; 2],
    last_key: Vec<u8>,
    has_last: bool,
    /// Batches the chunk being built takes rows from.
    slots: Vec<RecordBatch>,
}

impl<'a> Merger<'a> {
    /// A merge of `runs`, each sorted by the keys `encoder` encodes.
    ///
    /// # Errors
    /// Errors reading the runs' first batches.
    pub fn new(encoder: &'a KeyEncoder, runs: Vec<Box<dyn RunReader>>) -> Result<Self, Error> {
        let mut merger = Merger {
            encoder,
            cursors: Vec::with_capacity(runs.len()),
            heap: Vec::with_capacity(runs.len()),
            last_prefix: [0; 2],
            last_key: Vec::new(),
            has_last: false,
            slots: Vec::new(),
        };
        for mut run in runs {
            if let Some((batch, rows)) = next_nonempty(encoder, run.as_mut())? {
                merger.slots.push(batch.clone());
                let mut cursor = Cursor {
                    run,
                    batch,
                    rows,
                    pos: 0,
                    prefix: [0; 2],
                    slot: merger.slots.len() - 1,
                };
                cursor.refresh();
                merger.cursors.push(cursor);
                merger.heap.push(merger.cursors.len() - 1);
            }
        }
        for i in (0..merger.heap.len() / 2).rev() {
            merger.sift_down(i);
        }
        Ok(merger)
    }

    /// Whether run `a`'s current key comes before run `b`'s: by their
    /// prefixes, then by whole keys only where the prefixes tie and do not
    /// hold them; equal keys in run order.
    fn less(&self, a: usize, b: usize) -> bool {
        let (ca, cb) = (&self.cursors[a], &self.cursors[b]);
        let order = ca.prefix.cmp(&cb.prefix).then_with(|| {
            if prefix_is_whole(&ca.prefix) {
                std::cmp::Ordering::Equal
            } else {
                ca.rows.row(ca.pos).cmp(&cb.rows.row(cb.pos))
            }
        });
        match order {
            std::cmp::Ordering::Equal => a < b,
            o => o.is_lt(),
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if l < n && self.less(self.heap[l], self.heap[smallest]) {
                smallest = l;
            }
            if r < n && self.less(self.heap[r], self.heap[smallest]) {
                smallest = r;
            }
            if smallest == i {
                return;
            }
            self.heap.swap(i, smallest);
            i = smallest;
        }
    }

    /// The next chunk of merged rows: at least `min_rows` rows (fewer only
    /// at the end), whole groups only, with each group's end (exclusive).
    /// `None` once every run is exhausted.
    ///
    /// # Errors
    /// Errors reading the runs, or an internal error.
    pub fn next_chunk(&mut self, min_rows: usize) -> Result<Option<(RecordBatch, Vec<u32>)>, Error> {
        self.next(min_rows, true)
    }

    /// The next `rows` merged rows (fewer only at the end), cut anywhere:
    /// for merges that need no groups (passes through disk, output that is
    /// not combined), so no group, however large, is held whole.
    ///
    /// # Errors
    /// Errors reading the runs, or an internal error.
    pub fn next_rows(&mut self, rows: usize) -> Result<Option<RecordBatch>, Error> {
        Ok(self.next(rows, false)?.map(|(chunk, _)| chunk))
    }

    fn next(&mut self, min_rows: usize, whole_groups: bool) -> Result<Option<(RecordBatch, Vec<u32>)>, Error> {
        // Start the chunk's sources afresh from the runs' current batches.
        self.slots.clear();
        for &i in &self.heap {
            let c = &mut self.cursors[i];
            self.slots.push(c.batch.clone());
            c.slot = self.slots.len() - 1;
        }
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(min_rows.min(1 << 20));
        let mut ends: Vec<u32> = Vec::new();
        while let Some(&top) = self.heap.first() {
            let c = &self.cursors[top];
            if !whole_groups {
                if indices.len() >= min_rows {
                    break;
                }
            } else if !self.has_last
                || c.prefix != self.last_prefix
                || (!prefix_is_whole(&c.prefix) && c.rows.row(c.pos).as_ref() != self.last_key.as_slice())
            {
                if !indices.is_empty() {
                    ends.push(indices.len() as u32);
                    if indices.len() >= min_rows {
                        break;
                    }
                }
                self.last_prefix = c.prefix;
                self.last_key.clear();
                if !prefix_is_whole(&c.prefix) {
                    self.last_key.extend_from_slice(c.rows.row(c.pos).as_ref());
                }
                self.has_last = true;
            }
            indices.push((c.slot, c.pos));
            let c = &mut self.cursors[top];
            c.pos += 1;
            c.refresh();
            if c.pos == c.batch.num_rows() {
                match next_nonempty(self.encoder, c.run.as_mut())? {
                    Some((batch, rows)) => {
                        self.slots.push(batch.clone());
                        c.batch = batch;
                        c.rows = rows;
                        c.pos = 0;
                        c.refresh();
                        c.slot = self.slots.len() - 1;
                    }
                    None => {
                        // This run is done: its last batch stays in `slots`
                        // for the rows already taken from it.
                        let last = self.heap.len() - 1;
                        self.heap.swap(0, last);
                        self.heap.pop();
                    }
                }
            }
            self.sift_down(0);
        }
        if indices.is_empty() {
            return Ok(None);
        }
        if ends.last() != Some(&(indices.len() as u32)) {
            ends.push(indices.len() as u32);
        }
        let chunk = if let Some((slot, first)) = contiguous(&indices) {
            self.slots[slot].slice(first, indices.len())
        } else {
            let refs: Vec<&RecordBatch> = self.slots.iter().collect();
            interleave_record_batch(&refs, &indices).map_err(internal("merging runs"))?
        };
        Ok(Some((chunk, ends)))
    }
}

/// The batch and first row, if `indices` take consecutive rows of one batch
/// (as when one run is left): then the chunk is a slice, not a copy.
fn contiguous(indices: &[(usize, usize)]) -> Option<(usize, usize)> {
    let &(slot, first) = indices.first()?;
    indices
        .iter()
        .enumerate()
        .all(|(i, &(s, r))| s == slot && r == first + i)
        .then_some((slot, first))
}

fn next_nonempty(encoder: &KeyEncoder, run: &mut dyn RunReader) -> Result<Option<(RecordBatch, Rows)>, Error> {
    while let Some(batch) = run.next_batch()? {
        if batch.num_rows() > 0 {
            let rows = encoder.rows(&batch)?;
            return Ok(Some((batch, rows)));
        }
    }
    Ok(None)
}

/// How many runs one merge may open within `memory` bytes: each open run
/// holds about one IPC batch and its read buffer.
pub fn fan_in(memory: u64) -> usize {
    let per_run = (super::object::RUN_BATCH_BYTES as u64) * 2;
    usize::try_from(memory / per_run).unwrap_or(usize::MAX).max(MIN_FAN_IN)
}

/// Merge `runs` in passes through local temp files until at most `fan_in`
/// are left, so the final merge holds one batch of each. Returns the runs
/// to merge last, and the bytes the passes wrote to disk.
///
/// Each pass merges just enough runs into one to bring the count down to
/// `fan_in`, at most `fan_in` at a time (as Hadoop sizes its first merge
/// pass), so a count just past the fan-in costs a small pass, not a
/// rewrite of everything.
///
/// # Errors
/// Errors reading the runs, and [`Error::Io`] if the temp directory fails.
pub fn reduce_runs(
    encoder: &KeyEncoder,
    schema: &SchemaRef,
    runs: Vec<Box<dyn RunReader>>,
    fan_in: usize,
) -> Result<(Vec<Box<dyn RunReader>>, u64), Error> {
    let fan_in = fan_in.max(2);
    let mut spilled = 0u64;
    let mut runs: std::collections::VecDeque<Box<dyn RunReader>> = runs.into();
    while runs.len() > fan_in {
        let take = fan_in.min(runs.len() - fan_in + 1);
        let group: Vec<Box<dyn RunReader>> = runs.drain(..take).collect();
        let io = |source| Error::Io {
            action: "writing a merge pass to the temp directory ($TMPDIR)",
            source,
        };
        let file = tempfile::tempfile().map_err(io)?;
        let mut writer = ShuffleWriter::new(BufWriter::new(&file), schema, 1, Compression::None)?;
        let mut merger = Merger::new(encoder, group)?;
        while let Some(chunk) = merger.next_rows(RUN_BATCH_ROWS)? {
            writer.write(0, &chunk)?;
        }
        drop(merger);
        let (_, ranges) = writer.finish()?;
        let range = ranges.first().cloned().unwrap_or(0..0);
        spilled += range.end;
        runs.push_back(Box::new(DeferredRun::new(
            RunFile::Open(Arc::new(file)),
            range,
            "a merge pass's run".into(),
            schema,
        )));
    }
    Ok((runs.into(), spilled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, StringArray, UInt64Array};
    use arrow::datatypes::DataType;

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

    fn memory(batches: Vec<RecordBatch>) -> Box<dyn RunReader> {
        Box::new(MemoryRun::new(batches))
    }

    #[test]
    fn merges_runs_into_chunks_of_whole_groups() {
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let runs = vec![
            memory(vec![batch(&["a", "c"], &[1, 2]), batch(&["c", "e"], &[3, 4])]),
            memory(vec![]),
            memory(vec![batch(&["a", "b", "c"], &[5, 6, 7])]),
        ];
        let mut m = Merger::new(&enc, runs).unwrap();
        let (chunk, ends) = m.next_chunk(3).unwrap().unwrap();
        // 'a' twice, then 'b': three rows, and the cut is at a new key.
        assert_eq!(keys(&chunk), ["a", "a", "b"]);
        assert_eq!(ends, [2, 3]);
        let (chunk, ends) = m.next_chunk(1).unwrap().unwrap();
        assert_eq!(keys(&chunk), ["c", "c", "c"]);
        assert_eq!(ends, [3]);
        let (chunk, ends) = m.next_chunk(100).unwrap().unwrap();
        assert_eq!(keys(&chunk), ["e"]);
        assert_eq!(ends, [1]);
        assert!(m.next_chunk(1).unwrap().is_none());
    }

    #[test]
    fn long_keys_that_share_their_prefix_merge_and_group_by_whole_key() {
        // Keys past the prefix's 15 bytes that tie on it (and short ones
        // beside them), spread over runs of several batches: each chunk's
        // groups must be runs of one whole key, in order, and no key's
        // rows may be split across groups or chunks.
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let names = [
            "common-prefix-a1",
            "common-prefix-a2",
            "common-prefix-a10",
            "short",
            "common-prefix-b",
        ];
        let mut expected: Vec<String> = Vec::new();
        let runs: Vec<Box<dyn RunReader>> = (0..4)
            .map(|r| {
                let mut ks: Vec<String> = (0..30).map(|i| names[(i * 7 + r) % names.len()].to_string()).collect();
                ks.sort();
                expected.extend(ks.clone());
                let batches = ks
                    .chunks(4)
                    .map(|c| {
                        let refs: Vec<&str> = c.iter().map(String::as_str).collect();
                        batch(&refs, &vec![1; refs.len()])
                    })
                    .collect();
                memory(batches)
            })
            .collect();
        expected.sort();
        let mut m = Merger::new(&enc, runs).unwrap();
        let (mut got, mut groups) = (Vec::new(), Vec::new());
        while let Some((chunk, ends)) = m.next_chunk(5).unwrap() {
            let ks = keys(&chunk);
            let mut start = 0;
            for &end in &ends {
                let group = &ks[start..end as usize];
                assert!(group.iter().all(|k| k == &group[0]), "a group of two keys: {group:?}");
                groups.push(group[0].clone());
                start = end as usize;
            }
            got.extend(ks);
        }
        assert_eq!(got, expected);
        let mut distinct = expected.clone();
        distinct.dedup();
        assert_eq!(groups, distinct, "each key is one group");
    }

    #[test]
    fn passes_through_disk_give_the_same_merge() {
        let enc = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        let schema = batch(&[], &[]).schema();
        let mut expected = Vec::new();
        let runs: Vec<Box<dyn RunReader>> = (0..9)
            .map(|r| {
                let ks: Vec<String> = (0..50).map(|i| format!("k{:04}", i * 9 + r)).collect();
                expected.extend(ks.clone());
                let refs: Vec<&str> = ks.iter().map(String::as_str).collect();
                memory(vec![batch(&refs, &vec![1; refs.len()])])
            })
            .collect();
        expected.sort();
        let (runs, spilled) = reduce_runs(&enc, &schema, runs, 2).unwrap();
        assert!(runs.len() <= 2 && spilled > 0);
        let mut m = Merger::new(&enc, runs).unwrap();
        let mut got = Vec::new();
        while let Some((chunk, ends)) = m.next_chunk(7).unwrap() {
            assert_eq!(*ends.last().unwrap() as usize, chunk.num_rows());
            got.extend(keys(&chunk));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn ipc_runs_refuse_another_schema() {
        let schema = batch(&[], &[]).schema();
        let file = tempfile::tempfile().unwrap();
        let mut w = ShuffleWriter::new(BufWriter::new(&file), &schema, 2, Compression::None).unwrap();
        w.write(1, &batch(&["x"], &[1])).unwrap();
        let (_, ranges) = w.finish().unwrap();
        assert!(ranges[0].is_empty());
        let file = Arc::new(file);
        let mut run = IpcRun::open(FileSection::new(file.clone(), ranges[1].clone()), "t".into(), &schema).unwrap();
        assert_eq!(keys(&run.next_batch().unwrap().unwrap()), ["x"]);
        let other = RecordBatch::try_from_iter([("k0", Arc::new(UInt64Array::from(vec![1u64])) as ArrayRef)])
            .unwrap()
            .schema();
        let err = IpcRun::open(FileSection::new(file, ranges[1].clone()), "t".into(), &other).err();
        assert!(matches!(err, Some(Error::Corrupt { .. })));
    }
}
