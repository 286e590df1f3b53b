//! Owning handles for background work: every tokio task has an owner that
//! awaits or aborts it, and every CPU job runs on the compute pool.

use std::future::Future;

use tokio::task::JoinHandle;

/// A tokio task that is aborted when this handle is dropped.
#[derive(Debug)]
pub(crate) struct SpawnedTask<T> {
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> SpawnedTask<T> {
    /// Spawn `future` on the current runtime, owned by the returned handle.
    #[expect(clippy::disallowed_methods, reason = "this is the owning wrapper the ban points to")]
    pub(crate) fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        SpawnedTask {
            handle: Some(tokio::task::spawn(future)),
        }
    }
}

impl<T> SpawnedTask<T> {
    /// Let the task run on, owned by no one. For work that must finish even
    /// when its owner goes (its caller says why losing the result is fine).
    pub(crate) fn detach(mut self) {
        // Dropping a JoinHandle detaches the task.
        self.handle.take();
    }

    /// Wait for the task's result; `None` if it panicked or was aborted.
    pub(crate) async fn join(&mut self) -> Option<T> {
        match self.handle.as_mut() {
            Some(h) => h.await.ok(),
            None => None,
        }
    }
}

impl<T> Drop for SpawnedTask<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_aborts_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = SpawnedTask::spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(task);
        // The sender is dropped only if the task was aborted.
        assert!(rx.await.is_err());
    }
}
