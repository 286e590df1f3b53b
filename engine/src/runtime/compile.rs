//! Compiling an untrusted module, bounded in time and memory.
//!
//! Cranelift's time and memory grow with the module, and a stranger's
//! module can be made to need a great deal of both, so compiling happens in
//! a child process: this same binary, run as `wmr compile-module`. The child
//! caps its own data memory (`RLIMIT_DATA`) before reading the module and
//! writes wasmtime's serialized artifact to stdout; the parent kills it
//! once it runs past its time limit, and loads the artifact into its own
//! engine. A crash, an allocation failure or a kill ends only the child.
//!
//! [`Compiler::InProcess`] skips all this, for embedders compiling modules
//! they trust.

use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::Error;
use crate::limits::CompileLimits;

/// The exit code of a child that refused the module; its reason is on stderr.
const REFUSED: i32 = 2;

/// Where and how modules are compiled.
#[derive(Debug, Clone)]
pub enum Compiler {
    /// In this process, without bounds: only for modules you trust.
    InProcess,
    /// In a child process running `program compile-module`, within `limits`.
    Sandboxed {
        /// The `wmr` binary.
        program: PathBuf,
        /// Its time and memory.
        limits: CompileLimits,
    },
}

impl Compiler {
    /// Compile in a child process of this very binary, within `limits`.
    ///
    /// # Errors
    /// If the running binary can't be found.
    pub fn sandboxed(limits: CompileLimits) -> std::io::Result<Self> {
        // On Linux, the running image itself, even if its file has since
        // been replaced by an upgrade: the artifact must come from the same
        // wasmtime as the engine that loads it.
        let own_image = std::path::Path::new("/proc/self/exe");
        let program = if own_image.exists() {
            own_image.to_path_buf()
        } else {
            std::env::current_exe()?
        };
        Ok(Compiler::Sandboxed { program, limits })
    }
}

/// Compile `bytes` in a child process and return wasmtime's serialized
/// artifact.
pub(super) fn in_child(
    program: &std::path::Path,
    limits: CompileLimits,
    what: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, Error> {
    let internal = |doing: &str, e: std::io::Error| Error::Internal(format!("{doing} for compiling {what}: {e}"));
    // Files, not pipes: the child reads everything before it writes, and
    // nothing here has to read and write at once to avoid a deadlock.
    let mut input = tempfile::tempfile().map_err(|e| internal("creating a temporary file", e))?;
    input
        .write_all(bytes)
        .map_err(|e| internal("writing a temporary file", e))?;
    input.rewind().map_err(|e| internal("writing a temporary file", e))?;
    let mut output = tempfile::tempfile().map_err(|e| internal("creating a temporary file", e))?;
    let mut errors = tempfile::tempfile().map_err(|e| internal("creating a temporary file", e))?;
    let mut child = Command::new(program)
        // A backtrace taken as memory runs out can deadlock the child's
        // allocation-failure report; the reason is enough.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        // Nor should a debug log level meant for this process flood the
        // child's stderr with the compiler's own logging.
        .env_remove("RUST_LOG")
        .arg("compile-module")
        .arg("--max-memory")
        .arg(limits.max_memory_bytes.to_string())
        .arg("--max-time")
        .arg(humantime::format_duration(limits.max_time).to_string())
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(
            output
                .try_clone()
                .map_err(|e| internal("opening a temporary file", e))?,
        ))
        .stderr(Stdio::from(
            errors
                .try_clone()
                .map_err(|e| internal("opening a temporary file", e))?,
        ))
        .spawn()
        .map_err(|e| internal(&format!("starting {}", program.display()), e))?;
    let deadline = Instant::now() + limits.max_time;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // Already exited if this fails; either way it is reaped here.
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::CompileLimit {
                    what: what.to_string(),
                    limit: format!("took longer than {}", humantime::format_duration(limits.max_time)),
                    flag: "--max-compile-time",
                });
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(internal("waiting for the compiler process", e)),
        }
    };
    let mut stderr = String::new();
    errors
        .rewind()
        .map_err(|e| internal("reading the compiler's errors", e))?;
    // The child's stderr is its own text, but a crash could leave anything.
    let mut raw = Vec::new();
    errors
        .take(64 << 10)
        .read_to_end(&mut raw)
        .map_err(|e| internal("reading the compiler's errors", e))?;
    stderr.push_str(String::from_utf8_lossy(&raw).trim());
    if status.success() {
        output
            .rewind()
            .map_err(|e| internal("reading the compiled module", e))?;
        let mut artifact = Vec::new();
        output
            .read_to_end(&mut artifact)
            .map_err(|e| internal("reading the compiled module", e))?;
        return Ok(artifact);
    }
    if status.code() == Some(REFUSED) {
        return Err(Error::InvalidModule {
            what: what.to_string(),
            reason: stderr,
        });
    }
    // Rust aborts on a failed allocation with the first; reading the module
    // under the cap can fail with the second.
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return Err(Error::CompileLimit {
            what: what.to_string(),
            limit: format!("needed more than {} of memory", ByteSize(limits.max_memory_bytes)),
            flag: "--max-compile-memory",
        });
    }
    Err(Error::InvalidModule {
        what: what.to_string(),
        reason: format!(
            "compiling it crashed the compiler process ({status}){}",
            if stderr.is_empty() {
                String::new()
            } else {
                // A panic's last line is the hint about RUST_BACKTRACE.
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.starts_with("note: "))
                    .unwrap_or_default();
                format!(": {last}")
            }
        ),
    })
}

/// Load an artifact written by [`child_main`] into `engine`.
#[expect(unsafe_code, reason = "wasmtime's deserialize is unsafe; see the SAFETY note")]
pub(super) fn load_artifact(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize` trusts its bytes to be wasmtime's own output.
    // These are: this same binary's `compile-module` wrote them with an
    // engine of the same configuration, and wasmtime itself refuses an
    // artifact from another version or configuration. A compiler bug that
    // let a hostile module forge them would equally subvert compiling in
    // this process.
    unsafe { Component::deserialize(engine, artifact) }
}

/// The child's side, `wmr compile-module`: cap this process's memory, read
/// a module from stdin, and write its compiled artifact to stdout. Returns
/// the exit code; a module that does not compile is refused with its reason
/// on stderr.
pub fn child_main(limits: CompileLimits) -> i32 {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let cap = |resource, value| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
    };
    // Start wasmtime and the compiler's threads (rayon's global pool, which
    // wasmtime compiles on) before the cap, so that the cap bounds what the
    // module costs rather than failing a thread's stack.
    let engine = match Engine::new(&super::engine_config()) {
        Ok(engine) => engine,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "can't start wasmtime: {e:#}");
            return 1;
        }
    };
    // Already built is fine; failing to build leaves wasmtime to compile on
    // this thread.
    let _ = rayon::ThreadPoolBuilder::new().build_global();
    rayon::broadcast(|_| ());
    // Data memory: the heap and private writable mappings, which is where a
    // compiler's memory goes. (Address space would also count reservations
    // that are never touched.)
    if let Err(e) = cap(Resource::Data, limits.max_memory_bytes) {
        let _ = writeln!(std::io::stderr(), "can't cap the compiler's memory: {e}");
        return 1;
    }
    // CPU time, in case the parent dies and can't kill this process: the
    // time limit on every core, and a second for the rounding.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let _ = cap(
        Resource::Cpu,
        limits.max_time.as_secs().saturating_add(1).saturating_mul(cores),
    );
    let mut module = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut module) {
        let _ = writeln!(std::io::stderr(), "can't read the module from stdin: {e}");
        return 1;
    }
    let artifact = match engine.precompile_component(&module) {
        Ok(a) => a,
        Err(e) => {
            let _ = write!(std::io::stderr(), "{e:#}");
            return REFUSED;
        }
    };
    match std::io::stdout().lock().write_all(&artifact) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "can't write the compiled module: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_compiler_binary_is_named() {
        let missing = std::path::Path::new("/nonexistent/wmr");
        let e = in_child(missing, CompileLimits::default(), "job.wasm", b"\0asm").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("starting /nonexistent/wmr for compiling job.wasm"),
            "{text}"
        );
    }

    #[test]
    fn the_sandboxed_compiler_runs_this_binary() {
        let Compiler::Sandboxed { program, .. } = Compiler::sandboxed(CompileLimits::default()).unwrap() else {
            panic!("not sandboxed");
        };
        assert!(program.exists(), "{}", program.display());
    }
}
