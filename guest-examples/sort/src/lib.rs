//! Sort: TeraSort-style records (one per line; the first 10 bytes are the
//! key) into global byte order. With `--format text`, the part files read
//! in order are exactly `LC_ALL=C sort` of the input.
//!
//! The job asks for total order, so the engine samples keys from the input
//! and gives each reduce partition a range of keys; within a key, records
//! are ordered by their whole line, as `sort` orders them.

use wmr_sdk::{Emit, Job, Output, Record, Values};

/// Bytes of a record that are its key.
const KEY_BYTES: usize = 10;

#[derive(Default)]
struct Sort;

impl Job for Sort {
    type Key = String;
    type Value = String;
    type Output = String;
    const TOTAL_ORDER: bool = true;

    fn output_names(&self) -> Vec<String> {
        vec!["line".into()]
    }

    fn map(&self, record: &Record, out: &mut Emit<String, String>) {
        let line = record.line();
        // A key cut inside a multi-byte character would not be a string: such
        // a record is keyed by its whole line instead.
        let key = line.get(..KEY_BYTES).unwrap_or(line);
        out.emit(key, line.to_string());
    }

    fn reduce(&self, _key: String, lines: Values<String>, out: &mut Output<String>) {
        // Lines borrowed, not copied; a key's only line (the usual case: ten
        // random bytes rarely repeat) is passed on without a Vec.
        let mut lines = lines.strs();
        let Some(first) = lines.next() else { return };
        let Some(second) = lines.next() else {
            out.push(first);
            return;
        };
        let mut all: Vec<&str> = [first, second].into_iter().chain(lines).collect();
        all.sort_unstable();
        for line in all {
            out.push(line);
        }
    }
}

wmr_sdk::export_job!(Sort);
