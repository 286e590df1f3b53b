//! The input side of a job: [`Record`], one input row handed to `map`, and
//! [`Params`], the `--param name=value` pairs given at submit.

use crate::bindings::wmr::job::types::ColumnData;
use crate::bindings::wmr::job::types::{Batch, Column};
use crate::columns::{Field, bytes_eq, is_valid, type_name, var_width};

/// One input record. For text input its columns are `offset` and `line` (see
/// [`Record::line`]); for Parquet input they are the file's own columns, read
/// with [`Record::get`] or [`Record::str`]. Either way [`Record::file`] says
/// which file it came from.
pub struct Record<'a> {
    batch: &'a InputBatch<'a>,
    row: usize,
}

/// An input batch with its text columns located once per batch.
pub(crate) struct InputBatch<'a> {
    source: &'a str,
    batch: &'a Batch,
    line: Option<usize>,
    /// The `line` column's offsets and its whole values buffer, validated as
    /// UTF-8 once per batch rather than once per line.
    lines: Option<(&'a [i32], &'a str)>,
    offset: Option<usize>,
    /// The same for every string column, by column index.
    texts: Vec<Option<(&'a [i32], &'a str)>>,
}

/// A string column's offsets and values, if its values are UTF-8 as a whole.
fn text_column(col: &Column) -> Option<(&[i32], &str)> {
    match &col.data {
        ColumnData::Utf8(v) => Some((v.offsets.as_slice(), std::str::from_utf8(&v.values).ok()?)),
        _ => None,
    }
}

/// Value `row` of a text column: `None` if the offsets are not both
/// character boundaries within the values.
fn text_value<'a>((offsets, values): (&'a [i32], &'a str), row: usize) -> Option<&'a str> {
    let start = offsets.get(row).copied().unwrap_or(0).max(0) as usize;
    let end = offsets.get(row + 1).copied().unwrap_or(0).max(0) as usize;
    values.get(start..end)
}

impl<'a> InputBatch<'a> {
    pub(crate) fn new(source: &'a str, batch: &'a Batch) -> Self {
        let find = |name: &str| batch.names.iter().position(|n| n == name);
        let texts: Vec<_> = batch.columns.iter().map(text_column).collect();
        let line = find("line");
        let lines = line.and_then(|i| texts.get(i).copied().flatten());
        InputBatch {
            source,
            batch,
            line,
            lines,
            offset: find("offset"),
            texts,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.batch.num_rows as usize
    }

    pub(crate) fn record(&'a self, row: usize) -> Record<'a> {
        Record { batch: self, row }
    }

    fn column(&self, name: &str) -> Option<(usize, &'a Column)> {
        // `bytes_eq`, not `==`: this runs for every record, and on wasm32
        // `==` on strings is a call to a byte-at-a-time `memcmp`.
        let i = self
            .batch
            .names
            .iter()
            .position(|n| bytes_eq(n.as_bytes(), name.as_bytes()))?;
        Some((i, self.batch.columns.get(i)?))
    }

    fn missing(&self, name: &str) -> ! {
        panic!(
            "input has no column {name:?}; its columns are: {}",
            self.batch.names.join(", ")
        )
    }
}

fn text_at(col: Option<&Column>, row: usize) -> Option<&str> {
    match &col?.data {
        ColumnData::Utf8(v) => std::str::from_utf8(var_width(v, row)).ok(),
        _ => None,
    }
}

impl<'a> Record<'a> {
    /// The text of a line of text input, without its line terminator.
    ///
    /// # Panics
    /// If the input is not text (it has no `line` column).
    pub fn line(&self) -> &'a str {
        // Checks only that both ends are character boundaries.
        if let Some(line) = self.batch.lines.and_then(|text| text_value(text, self.row)) {
            return line;
        }
        let col = self.batch.line.and_then(|i| self.batch.batch.columns.get(i));
        match text_at(col, self.row) {
            Some(s) => s,
            None => self.batch.missing("line"),
        }
    }

    /// The file this record came from, as given to `--input` (a path or URL).
    pub fn file(&self) -> &'a str {
        self.batch.source
    }

    /// The byte offset of this line in its file (text input).
    pub fn offset(&self) -> i64 {
        let col = self.batch.offset.and_then(|i| self.batch.batch.columns.get(i));
        col.and_then(|c| i64::read(c, self.row)).unwrap_or(-1)
    }

    /// The value of column `name`, `None` when it is null.
    ///
    /// Integer columns read as `i64`/`u64` (and as `f64`), floating point
    /// columns as `f64`, strings as `String`, binary as `Vec<u8>`.
    ///
    /// # Panics
    /// If there is no such column, or its type cannot be read as `T`; the
    /// message lists the columns there are, and the job fails with it.
    pub fn get<T: Field>(&self, name: &str) -> Option<T> {
        let (_, col) = self.batch.column(name).unwrap_or_else(|| self.batch.missing(name));
        if !is_valid(col, self.row) {
            return None;
        }
        match T::read(col, self.row) {
            Some(v) => Some(v),
            None => panic!(
                "column {name:?} is {} and cannot be read as {}",
                type_name(&col.data),
                std::any::type_name::<T>()
            ),
        }
    }

    /// The value of string column `name` without copying it, `None` when null.
    ///
    /// # Panics
    /// If there is no such column or it is not a string column.
    pub fn str(&self, name: &str) -> Option<&'a str> {
        let (i, col) = self.batch.column(name).unwrap_or_else(|| self.batch.missing(name));
        if !is_valid(col, self.row) {
            return None;
        }
        if let Some(s) = self
            .batch
            .texts
            .get(i)
            .copied()
            .flatten()
            .and_then(|t| text_value(t, self.row))
        {
            return Some(s);
        }
        match text_at(Some(col), self.row) {
            Some(s) => Some(s),
            None => panic!("column {name:?} is {}, not utf8", type_name(&col.data)),
        }
    }

    /// The row's index within its batch.
    pub fn row(&self) -> usize {
        self.row
    }
}

/// The job's parameters, from `--param name=value` at submit.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Wrap name/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Params { pairs }
    }

    /// The value of `name`, if given (the last one wins).
    ///
    /// ```
    /// let p = wmr_sdk::Params::new(vec![("pattern".into(), "foo".into())]);
    /// assert_eq!(p.get("pattern"), Some("foo"));
    /// ```
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or an error saying how to give it.
    ///
    /// # Errors
    /// When the parameter was not given.
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("missing job parameter {name:?}; give it with --param {name}=VALUE"))
    }

    /// All pairs, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
