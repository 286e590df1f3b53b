//! The WebAssembly side: wasmtime's engine, compiling and validating job
//! components, and calling a guest's `map`, `combine` and `reduce` with
//! Arrow batches. Knows nothing of gRPC or object storage.
//!
//! Read [`Runtime`] first (one per process), then [`JobModule`] (one per
//! module digest: compiled once, validated against the WIT world, and
//! pre-instantiated), then [`GuestInstance`] (one per task attempt: a fresh
//! store with an empty WASI context, a memory cap and a time budget).

pub mod cache;
mod capture;
pub mod compile;
mod convert;
mod dictionary;
mod guest;
mod words;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::ids::ModuleDigest;
use crate::limits::{self, Limits};
pub use cache::{CacheError, CompileCache, CompileCacheConfig};
pub use compile::Compiler;
pub use convert::is_guest_type;
pub use guest::GuestInstance;
use guest::GuestState;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "job",
    });
}

/// Errors of the wasm runtime. Guest misbehaviour (traps, limits, malformed
/// batches) is [`Error::Guest`]; a module that is not a wmr job is
/// [`Error::InvalidModule`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a usable wmr job component.
    #[error(
        "{what} is not a wmr job component: {reason}; build the job with `wmr build` (Rust with wmr-sdk, Python with the wmr package, JavaScript with wmr.js)"
    )]
    InvalidModule {
        /// What was loaded (a path or a digest).
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// The job's `configure` rejected its parameters.
    #[error("job {module} rejected its parameters: {message}")]
    Configure {
        /// The module.
        module: String,
        /// The guest's message.
        message: String,
    },
    /// Compiling the module went past a bound.
    #[error("compiling {what} {limit}, the limit; raise it with {flag} on the process that compiles it")]
    CompileLimit {
        /// The module.
        what: String,
        /// Which bound, and its value.
        limit: String,
        /// The flag that raises it.
        flag: &'static str,
    },
    /// A guest call failed.
    #[error("{call} failed: {kind}")]
    Guest {
        /// `map`, `combine` or `reduce`.
        call: &'static str,
        /// What went wrong.
        kind: GuestError,
    },
    /// The host could not make an instance (the operating system refused
    /// memory or a file it needed), not through any fault of the module.
    #[error(
        "{what} could not be instantiated on this machine: {reason}; it may be short of memory or of file descriptors (see `ulimit -n`)"
    )]
    HostResources {
        /// The module.
        what: String,
        /// The operating system's refusal.
        reason: String,
    },
    /// Our own bug.
    #[error("internal error in the wasm runtime: {0}; please report this as a bug")]
    Internal(String),
}

impl Error {
    /// The input row (within the batch of the failed call) the guest named.
    pub fn guest_row(&self) -> Option<u32> {
        match self {
            Error::Guest { kind, .. } => kind.row(),
            _ => None,
        }
    }
}

/// How a guest call went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The guest returned an error value.
    #[error("the job returned an error: {message}")]
    Returned {
        /// The guest's message.
        message: String,
        /// The input row it named, if any.
        row: Option<u32>,
    },
    /// The guest panicked.
    #[error("the job panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
        /// The input row being processed, if known.
        row: Option<u32>,
    },
    /// The guest trapped without a panic message.
    #[error("the job trapped: {message}")]
    Trapped {
        /// The trap.
        message: String,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("the job exceeded its memory limit of {limit_mib} MiB; raise it with --max-memory")]
    MemoryLimit {
        /// The limit, in MiB.
        limit_mib: u64,
    },
    /// One call ran past its time budget.
    #[error("one call ran longer than its time limit of {limit:?}; raise it with --max-call-time")]
    TimeLimit {
        /// The limit.
        limit: Duration,
    },
    /// The attempt was cancelled (its job ended, or another attempt won)
    /// and the guest stopped mid-call.
    #[error("the attempt was cancelled")]
    Cancelled,
    /// The guest returned a batch that does not match what it declared.
    #[error("the job returned a malformed batch: {reason}")]
    MalformedBatch {
        /// What is wrong with it.
        reason: String,
    },
}

impl GuestError {
    /// The input row (within the batch passed to the call) this error names.
    pub fn row(&self) -> Option<u32> {
        match self {
            GuestError::Returned { row, .. } | GuestError::Panicked { row, .. } => *row,
            _ => None,
        }
    }
}

/// What a job module says about itself, from its `configure` call.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// Types of the key columns map emits.
    pub key_types: Vec<DataType>,
    /// Types of the value columns map emits.
    pub value_types: Vec<DataType>,
    /// The schema of reduce output, which is the job's output.
    pub output_schema: SchemaRef,
    /// Whether the job has a combiner.
    pub combines: bool,
    /// Whether the job asks for output in global key order.
    pub total_order: bool,
}

impl JobInfo {
    /// The schema of map output: key columns `k0..` then value columns `v0..`.
    pub fn map_output_schema(&self) -> SchemaRef {
        let names = (0..self.key_types.len())
            .map(|i| format!("k{i}"))
            .chain((0..self.value_types.len()).map(|i| format!("v{i}")));
        let types: Vec<DataType> = self.key_types.iter().chain(&self.value_types).cloned().collect();
        convert::schema_of(names, &types)
    }
}

/// How many epoch ticks pass between checks for cancel within a call.
const CANCEL_CHECK_TICKS: u64 = 2;

/// Set to stop an attempt's guest: its current or next call traps within
/// a few ticks, and the compute thread is free again.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<std::sync::atomic::AtomicBool>);

impl CancelFlag {
    /// Stop the guest.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it was stopped.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Advances the engine's epoch every [`limits::EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("wmr-epoch".into()).spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limits::EPOCH_TICK) {
                engine.increment_epoch();
            }
        })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The ticker only loops on a timed receive; joining can't hang,
            // and a panic in it has nothing left to clean up.
            let _ = t.join();
        }
    }
}

/// The version of the `wmr:job` WIT world (`sdk/wit/job.wit`) this wmr
/// offers jobs; a job built for another imports its host functions under
/// that version's name, which this wmr does not offer.
pub const WORLD_VERSION: &str = "0.3.0";

/// The version of the `wmr:job` world `component` imports wmr's host
/// functions from, when it is not [`WORLD_VERSION`].
fn other_world_version(component: &Component, engine: &Engine) -> Option<String> {
    component.component_type().imports(engine).find_map(|(name, _)| {
        let version = name.strip_prefix("wmr:job/")?.split_once('@')?.1;
        (version != WORLD_VERSION).then(|| version.to_string())
    })
}

/// The engine's configuration, the same in the compiler process and the one
/// that runs the code (wasmtime refuses artifacts made under another).
fn engine_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    // For profiling guests with `perf`: WMR_WASM_PROFILER=perfmap names
    // JIT frames (/tmp/perf-PID.map); =jitdump also keeps their code, for
    // `perf record -k 1` then `perf inject --jit` and `perf annotate`.
    match std::env::var("WMR_WASM_PROFILER").as_deref() {
        Ok("perfmap") => {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Ok("jitdump") => {
            config.profiler(wasmtime::ProfilingStrategy::JitDump);
        }
        _ => {}
    }
    config
}

/// One per process: the wasmtime engine, the linker with WASI and our host
/// imports, the epoch ticker, and a cache of compiled modules by digest
/// (weak: a module stays compiled while some [`JobModule`] holds it, and is
/// freed with the last one).
pub struct Runtime {
    engine: Engine,
    compiler: Compiler,
    linker: Linker<GuestState>,
    modules: Mutex<HashMap<ModuleDigest, Weak<CompiledModule>>>,
    cache: Option<CompileCache>,
    _ticker: EpochTicker,
}

struct CompiledModule {
    pre: bindings::JobPre<GuestState>,
}

impl Runtime {
    /// Start the runtime: one wasmtime engine, its linker and module cache.
    /// Modules are compiled by `compiler`.
    ///
    /// # Errors
    /// If wasmtime can't be configured on this machine.
    pub fn new(compiler: Compiler) -> Result<Self, Error> {
        let engine = Engine::new(&engine_config()).map_err(|e| Error::Internal(format!("wasmtime engine: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::Internal(format!("linking WASI: {e}")))?;
        bindings::Job::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("linking host imports: {e}")))?;
        let ticker = EpochTicker::start(engine.clone()).map_err(|e| Error::Internal(format!("epoch thread: {e}")))?;
        Ok(Runtime {
            engine,
            compiler,
            linker,
            modules: Mutex::new(HashMap::new()),
            cache: None,
            _ticker: ticker,
        })
    }

    /// Keep compiled modules in the machine's compile cache `config` (none
    /// for `None`), and look there before compiling. A cache that can't be
    /// used is only a warning: modules are then compiled by every process.
    pub fn with_compile_cache(mut self, config: Option<CompileCacheConfig>) -> Self {
        self.cache = config.and_then(|config| match CompileCache::open(config, &self.engine) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!("{e}; compiling without it");
                None
            }
        });
        self
    }

    fn compiled(&self, what: &str, bytes: &[u8]) -> Result<(ModuleDigest, Arc<CompiledModule>), Error> {
        let digest = ModuleDigest::of(bytes);
        if let Some(m) = self
            .modules
            .lock()
            .map_err(|_| Error::Internal("module cache poisoned".into()))?
            .get(&digest)
            .and_then(Weak::upgrade)
        {
            return Ok((digest, m));
        }
        let invalid = |reason: String| Error::InvalidModule {
            what: what.to_string(),
            reason,
        };
        if bytes.len() > limits::MAX_MODULE_BYTES {
            return Err(invalid(format!(
                "it is larger than {} MiB, the most wmr accepts",
                limits::MAX_MODULE_BYTES >> 20
            )));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(invalid("it does not start with the wasm magic bytes".into()));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(invalid("it is a core wasm module, not a component".into()));
        }
        let (component, fresh) = self.component(what, &digest, bytes)?;
        if let Some(version) = other_world_version(&component, &self.engine) {
            return Err(invalid(format!(
                "it was built for version {version} of the wmr:job world, and this wmr runs version {WORLD_VERSION}"
            )));
        }
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "it imports what a wmr job may not (only an empty WASI and wmr's host functions are offered): {e:#}"
            ))
        })?;
        let pre = bindings::JobPre::new(instance_pre)
            .map_err(|e| invalid(format!("it does not export the wmr:job world ({e:#})")))?;
        // Only a module that is a job is kept: a compile-bomb that is not
        // one must meet the compile limits every time.
        if let (Some(cache), Some(artifact)) = (&self.cache, fresh) {
            cache.put(&digest, &artifact);
        }
        let compiled = Arc::new(CompiledModule { pre });
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| Error::Internal("module cache poisoned".into()))?;
        modules.retain(|_, m| m.strong_count() > 0);
        modules.insert(digest.clone(), Arc::downgrade(&compiled));
        drop(modules);
        Ok((digest, compiled))
    }

    /// `bytes` compiled: from the machine's compile cache if it has them,
    /// else by the compiler (and then kept in the cache).
    /// A freshly compiled module's artifact comes back too, to be kept in
    /// the cache once the module is known to be a job.
    fn component(
        &self,
        what: &str,
        digest: &ModuleDigest,
        bytes: &[u8],
    ) -> Result<(Component, Option<Vec<u8>>), Error> {
        let started = std::time::Instant::now();
        if let Some(cache) = &self.cache
            && let cache::Lookup::Hit(artifact) = cache.get(digest)
        {
            match compile::load_artifact(&self.engine, &artifact) {
                Ok(component) => {
                    tracing::info!(
                        "{what}: loaded its compiled code from the compile cache {} in {} ms",
                        cache.dir().display(),
                        started.elapsed().as_millis()
                    );
                    return Ok((component, None));
                }
                // Another configuration's artifact under this one's name: wasmtime
                // checks, and the module is compiled again over it.
                Err(e) => tracing::warn!(
                    "{what}: the compile cache's entry {} does not load ({e:#}); compiling again",
                    cache.path(digest).display()
                ),
            }
        }
        let artifact = match &self.compiler {
            Compiler::InProcess => self
                .engine
                .precompile_component(bytes)
                .map_err(|e| Error::InvalidModule {
                    what: what.to_string(),
                    reason: format!("{e:#}"),
                })?,
            Compiler::Sandboxed { program, limits } => compile::in_child(program, *limits, what, bytes)?,
        };
        let component = compile::load_artifact(&self.engine, &artifact)
            .map_err(|e| Error::Internal(format!("loading the compiled {what}: {e:#}")))?;
        tracing::info!("{what}: compiled in {} ms", started.elapsed().as_millis());
        Ok((component, Some(artifact)))
    }

    /// Compile `bytes` (or find them compiled in the compile cache) and
    /// check that they are a wmr job component, without configuring it.
    ///
    /// # Errors
    /// [`Error::InvalidModule`] for bytes that are not a wmr job component.
    pub fn check(&self, what: &str, bytes: &[u8]) -> Result<ModuleDigest, Error> {
        self.compiled(what, bytes).map(|(digest, _)| digest)
    }

    /// Compile (once per digest), validate against the WIT world, and
    /// configure a job with `params`, learning what it is. Its instances
    /// will run under `limits`.
    ///
    /// # Errors
    /// [`Error::InvalidModule`] for bytes that are not a wmr job component,
    /// [`Error::Configure`] when the job rejects its parameters, and
    /// [`Error::Guest`] when `configure` traps.
    pub fn load(
        &self,
        what: &str,
        bytes: &[u8],
        params: &[(String, String)],
        limits: Limits,
    ) -> Result<JobModule, Error> {
        let (digest, compiled) = self.compiled(what, bytes)?;
        let mut module = JobModule {
            digest,
            compiled,
            params: params.to_vec(),
            limits,
            info: JobInfo {
                name: String::new(),
                key_types: vec![],
                value_types: vec![],
                output_schema: convert::schema_of([], &[]),
                combines: false,
                total_order: false,
            },
            what: what.to_string(),
        };
        let instance = module.instantiate(self, &CancelFlag::default())?;
        module.info = instance.info().clone();
        Ok(module)
    }
}

/// A validated, compiled job module with its parameters.
#[derive(Clone)]
pub struct JobModule {
    digest: ModuleDigest,
    compiled: Arc<CompiledModule>,
    params: Vec<(String, String)>,
    limits: Limits,
    info: JobInfo,
    what: String,
}

impl std::fmt::Debug for JobModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobModule")
            .field("digest", &self.digest)
            .field("info", &self.info)
            .finish()
    }
}

impl JobModule {
    /// The module's content address.
    pub fn digest(&self) -> &ModuleDigest {
        &self.digest
    }

    /// What the job says about itself.
    pub fn info(&self) -> &JobInfo {
        &self.info
    }

    /// The limits its instances run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The same module, its instances run under `limits`.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_world_version_is_the_wit_packages() {
        let wit = include_str!("../../../sdk/wit/job.wit");
        assert_eq!(
            wit.lines().next(),
            Some(format!("package wmr:job@{};", super::WORLD_VERSION).as_str())
        );
    }
}
