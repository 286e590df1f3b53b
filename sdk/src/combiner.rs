//! The in-mapper combiner: map output grouped by key inside the guest as it
//! is emitted, each key's values folded into one as they arrive.
//!
//! Keys live in an open-addressing table whose slots (32 bytes for a
//! number value) hold a key's combined value and its byte encoding, inline
//! when short, so looking a key up touches one cache line. Lookups are
//! staged: [`Grouping::push`] only hashes and copies the key, and every
//! [`STAGED`] pairs the slots of all of them are loaded first, side by side,
//! then probed. The loads do not wait on each other, so the processor waits
//! on their cache misses together rather than one after another (wasm has
//! no prefetch instruction; this is the portable way to get its effect).
//!
//! Values are combined as they arrive, two at a time: `combine` is called
//! for every pair emitted for a key already held. A panic in `combine` is
//! reported with the record being mapped when it ran.
//!
//! A key that is the very string [`Record::str`](crate::Record::str) handed
//! out of a dictionary-encoded column (Parquet's usual string columns) is
//! grouped by its dictionary code instead: the first time a code is seen
//! its key goes through the table, and after that its values are combined
//! into a slot of a small array indexed by code, with no hashing, no key
//! copy and no probe. Those values join their table slot when the
//! dictionary changes and when the map output is finished.

use std::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

use crate::columns::{Columns, IntoColumns, bytes_eq};
use crate::emit::Values;
use std::rc::Rc;

use crate::record::{CodedStr, Dictionary, coded, held_dictionary};

/// How a job combines one key's values; see [`Job::combine`](crate::Job::combine).
pub(crate) type CombineFn<K, V> = Box<dyn Fn(&K, Values<'_, V>) -> V>;

/// Pairs staged before their slots are looked up together.
const STAGED: usize = 32;

/// Key encodings up to this long are kept in their slot.
const INLINE: usize = 12;

/// Dictionaries with more values than this are not grouped by code (the
/// array by code would be too large for what it saves).
const MAX_CODED: u32 = 1 << 18;

/// Keys are grouped by code for this many dictionaries at once; the oldest
/// makes room for a new one.
const CODED_DICTIONARIES: usize = 4;

/// One slot of the table: all a lookup reads and writes. It is kept in an
/// [`Aligned`] wrapper so that it spans as few cache lines as it can.
#[derive(Default)]
#[repr(C)]
struct Slot<V> {
    /// The key hash's high 32 bits with the lowest bit set; 0 when empty.
    tag: u32,
    /// The key's group: its index in the order keys were first seen.
    group: u32,
    /// The length of the key's encoding.
    len: u32,
    /// The encoding when at most [`INLINE`] bytes, else its offset in the
    /// arena in the first four bytes.
    inline: [u8; INLINE],
    /// Everything emitted for the key so far, combined.
    value: V,
}

/// A slot aligned to its size's cache-line fraction: [`Half`] for slots of
/// up to 32 bytes (a number value), [`Line`] for larger ones, which would
/// otherwise straddle two lines half of the time.
trait Aligned<V>: Default {
    fn slot(&self) -> &Slot<V>;
    fn slot_mut(&mut self) -> &mut Slot<V>;
    fn into_slot(self) -> Slot<V>;
}

/// A slot on a 32-byte boundary.
#[derive(Default)]
#[repr(align(32))]
struct Half<V>(Slot<V>);

/// A slot on a 64-byte boundary.
#[derive(Default)]
#[repr(align(64))]
struct Line<V>(Slot<V>);

macro_rules! aligned {
    ($($wrapper:ident),+) => {$(
        impl<V: Default> Aligned<V> for $wrapper<V> {
            #[inline(always)]
            fn slot(&self) -> &Slot<V> { &self.0 }
            #[inline(always)]
            fn slot_mut(&mut self) -> &mut Slot<V> { &mut self.0 }
            fn into_slot(self) -> Slot<V> { self.0 }
        }
    )+};
}
aligned!(Half, Line);

fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("wmr-sdk: the in-mapper combiner grew past 4 GiB"))
}

fn empty_slots<A: Default>(n: usize) -> Vec<A> {
    std::iter::repeat_with(A::default).take(n).collect()
}

/// The table: key encodings to their groups and values.
struct Table<A> {
    slots: Vec<A>,
    /// Encodings longer than [`INLINE`] bytes.
    arena: Vec<u8>,
    /// Each group's hash, for growing.
    hashes: Vec<u64>,
}

impl<A> Table<A> {
    fn new<V>() -> Self
    where
        A: Aligned<V>,
    {
        Table {
            slots: empty_slots(1024),
            arena: Vec::new(),
            hashes: Vec::new(),
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Load the slot where a probe for `hash` starts; the value is only
    /// used to keep the load from being optimised away.
    #[inline(always)]
    fn touch<V>(&self, hash: u64) -> u32
    where
        A: Aligned<V>,
    {
        self.slots[hash as usize & self.mask()].slot().tag
    }

    fn key_of<'a, V>(&'a self, slot: &'a Slot<V>) -> &'a [u8] {
        let len = slot.len as usize;
        match slot.inline.get(..len) {
            Some(inline) => inline,
            None => {
                let start =
                    u32::from_le_bytes([slot.inline[0], slot.inline[1], slot.inline[2], slot.inline[3]]) as usize;
                self.arena.get(start..start + len).unwrap_or(&[])
            }
        }
    }

    /// The slot of the key encoded as `key`, and whether it was just made
    /// (as group `hashes.len()`, the number of groups so far, holding `V::default()`).
    #[inline(always)]
    fn find_or_insert<V: Default>(&mut self, hash: u64, key: &[u8]) -> (usize, bool)
    where
        A: Aligned<V>,
    {
        let tag = tag_of(hash);
        let mask = self.mask();
        let mut at = hash as usize & mask;
        loop {
            let slot = self.slots[at].slot();
            if slot.tag == 0 {
                break;
            }
            if slot.tag == tag && slot.len as usize == key.len() && bytes_eq(self.key_of(slot), key) {
                return (at, false);
            }
            at = (at + 1) & mask;
        }
        // At most 3/4 full, so probes stay short.
        if (self.hashes.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow();
            return self.find_or_insert(hash, key);
        }
        let mut inline = [0; INLINE];
        match inline.get_mut(..key.len()) {
            Some(short) => short.copy_from_slice(key),
            None => {
                inline[..4].copy_from_slice(&u32_of(self.arena.len()).to_le_bytes());
                self.arena.extend_from_slice(key);
            }
        }
        *self.slots[at].slot_mut() = Slot {
            tag,
            group: u32_of(self.hashes.len()),
            len: u32_of(key.len()),
            inline,
            value: V::default(),
        };
        self.hashes.push(hash);
        (at, true)
    }

    /// The slot holding group `group`.
    fn slot_of_group<V>(&self, group: u32) -> Option<usize>
    where
        A: Aligned<V>,
    {
        let mask = self.mask();
        let mut at = *self.hashes.get(group as usize)? as usize & mask;
        for _ in 0..self.slots.len() {
            let slot = self.slots[at].slot();
            if slot.tag == 0 {
                return None;
            }
            if slot.group == group {
                return Some(at);
            }
            at = (at + 1) & mask;
        }
        None
    }

    #[cold]
    fn grow<V>(&mut self)
    where
        A: Aligned<V>,
    {
        let doubled = empty_slots(self.slots.len() * 2);
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| s.slot().tag != 0) {
            let mut at = self.hashes[slot.slot().group as usize] as usize & mask;
            while self.slots[at].slot().tag != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }
}

/// A pair emitted but not yet looked up: its key's encoding is
/// `staged_keys[start..end]`.
struct StagedPair<V> {
    hash: u64,
    start: u32,
    end: u32,
    value: V,
}

/// The table, with slots aligned for the value's size.
enum Tables<V> {
    Half(Table<Half<V>>),
    Line(Table<Line<V>>),
}

/// The combiner's state: the table, and each group's key by group number
/// (keys in first-seen order), which `combine` is given.
pub(crate) struct Grouping<K, V> {
    combine: CombineFn<K, V>,
    hasher: FixedState,
    tables: Tables<V>,
    keys: Vec<K>,
    staged: Vec<StagedPair<V>>,
    staged_keys: Vec<u8>,
    /// Whether keys can be grouped by code: the key is one string column,
    /// whose hash and encoding are those of its bytes.
    codable: bool,
    /// Grouping by code for the dictionaries of the last coded keys (a
    /// job's keys may come from several columns), oldest first.
    coded: Vec<CodedGroups<V>>,
    /// Which of them the last coded key's was.
    coded_last: usize,
    /// Pairs with coded keys (index in `coded`, code, value), staged as
    /// `staged` is.
    coded_staged: Vec<(usize, u32, V)>,
}

/// Keys of one dictionary grouped by code.
struct CodedGroups<V> {
    dictionary: Rc<Dictionary>,
    /// By code.
    entries: Vec<CodedEntry<V>>,
    /// The codes whose entry holds a value.
    touched: Vec<u32>,
}

/// One code's group, and its values emitted since the group was found,
/// combined (they join the group's slot later).
#[derive(Default)]
struct CodedEntry<V> {
    /// The group plus one; 0 while the code has not been seen.
    group: u32,
    value: Option<V>,
}

impl<K: Columns, V: Columns> Grouping<K, V> {
    pub(crate) fn new(combine: CombineFn<K, V>) -> Self {
        let tables = if std::mem::size_of::<Slot<V>>() <= 32 {
            Tables::Half(Table::new())
        } else {
            Tables::Line(Table::new())
        };
        Grouping {
            combine,
            hasher: FixedState::with_seed(0x776d_725f_6d61_7021),
            tables,
            keys: Vec::new(),
            staged: Vec::with_capacity(STAGED),
            staged_keys: Vec::new(),
            codable: K::data_types() == [crate::bindings::wmr::job::types::DataType::Utf8],
            coded: Vec::new(),
            coded_last: 0,
            coded_staged: Vec::with_capacity(STAGED),
        }
    }

    /// Stage one pair; every [`STAGED`] pairs are looked up together.
    #[inline]
    pub(crate) fn push<Q: IntoColumns<K>>(&mut self, key: Q, value: V) {
        if self.codable
            && let Some(text) = key.as_text()
            && let Some(c) = coded(text).filter(|c| c.dictionary_len <= MAX_CODED)
            && let Some(at) = self.take_dictionary(&c)
        {
            self.coded_staged.push((at, c.code, value));
            if self.coded_staged.len() == STAGED {
                self.settle_coded();
            }
            return;
        }
        // Hashed from the key itself, not from its copy just written: reading
        // back bytes just stored stalls on store forwarding.
        let mut hasher = self.hasher.build_hasher();
        key.hash_key(&mut hasher);
        let start = self.staged_keys.len();
        key.encode(&mut self.staged_keys);
        self.staged.push(StagedPair {
            hash: hasher.finish(),
            start: u32_of(start),
            end: u32_of(self.staged_keys.len()),
            value,
        });
        if self.staged.len() == STAGED {
            self.settle();
        }
    }

    /// Where in `coded` `c`'s dictionary's groups are, made if they are
    /// not (the oldest groups' values joining their slots when there are
    /// too many); `None` if the dictionary is not held.
    #[inline]
    fn take_dictionary(&mut self, c: &CodedStr) -> Option<usize> {
        if self
            .coded
            .get(self.coded_last)
            .is_some_and(|g| g.dictionary.id() == c.dictionary)
        {
            return Some(self.coded_last);
        }
        if let Some(at) = self.coded.iter().position(|g| g.dictionary.id() == c.dictionary) {
            self.coded_last = at;
            return Some(at);
        }
        let dictionary = held_dictionary(c.dictionary)?;
        if self.coded.len() == CODED_DICTIONARIES {
            self.settle_coded();
            self.join_coded(0);
            self.coded.remove(0);
        }
        self.coded.push(CodedGroups {
            entries: std::iter::repeat_with(CodedEntry::default)
                .take(dictionary.len())
                .collect(),
            dictionary,
            touched: Vec::new(),
        });
        self.coded_last = self.coded.len() - 1;
        Some(self.coded_last)
    }

    /// Combine every staged coded pair into its code's entry; a code seen
    /// for the first time finds its group through the table.
    fn settle_coded(&mut self) {
        let Grouping {
            coded,
            coded_staged,
            keys,
            combine,
            hasher,
            tables,
            ..
        } = self;
        let entry_of = |coded: &[CodedGroups<V>], at: usize, code: u32| {
            coded
                .get(at)
                .and_then(|g| g.entries.get(code as usize))
                .map(|e| e.group)
        };
        // First load every pair's entry; the loads do not wait on each other.
        let loaded = coded_staged
            .iter()
            .fold(0u32, |t, (at, code, _)| t ^ entry_of(coded, *at, *code).unwrap_or(0));
        std::hint::black_box(loaded);
        // Then hash the keys of codes not seen yet, and load their slots.
        let mut first_hashes = [0u64; STAGED];
        let mut loaded = 0u32;
        for ((at, code, _), first) in coded_staged.iter().zip(&mut first_hashes) {
            if entry_of(coded, *at, *code) == Some(0) {
                let text = coded[*at].dictionary.text(*code).unwrap_or_default();
                let mut h = hasher.build_hasher();
                h.write(text.as_bytes());
                *first = h.finish();
                loaded ^= match tables {
                    Tables::Half(table) => table.touch(*first),
                    Tables::Line(table) => table.touch(*first),
                };
            }
        }
        std::hint::black_box(loaded);
        for ((at, code, value), hash) in coded_staged.drain(..).zip(first_hashes) {
            let Some(groups) = coded.get_mut(at) else { continue };
            let Some(entry) = groups.entries.get_mut(code as usize) else {
                continue;
            };
            if entry.group != 0 {
                entry.value = Some(match entry.value.take() {
                    None => {
                        groups.touched.push(code);
                        value
                    }
                    Some(held) => combine(&keys[(entry.group - 1) as usize], Values::taking(&mut [held, value])),
                });
                continue;
            }
            // First seen: find (or make) its group through the table. (The
            // hash was made above, unless the code came twice in this stage.)
            let key = groups.dictionary.text(code).unwrap_or_default().as_bytes();
            let hash = if hash != 0 {
                hash
            } else {
                let mut h = hasher.build_hasher();
                h.write(key);
                h.finish()
            };
            let group = match tables {
                Tables::Half(table) => add_pair(table, combine, keys, hash, key, value),
                Tables::Line(table) => add_pair(table, combine, keys, hash, key, value),
            };
            entry.group = group + 1;
        }
    }

    /// The dictionaries whose keys are grouped by code now, oldest first.
    #[cfg(test)]
    pub(crate) fn coded_dictionaries(&self) -> Vec<u64> {
        self.coded.iter().map(|g| g.dictionary.id()).collect()
    }

    /// Combine the values held by code for `coded[at]` into their groups'
    /// slots.
    fn join_coded(&mut self, at: usize) {
        let Some(groups) = self.coded.get_mut(at) else { return };
        let touched = std::mem::take(&mut groups.touched);
        let mut pending = Vec::with_capacity(STAGED);
        for chunk in touched.chunks(STAGED) {
            // Each phase's loads, a likely cache miss each, overlap.
            pending.extend(chunk.iter().filter_map(|&code| {
                let entry = groups.entries.get_mut(code as usize)?;
                Some((entry.group.checked_sub(1)?, entry.value.take()?))
            }));
            match &mut self.tables {
                Tables::Half(table) => join_groups(table, &self.combine, &self.keys, &mut pending),
                Tables::Line(table) => join_groups(table, &self.combine, &self.keys, &mut pending),
            }
        }
    }

    /// Look up every staged pair and combine it into its group.
    pub(crate) fn settle(&mut self) {
        match &mut self.tables {
            Tables::Half(table) => settle_into(
                table,
                &self.combine,
                &mut self.keys,
                &mut self.staged,
                &self.staged_keys,
            ),
            Tables::Line(table) => settle_into(
                table,
                &self.combine,
                &mut self.keys,
                &mut self.staged,
                &self.staged_keys,
            ),
        }
        self.staged_keys.clear();
        self.settle_coded();
    }

    /// How many distinct keys are held (after [`Grouping::settle`]).
    pub(crate) fn keys_held(&self) -> usize {
        self.keys.len()
    }

    /// Bytes of key encodings held outside the table's slots.
    pub(crate) fn key_bytes_held(&self) -> usize {
        match &self.tables {
            Tables::Half(table) => table.arena.len(),
            Tables::Line(table) => table.arena.len(),
        }
    }

    /// Hand every group's key and combined value to `f`, in the table's order.
    pub(crate) fn for_each_group(mut self, mut f: impl FnMut(K, V)) {
        fn each<K: Default, V, A: Aligned<V>>(table: Table<A>, keys: &mut [K], f: &mut impl FnMut(K, V)) {
            for slot in table.slots.into_iter().map(A::into_slot).filter(|s| s.tag != 0) {
                f(std::mem::take(&mut keys[slot.group as usize]), slot.value);
            }
        }
        self.settle();
        for at in 0..self.coded.len() {
            self.join_coded(at);
        }
        match self.tables {
            Tables::Half(table) => each(table, &mut self.keys, &mut f),
            Tables::Line(table) => each(table, &mut self.keys, &mut f),
        }
    }
}

/// Look up every staged pair in `table` and combine it into its group.
fn settle_into<K: Columns, V: Columns, A: Aligned<V>>(
    table: &mut Table<A>,
    combine: &CombineFn<K, V>,
    keys: &mut Vec<K>,
    staged: &mut Vec<StagedPair<V>>,
    staged_keys: &[u8],
) {
    // First load every pair's slot; the loads do not wait on each other.
    let touched = staged.iter().fold(0u32, |t, p| t ^ table.touch(p.hash));
    std::hint::black_box(touched);
    for pair in staged.drain(..) {
        let key = staged_keys.get(pair.start as usize..pair.end as usize).unwrap_or(&[]);
        add_pair(table, combine, keys, pair.hash, key, pair.value);
    }
}

/// Combine `value` into the group of the key encoded as `key` (made if
/// new); returns the group.
#[inline(always)]
fn add_pair<K: Columns, V: Columns, A: Aligned<V>>(
    table: &mut Table<A>,
    combine: &CombineFn<K, V>,
    keys: &mut Vec<K>,
    hash: u64,
    key: &[u8],
    value: V,
) -> u32 {
    let (at, new) = table.find_or_insert(hash, key);
    let slot = table.slots[at].slot_mut();
    if new {
        let owned = K::decode(key)
            .unwrap_or_else(|| panic!("wmr-sdk: a key's encoding did not decode; this is a bug in wmr-sdk"));
        keys.push(owned);
        slot.value = value;
    } else {
        let held = std::mem::take(&mut slot.value);
        let key = &keys[slot.group as usize];
        slot.value = combine(key, Values::taking(&mut [held, value]));
    }
    slot.group
}

/// Combine each `(group, value)` of `pending` (drained) into its group's slot.
fn join_groups<K: Columns, V: Columns, A: Aligned<V>>(
    table: &mut Table<A>,
    combine: &CombineFn<K, V>,
    keys: &[K],
    pending: &mut Vec<(u32, V)>,
) {
    let loaded = pending.iter().fold(0u32, |t, (group, _)| {
        t ^ table.hashes.get(*group as usize).map_or(0, |&h| table.touch(h))
    });
    std::hint::black_box(loaded);
    for (group, value) in pending.drain(..) {
        let (Some(at), Some(key)) = (table.slot_of_group(group), keys.get(group as usize)) else {
            panic!("wmr-sdk: group {group} has no slot in the in-mapper combiner; this is a bug in wmr-sdk");
        };
        let slot = table.slots[at].slot_mut();
        let held = std::mem::take(&mut slot.value);
        slot.value = combine(key, Values::taking(&mut [held, value]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_a_cache_line_start_on_one() {
        assert_eq!(std::mem::size_of::<Half<u64>>(), 32);
        assert_eq!(std::mem::size_of::<Line<(f64, u64)>>(), 64);
        let slots = empty_slots::<Line<(f64, u64)>>(16);
        assert!(slots.iter().all(|s| (&raw const *s as usize).is_multiple_of(64)));
    }

    #[test]
    fn the_table_finds_every_key_it_was_given_across_growth() {
        let mut table = Table::<Half<u64>>::new();
        let hasher = FixedState::with_seed(1);
        let keys: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("key number {i} {}", "x".repeat(i as usize % 40)).into_bytes())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let (at, new) = table.find_or_insert(hasher.hash_one(key), key);
            assert!(new);
            table.slots[at].slot_mut().value = i as u64;
        }
        for (i, key) in keys.iter().enumerate() {
            let (at, new) = table.find_or_insert(hasher.hash_one(key), key);
            assert!(!new);
            assert_eq!((table.slots[at].0.group, table.slots[at].0.value), (i as u32, i as u64));
        }
        // Equal hashes, different keys: told apart by the bytes.
        let mut table = Table::<Half<u64>>::new();
        let group = |t: &mut Table<Half<u64>>, key: &[u8]| {
            let (at, new) = t.find_or_insert(7, key);
            (t.slots[at].0.group, new)
        };
        assert_eq!(group(&mut table, b"a"), (0, true));
        assert_eq!(group(&mut table, b"b"), (1, true));
        assert_eq!(group(&mut table, b"a"), (0, false));
        assert_eq!(group(&mut table, b""), (2, true));
        assert_eq!(group(&mut table, b""), (2, false));
    }
}
