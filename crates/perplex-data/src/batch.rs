//! BPTT batching in the style of PyTorch's `word_language_model`.
use tch::{Device, Kind, Tensor};

use crate::{Batch, DataError};

/// One window of a batched token stream (the name of [`Batch`] from before loaders were a
/// trait).
pub type BpttBatch = Batch;

/// A token stream cut into `batch_size` contiguous columns and read in BPTT windows.
///
/// Row `b` of the `[batch_size, n]` matrix holds tokens `b*n .. (b+1)*n` of the stream (the tail
/// that does not fill a row is dropped); window `i` covers columns `i*seq_len ..` and its targets
/// are the next tokens. A recurrent model carries its hidden state from one window to the next,
/// detached (truncated BPTT).
#[derive(Debug)]
pub struct BpttBatches {
    data: Tensor,
    seq_len: i64,
    windows: usize,
}

impl BpttBatches {
    /// Batches `ids` (int64, 1-D) on `device`.
    ///
    /// With `drop_last` only full windows of `seq_len` tokens are produced (training, as the
    /// reference does); otherwise the last, shorter window is kept (evaluation).
    ///
    /// # Errors
    /// [`DataError::SplitTooSmall`] when the stream cannot fill one window, naming `split`.
    pub fn new(
        ids: &Tensor,
        batch_size: usize,
        seq_len: usize,
        drop_last: bool,
        split: &str,
        device: Device,
    ) -> Result<Self, DataError> {
        let tokens = ids.size1()? as usize;
        let (columns, windows) = bptt_layout(tokens, batch_size, seq_len, drop_last, split)?;
        let data = ids
            .f_narrow(0, 0, (columns * batch_size) as i64)?
            .f_view([batch_size as i64, columns as i64])?
            .f_to_device(device)?;
        Ok(Self {
            data,
            seq_len: seq_len as i64,
            windows,
        })
    }

    /// Number of windows in one pass.
    pub fn len(&self) -> usize {
        self.windows
    }

    /// True when there is no window (never, once constructed).
    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }

    /// The batch size (rows).
    pub fn batch_size(&self) -> i64 {
        self.data.size()[0]
    }

    /// The window length (the last window of an evaluation pass may be shorter).
    pub fn seq_len(&self) -> i64 {
        self.seq_len
    }

    /// The same windows restricted to rows `rows` (streams) of every batch: the shard of one
    /// process of a data-parallel run.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when `rows` is empty or out of range.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self, DataError> {
        let n = self.data.size()[0] as usize;
        if rows.is_empty() || rows.end > n {
            return Err(DataError::InvalidConfig {
                key: "batch_size",
                value: n.to_string(),
                expected: format!("rows {rows:?} within the batch"),
            });
        }
        Ok(Self {
            data: self
                .data
                .f_narrow(0, rows.start as i64, rows.len() as i64)?,
            seq_len: self.seq_len,
            windows: self.windows,
        })
    }

    /// Target tokens in one pass: the tokens a model is scored on.
    pub fn tokens_per_pass(&self) -> usize {
        (0..self.windows)
            .map(|i| self.window_len(i) as usize)
            .sum::<usize>()
            * self.batch_size() as usize
    }

    fn window_len(&self, index: usize) -> i64 {
        let start = index as i64 * self.seq_len;
        let steps = self.data.size()[1] - 1;
        self.seq_len.min(steps - start)
    }

    /// Window `index` (`0 <= index < len()`); `None` past the end.
    pub fn get(&self, index: usize) -> Option<Batch> {
        if index >= self.windows {
            return None;
        }
        let start = index as i64 * self.seq_len;
        let len = self.window_len(index);
        Some(Batch {
            inputs: self.data.narrow(1, start, len),
            targets: self.data.narrow(1, start + 1, len),
            index,
        })
    }

    /// The windows in order, starting at window `from` (for resuming mid-epoch).
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = Batch> + '_ {
        (from..self.windows).filter_map(move |i| self.get(i))
    }

    /// The windows in order.
    pub fn iter(&self) -> impl Iterator<Item = Batch> + '_ {
        self.iter_from(0)
    }
}

/// The BPTT layout of a split of `tokens` tokens: `batch_size` rows of `columns` tokens each
/// (the tail that does not fill a row dropped) read in `windows` windows of `seq_len` targets
/// (full windows only with `drop_last`, else the last one shorter). Returns
/// `(columns, windows)`; shared by [`BpttBatches`] and [`crate::StreamWindows`].
///
/// # Errors
/// [`DataError::InvalidConfig`] for a zero size; [`DataError::SplitTooSmall`] naming `split`
/// when the rows cannot fill one window.
pub(crate) fn bptt_layout(
    tokens: usize,
    batch_size: usize,
    seq_len: usize,
    drop_last: bool,
    split: &str,
) -> Result<(usize, usize), DataError> {
    for (key, v) in [("batch_size", batch_size), ("seq_len", seq_len)] {
        if v == 0 {
            return Err(DataError::InvalidConfig {
                key,
                value: "0".into(),
                expected: "a positive integer".into(),
            });
        }
    }
    let columns = tokens / batch_size;
    let needed_columns = if drop_last { seq_len + 1 } else { 2 };
    if columns < needed_columns {
        return Err(DataError::SplitTooSmall {
            split: split.to_string(),
            tokens,
            needed: batch_size * needed_columns,
            rule: if drop_last {
                format!("batch_size {batch_size} x (seq_len {seq_len} + 1)")
            } else {
                format!("batch_size {batch_size} x 2")
            },
        });
    }
    let steps = columns - 1;
    let windows = if drop_last {
        steps / seq_len
    } else {
        steps.div_ceil(seq_len)
    };
    Ok((columns, windows))
}

/// Converts token ids to an int64 tensor.
pub fn ids_to_tensor(ids: &[i64]) -> Tensor {
    Tensor::from_slice(ids).to_kind(Kind::Int64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_contiguous_and_targets_shifted() {
        let ids = Tensor::arange(20, (Kind::Int64, Device::Cpu));
        let b = BpttBatches::new(&ids, 2, 3, true, "train", Device::Cpu).unwrap();
        // 10 columns: 9 steps -> 3 full windows of 3.
        assert_eq!(b.len(), 3);
        let w = b.get(1).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(w.inputs.flatten(0, -1)).unwrap(),
            [3, 4, 5, 13, 14, 15]
        );
        assert_eq!(
            Vec::<i64>::try_from(w.targets.flatten(0, -1)).unwrap(),
            [4, 5, 6, 14, 15, 16]
        );
    }

    #[test]
    fn eval_keeps_the_short_last_window() {
        let ids = Tensor::arange(22, (Kind::Int64, Device::Cpu));
        let b = BpttBatches::new(&ids, 2, 3, false, "valid", Device::Cpu).unwrap();
        // 11 columns: 10 steps -> windows of 3, 3, 3, 1.
        assert_eq!(b.len(), 4);
        assert_eq!(b.get(3).unwrap().inputs.size(), [2, 1]);
        assert_eq!(b.tokens_per_pass(), 20);
    }

    #[test]
    fn too_small_split_names_tokens_and_need() {
        let ids = Tensor::arange(10, (Kind::Int64, Device::Cpu));
        let err = BpttBatches::new(&ids, 4, 35, true, "valid", Device::Cpu).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("valid split has 10 tokens"), "{msg}");
        assert!(msg.contains("at least 144"), "{msg}");
    }
}
