//! The seam where data-parallel training plugs in: how gradients are reduced, how token counts,
//! losses and evaluation sums are reduced, and which process writes files.
//!
//! The trainer calls a [`Strategy`] at fixed points of every step, as Lightning Fabric's facade
//! does; the single-process strategy does nothing there, so a step reads the same with one process
//! or many. The order inside [`crate::Trainer`]'s step is:
//! 1. the loss's normaliser of the local batch is summed over processes
//!    ([`Strategy::all_reduce_sum`]), so every micro-batch on every rank divides by the global
//!    denominator once;
//! 2. after the last micro-batch's backward, [`Strategy::reduce_gradients`] sums the gradients
//!    over processes (a sum, not a mean: the division happened in 1.);
//! 3. the step's loss (local sum over the global denominator) is summed over processes for the
//!    log and the non-finite check, so every rank skips or stops together;
//! 4. evaluation sums (NLL, counted tokens) are summed over processes.
//!
//! Each process reads its own shard of every loader ([`Strategy::shard`]). Before the first step
//! [`Strategy::prepare`] sees every variable of the model (data parallelism copies rank 0's).
//!
//! Only the primary process ([`Strategy::is_primary`]) writes the run directory; at a checkpoint
//! every process first gathers the recurrent state's rows ([`Strategy::all_gather`]) so that the
//! primary one saves the global batch's state, and after it every process waits at
//! [`Strategy::barrier`] until the checkpoint is on disk.
use std::fmt::Debug;

use perplex_data::Batches;
use tch::Tensor;

use crate::TrainerError;

/// How a step's reductions are made across processes.
pub trait Strategy: Debug + Send {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn world_size(&self) -> usize;

    /// This process's index among the job's processes on its machine (torchrun's
    /// `LOCAL_RANK`): `trainer.device = "auto"` (or `"cuda"`) means `cuda:LOCAL_RANK`. 0 by
    /// default.
    fn local_rank(&self) -> usize {
        0
    }

    /// Whether this process writes files (checkpoints, metrics, summary): rank 0.
    fn is_primary(&self) -> bool {
        self.rank() == 0
    }

    /// `t` summed over all processes (every process gets the sum).
    ///
    /// # Errors
    /// Communication or libtorch errors.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainerError>;

    /// The part of a loader that this process reads. By default the loader's own shard
    /// ([`Batches::shard`]: rows `rank · b .. (rank + 1) · b` of every global batch, so the
    /// processes together read what one process with the whole batch reads); one process reads
    /// everything. `data.batch_size` is therefore the global batch.
    ///
    /// # Errors
    /// [`TrainerError::Data`] when the world size does not divide the batch size.
    fn shard(&self, batches: Box<dyn Batches>) -> Result<Box<dyn Batches>, TrainerError> {
        if self.world_size() == 1 {
            return Ok(batches);
        }
        Ok(batches.shard(self.rank(), self.world_size())?)
    }

    /// Called once at the start of [`crate::Trainer::fit`] with every variable of the model
    /// (trainable or not, sorted by name), before the first step: a data-parallel strategy makes
    /// them equal on every process (broadcast from rank 0). Nothing by default.
    ///
    /// # Errors
    /// Communication or libtorch errors.
    fn prepare(&self, _variables: &[(String, Tensor)]) -> Result<(), TrainerError> {
        Ok(())
    }

    /// Every process's `t`, stacked along a new first dimension: `[world_size, ...t's shape]`,
    /// row r being process r's. Every process must pass the same shape and dtype. One process:
    /// `t` with a leading dimension of 1.
    ///
    /// # Errors
    /// Communication or libtorch errors.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
        Ok(t.f_detach()?.f_unsqueeze(0)?)
    }

    /// Returns once every process has called it (nothing to wait for with one process).
    ///
    /// # Errors
    /// Communication errors (a process is gone).
    fn barrier(&self) -> Result<(), TrainerError> {
        Ok(())
    }

    /// Sums every parameter's gradient over all processes, in place.
    ///
    /// # Errors
    /// Communication or libtorch errors.
    fn reduce_gradients(&self, params: &[(String, Tensor)]) -> Result<(), TrainerError>;
}

/// One process: every reduction is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Strategy for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
        Ok(t.shallow_clone())
    }

    fn reduce_gradients(&self, _params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        Ok(())
    }
}

/// Compares the parameters of every process (`trainer.check_replicas_every`): each sends the
/// float64 sum and sum of squares of every parameter (one all-gather), and every process checks
/// that all ranks hold exactly rank 0's values. Replicas of a data-parallel run are
/// bit-identical (the same reduced gradients through the same optimiser), so any difference is
/// a fault: a rank that skipped an update, a missed reduction.
///
/// # Errors
/// [`TrainerError::Config`] naming the step, the first parameter that differs (in name order),
/// the rank and both checksums; communication errors.
pub fn check_replicas(
    strategy: &dyn Strategy,
    params: &[(String, Tensor)],
    step: u64,
) -> Result<(), TrainerError> {
    if params.is_empty() {
        return Ok(());
    }
    let sums = tch::no_grad(|| -> Result<Tensor, TrainerError> {
        let rows = params
            .iter()
            .map(|(_, p)| {
                let p = p.f_to_kind(tch::Kind::Double)?;
                Ok(Tensor::f_stack(
                    &[p.f_sum(None)?, p.f_square()?.f_sum(None)?],
                    0,
                )?)
            })
            .collect::<Result<Vec<Tensor>, TrainerError>>()?;
        Ok(Tensor::f_stack(&rows, 0)?)
    })?;
    let all = strategy.all_gather(&sums)?.f_to_device(tch::Device::Cpu)?;
    let world = all.size()[0];
    let values = Vec::<f64>::try_from(all.f_reshape([-1])?)?;
    let n = params.len();
    for (i, (name, _)) in params.iter().enumerate() {
        let of = |rank: usize| (values[(rank * n + i) * 2], values[(rank * n + i) * 2 + 1]);
        let first = of(0);
        for rank in 1..world as usize {
            let other = of(rank);
            // Bitwise: NaN on both sides is a difference too (a replica check must not pass it).
            if other.0.to_bits() != first.0.to_bits() || other.1.to_bits() != first.1.to_bits() {
                return Err(TrainerError::Config {
                    source_name: "trainer.check_replicas_every".into(),
                    message: format!(
                        "after step {step} the replicas differ: parameter `{name}` has sum {} and \
                         sum of squares {} on rank 0, {} and {} on rank {rank}",
                        first.0, first.1, other.0, other.1
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod replica_tests {
    use super::*;

    /// Two "ranks": this process's values, and a copy whose `b` is changed.
    #[derive(Debug)]
    struct Drifted;

    impl Strategy for Drifted {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
            Ok(t * 2)
        }
        fn reduce_gradients(&self, _params: &[(String, Tensor)]) -> Result<(), TrainerError> {
            Ok(())
        }
        fn all_gather(&self, t: &Tensor) -> Result<Tensor, TrainerError> {
            let other = t.copy();
            let _ = other.get(1).get(0).fill_(123.0);
            Ok(Tensor::stack(&[t.shallow_clone(), other], 0))
        }
    }

    #[test]
    fn the_first_parameter_that_differs_is_named() {
        let params = vec![
            ("a".to_string(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("b".to_string(), Tensor::from_slice(&[3.0f32])),
        ];
        let err = check_replicas(&Drifted, &params, 7)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("after step 7") && err.contains("`b`") && err.contains("rank 1"),
            "{err}"
        );
        // Identical replicas pass.
        assert!(check_replicas(&SingleProcess, &params, 7).is_ok());
    }
}
