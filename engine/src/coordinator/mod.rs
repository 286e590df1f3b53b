//! Scheduling and committing jobs. [`job`] is the pure state machine of one
//! job, [`cluster`] of many jobs and workers; [`service`] is the coordinator
//! every mode runs (journal, waiting, committing), [`grpc`] its gRPC
//! services, and [`status`] makes a job's status document. [`commit_output`]
//! moves reduce outputs from their attempt paths into the output directory,
//! then writes the `_SUCCESS` manifest, then removes the scratch directory.

pub mod access;
pub mod ceilings;
pub mod cluster;
pub mod grpc;
pub mod job;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod service;
pub mod status;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};

use crate::data::Location;
use crate::data::output::{MANIFEST_NAME, Manifest, OutputFile};
pub use job::{Job, JobSpec, JobState};

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Moving output into place or writing the manifest failed.
    #[error("committing the output of job {job} failed")]
    Commit {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: crate::data::Error,
    },
    /// Our own bug.
    #[error("internal error in the coordinator: {0}; please report this as a bug")]
    Internal(String),
}

/// Commit the output of `job`, whose reduces have all committed: move each
/// committed reduce output into the output directory, write `_SUCCESS`
/// listing them, and remove the scratch directory. Safe to repeat after an
/// interruption.
///
/// # Errors
/// [`Error::Commit`] if the store refuses a move or the manifest.
pub async fn commit_output(job: &Job, job_name: &str) -> Result<Manifest, Error> {
    let commit_err = |source| Error::Commit {
        job: job.spec.id.to_string(),
        source,
    };
    let out = Location::parse(&job.spec.output).map_err(commit_err)?;
    let mut files = Vec::new();
    let layout = job.spec.layout();
    for (partition, reduce) in job.reduce_outputs.iter().enumerate() {
        let partition = partition as u32;
        let (Some(reduce), Some(file)) = (reduce, job.reduce_file(partition)) else {
            return Err(Error::Internal(format!(
                "committing with reduce {partition} not committed"
            )));
        };
        // The path is the coordinator's own, derived from the committing
        // attempt: nothing a worker said decides what is moved.
        let from = Location::parse(&file).map_err(commit_err)?;
        let name = layout.final_name(partition);
        let to = out.child(&name);
        match from.store.rename(&from.path, &to.path).await {
            Ok(()) => {}
            // Already moved by an earlier, interrupted commit.
            Err(object_store::Error::NotFound { .. }) if to.store.head(&to.path).await.is_ok() => {}
            Err(e) => {
                return Err(commit_err(crate::data::Error::Io {
                    what: from.display.clone(),
                    action: "moving",
                    source: e,
                }));
            }
        }
        files.push(OutputFile {
            name,
            rows: reduce.rows,
            bytes: reduce.bytes,
            xxh3: format!("{:016x}", reduce.checksum),
        });
    }
    let manifest = Manifest {
        job: job.spec.id.to_string(),
        name: job_name.to_string(),
        format: job.spec.format,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    let success = out.child(MANIFEST_NAME);
    success
        .store
        .put(&success.path, PutPayload::from(json))
        .await
        .map_err(|e| {
            commit_err(crate::data::Error::Io {
                what: success.display.clone(),
                action: "writing",
                source: e,
            })
        })?;
    remove_all(&Location::parse(&job.spec.work_dir).map_err(commit_err)?)
        .await
        .map_err(commit_err)?;
    Ok(manifest)
}

/// Delete every object under `dir` (and, for a local directory, the
/// directories left empty).
///
/// # Errors
/// If listing or deleting fails.
pub async fn remove_all(dir: &Location) -> Result<(), crate::data::Error> {
    let listed: Vec<_> = dir
        .store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .map_err(|e| crate::data::Error::io(&dir.display, "listing", e))?;
    for meta in listed {
        dir.store
            .delete(&meta.location)
            .await
            .map_err(|e| crate::data::Error::io(&dir.display, "deleting in", e))?;
    }
    if dir.is_local() {
        let path = std::path::PathBuf::from(format!("/{}", dir.path));
        // Leftover empty directories are harmless; failing to remove them
        // must not fail a job whose output is already committed.
        let _ = tokio::fs::remove_dir_all(&path).await;
        // And the `_temporary` parent once no other job uses it.
        if let Some(parent) = path
            .parent()
            .filter(|p| p.file_name().is_some_and(|n| n == crate::layout::SCRATCH_DIR))
        {
            let _ = tokio::fs::remove_dir(parent).await;
        }
    }
    Ok(())
}
