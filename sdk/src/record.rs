//! The input side of a job: [`Record`], one input row handed to `map`, and
//! [`Params`], the `--param name=value` pairs given at submit.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;

use crate::bindings::wmr::job::types::{Batch, Column, ColumnData, VarWidth};
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
    /// Every dictionary-encoded column, by index.
    coded: Vec<Option<CodedColumn<'a>>>,
}

/// A dictionary-encoded column of one batch.
struct CodedColumn<'a> {
    codes: &'a [u32],
    dictionary: &'a Dictionary,
    /// Each row's value, looked up for the whole batch at its first use:
    /// in one tight loop the lookups, each a likely cache miss, overlap
    /// rather than wait one after another between calls to `map`.
    texts: OnceCell<Vec<Option<&'a str>>>,
}

impl<'a> CodedColumn<'a> {
    fn text(&self, row: usize) -> Option<&'a str> {
        let texts = self
            .texts
            .get_or_init(|| self.codes.iter().map(|&code| self.dictionary.text(code)).collect());
        texts.get(row).copied().flatten()
    }
}

/// A string column's offsets and values, if its values are UTF-8 as a whole.
fn text_column(col: &Column) -> Option<(&[i32], &str)> {
    match &col.data {
        ColumnData::Utf8(v) => Some((v.offsets.as_slice(), std::str::from_utf8(&v.values).ok()?)),
        _ => None,
    }
}

/// One dictionary of a `utf8-dictionary` input column.
#[derive(Clone)]
pub(crate) struct Dictionary {
    id: u64,
    values: DictionaryValues,
}

#[derive(Clone)]
enum DictionaryValues {
    /// Every value its own string, checked as UTF-8 once, when the
    /// dictionary arrived: a row's value is then one load away.
    Text(Vec<Box<str>>),
    /// As sent, when the values are not all UTF-8.
    Bytes(VarWidth),
}

impl Dictionary {
    fn new(id: u64, sent: VarWidth) -> Self {
        let mut dictionary = Dictionary {
            id,
            values: DictionaryValues::Text(Vec::new()),
        };
        dictionary.append(sent);
        dictionary
    }

    /// Append the values `sent` (the host adds a row group's new values to
    /// a dictionary this way).
    fn append(&mut self, sent: VarWidth) {
        let text = std::str::from_utf8(&sent.values).ok().and_then(|text| {
            sent.offsets
                .windows(2)
                .map(|w| {
                    let (start, end) = (usize::try_from(w[0]).ok()?, usize::try_from(w[1]).ok()?);
                    text.get(start..end).map(Box::from)
                })
                .collect::<Option<Vec<Box<str>>>>()
        });
        match (&mut self.values, text) {
            (DictionaryValues::Text(values), Some(text)) => values.extend(text),
            (DictionaryValues::Text(values), None) => {
                // Not all UTF-8 now: keep every value as bytes.
                let mut all = VarWidth {
                    offsets: vec![0],
                    values: Vec::new(),
                };
                for value in values.iter() {
                    push_value(&mut all, value.as_bytes());
                }
                append_var_width(&mut all, &sent);
                self.values = DictionaryValues::Bytes(all);
            }
            (DictionaryValues::Bytes(all), _) => append_var_width(all, &sent),
        }
    }

    /// Its id, unique within the instance.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Value `code` as text, if the values are UTF-8.
    pub(crate) fn text(&self, code: u32) -> Option<&str> {
        match &self.values {
            DictionaryValues::Text(values) => values.get(code as usize).map(|s| &**s),
            DictionaryValues::Bytes(_) => None,
        }
    }

    /// Whether its values are UTF-8 (then [`Dictionary::text`] has them).
    pub(crate) fn is_text(&self) -> bool {
        matches!(self.values, DictionaryValues::Text(_))
    }

    fn bytes(&self, code: u32) -> Option<&[u8]> {
        match &self.values {
            DictionaryValues::Text(values) => values.get(code as usize).map(|s| s.as_bytes()),
            DictionaryValues::Bytes(v) => {
                let i = code as usize;
                let start = usize::try_from(*v.offsets.get(i)?).ok()?;
                let end = usize::try_from(*v.offsets.get(i + 1)?).ok()?;
                v.values.get(start..end)
            }
        }
    }

    /// How many values it has.
    pub(crate) fn len(&self) -> usize {
        match &self.values {
            DictionaryValues::Text(values) => values.len(),
            DictionaryValues::Bytes(v) => v.offsets.len().saturating_sub(1),
        }
    }
}

/// Append one value to `to`.
fn push_value(to: &mut VarWidth, value: &[u8]) {
    to.values.extend_from_slice(value);
    to.offsets.push(i32::try_from(to.values.len()).unwrap_or(i32::MAX));
}

/// Append the values of `from` to `to` (a value whose offsets are out of
/// order or range is empty).
fn append_var_width(to: &mut VarWidth, from: &VarWidth) {
    for row in 0..from.offsets.len().saturating_sub(1) {
        push_value(to, var_width(from, row));
    }
}

/// The dictionaries an instance's `map` has been sent, by column index: the
/// host sends each value once, appending to a column's dictionary, and
/// then names it by id (see `utf8-dictionary` in the WIT world).
#[derive(Default)]
pub(crate) struct Dictionaries {
    by_column: Vec<Option<Rc<Dictionary>>>,
}

thread_local! {
    /// This instance's dictionaries.
    static DICTIONARIES: RefCell<Dictionaries> = RefCell::new(Dictionaries::default());
}

/// Keep the dictionaries `batch` brings, moving them out of it, and check
/// that every dictionary it names without values is held.
pub(crate) fn receive_dictionaries(batch: &mut Batch) -> Result<(), String> {
    DICTIONARIES.with_borrow_mut(|held| {
        for (i, col) in batch.columns.iter_mut().enumerate() {
            let ColumnData::Utf8Dictionary(d) = &mut col.data else {
                continue;
            };
            if held.by_column.len() <= i {
                held.by_column.resize_with(i + 1, || None);
            }
            if let Some(sent) = d.values.take() {
                match &mut held.by_column[i] {
                    // No one else holds it between calls: appended in place.
                    Some(dictionary) if dictionary.id == d.dictionary => Rc::make_mut(dictionary).append(sent),
                    other => *other = Some(Rc::new(Dictionary::new(d.dictionary, sent))),
                }
            } else if held.by_column[i].as_ref().map(|held| held.id) != Some(d.dictionary) {
                return Err(format!(
                    "the host named dictionary {} for input column {i} without sending it; this is a bug in wmr",
                    d.dictionary
                ));
            }
        }
        Ok(())
    })
}

/// Run `f` with this instance's dictionaries.
pub(crate) fn with_dictionaries<R>(f: impl FnOnce(&Dictionaries) -> R) -> R {
    DICTIONARIES.with_borrow(f)
}

/// The held dictionary `id`, if it is held.
pub(crate) fn held_dictionary(id: u64) -> Option<Rc<Dictionary>> {
    DICTIONARIES.with_borrow(|held| held.by_column.iter().flatten().find(|d| d.id == id).cloned())
}

/// Where the last string [`Record::str`] handed out from a dictionary
/// column lives, and its code: the in-mapper combiner knows a key it is
/// given by its address and length, and then groups by code, without hashing
/// the string. Cleared after every `map` call (the dictionary may be freed).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct CodedStr {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) code: u32,
    /// The dictionary's id, and how many values it has.
    pub(crate) dictionary: u64,
    pub(crate) dictionary_len: u32,
}

thread_local! {
    static LAST_CODED: Cell<Option<CodedStr>> = const { Cell::new(None) };
}

/// The code of `s` if it is the string [`Record::str`] last handed out from
/// a dictionary column (the very bytes, not an equal copy).
pub(crate) fn coded(s: &str) -> Option<CodedStr> {
    LAST_CODED
        .get()
        .filter(|c| c.addr == s.as_ptr() as usize && c.len == s.len())
}

/// Forget the last coded string (its dictionary may go away).
pub(crate) fn forget_coded() {
    LAST_CODED.set(None);
}

/// Value `row` of a text column: `None` if the offsets are not both
/// character boundaries within the values.
pub(crate) fn text_value<'a>((offsets, values): (&'a [i32], &'a str), row: usize) -> Option<&'a str> {
    let start = offsets.get(row).copied().unwrap_or(0).max(0) as usize;
    let end = offsets.get(row + 1).copied().unwrap_or(0).max(0) as usize;
    values.get(start..end)
}

impl<'a> InputBatch<'a> {
    /// A batch whose dictionaries `dictionaries` has received.
    pub(crate) fn new(source: &'a str, batch: &'a Batch, dictionaries: &'a Dictionaries) -> Self {
        let find = |name: &str| batch.names.iter().position(|n| n == name);
        let texts: Vec<_> = batch.columns.iter().map(text_column).collect();
        let coded = batch
            .columns
            .iter()
            .enumerate()
            .map(|(i, col)| match &col.data {
                ColumnData::Utf8Dictionary(d) => dictionaries
                    .by_column
                    .get(i)?
                    .as_ref()
                    .filter(|held| held.id == d.dictionary)
                    .map(|held| CodedColumn {
                        codes: d.codes.as_slice(),
                        dictionary: held,
                        texts: OnceCell::new(),
                    }),
                _ => None,
            })
            .collect();
        let line = find("line");
        let lines = line.and_then(|i| texts.get(i).copied().flatten());
        InputBatch {
            source,
            batch,
            line,
            lines,
            offset: find("offset"),
            texts,
            coded,
        }
    }

    /// Value `row` of dictionary column `i`: its bytes, and its text when
    /// the dictionary is UTF-8. Also remembers a text value's code for the
    /// in-mapper combiner.
    fn coded_value(&self, i: usize, row: usize) -> Option<(&'a [u8], Option<&'a str>)> {
        let column = self.coded.get(i)?.as_ref()?;
        let code = *column.codes.get(row)?;
        if let Some(text) = column.text(row) {
            LAST_CODED.set(Some(CodedStr {
                addr: text.as_ptr() as usize,
                len: text.len(),
                code,
                dictionary: column.dictionary.id,
                dictionary_len: u32::try_from(column.dictionary.len()).unwrap_or(u32::MAX),
            }));
            return Some((text.as_bytes(), Some(text)));
        }
        column.dictionary.bytes(code).map(|bytes| (bytes, None))
    }

    pub(crate) fn rows(&self) -> usize {
        self.batch.num_rows as usize
    }

    pub(crate) fn record(&'a self, row: usize) -> Record<'a> {
        Record { batch: self, row }
    }

    /// The file the batch came from.
    pub(crate) fn source(&self) -> &'a str {
        self.source
    }

    /// Dictionary column `i`'s dictionary, when it is one and held.
    pub(crate) fn dictionary(&self, i: usize) -> Option<&'a Dictionary> {
        self.coded.get(i)?.as_ref().map(|c| c.dictionary)
    }

    /// String column `i`'s offsets and values, when its values are UTF-8.
    pub(crate) fn text(&self, i: usize) -> Option<(&'a [i32], &'a str)> {
        self.texts.get(i).copied().flatten()
    }

    /// Column `name` and its index.
    pub(crate) fn column(&self, name: &str) -> Option<(usize, &'a Column)> {
        // `bytes_eq`, not `==`: this runs for every record, and on wasm32
        // `==` on strings is a call to a byte-at-a-time `memcmp`.
        let i = self
            .batch
            .names
            .iter()
            .position(|n| bytes_eq(n.as_bytes(), name.as_bytes()))?;
        Some((i, self.batch.columns.get(i)?))
    }

    /// Panic: the input has no column `name`.
    pub(crate) fn missing(&self, name: &str) -> ! {
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
        if let (Some(i), Some(col)) = (self.batch.line, col)
            && let ColumnData::Utf8Dictionary(_) = &col.data
        {
            if !is_valid(col, self.row) {
                return "";
            }
            if let Some((_, Some(text))) = self.batch.coded_value(i, self.row) {
                return text;
            }
        }
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
        let (i, col) = self.batch.column(name).unwrap_or_else(|| self.batch.missing(name));
        if !is_valid(col, self.row) {
            return None;
        }
        if let ColumnData::Utf8Dictionary(_) = &col.data {
            // Read through a one-value plain column: `T` reads as from any
            // string column (a `String` or `Vec<u8>` copy).
            let bytes = self.batch.coded_value(i, self.row).map_or(&[][..], |(b, _)| b);
            let plain = Column {
                validity: Vec::new(),
                data: ColumnData::Utf8(VarWidth {
                    offsets: vec![0, i32::try_from(bytes.len()).unwrap_or(0)],
                    values: bytes.to_vec(),
                }),
            };
            return match T::read(&plain, 0) {
                Some(v) => Some(v),
                None => panic!(
                    "column {name:?} is utf8 and cannot be read as {}",
                    std::any::type_name::<T>()
                ),
            };
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
        if let ColumnData::Utf8Dictionary(_) = &col.data {
            return match self.batch.coded_value(i, self.row) {
                Some((_, Some(text))) => Some(text),
                _ => panic!("column {name:?} is {}, not utf8", type_name(&col.data)),
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(values: &[&[u8]]) -> VarWidth {
        let mut v = VarWidth {
            offsets: vec![0],
            values: Vec::new(),
        };
        for value in values {
            push_value(&mut v, value);
        }
        v
    }

    #[test]
    fn a_dictionary_grows_by_appended_values_and_keeps_bytes_that_are_not_utf8() {
        let mut d = Dictionary::new(1, sent(&[b"a", "é".as_bytes()]));
        d.append(sent(&[b"c"]));
        assert!(d.is_text());
        assert_eq!(
            (d.len(), d.text(1), d.text(2), d.text(3)),
            (3, Some("é"), Some("c"), None)
        );
        d.append(sent(&[b"\xff", b""]));
        assert!(!d.is_text());
        let all: Vec<_> = (0..5).map(|code| d.bytes(code)).collect();
        assert_eq!(
            all,
            [
                Some(&b"a"[..]),
                Some("é".as_bytes()),
                Some(b"c"),
                Some(b"\xff"),
                Some(b"")
            ]
        );
        d.append(sent(&[b"z"]));
        assert_eq!((d.len(), d.bytes(5), d.text(0)), (6, Some(&b"z"[..]), None));
    }
}
