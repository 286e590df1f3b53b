//! Reading a Parquet split (a run of row groups) as batches of the file's own
//! columns, normalised to the types a guest understands.
//!
//! The async half ([`fetch_parquet_split`]) reads the footer and the one
//! contiguous byte range the split's row groups occupy; the CPU half
//! ([`ParquetSplitReader`], on a compute thread) decodes from memory.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::parquet_column;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::{ChunkReader, Length};

use super::Error;
use super::location::Location;

/// The type a dictionary-encoded Parquet string column is read as: codes
/// into the column chunk's dictionary (the runtime unifies row groups'
/// dictionaries before a guest sees them).
pub fn dictionary_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Rows per batch handed to `map`.
pub const BATCH_ROWS: usize = 16 * 1024;

async fn metadata(file: &Location, size: u64) -> Result<ArrowReaderMetadata, Error> {
    let corrupt = |reason: String| Error::Parquet {
        file: file.display.clone(),
        place: "footer".into(),
        source: parquet::errors::ParquetError::General(reason),
    };
    if size < 12 {
        return Err(corrupt(format!("the file is {size} bytes, too short to be Parquet")));
    }
    let tail = file
        .store
        .get_range(&file.path, size - 8..size)
        .await
        .map_err(|e| Error::io(&file.display, "reading", e))?;
    if &tail[4..8] != b"PAR1" {
        return Err(corrupt(
            "it does not end with the Parquet magic bytes PAR1 (truncated, encrypted or not Parquet)".into(),
        ));
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 8 > size {
        return Err(corrupt(format!(
            "its footer claims {len} bytes of metadata in a {size}-byte file"
        )));
    }
    let footer = file
        .store
        .get_range(&file.path, size - 8 - len..size - 8)
        .await
        .map_err(|e| Error::io(&file.display, "reading", e))?;
    let place = |source| Error::Parquet {
        file: file.display.clone(),
        place: "footer".into(),
        source,
    };
    let meta = ParquetMetaDataReader::decode_metadata(&footer).map_err(place)?;
    ArrowReaderMetadata::try_new(Arc::new(meta), ArrowReaderOptions::default()).map_err(place)
}

/// The compressed size of each row group of a Parquet file, for planning.
///
/// # Errors
/// [`Error::Parquet`] if the footer can't be read.
pub async fn row_group_sizes(file: &Location, size: u64) -> Result<Vec<u64>, Error> {
    let meta = metadata(file, size).await?;
    Ok(meta
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.compressed_size().max(0) as u64)
        .collect())
}

/// What a Parquet split needs in memory: its footer and its row groups' bytes.
pub struct FetchedParquet {
    file: String,
    metadata: ArrowReaderMetadata,
    data: SparseFile,
    row_groups: Vec<usize>,
}

/// A file of which only `bytes` at `offset` are present.
#[derive(Clone)]
struct SparseFile {
    len: u64,
    offset: u64,
    bytes: Bytes,
}

impl Length for SparseFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl SparseFile {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let outside = || {
            parquet::errors::ParquetError::General(format!(
                "read of {length} bytes at {start} is outside the fetched range"
            ))
        };
        let from = start.checked_sub(self.offset).ok_or_else(outside)? as usize;
        let to = from.checked_add(length).ok_or_else(outside)?;
        if to > self.bytes.len() {
            return Err(outside());
        }
        Ok(self.bytes.slice(from..to))
    }
}

impl ChunkReader for SparseFile {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let available = (self.offset + self.bytes.len() as u64).saturating_sub(start) as usize;
        Ok(self.slice(start, available)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// Fetch the footer and the bytes of `row_groups` of `file`.
///
/// # Errors
/// [`Error::Parquet`] for a corrupt footer or a row group index past the
/// end, and I/O errors.
pub async fn fetch_parquet_split(file: &Location, size: u64, row_groups: &[usize]) -> Result<FetchedParquet, Error> {
    let metadata = metadata(file, size).await?;
    let mut start = u64::MAX;
    let mut end = 0u64;
    for &rg in row_groups {
        let group = metadata.metadata().row_groups().get(rg).ok_or_else(|| Error::Parquet {
            file: file.display.clone(),
            place: format!("row group {rg}"),
            source: parquet::errors::ParquetError::General(
                "the file has fewer row groups than when the job was planned".into(),
            ),
        })?;
        for col in group.columns() {
            let (s, len) = col.byte_range();
            start = start.min(s);
            end = end.max(s.saturating_add(len));
        }
    }
    let (offset, bytes) = if start < end && end <= size {
        let bytes = file
            .store
            .get_range(&file.path, start..end)
            .await
            .map_err(|e| Error::io(&file.display, "reading", e))?;
        (start, bytes)
    } else {
        (0, Bytes::new())
    };
    Ok(FetchedParquet {
        file: file.display.clone(),
        metadata,
        data: SparseFile {
            len: size,
            offset,
            bytes,
        },
        row_groups: row_groups.to_vec(),
    })
}

/// The guest type a Parquet column is read as, if any.
fn guest_type(t: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match t {
        Utf8 | LargeUtf8 | Utf8View => Utf8,
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => Binary,
        Int8 | Int16 | Int32 | Int64 => Int64,
        UInt8 | UInt16 | UInt32 | UInt64 => UInt64,
        Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => Float64,
        Boolean => Boolean,
        Date32 | Date64 | Timestamp(..) | Time32(_) | Time64(_) => Utf8,
        Dictionary(_, v) => return guest_type(v),
        _ => return None,
    })
}

/// For each field of `schema`, whether it is a string column whose chunk in
/// the split's first row group is dictionary-encoded (so it is read, and
/// crosses into the guest, as codes into its dictionary).
fn dictionary_columns(fetched: &FetchedParquet, schema: &Schema) -> Vec<bool> {
    let parquet = fetched.metadata.metadata();
    let first = fetched.row_groups.first().and_then(|&rg| parquet.row_groups().get(rg));
    schema
        .fields()
        .iter()
        .map(|f| {
            let Some(first) = first else { return false };
            // Strings only: dates and times are read as their own types
            // (and cast to strings after), whatever their encoding.
            is_string(f.data_type())
                && parquet_column(parquet.file_metadata().schema_descr(), schema, f.name())
                    .and_then(|(leaf, _)| first.columns().get(leaf))
                    .is_some_and(|chunk| chunk.dictionary_page_offset().is_some())
        })
        .collect()
}

/// Whether `t` is a string type, or a dictionary of strings.
fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// Decodes a fetched Parquet split into guest-typed batches.
pub struct ParquetSplitReader {
    file: String,
    reader: ParquetRecordBatchReader,
    schema: Arc<Schema>,
    row_group: String,
}

impl ParquetSplitReader {
    /// Start decoding.
    ///
    /// # Errors
    /// [`Error::UnsupportedColumn`] for a column no guest can read, and
    /// [`Error::Parquet`] if decoding can't start.
    pub fn new(fetched: FetchedParquet) -> Result<Self, Error> {
        let file = fetched.file.clone();
        let row_group = format!("row groups {:?}", fetched.row_groups);
        let parquet_error = |source| Error::Parquet {
            file: file.clone(),
            place: row_group.clone(),
            source,
        };
        let file_schema = fetched.metadata.schema().clone();
        let dictionary = dictionary_columns(&fetched, &file_schema);
        let fields = file_schema
            .fields()
            .iter()
            .zip(&dictionary)
            .map(|(f, &dictionary)| match guest_type(f.data_type()) {
                Some(DataType::Utf8) if dictionary => Ok(Field::new(f.name(), dictionary_utf8(), true)),
                Some(t) => Ok(Field::new(f.name(), t, true)),
                None => Err(Error::UnsupportedColumn {
                    file: file.clone(),
                    column: f.name().clone(),
                    data_type: f.data_type().to_string(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = if dictionary.contains(&true) {
            // Ask the decoder for those columns as dictionaries: it then
            // hands out each column chunk's dictionary as decoded once,
            // with codes, rather than every row's string copied out of it.
            let read_as = file_schema
                .fields()
                .iter()
                .zip(&dictionary)
                .map(|(f, &dictionary)| {
                    if dictionary {
                        Arc::new(f.as_ref().clone().with_data_type(dictionary_utf8()))
                    } else {
                        f.clone()
                    }
                })
                .collect::<Vec<_>>();
            let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(read_as)));
            ArrowReaderMetadata::try_new(fetched.metadata.metadata().clone(), options).map_err(parquet_error)?
        } else {
            fetched.metadata
        };
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(fetched.data, metadata)
            .with_row_groups(fetched.row_groups)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(parquet_error)?;
        Ok(ParquetSplitReader {
            file,
            reader,
            schema: Arc::new(Schema::new(fields)),
            row_group,
        })
    }

    /// The next batch, or `None` at the end of the split.
    ///
    /// # Errors
    /// [`Error::Parquet`] for corrupt data.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, Error> {
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| Error::Parquet {
            file: self.file.clone(),
            place: self.row_group.clone(),
            source: parquet::errors::ParquetError::ArrowError(e.to_string()),
        })?;
        let columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type()).map_err(|e| Error::Parquet {
                        file: self.file.clone(),
                        place: format!("column {}", f.name()),
                        source: parquet::errors::ParquetError::ArrowError(e.to_string()),
                    })
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map(Some)
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, StringArray, TimestampMillisecondArray};

    use super::*;

    /// A file of one row group with a string and a timestamp column, both
    /// dictionary-encoded (as writers do by default).
    fn written(dir: &std::path::Path) -> std::path::PathBuf {
        let batch = RecordBatch::try_from_iter([
            (
                "city",
                Arc::new(StringArray::from(vec![Some("Oslo"), None, Some("Lima"), Some("Oslo")])) as ArrayRef,
            ),
            (
                "at",
                Arc::new(TimestampMillisecondArray::from(vec![0, 0, 86_400_000, 0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let path = dir.join("t.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        path
    }

    #[tokio::test]
    async fn dictionary_strings_are_read_as_codes_and_timestamps_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path());
        let file = Location::parse(path.to_str().unwrap()).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let fetched = fetch_parquet_split(&file, size, &[0]).await.unwrap();
        let batch = ParquetSplitReader::new(fetched).unwrap().next_batch().unwrap().unwrap();
        let city = batch.column(0);
        assert_eq!(city.data_type(), &dictionary_utf8());
        let plain = cast(city, &DataType::Utf8).unwrap();
        let plain = plain.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            plain.iter().collect::<Vec<_>>(),
            [Some("Oslo"), None, Some("Lima"), Some("Oslo")]
        );
        let at = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(at.value(2), "1970-01-02T00:00:00");
        assert_eq!(at.len(), 4);
    }
}
