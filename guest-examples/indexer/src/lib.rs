//! Inverted index: for each word, how many distinct input files contain it
//! and their names, sorted and comma-joined (`word 2 a.txt,b.txt`). File
//! names are the input file's base name.

use std::collections::BTreeSet;

use wmr_sdk::{Emit, Job, Output, Record, Values, text::words};

#[derive(Default)]
struct Indexer;

impl Job for Indexer {
    type Key = String;
    type Value = String;
    type Output = (String, u64, String);
    const COMBINES: bool = true;

    fn output_names(&self) -> Vec<String> {
        vec!["word".into(), "files".into(), "names".into()]
    }

    fn map(&self, record: &Record, out: &mut Emit<String, String>) {
        let file = record.file();
        let base = file.rsplit('/').next().unwrap_or(file);
        for word in words(record.line()) {
            out.emit(word, base.to_string());
        }
    }

    /// A word's files so far, deduplicated; a comma-joined set.
    fn combine(&self, _word: &String, files: Values<String>) -> String {
        join(files)
    }

    fn reduce(&self, word: String, files: Values<String>, out: &mut Output<(String, u64, String)>) {
        let names = join(files);
        let n = names.split(',').count() as u64;
        out.push((word, n, names));
    }
}

fn join(files: Values<String>) -> String {
    let mut set = BTreeSet::new();
    for f in files {
        for name in f.split(',') {
            if !set.contains(name) {
                set.insert(name.to_string());
            }
        }
    }
    set.into_iter().collect::<Vec<_>>().join(",")
}

wmr_sdk::export_job!(Indexer);
