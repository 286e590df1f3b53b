//! Sampling a job's keys before it runs, for range partitioning (TeraSort's
//! way): run the guest's `map` on the first records of a few splits spread
//! over the input, keep the encoded keys it emits, and cut the sorted
//! sample at even quantiles into one key range per reduce partition.

use tokio::sync::mpsc;

use super::map::{InputReader, OpenedSplit, open_splits};
use super::{Error, JobContext, guest_err};
use crate::data::MapInput;
use crate::shuffle::{KeyEncoder, Partitioner};
use crate::{AttemptId, TaskId};

/// Splits sampled, spread evenly over the input.
pub const SAMPLED_SPLITS: usize = 10;
/// Records read from the start of each sampled split.
pub const RECORDS_PER_SPLIT: u64 = 10_000;
/// Most keys kept in the sample.
pub const SAMPLE_KEYS: usize = 100_000;

/// A range partitioner for `partitions` partitions, its split points taken
/// from a sample of the keys the job's `map` emits for `inputs`.
///
/// # Errors
/// Input errors, and guest failures (as for a map task 0, attempt 0).
pub async fn sample_partitioner(ctx: &JobContext, inputs: &[MapInput], partitions: u32) -> Result<Partitioner, Error> {
    let all: Vec<_> = inputs.iter().flat_map(|i| i.splits.iter().cloned()).collect();
    let step = all.len().div_ceil(SAMPLED_SPLITS).max(1);
    let chosen: Vec<_> = all.into_iter().step_by(step).collect();
    let (tx, rx) = mpsc::channel(1);
    let _open = crate::spawn::SpawnedTask::spawn(open_splits(chosen, ctx.module.limits().max_record_bytes, tx));
    let runtime = ctx.runtime.clone();
    let module = ctx.module.clone();
    let cancel = ctx.cancel.clone();
    let sample = ctx
        .pool
        .run(move || sample_compute((&runtime, &module, &cancel), rx))
        .await??;
    Ok(Partitioner::from_sample(sample, partitions))
}

fn sample_compute(
    (runtime, module, cancel): (
        &crate::runtime::Runtime,
        &crate::runtime::JobModule,
        &crate::runtime::CancelFlag,
    ),
    mut splits: mpsc::Receiver<Result<OpenedSplit, Error>>,
) -> Result<Vec<Vec<u8>>, Error> {
    let (task, attempt) = (TaskId::map(0), AttemptId(0));
    let mut guest = module
        .instantiate(runtime, cancel)
        .map_err(guest_err(task, attempt, None))?;
    let encoder = KeyEncoder::new(&guest.info().key_types)?;
    let mut sample: Vec<Vec<u8>> = Vec::new();
    // Thinned as keys arrive (every other one kept, then every fourth...),
    // so a guest that emits without end holds no more than twice the cap.
    let mut stride = 1usize;
    let mut seen = 0usize;
    let mut keep = |out: &arrow::array::RecordBatch, sample: &mut Vec<Vec<u8>>| -> Result<(), Error> {
        if out.num_rows() == 0 {
            return Ok(());
        }
        for row in encoder.rows(out)?.iter() {
            if seen.is_multiple_of(stride) {
                sample.push(row.as_ref().to_vec());
            }
            seen += 1;
            if sample.len() >= 2 * SAMPLE_KEYS {
                let thinned: Vec<Vec<u8>> = std::mem::take(sample).into_iter().step_by(2).collect();
                *sample = thinned;
                stride *= 2;
            }
        }
        Ok(())
    };
    while let Some(opened) = splits.blocking_recv() {
        let (source, mut reader, _fetch) = opened?.into_reader()?;
        let mut read = 0u64;
        while read < RECORDS_PER_SPLIT {
            let Some(batch) = reader.next_batch()? else { break };
            let batch = if read + batch.num_rows() as u64 > RECORDS_PER_SPLIT {
                batch.slice(0, (RECORDS_PER_SPLIT - read) as usize)
            } else {
                batch
            };
            read += batch.num_rows() as u64;
            let out = guest.map(&source, &batch).map_err(guest_err(task, attempt, None))?;
            keep(&out, &mut sample)?;
        }
        drop::<InputReader>(reader);
    }
    let held = guest.flush().map_err(guest_err(task, attempt, None))?;
    keep(&held, &mut sample)?;
    Ok(sample)
}
