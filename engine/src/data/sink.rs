//! Writing one object while it is produced. A compute thread writes into an
//! [`ObjectSink`] (a plain `std::io::Write`); full chunks cross a bounded
//! channel to an async [`Upload`] on tokio, which sends an object smaller
//! than one part with a single put and anything larger as a multipart
//! upload (S3's, or the local store's staged file), a few parts in flight.
//! Nothing holds the whole object, and the object appears only when the
//! upload completes: a failed or abandoned upload leaves nothing behind.

use std::io::Write;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::mpsc;

use super::Error;
use super::location::Location;
use crate::spawn::SpawnedTask;

/// Size of one multipart part (S3 wants at least 5 MiB).
pub const PART_BYTES: usize = 8 << 20;
/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes the sink gathers before handing them to the upload.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks waiting between the sink and the upload.
const CHUNKS_QUEUED: usize = 4;

enum Message {
    Data(Bytes),
    /// Everything was written: complete the object.
    Finish,
}

/// The writing end, for a compute thread. Dropping it without
/// [`ObjectSink::finish`] abandons the object.
pub struct ObjectSink {
    tx: mpsc::Sender<Message>,
    buf: Vec<u8>,
    written: u64,
    /// The xxh3-64 of every byte written (boxed: its state is large), unless
    /// the writer checksums its own parts.
    hasher: Option<Box<xxhash_rust::xxh3::Xxh3>>,
    display: String,
}

/// What a finished sink wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Its size in bytes.
    pub bytes: u64,
    /// The xxh3-64 checksum of its bytes, unless the sink was made
    /// [`ObjectSink::without_checksum`].
    pub checksum: Option<u64>,
}

/// The uploading end, owned by the async caller; await [`Upload::finish`].
/// Dropped unfinished, the upload is left to end by itself: once its sink
/// is gone too, it aborts the multipart upload, so no part is left behind
/// on the store.
pub struct Upload {
    task: Option<SpawnedTask<Result<(), Error>>>,
    display: String,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Deliberately detached, not aborted: aborting it could cut short
        // the abort of a multipart upload. It ends when its sink does.
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

/// Start writing the object at `location`.
pub fn upload(location: &Location) -> (ObjectSink, Upload) {
    let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
    let task = SpawnedTask::spawn(run_upload(location.clone(), rx));
    (
        ObjectSink {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            written: 0,
            hasher: Some(Box::new(xxhash_rust::xxh3::Xxh3::new())),
            display: location.display.clone(),
        },
        Upload {
            task: Some(task),
            display: location.display.clone(),
        },
    )
}

async fn run_upload(location: Location, mut rx: mpsc::Receiver<Message>) -> Result<(), Error> {
    let fail = |e| Error::io(&location.display, "writing", e);
    let mut small: Vec<Bytes> = Vec::new();
    let mut small_len = 0usize;
    let mut multipart: Option<WriteMultipart> = None;
    loop {
        match rx.recv().await {
            Some(Message::Data(chunk)) => {
                if multipart.is_none() && small_len + chunk.len() < PART_BYTES {
                    small_len += chunk.len();
                    small.push(chunk);
                    continue;
                }
                let upload = match &mut multipart {
                    Some(u) => u,
                    None => {
                        let started = location.store.put_multipart(&location.path).await.map_err(fail)?;
                        let mut u = WriteMultipart::new_with_chunk_size(started, PART_BYTES);
                        for b in small.drain(..) {
                            u.put(b);
                        }
                        multipart.insert(u)
                    }
                };
                if let Err(e) = upload.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    if let Some(u) = multipart.take() {
                        // Best effort: the store may already have dropped it.
                        let _ = u.abort().await;
                    }
                    return Err(fail(e));
                }
                upload.put(chunk);
            }
            Some(Message::Finish) => {
                return match multipart {
                    Some(u) => u.finish().await.map(|_| ()).map_err(fail),
                    None => location
                        .store
                        .put(&location.path, PutPayload::from_iter(small))
                        .await
                        .map(|_| ())
                        .map_err(fail),
                };
            }
            None => {
                // The writer gave up: abandon what was sent.
                if let Some(u) = multipart {
                    let _ = u.abort().await;
                }
                return Err(Error::Internal(format!(
                    "the upload of {} was abandoned before it finished",
                    location.display
                )));
            }
        }
    }
}

impl ObjectSink {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// This sink, not checksumming the whole object: for a writer that
    /// checksums its own parts (a shuffle object's partitions), so that no
    /// byte is hashed twice.
    pub fn without_checksum(mut self) -> Self {
        self.hasher = None;
        self
    }

    fn send(&mut self, message: Message) -> std::io::Result<()> {
        // Called from a compute thread, never from tokio's.
        self.tx.blocking_send(message).map_err(|_| {
            std::io::Error::other(format!(
                "the upload of {} stopped; its own error says why",
                self.display
            ))
        })
    }

    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.send(Message::Data(Bytes::from(full)))
    }

    /// Send what is left and complete the object; returns its size and
    /// checksum. Await [`Upload::finish`] to know it was stored.
    ///
    /// # Errors
    /// If the upload has stopped (its own error says why).
    pub fn finish(mut self) -> std::io::Result<Written> {
        self.send_buffer()?;
        self.send(Message::Finish)?;
        Ok(Written {
            bytes: self.written,
            checksum: self.hasher.map(|h| h.digest()),
        })
    }
}

impl Write for ObjectSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // The buffer never grows past its capacity (a reallocation copies
        // it): what would not fit goes first, and a write of a chunk or
        // more goes alone.
        if self.buf.len() + data.len() > self.buf.capacity() {
            self.send_buffer()?;
        }
        if data.len() >= CHUNK_BYTES {
            self.send(Message::Data(Bytes::copy_from_slice(data)))?;
        } else {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= CHUNK_BYTES {
                self.send_buffer()?;
            }
        }
        // Counted once taken: a failed send took nothing of `data`.
        if let Some(hasher) = &mut self.hasher {
            hasher.update(data);
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Chunks go when full; the object is complete only at `finish`.
        Ok(())
    }
}

impl Upload {
    /// Wait for the object to be stored.
    ///
    /// # Errors
    /// The store's error, or [`Error::Internal`] if the sink was dropped
    /// without finishing.
    pub async fn finish(mut self) -> Result<(), Error> {
        let joined = match &mut self.task {
            Some(task) => task.join().await,
            None => None,
        };
        match joined {
            Some(result) => result,
            None => Err(Error::Internal(format!("the upload of {} was cancelled", self.display))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::ComputePool;

    /// Write `size` bytes (byte i is i % 251) in writes of mixed sizes:
    /// small ones, ones that straddle the sink's chunk, ones larger than it.
    async fn write_object(location: &Location, size: usize) -> Result<Written, Error> {
        let pool = ComputePool::new(1).unwrap();
        let (sink, upload) = upload(location);
        let written = pool
            .run(move || {
                let mut sink = sink;
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let sizes = [64 * 1024, 1, CHUNK_BYTES + 3, 900 * 1024, 7];
                let mut at = 0;
                for n in sizes.iter().cycle() {
                    if at == size {
                        break;
                    }
                    let n = (*n).min(size - at);
                    sink.write_all(&data[at..at + n])?;
                    at += n;
                }
                sink.finish()
            })
            .await
            .unwrap();
        upload.finish().await?;
        Ok(written.unwrap())
    }

    #[tokio::test]
    async fn small_and_multipart_objects_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 10, CHUNK_BYTES * 3 + 5, PART_BYTES * 2 + 12345] {
            let at = Location::parse(dir.path().join(format!("o{size}")).to_str().unwrap()).unwrap();
            let written = write_object(&at, size).await.unwrap();
            let got = std::fs::read(dir.path().join(format!("o{size}"))).unwrap();
            assert_eq!(written.bytes, size as u64);
            assert_eq!(written.checksum, Some(xxhash_rust::xxh3::xxh3_64(&got)));
            assert_eq!(got.len(), size);
            assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
    }

    #[tokio::test]
    async fn an_abandoned_sink_leaves_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let at = Location::parse(dir.path().join("gone").to_str().unwrap()).unwrap();
        let pool = ComputePool::new(1).unwrap();
        let (sink, upload) = upload(&at);
        pool.run(move || {
            let mut sink = sink;
            sink.write_all(&vec![7u8; PART_BYTES * 2]).unwrap();
            drop(sink);
        })
        .await
        .unwrap();
        assert!(matches!(upload.finish().await, Err(Error::Internal(_))));
        assert!(!dir.path().join("gone").exists());
    }
}
