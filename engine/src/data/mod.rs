//! Object storage and file formats: where input comes from and output goes.
//! Splits, the text and Parquet readers, the output writers and the
//! `_SUCCESS` manifest. Knows nothing of gRPC or wasmtime.
//!
//! Read [`Location`] (a path or URL resolved to a store), then
//! [`plan_splits`], then the readers [`text`] and [`parquet_input`], then
//! [`output`], which writes through [`sink`].

mod location;
pub mod output;
pub mod parquet_input;
pub mod sink;
mod split;
pub mod text;

pub use location::Location;
pub use split::{
    DEFAULT_SPLIT_SIZE, MAX_FILES_PER_TASK, MapInput, Split, SplitKind, check_output_outside, input_base, is_parquet,
    pack_splits, plan_map_inputs, plan_splits,
};

/// Errors reading input or writing output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path or URL that can't be used.
    #[error("bad location {input:?}: {reason}")]
    BadLocation {
        /// What the user gave.
        input: String,
        /// Why it can't be used.
        reason: String,
    },
    /// An input that does not exist.
    #[error("input {input} does not exist; check the path, or quote a glob so the shell leaves it alone")]
    MissingInput {
        /// The input as given.
        input: String,
    },
    /// The output would be written inside an input.
    #[error("output {output} is inside the input {input}; choose an --output outside the input")]
    OutputInsideInput {
        /// The output.
        output: String,
        /// The input it is in.
        input: String,
    },
    /// A glob that matched no files.
    #[error("input glob {pattern} matched no files")]
    NoMatch {
        /// The glob.
        pattern: String,
    },
    /// A storage operation failed.
    #[error("{action} {what} failed")]
    Io {
        /// The file or prefix.
        what: String,
        /// What was being done.
        action: &'static str,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// An input file got shorter after the job was planned.
    #[error(
        "input {file} changed while the job ran: it ends at byte {at}, before the size it had when the job started"
    )]
    Truncated {
        /// The file.
        file: String,
        /// Where it now ends.
        at: u64,
    },
    /// A text line longer than the record limit.
    #[error(
        "input {file} has a record at byte offset {offset} longer than the record limit of {limit} bytes; raise it with --max-record, or check that the file is newline-delimited text"
    )]
    RecordTooLong {
        /// The file.
        file: String,
        /// Where the record starts.
        offset: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A Parquet file that can't be read.
    #[error("Parquet file {file} can't be read ({place})")]
    Parquet {
        /// The file.
        file: String,
        /// Where in the file: `footer`, `row group 3`.
        place: String,
        /// The reader's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A Parquet column whose type no job can read.
    #[error(
        "Parquet file {file} has column {column:?} of type {data_type}, which jobs can't read; supported: strings, binary, integers, floats, booleans, dates and timestamps"
    )]
    UnsupportedColumn {
        /// The file.
        file: String,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// Writing output failed.
    #[error("encoding {what} failed: {reason}")]
    Encode {
        /// The file being written.
        what: String,
        /// Why.
        reason: String,
    },
    /// Our own bug.
    #[error("internal error in the data layer: {0}; please report this as a bug")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(what: &str, action: &'static str, source: object_store::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            action,
            source,
        }
    }
}
