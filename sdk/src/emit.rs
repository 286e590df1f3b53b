//! What a job writes to and reads from: [`Emit`] for map output, [`Values`]
//! for one key's values, [`Output`] for reduce output rows.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::marker::PhantomData;

use crate::bindings::wmr::job::types::{Batch, Column};
use crate::columns::{builders_for, ColumnBuilder, Columns, IntoColumns};

type FixedHasher = BuildHasherDefault<std::hash::DefaultHasher>;

/// Where `map` writes its key/value pairs.
///
/// For a job that combines, pairs are grouped by key inside the guest as
/// they are emitted and each key's values are combined once per input batch
/// (the "in-mapper combiner"), so far fewer rows cross into the host.
pub struct Emit<K: Columns, V: Columns> {
    mode: EmitMode<K, V>,
    rows: usize,
}

enum EmitMode<K, V> {
    Direct { keys: Vec<ColumnBuilder>, values: Vec<ColumnBuilder> },
    Grouping { scratch: Vec<u8>, index: HashMap<Vec<u8>, usize, FixedHasher>, groups: Vec<(K, Vec<V>)> },
}

impl<K: Columns, V: Columns> Emit<K, V> {
    pub(crate) fn new(grouping: bool) -> Self {
        let mode = if grouping {
            EmitMode::Grouping { scratch: Vec::new(), index: HashMap::default(), groups: Vec::new() }
        } else {
            EmitMode::Direct { keys: builders_for::<K>(), values: builders_for::<V>() }
        };
        Emit { mode, rows: 0 }
    }

    /// Emit one key/value pair. The key may be given in a borrowed form
    /// (`&str` for a `String` key, a tuple of such parts for a tuple key).
    ///
    /// ```no_run
    /// # fn f(out: &mut wmr_sdk::Emit<String, u64>) {
    /// out.emit("word", 1);
    /// # }
    /// ```
    pub fn emit<Q: IntoColumns<K>>(&mut self, key: Q, value: V) {
        self.rows += 1;
        match &mut self.mode {
            EmitMode::Direct { keys, values } => {
                key.append_to(keys);
                value.append(values);
            }
            EmitMode::Grouping { scratch, index, groups } => {
                scratch.clear();
                key.encode(scratch);
                match index.get(scratch.as_slice()) {
                    Some(&g) => {
                        if let Some((_, vs)) = groups.get_mut(g) {
                            vs.push(value)
                        }
                    }
                    None => {
                        index.insert(scratch.clone(), groups.len());
                        groups.push((key.to_owned_value(), vec![value]));
                    }
                }
            }
        }
    }

    /// How many pairs have been emitted so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether nothing has been emitted yet.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finish into a batch of key columns then value columns; grouped pairs
    /// are first combined per key with `combine`.
    pub(crate) fn finish(self, mut combine: impl FnMut(&K, Values<'_, V>) -> V) -> Batch {
        let (keys, values, rows) = match self.mode {
            EmitMode::Direct { keys, values } => (keys, values, self.rows),
            EmitMode::Grouping { groups, .. } => {
                let rows = groups.len();
                let mut keys = builders_for::<K>();
                let mut values = builders_for::<V>();
                for (key, vs) in groups {
                    let combined = if vs.len() == 1 {
                        vs.into_iter().next().expect("checked: one value")
                    } else {
                        combine(&key, Values::owned(vs))
                    };
                    key.append(&mut keys);
                    combined.append(&mut values);
                }
                (keys, values, rows)
            }
        };
        batch_of(keys.into_iter().chain(values), rows)
    }
}

/// Turn finished builders into a batch with the engine's internal column names.
pub(crate) fn batch_of(builders: impl Iterator<Item = ColumnBuilder>, num_rows: usize) -> Batch {
    let columns: Vec<Column> = builders.map(ColumnBuilder::finish).collect();
    let names = (0..columns.len()).map(|i| format!("c{i}")).collect();
    Batch { num_rows: rows_u32(num_rows), names, columns }
}

fn rows_u32(rows: usize) -> u32 {
    u32::try_from(rows).unwrap_or_else(|_| panic!("wmr-sdk: one output batch has more than 4 billion rows"))
}

/// The values of one key, in the order the engine delivers them. An iterator:
/// `values.sum()`, `values.count()`, `for v in values { .. }` all work.
pub struct Values<'a, V> {
    source: ValuesSource<'a, V>,
}

enum ValuesSource<'a, V> {
    Columns { cols: &'a [Column], next: usize, end: usize, _v: PhantomData<V> },
    Owned(std::vec::IntoIter<V>),
}

impl<'a, V: Columns> Values<'a, V> {
    pub(crate) fn rows(cols: &'a [Column], start: usize, end: usize) -> Self {
        Values { source: ValuesSource::Columns { cols, next: start, end, _v: PhantomData } }
    }

    pub(crate) fn owned(values: Vec<V>) -> Self {
        Values { source: ValuesSource::Owned(values.into_iter()) }
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
    pub fn sum(self) -> V {
        Iterator::sum(self)
    }
}

impl<V: Columns> Iterator for Values<'_, V> {
    type Item = V;

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
            ValuesSource::Owned(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.source {
            ValuesSource::Columns { next, end, .. } => (0, Some(end - next)),
            ValuesSource::Owned(it) => it.size_hint(),
        }
    }
}

/// Where `reduce` writes rows of the job's output.
pub struct Output<O: Columns> {
    cols: Vec<ColumnBuilder>,
    rows: usize,
    _row: PhantomData<O>,
}

impl<O: Columns> Output<O> {
    pub(crate) fn new() -> Self {
        Output { cols: builders_for::<O>(), rows: 0, _row: PhantomData }
    }

    /// Write one output row. Borrowed parts are accepted, e.g. `(&str, u64)`
    /// for a `(String, u64)` output.
    ///
    /// ```no_run
    /// # fn f(out: &mut wmr_sdk::Output<(String, u64)>) {
    /// out.push(("word", 3));
    /// # }
    /// ```
    pub fn push<R: IntoColumns<O>>(&mut self, row: R) {
        row.append_to(&mut self.cols);
        self.rows += 1;
    }

    pub(crate) fn finish(self, names: &[String]) -> Batch {
        let mut batch = batch_of(self.cols.into_iter(), self.rows);
        batch.names = names.to_vec();
        batch
    }
}
