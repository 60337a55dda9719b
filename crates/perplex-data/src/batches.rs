//! The data-loader seam: [`Batches`], what the training engine reads batches through.
//!
//! A loader yields [`Batch`]es of int64 `[batch, seq]` inputs and targets by position
//! ([`Cursor`]: epoch and index), so its cursor is plain data that a checkpoint records and a
//! resumed run passes back; and it can be cut into the shard of one process of a data-parallel
//! run ([`Batches::shard`]): disjoint rows of every global batch, whose union is the whole batch.
//!
//! Two loaders:
//! - [`BpttBatches`]: the token stream cut into `batch` contiguous streams read in windows; a
//!   recurrent model carries its state from one window to the next (PyTorch's
//!   `word_language_model`).
//! - [`RandomWindows`]: `batch` windows of `seq + 1` tokens at seeded random offsets (nanoGPT's
//!   `get_batch`), for models that carry no state between batches (Transformers).
use std::fmt::Debug;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{BpttBatches, DataError};

/// One batch of a loader.
#[derive(Debug)]
pub struct Batch {
    /// Input ids, int64 `[batch_size, len]` with `len <= seq_len`.
    pub inputs: Tensor,
    /// Target ids (the inputs shifted by one token), int64 `[batch_size, len]`.
    pub targets: Tensor,
    /// Position of this batch in its epoch, from 0.
    pub index: usize,
}

/// A position in a loader's sequence of batches: what a checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// The epoch, from 1 (a loader whose order does not change between epochs ignores it).
    pub epoch: u64,
    /// The batch within the epoch, from 0.
    pub index: usize,
}

/// A data loader: batches by position, so any position can be read again (resume) and any
/// process of a data-parallel run can read its own rows.
pub trait Batches: Debug + Send {
    /// Batches in one epoch.
    fn len(&self) -> usize;

    /// True when an epoch has no batch (never, for the loaders of this crate once built).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows of each batch.
    fn batch_size(&self) -> i64;

    /// The window length in tokens (the last window of an evaluation pass may be shorter).
    fn seq_len(&self) -> i64;

    /// Whether row `b` of batch `i + 1` continues row `b` of batch `i`, so that a recurrent
    /// model should carry its state across batches (true for BPTT streams).
    fn carries_state(&self) -> bool;

    /// Target tokens in one epoch: the tokens a model is scored on.
    fn tokens_per_pass(&self) -> usize;

    /// The batch at `cursor`; `None` when `cursor.index >= len()`.
    ///
    /// # Errors
    /// libtorch errors (moving the batch to its device).
    fn get(&self, cursor: Cursor) -> Result<Option<Batch>, DataError>;

    /// The part of this loader that process `rank` of `world_size` reads: rows
    /// `rank · b .. (rank + 1) · b` of every batch, `b = batch_size / world_size`. The shards are
    /// disjoint and together they are the whole batch, so `world_size` processes with batch `b`
    /// each see what one process with batch `world_size · b` sees.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] (`batch_size`) when `world_size` does not divide the batch
    /// size or `rank >= world_size`.
    fn shard(&self, rank: usize, world_size: usize) -> Result<Box<dyn Batches>, DataError>;
}

/// Checks a shard request and returns the rows it covers.
pub(crate) fn shard_rows(
    batch_size: usize,
    rank: usize,
    world_size: usize,
) -> Result<std::ops::Range<usize>, DataError> {
    if world_size == 0 || rank >= world_size || !batch_size.is_multiple_of(world_size) {
        return Err(DataError::InvalidConfig {
            key: "batch_size",
            value: batch_size.to_string(),
            expected: format!(
                "a multiple of the world size {world_size} (rank {rank}): every process reads \
                 batch_size / world_size rows"
            ),
        });
    }
    let b = batch_size / world_size;
    Ok(rank * b..(rank + 1) * b)
}

/// Token ids that windows are copied from: held as compact integers, never one `String` per
/// token (a `Vec<u16>`/`Vec<u32>`/`Vec<i64>` in memory, or a memory-mapped token file).
pub trait TokenIds: Debug + Send + Sync {
    /// Number of tokens.
    fn len(&self) -> usize;

    /// True when there is no token.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies tokens `start .. start + out.len()` into `out`.
    ///
    /// # Panics
    /// If the range is out of bounds (callers check it).
    fn copy_window(&self, start: usize, out: &mut [i64]);
}

macro_rules! token_ids_for_vec {
    ($($t:ty),*) => {$(
        impl TokenIds for Vec<$t> {
            fn len(&self) -> usize {
                <[$t]>::len(self)
            }

            fn copy_window(&self, start: usize, out: &mut [i64]) {
                let n = out.len();
                for (o, &v) in out.iter_mut().zip(&self[start..start + n]) {
                    *o = i64::from(v);
                }
            }
        }
    )*};
}
token_ids_for_vec!(u16, u32, i64);

/// Random windows: each batch is `batch_size` windows of `seq_len + 1` tokens starting at
/// offsets drawn uniformly from `[0, n - seq_len - 1]`, input the first `seq_len` tokens and
/// target the last `seq_len` (nanoGPT's `get_batch`).
///
/// The offsets are a pure function of `(seed, epoch, index, row)` (SplitMix64), so any batch can
/// be read again from its [`Cursor`] and a resumed run sees exactly the batches an uninterrupted
/// one would; the offsets differ from epoch to epoch. An epoch is `⌊n / (batch_size · seq_len)⌋`
/// batches (at least one): as many target tokens as the split holds, drawn with replacement.
/// Nothing is carried between batches ([`Batches::carries_state`] is false).
#[derive(Debug, Clone)]
pub struct RandomWindows {
    ids: Arc<dyn TokenIds>,
    seq_len: usize,
    /// Rows of the global batch this loader reads (all of them unless sharded).
    rows: std::ops::Range<usize>,
    global_batch: usize,
    batches: usize,
    seed: u64,
    device: Device,
}

impl RandomWindows {
    /// Windows of `seq_len` tokens from `ids`, `batch_size` per batch, on `device`.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for a zero size; [`DataError::SplitTooSmall`] (naming
    /// `split`) when the split has fewer than `seq_len + 1` tokens.
    pub fn new(
        ids: Arc<dyn TokenIds>,
        batch_size: usize,
        seq_len: usize,
        seed: u64,
        split: &str,
        device: Device,
    ) -> Result<Self, DataError> {
        for (key, v) in [("batch_size", batch_size), ("seq_len", seq_len)] {
            if v == 0 {
                return Err(DataError::InvalidConfig {
                    key,
                    value: "0".into(),
                    expected: "a positive integer".into(),
                });
            }
        }
        let tokens = ids.len();
        if tokens < seq_len + 1 {
            return Err(DataError::SplitTooSmall {
                split: split.to_string(),
                tokens,
                needed: seq_len + 1,
                rule: format!("seq_len {seq_len} + 1: one window"),
            });
        }
        let batches = (tokens / (batch_size * seq_len)).max(1);
        Ok(Self {
            ids,
            seq_len,
            rows: 0..batch_size,
            global_batch: batch_size,
            batches,
            seed,
            device,
        })
    }

    /// The start of row `row` of batch `cursor` in the token ids.
    pub fn offset(&self, cursor: Cursor, row: usize) -> usize {
        let starts = (self.ids.len() - self.seq_len) as u64;
        let mut h = splitmix64(self.seed ^ 0x5045_5250_4c45_5800);
        h = splitmix64(h ^ cursor.epoch);
        h = splitmix64(h ^ cursor.index as u64);
        h = splitmix64(h ^ row as u64);
        // The modulo's bias is below starts / 2^64: nil for any corpus.
        (h % starts) as usize
    }
}

/// SplitMix64's output function (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Batches for RandomWindows {
    fn len(&self) -> usize {
        self.batches
    }

    fn batch_size(&self) -> i64 {
        self.rows.len() as i64
    }

    fn seq_len(&self) -> i64 {
        self.seq_len as i64
    }

    fn carries_state(&self) -> bool {
        false
    }

    fn tokens_per_pass(&self) -> usize {
        self.batches * self.rows.len() * self.seq_len
    }

    fn get(&self, cursor: Cursor) -> Result<Option<Batch>, DataError> {
        if cursor.index >= self.batches {
            return Ok(None);
        }
        let width = self.seq_len + 1;
        let mut buf = vec![0i64; self.rows.len() * width];
        for (row, out) in self.rows.clone().zip(buf.chunks_exact_mut(width)) {
            self.ids.copy_window(self.offset(cursor, row), out);
        }
        let windows = Tensor::f_from_slice(&buf)?
            .f_view([self.rows.len() as i64, width as i64])?
            .f_to_device(self.device)?;
        let len = self.seq_len as i64;
        Ok(Some(Batch {
            inputs: windows.f_narrow(1, 0, len)?,
            targets: windows.f_narrow(1, 1, len)?,
            index: cursor.index,
        }))
    }

    fn shard(&self, rank: usize, world_size: usize) -> Result<Box<dyn Batches>, DataError> {
        let local = shard_rows(self.rows.len(), rank, world_size)?;
        let mut shard = self.clone();
        shard.rows = self.rows.start + local.start..self.rows.start + local.end;
        debug_assert!(shard.rows.end <= self.global_batch);
        Ok(Box::new(shard))
    }
}

impl Batches for BpttBatches {
    fn len(&self) -> usize {
        BpttBatches::len(self)
    }

    fn batch_size(&self) -> i64 {
        BpttBatches::batch_size(self)
    }

    fn seq_len(&self) -> i64 {
        BpttBatches::seq_len(self)
    }

    fn carries_state(&self) -> bool {
        true
    }

    fn tokens_per_pass(&self) -> usize {
        BpttBatches::tokens_per_pass(self)
    }

    fn get(&self, cursor: Cursor) -> Result<Option<Batch>, DataError> {
        Ok(BpttBatches::get(self, cursor.index))
    }

    fn shard(&self, rank: usize, world_size: usize) -> Result<Box<dyn Batches>, DataError> {
        let rows = shard_rows(BpttBatches::batch_size(self) as usize, rank, world_size)?;
        Ok(Box::new(self.rows(rows)?))
    }
}

/// Which loader reads the training split: the `data.loader` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoaderKind {
    /// Contiguous streams read in BPTT windows ([`BpttBatches`]); the state of a recurrent model
    /// is carried across windows.
    #[default]
    Bptt,
    /// Windows at seeded random offsets ([`RandomWindows`]); nothing is carried.
    RandomWindows,
}

/// One batch's inputs and targets as flat int64 ids (row-major `[batch, len]`).
pub type FlatBatch = (Vec<i64>, Vec<i64>);

/// Reads every batch of one epoch of `batches` as int64 ids: for tests and tools.
///
/// # Errors
/// As [`Batches::get`].
pub fn collect_epoch(batches: &dyn Batches, epoch: u64) -> Result<Vec<FlatBatch>, DataError> {
    (0..batches.len())
        .map(|index| {
            let b = batches
                .get(Cursor { epoch, index })?
                .expect("index < len() has a batch");
            let flat = |t: &Tensor| -> Result<Vec<i64>, DataError> {
                Ok(Vec::<i64>::try_from(
                    t.f_to_device(Device::Cpu)?
                        .f_to_kind(Kind::Int64)?
                        .f_flatten(0, -1)?,
                )?)
            };
            Ok((flat(&b.inputs)?, flat(&b.targets)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: i64) -> Arc<dyn TokenIds> {
        Arc::new((0..n).collect::<Vec<i64>>())
    }

    #[test]
    fn random_windows_are_shifted_windows_of_the_corpus() {
        let w = RandomWindows::new(ids(1000), 4, 8, 7, "train", Device::Cpu).unwrap();
        assert_eq!(w.len(), 1000 / 32);
        for (inputs, targets) in collect_epoch(&w, 1).unwrap() {
            for (i, t) in inputs.chunks(8).zip(targets.chunks(8)) {
                // Consecutive ids: a window of the corpus, the target one token ahead.
                assert!(i.windows(2).all(|p| p[1] == p[0] + 1), "{i:?}");
                assert_eq!(i[0] + 1, t[0]);
                assert!(t[7] < 1000);
            }
        }
    }

    /// Pitfall BB2-16 (a): with N = 10 tokens and T = 4, every start 0..=5 is drawn (the last
    /// window's target ends on the last token) and no start past it (a short target).
    #[test]
    fn random_window_starts_reach_the_last_full_window_and_never_past_it() {
        let w = RandomWindows::new(ids(10), 1, 4, 0, "train", Device::Cpu).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for epoch in 1..=2000 {
            for (x, y) in collect_epoch(&w, epoch).unwrap() {
                assert_eq!(x.len(), 4);
                assert!(x.iter().zip(&y).all(|(a, b)| *b == a + 1), "{x:?} {y:?}");
                seen.insert(x[0]);
            }
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    }

    /// Pitfall BB2-17: the order of windows is a function of the seed and the epoch, so each
    /// epoch draws a new order (no `set_epoch` trap) and a second run the same orders.
    #[test]
    fn random_windows_are_a_function_of_seed_and_cursor() {
        let a = RandomWindows::new(ids(5000), 3, 5, 1, "train", Device::Cpu).unwrap();
        let b = RandomWindows::new(ids(5000), 3, 5, 1, "train", Device::Cpu).unwrap();
        let other_seed = RandomWindows::new(ids(5000), 3, 5, 2, "train", Device::Cpu).unwrap();
        assert_eq!(collect_epoch(&a, 1).unwrap(), collect_epoch(&b, 1).unwrap());
        assert_ne!(collect_epoch(&a, 1).unwrap(), collect_epoch(&a, 2).unwrap());
        assert_ne!(
            collect_epoch(&a, 1).unwrap(),
            collect_epoch(&other_seed, 1).unwrap()
        );
        // Offsets cover the corpus: the first and last possible starts are reachable.
        let starts: std::collections::BTreeSet<usize> = (0..2000)
            .map(|i| a.offset(Cursor { epoch: 1, index: i }, 0))
            .collect();
        assert!(*starts.iter().next_back().unwrap() > 4900);
        assert!(*starts.iter().next().unwrap() < 100);
    }

    fn shards_union_is_the_whole(batches: &dyn Batches) {
        let whole = collect_epoch(batches, 3).unwrap();
        let shards: Vec<_> = (0..2)
            .map(|r| collect_epoch(batches.shard(r, 2).unwrap().as_ref(), 3).unwrap())
            .collect();
        for (i, (inputs, targets)) in whole.iter().enumerate() {
            let half = inputs.len() / 2;
            assert_eq!(&inputs[..half], &shards[0][i].0[..]);
            assert_eq!(&inputs[half..], &shards[1][i].0[..]);
            assert_eq!(&targets[..half], &shards[0][i].1[..]);
            assert_eq!(&targets[half..], &shards[1][i].1[..]);
        }
    }

    /// Pitfalls BB2-16 and BB2-17: every process reads its own rows of the same global batch,
    /// so the shards never overlap, together cover the batch, and move to the next window at
    /// the same step.
    #[test]
    fn shards_are_disjoint_rows_whose_union_is_the_batch() {
        let w = RandomWindows::new(ids(3000), 4, 6, 9, "train", Device::Cpu).unwrap();
        shards_union_is_the_whole(&w);
        let ids = Tensor::arange(400, (Kind::Int64, Device::Cpu));
        let b = BpttBatches::new(&ids, 4, 5, true, "train", Device::Cpu).unwrap();
        shards_union_is_the_whole(&b);
    }

    #[test]
    fn a_shard_that_does_not_divide_the_batch_is_an_error() {
        let w = RandomWindows::new(ids(3000), 3, 6, 9, "train", Device::Cpu).unwrap();
        let msg = w.shard(0, 2).unwrap_err().to_string();
        assert!(
            msg.contains("batch_size") && msg.contains("world size 2"),
            "{msg}"
        );
        assert!(w.shard(2, 2).is_err());
    }

    #[test]
    fn a_split_shorter_than_one_window_is_named() {
        let msg = RandomWindows::new(ids(5), 2, 8, 0, "valid", Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("valid"), "{msg}");
    }

    #[test]
    fn compact_ids_read_the_same_windows() {
        let wide: Vec<i64> = (0..600).map(|i| (i * 7) % 311).collect();
        let narrow: Vec<u16> = wide.iter().map(|&v| v as u16).collect();
        let a = RandomWindows::new(Arc::new(wide), 2, 9, 4, "train", Device::Cpu).unwrap();
        let b = RandomWindows::new(Arc::new(narrow), 2, 9, 4, "train", Device::Cpu).unwrap();
        assert_eq!(collect_epoch(&a, 1).unwrap(), collect_epoch(&b, 1).unwrap());
    }
}
