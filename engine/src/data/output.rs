//! Output files and the `_SUCCESS` manifest. Encoding happens on a compute
//! thread into memory; the caller uploads the bytes.

use std::fmt::Write as _;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::Error;

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

    /// Encode `batches` (all of `schema`) as one file.
    ///
    /// # Errors
    /// [`Error::Encode`] if the writer fails.
    pub fn encode(self, what: &str, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Bytes, Error> {
        let fail = |reason: String| Error::Encode {
            what: what.to_string(),
            reason,
        };
        match self {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(
                        ZstdLevel::try_new(1).map_err(|e| fail(e.to_string()))?,
                    ))
                    .build();
                let mut writer =
                    ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).map_err(|e| fail(e.to_string()))?;
                for b in batches {
                    writer.write(b).map_err(|e| fail(e.to_string()))?;
                }
                Ok(Bytes::from(writer.into_inner().map_err(|e| fail(e.to_string()))?))
            }
            OutputFormat::Text => {
                let options = FormatOptions::default().with_null("");
                let mut out = String::new();
                for b in batches {
                    let formatters = b
                        .columns()
                        .iter()
                        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| fail(e.to_string()))?;
                    for row in 0..b.num_rows() {
                        for (i, f) in formatters.iter().enumerate() {
                            if i > 0 {
                                out.push(' ');
                            }
                            write!(out, "{}", f.value(row)).map_err(|e| fail(e.to_string()))?;
                        }
                        out.push('\n');
                    }
                }
                Ok(Bytes::from(out))
            }
        }
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

    #[test]
    fn text_output_is_space_separated_lines() {
        let b = RecordBatch::try_from_iter([
            ("key", Arc::new(StringArray::from(vec!["A", "b"])) as _),
            ("value", Arc::new(UInt64Array::from(vec![509, 2])) as _),
        ])
        .unwrap();
        let bytes = OutputFormat::Text
            .encode("t", &b.schema(), std::slice::from_ref(&b))
            .unwrap();
        assert_eq!(&bytes[..], b"A 509\nb 2\n");
        let pq = OutputFormat::Parquet.encode("p", &b.schema(), &[b]).unwrap();
        assert_eq!(&pq[..4], b"PAR1");
    }
}
