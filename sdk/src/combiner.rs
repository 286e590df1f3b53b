//! The in-mapper combiner: map output grouped by key inside the guest as it
//! is emitted, each key's values folded into one as they arrive.
//!
//! Keys live in an open-addressing table of 32-byte slots that holds a key's
//! byte encoding inline when short, so looking a key up touches one cache
//! line. Lookups are staged: [`Grouping::push`] only encodes and hashes, and
//! every [`STAGED`] pairs the slots of all of them are loaded first, side
//! by side, then probed. The loads are independent, so the processor waits
//! on their cache misses together rather than one after another (wasm has
//! no prefetch instruction; this is the portable way to get its effect).

use std::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

use crate::columns::{Columns, IntoColumns, bytes_eq};
use crate::emit::Values;

/// How a job combines one key's values; see [`Job::combine`](crate::Job::combine).
pub(crate) type CombineFn<K, V> = Box<dyn Fn(&K, Values<'_, V>) -> V>;

/// Pairs staged before their slots are looked up together.
const STAGED: usize = 32;

/// Key encodings up to this long are kept in their slot.
const INLINE: usize = 12;

/// One slot of the table: for a number value, 32 bytes, a half of a cache
/// line, holding all a lookup reads and writes.
#[derive(Default)]
#[repr(C, align(32))]
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

fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("wmr-sdk: the in-mapper combiner grew past 4 GiB"))
}

fn empty_slots<V: Default>(n: usize) -> Vec<Slot<V>> {
    std::iter::repeat_with(Slot::default).take(n).collect()
}

/// The table: key encodings to their groups and values.
struct Table<V> {
    slots: Vec<Slot<V>>,
    /// Encodings longer than [`INLINE`] bytes.
    arena: Vec<u8>,
    /// Each group's hash, for growing.
    hashes: Vec<u64>,
}

impl<V: Default> Table<V> {
    fn new() -> Self {
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
    fn touch(&self, hash: u64) -> u32 {
        self.slots.get(hash as usize & self.mask()).map_or(0, |s| s.tag)
    }

    fn key_of<'a>(&'a self, slot: &'a Slot<V>) -> &'a [u8] {
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
    fn find_or_insert(&mut self, hash: u64, key: &[u8]) -> (usize, bool) {
        let tag = tag_of(hash);
        let mask = self.mask();
        let mut at = hash as usize & mask;
        loop {
            let slot = &self.slots[at];
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
        self.slots[at] = Slot {
            tag,
            group: u32_of(self.hashes.len()),
            len: u32_of(key.len()),
            inline,
            value: V::default(),
        };
        self.hashes.push(hash);
        (at, true)
    }

    #[cold]
    fn grow(&mut self) {
        let doubled = empty_slots(self.slots.len() * 2);
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| s.tag != 0) {
            let mut at = self.hashes[slot.group as usize] as usize & mask;
            while self.slots[at].tag != 0 {
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

/// The combiner's state: the table, and each group's key by group number
/// (keys in first-seen order), which `combine` is given.
pub(crate) struct Grouping<K, V> {
    combine: CombineFn<K, V>,
    hasher: FixedState,
    table: Table<V>,
    keys: Vec<K>,
    staged: Vec<StagedPair<V>>,
    staged_keys: Vec<u8>,
}

impl<K: Columns, V: Columns> Grouping<K, V> {
    pub(crate) fn new(combine: CombineFn<K, V>) -> Self {
        Grouping {
            combine,
            hasher: FixedState::with_seed(0x776d_725f_6d61_7021),
            table: Table::new(),
            keys: Vec::new(),
            staged: Vec::with_capacity(STAGED),
            staged_keys: Vec::new(),
        }
    }

    /// Stage one pair; every [`STAGED`] pairs are looked up together.
    #[inline]
    pub(crate) fn push<Q: IntoColumns<K>>(&mut self, key: Q, value: V) {
        let start = self.staged_keys.len();
        key.encode(&mut self.staged_keys);
        let encoded = &self.staged_keys[start..];
        let mut hasher = self.hasher.build_hasher();
        hasher.write(encoded);
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

    /// Look up every staged pair and combine it into its group.
    pub(crate) fn settle(&mut self) {
        // First load every pair's slot; the loads do not wait on each other.
        let touched = self.staged.iter().fold(0u32, |t, p| t ^ self.table.touch(p.hash));
        std::hint::black_box(touched);
        for pair in self.staged.drain(..) {
            let key = self
                .staged_keys
                .get(pair.start as usize..pair.end as usize)
                .unwrap_or(&[]);
            let (at, new) = self.table.find_or_insert(pair.hash, key);
            let slot = &mut self.table.slots[at];
            if new {
                let owned = K::decode(key)
                    .unwrap_or_else(|| panic!("wmr-sdk: a key's encoding did not decode; this is a bug in wmr-sdk"));
                self.keys.push(owned);
                slot.value = pair.value;
            } else {
                let held = std::mem::take(&mut slot.value);
                let key = &self.keys[slot.group as usize];
                slot.value = (self.combine)(key, Values::taking(&mut [held, pair.value]));
            }
        }
        self.staged_keys.clear();
    }

    /// How many distinct keys are held (after [`Grouping::settle`]).
    pub(crate) fn keys_held(&self) -> usize {
        self.keys.len()
    }

    /// Bytes of key encodings held outside the table's slots.
    pub(crate) fn key_bytes_held(&self) -> usize {
        self.table.arena.len()
    }

    /// Every group's key and combined value, in the table's order.
    pub(crate) fn into_groups(mut self) -> impl Iterator<Item = (K, V)> {
        self.settle();
        let mut keys = self.keys;
        self.table
            .slots
            .into_iter()
            .filter(|s| s.tag != 0)
            .map(move |s| (std::mem::take(&mut keys[s.group as usize]), s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_finds_every_key_it_was_given_across_growth() {
        let mut table = Table::<u64>::new();
        let hasher = FixedState::with_seed(1);
        let keys: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("key number {i} {}", "x".repeat(i as usize % 40)).into_bytes())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let (at, new) = table.find_or_insert(hasher.hash_one(key), key);
            assert!(new);
            table.slots[at].value = i as u64;
        }
        for (i, key) in keys.iter().enumerate() {
            let (at, new) = table.find_or_insert(hasher.hash_one(key), key);
            assert!(!new);
            assert_eq!((table.slots[at].group, table.slots[at].value), (i as u32, i as u64));
        }
        // Equal hashes, different keys: told apart by the bytes.
        let mut table = Table::<u64>::new();
        let group = |t: &mut Table<u64>, key: &[u8]| {
            let (at, new) = t.find_or_insert(7, key);
            (t.slots[at].group, new)
        };
        assert_eq!(group(&mut table, b"a"), (0, true));
        assert_eq!(group(&mut table, b"b"), (1, true));
        assert_eq!(group(&mut table, b"a"), (0, false));
        assert_eq!(group(&mut table, b""), (2, true));
        assert_eq!(group(&mut table, b""), (2, false));
    }
}
