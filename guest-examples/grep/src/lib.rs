//! Grep: the lines containing `--param pattern=TEXT` (a plain substring).
//! Output: `file`, `offset`, `line`, ordered by file then offset.

use wmr_sdk::{Emit, Job, Output, Params, Record, Values};

struct Grep {
    pattern: String,
}

impl Grep {
    fn from_params(params: &Params) -> Result<Grep, String> {
        let pattern = params.require("pattern")?;
        if pattern.is_empty() {
            return Err("--param pattern= must not be empty".into());
        }
        Ok(Grep {
            pattern: pattern.to_string(),
        })
    }
}

impl Job for Grep {
    type Key = (String, i64);
    type Value = String;
    type Output = (String, i64, String);

    fn output_names(&self) -> Vec<String> {
        vec!["file".into(), "offset".into(), "line".into()]
    }

    fn map(&self, record: &Record, out: &mut Emit<(String, i64), String>) {
        let line = record.line();
        if line.contains(self.pattern.as_str()) {
            out.emit((record.file(), record.offset()), line.to_string());
        }
    }

    fn reduce(&self, (file, offset): (String, i64), lines: Values<String>, out: &mut Output<(String, i64, String)>) {
        for line in lines {
            out.push((file.as_str(), offset, line));
        }
    }
}

wmr_sdk::export_job!(Grep, Grep::from_params);
