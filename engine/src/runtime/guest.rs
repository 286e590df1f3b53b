//! One guest: the per-store state its host calls see (an empty WASI, the
//! limits, counters and the captured log), and [`GuestInstance`], the live
//! instance of one task attempt with its calls.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, wmr::job::host, wmr::job::types as wit};
use super::capture::CappedPipe;
use super::dictionary;
use super::{
    CANCEL_CHECK_TICKS, CancelFlag, Error, GuestError, JobInfo, JobModule, Limits, Runtime, convert, limits, words,
};

/// Per-store state: the empty WASI context, limits, counters and the log.
pub(super) struct GuestState {
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

    fn count_words(&mut self, text: String) -> Result<host::WordCounts, String> {
        words::count_words(&text).map(|(words, counts)| host::WordCounts { words, counts })
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

impl Runtime {
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

/// How many times instantiating is tried when the host, not the module,
/// fails it.
const INSTANTIATE_TRIES: u32 = 3;

impl JobModule {
    /// A fresh instance for one task attempt, configured with the job's
    /// parameters.
    ///
    /// # Errors
    /// As [`Runtime::load`].
    pub fn instantiate(&self, runtime: &Runtime, cancel: &CancelFlag) -> Result<GuestInstance, Error> {
        let mut tries = 0;
        let (store, job) = loop {
            let mut store = runtime.new_store(self.limits, cancel.clone());
            match self.compiled.pre.instantiate(&mut store) {
                Ok(job) => break (store, job),
                // The host failed, not the module: wasmtime maps the
                // module's memory image from a memfd it makes on first
                // use, which the kernel can refuse for a moment.
                Err(e) if e.chain().any(|c| c.is::<std::io::Error>()) => {
                    tries += 1;
                    if tries == INSTANTIATE_TRIES {
                        return Err(Error::HostResources {
                            what: self.what.clone(),
                            reason: format!("{e:#}"),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10 << tries));
                }
                Err(e) => {
                    return Err(Error::InvalidModule {
                        what: self.what.clone(),
                        reason: format!("instantiating: {e:#}"),
                    });
                }
            }
        };
        let mut instance = GuestInstance {
            store,
            job,
            info: self.info.clone(),
            map_schema: None,
            sent_dictionaries: dictionary::SentDictionaries::default(),
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
    /// The dictionaries this instance's `map` has been sent.
    sent_dictionaries: dictionary::SentDictionaries,
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
        let wit_batch = convert::to_wit_batch_with(input, Some(&mut self.sent_dictionaries))
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
