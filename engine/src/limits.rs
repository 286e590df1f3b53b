//! Every sandbox limit and its default, in one place (`--help` quotes them).
//! Plain data below every other module: the runtime enforces the limits,
//! the coordinator checks a job's against its ceilings, the protocol and
//! the wire carry them, and none of those needs the runtime for it.

use std::time::Duration;

/// Default cap on a guest's linear memory: 1 GiB (`--max-memory`).
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 1 << 30;
/// Default wall-clock budget of one guest call: 60 s (`--max-call-time`).
pub const DEFAULT_MAX_CALL_TIME: Duration = Duration::from_secs(60);
/// Default cap on what a guest writes to its log (stdout, stderr and log
/// lines together) per attempt: 1 MiB (`--max-log`). Excess is dropped.
pub const DEFAULT_MAX_LOG_BYTES: usize = 1 << 20;
/// Default cap on what one task attempt writes (its shuffle object, or its
/// output file): 4 GiB (`--max-output`).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 4 << 30;
/// Default cap on one input record (a text line): 64 MiB (`--max-record`).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 64 << 20;
/// Largest module accepted (by `wmr run`, `UploadModule` and workers).
pub const MAX_MODULE_BYTES: usize = 256 << 20;
/// Default wall-clock limit on compiling one module: 60 s
/// (`--max-compile-time` on `run`, `coordinator` and `worker`).
pub const DEFAULT_MAX_COMPILE_TIME: Duration = Duration::from_secs(60);
/// Default cap on the memory compiling one module may use: 2 GiB
/// (`--max-compile-memory`).
pub const DEFAULT_MAX_COMPILE_MEMORY_BYTES: u64 = 2 << 30;
/// Most distinct counters a guest may name in one attempt; past it, new
/// names are dropped (and counted in [`COUNTERS_DROPPED`]).
pub const MAX_GUEST_COUNTERS: usize = 128;
/// Longest counter name a guest may use, in bytes.
pub const MAX_COUNTER_NAME_BYTES: usize = 200;
/// The engine's counter of guest counter updates dropped by the caps.
pub const COUNTERS_DROPPED: &str = "wmr.counters.dropped";
/// Longest error or panic message kept from a guest (or a worker's report),
/// in bytes; the rest is cut.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `text` cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), marked
/// as cut when it was.
pub fn bounded_message(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end)
}

/// How often the epoch ticker advances; the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The limits applied to every guest instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest linear memory a guest may grow to, in bytes.
    pub max_memory_bytes: u64,
    /// Longest one guest call (map, combine, reduce of one batch) may run.
    pub max_call_time: Duration,
    /// Most log bytes kept per attempt.
    pub max_log_bytes: usize,
    /// Most bytes one attempt may write (shuffle object or output file).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Longest input record (a text line) a map task reads, in bytes.
    #[serde(default = "default_max_record")]
    pub max_record_bytes: u64,
}

fn default_max_record() -> u64 {
    DEFAULT_MAX_RECORD_BYTES
}

fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_call_time: DEFAULT_MAX_CALL_TIME,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_message("short"), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded_message(&long);
        assert!(cut.len() < MAX_MESSAGE_BYTES + 32, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("... ({} bytes cut)", MAX_MESSAGE_BYTES)),
            "{cut}"
        );
    }
}

impl Limits {
    /// The call-time limit in epoch ticks (at least one).
    pub(crate) fn call_ticks(&self) -> u64 {
        (self.max_call_time.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// Bounds on compiling one module. They belong to whoever runs the process
/// that compiles (the coordinator's and workers' operators), not to the job:
/// a job can't raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Longest compiling may take, wall clock.
    pub max_time: Duration,
    /// Most data memory the compiler process may use, in bytes.
    pub max_memory_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_time: DEFAULT_MAX_COMPILE_TIME,
            max_memory_bytes: DEFAULT_MAX_COMPILE_MEMORY_BYTES,
        }
    }
}
