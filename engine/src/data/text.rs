//! Reading a text split as batches of `offset: int64, line: utf8`; the file
//! they came from travels beside each batch, once.
//!
//! The async half ([`stream_text_split`]) fetches the split's bytes from the
//! store and sends them in chunks over a bounded channel; the CPU half
//! ([`TextSplitReader`], on a compute thread) cuts lines and builds batches.
//!
//! A split owns the lines that *start* inside its byte range: it skips the
//! partial line it begins in, and reads past its end to finish its last
//! line. Line terminators (`\n` or `\r\n`) are removed. Bytes that are not
//! valid UTF-8 are replaced with U+FFFD, and each such line is counted in
//! the `input.invalid_utf8_lines` counter; the job still runs.

use std::sync::Arc;

use arrow::array::{Int64Builder, RecordBatch, StringArray, StringBuilder};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;

use super::Error;
use super::location::Location;

/// Most lines in one input batch (one guest call).
pub const MAX_BATCH_LINES: usize = 64 * 1024;
/// Most line bytes in one input batch.
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// The longest line any reader accepts: an Arrow string array's offsets
/// are 32-bit.
pub const MAX_LINE_BYTES: u64 = i32::MAX as u64;

/// The schema of text input batches.
pub fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new("line", DataType::Utf8, false),
    ]))
}

/// Bytes fetched per read within a split's range.
pub const READ_BLOCK: u64 = 8 << 20;
/// Bytes fetched per read past a split's end, looking for its last line's end.
pub const TAIL_BLOCK: u64 = 64 << 10;

/// Fetch the bytes a text split `start..end` needs, from the byte before
/// `start` (to see whether a line starts at `start`) towards the end of the
/// file, stopping when the receiver hangs up (it has finished its last line).
///
/// Reads are ranged reads of [`READ_BLOCK`] bytes up to `end`, then of
/// [`TAIL_BLOCK`] bytes. Large reads matter: a streamed local read arrives in
/// 8 KiB pieces, each a trip through tokio's blocking pool, which cost more
/// than the reading itself.
///
/// # Errors
/// Errors are sent down the channel; this returns once it has sent one.
pub async fn stream_text_split(
    file: Location,
    start: u64,
    end: u64,
    file_size: u64,
    tx: mpsc::Sender<Result<Bytes, Error>>,
) {
    let mut at = start.saturating_sub(1);
    while at < file_size {
        let block = if at < end { READ_BLOCK.min(end - at) } else { TAIL_BLOCK };
        let until = (at + block).min(file_size);
        let item = file
            .store
            .get_range(&file.path, at..until)
            .await
            .map_err(|e| Error::io(&file.display, "reading", e));
        let failed = item.is_err();
        // The receiver is gone when it has its last line, or if the task was
        // cancelled; either way nothing more is needed.
        if tx.send(item).await.is_err() || failed {
            return;
        }
        at = until;
    }
}

/// Cuts lines out of the chunks of one split and builds input batches.
pub struct TextSplitReader {
    rx: mpsc::Receiver<Result<Bytes, Error>>,
    file: String,
    end: u64,
    file_size: u64,
    /// Unconsumed bytes; `buf[0]` is at file offset `buf_pos`.
    buf: Vec<u8>,
    buf_pos: u64,
    /// Offset of the next line's first byte, once known.
    line_start: Option<u64>,
    eof: bool,
    done: bool,
    /// Longest line accepted, in bytes.
    max_record: u64,
    /// Lines with invalid UTF-8 seen so far.
    pub invalid_utf8_lines: u64,
    /// Line bytes (without terminators) delivered so far.
    pub bytes_read: u64,
}

impl TextSplitReader {
    /// A reader for the split `start..end` of `file`, fed by `rx` with the
    /// bytes from `start - 1` (or 0) onward.
    pub fn new(rx: mpsc::Receiver<Result<Bytes, Error>>, file: String, start: u64, end: u64, file_size: u64) -> Self {
        TextSplitReader {
            rx,
            file,
            end,
            file_size,
            buf: Vec::new(),
            buf_pos: start.saturating_sub(1),
            line_start: if start == 0 { Some(0) } else { None },
            eof: false,
            done: start >= file_size,
            max_record: MAX_LINE_BYTES,
            invalid_utf8_lines: 0,
            bytes_read: 0,
        }
    }

    /// Refuse lines longer than `bytes` (at most, and by default,
    /// [`MAX_LINE_BYTES`]) with [`Error::RecordTooLong`], instead of
    /// buffering them.
    pub fn with_max_record(mut self, bytes: u64) -> Self {
        self.max_record = bytes.min(MAX_LINE_BYTES);
        self
    }

    fn too_long(&self, offset: u64) -> Error {
        Error::RecordTooLong {
            file: self.file.clone(),
            offset,
            limit: self.max_record,
        }
    }

    /// Pull one more chunk into the buffer; false at the end of the file.
    ///
    /// The lines before the next one are dropped first, so the buffer holds
    /// at most one partial line and one chunk, and each byte is moved once
    /// (dropping consumed bytes any more often moves the rest of the chunk
    /// every time: with 8 MiB chunks, it was 8 bytes moved per byte read).
    fn fill(&mut self) -> Result<bool, Error> {
        if self.eof {
            return Ok(false);
        }
        if let Some(start) = self.line_start {
            self.consume_to(start);
        }
        match self.rx.blocking_recv() {
            Some(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.eof = true;
                if self.buf_pos + (self.buf.len() as u64) < self.file_size {
                    return Err(Error::Truncated {
                        file: self.file.clone(),
                        at: self.buf_pos + self.buf.len() as u64,
                    });
                }
                Ok(false)
            }
        }
    }

    /// Drop consumed bytes before `offset` from the buffer.
    fn consume_to(&mut self, offset: u64) {
        let n = ((offset - self.buf_pos) as usize).min(self.buf.len());
        self.buf.drain(..n);
        self.buf_pos += n as u64;
    }

    /// The lines whose bytes are `values`, line `i` ending at `ends[i + 1]`:
    /// as they are when all are UTF-8 (checked once, with every line end on
    /// a character boundary), else each line that is not with its invalid
    /// bytes replaced by U+FFFD, and counted.
    fn lines_of(&mut self, values: Vec<u8>, ends: Vec<i32>) -> StringArray {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(ends));
        let values = Buffer::from_vec(values);
        match StringArray::try_new(offsets.clone(), values.clone(), None) {
            Ok(lines) => lines,
            Err(_) => {
                let mut lines = StringBuilder::with_capacity(offsets.len() - 1, values.len());
                for w in offsets.windows(2) {
                    let line = values.get(w[0] as usize..w[1] as usize).unwrap_or_default();
                    match std::str::from_utf8(line) {
                        Ok(text) => lines.append_value(text),
                        Err(_) => {
                            self.invalid_utf8_lines += 1;
                            lines.append_value(String::from_utf8_lossy(line));
                        }
                    }
                }
                lines.finish()
            }
        }
    }

    /// The next batch of lines, or `None` when the split is done.
    ///
    /// # Errors
    /// I/O errors from the fetch, and [`Error::Truncated`] if the file is
    /// shorter than it was when the job was planned.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, Error> {
        if self.done {
            return Ok(None);
        }
        // Find where our first line starts: just after the first '\n' at or
        // after `start - 1`.
        while self.line_start.is_none() {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let start = self.buf_pos + i as u64 + 1;
                self.consume_to(start);
                self.line_start = Some(start);
            } else {
                let len = self.buf.len() as u64;
                self.consume_to(self.buf_pos + len);
                if !self.fill()? {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
        let mut offsets = Int64Builder::new();
        // The lines' bytes back to back, and where each ends: checked as
        // UTF-8 once for the batch, not line by line.
        let mut values: Vec<u8> = Vec::with_capacity(MAX_BATCH_BYTES);
        let mut ends: Vec<i32> = Vec::with_capacity(MAX_BATCH_LINES + 1);
        ends.push(0);
        let mut rows = 0usize;
        let mut bytes = 0usize;
        let mut scan_from = 0usize;
        while rows < MAX_BATCH_LINES {
            let Some(start) = self.line_start else { break };
            if start >= self.end || start >= self.file_size {
                self.done = true;
                break;
            }
            let rel = (start - self.buf_pos) as usize;
            let (line_end, next) = match memchr::memchr(b'\n', &self.buf[rel + scan_from..]) {
                Some(i) => (rel + scan_from + i, Some(start + (scan_from + i) as u64 + 1)),
                None if !self.eof => {
                    let scanned = self.buf.len() - rel;
                    if scanned as u64 > self.max_record {
                        return Err(self.too_long(start));
                    }
                    // `fill` moves the line to the buffer's start, so `rel`
                    // is worked out again; only the new bytes are searched.
                    self.fill()?;
                    scan_from = scanned;
                    continue;
                }
                None => (self.buf.len(), None),
            };
            scan_from = 0;
            if (line_end - rel) as u64 > self.max_record {
                return Err(self.too_long(start));
            }
            let mut line = &self.buf[rel..line_end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            // A line that would overflow the batch's buffer starts the next
            // batch (growing the buffer would copy all of it again).
            if rows > 0 && bytes + line.len() > MAX_BATCH_BYTES {
                break;
            }
            values.extend_from_slice(line);
            // A line that would overflow the batch starts the next, so a
            // batch is at most MAX_BATCH_BYTES or one line of at most
            // MAX_LINE_BYTES: within i32.
            ends.push(i32::try_from(values.len()).map_err(|_| self.too_long(start))?);
            offsets.append_value(start as i64);
            rows += 1;
            bytes += line.len();
            self.bytes_read += line.len() as u64;
            match next {
                Some(n) => self.line_start = Some(n),
                None => {
                    self.line_start = None;
                    self.done = true;
                    break;
                }
            }
        }
        if rows == 0 {
            return Ok(None);
        }
        let lines = self.lines_of(values, ends);
        let batch = RecordBatch::try_new(text_schema(), vec![Arc::new(offsets.finish()), Arc::new(lines)])
            .map_err(|e| Error::Internal(format!("building a text batch: {e}")))?;
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};

    /// Read `start..end` of `data` as the engine does, in chunks of `chunk`.
    fn read(data: &[u8], start: u64, end: u64, chunk: usize) -> Vec<(i64, String)> {
        let (tx, rx) = mpsc::channel(1024);
        let from = start.saturating_sub(1) as usize;
        for c in data[from.min(data.len())..].chunks(chunk) {
            tx.try_send(Ok(Bytes::copy_from_slice(c))).unwrap();
        }
        drop(tx);
        let mut r = TextSplitReader::new(rx, "f".into(), start, end, data.len() as u64);
        let mut out = vec![];
        while let Some(b) = r.next_batch().unwrap() {
            let off = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let lines = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                out.push((off.value(i), lines.value(i).to_string()));
            }
        }
        out
    }

    #[test]
    fn splits_own_the_lines_that_start_in_them() {
        let data = b"alpha\nbeta\r\n\ngamma delta\nlast";
        let whole = read(data, 0, data.len() as u64, 3);
        assert_eq!(
            whole,
            vec![
                (0, "alpha".into()),
                (6, "beta".into()),
                (12, "".into()),
                (13, "gamma delta".into()),
                (25, "last".into())
            ]
        );
        // Every cut point and chunk size gives each line exactly once.
        for cut in 0..=data.len() as u64 {
            for chunk in [1, 2, 5, 64] {
                let mut both = read(data, 0, cut, chunk);
                both.extend(read(data, cut, data.len() as u64, chunk));
                assert_eq!(both, whole, "cut at {cut}, chunks of {chunk}");
            }
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted() {
        // The last two lines are each invalid, though their bytes back to
        // back (without the newline) would be an é: the batch is checked
        // whole, and each line too.
        let data = b"ok\nbad \xff here\ncaf\xc3\n\xa9t\xc3\xa9\n";
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(data))).unwrap();
        drop(tx);
        let mut r = TextSplitReader::new(rx, "f".into(), 0, data.len() as u64, data.len() as u64);
        let b = r.next_batch().unwrap().unwrap();
        let lines = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(lines.value(0), "ok");
        assert_eq!(lines.value(1), "bad \u{fffd} here");
        assert_eq!(lines.value(2), "caf\u{fffd}");
        assert_eq!(lines.value(3), "\u{fffd}t\u{e9}");
        assert_eq!(r.invalid_utf8_lines, 3);
        assert_eq!(lines.null_count(), 0);
    }

    #[test]
    fn a_line_over_the_record_limit_is_refused_without_buffering_it() {
        let long = "x".repeat(100);
        let data = format!("short\n{long}\nafter\n");
        let (tx, rx) = mpsc::channel(64);
        for c in data.as_bytes().chunks(8) {
            tx.try_send(Ok(Bytes::copy_from_slice(c))).unwrap();
        }
        drop(tx);
        let mut r = TextSplitReader::new(rx, "f".into(), 0, data.len() as u64, data.len() as u64).with_max_record(50);
        let e = r.next_batch().unwrap_err();
        assert!(
            matches!(
                e,
                Error::RecordTooLong {
                    offset: 6,
                    limit: 50,
                    ..
                }
            ),
            "{e}"
        );
        assert!(r.buf.len() < 80, "stopped reading once past the limit");
        assert_eq!(read(data.as_bytes(), 0, data.len() as u64, 8).len(), 3);
    }

    #[test]
    fn a_file_shorter_than_planned_is_an_error() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut r = TextSplitReader::new(rx, "f".into(), 0, 10, 10);
        let e = r.next_batch().unwrap_err().to_string();
        assert!(e.contains("f changed while the job ran: it ends at byte 3"), "{e}");
    }
}
