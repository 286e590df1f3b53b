//! [`Values`]: what `combine` and `reduce` read one key's values from.

use std::marker::PhantomData;

use crate::bindings::wmr::job::types::{Column, ColumnData};
use crate::columns::{Columns, is_valid, var_width};

/// The values of one key, in the order the engine delivers them. An iterator:
/// `values.sum()`, `values.count()`, `for v in values { .. }` all work.
pub struct Values<'a, V> {
    source: ValuesSource<'a, V>,
}

enum ValuesSource<'a, V> {
    Columns {
        cols: &'a [Column],
        next: usize,
        end: usize,
        _v: PhantomData<V>,
    },
    /// Values taken out of the in-mapper combiner's slots.
    Taking(std::slice::IterMut<'a, V>),
}

impl<'a, V: Columns> Values<'a, V> {
    pub(crate) fn rows(cols: &'a [Column], start: usize, end: usize) -> Self {
        Values {
            source: ValuesSource::Columns {
                cols,
                next: start,
                end,
                _v: PhantomData,
            },
        }
    }

    #[inline]
    pub(crate) fn taking(values: &'a mut [V]) -> Self {
        Values {
            source: ValuesSource::Taking(values.iter_mut()),
        }
    }
}

impl<'a> Values<'a, String> {
    /// The values as borrowed strings, in order: no `String` is made for
    /// each, as iterating the `Values` itself makes. For a reduce that only
    /// passes its values on or looks at them (a sort, a filter, a join's
    /// probe side).
    ///
    /// ```no_run
    /// # fn f(lines: wmr_sdk::Values<String>, out: &mut wmr_sdk::Output<String>) {
    /// for line in lines.strs() {
    ///     out.push(line);
    /// }
    /// # }
    /// ```
    pub fn strs(self) -> impl Iterator<Item = &'a str> {
        let (columns, taken) = match self.source {
            ValuesSource::Columns { cols, next, end, .. } => (Some((cols, next..end)), None),
            ValuesSource::Taking(it) => (None, Some(it)),
        };
        let from_columns = columns.into_iter().flat_map(|(cols, rows)| {
            rows.filter_map(move |row| match cols.first().map(|c| (c, &c.data)) {
                // As `String::read` does, a null row is skipped; text that
                // is not UTF-8 (the host sends none) is skipped too, since
                // it cannot be borrowed as a `str`.
                Some((col, ColumnData::Utf8(v))) if is_valid(col, row) => std::str::from_utf8(var_width(v, row)).ok(),
                _ => None,
            })
        });
        from_columns.chain(taken.into_iter().flatten().map(|s| s.as_str()))
    }
}

impl<V: Columns + std::iter::Sum<V>> Values<'_, V> {
    /// The sum of the values, typed as the values are (so it needs no
    /// annotation where `Iterator::sum` would).
    ///
    /// ```no_run
    /// # fn f(counts: wmr_sdk::Values<u64>) -> u64 {
    /// counts.sum()
    /// # }
    /// ```
    #[inline]
    pub fn sum(self) -> V {
        Iterator::sum(self)
    }
}

impl<V: Columns> Iterator for Values<'_, V> {
    type Item = V;

    #[inline]
    fn next(&mut self) -> Option<V> {
        match &mut self.source {
            ValuesSource::Columns { cols, next, end, .. } => {
                while *next < *end {
                    let row = *next;
                    *next += 1;
                    // A row the host sent with a null or mistyped part is
                    // skipped rather than invented; the host only sends what
                    // this job itself emitted, so this does not happen.
                    if let Some(v) = V::read(cols, row) {
                        return Some(v);
                    }
                }
                None
            }
            ValuesSource::Taking(it) => it.next().map(std::mem::take),
        }
    }

    // Dispatch on the source once, not once per value: `sum` and friends
    // then run a plain loop. Reading columns is kept out of line, so that
    // this inlines where the source is known: the in-mapper combiner's
    // `combine` of two values is then as cheap as the job's own code.
    #[inline]
    fn fold<B, F: FnMut(B, V) -> B>(self, init: B, mut f: F) -> B {
        #[inline(never)]
        fn fold_rows<V: Columns, B, F: FnMut(B, V) -> B>(
            cols: &[Column],
            rows: std::ops::Range<usize>,
            init: B,
            f: F,
        ) -> B {
            rows.filter_map(|row| V::read(cols, row)).fold(init, f)
        }
        match self.source {
            ValuesSource::Columns { cols, next, end, .. } => fold_rows(cols, next..end, init, f),
            ValuesSource::Taking(it) => it.fold(init, |acc, v| f(acc, std::mem::take(v))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.source {
            ValuesSource::Columns { next, end, .. } => (0, Some(end - next)),
            ValuesSource::Taking(it) => it.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::{ColumnBuilder, builders_for};

    #[test]
    fn values_lend_their_strings_in_order() {
        let mut cols = builders_for::<String>();
        for text in ["zero", "one", "two", "three"] {
            text.to_string().append(&mut cols);
        }
        let cols: Vec<Column> = cols.into_iter().map(ColumnBuilder::finish).collect();
        let lent: Vec<&str> = Values::<String>::rows(&cols, 1, 3).strs().collect();
        assert_eq!(lent, ["one", "two"]);
        let owned: Vec<String> = Values::<String>::rows(&cols, 1, 4).collect();
        assert_eq!(owned, Values::<String>::rows(&cols, 1, 4).strs().collect::<Vec<_>>());
        let mut held = ["a".to_string(), "b".to_string()];
        assert_eq!(Values::taking(&mut held).strs().collect::<Vec<_>>(), ["a", "b"]);
    }
}
