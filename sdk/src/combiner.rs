//! The in-mapper combiner: map output grouped by key inside the guest as it
//! is emitted, each key's values folded into one as they arrive.
//!
//! Keys live in an open-addressing table ([`table`]) whose slots (32 bytes
//! for a number value) hold a key's combined value and its encoding, short
//! ones packed into two words: a lookup touches one cache line and makes
//! no call (on wasm, a copy or a comparison of a variable length is a call
//! out of the sandbox).
//! Lookups are staged: [`Grouping::push`] only hashes the key and packs it
//! (or copies it, when long), and every [`STAGED`] pairs the slots of all of
//! them are loaded first, side by side, then probed. The loads do not wait
//! on each other, so the processor waits on their cache misses together
//! rather than one after another (wasm has no prefetch instruction; this is
//! the portable way to get its effect).
//!
//! Values are combined as they arrive, two at a time: `combine` is called
//! for every pair emitted for a key already held. A panic in `combine` is
//! reported with the record being mapped when it ran.
//!
//! A key that is the very string [`Record::str`](crate::Record::str) handed
//! out of a dictionary-encoded column (Parquet's usual string columns), or
//! a code of a column [`Emit::emit_column`](crate::Emit::emit_column) is
//! given, is grouped by its dictionary code instead: the first time a code
//! is seen its key goes through the table, and after that its values are
//! combined into a slot of an array indexed by code, with no hashing, no
//! key copy and no probe. Those values join their table slot when the
//! dictionary's codes make way for a newer dictionary's (four are grouped
//! by code at once) and when the map output is finished.

use std::rc::Rc;

use foldhash::fast::FixedState;

use crate::columns::{Columns, IntoColumns};

use crate::record::{Dictionary, coded, held_dictionary};

mod table;

use table::{Aligned, Half, Line, Probe, Slot, Table, u32_of};

/// How a job combines two values of one key; see [`Job::combine`](crate::Job::combine).
pub(crate) type CombineFn<K, V> = Box<dyn Fn(&K, V, V) -> V>;

/// Pairs staged before their slots are looked up together.
const STAGED: usize = 32;

/// Dictionaries with more values than this are not grouped by code (the
/// array by code would be too large for what it saves).
const MAX_CODED: u32 = 1 << 18;

/// [`Grouping::push_coded`] goes through a dictionary's codes this many at
/// a time.
const CODES_PER_RANGE: usize = 4096;

/// Keys are grouped by code for this many dictionaries at once; the oldest
/// makes room for a new one.
const CODED_DICTIONARIES: usize = 4;

/// A pair emitted but not yet looked up: a long key's encoding is
/// `staged_keys[start..start + probe.len]`.
struct StagedPair<V> {
    probe: Probe,
    start: u32,
    value: V,
}

/// A column's worth of pairs with coded keys, by range of codes; see
/// [`Grouping::coded_pairs`].
pub(crate) struct CodedPairs<'g, V> {
    ranges: &'g mut [Vec<(u32, V)>],
}

impl<V> CodedPairs<'_, V> {
    /// Add a pair. (The host sends no code past its dictionary's end; one
    /// that came would be dropped, here or when grouped.)
    #[inline]
    pub(crate) fn push(&mut self, code: u32, value: V) {
        if let Some(range) = self.ranges.get_mut(code as usize / CODES_PER_RANGE) {
            range.push((code, value));
        }
    }

    /// How many pairs there are.
    pub(crate) fn len(&self) -> usize {
        self.ranges.iter().map(Vec::len).sum()
    }
}

/// The table, with slots aligned for the value's size.
enum Tables<V> {
    Half(Table<Half<V>>),
    Line(Table<Line<V>>),
}

impl<V: Columns> Tables<V> {
    /// [`add_pair`] on whichever table it is.
    #[inline(always)]
    fn add_pair<K: Columns>(
        &mut self,
        combine: &CombineFn<K, V>,
        keys: &mut Vec<K>,
        probe: &Probe,
        long: &[u8],
        value: V,
    ) -> u32 {
        match self {
            Tables::Half(table) => add_pair(table, combine, keys, probe, long, value),
            Tables::Line(table) => add_pair(table, combine, keys, probe, long, value),
        }
    }
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
    /// [`Grouping::coded_pairs`]: a column's pairs by range of codes.
    coded_ranges: Vec<Vec<(u32, V)>>,
}

/// Keys of one dictionary grouped by code. It names the dictionary by id,
/// and does not hold it (the host appends to a dictionary between `map`
/// calls): pairs staged by code are settled in the call that staged them
/// (every `map` call ends with [`Grouping::settle`]), while it is held.
///
/// A code's group and its value are in two arrays, not one of pairs: the
/// groups, 4 bytes a code, stay in a core's cache for a dictionary of
/// 100,000 values, and the values are as small as they can be (no
/// `Option`), which a row's random access into them pays for in misses.
struct CodedGroups<V> {
    dictionary: u64,
    /// By code: its group plus one (0 while the code has not been seen),
    /// with [`HOLDS`] set while `values` holds a value for it.
    groups: Vec<u32>,
    /// By code: its values emitted since its group was found, combined
    /// (they join the group's slot later); `V::default()` when none.
    values: Vec<V>,
    /// The codes whose value is held.
    touched: Vec<u32>,
}

/// Set in a code's group while a value is held for it.
const HOLDS: u32 = 1 << 31;

impl<V: Columns> CodedGroups<V> {
    /// Remember that code `code`'s group is `group`.
    #[inline(always)]
    fn found(&mut self, code: u32, group: u32) {
        if let Some(tag) = self.groups.get_mut(code as usize) {
            *tag = group + 1;
        }
    }

    /// Combine `value` into what code `code`, whose group is known (its
    /// `tag` in `groups` is not 0), holds.
    #[inline(always)]
    fn hold<K>(&mut self, code: u32, tag: u32, value: V, keys: &[K], combine: &CombineFn<K, V>) {
        let (Some(t), Some(held)) = (self.groups.get_mut(code as usize), self.values.get_mut(code as usize)) else {
            return;
        };
        if tag & HOLDS == 0 {
            *t = tag | HOLDS;
            *held = value;
            self.touched.push(code);
        } else {
            let key = &keys[((tag & !HOLDS) - 1) as usize];
            *held = combine(key, std::mem::take(held), value);
        }
    }
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
            coded_ranges: Vec::new(),
        }
    }

    /// Stage one pair; every [`STAGED`] pairs are looked up together.
    #[inline]
    pub(crate) fn push<Q: IntoColumns<K>>(&mut self, key: Q, value: V) {
        if self.codable
            && let Some(text) = key.as_text()
        {
            if let Some(c) = coded(text).filter(|c| c.dictionary_len <= MAX_CODED) {
                let at = self.take_dictionary(c.dictionary, c.dictionary_len as usize);
                self.coded_staged.push((at, c.code, value));
                if self.coded_staged.len() == STAGED {
                    self.settle_coded();
                }
                return;
            }
            // One string key: its encoding is its bytes, read in place.
            self.stage(text.as_bytes(), value);
            return;
        }
        let start = self.staged_keys.len();
        key.encode(&mut self.staged_keys);
        let probe = Probe::of(self.staged_keys.get(start..).unwrap_or(&[]), &self.hasher);
        if !probe.is_long() {
            self.staged_keys.truncate(start);
        }
        self.push_staged(StagedPair {
            probe,
            start: u32_of(start),
            value,
        });
    }

    /// Stage the pair of the key encoded as `encoded` (copied only when long).
    #[inline(always)]
    fn stage(&mut self, encoded: &[u8], value: V) {
        let probe = Probe::of(encoded, &self.hasher);
        let start = self.staged_keys.len();
        if probe.is_long() {
            self.staged_keys.extend_from_slice(encoded);
        }
        self.push_staged(StagedPair {
            probe,
            start: u32_of(start),
            value,
        });
    }

    #[inline(always)]
    fn push_staged(&mut self, pair: StagedPair<V>) {
        self.staged.push(pair);
        if self.staged.len() == STAGED {
            self.settle();
        }
    }

    /// Where in `coded` the groups of dictionary `id` are, made if they are
    /// not (the oldest groups' values joining their slots when there are
    /// too many), with an entry for each of its `len` codes.
    #[inline]
    fn take_dictionary(&mut self, id: u64, len: usize) -> usize {
        let at = if self.coded.get(self.coded_last).is_some_and(|g| g.dictionary == id) {
            self.coded_last
        } else if let Some(at) = self.coded.iter().position(|g| g.dictionary == id) {
            at
        } else {
            if self.coded.len() == CODED_DICTIONARIES {
                self.settle_coded();
                self.join_coded(0);
                self.coded.remove(0);
            }
            self.coded.push(CodedGroups {
                dictionary: id,
                groups: Vec::new(),
                values: Vec::new(),
                touched: Vec::new(),
            });
            self.coded.len() - 1
        };
        self.coded_last = at;
        if let Some(groups) = self.coded.get_mut(at)
            && groups.groups.len() < len
        {
            // The dictionary has grown since.
            groups.groups.resize(len, 0);
            groups.values.resize_with(len, V::default);
        }
        at
    }

    /// Where a column's worth of pairs whose keys are codes into a
    /// dictionary of `len` values go, for [`Grouping::push_coded`]: sorted
    /// by range of codes as they come.
    pub(crate) fn coded_pairs(&mut self, len: usize) -> CodedPairs<'_, V> {
        let ranges = len.div_ceil(CODES_PER_RANGE).max(1);
        if self.coded_ranges.len() < ranges {
            self.coded_ranges.resize_with(ranges, Vec::new);
        }
        let ranges = &mut self.coded_ranges[..ranges];
        ranges.iter_mut().for_each(Vec::clear);
        CodedPairs { ranges }
    }

    /// Group the pairs put in [`Grouping::coded_pairs`], whose keys are
    /// codes into `dictionary` (a held one), a range of codes at a time:
    /// each code's values are combined in its entry, and a code seen for
    /// the first time finds its group through the table. Returns the pairs
    /// when the dictionary is too large to group by code.
    pub(crate) fn push_coded(&mut self, dictionary: &Dictionary) -> Result<(), Vec<(u32, V)>> {
        if !self.codable || !dictionary.is_text() || dictionary.len() > MAX_CODED as usize {
            return Err(self.coded_ranges.iter_mut().flat_map(|range| range.drain(..)).collect());
        }
        // What is staged refers to `coded` by index, which this may change.
        self.settle();
        let at = self.take_dictionary(dictionary.id(), dictionary.len());
        let Grouping {
            coded,
            keys,
            combine,
            hasher,
            tables,
            coded_ranges,
            ..
        } = self;
        let Some(groups) = coded.get_mut(at) else {
            return Err(coded_ranges.iter_mut().flat_map(|range| range.drain(..)).collect());
        };
        let mut group_pair = |code: u32, value: V| {
            let Some(&tag) = groups.groups.get(code as usize) else {
                return;
            };
            if tag != 0 {
                groups.hold(code, tag, value, keys, combine);
                return;
            }
            let key = dictionary.text(code).unwrap_or_default().as_bytes();
            let probe = Probe::of(key, hasher);
            let group = tables.add_pair(combine, keys, &probe, key, value);
            groups.found(code, group);
        };
        // A large dictionary's values do not fit in a core's cache, and a
        // row's code is anywhere in them: going through the pairs a range
        // of codes at a time keeps to a few pages of them.
        for range in coded_ranges.iter_mut() {
            range.drain(..).for_each(|(code, value)| group_pair(code, value));
        }
        Ok(())
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
                .and_then(|g| g.groups.get(code as usize))
                .map(|&tag| tag & !HOLDS)
        };
        // First load every pair's entry; the loads do not wait on each other.
        let loaded = coded_staged
            .iter()
            .fold(0u32, |t, (at, code, _)| t ^ entry_of(coded, *at, *code).unwrap_or(0));
        std::hint::black_box(loaded);
        // Then hash the keys of codes not seen yet, and load their slots.
        let mut held: [Option<Rc<Dictionary>>; CODED_DICTIONARIES] = Default::default();
        let mut first_probes = [None; STAGED];
        let mut loaded = 0u32;
        for ((at, code, _), first) in coded_staged.iter().zip(&mut first_probes) {
            if entry_of(coded, *at, *code) == Some(0) {
                let text = text_of(&mut held, *at, coded[*at].dictionary, *code);
                let probe = Probe::of(text.as_bytes(), hasher);
                loaded ^= match tables {
                    Tables::Half(table) => table.touch(probe.hash),
                    Tables::Line(table) => table.touch(probe.hash),
                };
                *first = Some(probe);
            }
        }
        std::hint::black_box(loaded);
        for ((at, code, value), probe) in coded_staged.drain(..).zip(first_probes) {
            let Some(groups) = coded.get_mut(at) else { continue };
            let Some(&tag) = groups.groups.get(code as usize) else {
                continue;
            };
            if tag != 0 {
                groups.hold(code, tag, value, keys, combine);
                continue;
            }
            // First seen: find (or make) its group through the table. (The
            // probe was made above, unless the code came twice in this stage.)
            let key = text_of(&mut held, at, groups.dictionary, code).as_bytes();
            let probe = probe.unwrap_or_else(|| Probe::of(key, hasher));
            let group = tables.add_pair(combine, keys, &probe, key, value);
            groups.found(code, group);
        }
    }

    /// The dictionaries whose keys are grouped by code now, oldest first.
    #[cfg(test)]
    pub(crate) fn coded_dictionaries(&self) -> Vec<u64> {
        self.coded.iter().map(|g| g.dictionary).collect()
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
                let tag = groups.groups.get_mut(code as usize)?;
                if *tag & HOLDS == 0 {
                    return None;
                }
                *tag &= !HOLDS;
                let value = std::mem::take(groups.values.get_mut(code as usize)?);
                Some((tag.checked_sub(1)?, value))
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
            for slot in table.slots.into_iter().map(A::into_slot).filter(|s| s.len != 0) {
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

/// Value `code` of dictionary `id`, whose groups are `coded[at]`: the
/// dictionary is fetched into `held[at]` the first time.
fn text_of(held: &mut [Option<Rc<Dictionary>>; CODED_DICTIONARIES], at: usize, id: u64, code: u32) -> &str {
    let Some(slot) = held.get_mut(at) else { return "" };
    if slot.is_none() {
        *slot = held_dictionary(id);
    }
    slot.as_deref().and_then(|d| d.text(code)).unwrap_or_default()
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
    let touched = staged.iter().fold(0u32, |t, p| t ^ table.touch(p.probe.hash));
    std::hint::black_box(touched);
    for pair in staged.drain(..) {
        let long = if pair.probe.is_long() {
            let start = pair.start as usize;
            staged_keys.get(start..start + pair.probe.len as usize).unwrap_or(&[])
        } else {
            &[]
        };
        add_pair(table, combine, keys, &pair.probe, long, pair.value);
    }
}

/// Combine `value` into the group of the key `probe` (made if new), whose
/// encoding is `long` when longer than [`INLINE`](table::INLINE) bytes; returns the group.
#[inline(always)]
fn add_pair<K: Columns, V: Columns, A: Aligned<V>>(
    table: &mut Table<A>,
    combine: &CombineFn<K, V>,
    keys: &mut Vec<K>,
    probe: &Probe,
    long: &[u8],
    value: V,
) -> u32 {
    let (at, new) = table.find_or_insert(probe, long);
    let slot = table.slots[at].slot_mut();
    if new {
        let (inline, len) = probe.inline_bytes();
        let encoded = if probe.is_long() { long } else { &inline[..len] };
        let owned = K::decode(encoded)
            .unwrap_or_else(|| panic!("wmr-sdk: a key's encoding did not decode; this is a bug in wmr-sdk"));
        keys.push(owned);
        slot.value = value;
    } else {
        let held = std::mem::take(&mut slot.value);
        slot.value = combine(&keys[slot.group as usize], held, value);
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
        slot.value = combine(key, held, value);
    }
}
