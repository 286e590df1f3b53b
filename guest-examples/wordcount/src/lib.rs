//! Word count: how often each word occurs. A word is a maximal run of
//! Unicode letters, case kept. Output: `key` (the word), `value` (the count).

use wmr_sdk::{Emit, Job, Output, Record, Values, text::words};

#[derive(Default)]
struct WordCount;

impl Job for WordCount {
    type Key = String;
    type Value = u64;
    type Output = (String, u64);
    const COMBINES: bool = true;

    fn map(&self, record: &Record, out: &mut Emit<String, u64>) {
        for word in words(record.line()) {
            out.emit(word, 1);
        }
    }

    fn combine(&self, _word: &String, counts: Values<u64>) -> u64 {
        counts.sum()
    }

    fn reduce(&self, word: String, counts: Values<u64>, out: &mut Output<(String, u64)>) {
        out.push((word, counts.sum()));
    }
}

wmr_sdk::export_job!(WordCount);
