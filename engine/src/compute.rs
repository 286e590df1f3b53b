//! The compute pool: named OS threads that run all guest calls and heavy
//! Arrow work, so tokio's threads only ever wait on I/O.

use std::panic::AssertUnwindSafe;

use tokio::sync::oneshot;

/// A fixed pool of compute threads, one per task slot.
pub struct ComputePool {
    pool: rayon::ThreadPool,
}

/// A compute job panicked; the message is kept so the attempt can report it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a compute thread panicked: {0}; please report this as a bug")]
pub struct ComputePanic(pub String);

impl ComputePool {
    /// A pool of `threads` threads named `wmr-compute-N`.
    ///
    /// # Errors
    /// If the OS refuses to start the threads.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("wmr-compute-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(ComputePool { pool })
    }

    /// Run `f` on a compute thread and wait for it without blocking tokio.
    /// A panic in `f` becomes an error rather than a dead worker.
    ///
    /// # Errors
    /// [`ComputePanic`] if `f` panicked.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ComputePanic> {
        let (tx, rx) = oneshot::channel();
        self.pool.spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                ComputePanic(msg)
            });
            // The receiver is gone only if the attempt was cancelled.
            let _ = tx.send(result);
        });
        rx.await
            .map_err(|_| ComputePanic("the compute job was dropped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_named_threads_and_contains_panics() {
        let pool = ComputePool::new(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("wmr-compute-"));
        let err = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(err.0, "boom");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
