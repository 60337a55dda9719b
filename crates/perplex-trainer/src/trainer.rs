//! The training loop.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use perplex_data::{BpttBatches, DataSource, LmData};
use perplex_losses::{metrics::nll_sum, Loss, LossInput};
use perplex_model::LanguageModel;
use perplex_optim::{clip_grad_norm, NamedParams, Optimizer};

use crate::config::{RunConfig, TrainerConfig};
use crate::device::parse_device;
use crate::run_dir::{self, files};
use crate::TrainerError;

/// Loss and perplexity of a model on one split.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvalStats {
    /// Mean negative log-likelihood, nats per token (per character at char level).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// `loss / ln 2`: bits per token (bits per character at char level).
    pub bits: f64,
    /// Tokens scored.
    pub tokens: u64,
}

impl EvalStats {
    fn new(sum: f64, tokens: u64) -> Self {
        let loss = if tokens > 0 { sum / tokens as f64 } else { 0.0 };
        Self {
            loss,
            perplexity: loss.exp(),
            bits: loss / std::f64::consts::LN_2,
            tokens,
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    /// Epoch, from 1.
    pub epoch: u64,
    /// Optimiser steps taken so far in the run.
    pub step: u64,
    /// Mean of the training loss over the epoch's steps (the configured objective).
    pub train_loss: f64,
    /// Validation NLL and perplexity.
    pub valid: EvalStats,
    /// Training throughput, target tokens per second of training time (evaluation excluded).
    pub tokens_per_sec: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Seconds spent training in this epoch.
    pub train_seconds: f64,
    /// Seconds spent on validation.
    pub eval_seconds: f64,
}

/// What a whole run did.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// One entry per completed epoch.
    pub epochs: Vec<EpochStats>,
    /// Test-split metrics with the final weights, when the corpus has a test split.
    pub test: Option<EvalStats>,
    /// Where the run's files are.
    pub run_dir: Option<PathBuf>,
}

/// A trainer composed from a data source, a model, a loss and an optimiser.
///
/// It names none of them concretely: any [`DataSource`], [`LanguageModel`], [`Loss`] and
/// [`Optimizer`] will do.
pub struct Trainer {
    data: Box<dyn DataSource>,
    vs: nn::VarStore,
    model: Box<dyn LanguageModel>,
    loss: Box<dyn Loss>,
    optimizer: Box<dyn Optimizer>,
    config: TrainerConfig,
    device: Device,
    run_dir: Option<PathBuf>,
    step: u64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("loss", &self.loss)
            .field("optimizer", &self.optimizer)
            .field("device", &self.device)
            .finish()
    }
}

/// The model's trainable variables by name, sorted (the order optimiser state is saved in).
pub fn named_trainable(vs: &nn::VarStore) -> NamedParams {
    let mut v: NamedParams = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Trainer {
    /// Composes a trainer from its parts. `vs` must hold the model's variables and `optimizer`
    /// must have been built over them.
    pub fn new(
        data: Box<dyn DataSource>,
        vs: nn::VarStore,
        model: Box<dyn LanguageModel>,
        loss: Box<dyn Loss>,
        optimizer: Box<dyn Optimizer>,
        config: TrainerConfig,
    ) -> Self {
        Self {
            device: vs.device(),
            data,
            vs,
            model,
            loss,
            optimizer,
            config,
            run_dir: None,
            step: 0,
        }
    }

    /// Builds everything a run config describes: applies `threads` and `seed`, picks the device,
    /// loads the data, creates the model and the optimiser. Call [`Trainer::fit`] next.
    ///
    /// # Errors
    /// Any [`TrainerError`]: bad device, data, model or optimiser settings.
    pub fn from_config(config: RunConfig) -> Result<Self, TrainerError> {
        let tc = config.trainer.clone();
        if tc.threads > 0 {
            tch::set_num_threads(tc.threads as i32);
        }
        let device = parse_device(&tc.device)?;
        tracing::info!(
            device = ?device,
            threads = tch::get_num_threads(),
            cuda_available = tch::Cuda::is_available(),
            "device chosen"
        );
        tch::manual_seed(tc.seed);
        let data = LmData::load(&config.data)?;
        tracing::info!(
            vocab = data.vocab.len(),
            tokenizer = ?data.tokenizer,
            train_tokens = data.train.size1()?,
            valid_tokens = data.valid.size1()?,
            test_tokens = data.test.as_ref().map(|t| t.size()[0]),
            valid_unk_rate = format!("{:.4}", data.valid_unk_rate),
            "data loaded"
        );
        let vs = nn::VarStore::new(device);
        let model = config.model.build(&vs.root(), data.vocab.len() as i64)?;
        let params = named_trainable(&vs);
        let n_params: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
        tracing::info!(parameters = n_params, model = ?config.model, loss = ?config.loss, "model built");
        let optimizer = config.optim.build(params)?;
        let mut trainer = Self::new(Box::new(data), vs, model, config.loss, optimizer, tc);
        let dir = run_dir::run_path(&trainer.config.run_dir, trainer.config.run_name.as_deref());
        std::fs::create_dir_all(&dir).map_err(|e| TrainerError::io(&dir, e))?;
        let toml = RunConfig {
            data: config.data,
            model: config.model,
            loss: serde_roundtrip_loss(trainer.loss.as_ref())?,
            optim: config.optim,
            trainer: trainer.config.clone(),
        }
        .to_toml()?;
        run_dir::write_atomically(&dir.join(files::CONFIG), toml.as_bytes())?;
        trainer
            .data
            .vocab()
            .save(&dir.join(files::VOCAB))
            .map_err(TrainerError::Data)?;
        trainer.run_dir = Some(dir);
        Ok(trainer)
    }

    /// Writes the run's files (weights, metrics) under `dir`.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// The model's variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The model.
    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    /// The device everything runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Optimiser steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Trains for `epochs` (or until `max_steps`), validating after every epoch, then scores the
    /// test split if there is one. Writes `model.safetensors` and `metrics.jsonl` into the run
    /// directory after each epoch.
    ///
    /// # Errors
    /// [`TrainerError::NonFinite`] when the loss becomes NaN or infinite (the weights of the last
    /// completed epoch stay on disk), and any error of the parts.
    pub fn fit(&mut self) -> Result<FitSummary, TrainerError> {
        let train = self.data.train_batches(self.device)?;
        let valid = self.data.valid_batches(self.device)?;
        tracing::info!(
            steps_per_epoch = train.len(),
            tokens_per_step = train.batch_size() as usize * self.seq_len(&train),
            epochs = self.config.epochs,
            "training"
        );
        let mut epochs = Vec::new();
        for epoch in 1..=self.config.epochs {
            let (train_loss, train_seconds, tokens) = self.train_epoch(epoch, &train)?;
            let t = Instant::now();
            let valid_stats = self.evaluate(&valid)?;
            let stats = EpochStats {
                epoch,
                step: self.step,
                train_loss,
                valid: valid_stats,
                tokens_per_sec: tokens as f64 / train_seconds.max(1e-9),
                lr: self.optimizer.lr(),
                train_seconds,
                eval_seconds: t.elapsed().as_secs_f64(),
            };
            tracing::info!(
                epoch,
                step = self.step,
                train_loss = format!("{:.4}", stats.train_loss),
                valid_loss = format!("{:.4}", stats.valid.loss),
                valid_ppl = format!("{:.2}", stats.valid.perplexity),
                tokens_per_sec = format!("{:.0}", stats.tokens_per_sec),
                lr = stats.lr,
                train_s = format!("{:.1}", stats.train_seconds),
                eval_s = format!("{:.1}", stats.eval_seconds),
                "epoch done"
            );
            self.write_epoch(&stats)?;
            epochs.push(stats);
            if self.max_steps_reached() {
                break;
            }
        }
        let test = match self.data.test_batches(self.device) {
            Some(batches) => {
                let s = self.evaluate(&batches?)?;
                tracing::info!(
                    test_loss = format!("{:.4}", s.loss),
                    test_ppl = format!("{:.2}", s.perplexity),
                    "test"
                );
                if let Some(dir) = &self.run_dir {
                    run_dir::append_metrics(
                        &dir.join(files::METRICS),
                        &serde_json::json!({"split": "test", "step": self.step, "test": s}),
                    )?;
                }
                Some(s)
            }
            None => None,
        };
        Ok(FitSummary {
            epochs,
            test,
            run_dir: self.run_dir.clone(),
        })
    }

    fn seq_len(&self, b: &BpttBatches) -> usize {
        b.get(0).map(|w| w.inputs.size()[1] as usize).unwrap_or(0)
    }

    fn max_steps_reached(&self) -> bool {
        self.config.max_steps > 0 && self.step >= self.config.max_steps
    }

    fn write_epoch(&self, stats: &EpochStats) -> Result<(), TrainerError> {
        if let Some(dir) = &self.run_dir {
            run_dir::save_weights(&self.vs, &dir.join(files::WEIGHTS))?;
            run_dir::append_metrics(
                &dir.join(files::METRICS),
                &serde_json::to_value(stats).map_err(|e| TrainerError::io(dir, e))?,
            )?;
        }
        Ok(())
    }

    /// One pass over `batches`; returns (mean training loss, seconds, target tokens).
    fn train_epoch(
        &mut self,
        epoch: u64,
        batches: &BpttBatches,
    ) -> Result<(f64, f64, u64), TrainerError> {
        let start = Instant::now();
        let mut state = self.model.initial_state(batches.batch_size(), self.device);
        // Summed on the device; read only when logging, so steps need not wait for the host.
        let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
        let mut window_sum = Tensor::zeros([], (Kind::Double, self.device));
        let (mut steps, mut window_steps, mut tokens) = (0u64, 0u64, 0u64);
        let mut window_start = Instant::now();
        let check_every_step = self.device == Device::Cpu;
        for batch in batches.iter() {
            let out = self.model.forward(&batch.inputs, &state.detach(), true)?;
            let loss = {
                let input = LossInput::from_hidden(
                    &out.hidden,
                    &out.head.weight,
                    out.head.bias.as_ref(),
                    &batch.targets,
                );
                self.loss.forward(&input)?.loss
            };
            if loss.dim() != 0 {
                return Err(TrainerError::Config {
                    source_name: "[loss]".into(),
                    message:
                        "the training loss must be a scalar: set `reduction` to `mean` or `sum`"
                            .into(),
                });
            }
            self.optimizer.zero_grad();
            loss.f_backward()?;
            if self.config.clip_grad_norm > 0.0 {
                let norm = clip_grad_norm(self.optimizer.params(), self.config.clip_grad_norm)?;
                if check_every_step && !norm.double_value(&[]).is_finite() {
                    tracing::warn!(
                        step = self.step + 1,
                        "gradient norm is not finite; gradients left unclipped"
                    );
                }
            }
            self.optimizer.step()?;
            state = out.state;
            let detached = loss.detach().to_kind(Kind::Double);
            loss_sum += &detached;
            window_sum += &detached;
            steps += 1;
            window_steps += 1;
            self.step += 1;
            tokens += batch.targets.numel() as u64;
            let log_now =
                self.config.log_every > 0 && self.step.is_multiple_of(self.config.log_every);
            if check_every_step || log_now {
                let v = detached.double_value(&[]);
                if !v.is_finite() {
                    return Err(TrainerError::NonFinite {
                        step: self.step,
                        epoch,
                        value: v,
                    });
                }
            }
            if log_now {
                let secs = window_start.elapsed().as_secs_f64();
                let tok = window_steps as f64 * batch.targets.numel() as f64;
                tracing::info!(
                    epoch,
                    step = self.step,
                    loss = format!("{:.4}", window_sum.double_value(&[]) / window_steps as f64),
                    tokens_per_sec = format!("{:.0}", tok / secs.max(1e-9)),
                    lr = self.optimizer.lr(),
                    "train"
                );
                window_sum = Tensor::zeros([], (Kind::Double, self.device));
                window_steps = 0;
                window_start = Instant::now();
            }
            if self.max_steps_reached() {
                break;
            }
        }
        let mean = loss_sum.double_value(&[]) / steps.max(1) as f64;
        if !mean.is_finite() {
            return Err(TrainerError::NonFinite {
                step: self.step,
                epoch,
                value: mean,
            });
        }
        Ok((mean, start.elapsed().as_secs_f64(), tokens))
    }

    /// Mean NLL (nats per token) and perplexity of the model on `batches`, without gradients,
    /// carrying the hidden state across windows.
    ///
    /// # Errors
    /// Model and loss errors.
    pub fn evaluate(&self, batches: &BpttBatches) -> Result<EvalStats, TrainerError> {
        evaluate(self.model.as_ref(), batches, self.device)
    }
}

/// Mean NLL and perplexity of `model` on `batches` (no gradients, state carried across windows).
///
/// # Errors
/// Model and loss errors.
pub fn evaluate(
    model: &dyn LanguageModel,
    batches: &BpttBatches,
    device: Device,
) -> Result<EvalStats, TrainerError> {
    tch::no_grad(|| {
        let mut state = model.initial_state(batches.batch_size(), device);
        let mut sum = Tensor::zeros([], (Kind::Double, device));
        let mut count = Tensor::zeros([], (Kind::Double, device));
        for batch in batches.iter() {
            let out = model.forward(&batch.inputs, &state, false)?;
            let input = LossInput::from_hidden(
                &out.hidden,
                &out.head.weight,
                out.head.bias.as_ref(),
                &batch.targets,
            );
            let (s, c) = nll_sum(&input, -100)?;
            sum += s;
            count += c;
            state = out.state;
        }
        Ok(EvalStats::new(
            sum.double_value(&[]),
            count.double_value(&[]) as u64,
        ))
    })
}

/// A loss is serialised for the run's `config.toml` through its typetag form.
fn serde_roundtrip_loss(loss: &dyn Loss) -> Result<Box<dyn Loss>, TrainerError> {
    let v = serde_json::to_value(loss).map_err(|e| TrainerError::Config {
        source_name: "[loss]".into(),
        message: e.to_string(),
    })?;
    serde_json::from_value(v).map_err(|e| TrainerError::Config {
        source_name: "[loss]".into(),
        message: e.to_string(),
    })
}

/// Loads the weights saved in a run directory into `vs` (names must match).
///
/// # Errors
/// [`TrainerError::Io`] naming the file.
pub fn load_weights(vs: &mut nn::VarStore, run_dir: &Path) -> Result<(), TrainerError> {
    let path = run_dir.join(files::WEIGHTS);
    vs.load(&path).map_err(|e| TrainerError::io(&path, e))
}
