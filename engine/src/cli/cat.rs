//! `wmr cat`: print a committed output directory's rows as `key value`
//! lines, like `hadoop fs -cat`, reading the files its `_SUCCESS` lists.

use std::io::Write;

use clap::Args;

use super::{Failure, exit};
use crate::data::output::{OutputFormat, read_output_rows};
use crate::worker::error_chain;

/// Print a job's output as text lines.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// The output directory of a finished job (it has a `_SUCCESS`).
    #[arg(value_name = "OUT")]
    pub output: String,
}

pub(super) fn run(args: CatArgs) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: format!("starting the I/O runtime: {e}"),
        })?;
    let batches = runtime.block_on(read_output_rows(&args.output)).map_err(|e| Failure {
        code: exit::USAGE,
        message: error_chain(&e),
    })?;
    let mut out = std::io::stdout().lock();
    for (schema, batch) in batches {
        let text = OutputFormat::Text
            .encode(&args.output, &schema, &[batch])
            .map_err(|e| Failure {
                code: exit::USAGE,
                message: error_chain(&e),
            })?;
        if out.write_all(&text).is_err() {
            // Broken pipe (`wmr cat OUT | head`): success, as in ripgrep.
            return Ok(exit::SUCCESS);
        }
    }
    Ok(exit::SUCCESS)
}
