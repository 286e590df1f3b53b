//! Cutting input into splits: expanding paths, directories and globs into
//! files, then text files into byte ranges and Parquet files into runs of
//! row groups. Planning is cheap: one listing or `head` per input, and one
//! footer read per Parquet file.

use futures::TryStreamExt;
use globset::{GlobBuilder, GlobMatcher};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::Error;
use super::location::Location;

/// Default split size for text input: 64 MiB.
pub const DEFAULT_SPLIT_SIZE: u64 = 64 << 20;
/// Most files packed into one map task: each file is counted as at least
/// 1/64 of the split size (1 MiB at the default), for what opening it costs,
/// as Spark counts `openCostInBytes`.
pub const MAX_FILES_PER_TASK: u64 = 64;

/// How far past the split size a split or a packed task may run rather than
/// leave a sliver to a task of its own: a tenth, as Hadoop's `SPLIT_SLOP`
/// (1.1). Eight files of a few bytes over 32 MiB then pack two to a 64 MiB
/// task, not one; a file of 65 MiB is one split, not 64 MiB and a sliver.
fn with_slop(split_size: u64) -> u64 {
    split_size.saturating_add(split_size / 10)
}

/// What one map task reads: one split of a large file, or several small
/// files (or tail pieces) packed together up to the split size, read in
/// order, as Hadoop's `CombineFileInputFormat` does, so that 100,000 tiny
/// files do not make 100,000 map tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MapInput {
    /// The splits, in the order they are read.
    pub splits: Vec<Split>,
}

impl MapInput {
    /// The input bytes this task covers (for progress).
    pub fn size_hint(&self) -> u64 {
        self.splits.iter().map(Split::size_hint).sum()
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self.splits.as_slice() {
            [one] => one.describe(),
            [first, .., last] => format!(
                "{} files packed together, {} .. {}",
                self.splits.len(),
                first.file,
                last.file
            ),
            [] => "no input".into(),
        }
    }
}

/// Pack consecutive splits into map inputs of up to `split_size` bytes (and
/// [its slop](with_slop)), each counted as at least 1/[`MAX_FILES_PER_TASK`]
/// of it; a split as large as the split size stays alone.
///
/// The smaller splits are spread evenly over as many tasks as the split
/// size needs; when the tasks are more than `slots` (more than one wave),
/// their number is rounded up to a multiple of `slots`, so the last wave
/// fills every slot. (80 files of 3.6 MiB at 32 MiB splits would otherwise
/// pack 9 to a task: 9 tasks, and one of 2 slots idle for the last of 5 waves.)
/// The slop never takes the tasks below the slots they would fill.
pub fn pack_splits(splits: Vec<Split>, split_size: u64, slots: usize) -> Vec<MapInput> {
    let split_size = split_size.max(1);
    let open_cost = split_size / MAX_FILES_PER_TASK;
    let cost = |split: &Split| split.size_hint().max(open_cost);
    let alone = splits.iter().filter(|s| cost(s) >= split_size).count() as u64;
    let packed_total: u64 = splits.iter().map(cost).filter(|c| *c < split_size).sum();
    let packed_count = splits.len() as u64 - alone;
    let slots = slots.max(1) as u64;
    let limit = with_slop(split_size);
    // The slop may save a task, but not one that would leave a slot idle
    // (the split size is cut to fill the slots when the input is small).
    let fill = packed_total.div_ceil(split_size).min(slots.saturating_sub(alone));
    let packed_tasks = packed_total
        .div_ceil(limit)
        .max(fill)
        .max(packed_count.div_ceil(MAX_FILES_PER_TASK));
    let needed = (alone + packed_tasks).max(1);
    let tasks = if needed > slots {
        needed.div_ceil(slots) * slots
    } else {
        needed
    };
    // Each task of packed splits takes about this much.
    let share = packed_total.div_ceil(tasks.saturating_sub(alone).max(1)).max(1);
    let mut inputs = Vec::new();
    let mut current: Vec<Split> = Vec::new();
    let (mut bytes, mut before, mut share_index) = (0u64, 0u64, 0u64);
    for split in splits {
        let cost = cost(&split);
        if cost >= split_size {
            if !current.is_empty() {
                inputs.push(MapInput {
                    splits: std::mem::take(&mut current),
                });
                bytes = 0;
            }
            inputs.push(MapInput { splits: vec![split] });
            continue;
        }
        // The share this split's middle falls in.
        let index = (before + cost / 2) / share;
        before += cost;
        let full = bytes + cost > limit || current.len() as u64 >= MAX_FILES_PER_TASK;
        if !current.is_empty() && (full || index != share_index) {
            inputs.push(MapInput {
                splits: std::mem::take(&mut current),
            });
            bytes = 0;
        }
        share_index = index;
        bytes += cost;
        current.push(split);
    }
    if !current.is_empty() {
        inputs.push(MapInput { splits: current });
    }
    inputs
}

/// The part of one input file a map task reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The file, as a path or URL that [`Location::parse`] accepts.
    pub file: String,
    /// The file's size in bytes.
    pub file_size: u64,
    /// Which part of the file.
    pub kind: SplitKind,
}

/// How a split is delimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Text: the lines that *start* in `start..end` (a line may run past `end`).
    Text {
        /// First byte (inclusive).
        start: u64,
        /// Last byte (exclusive).
        end: u64,
    },
    /// Parquet: these row groups, in order.
    Parquet {
        /// Row group indexes.
        row_groups: Vec<usize>,
    },
}

impl Split {
    /// A short description for messages: `file bytes 0..67108864`.
    pub fn describe(&self) -> String {
        match &self.kind {
            SplitKind::Text { start, end } => format!("{} bytes {start}..{end}", self.file),
            SplitKind::Parquet { row_groups } => format!("{} row groups {row_groups:?}", self.file),
        }
    }

    /// The number of input bytes this split covers (for progress).
    pub fn size_hint(&self) -> u64 {
        match &self.kind {
            SplitKind::Text { start, end } => end - start,
            SplitKind::Parquet { .. } => self.file_size,
        }
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

fn hidden(path: &Path) -> bool {
    path.filename()
        .is_some_and(|n| n.starts_with('_') || n.starts_with('.'))
}

/// Whether a file is read as Parquet (by its extension) rather than text.
pub fn is_parquet(file: &str) -> bool {
    let lower = file.to_ascii_lowercase();
    lower.ends_with(".parquet") || lower.ends_with(".parq") || lower.ends_with(".pq")
}

/// The visible files under `base` whose path relative to it passes `keep`,
/// sorted by path. Names starting with `_` or `.` are hidden.
async fn list_visible(base: &Location, keep: impl Fn(&str) -> bool) -> Result<Vec<(Location, ObjectMeta)>, Error> {
    let listed: Vec<ObjectMeta> = base
        .store
        .list(Some(&base.path))
        .try_collect()
        .await
        .map_err(|e| Error::io(&base.display, "listing", e))?;
    let mut files: Vec<(Location, ObjectMeta)> = listed
        .into_iter()
        .filter(|m| {
            let rel: Vec<String> = m
                .location
                .prefix_match(&base.path)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            !hidden(&m.location) && keep(&rel.join("/"))
        })
        .map(|m| (base.at(m.location.clone()), m))
        .collect();
    files.sort_by(|a, b| a.1.location.cmp(&b.1.location));
    Ok(files)
}

/// The literal part of an input: all of a path, or a glob's directory
/// before its first wildcard (`.` when there is none).
pub fn input_base(input: &str) -> &str {
    if !has_glob(input) {
        return input;
    }
    match glob_base(input) {
        "" => ".",
        base => base,
    }
}

/// The literal directory part of a glob (before its first wildcard).
fn glob_base(input: &str) -> &str {
    let cut = input[..input.find(['*', '?', '[', '{']).unwrap_or(0)]
        .rfind('/')
        .map_or(0, |i| i + 1);
    &input[..cut]
}

fn glob_matcher(input: &str, pattern: &str) -> Result<GlobMatcher, Error> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| Error::BadLocation {
            input: input.to_string(),
            reason: format!("bad glob: {e}"),
        })?
        .compile_matcher())
}

/// Refuse an output inside an input, where the job's output files would
/// be read as input by the next run: inside an input directory, or where
/// an input glob would match the output files.
///
/// # Errors
/// [`Error::OutputInsideInput`], or a bad input location.
pub fn check_output_outside(inputs: &[String], output: &Location) -> Result<(), Error> {
    for input in inputs {
        let cut = if has_glob(input) {
            glob_base(input).len()
        } else {
            input.len()
        };
        let (base, pattern) = input.split_at(cut);
        let base = Location::parse(if base.is_empty() { "." } else { base })?;
        if !output.is_within(&base) {
            continue;
        }
        let inside = if pattern.is_empty() {
            true
        } else {
            let rel: Vec<String> = output
                .path
                .prefix_match(&base.path)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            let dir = rel.join("/");
            let matcher = glob_matcher(input, pattern)?;
            ["part-00000.txt", "part-00000.parquet"].iter().any(|f| {
                matcher.is_match(if dir.is_empty() {
                    f.to_string()
                } else {
                    format!("{dir}/{f}")
                })
            })
        };
        if inside {
            return Err(Error::OutputInsideInput {
                output: output.display.clone(),
                input: input.clone(),
            });
        }
    }
    Ok(())
}

/// Expand one input into the files it names, sorted by path.
async fn expand(input: &str) -> Result<Vec<(Location, ObjectMeta)>, Error> {
    if has_glob(input) {
        let (base, pattern) = input.split_at(glob_base(input).len());
        let base = Location::parse(if base.is_empty() { "." } else { base })?;
        let matcher = glob_matcher(input, pattern)?;
        let files = list_visible(&base, |rel| matcher.is_match(rel)).await?;
        if files.is_empty() {
            return Err(Error::NoMatch {
                pattern: input.to_string(),
            });
        }
        return Ok(files);
    }
    let location = Location::parse(input)?;
    match location.store.head(&location.path).await {
        Ok(meta) => Ok(vec![(location, meta)]),
        Err(object_store::Error::NotFound { .. }) | Err(object_store::Error::Generic { .. }) => {
            // Perhaps a directory (or key prefix): take every visible file under it.
            let files = list_visible(&location, |_| true).await?;
            if files.is_empty() {
                return Err(Error::MissingInput {
                    input: input.to_string(),
                });
            }
            Ok(files)
        }
        Err(e) => Err(Error::io(&location.display, "reading metadata of", e)),
    }
}

/// The split size to cut with when `total` bytes of input meet `slots`
/// task slots: `split_size`, or less when that would leave slots idle, so
/// that a small input still gets one split per slot (as Spark computes
/// `maxSplitBytes` from the total bytes and the default parallelism).
pub fn split_size_for(split_size: u64, total: u64, slots: usize) -> u64 {
    let per_slot = total.div_ceil(slots.max(1) as u64);
    split_size.min(per_slot.max(MIN_SPLIT_SIZE)).max(1)
}

/// Smallest split size `split_size_for` chooses on its own.
pub const MIN_SPLIT_SIZE: u64 = 1 << 20;

/// Cut `inputs` into map inputs for `slots` task slots: [`plan_splits`] at
/// a size chosen for the input and slots, then [`pack_splits`].
///
/// # Errors
/// As [`plan_splits`].
pub async fn plan_map_inputs(inputs: &[String], split_size: u64, slots: usize) -> Result<Vec<MapInput>, Error> {
    let started = std::time::Instant::now();
    let mut files = Vec::new();
    for input in inputs {
        files.extend(expand(input).await?);
    }
    let total: u64 = files.iter().map(|(_, meta)| meta.size).sum();
    let split_size = split_size_for(split_size, total, slots);
    let splits = cut_files(files, split_size).await?;
    let count = splits.len();
    let packed = pack_splits(splits, split_size, slots);
    tracing::info!(
        splits = count,
        map_tasks = packed.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "planned the input"
    );
    Ok(packed)
}

/// Cut `inputs` into splits: text files into byte ranges of `split_size`,
/// Parquet files into runs of whole row groups of about `split_size`.
///
/// # Errors
/// [`Error::MissingInput`] for a path that does not exist,
/// [`Error::NoMatch`] for a glob that matches nothing, [`Error::Parquet`] for
/// a Parquet file whose footer can't be read, and I/O errors.
pub async fn plan_splits(inputs: &[String], split_size: u64) -> Result<Vec<Split>, Error> {
    let mut files = Vec::new();
    for input in inputs {
        files.extend(expand(input).await?);
    }
    cut_files(files, split_size).await
}

/// Cut expanded files into splits of about `split_size`: a text file's last
/// split takes the rest when it is within [the slop](with_slop).
async fn cut_files(files: Vec<(Location, ObjectMeta)>, split_size: u64) -> Result<Vec<Split>, Error> {
    let split_size = split_size.max(1);
    let mut splits = Vec::new();
    {
        for (location, meta) in files {
            let size = meta.size;
            if size == 0 {
                continue;
            }
            if is_parquet(&location.display) {
                let groups = super::parquet_input::row_group_sizes(&location, size).await?;
                let mut current: Vec<usize> = Vec::new();
                let mut bytes = 0u64;
                for (i, group_bytes) in groups.into_iter().enumerate() {
                    if !current.is_empty() && bytes + group_bytes > split_size {
                        splits.push(Split {
                            file: location.display.clone(),
                            file_size: size,
                            kind: SplitKind::Parquet {
                                row_groups: std::mem::take(&mut current),
                            },
                        });
                        bytes = 0;
                    }
                    current.push(i);
                    bytes += group_bytes;
                }
                if !current.is_empty() {
                    splits.push(Split {
                        file: location.display.clone(),
                        file_size: size,
                        kind: SplitKind::Parquet { row_groups: current },
                    });
                }
            } else {
                splits.extend(text_ranges(size, split_size).map(|(start, end)| Split {
                    file: location.display.clone(),
                    file_size: size,
                    kind: SplitKind::Text { start, end },
                }));
            }
        }
    }
    Ok(splits)
}

/// The byte ranges a text file of `size` bytes is cut into: `split_size`
/// each, the last taking the rest when that is within [the slop](with_slop).
fn text_ranges(size: u64, split_size: u64) -> impl Iterator<Item = (u64, u64)> {
    let split_size = split_size.max(1);
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= size {
            return None;
        }
        let end = if size - start > with_slop(split_size) {
            start + split_size
        } else {
            size
        };
        let range = (start, end);
        start = end;
        Some(range)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(file: &str, start: u64, end: u64) -> Split {
        Split {
            file: file.into(),
            file_size: end,
            kind: SplitKind::Text { start, end },
        }
    }

    #[test]
    fn small_files_are_packed_and_large_splits_stay_alone() {
        let mb = 1u64 << 20;
        let mut splits = vec![text("big", 0, 64 * mb), text("big", 64 * mb, 72 * mb)];
        splits.extend((0..20).map(|i| text(&format!("tiny{i}"), 0, 100)));
        splits.push(text("mid", 0, 48 * mb));
        let inputs = pack_splits(splits, 64 * mb, 1);
        let sizes: Vec<usize> = inputs.iter().map(|i| i.splits.len()).collect();
        // The full split alone; the other 76 MiB (each tiny file counted as
        // 1 MiB) in 2 tasks: the big file's 8 MiB tail with all 20 tiny
        // files, and the 48 MiB file.
        assert_eq!(sizes, [1, 21, 1]);
        let many = pack_splits((0..200).map(|i| text(&format!("t{i}"), 0, 10)).collect(), 64 * mb, 1);
        assert_eq!(many.len(), 4, "at most 64 files a task");
        assert_eq!(inputs.iter().map(|i| i.splits.len()).sum::<usize>(), 23);
        assert!(inputs[1].describe().contains("21 files packed together"));
    }

    /// 80 files of a little over 3.6 MiB at 32 MiB splits: 9 tasks (8 of
    /// 9 files) for 1 slot; for 2 slots, 10 tasks of 8 files, so that both
    /// slots read the same bytes.
    #[test]
    fn small_files_are_spread_evenly_over_a_multiple_of_the_slots() {
        let mb = 1u64 << 20;
        let files = || {
            (0..80)
                .map(|i| text(&format!("f{i:02}"), 0, 36 * mb / 10 + 100))
                .collect::<Vec<_>>()
        };
        let counts = |slots| -> Vec<usize> {
            let inputs = pack_splits(files(), 32 * mb, slots);
            assert!(inputs.iter().all(|i| i.size_hint() <= with_slop(32 * mb)));
            let names: Vec<String> = inputs
                .iter()
                .flat_map(|i| i.splits.iter().map(|s| s.file.clone()))
                .collect();
            assert_eq!(
                names,
                files().into_iter().map(|s| s.file).collect::<Vec<_>>(),
                "every file once, in order"
            );
            inputs.iter().map(|i| i.splits.len()).collect()
        };
        assert_eq!(counts(1), [9, 9, 9, 9, 8, 9, 9, 9, 9]);
        assert_eq!(counts(2), [8; 10]);
        assert_eq!(counts(3).iter().sum::<usize>(), 80);
        assert_eq!(counts(3).len(), 9, "9 tasks already fill 3 slots");
        // One wave: no rounding up, and no task saved by the slop while a
        // slot would be idle (10 tasks of 28.8 MiB, not 9 of 32).
        assert_eq!(counts(16).len(), 10);
        // Full splits stay alone and do not skew the shares of the small
        // files after them: 5 alone and 60 small files need 6 tasks, 8 for
        // 4 slots, so the small files go 20 to a task.
        let mut mixed: Vec<Split> = (0..5).map(|i| text("big", i * 64 * mb, (i + 1) * 64 * mb)).collect();
        mixed.extend((0..60).map(|i| text(&format!("s{i:02}"), 0, mb)));
        let sizes: Vec<usize> = pack_splits(mixed, 64 * mb, 4).iter().map(|i| i.splits.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 1, 20, 20, 20]);
    }

    /// A split may run a tenth past the split size rather than leave a
    /// sliver to a task of its own.
    #[test]
    fn splits_take_a_sliver_within_the_slop() {
        let mb = 1u64 << 20;
        // 8 files a few bytes over 32 MiB: 2 to a 64 MiB task, for 1 slot
        // or 2, not one each.
        let files: Vec<Split> = (0..8).map(|i| text(&format!("z{i}"), 0, 32 * mb + 30)).collect();
        for slots in [1, 2] {
            let sizes: Vec<usize> = pack_splits(files.clone(), 64 * mb, slots)
                .iter()
                .map(|i| i.splits.len())
                .collect();
            assert_eq!(sizes, [2; 4], "{slots} slots");
        }
        let ranges = |size| text_ranges(size, 64 * mb).collect::<Vec<_>>();
        assert_eq!(ranges(70 * mb), [(0, 70 * mb)]);
        assert_eq!(ranges(71 * mb), [(0, 64 * mb), (64 * mb, 71 * mb)]);
        assert_eq!(
            ranges(190 * mb),
            [(0, 64 * mb), (64 * mb, 128 * mb), (128 * mb, 190 * mb)]
        );
        assert_eq!(ranges(0), []);
        // No slop that would leave a slot idle: 600 files of 1 MiB on 12
        // slots, at the 50 MiB split size that fills them, make 12 tasks,
        // not 11 of 55 MiB.
        let files: Vec<Split> = (0..600).map(|i| text(&format!("m{i}"), 0, mb)).collect();
        assert_eq!(pack_splits(files, 50 * mb, 12).len(), 12);
        assert_eq!(text_ranges(5, 1).count(), 5);
    }

    #[test]
    fn a_small_input_is_cut_for_every_slot() {
        let mb = 1u64 << 20;
        assert_eq!(split_size_for(64 * mb, 1024 * mb, 2), 64 * mb);
        assert_eq!(split_size_for(64 * mb, 60 * mb, 2), 30 * mb);
        assert_eq!(split_size_for(64 * mb, 100, 2), MIN_SPLIT_SIZE);
        assert_eq!(
            split_size_for(4096, 60 * mb, 2),
            4096,
            "an explicit small split size stays"
        );
    }
}
