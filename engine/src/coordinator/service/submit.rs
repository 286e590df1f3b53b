//! Submitting a job to the service: uploading its module, checking it
//! (limits against the ceilings, data against the allowed prefixes, the
//! module's `configure`), planning its splits, reserving its output, and
//! accepting it into the journal and the cluster.

use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use tracing::info;

use super::{ErrorKind, Service, ServiceError, lock};
use crate::coordinator::access::DataAccess;
use crate::coordinator::ceilings::Ceilings;
use crate::coordinator::cluster::ClusterJob;
use crate::coordinator::journal::Event;
use crate::coordinator::{Job, JobSpec};
use crate::data::output::OutputFormat;
use crate::data::{Location, MapInput, plan_map_inputs};
use crate::error_chain;
use crate::layout::JobLayout;
use crate::limits::{Limits, MAX_MODULE_BYTES};
use crate::protocol::JobRef;
use crate::runtime::JobModule;
use crate::task::load_module;
use crate::{JobId, ModuleDigest};

/// How many checked modules stay compiled for the workers of this process.
const WARM_MODULES: usize = 4;
/// The longest `configure` may run at submit, whatever the job's limit.
const CONFIGURE_AT_SUBMIT: Duration = Duration::from_secs(10);
/// What submitted jobs may use and ask for: the operator's data prefixes
/// and ceilings.
#[derive(Debug, Clone)]
pub struct SubmitPolicy {
    /// Where jobs' data may be.
    pub access: DataAccess,
    /// The most a job may ask for.
    pub ceilings: Ceilings,
}
/// A job as submitted: what a client asks for.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// The uploaded module.
    pub module: ModuleDigest,
    /// How the submitter names it (a path, say) in messages; empty: by digest.
    pub module_name: String,
    /// Inputs: paths, globs or URLs.
    pub inputs: Vec<String>,
    /// The output directory.
    pub output: String,
    /// Reduce partitions.
    pub reducers: u32,
    /// Split size in bytes (0: the default).
    pub split_size: u64,
    /// Output format.
    pub format: OutputFormat,
    /// Parameters for the job's configure.
    pub params: Vec<(String, String)>,
    /// Attempts per task (0: the default).
    pub max_attempts: u32,
    /// Sandbox limits.
    pub limits: Limits,
    /// Replace a non-empty output.
    pub overwrite: bool,
    /// Backup attempts for slow tasks.
    pub speculation: bool,
    /// Task memory budget in bytes (0: the default).
    pub task_memory: u64,
    /// Records per map task that may be skipped.
    pub skip_bad_records: u32,
    /// Range-partition for globally sorted output.
    pub total_order: bool,
}
impl Service {
    /// Store a module by content; returns its digest and size.
    ///
    /// # Errors
    /// Over the module ceiling, or a store failure.
    pub async fn upload_module(&self, bytes: bytes::Bytes) -> Result<(ModuleDigest, u64), ServiceError> {
        let size = bytes.len() as u64;
        self.check_module_size(size)?;
        let digest = ModuleDigest::of(&bytes);
        let object = self.store.module(&digest);
        if object.store.head(&object.path).await.is_err() {
            object
                .store
                .put(&object.path, PutPayload::from(bytes))
                .await
                .map_err(|e| ServiceError::new(ErrorKind::Unavailable, format!("storing module {digest}: {e}")))?;
        }
        Ok((digest, size))
    }

    /// Refuse a module over the operator's ceiling or the hard limit.
    ///
    /// # Errors
    /// [`ErrorKind::TooLarge`] naming the bound.
    pub fn check_module_size(&self, size: u64) -> Result<(), ServiceError> {
        self.policy
            .ceilings
            .check_module(size)
            .map_err(|e| ServiceError::new(ErrorKind::TooLarge, e.to_string()))?;
        if size > MAX_MODULE_BYTES as u64 {
            return Err(ServiceError::new(
                ErrorKind::TooLarge,
                format!(
                    "the module is larger than {} MiB, the most a coordinator accepts",
                    MAX_MODULE_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Check, plan and accept a job for `owner`; returns its id. Nothing of
    /// the job runs, and nothing in its output is deleted, until every
    /// check has passed.
    ///
    /// # Errors
    /// A bad request, data outside the allowed prefixes, a limit over its
    /// ceiling, a module that does not load or rejects its parameters, an
    /// output in use or not empty, or a store that fails.
    pub async fn submit(&self, r: SubmitRequest, owner: String) -> Result<JobId, ServiceError> {
        let invalid = |e: &dyn std::error::Error| ServiceError::invalid(e);
        if r.inputs.is_empty() {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                "no inputs; give at least one --input",
            ));
        }
        if r.reducers == 0 || r.reducers > 100_000 {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                format!("--reducers {} is out of range; use 1 to 100000", r.reducers),
            ));
        }
        let task_memory = if r.task_memory == 0 {
            crate::coordinator::job::DEFAULT_TASK_MEMORY
        } else {
            r.task_memory
        };
        self.policy
            .ceilings
            .check_job(&r.limits, task_memory, r.reducers)
            .map_err(|e| invalid(&e))?;
        // Where the data is: the output and every input's base now, every
        // file the inputs expand to once planned.
        let output = Location::parse(&r.output).map_err(|e| invalid(&e))?;
        let access = &self.policy.access;
        access.check_output(&r.output, &output).map_err(|e| invalid(&e))?;
        for input in &r.inputs {
            let base = Location::parse(crate::data::input_base(input)).map_err(|e| invalid(&e))?;
            access.check_input(input, &base).map_err(|e| invalid(&e))?;
        }
        crate::data::check_output_outside(&r.inputs, &output).map_err(|e| invalid(&e))?;
        let id = JobId::generate();
        let claim = self.claim_output(&id, &output)?;
        let existing: Vec<_> = output
            .store
            .list(Some(&output.path))
            .try_collect()
            .await
            .map_err(|e| ServiceError::data(&crate::data::Error::io(&output.display, "listing", e)))?;
        if !existing.is_empty() && !r.overwrite {
            return Err(ServiceError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "output {} already exists and is not empty; choose another --output or pass --overwrite",
                    r.output
                ),
            ));
        }
        let job_ref = JobRef {
            job: id.clone(),
            module: r.module.clone(),
            params: r.params,
            limits: r.limits,
        };
        let module = self.validate_module(&job_ref, &r.module_name).await?;
        let split_size = if r.split_size == 0 {
            crate::data::DEFAULT_SPLIT_SIZE
        } else {
            r.split_size
        };
        let slots = lock(&self.cluster).slots();
        let splits = plan_map_inputs(&r.inputs, split_size, slots)
            .await
            .map_err(|e| ServiceError::data(&e))?;
        self.policy
            .ceilings
            .check_map_tasks(splits.len())
            .map_err(|e| invalid(&e))?;
        for split in splits.iter().flat_map(|m| &m.splits) {
            let file = Location::parse(&split.file).map_err(|e| invalid(&e))?;
            access.check_input(&split.file, &file).map_err(|e| invalid(&e))?;
        }
        // Range partitioning samples the job's keys now, running its map on
        // the first records of a few splits (bounded like any guest call).
        let partitioner = if (r.total_order || module.info().total_order) && r.reducers > 1 {
            let ctx = crate::task::JobContext {
                runtime: self.runtime.clone(),
                module: module.clone(),
                pool: self.pool.clone(),
                cancel: Default::default(),
            };
            crate::task::sample_partitioner(&ctx, &splits, r.reducers)
                .await
                .map_err(|e| {
                    let message = format!("sampling keys for a total order: {}", error_chain(&e));
                    let kind = match &e {
                        crate::task::Error::Data(crate::data::Error::Io { .. }) => ErrorKind::Unavailable,
                        crate::task::Error::Data(_) => ErrorKind::Invalid,
                        _ => ErrorKind::JobCode,
                    };
                    ServiceError::new(kind, message)
                })?
        } else {
            crate::shuffle::Partitioner::Hash
        };
        if !existing.is_empty() {
            // Every check passed: now the old output goes, its manifest
            // first, so that no reader takes what is left for complete.
            remove_old_output(&output, existing)
                .await
                .map_err(|e| ServiceError::data(&e))?;
        }
        let spec = JobSpec {
            work_dir: JobLayout::scratch_for(&output, &id),
            id: id.clone(),
            inputs: r.inputs,
            output: r.output,
            reducers: r.reducers,
            format: r.format,
            max_attempts: if r.max_attempts == 0 {
                crate::coordinator::job::DEFAULT_MAX_ATTEMPTS
            } else {
                r.max_attempts
            },
            speculation: r.speculation,
            skip_bad_records: r.skip_bad_records,
            task_memory,
            partitioner,
        };
        let name = module.info().name.clone();
        self.accept(spec, splits, job_ref, name, owner).await?;
        drop(claim);
        Ok(id)
    }

    /// Accept a checked job: journal it, then schedule it.
    ///
    /// # Errors
    /// If the journal can't record it; it is then not accepted.
    pub async fn accept(
        &self,
        spec: JobSpec,
        splits: Vec<MapInput>,
        job_ref: JobRef,
        name: String,
        owner: String,
    ) -> Result<(), ServiceError> {
        let id = spec.id.clone();
        let now = SystemTime::now();
        let pending = {
            let mut cluster = lock(&self.cluster);
            let pending = self.queue(vec![Event::Submitted {
                spec: Box::new(spec.clone()),
                splits: splits.clone(),
                job_ref: job_ref.clone(),
                name: name.clone(),
                owner: owner.clone(),
                at: now,
            }]);
            cluster.add_job(ClusterJob {
                job: Job::new(spec, splits),
                job_ref,
                name,
                owner,
                submitted: now,
                ended: None,
            });
            pending
        };
        self.durable(pending).await?;
        info!(job = %id, "job accepted");
        self.notify();
        Ok(())
    }

    /// Load the job's module and run its `configure` once, to check it and
    /// its parameters: on the validation threads, with `configure` bounded
    /// by [`CONFIGURE_AT_SUBMIT`], so a slow one holds up no other submit.
    async fn validate_module(&self, job: &JobRef, name: &str) -> Result<JobModule, ServiceError> {
        let bytes = self.module_bytes(&job.module).await?;
        self.check_module_size(bytes.len() as u64)?;
        let limits = Limits {
            max_call_time: job.limits.max_call_time.min(CONFIGURE_AT_SUBMIT),
            ..job.limits
        };
        let what = match name {
            "" => job.module.to_string(),
            // The submitter's own words, shown back to them: bounded.
            name => name.chars().take(1024).collect(),
        };
        let checked = load_module(&self.runtime, &self.validation, &what, bytes, &job.params, limits)
            .await
            .map_err(|e| ServiceError::new(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| match e {
                crate::runtime::Error::Internal(_) | crate::runtime::Error::HostResources { .. } => {
                    ServiceError::new(ErrorKind::Internal, error_chain(&e))
                }
                _ => ServiceError::invalid(&e),
            })?;
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        warm.push_back(checked.clone());
        if warm.len() > WARM_MODULES {
            warm.pop_front();
        }
        // Tasks run with the job's own limits.
        Ok(checked.with_limits(job.limits))
    }

    /// Reserve `output` for job `id` while it is being submitted: refused if
    /// a running job, or another submit, writes there (or inside, or
    /// around it). The reservation ends when the guard drops; by then the
    /// job, if accepted, holds the output as a running job.
    fn claim_output(&self, id: &JobId, output: &Location) -> Result<OutputClaim<'_>, ServiceError> {
        let overlaps = |other: &Location| output.is_within(other) || other.is_within(output);
        let cluster = lock(&self.cluster);
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let running = cluster
            .jobs()
            .find(|j| !j.job.is_finished() && Location::parse(&j.job.spec.output).is_ok_and(|o| overlaps(&o)));
        let busy = running
            .map(|j| j.job.spec.id.clone())
            .or_else(|| claims.iter().find(|(_, o)| overlaps(o)).map(|(j, _)| j.clone()));
        if let Some(other) = busy {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                format!(
                    "output {} is in use by job {other}, which is still running; choose another --output, \
                     or wait for that job to end",
                    output.display
                ),
            ));
        }
        claims.push((id.clone(), output.clone()));
        Ok(OutputClaim {
            service: self,
            id: id.clone(),
        })
    }
}

/// A reservation of an output by a submit in progress; see
/// [`Service::claim_output`].
struct OutputClaim<'a> {
    service: &'a Service,
    id: JobId,
}

impl Drop for OutputClaim<'_> {
    fn drop(&mut self) {
        let mut claims = self.service.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims.retain(|(id, _)| *id != self.id);
    }
}

/// Delete an old output's files, listed before: `_SUCCESS` first, so the
/// output never looks complete with files missing.
async fn remove_old_output(
    output: &Location,
    mut files: Vec<object_store::ObjectMeta>,
) -> Result<(), crate::data::Error> {
    let manifest = output.child(crate::data::output::MANIFEST_NAME).path;
    files.sort_by_key(|m| m.location != manifest);
    for meta in files {
        match output.store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(crate::data::Error::io(&output.display, "deleting the old output in", e)),
        }
    }
    Ok(())
}
