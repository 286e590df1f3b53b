//! End-to-end tests: the real `wmr` binary, real guest components from
//! `target/guests/` (built by `cargo xtask guests`), real files.
#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test, with its location")]

mod harness;

/// Bad input of every kind, refused or explained.
mod bad_input;
/// `wmr run` flags, errors and exit codes.
mod cli;
/// The cluster harness (real coordinator and worker processes, a test CA),
/// and jobs on a healthy cluster.
mod cluster;
/// Every example guest against a sequential reference written here.
mod examples;
/// Workers that die, freeze or straggle; jobs cancelled; data gone bad.
mod failures;
/// Hostile guests: every misbehaviour contained.
mod hostile;
/// Text input edge cases: empty files, CRLF, long lines, invalid UTF-8.
mod input;
/// Jobs in Python and JavaScript: contained, scaffolded, built, compiled once.
mod languages;
/// The memory budget: spills, merge passes, record limits, multipart uploads.
mod memory;
/// Operating a cluster: status page, metrics, draining, CLI comforts.
mod operate;
/// Coordinators that die, restart, cannot write their journal or are replaced.
mod restarts;
/// TLS, tokens, and what a coordinator refuses to do for the network.
mod transport;
/// The trust boundary: roles, tenants, forged reports.
mod trust;
