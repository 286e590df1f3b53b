//! Exit codes, defined once.

/// The job ran and succeeded (a broken stdout pipe counts too).
pub const SUCCESS: u8 = 0;
/// The job ran and failed, or was cancelled.
pub const JOB_FAILED: u8 = 1;
/// Usage or input error: bad flag, missing input, a module that is not a wmr job.
pub const USAGE: u8 = 2;
/// Infrastructure: storage refused, coordinator unreachable.
pub const INFRASTRUCTURE: u8 = 3;

/// The table shown in `--help`.
pub const HELP: &str = "Exit codes: 0 success; 1 the job ran and failed or was cancelled; \
2 usage or input error (bad flag, missing input, a module that is not a wmr job); \
3 infrastructure (storage refused, coordinator unreachable).";
