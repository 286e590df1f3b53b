//! `wmr cat`: print a committed output directory's rows as `key value`
//! lines, like `hadoop fs -cat`, reading the files its `_SUCCESS` lists.

use std::io::Write;

use clap::Args;

use super::{Failure, exit};
use crate::data::output::{read_output_rows, write_text_lines};
use crate::error_chain;

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
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = String::new();
    for (_, batch) in batches {
        match write_text_lines(&batch, &mut out, &mut line) {
            Ok(()) => {}
            // Broken pipe (`wmr cat OUT | head`): success, as in ripgrep.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::SUCCESS),
            Err(e) => {
                return Err(Failure {
                    code: exit::USAGE,
                    message: format!("printing {}: {e}", args.output),
                });
            }
        }
    }
    if out.flush().is_err() {
        return Ok(exit::SUCCESS);
    }
    Ok(exit::SUCCESS)
}
