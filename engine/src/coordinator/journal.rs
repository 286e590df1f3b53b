//! The coordinator's durable record: an append-only journal of events in the
//! object store, so a coordinator killed at any moment and restarted on the
//! same store resumes every job without re-running a committed task.
//!
//! Object stores cannot append, so the journal is a sequence of objects,
//! `journal/00000000000000000001.json`, ..., each a JSON array of events.
//! Now and then the coordinator writes a snapshot of every job instead: an
//! object like any other (so it claims its number as any other does), then
//! an empty marker `{seq}.snapshot` naming it. Replay starts at the latest
//! marked snapshot, and the objects before it are deleted, so restart time
//! does not grow with history.
//! Appends are grouped: whatever is queued while one object is being
//! written goes into the next, and each caller waits until its events are
//! durable. A commit is acknowledged to a worker only after that. Only
//! put, get and list are needed, which every object store (S3 included)
//! offers. One coordinator per store.

use std::time::SystemTime;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::job::{JobSpec, JobState};
use crate::data::{Location, MapInput};
use crate::protocol::JobRef;
use crate::spawn::SpawnedTask;
use crate::task::{AttemptFailure, MapOutput, ReduceOutput};
use crate::{AttemptId, JobId, TaskId, WorkerId};

/// One thing that happened, as the journal records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A coordinator run started (runs are counted to keep attempt ids unique).
    Started {
        /// When.
        at: SystemTime,
    },
    /// A job was accepted.
    Submitted {
        /// What it is to do.
        spec: Box<JobSpec>,
        /// What each of its map tasks reads.
        splits: Vec<MapInput>,
        /// Its module, parameters and limits.
        job_ref: JobRef,
        /// Its name.
        name: String,
        /// The identity that submitted it.
        #[serde(default = "anonymous")]
        owner: String,
        /// When.
        at: SystemTime,
    },
    /// An attempt committed its task.
    Committed {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: AttemptId,
        /// Where it ran.
        worker: WorkerId,
        /// What it produced.
        output: TaskOutput,
        /// When it started.
        started: SystemTime,
        /// When it ended.
        at: SystemTime,
    },
    /// An attempt failed.
    Failed {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: AttemptId,
        /// Where it ran.
        worker: WorkerId,
        /// How it failed.
        failure: AttemptFailure,
        /// When it started.
        started: SystemTime,
        /// When it ended.
        at: SystemTime,
    },
    /// An attempt was lost with its worker (it counts as a failure unless
    /// its worker handed it back as it left).
    Lost {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: AttemptId,
        /// The worker that was lost.
        worker: WorkerId,
        /// When it started.
        started: SystemTime,
        /// When the worker was found lost.
        at: SystemTime,
        /// The worker handed it back as it left (a drain that timed out):
        /// it does not count against the task.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        handed_back: bool,
    },
    /// Every job as it stands (written alone, as a snapshot object):
    /// replay starts here.
    Snapshot {
        /// Coordinator runs so far.
        runs: u64,
        /// Every job kept.
        jobs: Vec<super::cluster::ClusterJob>,
    },
    /// A job ended (its output committed, or it failed or was cancelled).
    Ended {
        /// The job.
        job: JobId,
        /// How.
        state: JobState,
        /// Why, if it did not succeed.
        error: Option<String>,
        /// When.
        at: SystemTime,
    },
}

fn anonymous() -> String {
    crate::identity::ANONYMOUS.to_string()
}

/// A committed task's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutput {
    /// A map's shuffle object.
    Map(MapOutput),
    /// A reduce's output file.
    Reduce(ReduceOutput),
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error("journal in {store}: {action} {object} failed")]
    Io {
        /// The store.
        store: String,
        /// What we were doing.
        action: &'static str,
        /// The object.
        object: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// An object of the journal is not a journal object.
    #[error(
        "journal object {object} is corrupt ({reason}); the coordinator will not start over it: \
         move it away only if you accept losing the jobs it records"
    )]
    Corrupt {
        /// The object, as a path or URL.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing the next journal object failed.
    #[error("appending to the journal failed: {reason}; check that the store is writable")]
    Write {
        /// Why.
        reason: String,
    },
    /// The writer is gone (the coordinator is shutting down).
    #[error("the journal writer has stopped")]
    Stopped,
}

type Append = (Vec<Event>, oneshot::Sender<Result<(), String>>);

/// Events queued in order, not yet known to be durable; see [`Pending::durable`].
pub struct Pending(oneshot::Receiver<Result<(), String>>);

impl Pending {
    /// Wait until the events are durable.
    ///
    /// # Errors
    /// If the store refused the write.
    pub async fn durable(self) -> Result<(), Error> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Write { reason }),
            Err(_) => Err(Error::Stopped),
        }
    }
}

/// An open journal: replayed events, and appends that wait for durability.
/// Two kinds: in the object store (`wmr coordinator`: survives the process),
/// and in memory (`wmr run`: one process, one job, nothing to resume).
pub struct Journal {
    /// The writer of the object-store journal; `None` in memory.
    writer: Option<(mpsc::UnboundedSender<Append>, SpawnedTask<()>)>,
}

impl Journal {
    /// Open the journal under `store`, returning it and every event so far,
    /// oldest first.
    ///
    /// # Errors
    /// If the store can't be listed or read, or an object is corrupt.
    pub async fn open(store: &Location) -> Result<(Journal, Vec<Event>), Error> {
        let dir = crate::layout::StoreLayout::new(store.clone()).journal_dir();
        let io = |action: &'static str, object: String| {
            let store = store.display.clone();
            move |source| Error::Io {
                store,
                action,
                object,
                source,
            }
        };
        let objects: Vec<_> = dir
            .store
            .list(Some(&dir.path))
            .try_collect()
            .await
            .map_err(io("listing", dir.display.clone()))?;
        // Names are `{seq}.json` (events) or `{seq}.snapshot` (a marker:
        // object `seq` is a snapshot); anything else (an editor's backup,
        // say) is not ours, and left alone.
        let mut numbered: Vec<(u64, object_store::path::Path)> = Vec::new();
        let mut marked = 0u64;
        for meta in objects {
            let Some(name) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            if let Some(seq) = name.strip_suffix(".snapshot").and_then(|n| n.parse::<u64>().ok()) {
                marked = marked.max(seq);
            } else if let Some(seq) = name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) {
                numbered.push((seq, meta.location));
            }
        }
        numbered.sort_by_key(|(seq, _)| *seq);
        let last_seq = numbered.last().map_or(0, |(seq, _)| *seq);
        // Replay from the latest marked snapshot; what is older was folded
        // into it. (Without a marker, a snapshot met on the way replaces
        // the state replayed so far.)
        let from = numbered.iter().position(|(seq, _)| *seq == marked).unwrap_or(0);
        let mut events = Vec::new();
        for (_, location) in &numbered[from..] {
            let name = location.filename().unwrap_or_default().to_string();
            let corrupt = |reason: String| Error::Corrupt {
                object: dir.child(&name).display,
                reason,
            };
            let bytes = dir
                .store
                .get(location)
                .await
                .map_err(io("reading", name.clone()))?
                .bytes()
                .await
                .map_err(io("reading", name.clone()))?;
            let batch: Vec<Event> = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            events.extend(batch);
        }
        let (tx, rx) = mpsc::unbounded_channel::<Append>();
        let writer = SpawnedTask::spawn(write_loop(dir, last_seq, rx));
        Ok((
            Journal {
                writer: Some((tx, writer)),
            },
            events,
        ))
    }

    /// A journal kept nowhere: every append is durable at once, for a
    /// coordinator whose jobs end with its process.
    pub fn memory() -> Journal {
        Journal { writer: None }
    }

    /// Queue `events` without waiting: events are written in the order they
    /// are queued, so queueing under the lock that orders state changes
    /// keeps the journal in that order.
    pub fn queue(&self, events: Vec<Event>) -> Pending {
        let (done, wait) = oneshot::channel();
        match &self.writer {
            // If the writer is gone, `wait` fails and `durable` says so.
            Some((tx, _)) => {
                let _ = tx.send((events, done));
            }
            None => {
                let _ = done.send(Ok(()));
            }
        }
        Pending(wait)
    }

    /// Append `events` and wait until they are durable.
    ///
    /// # Errors
    /// If the store refuses the write; the events may then not be recorded.
    pub async fn append(&self, events: Vec<Event>) -> Result<(), Error> {
        self.queue(events).durable().await
    }
}

async fn write_loop(dir: Location, mut seq: u64, mut rx: mpsc::UnboundedReceiver<Append>) {
    // After one failed write the journal stops: the state it records has
    // moved on in memory, and a later write would leave a gap.
    let mut broken: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let result = match &broken {
            Some(reason) => Err(format!("the journal stopped after a failed write ({reason})")),
            None => write_appends(&dir, &mut seq, &group).await,
        };
        if let Err(reason) = &result
            && broken.is_none()
        {
            broken = Some(reason.clone());
        }
        for (_, done) in group {
            // The caller may have given up waiting; nothing to do then.
            let _ = done.send(result.clone());
        }
    }
}

/// Write a group of appends in order: runs of events as one object each,
/// and each snapshot as its own object, after which every older object is
/// deleted.
async fn write_appends(dir: &Location, seq: &mut u64, group: &[Append]) -> Result<(), String> {
    let mut events: Vec<&Event> = Vec::new();
    for (batch, _) in group {
        for event in batch {
            if matches!(event, Event::Snapshot { .. }) {
                write_object(dir, seq, &events).await?;
                events.clear();
                write_object(dir, seq, &[event]).await?;
                mark_snapshot(dir, *seq).await?;
                // Only tidying: replay starts at the marker anyway.
                if let Err(e) = delete_before(dir, *seq).await {
                    tracing::warn!(error = %e, "deleting journal objects older than a snapshot");
                }
            } else {
                events.push(event);
            }
        }
    }
    write_object(dir, seq, &events).await
}

/// Mark object `seq` as a snapshot, where replay starts.
async fn mark_snapshot(dir: &Location, seq: u64) -> Result<(), String> {
    let marker = dir.child(&format!("{seq:020}.snapshot"));
    marker
        .store
        .put(&marker.path, PutPayload::from_static(b""))
        .await
        .map(|_| ())
        .map_err(|e| format!("writing {}: {e}", marker.display))
}

async fn write_object(dir: &Location, seq: &mut u64, events: &[&Event]) -> Result<(), String> {
    if events.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(events).map_err(|e| format!("encoding events: {e}"))?;
    *seq += 1;
    let object = dir.child(&format!("{seq:020}.json"));
    // Create-if-absent: a coordinator that lost the store to another finds
    // the next object already written, and stops, rather than overwrite it.
    object
        .store
        .put_opts(&object.path, PutPayload::from(json), PutOptions::from(PutMode::Create))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => format!(
                "{} was written by another coordinator, which holds the store now",
                object.display
            ),
            e => format!("writing {}: {e}", object.display),
        })
}

/// Delete the journal objects numbered below `seq` (folded into the
/// snapshot at `seq`).
async fn delete_before(dir: &Location, seq: u64) -> Result<(), String> {
    let listed: Vec<_> = dir
        .store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .map_err(|e| format!("listing {}: {e}", dir.display))?;
    for meta in listed {
        let older = meta
            .location
            .filename()
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < seq);
        if older {
            match dir.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("deleting {}: {e}", meta.location)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Location::parse(dir.path().to_str().expect("utf-8 path")).expect("location");
        let (journal, replayed) = Journal::open(&store).await.expect("open");
        assert!(replayed.is_empty());
        for i in 0..5u64 {
            journal
                .append(vec![Event::Started {
                    at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i),
                }])
                .await
                .expect("append");
        }
        drop(journal);
        let (journal, replayed) = Journal::open(&store).await.expect("reopen");
        let times: Vec<u64> = replayed
            .iter()
            .map(|e| match e {
                Event::Started { at } => at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after epoch")
                    .as_secs(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(times, [0, 1, 2, 3, 4]);
        // Appends after reopening go after the old ones.
        journal
            .append(vec![Event::Started {
                at: SystemTime::UNIX_EPOCH,
            }])
            .await
            .expect("append");
        drop(journal);
        let (_, replayed) = Journal::open(&store).await.expect("reopen");
        assert_eq!(replayed.len(), 6);
    }

    #[tokio::test]
    async fn replay_starts_at_the_latest_snapshot_and_older_objects_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Location::parse(dir.path().to_str().expect("utf-8 path")).expect("location");
        let (journal, _) = Journal::open(&store).await.expect("open");
        let at = SystemTime::UNIX_EPOCH;
        for _ in 0..3 {
            journal.append(vec![Event::Started { at }]).await.expect("append");
        }
        journal
            .append(vec![
                Event::Started { at },
                Event::Snapshot { runs: 4, jobs: vec![] },
                Event::Started { at },
            ])
            .await
            .expect("append");
        drop(journal);
        let names: Vec<String> = std::fs::read_dir(dir.path().join("journal"))
            .expect("journal dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        // The snapshot, its marker, and the event after it.
        assert_eq!(names.len(), 3, "{names:?}");
        let (_, replayed) = Journal::open(&store).await.expect("reopen");
        assert!(matches!(replayed[0], Event::Snapshot { runs: 4, .. }));
        assert_eq!(replayed.len(), 2);
    }

    #[tokio::test]
    async fn a_corrupt_object_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("journal")).expect("mkdir");
        std::fs::write(dir.path().join("journal/00000000000000000001.json"), b"{nope").expect("write");
        let store = Location::parse(dir.path().to_str().expect("utf-8 path")).expect("location");
        let e = Journal::open(&store).await.err().expect("refused").to_string();
        assert!(
            e.contains("journal/00000000000000000001.json is corrupt (invalid type"),
            "{e}"
        );
    }
}
