//! One optimiser step: micro-batches, autocast, the loss's normaliser, the strategy's
//! reductions, the non-finite checks, clipping and the update. Used by `fit`, by `lr-find` and
//! by the benchmarks alike.
use tch::{Device, Kind, Tensor};

use perplex_data::Batch;
use perplex_losses::LossInput;
use perplex_model::HiddenState;
use perplex_optim::{clip_grad_norm, clip_grad_value, first_non_finite_grad, grad_norm};

use super::Trainer;
use crate::config::OnNonFinite;
use crate::fault::NanTarget;
use crate::TrainerError;

/// What each rank adds to the dropout seed, per rank: odd, and in the low 32 bits that the CPU
/// generator keeps (`0x9E37_79B9`, 2^32 divided by the golden ratio).
const RANK_SEED_STRIDE: i64 = 0x9E37_79B9;

impl Trainer {
    /// One optimiser step of the trainer's own step (accumulation, precision, clipping,
    /// non-finite handling) at learning rate `lr`, whatever the schedule says, carrying `state`.
    /// Returns the step's loss and whether the update was skipped.
    pub(crate) fn step_at_lr(
        &mut self,
        batch: &Batch,
        state: &mut HiddenState,
        lr: f64,
    ) -> Result<(Tensor, bool), TrainerError> {
        let out = self.train_step(batch, state, None, self.pos.epoch, Some(lr));
        self.pos.step += 1;
        out
    }

    /// One optimiser step on `batch` (split into `accumulate` micro-batches); updates `state`.
    /// The learning rate is `lr` when given, else the schedule's for this step (else the
    /// optimiser's own). Returns the step's loss (detached) and whether the update was skipped.
    pub(super) fn train_step(
        &mut self,
        batch: &Batch,
        state: &mut HiddenState,
        teacher_state: Option<&mut HiddenState>,
        epoch: u64,
        lr: Option<f64>,
    ) -> Result<(Tensor, bool), TrainerError> {
        self.last_grad_norm = f64::NAN;
        // Dropout masks depend only on (seed, step, rank): a resumed run draws the same ones, and
        // ranks draw different ones for their different rows (pitfall BB2-17). libtorch's CPU
        // generator (mt19937) keeps only the low 32 bits of a seed, so the rank must change
        // those: rank r adds r times an odd constant (2^32 / golden ratio), which gives distinct
        // ranks distinct seeds at every step, and rank 0 the seed of a single process.
        let rank = (self.strategy.rank() as i64).wrapping_mul(RANK_SEED_STRIDE);
        tch::manual_seed(
            self.config
                .seed
                .wrapping_add(self.pos.step as i64)
                .wrapping_add(rank),
        );
        let k = self.config.accumulate as i64;
        let inputs = batch.inputs.chunk(k, 0);
        let targets = batch.targets.chunk(k, 0);
        let states = state.chunk(k);
        let teacher_states = teacher_state.as_ref().map(|s| s.chunk(k));
        // Every micro-batch's `mean` divides by the whole batch's denominator, which the loss
        // reports (counted tokens, or the sum of the targets' class weights; one per term of a
        // composite loss), so the summed gradient equals the full batch's (never an average of
        // micro-batch means). Made on the device: no synchronisation per step.
        let distributed = self.strategy.world_size() > 1;
        let normalizer = (k > 1 || distributed)
            .then(|| {
                let local = self.loss.normalizer(&batch.targets)?;
                self.strategy.all_reduce_sum(&local)
            })
            .transpose()?;
        self.optimizer.zero_grad();
        let mut total: Option<Tensor> = None;
        let mut metrics: Vec<(String, Tensor)> = Vec::new();
        let mut new_states = Vec::with_capacity(k as usize);
        let mut new_teacher_states = Vec::new();
        for i in 0..k as usize {
            // Forward and loss run under autocast together (as in PyTorch), so the loss's
            // projection sees one dtype; every loss computes its value in float32 (float64 for
            // float64 parameters).
            let step = || -> Result<_, TrainerError> {
                let out = self.model.forward(&inputs[i], &states[i].detach(), true)?;
                let teacher = match (&self.teacher, &teacher_states) {
                    (Some(t), Some(ts)) => Some(t.logits(&inputs[i], &ts[i])?),
                    _ => None,
                };
                let mut input = LossInput::from_hidden(
                    &out.hidden,
                    &out.head.weight,
                    out.head.bias.as_ref(),
                    &targets[i],
                );
                if let Some(n) = &normalizer {
                    input = input.with_normalizer(n);
                }
                if let Some((logits, _)) = &teacher {
                    input = input.with_teacher_logits(logits);
                }
                let out_loss = self.loss.forward(&input)?;
                Ok((out_loss, out.state, teacher.map(|(_, s)| s)))
            };
            let (out_loss, out_state, teacher_out) =
                self.config.precision.scope(self.device, step)?;
            let loss = out_loss.loss;
            // The loss's own metrics (each weighted_sum term), summed over micro-batches like the
            // loss: with the global normaliser their sum is the whole batch's value.
            for (name, value) in out_loss.metrics {
                let value = value.f_detach()?.f_to_kind(Kind::Double)?;
                match metrics.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, sum)) => *sum = sum.f_add(&value)?,
                    None => metrics.push((name, value)),
                }
            }
            if let Some(s) = teacher_out {
                new_teacher_states.push(s);
            }
            if loss.dim() != 0 {
                return Err(TrainerError::Config {
                    source_name: "[loss]".into(),
                    message:
                        "the training loss must be a scalar: set `reduction` to `mean` or `sum`"
                            .into(),
                });
            }
            loss.f_backward()?;
            // float32 (float64 under `precision = "f64"`: the loss keeps every digit).
            let loss = loss
                .f_detach()?
                .f_to_kind(self.config.precision.parameter_kind())?;
            total = Some(match total {
                Some(t) => t + loss,
                None => loss,
            });
            new_states.push(out_state);
        }
        let mut total = total.expect("accumulate >= 1 is checked when the trainer is built");
        if let Some(fault) = self.nan_injection {
            if fault.fires(self.pos.step + 1, self.strategy.rank()) {
                total = self.inject_nan(fault.target, total)?;
            }
        }
        let local_total = total.shallow_clone();
        if distributed {
            // Each rank's loss is its share of the global mean: their sum is the step's loss,
            // and a non-finite value on any rank makes every rank skip (or stop) together.
            self.strategy.reduce_gradients(self.optimizer.params())?;
            total = self.strategy.all_reduce_sum(&total)?;
            for (_, m) in &mut metrics {
                *m = self.strategy.all_reduce_sum(m)?;
            }
        }
        self.last_metrics = metrics;
        *state = HiddenState::cat(&new_states);
        if let Some(ts) = teacher_state {
            *ts = HiddenState::cat(&new_teacher_states);
        }
        // On the CPU reading the loss costs nothing (the step has finished); on CUDA it is read
        // only when skipping needs it, so steps do not wait for the host.
        let check = self.device == Device::Cpu || self.config.on_non_finite == OnNonFinite::Skip;
        if check {
            let v = total.double_value(&[]);
            if !v.is_finite() {
                match self.config.on_non_finite {
                    OnNonFinite::Stop => {
                        return Err(TrainerError::NonFinite {
                            step: self.pos.step + 1,
                            epoch,
                            value: v,
                            ranks: self.non_finite_ranks(&local_total)?,
                        })
                    }
                    OnNonFinite::Skip => {
                        tracing::warn!(
                            step = self.pos.step + 1,
                            value = v,
                            rank = self.strategy.rank(),
                            from = self.non_finite_ranks(&local_total)?.trim_start(),
                            "non-finite loss: batch skipped"
                        );
                        // The next step starts with `zero_grad`.
                        return Ok((total, true));
                    }
                }
            }
        }
        // The gradient norm before any clipping: it must be finite for the step to be taken
        // (`on_non_finite` governs gradients as well as the loss).
        let clip_value = self.config.clip_grad_value > 0.0;
        let clip_norm = self.config.clip_grad_norm > 0.0;
        let norm = if clip_norm && !clip_value {
            clip_grad_norm(self.optimizer.params(), self.config.clip_grad_norm)?
        } else {
            grad_norm(self.optimizer.params())?
        };
        let norm = norm.f_double_value(&[])?;
        self.last_grad_norm = norm;
        if !norm.is_finite() {
            let parameter = first_non_finite_grad(self.optimizer.params())?
                .unwrap_or_else(|| "(unknown)".into());
            match self.config.on_non_finite {
                OnNonFinite::Stop => {
                    return Err(TrainerError::NonFiniteGradient {
                        step: self.pos.step + 1,
                        epoch,
                        parameter,
                        norm,
                    })
                }
                OnNonFinite::Skip => {
                    tracing::warn!(
                        step = self.pos.step + 1,
                        rank = self.strategy.rank(),
                        parameter,
                        grad_norm = norm,
                        "non-finite gradient: update skipped (parameters and optimiser state unchanged)"
                    );
                    return Ok((total, true));
                }
            }
        }
        if clip_value {
            clip_grad_value(self.optimizer.params(), self.config.clip_grad_value)?;
            if clip_norm {
                let _after_value_clip =
                    clip_grad_norm(self.optimizer.params(), self.config.clip_grad_norm)?;
            }
        }
        match (lr, &self.schedule) {
            (Some(lr), _) => self.optimizer.set_lr(lr),
            (None, Some(s)) => self.optimizer.set_lr(s.lr(self.pos.step as i64)),
            (None, None) => {}
        }
        self.optimizer.step()?;
        Ok((total, false))
    }
}

impl Trainer {
    /// The test hook's NaN ([`crate::fault`]): `total` becomes NaN, or the first trainable
    /// parameter's gradient does (and `total` is returned as it was).
    fn inject_nan(&self, target: NanTarget, total: Tensor) -> Result<Tensor, TrainerError> {
        tracing::warn!(
            step = self.pos.step + 1,
            rank = self.strategy.rank(),
            ?target,
            "{}: injecting a NaN",
            crate::fault::NAN_AT_STEP_ENV
        );
        match target {
            NanTarget::Loss => Ok(total.f_mul_scalar(f64::NAN)?),
            NanTarget::Grad => {
                if let Some((_, p)) = self.optimizer.params().first() {
                    let grad = p.grad();
                    if grad.defined() {
                        let _ = tch::no_grad(|| grad.shallow_clone().f_fill_(f64::NAN))?;
                    }
                }
                Ok(total)
            }
        }
    }

    /// In a data-parallel run, which processes' own loss (`local`, before the sum over
    /// processes) is non-finite, as `" on rank 1 of 2"`; empty in one process. Every process
    /// calls it together (it gathers), which holds since they all read the same summed loss.
    fn non_finite_ranks(&self, local: &Tensor) -> Result<String, TrainerError> {
        let world_size = self.strategy.world_size();
        if world_size == 1 {
            return Ok(String::new());
        }
        let all = self.strategy.all_gather(&local.f_to_kind(Kind::Double)?)?;
        let values = Vec::<f64>::try_from(all.f_flatten(0, -1)?)?;
        let ranks: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_finite())
            .map(|(r, _)| r.to_string())
            .collect();
        Ok(match ranks.len() {
            0 => format!(
                " (every rank's own loss is finite; their sum over {world_size} ranks is not)"
            ),
            1 => format!(" on rank {} of {world_size}", ranks[0]),
            _ => format!(" on ranks {} of {world_size}", ranks.join(", ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `step_at_lr` means what it says when a schedule is set (issue 24, fault 4: the schedule's
    /// rate replaced it, and lr-find worked only because it clears the schedule).
    #[test]
    fn step_at_lr_uses_its_rate_even_with_a_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("text.txt");
        std::fs::write(
            &text,
            "the quick brown fox jumps over the lazy dog\n".repeat(200),
        )
        .unwrap();
        let toml = format!(
            "[data]\npath = {:?}\ntokenizer = \"char\"\nbatch_size = 4\nseq_len = 8\n\
             [model]\ntype = \"gru\"\nembedding_dim = 8\nhidden_size = 8\n\
             [schedule]\ntype = \"warmup_cosine\"\nwarmup_steps = 10\ntotal_steps = 100\n\
             [trainer]\nprogress = false\n",
            text.display().to_string()
        );
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let config = crate::RunConfig::load(Some(&file), &[]).unwrap();
        let mut trainer = Trainer::in_memory(config).unwrap();
        let batches = trainer.data_train_batches().unwrap();
        let batch = batches
            .get(perplex_data::Cursor { epoch: 1, index: 0 })
            .unwrap()
            .unwrap();
        let mut state = trainer.model().initial_state(4, trainer.device());
        let (_loss, skipped) = trainer.step_at_lr(&batch, &mut state, 0.123).unwrap();
        assert!(!skipped);
        assert_eq!(trainer.optimizer.lr(), 0.123);
    }
}
