//! Map output that outgrows a task's buffer: each time the buffer fills, its
//! rows are sorted by (partition, key), combined if the job combines, and
//! written as one run (the shuffle format: partitions back to back) to an
//! anonymous local temp file. At the end, each partition's runs are read
//! back and merged. Like Hadoop's `io.sort.mb` spills, but the file vanishes
//! with the task whatever happens to it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;

use super::Error;
use crate::shuffle;

/// The runs spilled so far by one map attempt.
pub struct Spills {
    file: Option<File>,
    /// Each run's start in the file and its partitions' ranges within the run.
    runs: Vec<(u64, Vec<Range<u64>>)>,
    /// Bytes written.
    pub bytes: u64,
}

impl Spills {
    /// No spills yet; the file is created on the first.
    pub fn new() -> Self {
        Spills {
            file: None,
            runs: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether anything was spilled.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Write one run: `partitions[p]` holds partition `p`'s sorted batches.
    ///
    /// # Errors
    /// If encoding or the disk fails.
    pub fn spill(&mut self, schema: &SchemaRef, partitions: &[Vec<RecordBatch>]) -> Result<(), Error> {
        let (bytes, ranges) = shuffle::encode_shuffle(schema, partitions)?;
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile().map_err(Error::Spill)?),
        };
        file.write_all(&bytes).map_err(Error::Spill)?;
        self.runs.push((self.bytes, ranges));
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Partition `p` of every run, in run order, each sorted by key.
    ///
    /// # Errors
    /// If the disk fails or a run does not decode.
    pub fn partition(&mut self, p: usize) -> Result<Vec<RecordBatch>, Error> {
        let Some(file) = &mut self.file else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (start, ranges) in &self.runs {
            let Some(range) = ranges.get(p).filter(|r| !r.is_empty()) else {
                continue;
            };
            let len = usize::try_from(range.end - range.start).map_err(|e| Error::Spill(std::io::Error::other(e)))?;
            let mut buf = vec![0u8; len];
            file.seek(SeekFrom::Start(start + range.start)).map_err(Error::Spill)?;
            file.read_exact(&mut buf).map_err(Error::Spill)?;
            out.extend(shuffle::decode_partition("a spilled run", Bytes::from(buf))?);
        }
        Ok(out)
    }
}
