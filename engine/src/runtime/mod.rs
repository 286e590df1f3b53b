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
pub mod limits;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use capture::CappedPipe;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::ids::ModuleDigest;
pub use cache::{CacheError, CompileCache, CompileCacheConfig};
pub use compile::Compiler;
pub use convert::is_guest_type;
pub use limits::Limits;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "job",
    });
}

use bindings::wmr::job::host;
use bindings::wmr::job::types as wit;

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

/// Per-store state: the empty WASI context, limits, counters and the log.
struct GuestState {
    /// Set when the attempt is cancelled.
    cancel: CancelFlag,
    /// Ticks left of the current call's time budget.
    ticks_left: u64,
    /// Ticks until the next deadline callback.
    next_check: u64,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    memory_limit_hit: bool,
    counters: BTreeMap<String, i64>,
    /// Distinct guest-named counters so far.
    guest_counters: usize,
    log: String,
    log_dropped: u64,
    panic: Option<(String, Option<u32>)>,
    stdout: CappedPipe,
    stderr: CappedPipe,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl GuestState {
    fn append_log(&mut self, line: &str) {
        let room = self.limits.max_log_bytes.saturating_sub(self.log.len());
        if line.len() < room {
            self.log.push_str(line);
            self.log.push('\n');
        } else {
            self.log_dropped += line.len() as u64 + 1;
        }
    }
}

impl host::Host for GuestState {
    fn log(&mut self, level: host::LogLevel, message: String) {
        let level = match level {
            host::LogLevel::Debug => "DEBUG",
            host::LogLevel::Info => "INFO",
            host::LogLevel::Warn => "WARN",
            host::LogLevel::Error => "ERROR",
        };
        self.append_log(&format!("{level} {message}"));
    }

    fn add_counters(&mut self, deltas: Vec<(String, i64)>) {
        // The guest names its counters, but not without bound, and never
        // one of the engine's own.
        for (name, delta) in deltas {
            let known = self.counters.contains_key(&name);
            let allowed = name.len() <= limits::MAX_COUNTER_NAME_BYTES
                && !name.starts_with("wmr.")
                && (known || self.guest_counters < limits::MAX_GUEST_COUNTERS);
            let (name, delta) = if allowed {
                self.guest_counters += usize::from(!known);
                (name, delta)
            } else {
                (limits::COUNTERS_DROPPED.to_string(), 1)
            };
            let value = self.counters.entry(name).or_insert(0);
            *value = value.saturating_add(delta);
        }
    }

    fn report_panic(&mut self, message: String, row: Option<u32>) {
        let message = limits::bounded_message(&message);
        self.append_log(&format!("PANIC {message}"));
        self.panic = Some((message, row));
    }
}

impl wit::Host for GuestState {}

impl ResourceLimiter for GuestState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limits.max_memory_bytes {
            self.memory_limit_hit = true;
            // Refusing the growth makes `memory.grow` return -1; the guest's
            // allocator then aborts, and we report the limit, not the abort.
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
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
        module.info = instance.info;
        Ok(module)
    }

    fn new_store(&self, limits: Limits, cancel: CancelFlag) -> Store<GuestState> {
        // No preopens, environment, arguments or sockets: an empty WASI.
        // Guest stdout/stderr are captured into memory (capped) and appended
        // to the attempt's log when it ends.
        let stdout = CappedPipe::new(limits.max_log_bytes);
        let stderr = CappedPipe::new(limits.max_log_bytes);
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder.stdout(stdout.clone());
        builder.stderr(stderr.clone());
        let state = GuestState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits,
            memory_limit_hit: false,
            cancel,
            ticks_left: limits.call_ticks(),
            next_check: limits.call_ticks().min(CANCEL_CHECK_TICKS),
            counters: BTreeMap::new(),
            guest_counters: 0,
            log: String::new(),
            log_dropped: 0,
            panic: None,
            stdout,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(limits.call_ticks().min(CANCEL_CHECK_TICKS));
        // The deadline comes every few ticks, so that a cancelled attempt
        // stops within milliseconds; the call's own budget is counted down.
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.ticks_left = state.ticks_left.saturating_sub(state.next_check);
            if state.cancel.is_cancelled() || state.ticks_left == 0 {
                return Err(Trap::Interrupt.into());
            }
            state.next_check = state.ticks_left.min(CANCEL_CHECK_TICKS);
            Ok(wasmtime::UpdateDeadline::Continue(state.next_check))
        });
        store
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

    /// A fresh instance for one task attempt, configured with the job's
    /// parameters.
    ///
    /// # Errors
    /// As [`Runtime::load`].
    pub fn instantiate(&self, runtime: &Runtime, cancel: &CancelFlag) -> Result<GuestInstance, Error> {
        let mut store = runtime.new_store(self.limits, cancel.clone());
        let job = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| Error::InvalidModule {
                what: self.what.clone(),
                reason: format!("instantiating: {e:#}"),
            })?;
        let mut instance = GuestInstance {
            store,
            job,
            info: self.info.clone(),
            map_schema: None,
            guest_time: std::time::Duration::ZERO,
        };
        let result = instance.call("configure", |job, store| job.call_configure(store, &self.params))?;
        let info = match result {
            Ok(info) => info,
            Err(message) => {
                return Err(Error::Configure {
                    module: self.what.clone(),
                    message: limits::bounded_message(&message),
                });
            }
        };
        let output_types: Vec<DataType> = info.output.iter().map(|f| convert::arrow_type(f.data_type)).collect();
        instance.info = JobInfo {
            name: info.name,
            key_types: info.key_types.into_iter().map(convert::arrow_type).collect(),
            value_types: info.value_types.into_iter().map(convert::arrow_type).collect(),
            output_schema: convert::schema_of(info.output.into_iter().map(|f| f.name), &output_types),
            combines: info.combines,
            total_order: info.total_order,
        };
        instance.map_schema = Some(instance.info.map_output_schema());
        Ok(instance)
    }
}

/// A live guest for one task attempt.
pub struct GuestInstance {
    store: Store<GuestState>,
    job: bindings::Job,
    info: JobInfo,
    map_schema: Option<SchemaRef>,
    /// Wall time spent in the guest's calls.
    guest_time: std::time::Duration,
}

impl GuestInstance {
    /// What the job said about itself when this instance was configured.
    pub fn info(&self) -> &JobInfo {
        &self.info
    }

    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&bindings::Job, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        let state = self.store.data_mut();
        // Per call: a guest that recovered from a refused allocation (an
        // exception it caught) and failed later for another reason is
        // reported for that reason.
        state.memory_limit_hit = false;
        state.ticks_left = state.limits.call_ticks();
        state.next_check = state.ticks_left.min(CANCEL_CHECK_TICKS);
        let first = state.next_check;
        self.store.set_epoch_deadline(first);
        let started = std::time::Instant::now();
        let result = f(&self.job, &mut self.store);
        self.guest_time += started.elapsed();
        result.map_err(|e| Error::Guest {
            call,
            kind: self.classify_trap(e),
        })
    }

    fn classify_trap(&mut self, e: wasmtime::Error) -> GuestError {
        let state = self.store.data_mut();
        if state.memory_limit_hit {
            return GuestError::MemoryLimit {
                limit_mib: state.limits.max_memory_bytes >> 20,
            };
        }
        if state.cancel.is_cancelled() {
            return GuestError::Cancelled;
        }
        if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
            return GuestError::TimeLimit {
                limit: state.limits.max_call_time,
            };
        }
        if let Some((message, row)) = state.panic.take() {
            return GuestError::Panicked { message, row };
        }
        // The trap and the innermost guest function, not the whole chain
        // with its backtrace: one line a user can read.
        let frame = e
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .and_then(|bt| bt.frames().first().and_then(|f| f.func_name().map(str::to_string)))
            .map(|name| format!("{:#}", rustc_demangle::demangle(&name)));
        let mut message = match e.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => e.root_cause().to_string(),
        };
        if e.downcast_ref::<Trap>() == Some(&Trap::MemoryOutOfBounds) {
            message.push_str(" (deep recursion overflowing the guest's stack ends like this too)");
        }
        if let Some(frame) = frame {
            message.push_str(&format!(" in {frame}"));
        }
        // An interpreter that aborts (SpiderMonkey's MOZ_CRASH, CPython's
        // fatal errors) says why on stderr just before it traps.
        let stderr = state.stderr.kept();
        let said = String::from_utf8_lossy(&stderr);
        if let Some(last) = said.lines().rev().find(|l| !l.trim().is_empty()) {
            message.push_str(&format!("; its stderr ended: {}", limits::bounded_message(last.trim())));
        }
        GuestError::Trapped { message }
    }

    fn batch_result(
        &mut self,
        call: &'static str,
        result: Result<wit::Batch, wit::GuestError>,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, Error> {
        match result {
            Ok(batch) => convert::from_wit_batch(batch, schema).map_err(|reason| Error::Guest {
                call,
                kind: GuestError::MalformedBatch { reason },
            }),
            // A guest whose language turns a refused allocation into an
            // exception (Python's MemoryError, JavaScript's "out of memory")
            // returns an error rather than trapping: it is the limit all the same.
            Err(_) if self.store.data().memory_limit_hit => Err(Error::Guest {
                call,
                kind: GuestError::MemoryLimit {
                    limit_mib: self.store.data().limits.max_memory_bytes >> 20,
                },
            }),
            Err(e) => Err(Error::Guest {
                call,
                kind: GuestError::Returned {
                    message: limits::bounded_message(&e.message),
                    row: e.row,
                },
            }),
        }
    }

    fn map_schema(&self) -> SchemaRef {
        self.map_schema.clone().unwrap_or_else(|| self.info.map_output_schema())
    }

    /// Call `map` on one input batch, all of whose rows come from the file
    /// `source`; returns key then value columns.
    ///
    /// # Errors
    /// [`Error::Guest`] if the guest traps, hits a limit, returns an error
    /// or returns a malformed batch.
    pub fn map(&mut self, source: &str, input: &RecordBatch) -> Result<RecordBatch, Error> {
        let wit_batch = convert::to_wit_batch(input)
            .map_err(|t| Error::Internal(format!("input column of type {t} reached the guest unconverted")))?;
        let result = self.call("map", |job, store| job.call_map(store, source, &wit_batch))?;
        let schema = self.map_schema();
        self.batch_result("map", result, &schema)
    }

    /// Call `flush` after a task's last `map` call: the rows `map` held back
    /// to combine further.
    ///
    /// # Errors
    /// As [`GuestInstance::map`].
    pub fn flush(&mut self) -> Result<RecordBatch, Error> {
        let result = self.call("flush", |job, store| job.call_flush(store))?;
        let schema = self.map_schema();
        self.batch_result("flush", result, &schema)
    }

    fn grouped(keys: &RecordBatch, values: &RecordBatch, group_ends: &[u32]) -> Result<wit::Grouped, Error> {
        let internal = |t: DataType| Error::Internal(format!("grouped column of type {t} is not a guest type"));
        Ok(wit::Grouped {
            keys: convert::to_wit_batch(keys).map_err(internal)?,
            values: convert::to_wit_batch(values).map_err(internal)?,
            group_ends: group_ends.to_vec(),
        })
    }

    /// Call `combine` on grouped map output; returns key then value columns.
    ///
    /// # Errors
    /// As [`GuestInstance::map`].
    pub fn combine(
        &mut self,
        keys: &RecordBatch,
        values: &RecordBatch,
        group_ends: &[u32],
    ) -> Result<RecordBatch, Error> {
        let grouped = Self::grouped(keys, values, group_ends)?;
        let result = self.call("combine", |job, store| job.call_combine(store, &grouped))?;
        let schema = self.map_schema();
        self.batch_result("combine", result, &schema)
    }

    /// Call `reduce` on grouped values; returns rows of the output schema.
    ///
    /// # Errors
    /// As [`GuestInstance::map`].
    pub fn reduce(
        &mut self,
        keys: &RecordBatch,
        values: &RecordBatch,
        group_ends: &[u32],
    ) -> Result<RecordBatch, Error> {
        let grouped = Self::grouped(keys, values, group_ends)?;
        let result = self.call("reduce", |job, store| job.call_reduce(store, &grouped))?;
        let schema = self.info.output_schema.clone();
        self.batch_result("reduce", result, &schema)
    }

    /// Wall time spent in the guest's calls so far, configure included.
    pub fn guest_time(&self) -> std::time::Duration {
        self.guest_time
    }

    /// The guest's counters so far.
    pub fn counters(&self) -> &BTreeMap<String, i64> {
        &self.store.data().counters
    }

    /// The captured log: log lines, then stdout and stderr, capped.
    pub fn log(&self) -> String {
        let state = self.store.data();
        let mut log = state.log.clone();
        for (name, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
            let bytes = pipe.kept();
            if !bytes.is_empty() {
                log.push_str(&format!("[{name}]\n{}", String::from_utf8_lossy(&bytes)));
            }
        }
        let dropped = self.log_dropped_bytes();
        if dropped > 0 {
            log.push_str(&format!(
                "[wmr: {dropped} log bytes dropped past the {}-byte limit; raise it with --max-log]\n",
                state.limits.max_log_bytes
            ));
        }
        log
    }

    /// Log bytes (log lines, stdout, stderr) dropped past the limit.
    pub fn log_dropped_bytes(&self) -> u64 {
        let state = self.store.data();
        state.log_dropped + state.stdout.dropped() + state.stderr.dropped()
    }
}
