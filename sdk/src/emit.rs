//! What a job writes to: [`Emit`] for map output, [`Output`] for reduce
//! output rows. (What it reads a key's values from is [`crate::Values`].)

use std::marker::PhantomData;

use crate::bindings::wmr::job::types::{Batch, Column};
use crate::columnar::Strings;
use crate::columns::{ColumnBuilder, Columns, IntoColumns, builders_for};
use crate::combiner::{CombineFn, Grouping};

/// The in-mapper combiner returns what it holds once it holds this many
/// distinct keys...
const MAX_HELD_KEYS: usize = 1 << 18;
/// ...or this many bytes of long keys' encodings.
const MAX_HELD_KEY_BYTES: usize = 32 << 20;

/// Where `map` writes its key/value pairs.
///
/// For a job that combines, pairs are grouped by key inside the guest as
/// they are emitted and each key's values are combined as they arrive (the
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
    Grouping(Box<Grouping<K, V>>),
}

impl<K: Columns, V: Columns> Emit<K, V> {
    /// An `Emit` that groups and combines with `combine` when given, and
    /// otherwise writes every pair straight into columns.
    pub(crate) fn new(combine: Option<CombineFn<K, V>>) -> Self {
        let mode = match combine {
            Some(combine) => EmitMode::Grouping(Box::new(Grouping::new(combine))),
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
    pub(crate) fn is_full(&mut self) -> bool {
        match &mut self.mode {
            EmitMode::Direct { .. } => true,
            EmitMode::Grouping(g) => {
                g.settle();
                g.keys_held() >= MAX_HELD_KEYS || g.key_bytes_held() >= MAX_HELD_KEY_BYTES
            }
        }
    }

    /// Whether grouping paid: at least 2 pairs were emitted per key held,
    /// so that it at least halved the rows. When it did not (keys mostly
    /// distinct), grouping the rest of the task's pairs would cost a hash
    /// probe and a key copy per pair for too little, and the host sorts
    /// them anyway: on text where 4 words in 5 are distinct within a
    /// task, grouping them took a 256 MiB word count from 12.6 s to 14.9 s.
    pub(crate) fn grouping_pays(&mut self) -> bool {
        match &mut self.mode {
            EmitMode::Direct { .. } => false,
            EmitMode::Grouping(g) => {
                g.settle();
                self.rows >= g.keys_held() * 2
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

    /// Finish into a batch of key columns then value columns: for a job
    /// that combines, one row per key held, with its values combined.
    pub(crate) fn finish(self) -> Batch {
        let (keys, values, rows) = match self.mode {
            EmitMode::Direct { keys, values } => (keys, values, self.rows),
            EmitMode::Grouping(grouping) => {
                let mut keys = builders_for::<K>();
                let mut values = builders_for::<V>();
                let mut rows = 0;
                grouping.for_each_group(|key, value| {
                    key.append(&mut keys);
                    value.append(&mut values);
                    rows += 1;
                });
                (keys, values, rows)
            }
        };
        batch_of(keys.into_iter().chain(values), rows)
    }
}

/// A string key's column at a time.
impl<V: Columns> Emit<String, V> {
    /// Emit one pair per row, `keys` and `values` in step (as `zip` pairs
    /// them): the key is the row's value in `keys`, the value the row's item
    /// of `values`. A row whose key or value is `None` (null) emits
    /// nothing; returns how many rows did not. For a job that combines
    /// (while combining pays), a dictionary-encoded key column (Parquet's
    /// usual string columns) of up to 2^18 values is grouped by its codes,
    /// which costs a fraction of what [`Emit::emit`] does per row.
    ///
    /// ```no_run
    /// # fn f(records: &wmr_sdk::Records<'_>, out: &mut wmr_sdk::Emit<String, (f64, u64)>) {
    /// let keys = records.strings("k");
    /// let values = records.values::<f64>("v").map(|v| v.map(|v| (v, 1)));
    /// let skipped = out.emit_column(&keys, values);
    /// # }
    /// ```
    pub fn emit_column(&mut self, keys: &Strings<'_>, values: impl IntoIterator<Item = Option<V>>) -> usize {
        // A panic in here (a `combine`'s) is of no one row.
        crate::glue::set_current_row(None);
        let mut skipped = 0;
        if let (EmitMode::Grouping(grouping), Some((dictionary, codes))) = (&mut self.mode, keys.coded()) {
            // Gathered first, driven by `values` (`for_each`, not `next`:
            // an iterator of a column's values is then one loop, whatever
            // `map`s the job put on it).
            let mut pairs = grouping.coded_pairs(dictionary.len());
            let mut row = 0;
            values.into_iter().for_each(|value| {
                if let Some(&code) = codes.get(row) {
                    match value {
                        Some(value) if keys.is_valid(row) => pairs.push(code, value),
                        _ => skipped += 1,
                    }
                }
                row += 1;
            });
            self.rows += pairs.len();
            if let Err(pairs) = grouping.push_coded(dictionary) {
                for (code, value) in pairs {
                    if let Some(key) = dictionary.text(code) {
                        grouping.push(key, value);
                    }
                }
            }
            return skipped;
        }
        for (key, value) in keys.iter().zip(values) {
            match (key, value) {
                (Some(key), Some(value)) => self.emit(key, value),
                _ => skipped += 1,
            }
        }
        skipped
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

    fn sum() -> Option<CombineFn<String, u64>> {
        Some(Box::new(|_key: &String, held: u64, value: u64| held + value))
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
    fn grouping_combines_each_key_once() {
        let mut emit = Emit::<String, u64>::new(sum());
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
        let mut rows = rows_of(&emit.finish());
        rows.sort();
        let mut want = [
            ("often".to_string(), 999 * 1000 / 2),
            ("rare0".to_string(), 4),
            ("rare1".to_string(), 3),
            ("rare2".to_string(), 3),
            ("abcdefgh1".to_string(), 5),
            ("abcdefgh2".to_string(), 6),
            (String::new(), 7),
            ("a key longer than sixteen bytes".to_string(), 20),
            ("a key longer than sixteen bytez".to_string(), 20),
        ];
        want.sort();
        assert_eq!(rows, want);
    }

    #[test]
    fn grouping_does_not_pay_when_keys_are_distinct() {
        // 1000 distinct keys, with `repeats` after every `every`-th one.
        let emitted = |every: u64, repeats: &[&str]| {
            let mut emit = Emit::<String, u64>::new(sum());
            for i in 0..1000u64 {
                emit.emit(format!("k{i}"), 1);
                if i % every == 0 {
                    for r in repeats {
                        emit.emit(*r, 1);
                    }
                }
            }
            emit
        };
        assert!(!emitted(50, &["again"]).grouping_pays());
        assert!(!Emit::<String, u64>::new(None).grouping_pays());
        // 4 keys in 5 distinct: grouping removes a fifth of the rows, which
        // costs more than the host's sorting them.
        assert!(!emitted(4, &["again"]).grouping_pays());
        // Two rows in three removed pays.
        assert!(emitted(1, &["again", "and again"]).grouping_pays());
    }

    /// `words` end to end, as a string column's offsets and values.
    fn var_width_of<'w>(words: impl IntoIterator<Item = &'w str>) -> crate::bindings::wmr::job::types::VarWidth {
        let mut offsets = vec![0];
        let mut values = Vec::new();
        for w in words {
            values.extend_from_slice(w.as_bytes());
            offsets.push(values.len() as i32);
        }
        crate::bindings::wmr::job::types::VarWidth { offsets, values }
    }

    /// A batch of one dictionary-encoded column `k`, its dictionary sent
    /// (`Some`) or named by id alone.
    fn coded_batch(id: u64, dictionary: Option<&[&str]>, codes: &[u32], validity: Vec<u8>) -> Batch {
        use crate::bindings::wmr::job::types::{ColumnData, Utf8Dictionary};
        let values = dictionary.map(|words| var_width_of(words.iter().copied()));
        Batch {
            num_rows: codes.len() as u32,
            names: vec!["k".into()],
            columns: vec![Column {
                validity,
                data: ColumnData::Utf8Dictionary(Utf8Dictionary {
                    dictionary: id,
                    values,
                    codes: codes.to_vec(),
                }),
            }],
        }
    }

    #[test]
    fn dictionary_keys_group_by_code_across_batches_and_dictionaries() {
        use crate::record::{InputBatch, forget_coded, receive_dictionaries, with_dictionaries};
        let mut emit = Emit::<String, u64>::new(sum());
        let feed = |mut batch: Batch, emit: &mut Emit<String, u64>| {
            receive_dictionaries(&mut batch).unwrap();
            with_dictionaries(|dictionaries| {
                let input = InputBatch::new("f", &batch, dictionaries);
                for row in 0..input.rows() {
                    let record = input.record(row);
                    match record.str("k") {
                        // Every third row by an owned copy, which is grouped by
                        // hashing, into the same groups.
                        Some(k) if row % 3 == 2 => emit.emit(k.to_string(), 10),
                        Some(k) => emit.emit(k, 1),
                        None => emit.emit("(null)", 100),
                    }
                }
            });
            forget_coded();
            assert!(!emit.is_full());
        };
        // Row 3 is null (bit 3 clear).
        feed(
            coded_batch(
                1,
                Some(&["a", "b", "a long key past twelve bytes"]),
                &[0, 1, 2, 0, 0, 1],
                vec![0b11_0111],
            ),
            &mut emit,
        );
        feed(coded_batch(1, None, &[2, 2, 0], vec![]), &mut emit);
        // A new dictionary: the same strings under other codes, and one more.
        feed(coded_batch(2, Some(&["b", "c", "a"]), &[2, 0, 1, 1], vec![]), &mut emit);
        // Values appended to it.
        feed(coded_batch(2, Some(&["d"]), &[3, 1], vec![]), &mut emit);
        match &emit.mode {
            EmitMode::Grouping(g) => assert_eq!(g.coded_dictionaries(), [1, 2]),
            EmitMode::Direct { .. } => panic!("a job that combines groups"),
        }
        assert!(
            receive_dictionaries(&mut coded_batch(9, None, &[0], vec![]))
                .unwrap_err()
                .contains("without sending it")
        );
        let mut rows = rows_of(&emit.finish());
        rows.sort();
        // Batch 1: a(0) b(1) long(2,x10) null a(4) b(5,x10); batch 2: long
        // long a(x10); batch 3: a b c c(x10); batch 4: d c.
        let want = [
            ("(null)".to_string(), 100),
            ("a".to_string(), 1 + 1 + 10 + 1),
            ("a long key past twelve bytes".to_string(), 10 + 1 + 1),
            ("b".to_string(), 1 + 10 + 1),
            ("c".to_string(), 1 + 10 + 1),
            ("d".to_string(), 1),
        ];
        assert_eq!(rows, want);
    }

    #[test]
    fn keys_of_many_dictionaries_keep_their_values_when_groups_make_room() {
        use crate::record::{InputBatch, forget_coded, receive_dictionaries, with_dictionaries};
        let mut emit = Emit::<String, u64>::new(sum());
        for id in 10..16u64 {
            let mut batch = coded_batch(id, Some(&["x", "y"]), &[0, 1, 1], vec![]);
            receive_dictionaries(&mut batch).unwrap();
            with_dictionaries(|dictionaries| {
                let input = InputBatch::new("f", &batch, dictionaries);
                for row in 0..input.rows() {
                    emit.emit(input.record(row).str("k").unwrap(), id);
                }
            });
            forget_coded();
            // As after every `map` call: what is staged is settled while
            // its dictionary is held.
            assert!(!emit.is_full());
        }
        match &emit.mode {
            EmitMode::Grouping(g) => assert_eq!(g.coded_dictionaries(), [12, 13, 14, 15]),
            EmitMode::Direct { .. } => panic!("a job that combines groups"),
        }
        let total: u64 = (10..16).sum();
        let mut rows = rows_of(&emit.finish());
        rows.sort();
        assert_eq!(rows, [("x".to_string(), total), ("y".to_string(), 2 * total)]);
    }

    /// Columns `k` (the words of `codes`, dictionary-encoded when `coded`)
    /// and `v`, every 7th key and every 11th value null.
    fn keyed_batch(id: u64, words: &[String], codes: &[u32], coded: bool) -> Batch {
        use crate::bindings::wmr::job::types::{ColumnData, Utf8Dictionary};
        let every = |n: usize| -> Vec<u8> {
            let mut bits = vec![0u8; codes.len().div_ceil(8)];
            for row in (0..codes.len()).filter(|row| row % n != 0) {
                bits[row / 8] |= 1 << (row % 8);
            }
            bits
        };
        let keys = if coded {
            ColumnData::Utf8Dictionary(Utf8Dictionary {
                dictionary: id,
                values: Some(var_width_of(words.iter().map(String::as_str))),
                codes: codes.to_vec(),
            })
        } else {
            ColumnData::Utf8(var_width_of(codes.iter().map(|&c| words[c as usize].as_str())))
        };
        Batch {
            num_rows: codes.len() as u32,
            names: vec!["k".into(), "v".into()],
            columns: vec![
                Column {
                    validity: every(7),
                    data: keys,
                },
                Column {
                    validity: every(11),
                    data: ColumnData::Int64((0..codes.len() as i64).collect()),
                },
            ],
        }
    }

    #[test]
    fn emit_column_groups_what_emit_would() {
        use crate::columnar::Records;
        use crate::record::{InputBatch, receive_dictionaries, with_dictionaries};
        // More words than one range of codes holds, and a small dictionary.
        let many: Vec<String> = (0..10_000).map(|i| format!("word{i}")).collect();
        let few: Vec<String> = ["x", "y", "a key longer than sixteen bytes"].map(String::from).to_vec();
        for coded in [true, false] {
            let mut emit = Emit::<String, u64>::new(sum());
            let mut want = std::collections::BTreeMap::<String, u64>::new();
            let mut skipped_want = 0;
            let batches = [(1, &many, 7919), (1, &many, 104_729), (2, &few, 5), (3, &many, 31)];
            for (id, words, step) in batches {
                let codes: Vec<u32> = (0..30_000u32)
                    .map(|i| i.wrapping_mul(step) % words.len() as u32)
                    .collect();
                let mut batch = keyed_batch(id, words, &codes, coded);
                for (row, &code) in codes.iter().enumerate() {
                    if row % 7 == 0 || row % 11 == 0 {
                        skipped_want += 1;
                    } else {
                        *want.entry(words[code as usize].clone()).or_default() += row as u64;
                    }
                }
                receive_dictionaries(&mut batch).unwrap();
                let skipped = with_dictionaries(|dictionaries| {
                    let input = InputBatch::new("f", &batch, dictionaries);
                    let records = Records::new(&input);
                    let keys = records.strings("k");
                    assert_eq!(keys.get(1), Some(words[codes[1] as usize].as_str()));
                    assert_eq!(keys.get(7), None);
                    emit.emit_column(&keys, records.values::<u64>("v"))
                });
                skipped_want -= skipped;
            }
            assert_eq!(skipped_want, 0);
            let rows: Vec<(String, u64)> = rows_of(&emit.finish());
            let mut got = rows.clone();
            got.sort();
            assert_eq!(got.len(), rows.len(), "each key once");
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "coded: {coded}");
        }
    }

    #[test]
    fn emit_column_hashes_the_keys_of_a_dictionary_too_large_to_group_by_code() {
        use crate::columnar::Records;
        use crate::record::{InputBatch, receive_dictionaries, with_dictionaries};
        let words: Vec<String> = (0..(1 << 18) + 1).map(|i| format!("w{i}")).collect();
        let codes: Vec<u32> = (0..1000u32).map(|i| i * 263 % words.len() as u32).collect();
        let mut batch = keyed_batch(40, &words, &codes, true);
        receive_dictionaries(&mut batch).unwrap();
        let mut emit = Emit::<String, u64>::new(sum());
        let skipped = with_dictionaries(|dictionaries| {
            let input = InputBatch::new("f", &batch, dictionaries);
            let records = Records::new(&input);
            emit.emit_column(&records.strings("k"), records.values::<u64>("v"))
        });
        let mut want = std::collections::BTreeMap::<String, u64>::new();
        for (row, &code) in codes
            .iter()
            .enumerate()
            .filter(|(row, _)| row % 7 != 0 && row % 11 != 0)
        {
            *want.entry(words[code as usize].clone()).or_default() += row as u64;
        }
        let nulls = (0..codes.len()).filter(|row| row % 7 == 0 || row % 11 == 0).count();
        assert_eq!((skipped, emit.len()), (nulls, codes.len() - nulls));
        let mut got = rows_of(&emit.finish());
        got.sort();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn direct_mode_keeps_every_pair() {
        let mut emit = Emit::<String, u64>::new(None);
        emit.emit("a", 1);
        emit.emit("a", 2);
        assert_eq!(rows_of(&emit.finish()), [("a".to_string(), 1), ("a".to_string(), 2)]);
    }
}
