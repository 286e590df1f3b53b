//! Output files and the `_SUCCESS` manifest. An [`OutputWriter`] encodes on
//! a compute thread, batch by batch, into an [`ObjectSink`] that uploads as
//! it goes: Parquet row group by row group, text line by line. No output
//! file is ever whole in memory.

use std::fmt::Write as _;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::Error;
use super::sink::ObjectSink;

/// Largest Parquet row group buffered before it is written out, in bytes
/// of encoded data (also capped by [`ROW_GROUP_ROWS`]).
pub const ROW_GROUP_BYTES: usize = 32 << 20;
/// Most rows in one Parquet row group.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// The name of the manifest written last into a job's output directory.
pub const MANIFEST_NAME: &str = "_SUCCESS";

/// How reduce output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One Parquet file per reduce partition (`part-00000.parquet`).
    #[default]
    Parquet,
    /// `key value` lines, columns separated by one space (`part-00000.txt`).
    Text,
}

impl OutputFormat {
    /// The output file name of reduce partition `partition`.
    pub fn file_name(self, partition: u32) -> String {
        match self {
            OutputFormat::Parquet => format!("part-{partition:05}.parquet"),
            OutputFormat::Text => format!("part-{partition:05}.txt"),
        }
    }

    /// A writer of one output file of `schema` in this format into `sink`
    /// (`what` names the file in errors).
    ///
    /// # Errors
    /// [`Error::Encode`] if the Parquet writer can't be built.
    pub fn writer(self, what: &str, schema: &SchemaRef, sink: ObjectSink) -> Result<OutputWriter, Error> {
        let inner = match self {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(encode_error(what))?))
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                Writer::Parquet(Box::new(
                    ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(encode_error(what))?,
                ))
            }
            OutputFormat::Text => Writer::Text {
                sink,
                line: String::new(),
            },
        };
        Ok(OutputWriter {
            inner,
            what: what.to_string(),
            rows: 0,
        })
    }
}

fn encode_error<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error {
    move |e| Error::Encode {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Write `batch` to `out` as text lines: columns separated by one space,
/// nulls empty. `line` is scratch space, reused across calls.
///
/// # Errors
/// The first error formatting a value or writing, as an `io::Error`.
pub fn write_text_lines(batch: &RecordBatch, out: &mut impl std::io::Write, line: &mut String) -> std::io::Result<()> {
    let options = FormatOptions::default().with_null("");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(std::io::Error::other)?;
    for row in 0..batch.num_rows() {
        line.clear();
        for (i, f) in formatters.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            write!(line, "{}", f.value(row)).map_err(std::io::Error::other)?;
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

enum Writer {
    Parquet(Box<ArrowWriter<ObjectSink>>),
    Text { sink: ObjectSink, line: String },
}

/// Writes one output file batch by batch into an upload.
pub struct OutputWriter {
    inner: Writer,
    what: String,
    rows: u64,
}

impl OutputWriter {
    /// Write `batch`.
    ///
    /// # Errors
    /// [`Error::Encode`] if encoding or the upload underneath fails.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        let fail = encode_error(&self.what);
        match &mut self.inner {
            Writer::Parquet(w) => {
                w.write(batch).map_err(encode_error(&self.what))?;
                if w.in_progress_size() >= ROW_GROUP_BYTES {
                    w.flush().map_err(encode_error(&self.what))?;
                }
            }
            Writer::Text { sink, line } => write_text_lines(batch, sink, line).map_err(fail)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Bytes handed to the upload so far (Parquet's buffered row group not
    /// included).
    pub fn written(&self) -> u64 {
        match &self.inner {
            Writer::Parquet(w) => w.bytes_written() as u64,
            Writer::Text { sink, .. } => sink.written(),
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finish the file (Parquet's footer) and complete the upload; returns
    /// its size and checksum.
    ///
    /// # Errors
    /// [`Error::Encode`] if encoding or the upload underneath fails.
    pub fn finish(self) -> Result<super::sink::Written, Error> {
        let sink = match self.inner {
            Writer::Parquet(w) => w.into_inner().map_err(encode_error(&self.what))?,
            Writer::Text { sink, .. } => sink,
        };
        sink.finish().map_err(encode_error(&self.what))
    }
}

/// One output file, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// File name within the output directory.
    pub name: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The xxh3-64 checksum of its bytes, as 16 hex digits (empty in
    /// manifests written before checksums were).
    #[serde(default)]
    pub xxh3: String,
}

/// The `_SUCCESS` manifest: written last, it lists every output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job.
    pub job: String,
    /// The job's name, from its module.
    pub name: String,
    /// `parquet` or `text`.
    pub format: OutputFormat,
    /// Every output file, in partition order.
    pub files: Vec<OutputFile>,
}

/// Read the manifest of a committed output directory, then every file it
/// lists, as (schema, batch) pairs in partition order.
///
/// # Errors
/// [`Error::MissingInput`] when there is no `_SUCCESS` (the job has not
/// committed), I/O errors, and [`Error::Parquet`] for unreadable files.
pub async fn read_output_rows(output: &str) -> Result<Vec<(arrow::datatypes::SchemaRef, RecordBatch)>, Error> {
    use object_store::ObjectStoreExt;
    let dir = super::Location::parse(output)?;
    let manifest_at = dir.child(MANIFEST_NAME);
    let bytes = match dir.store.get(&manifest_at.path).await {
        Ok(r) => r
            .bytes()
            .await
            .map_err(|e| Error::io(&manifest_at.display, "reading", e))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::MissingInput {
                input: manifest_at.display,
            });
        }
        Err(e) => return Err(Error::io(&manifest_at.display, "reading", e)),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Encode {
        what: manifest_at.display.clone(),
        reason: format!("not a wmr manifest: {e}"),
    })?;
    let mut out = Vec::new();
    for f in &manifest.files {
        let file = dir.child(&f.name);
        let data = file
            .store
            .get(&file.path)
            .await
            .map_err(|e| Error::io(&file.display, "reading", e))?
            .bytes()
            .await
            .map_err(|e| Error::io(&file.display, "reading", e))?;
        match manifest.format {
            OutputFormat::Parquet => {
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
                    .and_then(|b| b.build())
                    .map_err(|source| Error::Parquet {
                        file: file.display.clone(),
                        place: "footer".into(),
                        source,
                    })?;
                for batch in reader {
                    let batch = batch.map_err(|e| Error::Parquet {
                        file: file.display.clone(),
                        place: "data".into(),
                        source: e.into(),
                    })?;
                    out.push((batch.schema(), batch));
                }
            }
            OutputFormat::Text => {
                let lines: Vec<String> = String::from_utf8_lossy(&data).lines().map(str::to_string).collect();
                let batch = RecordBatch::try_from_iter([(
                    "line",
                    std::sync::Arc::new(arrow::array::StringArray::from(lines)) as arrow::array::ArrayRef,
                )])
                .map_err(|e| Error::Internal(e.to_string()))?;
                out.push((batch.schema(), batch));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt64Array};
    use std::sync::Arc;

    #[tokio::test]
    async fn text_and_parquet_files_are_written_as_they_come() {
        let b = RecordBatch::try_from_iter([
            ("key", Arc::new(StringArray::from(vec!["A", "b"])) as _),
            ("value", Arc::new(UInt64Array::from(vec![509, 2])) as _),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::compute::ComputePool::new(1).unwrap();
        for (format, name) in [(OutputFormat::Text, "t.txt"), (OutputFormat::Parquet, "p.parquet")] {
            let at = super::super::Location::parse(dir.path().join(name).to_str().unwrap()).unwrap();
            let (sink, upload) = super::super::sink::upload(&at);
            let (b2, schema) = (b.clone(), b.schema());
            let size = pool
                .run(move || {
                    let mut w = format.writer(name, &schema, sink)?;
                    w.write(&b2)?;
                    w.write(&b2)?;
                    assert_eq!(w.rows(), 4);
                    w.finish()
                })
                .await
                .unwrap()
                .unwrap();
            upload.finish().await.unwrap();
            let got = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(got.len() as u64, size.bytes);
            assert_eq!(size.checksum, Some(xxhash_rust::xxh3::xxh3_64(&got)));
            match format {
                OutputFormat::Text => assert_eq!(&got[..], b"A 509\nb 2\nA 509\nb 2\n"),
                OutputFormat::Parquet => assert_eq!(&got[..4], b"PAR1"),
            }
        }
    }
}
