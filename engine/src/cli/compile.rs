//! Bounds on compiling modules (`--max-compile-time`, `--max-compile-memory`
//! on every command that compiles one), and the hidden `wmr compile-module`
//! that does the compiling in a child process within them.

use clap::Args;

use super::{Failure, exit};
use crate::limits::{CompileLimits, DEFAULT_MAX_COMPILE_MEMORY_BYTES, DEFAULT_MAX_COMPILE_TIME};
use crate::runtime::{CompileCacheConfig, Compiler, Runtime};

/// How long compiling a module may take and how much memory it may use.
#[derive(Debug, Clone, Args)]
pub struct CompileArgs {
    /// Wall-clock limit on compiling a job's module (done in a child
    /// process, which is killed past it).
    #[arg(long, value_name = "DURATION", default_value_t = humantime::Duration::from(DEFAULT_MAX_COMPILE_TIME))]
    pub max_compile_time: humantime::Duration,
    /// Memory limit of the process compiling a job's module.
    #[arg(long, value_name = "BYTES", default_value_t = bytesize::ByteSize::b(DEFAULT_MAX_COMPILE_MEMORY_BYTES))]
    pub max_compile_memory: bytesize::ByteSize,
    /// The machine's cache of compiled modules, shared by every wmr process
    /// of this user [default: $XDG_CACHE_HOME/wmr/modules or
    /// ~/.cache/wmr/modules]. Must be writable by this user alone.
    #[arg(long, value_name = "DIR", env = "WMR_COMPILE_CACHE")]
    pub compile_cache: Option<std::path::PathBuf>,
    /// The most the compile cache may hold; the least recently used
    /// modules are deleted past it.
    #[arg(long, value_name = "BYTES", default_value_t = bytesize::ByteSize::b(CompileCacheConfig::DEFAULT_MAX_BYTES))]
    pub compile_cache_size: bytesize::ByteSize,
    /// Compile every module afresh, keeping nothing on disk.
    #[arg(long, conflicts_with = "compile_cache")]
    pub no_compile_cache: bool,
}

impl CompileArgs {
    /// The limits the flags ask for.
    fn limits(&self) -> CompileLimits {
        CompileLimits {
            max_time: *self.max_compile_time,
            max_memory_bytes: self.max_compile_memory.as_u64(),
        }
    }

    /// The compile cache the flags ask for, if any.
    pub(super) fn cache(&self) -> Option<CompileCacheConfig> {
        if self.no_compile_cache {
            return None;
        }
        let dir = self.compile_cache.clone().or_else(CompileCacheConfig::default_dir);
        if dir.is_none() {
            tracing::warn!("no compile cache: neither HOME nor XDG_CACHE_HOME is set; pass --compile-cache DIR");
        }
        Some(CompileCacheConfig {
            dir: dir?,
            max_bytes: self.compile_cache_size.as_u64(),
        })
    }

    /// A wasm runtime compiling by [`Self::compiler`], with the compile cache.
    pub(super) fn runtime(&self) -> Result<Runtime, Failure> {
        Ok(Runtime::new(self.compiler()?)
            .map_err(|e| Failure {
                code: exit::INFRASTRUCTURE,
                message: format!("starting the wasm runtime: {}", crate::error_chain(&e)),
            })?
            .with_compile_cache(self.cache()))
    }

    /// A compiler running this binary as `wmr compile-module` within the limits.
    pub(super) fn compiler(&self) -> Result<Compiler, Failure> {
        Compiler::sandboxed(self.limits()).map_err(|e| Failure {
            code: exit::INFRASTRUCTURE,
            message: format!("can't find the running wmr binary to compile modules with: {e}"),
        })
    }
}

/// `wmr compile-module`: internal, run by wmr itself. Reads a module on
/// stdin and writes its compiled form to stdout.
#[derive(Debug, Args)]
pub struct CompileModuleArgs {
    /// Memory limit, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_memory: u64,
    /// Time limit, which the parent enforces; also sets a CPU-time limit.
    #[arg(long, value_name = "DURATION")]
    pub max_time: humantime::Duration,
}

pub(super) fn compile_module(args: CompileModuleArgs) -> Result<u8, Failure> {
    let code = crate::runtime::compile::child_main(CompileLimits {
        max_time: *args.max_time,
        max_memory_bytes: args.max_memory,
    });
    Ok(u8::try_from(code).unwrap_or(1))
}
