//! # wmr: MapReduce with WebAssembly components
//!
//! The data path reads top to bottom through the modules:
//! [`data`] cuts input into splits and reads them; [`task`] runs a map
//! attempt (guest `map` via [`runtime`], then [`shuffle`] partitions, sorts
//! and combines into one shuffle object) or a reduce attempt (merge every
//! map output's partition, guest `reduce`, write Parquet); [`coordinator`]
//! schedules tasks and commits the first successful attempt of each;
//! [`worker`] runs attempts in slots on a dedicated compute pool; the two
//! speak [`protocol`] and count [`attempt_metrics`] alike, and neither
//! imports the other; [`rpc`] is the wire beneath both (gRPC): it knows
//! [`protocol`] and [`identity`], not the coordinator or the worker, and is
//! served by `coordinator::grpc` and called by `worker::remote` and [`cli`],
//! the thin shell over all of it.

pub mod attempt_metrics;
pub mod cli;
pub mod compute;
pub mod coordinator;
pub mod data;
pub mod identity;
mod ids;
pub mod layout;
pub mod limits;
pub mod project;
pub mod protocol;
pub mod rpc;
pub mod runtime;
pub mod shuffle;
mod spawn;
pub mod task;
pub mod web;
pub mod worker;

pub use ids::{AttemptId, JobId, ModuleDigest, Phase, TaskId, WorkerId};

/// An error and its causes as one line: `outer: cause: cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their cause in their own message.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}
