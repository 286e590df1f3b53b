//! The in-mapper combiner's table: key encodings to their slots, each
//! holding a key's group and combined value. A key is looked up as a
//! [`Probe`]: its encoding, when at most [`INLINE`] bytes, packed into two
//! words with fixed-size loads and compared as two numbers; a longer one by
//! its hash, with its bytes in an arena.

use std::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

use crate::columns::bytes_eq;

/// Key encodings up to this long are kept in their slot, as two words.
pub(super) const INLINE: usize = 16;

/// A key as the table looks it up: its hash, and its encoding's length and
/// words (for a long encoding, its hash again and nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Probe {
    pub(super) hash: u64,
    pub(super) words: [u64; 2],
    pub(super) len: u32,
}

impl Probe {
    /// The probe for the key encoded as `bytes`; `hasher` hashes long ones.
    #[inline(always)]
    pub(super) fn of(bytes: &[u8], hasher: &FixedState) -> Probe {
        let len = u32_of(bytes.len());
        if bytes.len() <= INLINE {
            let words = pack(bytes);
            Probe {
                hash: hash_words(words, len),
                words,
                len,
            }
        } else {
            let mut h = hasher.build_hasher();
            h.write(bytes);
            let hash = h.finish();
            Probe {
                hash,
                words: [hash, 0],
                len,
            }
        }
    }

    pub(super) fn is_long(&self) -> bool {
        self.len as usize > INLINE
    }

    /// The encoding of a key of at most [`INLINE`] bytes, back from its words.
    pub(super) fn inline_bytes(&self) -> ([u8; INLINE], usize) {
        let mut bytes = [0; INLINE];
        bytes[..8].copy_from_slice(&self.words[0].to_le_bytes());
        bytes[8..].copy_from_slice(&self.words[1].to_le_bytes());
        (bytes, (self.len as usize).min(INLINE))
    }
}

/// `bytes` (at most [`INLINE`] of them) as two little-endian words,
/// zero-padded. Only fixed-size loads: the first and last 8, 4 or 1 bytes,
/// overlapping, as fast hash functions read short inputs.
#[inline(always)]
fn pack(bytes: &[u8]) -> [u64; 2] {
    let n = bytes.len();
    let word = |b: Option<&[u8; 8]>| b.map_or(0, |b| u64::from_le_bytes(*b));
    let half = |b: Option<&[u8; 4]>| b.map_or(0, |b| u64::from(u32::from_le_bytes(*b)));
    if n >= 8 {
        // Bytes 8..n are the top n - 8 bytes of the last 8.
        let high = if n == 8 {
            0
        } else {
            word(bytes.last_chunk::<8>()) >> (8 * (16 - n.min(16)))
        };
        [word(bytes.first_chunk::<8>()), high]
    } else if n >= 4 {
        [
            half(bytes.first_chunk::<4>()) | (half(bytes.last_chunk::<4>()) << (8 * (n - 4))),
            0,
        ]
    } else if n > 0 {
        let byte = |i: usize| u64::from(bytes.get(i).copied().unwrap_or(0)) << (8 * i);
        [byte(0) | byte(n / 2) | byte(n - 1), 0]
    } else {
        [0, 0]
    }
}

/// The hash of a short key's words (a multiply-rotate mix: its high bits,
/// which pick the slot, depend on every input bit).
#[inline(always)]
fn hash_words(words: [u64; 2], len: u32) -> u64 {
    let mut h = (words[0] ^ 0x776d_725f_6d61_7021).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h.rotate_left(29) ^ words[1]).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h.rotate_left(29) ^ u64::from(len)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One slot of the table: all a lookup reads and writes. It is kept in an
/// [`Aligned`] wrapper so that it spans as few cache lines as it can.
#[derive(Default)]
#[repr(C)]
pub(super) struct Slot<V> {
    /// The key's encoding as [`Probe::words`] has it, except that a long
    /// one has its offset in the arena second.
    pub(super) words: [u64; 2],
    /// The encoding's length plus one; 0 when the slot is empty.
    pub(super) len: u32,
    /// The key's group: its index in the order keys were first seen.
    pub(super) group: u32,
    /// Everything emitted for the key so far, combined.
    pub(super) value: V,
}

/// A slot aligned to its size's cache-line fraction: [`Half`] for slots of
/// up to 32 bytes (a number value), [`Line`] for larger ones, which would
/// otherwise straddle two lines half of the time.
pub(super) trait Aligned<V>: Default {
    fn slot(&self) -> &Slot<V>;
    fn slot_mut(&mut self) -> &mut Slot<V>;
    fn into_slot(self) -> Slot<V>;
}

/// A slot on a 32-byte boundary.
#[derive(Default)]
#[repr(align(32))]
pub(super) struct Half<V>(Slot<V>);

/// A slot on a 64-byte boundary.
#[derive(Default)]
#[repr(align(64))]
pub(super) struct Line<V>(Slot<V>);

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

pub(super) fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("wmr-sdk: the in-mapper combiner grew past 4 GiB"))
}

fn empty_slots<A: Default>(n: usize) -> Vec<A> {
    std::iter::repeat_with(A::default).take(n).collect()
}

/// Slots a new table starts with.
const FIRST_SLOTS: usize = 1024;

/// The table: key encodings to their groups and values.
pub(super) struct Table<A> {
    pub(super) slots: Vec<A>,
    /// How far a hash is shifted right to give its slot (the slot count is
    /// a power of two; the hash's high bits pick the slot).
    shift: u32,
    /// Encodings longer than [`INLINE`] bytes.
    pub(super) arena: Vec<u8>,
    /// Each group's hash, for growing.
    pub(super) hashes: Vec<u64>,
}

impl<A> Table<A> {
    pub(super) fn new<V>() -> Self
    where
        A: Aligned<V>,
    {
        Table {
            slots: empty_slots(FIRST_SLOTS),
            shift: 64 - FIRST_SLOTS.trailing_zeros(),
            arena: Vec::new(),
            hashes: Vec::new(),
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot where a probe for `hash` starts.
    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize & self.mask()
    }

    /// Load the slot where a probe for `hash` starts; the value is only
    /// used to keep the load from being optimised away.
    #[inline(always)]
    pub(super) fn touch<V>(&self, hash: u64) -> u32
    where
        A: Aligned<V>,
    {
        self.slots[self.home(hash)].slot().len
    }

    /// The slot of the key `probe` (whose encoding is `long` when longer
    /// than [`INLINE`] bytes), and whether it was just made (as group
    /// `hashes.len()`, the number of groups so far, holding `V::default()`).
    #[inline(always)]
    pub(super) fn find_or_insert<V: Default>(&mut self, probe: &Probe, long: &[u8]) -> (usize, bool)
    where
        A: Aligned<V>,
    {
        let mask = self.mask();
        let mut at = self.home(probe.hash);
        loop {
            let slot = self.slots[at].slot();
            if slot.len == 0 {
                break;
            }
            if slot.len == probe.len + 1
                && slot.words[0] == probe.words[0]
                && if probe.is_long() {
                    let start = slot.words[1] as usize;
                    bytes_eq(self.arena.get(start..start + long.len()).unwrap_or(&[]), long)
                } else {
                    slot.words[1] == probe.words[1]
                }
            {
                return (at, false);
            }
            at = (at + 1) & mask;
        }
        // At most 3/4 full, so probes stay short.
        if (self.hashes.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow();
            return self.find_or_insert(probe, long);
        }
        let words = if probe.is_long() {
            let start = self.arena.len() as u64;
            self.arena.extend_from_slice(long);
            [probe.hash, start]
        } else {
            probe.words
        };
        *self.slots[at].slot_mut() = Slot {
            words,
            len: probe.len + 1,
            group: u32_of(self.hashes.len()),
            value: V::default(),
        };
        self.hashes.push(probe.hash);
        (at, true)
    }

    /// The slot holding group `group`.
    pub(super) fn slot_of_group<V>(&self, group: u32) -> Option<usize>
    where
        A: Aligned<V>,
    {
        let mask = self.mask();
        let mut at = self.home(*self.hashes.get(group as usize)?);
        for _ in 0..self.slots.len() {
            let slot = self.slots[at].slot();
            if slot.len == 0 {
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
        self.shift -= 1;
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| s.slot().len != 0) {
            let mut at = self.home(self.hashes[slot.slot().group as usize]);
            while self.slots[at].slot().len != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
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

    /// The probe of `key` as [`Probe::of`] makes it, with its hash set to
    /// `hash` (to make keys collide).
    fn probe_hashed(key: &[u8], hash: u64) -> Probe {
        let mut probe = Probe::of(key, &FixedState::with_seed(1));
        if probe.is_long() {
            probe.words[0] = hash;
        }
        probe.hash = hash;
        probe
    }

    #[test]
    fn short_keys_pack_into_their_zero_padded_bytes() {
        let text = b"abcdefghijklmnopq";
        for len in 0..=INLINE {
            let key = &text[..len];
            let mut padded = [0u8; 16];
            padded[..len].copy_from_slice(key);
            let expected = [
                u64::from_le_bytes(padded[..8].try_into().unwrap()),
                u64::from_le_bytes(padded[8..].try_into().unwrap()),
            ];
            assert_eq!(pack(key), expected, "{len} bytes");
            let probe = Probe::of(key, &FixedState::with_seed(1));
            assert_eq!(probe.inline_bytes(), (padded, len));
        }
        // A trailing zero byte is told apart by the length.
        let (a, b) = (
            Probe::of(b"a", &FixedState::with_seed(1)),
            Probe::of(b"a\0", &FixedState::with_seed(1)),
        );
        assert_eq!(a.words, b.words);
        assert_ne!((a.len, a.hash), (b.len, b.hash));
    }

    #[test]
    fn the_table_finds_every_key_it_was_given_across_growth() {
        let mut table = Table::<Half<u64>>::new();
        let hasher = FixedState::with_seed(1);
        let keys: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("k{i} {}", "x".repeat(i as usize % 40)).into_bytes())
            .collect();
        assert!(keys.iter().any(|k| k.len() <= INLINE) && keys.iter().any(|k| k.len() > INLINE));
        for (i, key) in keys.iter().enumerate() {
            let (at, new) = table.find_or_insert(&Probe::of(key, &hasher), key);
            assert!(new);
            table.slots[at].slot_mut().value = i as u64;
        }
        for (i, key) in keys.iter().enumerate() {
            let (at, new) = table.find_or_insert(&Probe::of(key, &hasher), key);
            assert!(!new);
            assert_eq!((table.slots[at].0.group, table.slots[at].0.value), (i as u32, i as u64));
            assert_eq!(table.slot_of_group::<u64>(i as u32), Some(at));
        }
        // Equal hashes, different keys: told apart by the bytes.
        let mut table = Table::<Half<u64>>::new();
        let group = |t: &mut Table<Half<u64>>, key: &[u8]| {
            let (at, new) = t.find_or_insert(&probe_hashed(key, 7), key);
            (t.slots[at].0.group, new)
        };
        let (long_a, long_b) = (
            b"a key longer than sixteen bytes".as_slice(),
            b"a key longer than sixteen bytez".as_slice(),
        );
        assert_eq!(group(&mut table, b"a"), (0, true));
        assert_eq!(group(&mut table, b"b"), (1, true));
        assert_eq!(group(&mut table, b"a"), (0, false));
        assert_eq!(group(&mut table, b""), (2, true));
        assert_eq!(group(&mut table, b""), (2, false));
        assert_eq!(group(&mut table, long_a), (3, true));
        assert_eq!(group(&mut table, long_b), (4, true));
        assert_eq!(group(&mut table, long_a), (3, false));
        assert_eq!(group(&mut table, long_b), (4, false));
    }
}
