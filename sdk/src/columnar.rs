//! Whole-batch input for [`Job::map_batch`](crate::Job::map_batch):
//! [`Records`], one `map` call's records, and typed views of its columns
//! ([`Strings`], [`Records::values`]) that a job reads column by column,
//! with the column found once per batch instead of once per record.

use std::marker::PhantomData;

use crate::bindings::wmr::job::types::{Column, ColumnData};
use crate::columns::{Field, is_valid, type_name, validity_bit};
use crate::record::{Dictionary, InputBatch, Record, text_value};

/// The records of one `map` call, all from one file, for jobs that read
/// their input a column at a time (see [`Job::map_batch`](crate::Job::map_batch)).
pub struct Records<'a> {
    batch: &'a InputBatch<'a>,
}

impl<'a> Records<'a> {
    pub(crate) fn new(batch: &'a InputBatch<'a>) -> Self {
        Records { batch }
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.batch.rows()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file the records came from, as given to `--input` (a path or URL).
    pub fn file(&self) -> &'a str {
        self.batch.source()
    }

    /// Each record in turn. While a record is in hand, a panic is reported
    /// with its row (and with none once the last has been handed out).
    pub fn iter(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let batch = self.batch;
        let mut rows = 0..batch.rows();
        std::iter::from_fn(move || {
            let row = rows.next();
            crate::glue::set_current_row(row);
            row.map(|row| batch.record(row))
        })
    }

    /// String column `name`, each row's value without copying it.
    ///
    /// # Panics
    /// If there is no such column or it is not a string column; the message
    /// lists the columns there are, and the job fails with it.
    pub fn strings(&self, name: &str) -> Strings<'a> {
        let (i, col) = self.batch.column(name).unwrap_or_else(|| self.batch.missing(name));
        let validity = col.validity.as_slice();
        let data = match &col.data {
            ColumnData::Utf8Dictionary(d) => match self.batch.dictionary(i) {
                Some(dictionary) if !dictionary.is_text() => {
                    panic!("column {name:?} holds a value that is not UTF-8; read it as Vec<u8>")
                }
                Some(dictionary) => StringsData::Coded {
                    codes: d.codes.as_slice(),
                    dictionary,
                },
                None => panic!("column {name:?} is {}, not utf8", type_name(&col.data)),
            },
            ColumnData::Utf8(_) => match self.batch.text(i) {
                Some((offsets, values)) => StringsData::Plain { offsets, values },
                None => panic!("column {name:?} holds a value that is not UTF-8; read it as Vec<u8>"),
            },
            other => panic!("column {name:?} is {}, not utf8", type_name(other)),
        };
        Strings {
            rows: self.len(),
            validity,
            data,
        }
    }

    /// Column `name` read as `T`, row by row: `None` for a null row. `T`
    /// reads as in [`Record::get`].
    ///
    /// # Panics
    /// If there is no such column; if its type cannot be read as `T`, at
    /// its first value that is not null.
    pub fn values<T: Field>(&self, name: &str) -> ColumnValues<'a, T> {
        let (index, column) = self.batch.column(name).unwrap_or_else(|| self.batch.missing(name));
        ColumnValues {
            batch: self.batch,
            column,
            index,
            name: name.to_string(),
            row: 0,
            rows: self.len(),
            _value: PhantomData,
        }
    }
}

/// One column's values, row by row; see [`Records::values`].
pub struct ColumnValues<'a, T> {
    batch: &'a InputBatch<'a>,
    column: &'a Column,
    index: usize,
    name: String,
    row: usize,
    rows: usize,
    _value: PhantomData<T>,
}

impl<T: Field> Iterator for ColumnValues<'_, T> {
    type Item = Option<T>;

    #[inline]
    fn next(&mut self) -> Option<Option<T>> {
        let row = self.row;
        if row >= self.rows {
            return None;
        }
        self.row += 1;
        if let ColumnData::Utf8Dictionary(_) = self.column.data {
            return Some(self.coded(row));
        }
        Some(self.plain(row))
    }

    /// Every value in one loop (`for_each`, `sum` and the like, and
    /// through `map` and the like), the column's type matched once.
    fn fold<B, F: FnMut(B, Option<T>) -> B>(mut self, init: B, mut f: F) -> B {
        let mut acc = init;
        if let ColumnData::Utf8Dictionary(_) = self.column.data {
            for value in self.by_ref() {
                acc = f(acc, value);
            }
            return acc;
        }
        for row in self.row..self.rows {
            acc = f(acc, self.plain(row));
        }
        acc
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.rows.saturating_sub(self.row);
        (left, Some(left))
    }
}

impl<T: Field> ColumnValues<'_, T> {
    /// Row `row` of a column that is not dictionary-encoded.
    #[inline(always)]
    fn plain(&self, row: usize) -> Option<T> {
        if !is_valid(self.column, row) {
            return None;
        }
        match T::read(self.column, row) {
            Some(value) => Some(value),
            None => self.unreadable(),
        }
    }

    /// Row `row` of a dictionary-encoded column.
    #[inline(never)]
    fn coded(&self, row: usize) -> Option<T> {
        self.batch.record(row).get::<T>(&self.name)
    }

    #[cold]
    #[inline(never)]
    fn unreadable(&self) -> ! {
        panic!(
            "column {:?} (column {}) is {} and cannot be read as {}",
            self.name,
            self.index,
            type_name(&self.column.data),
            std::any::type_name::<T>()
        )
    }
}

/// A string column of one batch; see [`Records::strings`].
pub struct Strings<'a> {
    rows: usize,
    validity: &'a [u8],
    data: StringsData<'a>,
}

enum StringsData<'a> {
    /// Codes into a dictionary (Parquet's usual string columns).
    Coded {
        codes: &'a [u32],
        dictionary: &'a Dictionary,
    },
    /// Offsets into text checked as UTF-8 once.
    Plain { offsets: &'a [i32], values: &'a str },
}

impl<'a> Strings<'a> {
    /// How many rows the column has.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Row `row`'s value; `None` when it is null or past the end.
    #[inline]
    pub fn get(&self, row: usize) -> Option<&'a str> {
        if !self.is_valid(row) {
            return None;
        }
        match self.data {
            StringsData::Coded { codes, dictionary } => dictionary.text(*codes.get(row)?),
            StringsData::Plain { offsets, values } => text_value((offsets, values), row),
        }
    }

    /// Each row's value in turn, `None` for a null row.
    pub fn iter(&self) -> impl Iterator<Item = Option<&'a str>> + '_ {
        (0..self.rows).map(|row| self.get(row))
    }

    /// Whether row `row` is there and not null.
    #[inline]
    pub(crate) fn is_valid(&self, row: usize) -> bool {
        row < self.rows && validity_bit(self.validity, row)
    }

    /// The column as dictionary codes, when it is one: the dictionary, and
    /// each row's code (a null row's is 0; see [`Strings::is_valid`]). The
    /// in-mapper combiner groups such keys by code.
    pub(crate) fn coded(&self) -> Option<(&'a Dictionary, &'a [u32])> {
        let StringsData::Coded { codes, dictionary } = self.data else {
            return None;
        };
        Some((dictionary, codes.get(..self.rows).unwrap_or(codes)))
    }
}
