//! Map output that outgrows a task's buffer: each time the buffer fills, its
//! rows are sorted by (partition, key), combined while that pays, and
//! written as one run (the shuffle layout: partitions back to back) to an
//! anonymous local temp file. At the end, each partition's runs are merged
//! as streams. Like Hadoop's `io.sort.mb` spills, but the file vanishes
//! with the task whatever happens to it.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::Error;
use crate::shuffle::{Compression, DeferredRun, RunFile, RunReader, ShuffleWriter};

/// The runs spilled so far by one map attempt.
pub struct Spills {
    file: Option<Arc<File>>,
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
        let file = match &self.file {
            Some(f) => f.clone(),
            None => self
                .file
                .insert(Arc::new(tempfile::tempfile().map_err(Error::Spill)?))
                .clone(),
        };
        let mut out: &File = &file;
        out.seek(SeekFrom::Start(self.bytes)).map_err(Error::Spill)?;
        let mut writer = ShuffleWriter::new(BufWriter::new(out), schema, partitions.len() as u32, Compression::None)?;
        for (p, batches) in partitions.iter().enumerate() {
            for b in batches {
                writer.write(p as u32, b)?;
            }
        }
        let (_, ranges) = writer.finish()?;
        // The run's streams, then its index (unread: the ranges are kept here).
        let written = ranges.last().map_or(0, |r| r.end) + crate::shuffle::index_len(partitions.len() as u32);
        self.runs.push((self.bytes, ranges));
        self.bytes += written;
        Ok(())
    }

    /// Partition `p` of every run, in run order, each sorted by key, as
    /// runs to merge (each opened when first read).
    pub fn partition(&self, p: usize, schema: &SchemaRef) -> Vec<Box<dyn RunReader>> {
        let Some(file) = &self.file else {
            return Vec::new();
        };
        let mut out: Vec<Box<dyn RunReader>> = Vec::new();
        for (start, ranges) in &self.runs {
            let Some(range) = ranges.get(p).filter(|r| !r.is_empty()) else {
                continue;
            };
            let section = start + range.start..start + range.end;
            out.push(Box::new(DeferredRun::new(
                RunFile::Open(file.clone()),
                section,
                "a spilled run".into(),
                schema,
            )));
        }
        out
    }
}
