//! Word count that panics, with a message, on any line containing `BOOM`.

use wmr_sdk::{Emit, Job, Output, Record, Values, text::words};

#[derive(Default)]
struct Panicky;

impl Job for Panicky {
    type Key = String;
    type Value = u64;
    type Output = (String, u64);

    fn map(&self, record: &Record, out: &mut Emit<String, u64>) {
        if record.line().contains("BOOM") {
            panic!("refusing to count a line with BOOM in it");
        }
        for word in words(record.line()) {
            out.emit(word, 1);
        }
    }

    fn reduce(&self, word: String, counts: Values<u64>, out: &mut Output<(String, u64)>) {
        out.push((word, counts.sum()));
    }
}

wmr_sdk::export_job!(Panicky);
