//! # wmr: MapReduce with WebAssembly components
//!
//! The data path reads top to bottom through the modules:
//! [`data`] cuts input into splits and reads them; [`task`] runs a map
//! attempt (guest `map` via [`runtime`], then [`shuffle`] partitions, sorts
//! and combines into one shuffle object) or a reduce attempt (merge every
//! map output's partition, guest `reduce`, write Parquet); [`coordinator`]
//! schedules tasks and commits the first successful attempt of each;
//! [`worker`] runs attempts in slots on a dedicated compute pool; [`rpc`]
//! carries all of that between machines (gRPC); [`cli`] is the thin shell
//! over all of it.

pub mod cli;
pub mod coordinator;
pub mod data;
mod ids;
pub mod layout;
pub mod rpc;
pub mod runtime;
pub mod shuffle;
mod spawn;
pub mod task;
pub mod worker;

pub use ids::{AttemptId, JobId, ModuleDigest, Phase, TaskId, WorkerId};
