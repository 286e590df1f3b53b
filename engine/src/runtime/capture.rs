//! Where a guest's stdout and stderr go: memory, up to the attempt's log
//! limit. Past it, bytes are dropped and counted, never an error, so a
//! guest that prints without end still finishes its work. (wasmtime's own
//! `MemoryOutputPipe` fails the write once full, which would trap the guest.)

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Default)]
struct Captured {
    kept: BytesMut,
    dropped: u64,
}

/// A capped, shared capture buffer.
#[derive(Debug, Clone)]
pub struct CappedPipe {
    capacity: usize,
    inner: Arc<Mutex<Captured>>,
}

impl CappedPipe {
    /// A pipe keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        CappedPipe {
            capacity,
            inner: Arc::new(Mutex::new(Captured::default())),
        }
    }

    fn take(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.capacity.saturating_sub(c.kept.len());
        let kept = bytes.len().min(room);
        c.kept.extend_from_slice(&bytes[..kept]);
        c.dropped += (bytes.len() - kept) as u64;
    }

    /// What was kept.
    pub fn kept(&self) -> Bytes {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kept
            .clone()
            .freeze()
    }

    /// How many bytes were dropped past the capacity.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: what does not fit is dropped and counted.
        Ok(64 << 10)
    }
}

impl AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_cap_are_dropped_and_counted() {
        let mut pipe = CappedPipe::new(10);
        pipe.write(Bytes::from_static(b"0123456")).expect("never an error");
        pipe.write(Bytes::from_static(b"789abc")).expect("never an error");
        assert!(pipe.check_write().expect("always room") > 0);
        assert_eq!(&pipe.kept()[..], b"0123456789");
        assert_eq!(pipe.dropped(), 3);
    }
}
