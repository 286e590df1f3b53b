//! `wmr run`'s link between its worker and its coordinator: a worker
//! [`Link`] that calls the coordinator [`Service`] in the same process, so an
//! embedded job goes through the same scheduler, retries, backups and cancel
//! as a cluster job, without a network. It lives here, where `wmr run` wires
//! the two together, so that neither depends on the other.

use std::sync::Arc;
use std::time::Duration;

use crate::coordinator::service::{ErrorKind, Service, ServiceError};
use crate::identity::Identity;
use crate::protocol::{Assignment, HeartbeatReply, JobRef, Outcome, Registration, ReportResult};
use crate::worker::{Link, LinkError};
use crate::{AttemptId, JobId, ModuleDigest, TaskId};

/// How often an in-process worker heartbeats: often, since it costs a lock,
/// and a cancel (Ctrl-C) then stops its attempts at once.
const LOCAL_HEARTBEAT: Duration = Duration::from_millis(100);

/// A link to a service in this process, acting as `identity`.
pub struct LocalLink {
    /// The service.
    pub service: Arc<Service>,
    /// Who the worker is.
    pub identity: Identity,
}

fn link_error(e: ServiceError) -> LinkError {
    match e.kind {
        ErrorKind::NotFound => LinkError::Forgotten,
        ErrorKind::Unavailable => LinkError::Unavailable(e.message),
        _ => LinkError::Refused(e.message),
    }
}

#[async_trait::async_trait]
impl Link for LocalLink {
    async fn register(&self, name: &str, slots: u32) -> Result<Registration, LinkError> {
        Ok(self.service.register(&self.identity, name, slots))
    }

    async fn poll(&self, reg: &Registration, wait: Duration) -> Result<Option<(JobRef, Assignment)>, LinkError> {
        self.service
            .poll(&self.identity, &reg.secret, wait)
            .await
            .map_err(link_error)
    }

    async fn heartbeat(
        &self,
        reg: &Registration,
        running: Vec<AttemptId>,
        _hold: Duration,
    ) -> Result<HeartbeatReply, LinkError> {
        Ok(self
            .service
            .heartbeat(&self.identity, &reg.secret, &running, Duration::ZERO)
            .await)
    }

    async fn report(
        &self,
        reg: &Registration,
        job: &JobId,
        (task, attempt): (TaskId, AttemptId),
        outcome: &Outcome,
    ) -> Result<ReportResult, LinkError> {
        self.service
            .report(&self.identity, &reg.secret, (job, task, attempt), outcome.clone())
            .await
            .map_err(link_error)
    }

    async fn module(&self, _reg: &Registration, digest: &ModuleDigest) -> Result<bytes::Bytes, LinkError> {
        self.service.module_bytes(digest).await.map_err(link_error)
    }

    fn heartbeat_every(&self, _lease: Duration) -> Duration {
        LOCAL_HEARTBEAT
    }

    fn holds_heartbeats(&self) -> bool {
        false
    }
}
