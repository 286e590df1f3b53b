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
        let fail = |reason: String| Error::Encode { what: what.to_string(), reason };
        match self {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(|e| fail(e.to_string()))?))
                    .build();
                let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).map_err(|e| fail(e.to_string()))?;
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
        let bytes = OutputFormat::Text.encode("t", &b.schema(), &[b.clone()]).unwrap();
        assert_eq!(&bytes[..], b"A 509\nb 2\n");
        let pq = OutputFormat::Parquet.encode("p", &b.schema(), &[b]).unwrap();
        assert_eq!(&pq[..4], b"PAR1");
    }
}
