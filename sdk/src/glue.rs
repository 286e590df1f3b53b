//! The glue between the WIT exports and a [`Job`](crate::Job): the configured
//! job instance, counters and log lines flushed once per call, and the panic
//! hook that tells the host what went wrong before the guest traps.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::Job;
use crate::bindings::wmr::job::host;
use crate::bindings::wmr::job::types::{Batch, Field as WitField, Grouped, GuestError, JobInfo};
use crate::columnar::Records;
use crate::columns::Columns;
use crate::combiner::CombineFn;
use crate::emit::{Emit, Output};
use crate::record::{InputBatch, Params, forget_coded, receive_dictionaries, with_dictionaries};
use crate::values::Values;

/// Builds a job from its parameters.
pub type ConfigureFn<J> = fn(&Params) -> Result<J, String>;

struct State {
    job: Rc<dyn Any>,
    output_names: Vec<String>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    static COUNTERS: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
    static CURRENT_ROW: Cell<Option<u32>> = const { Cell::new(None) };
    /// The map output held back between `map` calls (an `Emit<J::Key, J::Value>`).
    static HELD: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    /// Set once in-mapper combining was found not to pay in this task (each
    /// task attempt has its own instance): the rest of its pairs go
    /// straight to the host, as DuckDB and Spark stop partial aggregation.
    static GROUPING_OFF: Cell<bool> = const { Cell::new(false) };
}

/// Add `delta` to the job counter `name`. Counters are summed over every
/// committed task and shown with the job's results.
///
/// ```no_run
/// wmr_sdk::count("lines.empty", 1);
/// ```
pub fn count(name: &str, delta: i64) {
    COUNTERS.with_borrow_mut(|c| match c.get_mut(name) {
        Some(v) => *v += delta,
        None => {
            c.insert(name.to_string(), delta);
        }
    })
}

/// The input row a panic is reported with (`None`: no one row).
pub(crate) fn set_current_row(row: Option<usize>) {
    CURRENT_ROW.set(row.and_then(|row| u32::try_from(row).ok()));
}

fn flush_counters() {
    let deltas: Vec<(String, i64)> = COUNTERS.with_borrow_mut(|c| c.drain().filter(|(_, v)| *v != 0).collect());
    if !deltas.is_empty() {
        host::add_counters(&deltas);
    }
}

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Detail for debugging a job.
    Debug,
    /// Normal progress.
    Info,
    /// Something odd that did not stop the job.
    Warn,
    /// Something failed.
    Error,
}

/// Write a line to this task's log, which the engine captures (capped in size).
///
/// ```no_run
/// wmr_sdk::log(wmr_sdk::LogLevel::Info, "starting");
/// ```
pub fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Debug => host::LogLevel::Debug,
        LogLevel::Info => host::LogLevel::Info,
        LogLevel::Warn => host::LogLevel::Warn,
        LogLevel::Error => host::LogLevel::Error,
    };
    host::log(level, message);
}

fn with_job<J: Job, R>(f: impl FnOnce(&J, &[String]) -> R) -> Result<R, GuestError> {
    STATE.with_borrow(
        |state| match state.as_ref().and_then(|s| s.job.downcast_ref::<J>().map(|j| (j, s))) {
            Some((job, s)) => Ok(f(job, &s.output_names)),
            None => Err(GuestError {
                message: "the job was called before configure".into(),
                row: None,
            }),
        },
    )
}

fn finish<R>(result: Result<R, GuestError>) -> Result<R, GuestError> {
    CURRENT_ROW.set(None);
    flush_counters();
    result
}

/// The `configure` export.
pub fn configure<J: Job>(params: Vec<(String, String)>, build: ConfigureFn<J>) -> Result<JobInfo, String> {
    std::panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_string(),
            None => match info.payload().downcast_ref::<String>() {
                Some(s) => s.clone(),
                None => "panic with a non-string payload".to_string(),
            },
        };
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        host::report_panic(&format!("{message}{location}"), CURRENT_ROW.get());
    }));
    let job = build(&Params::new(params))?;
    let output_names = job.output_names();
    let output_types = J::Output::data_types();
    if output_names.len() != output_types.len() {
        return Err(format!(
            "output_names gives {} names for {} output columns",
            output_names.len(),
            output_types.len()
        ));
    }
    let info = JobInfo {
        name: job.name(),
        key_types: J::Key::data_types(),
        value_types: J::Value::data_types(),
        output: output_names
            .iter()
            .zip(output_types)
            .map(|(name, data_type)| WitField {
                name: name.clone(),
                data_type,
                nullable: true,
            })
            .collect(),
        combines: J::COMBINES,
        total_order: J::TOTAL_ORDER,
    };
    STATE.set(Some(State {
        job: Rc::new(job),
        output_names,
    }));
    Ok(info)
}

/// The `map` export.
pub fn map<J: Job>(source: String, mut input: Batch) -> Result<Batch, GuestError> {
    if let Err(message) = receive_dictionaries(&mut input) {
        return finish(Err(GuestError { message, row: None }));
    }
    let result = finish(with_job::<J, _>(|job, _| {
        with_dictionaries(|dictionaries| {
            let batch = InputBatch::new(&source, &input, dictionaries);
            let mut out = take_held::<J>();
            job.map_batch(&Records::new(&batch), &mut out);
            CURRENT_ROW.set(None);
            forget_coded();
            if out.is_full() {
                if !out.grouping_pays() {
                    GROUPING_OFF.set(true);
                }
                out.finish()
            } else {
                // Keep combining across calls: a task then returns one row per
                // distinct key, however many batches it reads.
                HELD.set(Some(Box::new(out)));
                Emit::<J::Key, J::Value>::new(None).finish()
            }
        })
    }));
    forget_coded();
    result
}

/// The `flush` export: whatever `map` held back.
pub fn flush<J: Job>() -> Result<Batch, GuestError> {
    finish(with_job::<J, _>(|_, _| take_held::<J>().finish()))
}

/// The map output held back by earlier `map` calls, or a new one.
fn take_held<J: Job>() -> Emit<J::Key, J::Value> {
    match HELD.take().map(|held| held.downcast::<Emit<J::Key, J::Value>>()) {
        Some(Ok(held)) => *held,
        _ => Emit::new(combiner::<J>()),
    }
}

/// `combine` of the configured job for the in-mapper combiner, holding the
/// job itself (it is called for every pair emitted); `None` when the job
/// does not combine or combining stopped paying.
fn combiner<J: Job>() -> Option<CombineFn<J::Key, J::Value>> {
    if !J::COMBINES || GROUPING_OFF.get() {
        return None;
    }
    let job = STATE.with_borrow(|state| state.as_ref().and_then(|s| s.job.clone().downcast::<J>().ok()))?;
    Some(Box::new(move |key, held, value| {
        job.combine(key, Values::taking(&mut [held, value]))
    }))
}

fn groups(input: &Grouped) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut start = 0usize;
    input.group_ends.iter().enumerate().map(move |(g, &end)| {
        let end = end as usize;
        let range = (g, start, end);
        start = end;
        range
    })
}

fn bad_group(g: usize) -> GuestError {
    GuestError {
        message: format!("the host sent an unreadable key in group {g}"),
        row: None,
    }
}

/// The `combine` export.
pub fn combine<J: Job>(input: Grouped) -> Result<Batch, GuestError> {
    finish(
        with_job::<J, _>(|job, _| {
            let mut keys = crate::columns::builders_for::<J::Key>();
            let mut values = crate::columns::builders_for::<J::Value>();
            let mut rows = 0;
            for (g, start, end) in groups(&input) {
                CURRENT_ROW.set(Some(start as u32));
                let key = J::Key::read(&input.keys.columns, g).ok_or_else(|| bad_group(g))?;
                let combined = job.combine(&key, Values::rows(&input.values.columns, start, end));
                key.append(&mut keys);
                combined.append(&mut values);
                rows += 1;
            }
            Ok(crate::emit::batch_of(keys.into_iter().chain(values), rows))
        })
        .and_then(|r| r),
    )
}

/// The `reduce` export.
pub fn reduce<J: Job>(input: Grouped) -> Result<Batch, GuestError> {
    finish(
        with_job::<J, _>(|job, names| {
            let mut out = Output::<J::Output>::new();
            for (g, start, end) in groups(&input) {
                CURRENT_ROW.set(Some(start as u32));
                let key = J::Key::read(&input.keys.columns, g).ok_or_else(|| bad_group(g))?;
                job.reduce(key, Values::rows(&input.values.columns, start, end), &mut out);
            }
            Ok(out.finish(names))
        })
        .and_then(|r| r),
    )
}
