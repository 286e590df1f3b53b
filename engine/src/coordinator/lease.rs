//! One coordinator per store. A coordinator takes its store by creating
//! the next lease object, `lease/{epoch:020}.json`, with a create-if-absent
//! put (so of two racing, one wins), and renews it while it runs. A second
//! coordinator finds the lease fresh and refuses to start, or with
//! `--standby` waits until it lapses and takes the next epoch. A holder that
//! sees a higher epoch, or cannot renew within its lease, has lost the store
//! and stops; the journal's own create-if-absent appends fence it even
//! before it notices. A holder that ran on this same host and whose process
//! is gone has lapsed at once, so a restart after a crash need not wait.

use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::data::Location;
use crate::layout::StoreLayout;

/// What a lease object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    /// Who holds it (host:pid and address).
    holder: String,
    /// The holder's host and process, to tell at once that a holder on
    /// this same host has died (a restart need not wait out the lease).
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
    /// When it was last renewed, in milliseconds since the Unix epoch.
    renewed_ms: u64,
}

/// Why the store could not be taken or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Another coordinator holds the store.
    #[error(
        "the store {store} is held by another coordinator ({holder}, lease renewed {age_ms} ms ago); \
         run one coordinator per store, or start this one with --standby to take over when it stops"
    )]
    Held {
        /// The store.
        store: String,
        /// Its holder.
        holder: String,
        /// How long ago it renewed.
        age_ms: u64,
    },
    /// A newer coordinator took the store.
    #[error("another coordinator took the store {store} (lease epoch {epoch}); this one stops")]
    Taken {
        /// The store.
        store: String,
        /// The newer epoch.
        epoch: u64,
    },
    /// The store failed.
    #[error("the lease in {store}: {action} failed: {reason}")]
    Io {
        /// The store.
        store: String,
        /// What was being done.
        action: &'static str,
        /// Why.
        reason: String,
    },
}

/// A held store.
#[derive(Debug)]
pub struct StoreLease {
    dir: Location,
    store: String,
    epoch: u64,
    holder: String,
    ttl: Duration,
}

/// This machine's name.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl LeaseRecord {
    /// Whether its holder ran on this host and its process is gone.
    fn holder_died_here(&self) -> bool {
        !self.host.is_empty()
            && self.host == this_host()
            && self.pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

fn now_ms() -> u64 {
    crate::protocol::status::millis(SystemTime::now())
}

impl StoreLease {
    /// Take `store` for `holder`, whose lease lapses after `ttl` without
    /// renewal. If another coordinator holds it: refused, or with
    /// `standby`, wait until its lease lapses.
    ///
    /// # Errors
    /// [`LeaseError::Held`] without `standby`; store failures.
    pub async fn take(store: &StoreLayout, holder: &str, ttl: Duration, standby: bool) -> Result<Self, LeaseError> {
        let dir = store.lease_dir();
        let name = store.root().display.clone();
        let mut announced = false;
        loop {
            let (epoch, record) = latest(&dir, &name).await?;
            let age_ms = record
                .as_ref()
                .map_or(u64::MAX, |r| now_ms().saturating_sub(r.renewed_ms));
            let live = |r: &LeaseRecord| age_ms < ttl.as_millis() as u64 && !r.holder_died_here();
            if let Some(record) = record.filter(live) {
                if !standby {
                    return Err(LeaseError::Held {
                        store: name,
                        holder: record.holder,
                        age_ms,
                    });
                }
                if !announced {
                    info!(holder = %record.holder, "standing by: another coordinator holds the store");
                    announced = true;
                }
                tokio::time::sleep(ttl / 4).await;
                continue;
            }
            let lease = StoreLease {
                dir: dir.clone(),
                store: name.clone(),
                epoch: epoch + 1,
                holder: holder.to_string(),
                ttl,
            };
            match lease.write(PutMode::Create).await {
                Ok(()) => {
                    info!(epoch = lease.epoch, "took the store");
                    return Ok(lease);
                }
                // Another one took this epoch first: look again.
                Err(LeaseError::Io { reason, .. }) if reason.contains("already exists") => {
                    if !standby {
                        return Err(LeaseError::Held {
                            store: name,
                            holder: "another coordinator starting".into(),
                            age_ms: 0,
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// This holder's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How often to renew.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Renew the lease, unless a newer coordinator has taken the store.
    ///
    /// # Errors
    /// [`LeaseError::Taken`] once a higher epoch exists; store failures.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let (latest, _) = latest(&self.dir, &self.store).await?;
        if latest > self.epoch {
            return Err(LeaseError::Taken {
                store: self.store.clone(),
                epoch: latest,
            });
        }
        self.write(PutMode::Overwrite).await
    }

    async fn write(&self, mode: PutMode) -> Result<(), LeaseError> {
        let object = self.dir.child(&format!("{:020}.json", self.epoch));
        let record = LeaseRecord {
            holder: self.holder.clone(),
            host: this_host(),
            pid: std::process::id(),
            renewed_ms: now_ms(),
        };
        let json = serde_json::to_vec(&record).map_err(|e| LeaseError::Io {
            store: self.store.clone(),
            action: "encoding",
            reason: e.to_string(),
        })?;
        object
            .store
            .put_opts(&object.path, PutPayload::from(json), PutOptions::from(mode))
            .await
            .map(|_| ())
            .map_err(|e| LeaseError::Io {
                store: self.store.clone(),
                action: "writing",
                reason: match e {
                    object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                        "already exists".to_string()
                    }
                    other => other.to_string(),
                },
            })
    }
}

/// The highest epoch in `dir` and its record (0 and none if there is none).
async fn latest(dir: &Location, store: &str) -> Result<(u64, Option<LeaseRecord>), LeaseError> {
    let io = |action: &'static str| {
        let store = store.to_string();
        move |e: object_store::Error| LeaseError::Io {
            store,
            action,
            reason: e.to_string(),
        }
    };
    let listed: Vec<_> = dir
        .store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .map_err(io("listing"))?;
    let newest = listed
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            let epoch = name.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some((epoch, m.location.clone()))
        })
        .max_by_key(|(e, _)| *e);
    let Some((epoch, path)) = newest else {
        return Ok((0, None));
    };
    let bytes = match dir.store.get(&path).await {
        Ok(r) => r.bytes().await.map_err(io("reading"))?,
        // Written and gone between list and get: as if absent.
        Err(object_store::Error::NotFound { .. }) => return Ok((epoch, None)),
        Err(e) => return Err(io("reading")(e)),
    };
    // An unreadable record holds nothing: it lapses like a stale one.
    Ok((epoch, serde_json::from_slice(&bytes).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_standby_takes_over_when_it_lapses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StoreLayout::new(Location::parse(dir.path().to_str().expect("utf-8")).expect("location"));
        let ttl = Duration::from_millis(300);
        let first = StoreLease::take(&store, "first", ttl, false).await.expect("free");
        assert_eq!(first.epoch(), 1);
        // (Both holders here are this process, which is alive.)
        let e = StoreLease::take(&store, "second", ttl, false)
            .await
            .expect_err("held")
            .to_string();
        assert!(e.contains("is held by another coordinator (first"), "{e}");
        first.renew().await.expect("renews");
        // The first stops renewing; a standby takes the next epoch once it lapses.
        let second = StoreLease::take(&store, "second", ttl, true).await.expect("standby");
        assert_eq!(second.epoch(), 2);
        let e = first.renew().await.expect_err("fenced").to_string();
        assert!(e.contains("another coordinator took the store"), "{e}");
        second.renew().await.expect("renews");
    }
}
