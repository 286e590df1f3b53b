//! Where every object lives. One place owns every path the engine reads or
//! writes by convention: the coordinator's store (modules, journal) and each
//! job's scratch directory, attempt outputs and final file names. The
//! coordinator derives every attempt's paths from here and hands them to the
//! worker; it never takes a path back from a worker.
//!
//! ```text
//! {store}/modules/{sha256}.wasm                 uploaded job modules
//! {store}/journal/{seq:020}.json                the coordinator's journal
//! {store}/journal/{seq:020}.snapshot.json       a snapshot of every job
//! {store}/lease/{epoch:020}.json                which coordinator holds the store
//! {output}/_temporary/{job}/                    a job's scratch directory
//!     map-{index:05}-{attempt}.shuffle          a map attempt's shuffle object
//!     reduce-{index:05}-{attempt}/part-...      a reduce attempt's output
//! {output}/part-{index:05}.{parquet|txt}        committed output
//! {output}/_SUCCESS                             the manifest, written last
//!                                               (data::output::MANIFEST_NAME)
//! ```

use crate::data::Location;
use crate::data::output::OutputFormat;
use crate::{AttemptId, JobId, ModuleDigest};

/// The directory, under the store, of uploaded modules.
const MODULES_DIR: &str = "modules";
/// The directory, under the store, of the journal.
const JOURNAL_DIR: &str = "journal";
/// The directory, under the store, of the coordinators' lease objects.
const LEASE_DIR: &str = "lease";
/// The directory, under an output, of running jobs' scratch data.
pub const SCRATCH_DIR: &str = "_temporary";

/// The coordinator's own store: modules and journal.
#[derive(Debug, Clone)]
pub struct StoreLayout {
    root: Location,
}

impl StoreLayout {
    /// The layout of the store at `root`.
    pub fn new(root: Location) -> Self {
        StoreLayout { root }
    }

    /// The store itself.
    pub fn root(&self) -> &Location {
        &self.root
    }

    /// Where the module with `digest` is kept.
    pub fn module(&self, digest: &ModuleDigest) -> Location {
        self.root.child(&format!("{MODULES_DIR}/{}.wasm", digest.as_str()))
    }

    /// The journal's directory.
    pub fn journal_dir(&self) -> Location {
        self.root.child(JOURNAL_DIR)
    }

    /// The directory of the lease objects by which one coordinator holds
    /// the store.
    pub fn lease_dir(&self) -> Location {
        self.root.child(LEASE_DIR)
    }
}

/// One job's paths: its scratch directory, every attempt's output, and the
/// committed names.
#[derive(Debug, Clone, Copy)]
pub struct JobLayout<'a> {
    /// The output directory, as the job gave it.
    pub output: &'a str,
    /// The scratch directory ([`JobLayout::scratch_for`]).
    pub scratch: &'a str,
    /// The output format, which names the files.
    pub format: OutputFormat,
}

impl JobLayout<'_> {
    /// The scratch directory of job `id` writing to `output`.
    pub fn scratch_for(output: &Location, id: &JobId) -> String {
        output.child(&format!("{SCRATCH_DIR}/{id}")).display
    }

    /// The shuffle object of attempt `attempt` of map task `index`.
    pub fn shuffle_object(&self, index: u32, attempt: AttemptId) -> String {
        format!("{}/map-{index:05}-{}.shuffle", self.scratch, attempt.0)
    }

    /// The output file of attempt `attempt` of reduce task `index`.
    pub fn reduce_output(&self, index: u32, attempt: AttemptId) -> String {
        format!(
            "{}/reduce-{index:05}-{}/{}",
            self.scratch,
            attempt.0,
            self.format.file_name(index)
        )
    }

    /// The committed name of partition `index`'s file.
    pub fn final_name(&self, index: u32) -> String {
        self.format.file_name(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_write_only_under_their_jobs_scratch_directory() {
        let out = Location::parse("/data/out").expect("location");
        let id = JobId::generate();
        let scratch = JobLayout::scratch_for(&out, &id);
        assert_eq!(scratch, format!("/data/out/_temporary/{id}"));
        let layout = JobLayout {
            output: "/data/out",
            scratch: &scratch,
            format: OutputFormat::Text,
        };
        assert_eq!(
            layout.shuffle_object(3, AttemptId(7)),
            format!("{scratch}/map-00003-7.shuffle")
        );
        assert!(
            layout
                .reduce_output(2, AttemptId(9))
                .starts_with(&format!("{scratch}/reduce-00002-9/"))
        );
        let store = StoreLayout::new(Location::parse("/srv/store").expect("location"));
        let digest = ModuleDigest::of(b"m");
        assert_eq!(
            store.module(&digest).display,
            format!("/srv/store/modules/{}.wasm", digest.as_str())
        );
        assert_eq!(store.journal_dir().display, "/srv/store/journal");
    }
}
