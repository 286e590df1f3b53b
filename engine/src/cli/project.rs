//! `wmr new` (scaffold a job in Rust, Python or JavaScript) and `wmr build`
//! (turn one into a checked component).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::compile::CompileArgs;
use super::{Failure, exit, print};
use crate::error_chain;
use crate::project::{self, Lang, ProjectError, Source};

/// `wmr new NAME --lang rust|python|js`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The job's directory (created); its last component names the job.
    #[arg(value_name = "NAME")]
    pub dir: PathBuf,
    /// The language to write it in.
    #[arg(long, value_enum)]
    pub lang: Lang,
}

/// `wmr build [DIR|FILE]`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A job directory (with Cargo.toml, job.py or job.js) or a .py/.js file.
    #[arg(value_name = "DIR|FILE", default_value = ".")]
    pub path: PathBuf,
    /// Where to write the component [default: NAME.wasm in the job's directory].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Bounds on compiling the module to check it.
    #[command(flatten)]
    pub compile: CompileArgs,
}

fn usage(e: &ProjectError) -> Failure {
    Failure {
        code: exit::USAGE,
        message: error_chain(e),
    }
}

pub(super) fn new(args: NewArgs) -> Result<u8, Failure> {
    project::scaffold(&args.dir, args.lang).map_err(|e| usage(&e))?;
    let name = args
        .dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let dir = args.dir.display();
    let tool = match args.lang {
        Lang::Rust => "it builds with cargo for wasm32-wasip2 (`rustup target add wasm32-wasip2` once)".to_string(),
        Lang::Python => format!(
            "it builds with componentize-py (`python3 -m venv {dir}/.venv && {dir}/.venv/bin/pip install componentize-py==0.25.1` once)"
        ),
        Lang::Js => format!("it builds with componentize-js (`npm install` in {dir} once)"),
    };
    print(&format!(
        "created a word-count job in {dir}; {tool}. Next:\n  wmr build {dir}\n  wmr run --job {dir}/{name}.wasm --input 'books/*.txt' --output counts --format text\n"
    ));
    Ok(exit::SUCCESS)
}

pub(super) fn build(args: BuildArgs) -> Result<u8, Failure> {
    let started = Instant::now();
    let source = Source::find(&args.path).map_err(|e| usage(&e))?;
    let bytes = project::build(&source).map_err(|e| match e {
        ProjectError::Io { .. } => Failure {
            code: exit::INFRASTRUCTURE,
            message: error_chain(&e),
        },
        e => usage(&e),
    })?;
    let output = args
        .output
        .unwrap_or_else(|| source.dir.join(format!("{}.wasm", source.name)));
    let what = output
        .file_name()
        .map_or_else(|| "the component".into(), |n| n.to_string_lossy().into_owned());
    // Checked (and compiled into the machine's compile cache) before it is
    // written, so that a module that is not a job never looks built.
    let runtime = args.compile.runtime()?;
    runtime.check(&what, &bytes).map_err(|e| Failure {
        code: exit::USAGE,
        message: format!("{} built, but {}", source.entry.display(), error_chain(&e)),
    })?;
    std::fs::write(&output, &bytes).map_err(|e| Failure {
        code: exit::INFRASTRUCTURE,
        message: format!("writing {}: {e}", output.display()),
    })?;
    print(&format!(
        "built {} ({:.1} MiB) from {} in {:.1} s; it is a wmr job\n",
        output.display(),
        bytes.len() as f64 / f64::from(1 << 20),
        source.entry.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(exit::SUCCESS)
}
