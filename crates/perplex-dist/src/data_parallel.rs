//! [`DataParallel`]: the trainer's [`Strategy`] over a [`ProcessGroup`]. Rank 0's variables are
//! broadcast before the first step; after each step's backward the gradients are summed over
//! ranks in flat buckets (PyTorch DDP's `bucket_cap_mb`, 25 MB by default), without dividing:
//! the trainer already divides every rank's loss by the global normaliser.
//!
//! Each reduction is timed and its bytes counted ([`DataParallel::reduction_stats`]): one
//! `debug` line per reduction (target `perplex_dist::data_parallel`, message `gradient
//! all-reduce`, fields `rank`, `reduction`, `ms`, `bytes`, `buckets`; `cargo xtask bench ddp`
//! reads them) and an `info` line with the mean when the strategy is dropped.
use std::cell::Cell;
use std::time::Instant;

use perplex_trainer::strategy::Strategy;
use perplex_trainer::TrainerError;
use tch::{Kind, Tensor};

use crate::{DistError, ProcessGroup};

/// Gradient bucket size when none is set: PyTorch DDP's default `bucket_cap_mb = 25`.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// What this rank's gradient reductions cost so far ([`DataParallel::reduction_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReductionStats {
    /// Gradient reductions made: one per optimizer step (after the last micro-batch's backward).
    pub reductions: u64,
    /// Their total wall time on this rank, in seconds: flattening, the all-reduce calls
    /// (including the wait for slower ranks to arrive) and copying back.
    pub seconds: f64,
    /// Bytes of gradient the last reduction summed: every parameter's `numel × element size`
    /// (4 per f32 value), what each rank hands to the all-reduce per step.
    pub bytes: u64,
    /// All-reduce calls (buckets) the last reduction made.
    pub buckets: usize,
}

impl ReductionStats {
    /// Mean seconds per reduction (0 before the first).
    pub fn mean_seconds(&self) -> f64 {
        if self.reductions > 0 {
            self.seconds / self.reductions as f64
        } else {
            0.0
        }
    }
}

/// Data-parallel training: every rank holds the whole model and reads its rows of each global
/// batch ([`Strategy::shard`]'s default); only rank 0 writes files, and the other ranks wait for
/// each checkpoint at a barrier.
///
/// The gradient all-reduce does **not** overlap the backward pass: it runs after the last
/// micro-batch's backward has finished, bucket after bucket. PyTorch's DDP starts a bucket's
/// all-reduce from autograd hooks as soon as its gradients are ready; tch exposes no such
/// per-parameter hook, so here communication and computation take turns.
#[derive(Debug)]
pub struct DataParallel {
    group: ProcessGroup,
    bucket_bytes: usize,
    /// Gradient reductions made, their seconds and size (for the logs).
    reductions: Cell<ReductionStats>,
}

impl DataParallel {
    /// Data parallelism over `group`.
    pub fn new(group: ProcessGroup) -> Self {
        Self {
            group,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            reductions: Cell::new(ReductionStats::default()),
        }
    }

    /// Joins the job the environment describes ([`ProcessGroup::from_env`]).
    ///
    /// # Errors
    /// As [`ProcessGroup::from_env`].
    pub fn from_env() -> Result<Self, DistError> {
        Ok(Self::new(ProcessGroup::from_env()?))
    }

    /// Gradients are summed in flat buckets of at most `bytes` (a larger tensor is its own).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    /// The process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Gradient reductions so far and their mean duration in seconds.
    pub fn reduction_time(&self) -> (u64, f64) {
        let stats = self.reductions.get();
        (stats.reductions, stats.mean_seconds())
    }

    /// Gradient reductions so far: how many, their time on this rank and the bytes and buckets
    /// of the last one.
    pub fn reduction_stats(&self) -> ReductionStats {
        self.reductions.get()
    }

    /// Sums one bucket of gradients: flattened into one tensor, reduced, copied back. A
    /// parameter without a gradient on this rank contributes zeros; the bucket also carries, per
    /// parameter, how many ranks have its gradient, so that a parameter some other rank used
    /// gets the sum here too (its gradient is created: PyTorch DDP's `find_unused_parameters`
    /// case; without it this rank's optimiser would skip a parameter the others update, and the
    /// replicas would drift apart silently). A parameter no rank used keeps no gradient, as in
    /// a single process. Returns the gradient bytes reduced.
    fn reduce_bucket(&self, params: &[&Tensor]) -> Result<u64, DistError> {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        let mut flat: Vec<Tensor> = params
            .iter()
            .zip(&grads)
            .map(|(p, g)| {
                if g.defined() {
                    g.f_reshape([-1])
                } else {
                    p.f_zeros_like()?.f_reshape([-1])
                }
            })
            .collect::<Result<_, _>>()?;
        let numel: i64 = params.iter().map(|p| p.numel() as i64).sum();
        let used: Vec<f64> = grads
            .iter()
            .map(|g| if g.defined() { 1.0 } else { 0.0 })
            .collect();
        let first = params[0];
        flat.push(
            Tensor::f_from_slice(&used)?
                .f_to_kind(first.kind())?
                .f_to_device(first.device())?,
        );
        let bucket = Tensor::f_cat(&flat, 0)?;
        self.group.all_reduce_sum(&bucket)?;
        let users = Vec::<f64>::try_from(
            bucket
                .f_narrow(0, numel, params.len() as i64)?
                .f_to_kind(Kind::Double)?
                .f_to_device(tch::Device::Cpu)?,
        )?;
        let mut offset = 0;
        for ((p, g), users) in params.iter().zip(&grads).zip(users) {
            let n = p.numel() as i64;
            let summed = bucket.f_narrow(0, offset, n)?.f_view_as(p)?;
            if g.defined() {
                g.shallow_clone().f_copy_(&summed)?;
            } else if users > 0.5 {
                create_grad(p)?;
                p.grad().f_copy_(&summed)?;
            }
            offset += n;
        }
        Ok((numel as usize * first.kind().elt_size_in_bytes()) as u64)
    }
}

/// Gives `p` (a leaf that requires grad) a zero gradient: autograd accumulates `0 · p`.
fn create_grad(p: &Tensor) -> Result<(), DistError> {
    tch::with_grad(|| p.f_mul_scalar(0.0)?.f_sum(None)?.f_backward())?;
    Ok(())
}

/// The parameters in buckets: consecutive runs of one kind and device, each at most
/// `bucket_bytes` (a tensor larger than that is a bucket of its own).
fn buckets(params: &[(String, Tensor)], bucket_bytes: usize) -> Vec<Vec<&Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0;
    for (_, p) in params {
        let size = p.numel() * p.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b: &Vec<&Tensor>| {
            let first = b[0];
            first.kind() == p.kind() && first.device() == p.device() && bytes + size <= bucket_bytes
        });
        if fits {
            out.last_mut().expect("a bucket is open").push(p);
            bytes += size;
        } else {
            out.push(vec![p]);
            bytes = size;
        }
    }
    out
}

impl Strategy for DataParallel {
    fn rank(&self) -> usize {
        self.group.rank()
    }

    fn world_size(&self) -> usize {
        self.group.world_size()
    }

    fn local_rank(&self) -> usize {
        self.group.launch().local_rank
    }

    /// Every rank starts from rank 0's variables (its seed may differ, or its init be random).
    fn prepare(&self, variables: &[(String, Tensor)]) -> Result<(), TrainerError> {
        tch::no_grad(|| {
            for (_, v) in variables {
                let mut data = v.detach();
                self.group.broadcast(&mut data, 0)?;
            }
            Ok::<_, DistError>(())
        })?;
        Ok(())
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
        let sum = t.f_detach()?.f_contiguous()?.copy();
        self.group.all_reduce_sum(&sum)?;
        Ok(sum)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
        Ok(self.group.all_gather(&t.f_detach()?)?)
    }

    fn barrier(&self) -> Result<(), TrainerError> {
        Ok(self.group.barrier()?)
    }

    fn reduce_gradients(&self, params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        let start = Instant::now();
        let (bytes, buckets) = tch::no_grad(|| {
            let buckets = buckets(params, self.bucket_bytes);
            let mut bytes = 0;
            for bucket in &buckets {
                bytes += self.reduce_bucket(bucket)?;
            }
            Ok::<_, DistError>((bytes, buckets.len()))
        })?;
        let seconds = start.elapsed().as_secs_f64();
        let before = self.reductions.get();
        let stats = ReductionStats {
            reductions: before.reductions + 1,
            seconds: before.seconds + seconds,
            bytes,
            buckets,
        };
        self.reductions.set(stats);
        tracing::debug!(
            rank = self.rank(),
            reduction = stats.reductions,
            ms = 1e3 * seconds,
            bytes,
            buckets,
            "gradient all-reduce"
        );
        Ok(())
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        let stats = self.reduction_stats();
        if stats.reductions > 0 {
            tracing::info!(
                rank = self.rank(),
                reductions = stats.reductions,
                mean_ms = format!("{:.2}", 1e3 * stats.mean_seconds()),
                bytes = stats.bytes,
                buckets = stats.buckets,
                "gradient all-reduce time per step"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn buckets_respect_the_size_and_the_kind() {
        let t = |n: i64, kind: Kind| Tensor::zeros([n], (kind, tch::Device::Cpu));
        let params: Vec<(String, Tensor)> = [
            (10, Kind::Float),
            (10, Kind::Float),
            (30, Kind::Float),
            (5, Kind::Double),
            (5, Kind::Double),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (n, k))| (i.to_string(), t(n, k)))
        .collect();
        let sizes: Vec<Vec<i64>> = buckets(&params, 80)
            .iter()
            .map(|b| b.iter().map(|p| p.numel() as i64).collect())
            .collect();
        // 10 + 10 floats = 80 bytes; 30 floats (120 bytes) alone; doubles apart from floats.
        assert_eq!(sizes, vec![vec![10, 10], vec![30], vec![5, 5]]);
    }
}
