//! What a job writes to and reads from: [`Emit`] for map output, [`Values`]
//! for one key's values, [`Output`] for reduce output rows.

use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::bindings::wmr::job::types::{Batch, Column};
use crate::columns::{ColumnBuilder, Columns, IntoColumns, builders_for};

/// How a job combines one key's values; see [`Job::combine`](crate::Job::combine).
pub(crate) type CombineFn<K, V> = fn(&K, Values<'_, V>) -> V;

/// A key's pending values are combined into one whenever this many pile up,
/// so memory stays bounded by the number of distinct keys held.
const FOLD_AT: usize = 4;

/// The in-mapper combiner returns what it holds once it holds this many
/// distinct keys...
const MAX_HELD_KEYS: usize = 1 << 18;
/// ...or this many bytes of encoded keys.
const MAX_HELD_KEY_BYTES: usize = 32 << 20;

/// Where `map` writes its key/value pairs.
///
/// For a job that combines, pairs are grouped by key inside the guest as
/// they are emitted and each key's values are combined as they pile up (the
/// "in-mapper combiner"), so far fewer rows cross into the host.
pub struct Emit<K: Columns, V: Columns> {
    mode: EmitMode<K, V>,
    rows: usize,
}

enum EmitMode<K, V> {
    Direct {
        keys: Vec<ColumnBuilder>,
        values: Vec<ColumnBuilder>,
    },
    Grouping(Grouping<K, V>),
}

/// The in-mapper combiner's state. Group `g` has its key in `keys[g]` and
/// its `counts[g]` uncombined values in `slab[g * FOLD_AT..]` (one cache
/// line for numbers); the hash table's entry for it holds
/// the key's byte encoding, inline when short, else where it lies in the
/// arena. A key seen before thus costs a hash, one table probe and one
/// comparison, with no allocation and no copy. Profiles led to this layout:
/// every other memory a probe touches is a likely cache miss.
struct Grouping<K, V> {
    combine: CombineFn<K, V>,
    hasher: FixedState,
    table: HashTable<Entry>,
    arena: Vec<u8>,
    keys: Vec<K>,
    counts: Vec<u8>,
    slab: Vec<V>,
    /// Each group's hash, for growing the table.
    hashes: Vec<u64>,
}

/// A hash table entry for group `group`, whose key's encoding is `len`
/// bytes long: `inline[..len]` when it fits, else `arena[start..start + len]`
/// with `start` kept in the first four bytes of `inline`.
#[derive(Clone, Copy)]
struct Entry {
    group: u32,
    len: u32,
    inline: [u8; INLINE_KEY_BYTES],
}

const INLINE_KEY_BYTES: usize = 16;

impl Entry {
    fn encoded<'a>(&'a self, arena: &'a [u8]) -> &'a [u8] {
        let len = self.len as usize;
        match self.inline.get(..len) {
            Some(inline) => inline,
            None => {
                let start = u32::from_le_bytes([self.inline[0], self.inline[1], self.inline[2], self.inline[3]]);
                arena.get(start as usize..start as usize + len).unwrap_or(&[])
            }
        }
    }
}

fn arena_offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or_else(|_| panic!("wmr-sdk: the in-mapper combiner grew past 4 GiB"))
}

impl<K: Columns, V: Columns> Grouping<K, V> {
    fn push<Q: IntoColumns<K>>(&mut self, key: Q, value: V) {
        let mut hasher = self.hasher.build_hasher();
        key.hash_key(&mut hasher);
        let hash = hasher.finish();
        let arena = &self.arena;
        let found = self
            .table
            .find(hash, |e| key.matches(e.encoded(arena)))
            .map(|e| e.group as usize);
        match found {
            Some(g) => {
                let base = g * FOLD_AT;
                let mut count = self.counts[g] as usize;
                if count == FOLD_AT {
                    let folded = (self.combine)(&self.keys[g], Values::taking(&mut self.slab[base..base + count]));
                    self.slab[base] = folded;
                    count = 1;
                }
                self.slab[base + count] = value;
                self.counts[g] = (count + 1) as u8;
            }
            None => {
                let start = self.arena.len();
                key.encode(&mut self.arena);
                let len = self.arena.len() - start;
                let mut inline = [0; INLINE_KEY_BYTES];
                if let Some(short) = inline.get_mut(..len) {
                    short.copy_from_slice(&self.arena[start..]);
                    self.arena.truncate(start);
                } else {
                    inline[..4].copy_from_slice(&arena_offset(start).to_le_bytes());
                }
                let entry = Entry {
                    group: arena_offset(self.keys.len()),
                    len: arena_offset(len),
                    inline,
                };
                self.slab.push(value);
                self.slab.extend(std::iter::repeat_with(V::default).take(FOLD_AT - 1));
                self.counts.push(1);
                self.keys.push(key.to_owned_value());
                self.hashes.push(hash);
                let hashes = &self.hashes;
                self.table.insert_unique(hash, entry, |e| hashes[e.group as usize]);
            }
        }
    }
}

impl<K: Columns, V: Columns> Emit<K, V> {
    /// An `Emit` that groups and combines with `combine` when given, and
    /// otherwise writes every pair straight into columns.
    pub(crate) fn new(combine: Option<CombineFn<K, V>>) -> Self {
        let mode = match combine {
            Some(combine) => EmitMode::Grouping(Grouping {
                combine,
                hasher: FixedState::with_seed(0x776d_725f_6d61_7021),
                table: HashTable::new(),
                arena: Vec::new(),
                keys: Vec::new(),
                counts: Vec::new(),
                slab: Vec::new(),
                hashes: Vec::new(),
            }),
            None => EmitMode::Direct {
                keys: builders_for::<K>(),
                values: builders_for::<V>(),
            },
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
            EmitMode::Grouping(grouping) => grouping.push(key, value),
        }
    }

    /// Whether `map` should return what this holds now rather than keep
    /// combining into it: always for a job that does not combine.
    pub(crate) fn is_full(&self) -> bool {
        match &self.mode {
            EmitMode::Direct { .. } => true,
            EmitMode::Grouping(g) => g.keys.len() >= MAX_HELD_KEYS || g.arena.len() >= MAX_HELD_KEY_BYTES,
        }
    }

    /// Whether grouping paid: at least 1.1 pairs were emitted per key held.
    /// When it did not (keys mostly distinct), grouping the rest of the
    /// task's pairs would cost a hash probe and a key copy per pair for
    /// nothing, and the host sorts them anyway.
    pub(crate) fn grouping_pays(&self) -> bool {
        match &self.mode {
            EmitMode::Direct { .. } => false,
            EmitMode::Grouping(g) => self.rows * 10 >= g.keys.len() * 11,
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
    /// are first combined into one value per key.
    pub(crate) fn finish(self) -> Batch {
        let (keys, values, rows) = match self.mode {
            EmitMode::Direct { keys, values } => (keys, values, self.rows),
            EmitMode::Grouping(mut grouping) => {
                let rows = grouping.keys.len();
                let mut keys = builders_for::<K>();
                let mut values = builders_for::<V>();
                let slots = grouping.slab.chunks_mut(FOLD_AT);
                for ((key, slot), count) in grouping.keys.into_iter().zip(slots).zip(grouping.counts) {
                    let pending = &mut slot[..count as usize];
                    let combined = match pending {
                        [one] => std::mem::take(one),
                        _ => (grouping.combine)(&key, Values::taking(pending)),
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
    Batch {
        num_rows: rows_u32(num_rows),
        names,
        columns,
    }
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

    pub(crate) fn taking(values: &'a mut [V]) -> Self {
        Values {
            source: ValuesSource::Taking(values.iter_mut()),
        }
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
            ValuesSource::Taking(it) => it.next().map(std::mem::take),
        }
    }

    // Dispatch on the source once, not once per value: `sum` and friends
    // then run a plain loop.
    fn fold<B, F: FnMut(B, V) -> B>(self, init: B, mut f: F) -> B {
        match self.source {
            ValuesSource::Columns { cols, next, end, .. } => {
                (next..end).filter_map(|row| V::read(cols, row)).fold(init, f)
            }
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

/// Where `reduce` writes rows of the job's output.
pub struct Output<O: Columns> {
    cols: Vec<ColumnBuilder>,
    rows: usize,
    _row: PhantomData<O>,
}

impl<O: Columns> Output<O> {
    pub(crate) fn new() -> Self {
        Output {
            cols: builders_for::<O>(),
            rows: 0,
            _row: PhantomData,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(_key: &String, values: Values<'_, u64>) -> u64 {
        values.sum()
    }

    fn rows_of(batch: &Batch) -> Vec<(String, u64)> {
        let (keys, values) = batch.columns.split_at(1);
        (0..batch.num_rows as usize)
            .map(|r| {
                (
                    String::read(keys, r).expect("key"),
                    u64::read(values, r).expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn grouping_combines_each_key_once_in_first_seen_order() {
        let mut emit = Emit::<String, u64>::new(Some(sum));
        for i in 0..1000u64 {
            emit.emit("often", i);
            if i % 100 == 0 {
                emit.emit(format!("rare{}", i / 100 % 3), 1);
            }
        }
        // Keys whose encodings share a prefix or differ only past 8 bytes.
        emit.emit("abcdefgh1", 5);
        emit.emit("abcdefgh2", 6);
        emit.emit("", 7);
        // Keys too long to keep inline in the table, 20 of each.
        for i in 0..40 {
            emit.emit(
                ["a key longer than sixteen bytes", "a key longer than sixteen bytez"][i % 2],
                1,
            );
        }
        assert_eq!(emit.len(), 1053);
        assert!(emit.grouping_pays());
        let rows = rows_of(&emit.finish());
        assert_eq!(
            rows,
            [
                ("often".to_string(), 999 * 1000 / 2),
                ("rare0".to_string(), 4),
                ("rare1".to_string(), 3),
                ("rare2".to_string(), 3),
                ("abcdefgh1".to_string(), 5),
                ("abcdefgh2".to_string(), 6),
                (String::new(), 7),
                ("a key longer than sixteen bytes".to_string(), 20),
                ("a key longer than sixteen bytez".to_string(), 20),
            ]
        );
    }

    #[test]
    fn grouping_does_not_pay_when_keys_are_distinct() {
        let mut emit = Emit::<String, u64>::new(Some(sum));
        for i in 0..1000u64 {
            emit.emit(format!("k{i}"), 1);
            if i % 50 == 0 {
                emit.emit("again", 1);
            }
        }
        assert!(!emit.grouping_pays());
        assert!(!Emit::<String, u64>::new(None).grouping_pays());
    }

    #[test]
    fn direct_mode_keeps_every_pair() {
        let mut emit = Emit::<String, u64>::new(None);
        emit.emit("a", 1);
        emit.emit("a", 2);
        assert_eq!(rows_of(&emit.finish()), [("a".to_string(), 1), ("a".to_string(), 2)]);
    }
}
