//! Combining a map task's sorted passes: whether it still pays
//! ([`Combining`]), which groups go to the guest's `combine`
//! ([`CombinePlan`]: only those of more than one row), in calls of bounded
//! size ([`calls_of`]), and putting its output back in key order
//! ([`place_combined`]).

use arrow::array::RecordBatch;

use super::{COMBINE_JUDGED_AFTER_ROWS, COMBINE_USELESS_TENTHS, Error};
use crate::shuffle::{self, KeyEncoder, Partitioner};

/// Whether a map task still combines, judged from what combining has
/// achieved so far: once the task has seen enough rows from the guest to
/// tell, and combining removed less than a tenth of them (keys mostly
/// distinct), it stops.
pub(super) struct Combining {
    /// Whether to combine the next pass.
    pub(super) on: bool,
    /// Rows the guest emitted that reached a combine pass.
    seen: u64,
    /// Rows combining removed.
    pub(super) removed: u64,
}

impl Combining {
    /// Judging from nothing yet: on when the job combines.
    pub(super) fn new(combines: bool) -> Self {
        Combining {
            on: combines,
            seen: 0,
            removed: 0,
        }
    }

    /// `fresh` rows from the guest went into a pass.
    pub(super) fn saw(&mut self, fresh: usize) {
        self.seen += fresh as u64;
        if self.seen >= COMBINE_JUDGED_AFTER_ROWS && self.removed * 10 < self.seen * (10 - COMBINE_USELESS_TENTHS) {
            self.on = false;
        }
    }
}

/// The pass `sorted` (groups ending at `plan.ends`) with its groups of more than
/// one row replaced by `combined`, the guest's output for them, sorted by
/// key. The SDKs combine group by group, in order, a row a group: their rows
/// go back between the lone rows by position. A hand-written guest might
/// return other rows or change keys, so the result is checked and, if not
/// sorted, re-sorted rather than trusted.
pub(super) fn place_combined(
    encoder: &KeyEncoder,
    sorted: &RecordBatch,
    plan: &CombinePlan,
    combined: &RecordBatch,
) -> Result<RecordBatch, Error> {
    if combined.num_rows() == plan.multi_groups {
        let placed = if plan.all_multi() {
            combined.clone()
        } else {
            shuffle::interleave(&[sorted, combined], &plan.interleaved())?
        };
        if shuffle::is_sorted(encoder, &placed)? {
            return Ok(placed);
        }
    }
    let lone = shuffle::take_rows(sorted, plan.lone_rows())?;
    let all = shuffle::concat(&combined.schema(), &[lone, combined.clone()])?;
    Ok(shuffle::partition_and_sort(encoder, &all, &Partitioner::Hash, 1)?.batch)
}

/// Which groups of a sorted pass have more than one row and so go to the
/// guest's `combine`.
pub(super) struct CombinePlan<'a> {
    /// Where each group of the pass ends.
    pub(super) ends: &'a [u32],
    /// How many groups have more than one row.
    pub(super) multi_groups: usize,
}

impl<'a> CombinePlan<'a> {
    /// The plan for a pass whose groups end at `ends`.
    pub(super) fn of(ends: &'a [u32]) -> Self {
        let multi_groups = group_spans(ends).filter(|&(s, e)| e - s > 1).count();
        CombinePlan { ends, multi_groups }
    }

    /// Whether every group has more than one row.
    pub(super) fn all_multi(&self) -> bool {
        self.multi_groups == self.ends.len()
    }

    /// The rows of the groups of more than one row, in order.
    pub(super) fn multi_rows(&self) -> Vec<u32> {
        group_spans(self.ends)
            .filter(|&(s, e)| e - s > 1)
            .flat_map(|(s, e)| s..e)
            .collect()
    }

    /// Where those groups end among those rows.
    pub(super) fn multi_ends(&self) -> Vec<u32> {
        let mut at = 0;
        group_spans(self.ends)
            .filter(|&(s, e)| e - s > 1)
            .map(|(s, e)| {
                at += e - s;
                at
            })
            .collect()
    }

    /// The rows of the groups of one row.
    pub(super) fn lone_rows(&self) -> Vec<u32> {
        group_spans(self.ends)
            .filter(|&(s, e)| e - s == 1)
            .map(|(s, _)| s)
            .collect()
    }

    /// Each group's output row in key order: (0, its row) from the pass for
    /// a lone row, (1, the next row) from `combine`'s output otherwise.
    pub(super) fn interleaved(&self) -> Vec<(usize, usize)> {
        let mut next = 0;
        group_spans(self.ends)
            .map(|(s, e)| {
                if e - s == 1 {
                    (0, s as usize)
                } else {
                    next += 1;
                    (1, next - 1)
                }
            })
            .collect()
    }
}

/// (start, end) of each group whose ends are `ends`.
fn group_spans(ends: &[u32]) -> impl Iterator<Item = (u32, u32)> + '_ {
    ends.iter().scan(0u32, |start, &end| {
        let span = (*start, end);
        *start = end;
        Some(span)
    })
}

/// Groups (ending at `ends`, ascending) in calls of at most `max_rows`
/// rows, or of one group where that alone is larger: each call's range of
/// group indices.
pub(super) fn calls_of(ends: &[u32], max_rows: usize) -> Vec<std::ops::Range<usize>> {
    let mut calls = Vec::new();
    let (mut start, mut first) = (0usize, 0usize);
    while first < ends.len() {
        let limit = start + max_rows;
        let fit = ends[first..].partition_point(|&e| e as usize <= limit).max(1);
        calls.push(first..first + fit);
        first += fit;
        start = ends[first - 1] as usize;
    }
    calls
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn only_groups_of_more_than_one_row_are_combined_and_go_back_in_order() {
        // Groups: [0], [1,2,3], [4], [5,6], [7].
        let ends = [1, 4, 5, 7, 8];
        let plan = CombinePlan::of(&ends);
        assert_eq!(plan.multi_groups, 2);
        assert_eq!(plan.multi_rows(), [1, 2, 3, 5, 6]);
        assert_eq!(plan.multi_ends(), [3, 5]);
        assert_eq!(plan.lone_rows(), [0, 4, 7]);
        assert_eq!(plan.interleaved(), [(0, 0), (1, 0), (0, 4), (1, 1), (0, 7)]);
        assert_eq!(CombinePlan::of(&[1, 2, 3]).multi_groups, 0);
        assert_eq!(CombinePlan::of(&[]).multi_groups, 0);
    }

    fn pairs(keys: &[&str], values: &[u64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k0", DataType::Utf8, true),
            Field::new("v0", DataType::UInt64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(arrow::array::UInt64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    fn rows_of(batch: &RecordBatch) -> Vec<(String, u64)> {
        let keys = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let values = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .unwrap();
        (0..batch.num_rows())
            .map(|i| (keys.value(i).to_string(), values.value(i)))
            .collect()
    }

    #[test]
    fn combined_groups_go_back_among_lone_rows_and_bad_guest_output_is_resorted() {
        let encoder = KeyEncoder::new(&[DataType::Utf8]).unwrap();
        // Groups: a (lone), b (3 rows), c (lone), d (2 rows).
        let sorted = pairs(&["a", "b", "b", "b", "c", "d", "d"], &[1, 1, 1, 1, 1, 1, 1]);
        let ends = [1, 4, 5, 7];
        let plan = CombinePlan::of(&ends);
        let expect = |rows: &[(&str, u64)]| rows.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>();
        // A row a group, in order: placed by position.
        let placed = place_combined(&encoder, &sorted, &plan, &pairs(&["b", "d"], &[3, 2])).unwrap();
        assert_eq!(rows_of(&placed), expect(&[("a", 1), ("b", 3), ("c", 1), ("d", 2)]));
        // A guest that changed a key ("d" to "a"): still sorted in the end.
        let placed = place_combined(&encoder, &sorted, &plan, &pairs(&["b", "a"], &[3, 2])).unwrap();
        assert_eq!(rows_of(&placed), expect(&[("a", 1), ("a", 2), ("b", 3), ("c", 1)]));
        // Rows in order among themselves, but not among the lone rows.
        let placed = place_combined(&encoder, &sorted, &plan, &pairs(&["b", "b"], &[3, 2])).unwrap();
        assert_eq!(rows_of(&placed), expect(&[("a", 1), ("b", 3), ("b", 2), ("c", 1)]));
        // More rows than groups, out of order.
        let placed = place_combined(&encoder, &sorted, &plan, &pairs(&["d", "b", "b"], &[2, 1, 2])).unwrap();
        let keys: Vec<String> = rows_of(&placed).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "b", "c", "d"]);
        // Every group combined: the guest's rows are the pass.
        let both = pairs(&["b", "b", "d", "d"], &[1, 1, 1, 1]);
        let plan = CombinePlan::of(&[2, 4]);
        let placed = place_combined(&encoder, &both, &plan, &pairs(&["b", "d"], &[2, 2])).unwrap();
        assert_eq!(rows_of(&placed), expect(&[("b", 2), ("d", 2)]));
    }

    #[test]
    fn combine_calls_hold_whole_groups_of_at_most_the_rows_given() {
        assert_eq!(calls_of(&[], 4), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(calls_of(&[1, 2, 3, 4, 5], 2), vec![0..2, 2..4, 4..5]);
        // Group 1 (rows 2..9) is larger than a call: it goes alone.
        assert_eq!(calls_of(&[2, 9, 10, 11], 4), vec![0..1, 1..2, 2..4]);
        assert_eq!(calls_of(&[3, 4, 8], 4), vec![0..2, 2..3]);
        assert_eq!(calls_of(&[100], 4), vec![0..1]);
    }
}
