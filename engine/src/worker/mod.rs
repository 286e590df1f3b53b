//! Task slots and the compute pool. A slot asks the coordinator for an
//! assignment, runs the attempt (I/O on tokio, CPU on the [`ComputePool`]),
//! and reports how it ended, until the job leaves the running state: in
//! process for `wmr run` ([`run_slots`]), over gRPC for `wmr worker`
//! ([`remote`]).

mod pool;
pub mod remote;

use std::sync::Arc;

use tracing::{Instrument, debug, info_span, warn};

use crate::WorkerId;
use crate::coordinator::{Assignment, Coordinator, Outcome};
use crate::task::{self, JobContext};
pub use pool::{ComputePanic, ComputePool};

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

/// Compile (once per digest), validate and configure a job module on the
/// compute pool: compiling is CPU work.
///
/// # Errors
/// The outer error if the compute thread panicked, the inner one if the
/// module is not a valid wmr job or rejects its parameters.
pub async fn load_module(
    runtime: &Arc<crate::runtime::Runtime>,
    pool: &ComputePool,
    what: &str,
    bytes: bytes::Bytes,
    params: &[(String, String)],
    limits: crate::runtime::Limits,
) -> Result<Result<crate::runtime::JobModule, crate::runtime::Error>, ComputePanic> {
    let (runtime, what, params) = (runtime.clone(), what.to_string(), params.to_vec());
    pool.run(move || runtime.load(&what, &bytes, &params, limits)).await
}

/// Run one attempt and turn its result into an outcome.
pub async fn run_assignment(ctx: &JobContext, assignment: &Assignment) -> Outcome {
    let result = match assignment {
        Assignment::Map(a) => task::run_map(ctx, a).await.map(Outcome::Map),
        Assignment::Reduce(a) => task::run_reduce(ctx, a).await.map(Outcome::Reduce),
    };
    result.unwrap_or_else(|e| {
        let error = crate::runtime::limits::bounded_message(&error_chain(&e));
        warn!(%error, "attempt failed");
        Outcome::Failed {
            error,
            retryable: e.retryable(),
            bad_record: e.bad_record(),
        }
    })
}

/// Run `slots` slots against an in-process coordinator until its job ends.
pub async fn run_slots(coordinator: Arc<Coordinator>, ctx: JobContext, worker: WorkerId, slots: usize) {
    let runs = (0..slots.max(1)).map(|slot| {
        let coordinator = coordinator.clone();
        let ctx = ctx.clone();
        let worker = worker.clone();
        async move {
            while let Some(assignment) = coordinator.next_assignment(&worker).await {
                let (task, attempt) = match &assignment {
                    Assignment::Map(a) => (a.task, a.attempt),
                    Assignment::Reduce(a) => (a.task, a.attempt),
                };
                let span = info_span!("attempt", %worker, slot, %task, attempt = attempt.0);
                let outcome = run_assignment(&ctx, &assignment).instrument(span).await;
                let result = coordinator.report(task, attempt, outcome);
                debug!(%task, ?result, "reported");
            }
        }
    });
    futures::future::join_all(runs).await;
}
