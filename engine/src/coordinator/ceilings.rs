//! The operator's ceilings on what one job may ask for. A submitter chooses
//! its job's sandbox limits, memory budget and size, but never past these:
//! a submit asking for more is refused with a line naming the ceiling and
//! its flag, before anything of the job runs.

use std::time::Duration;

use crate::limits::Limits;

/// The most one job may ask for on this coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// Guest linear memory (`--max-memory`).
    pub memory_bytes: u64,
    /// One guest call's wall time (`--max-call-time`).
    pub call_time: Duration,
    /// What one attempt writes (`--max-output`).
    pub output_bytes: u64,
    /// One attempt's guest log (`--max-log`).
    pub log_bytes: u64,
    /// One input record (`--max-record`).
    pub record_bytes: u64,
    /// One task's memory budget (`--task-memory`).
    pub task_memory_bytes: u64,
    /// Reduce tasks (`--reducers`).
    pub reducers: u32,
    /// Map tasks the input may make.
    pub map_tasks: u64,
    /// The job module's size.
    pub module_bytes: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            memory_bytes: 4 << 30,
            call_time: Duration::from_secs(600),
            output_bytes: 64 << 30,
            log_bytes: 16 << 20,
            record_bytes: 1 << 30,
            task_memory_bytes: 4 << 30,
            reducers: 10_000,
            map_tasks: 100_000,
            module_bytes: crate::limits::MAX_MODULE_BYTES as u64,
        }
    }
}

/// A request over a ceiling.
#[derive(Debug, thiserror::Error)]
#[error("{what} {asked} is over this coordinator's ceiling of {ceiling} ({flag}); {fix}")]
pub struct OverCeiling {
    /// What was asked for, as the user gave it (a flag, or a count).
    pub what: String,
    /// How much, shown.
    pub asked: String,
    /// The ceiling, shown.
    pub ceiling: String,
    /// The operator's flag that sets it.
    pub flag: &'static str,
    /// What the submitter can do.
    pub fix: &'static str,
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

fn over(what: &str, asked: String, ceiling: String, flag: &'static str) -> OverCeiling {
    OverCeiling {
        what: what.to_string(),
        asked,
        ceiling,
        flag,
        fix: "ask for less",
    }
}

impl Ceilings {
    /// No ceilings but the hard module size: for `wmr run`, where the user
    /// acts with their own rights.
    pub fn unlimited() -> Self {
        Ceilings {
            memory_bytes: u64::MAX,
            call_time: Duration::MAX,
            output_bytes: u64::MAX,
            log_bytes: u64::MAX,
            record_bytes: u64::MAX,
            task_memory_bytes: u64::MAX,
            reducers: u32::MAX,
            map_tasks: u64::MAX,
            module_bytes: crate::limits::MAX_MODULE_BYTES as u64,
        }
    }

    /// Check a job's sandbox limits, task memory and reducers.
    ///
    /// # Errors
    /// The first request over its ceiling.
    pub fn check_job(&self, limits: &Limits, task_memory: u64, reducers: u32) -> Result<(), OverCeiling> {
        let sizes = [
            (
                "--max-memory",
                limits.max_memory_bytes,
                self.memory_bytes,
                "--ceiling-memory",
            ),
            (
                "--max-output",
                limits.max_output_bytes,
                self.output_bytes,
                "--ceiling-output",
            ),
            (
                "--max-log",
                limits.max_log_bytes as u64,
                self.log_bytes,
                "--ceiling-log",
            ),
            (
                "--max-record",
                limits.max_record_bytes,
                self.record_bytes,
                "--ceiling-record",
            ),
            (
                "--task-memory",
                task_memory,
                self.task_memory_bytes,
                "--ceiling-task-memory",
            ),
        ];
        for (what, asked, ceiling, flag) in sizes {
            if asked > ceiling {
                return Err(over(what, size(asked), size(ceiling), flag));
            }
        }
        if limits.max_call_time > self.call_time {
            return Err(over(
                "--max-call-time",
                humantime::format_duration(limits.max_call_time).to_string(),
                humantime::format_duration(self.call_time).to_string(),
                "--ceiling-call-time",
            ));
        }
        if reducers > self.reducers {
            return Err(over(
                "--reducers",
                reducers.to_string(),
                self.reducers.to_string(),
                "--ceiling-reducers",
            ));
        }
        Ok(())
    }

    /// Check how many map tasks the input made.
    ///
    /// # Errors
    /// If they are more than the ceiling.
    pub fn check_map_tasks(&self, tasks: usize) -> Result<(), OverCeiling> {
        if tasks as u64 > self.map_tasks {
            return Err(OverCeiling {
                what: "the input's map task count".into(),
                asked: tasks.to_string(),
                ceiling: self.map_tasks.to_string(),
                flag: "--ceiling-map-tasks",
                fix: "give a larger --split-size or less input",
            });
        }
        Ok(())
    }

    /// Check a module's size.
    ///
    /// # Errors
    /// If it is over the ceiling.
    pub fn check_module(&self, bytes: u64) -> Result<(), OverCeiling> {
        if bytes > self.module_bytes {
            return Err(OverCeiling {
                what: "the job module".into(),
                asked: size(bytes),
                ceiling: size(self.module_bytes),
                flag: "--ceiling-module",
                fix: "build a smaller module (release mode, stripped)",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_over_a_ceiling_names_it_and_its_flag() {
        let c = Ceilings::default();
        assert!(c.check_job(&Limits::default(), 128 << 20, 4).is_ok());
        let greedy = Limits {
            max_memory_bytes: 64 << 30,
            ..Limits::default()
        };
        let e = c.check_job(&greedy, 128 << 20, 4).expect_err("over").to_string();
        assert_eq!(
            e,
            "--max-memory 64.0 GiB is over this coordinator's ceiling of 4.0 GiB (--ceiling-memory); ask for less"
        );
        let slow = Limits {
            max_call_time: Duration::from_secs(86_400),
            ..Limits::default()
        };
        let e = c.check_job(&slow, 128 << 20, 4).expect_err("over").to_string();
        assert!(
            e.starts_with("--max-call-time 1day is over this coordinator's ceiling of 10m"),
            "{e}"
        );
        assert!(c.check_job(&Limits::default(), 128 << 20, 20_000).is_err());
        assert!(c.check_job(&Limits::default(), 8 << 30, 4).is_err());
        assert!(c.check_map_tasks(100_000).is_ok());
        let e = c.check_map_tasks(100_001).expect_err("over").to_string();
        assert!(e.contains("(--ceiling-map-tasks); give a larger --split-size"), "{e}");
        assert!(c.check_module(300 << 20).is_err());
    }
}
