//! The flags that describe a job, shared by `wmr run` and `wmr submit`.

use clap::Args;
use object_store::ObjectStoreExt;

use super::{Failure, exit};

use crate::coordinator::job::{DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_MEMORY};
use crate::data::Location;
use crate::data::output::OutputFormat;
use crate::error_chain;
use crate::limits::{
    DEFAULT_MAX_CALL_TIME, DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_RECORD_BYTES, Limits, MAX_MODULE_BYTES,
};

/// A job: its module, input, output and settings.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// The job: a wasm component built with wmr-sdk (path or URL).
    #[arg(long, value_name = "JOB.wasm")]
    pub job: String,
    /// Input files, directories, globs (quoted) or URLs (file://, memory://, s3://).
    #[arg(long, required = true, num_args = 1.., value_name = "IN")]
    pub input: Vec<String>,
    /// The output directory (path or URL); must be empty or absent unless --overwrite.
    #[arg(long, value_name = "OUT")]
    pub output: String,
    /// Number of reduce partitions (output files) [default: the number of slots for `run`, 1 for `submit`].
    #[arg(long, value_name = "R")]
    pub reducers: Option<u32>,
    /// Output format: Parquet files, or `key value` text lines.
    #[arg(long, value_enum, default_value_t = OutputFormat::Parquet)]
    pub format: OutputFormat,
    /// Text split size, e.g. 67108864, 64MiB or 1KiB (a split or a task of packed files may run a tenth past it rather than leave a sliver).
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_positive_size)]
    pub split_size: bytesize::ByteSize,
    /// A job parameter, passed to the job's configure (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Replace the output directory's contents if it is not empty.
    #[arg(long)]
    pub overwrite: bool,
    /// Partition by key ranges sampled from the input (TeraSort's way), so that
    /// part files are in global key order; jobs can also ask for it themselves.
    #[arg(long)]
    pub total_order: bool,
    /// Working memory of one task (its map output buffer, merges and output
    /// writer); past it, map output is sorted and spilled to local disk, and
    /// merges go through local disk. Per task slot, beside the guest's own memory.
    #[arg(long, alias = "map-buffer", value_name = "BYTES", default_value_t = bytesize::ByteSize::b(DEFAULT_TASK_MEMORY), value_parser = parse_positive_size)]
    pub task_memory: bytesize::ByteSize,
    /// Records per map task that may be skipped once the job has failed on them
    /// (each is counted and listed), instead of failing the job.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip_bad_records: u32,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS, value_name = "N")]
    pub max_attempts: u32,
    /// Memory cap per guest instance.
    #[arg(long, value_name = "BYTES", default_value_t = bytesize::ByteSize::b(DEFAULT_MAX_MEMORY_BYTES))]
    pub max_memory: bytesize::ByteSize,
    /// Time budget of one guest call, e.g. 60s or 2m.
    #[arg(long, value_name = "DURATION", default_value_t = humantime::Duration::from(DEFAULT_MAX_CALL_TIME))]
    pub max_call_time: humantime::Duration,
    /// Bytes one task attempt may write (its shuffle data or output file).
    #[arg(long, value_name = "BYTES", default_value_t = bytesize::ByteSize::b(DEFAULT_MAX_OUTPUT_BYTES))]
    pub max_output: bytesize::ByteSize,
    /// Log bytes kept per attempt; the excess is dropped and counted.
    #[arg(long, value_name = "BYTES", default_value_t = bytesize::ByteSize::b(DEFAULT_MAX_LOG_BYTES as u64))]
    pub max_log: bytesize::ByteSize,
    /// Longest input record (a text line, at most 2 GiB - 1); a longer one fails its task with its file and offset.
    #[arg(long, value_name = "BYTES", default_value_t = bytesize::ByteSize::b(DEFAULT_MAX_RECORD_BYTES))]
    pub max_record: bytesize::ByteSize,
}

impl JobArgs {
    /// The sandbox limits the flags ask for.
    pub fn limits(&self) -> Limits {
        Limits {
            max_memory_bytes: self.max_memory.as_u64(),
            max_call_time: *self.max_call_time,
            max_log_bytes: usize::try_from(self.max_log.as_u64()).unwrap_or(usize::MAX),
            max_output_bytes: self.max_output.as_u64(),
            max_record_bytes: self.max_record.as_u64(),
        }
    }
}

/// Read the job module `job` names (a path or URL), with a line naming the
/// fix for each way that fails.
///
/// # Errors
/// A usage failure for a missing file, a directory or one over the size
/// limit; an infrastructure failure when the store fails.
pub(super) async fn read_job_module(job: &str) -> Result<bytes::Bytes, Failure> {
    let usage = |message: String| Failure {
        code: exit::USAGE,
        message,
    };
    let module = Location::parse(job).map_err(|e| usage(error_chain(&e)))?;
    if module.local_path().is_some_and(|p| p.is_dir()) {
        return Err(usage(format!(
            "--job {job} is a directory; give the .wasm file (`cargo xtask guests` builds the examples \
             into target/guests/, and a job crate builds into target/wasm32-wasip2/release/)"
        )));
    }
    let infra = |e: object_store::Error| Failure {
        code: exit::INFRASTRUCTURE,
        message: format!("reading {job}: {e}"),
    };
    match module.store.get(&module.path).await {
        Ok(r) if r.meta.size > MAX_MODULE_BYTES as u64 => Err(usage(format!(
            "job module {job} is {} bytes, over the {} MiB wmr accepts",
            r.meta.size,
            MAX_MODULE_BYTES >> 20
        ))),
        Ok(r) => r.bytes().await.map_err(infra),
        Err(object_store::Error::NotFound { .. }) => Err(usage(format!(
            "job module {job} does not exist; build the examples with `cargo xtask guests`"
        ))),
        Err(e) => Err(infra(e)),
    }
}

fn parse_positive_size(s: &str) -> Result<bytesize::ByteSize, String> {
    let size: bytesize::ByteSize = s.parse()?;
    if size.as_u64() == 0 {
        return Err("it must be more than 0 bytes".into());
    }
    Ok(size)
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}
