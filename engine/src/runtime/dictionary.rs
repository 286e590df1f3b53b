//! The dictionaries one guest instance's `map` input has been sent (see
//! `utf8-dictionary` in the WIT world). A Parquet file has a dictionary per
//! row group for each string column, most of whose values the last one had
//! too. The host unifies them: a column keeps one dictionary across row
//! groups, each value sent once under one code, and a row group's new
//! values are appended to it. So a guest grouping by code meets each key
//! once per task, not once per row group.

use std::hash::BuildHasher;

use arrow::array::{Array, StringArray};
use hashbrown::HashTable;

use super::bindings::wmr::job::types as wit;

/// A column's dictionary takes no new row group's values once the
/// instance's dictionaries hold this many values together...
const MAX_VALUES: usize = 1 << 17;
/// ...or this many bytes of them; the column starts a new one instead. So
/// an instance holds at most these plus one row group's dictionary per
/// column (what it held before dictionaries were unified), on the host and
/// in the guest (a JavaScript guest's heap is capped at 32 MiB). A
/// dictionary then stays within what the Rust SDK groups by code
/// (`MAX_CODED`, 2^18 values) unless one row group's alone is larger.
const MAX_BYTES: usize = 4 << 20;

/// The dictionaries sent to one instance, by input column.
#[derive(Default)]
pub(crate) struct SentDictionaries {
    by_column: Vec<Option<Unified>>,
    next_id: u64,
}

/// One column's dictionary as the guest holds it.
struct Unified {
    id: u64,
    /// Each value sent under `id`, found by its hash: where it is in
    /// `values`, and its code (its place among them). 12 bytes a value, so
    /// that looking one up touches the values themselves only to compare
    /// the one it finds.
    codes: HashTable<Held>,
    hasher: foldhash::fast::RandomState,
    /// The values, end to end.
    values: Vec<u8>,
    /// How many values there are.
    count: usize,
    /// The decoder's dictionary last met (held, so the buffers compared
    /// cannot be freed and their addresses reused), and each of its
    /// values' code in the unified one.
    last: StringArray,
    last_codes: Vec<u32>,
}

/// What a batch's dictionary column crosses as: the guest's dictionary id,
/// each of the decoder's dictionary values' code in it, and the values to
/// append to it first (`None`: the guest has them all).
pub(crate) struct Coded<'a> {
    pub(crate) id: u64,
    pub(crate) codes: &'a [u32],
    pub(crate) added: Option<wit::VarWidth>,
}

impl SentDictionaries {
    /// How the decoder's dictionary `values` (no nulls) of input column
    /// `column` crosses. The decoder hands out a column chunk's dictionary
    /// as a new array each batch, over the same buffers: those are compared
    /// first, so a row group costs one lookup per value, once.
    pub(crate) fn code(&mut self, column: usize, values: &StringArray) -> Coded<'_> {
        if self.by_column.len() <= column {
            self.by_column.resize_with(column + 1, || None);
        }
        let held = |of: fn(&Unified) -> usize| self.by_column.iter().flatten().map(of).sum::<usize>();
        let step = match &self.by_column[column] {
            Some(u) if u.is_last(values) => Step::Same,
            // Room is counted over every column's dictionary.
            Some(_) if held(|u| u.count) < MAX_VALUES && held(|u| u.values.len()) < MAX_BYTES => Step::Add,
            _ => Step::New,
        };
        let slot = &mut self.by_column[column];
        if let Step::New = step {
            self.next_id += 1;
        }
        let id = self.next_id;
        let u = match step {
            Step::New => slot.insert(Unified::new(id, values)),
            Step::Same | Step::Add => slot.get_or_insert_with(|| Unified::new(id, values)),
        };
        let added = match step {
            Step::Same => None,
            // The guest need not hear of a row group that adds nothing.
            Step::Add => Some(u.add(values)).filter(|added| added.offsets.len() > 1),
            // It must hear of a new dictionary, even an empty one.
            Step::New => Some(u.add(values)),
        };
        Coded {
            id: u.id,
            codes: &u.last_codes,
            added,
        }
    }
}

/// What [`SentDictionaries::code`] does with a decoder dictionary.
enum Step {
    /// The one met last: the guest has it.
    Same,
    /// Add its new values to the column's dictionary.
    Add,
    /// Start the column a new dictionary with it.
    New,
}

impl Unified {
    fn new(id: u64, values: &StringArray) -> Self {
        Unified {
            id,
            codes: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            values: Vec::new(),
            count: 0,
            last: values.clone(),
            last_codes: Vec::new(),
        }
    }

    /// Whether `values` is the decoder dictionary met last (the same
    /// buffers).
    fn is_last(&self, values: &StringArray) -> bool {
        let last = &self.last;
        last.len() == values.len()
            && last.offsets().inner().inner().as_ptr() == values.offsets().inner().inner().as_ptr()
            && last.values().as_ptr() == values.values().as_ptr()
    }

    /// Make `values` the last dictionary met: code each of its values,
    /// adding those not held; returns the added ones.
    fn add(&mut self, values: &StringArray) -> wit::VarWidth {
        let mut added = wit::VarWidth {
            offsets: vec![0],
            values: Vec::new(),
        };
        let mut codes = Vec::with_capacity(values.len());
        let Unified {
            codes: table,
            hasher,
            values: held,
            count,
            ..
        } = self;
        for value in values.iter() {
            let value = value.unwrap_or_default().as_bytes();
            let hash = hasher.hash_one(value);
            let code = match table.find(hash, |h| same_bytes(h.of(held), value)) {
                Some(h) => h.code,
                None => {
                    // At most MAX_VALUES plus one dictionary's (an i32's
                    // worth) values, of as many bytes: u32s hold them.
                    let h = Held {
                        code: *count as u32,
                        start: held.len() as u32,
                        len: value.len() as u32,
                    };
                    held.extend_from_slice(value);
                    *count += 1;
                    table.insert_unique(hash, h, |h| hasher.hash_one(h.of(held)));
                    added.values.extend_from_slice(value);
                    added
                        .offsets
                        .push(i32::try_from(added.values.len()).unwrap_or(i32::MAX));
                    h.code
                }
            };
            codes.push(code);
        }
        self.last = values.clone();
        self.last_codes = codes;
        added
    }
}

/// Whether `a` and `b` are equal: values of up to 16 bytes (most
/// dictionary values) compared as two words each, without a call.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    match a.len() {
        // Two loads that overlap when shorter than 16: the same bytes.
        8..=16 => word(a, 0) == word(b, 0) && word(a, a.len() - 8) == word(b, b.len() - 8),
        _ => a == b,
    }
}

/// A value of a [`Unified`] dictionary: its code, and where it is.
#[derive(Clone, Copy)]
struct Held {
    code: u32,
    start: u32,
    len: u32,
}

impl Held {
    /// Its bytes, in the dictionary's `values`.
    fn of(self, values: &[u8]) -> &[u8] {
        let start = self.start as usize;
        values.get(start..start + self.len as usize).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_share_one_dictionary_and_send_only_new_values() {
        let mut sent = SentDictionaries::default();
        let first = StringArray::from(vec!["a", "bb", "ccc"]);
        let c = sent.code(0, &first);
        let (id, added) = (c.id, c.added.clone().map(|v| (v.offsets, v.values)));
        assert_eq!(c.codes, [0, 1, 2]);
        assert_eq!(added, Some((vec![0, 1, 3, 6], b"abbccc".to_vec())));
        // The same decoder dictionary again: nothing to send.
        let again = sent.code(0, &first.clone());
        assert_eq!(
            (again.id, again.codes, again.added.is_none()),
            (id, &[0, 1, 2][..], true)
        );
        // The next row group's: old values keep their codes, new ones are
        // appended and sent alone.
        let next = StringArray::from(vec!["ccc", "d", "a"]);
        let c = sent.code(0, &next);
        assert_eq!((c.id, c.codes), (id, &[2, 3, 0][..]));
        assert_eq!(
            c.added.clone().map(|v| (v.offsets, v.values)),
            Some((vec![0, 1], b"d".to_vec()))
        );
        // A row group with no new value sends nothing.
        let c = sent.code(0, &StringArray::from(vec!["d"]));
        assert_eq!((c.id, c.codes, c.added.is_none()), (id, &[3][..], true));
        assert!(same_bytes(b"key-012345", b"key-012345") && !same_bytes(b"key-012345", b"key-012346"));
        assert!(!same_bytes(b"key-012345", b"kez-012345") && !same_bytes(b"abcdefgh", b"abcdefgi"));
        assert!(same_bytes(b"ab", b"ab") && !same_bytes(b"ab", b"abc"));
        // Another column has a dictionary of its own.
        let other = sent.code(3, &first);
        assert_ne!(other.id, id);
        assert_eq!(other.codes, [0, 1, 2]);
    }

    #[test]
    fn full_dictionaries_make_way_for_new_ones() {
        let mut sent = SentDictionaries::default();
        let small = sent.code(0, &StringArray::from(vec!["a"])).id;
        // One column's dictionary fills the instance's room...
        let many: StringArray = (0..MAX_VALUES).map(|i| Some(i.to_string())).collect();
        let full = sent.code(1, &many).id;
        // ...so the next row group of either column starts a new one.
        let c = sent.code(0, &StringArray::from(vec!["b", "a"]));
        assert_ne!(c.id, small, "no room for another column's values either");
        assert_eq!(
            (c.codes, c.added.map(|v| v.values)),
            (&[0, 1][..], Some(b"ba".to_vec()))
        );
        let c = sent.code(1, &StringArray::from(vec!["x", "0"]));
        assert_ne!(c.id, full, "a full dictionary takes no more values");
        assert_eq!(
            (c.codes, c.added.map(|v| v.values)),
            (&[0, 1][..], Some(b"x0".to_vec()))
        );
    }
}
