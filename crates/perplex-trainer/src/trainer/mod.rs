//! The training engine: a [`Trainer`] and its flat loop of steps (`fit`); the step itself is in
//! `step.rs`, resuming in `resume.rs`, evaluation in `evaluate.rs`.
mod evaluate;
mod resume;
mod step;

pub use evaluate::{evaluate, evaluate_sums};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use perplex_data::{Batch, Batches, Cursor, DataSource};
use perplex_losses::Loss;
use perplex_model::{BuildContext, HiddenState, LanguageModel};
use perplex_optim::{LrSchedule, NamedParams, Optimizer};

use crate::callbacks::{
    Action, Callback, CheckpointEvent, EarlyStopping, EvalEvent, MetricsLogger, ProgressBar,
    StepEvent,
};
use crate::checkpoint::{self, Manifest};
use crate::config::{OnNonFinite, Precision, RunConfig, TrainerConfig};
use crate::device::parse_device_for_local_rank;
use crate::run_dir::{self, files};
use crate::teacher::Teacher;
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
    /// Stats from a summed NLL (nats) over `tokens` tokens.
    pub fn new(sum: f64, tokens: u64) -> Self {
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
    /// False when the run stopped (`max_steps`, early stopping) before the epoch's end.
    pub complete: bool,
    /// Mean of the training loss over the epoch's steps (the configured objective).
    pub train_loss: f64,
    /// Validation NLL and perplexity (absent with `trainer.eval = false`).
    pub valid: Option<EvalStats>,
    /// Training throughput, target tokens per second of training time (evaluation excluded).
    pub tokens_per_sec: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Seconds spent training in this epoch.
    pub train_seconds: f64,
}

/// What a whole run did.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// One entry per completed epoch.
    pub epochs: Vec<EpochStats>,
    /// Best validation loss reached (nats per token).
    pub best_valid_loss: Option<f64>,
    /// Test-split metrics with the final weights, when the corpus has a test split.
    pub test: Option<EvalStats>,
    /// Optimiser steps taken in total.
    pub steps: u64,
    /// Steps skipped for a non-finite loss or gradient (`on_non_finite = "skip"`).
    pub skipped_steps: u64,
    /// Why training stopped early, if it did.
    pub stopped_early: Option<String>,
    /// The signal (SIGINT, SIGTERM) that stopped training, if one did.
    pub interrupted: Option<crate::interrupt::Signal>,
    /// Where the run's files are.
    pub run_dir: Option<PathBuf>,
}

/// A trainer composed from a data source, a model, a loss and an optimiser.
///
/// It names none of them concretely: any [`DataSource`], [`LanguageModel`], [`Loss`] and
/// [`Optimizer`] will do. Build one from a [`RunConfig`] with [`Trainer::from_config`] or from
/// parts with [`Trainer::new`].
pub struct Trainer {
    data: Box<dyn DataSource>,
    vs: nn::VarStore,
    model: Box<dyn LanguageModel>,
    loss: Box<dyn Loss>,
    optimizer: Box<dyn Optimizer>,
    schedule: Option<Box<dyn LrSchedule>>,
    teacher: Option<Teacher>,
    config: TrainerConfig,
    device: Device,
    run_dir: Option<PathBuf>,
    callbacks: Vec<Box<dyn Callback>>,
    pos: Manifest,
    resume_state: Option<HiddenState>,
    started: Instant,
    first_step_seconds: Option<f64>,
    last_valid: Option<EvalStats>,
    /// Global gradient norm of the last step, before clipping.
    last_grad_norm: f64,
    /// The resolved config, as `config.toml` holds it.
    config_toml: String,
    /// How reductions across processes are made ([`crate::strategy`]).
    strategy: Box<dyn crate::strategy::Strategy>,
    /// The loss's metrics of the last step (detached float64 scalars on the device).
    last_metrics: Vec<(String, Tensor)>,
    /// Set by SIGINT/SIGTERM (see [`crate::interrupt`]): stop after the current step.
    interrupt: Option<crate::interrupt::Interrupt>,
    /// In a data-parallel run, the signal that some process received, as all processes agreed
    /// at the end of a step (see [`Trainer::agree_to_stop`]).
    agreed_signal: Option<crate::interrupt::Signal>,
    /// The test hook's NaN ([`crate::fault`]), read when `fit` starts.
    nan_injection: Option<crate::fault::NanInjection>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("loss", &self.loss)
            .field("optimizer", &self.optimizer)
            .field("device", &self.device)
            .field("step", &self.pos.step)
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
    /// Composes a trainer from its parts. `vs` must hold the model's variables, in
    /// `config.precision`'s dtype ([`Precision::convert`]), and `optimizer` must have been built
    /// over them. No files are written unless [`Trainer::with_run_dir`] is
    /// called; no callbacks run unless added.
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
            schedule: None,
            teacher: None,
            config,
            run_dir: None,
            callbacks: Vec::new(),
            pos: Manifest {
                format: 1,
                epoch: 1,
                world_size: 1,
                schedule_state: serde_json::Value::Null,
                ..Manifest::default()
            },
            resume_state: None,
            started: Instant::now(),
            first_step_seconds: None,
            last_valid: None,
            last_grad_norm: 0.0,
            config_toml: String::new(),
            strategy: Box::new(crate::strategy::SingleProcess),
            last_metrics: Vec::new(),
            interrupt: None,
            agreed_signal: None,
            nan_injection: None,
        }
    }

    /// Builds everything a run config describes: applies `threads`, `host_allocator` and `seed`,
    /// picks the device, loads the data, creates the model, optimiser, schedule and teacher,
    /// creates the run directory (`config.toml`, `vocab.json`) and installs the standard
    /// callbacks (metrics, early stopping, progress bar). Call [`Trainer::fit`] next.
    ///
    /// # Errors
    /// Any [`TrainerError`]: bad device, data, model, optimiser or teacher settings.
    pub fn from_config(config: RunConfig) -> Result<Self, TrainerError> {
        Self::from_config_with_strategy(config, Box::new(crate::strategy::SingleProcess))
    }

    /// [`Trainer::from_config`] as one process of `strategy`: only the primary process checks
    /// and creates the run directory (the others write nothing; see [`Trainer::with_strategy`]).
    ///
    /// # Errors
    /// As [`Trainer::from_config`].
    pub fn from_config_with_strategy(
        mut config: RunConfig,
        strategy: Box<dyn crate::strategy::Strategy>,
    ) -> Result<Self, TrainerError> {
        if let Ok(cwd) = std::env::current_dir() {
            config.absolutize_paths(&cwd);
        }
        // Before any file: a world size that cannot share the batches would otherwise stop
        // the run after rank 0 created its directory.
        config.check_world_size(strategy.world_size())?;
        let dir = run_dir::run_path(&config.trainer.run_dir, config.trainer.run_name.as_deref());
        if !strategy.is_primary() {
            let local_rank = strategy.local_rank();
            return Ok(Self::build(config, dir, None, local_rank)?.with_strategy(strategy));
        }
        if dir.join(files::CONFIG).exists() {
            // Never train a new run into an old one's directory (mixed checkpoints and metrics).
            let message = if crate::checkpoint::list(&dir).is_empty() {
                format!(
                    "{}: {}",
                    dir.display(),
                    crate::checkpoint::no_checkpoint_yet(&dir)
                )
            } else {
                format!(
                    "{} already holds a run: continue it with `perplex train --resume {}`, or \
                     choose another trainer.run_name",
                    dir.display(),
                    dir.display()
                )
            };
            return Err(TrainerError::Config {
                source_name: "trainer.run_name".into(),
                message,
            });
        }
        let trainer = Self::build(config, dir, None, strategy.local_rank())?;
        trainer.write_run_files(true)?;
        Ok(trainer.with_strategy(strategy))
    }

    /// Whether training has nothing left to do: all epochs done or `max_steps` reached.
    fn finished(&self) -> bool {
        self.pos.epoch > self.config.epochs || self.max_steps_reached()
    }

    /// A trainer that writes no file and runs no callback, for tools that drive single steps
    /// themselves ([`crate::lr_find`]).
    pub(crate) fn in_memory(config: RunConfig) -> Result<Self, TrainerError> {
        let mut trainer = Self::build(config, PathBuf::new(), None, 0)?;
        trainer.run_dir = None;
        trainer.callbacks.clear();
        Ok(trainer)
    }

    /// The training windows on the trainer's device.
    pub(crate) fn data_train_batches(&self) -> Result<Box<dyn Batches>, TrainerError> {
        Ok(self
            .data
            .train_batches(self.device, self.config.seed as u64)?)
    }

    /// Writes `config.toml` (and, for a new run, `vocab.json`) into the run directory.
    fn write_run_files(&self, new_run: bool) -> Result<(), TrainerError> {
        let Some(dir) = &self.run_dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
        run_dir::write_atomically(&dir.join(files::CONFIG), self.config_toml.as_bytes())?;
        if new_run {
            self.data.vocab().save(&dir.join(files::VOCAB))?;
        }
        Ok(())
    }

    /// Builds everything but writes nothing: the caller writes the run files once the trainer
    /// is complete (a new run) or its checkpoint has loaded (a resume).
    fn build(
        mut config: RunConfig,
        dir: PathBuf,
        vocab: Option<perplex_data::Vocabulary>,
        local_rank: usize,
    ) -> Result<Self, TrainerError> {
        // A resume reads the run's own weights, not `init_from`'s.
        let new_run = vocab.is_none();
        config.resolve_pretrained(new_run)?;
        let tc = config.trainer.clone();
        if tc.threads > 0 {
            tch::set_num_threads(tc.threads as i32);
        }
        let device = parse_device_for_local_rank(&tc.device, local_rank)?;
        let retained = tc.host_allocator.apply();
        tracing::info!(
            device = ?device,
            threads = tch::get_num_threads(),
            cuda_available = tch::Cuda::is_available(),
            precision = %tc.precision,
            host_allocator = %tc.host_allocator,
            host_allocator_applied = retained,
            "device chosen"
        );
        if tc.accumulate == 0 || !(config.data.batch_size as u64).is_multiple_of(tc.accumulate) {
            return Err(TrainerError::Config {
                source_name: "trainer.accumulate".into(),
                message: format!(
                    "accumulate = {} must be positive and divide data.batch_size = {}",
                    tc.accumulate, config.data.batch_size
                ),
            });
        }
        tch::manual_seed(tc.seed);
        let data = perplex_data::open_source(&config.data, vocab)?;
        let [train_tokens, valid_tokens, test_tokens] = data.split_tokens();
        tracing::info!(
            vocab = data.vocab().len(),
            tokenizer = ?data.tokenizer(),
            train_tokens,
            valid_tokens,
            test_tokens,
            prepared = config.data.prepared.as_ref().map(|p| p.display().to_string()),
            "data loaded"
        );
        let mut vs = nn::VarStore::new(device);
        let context = BuildContext::new(data.vocab().len() as i64)
            .with_seq_len(config.data.seq_len as i64)
            .with_device(device);
        let model = config.model.build(&vs.root(), &context)?;
        if let (true, Some(dir)) = (new_run, config.model.init_from()) {
            let format = config
                .model
                .hf_format()
                .ok_or_else(|| TrainerError::Config {
                    source_name: "model.init_from".into(),
                    message: "this model type cannot read a transformers directory".into(),
                })?;
            let report = perplex_model::hf::load_weights(&vs, format.as_ref(), dir)?;
            tracing::info!(
                init_from = %dir.display(),
                architecture = format.architecture(),
                tensors = report.tensors,
                parameters = report.parameters,
                "pretrained weights loaded"
            );
        }
        // Before the optimiser is built: its state is made like the parameters.
        tc.precision.convert(&mut vs);
        // The loss's options, checked with the real vocabulary before any file is written.
        crate::config::check_loss(config.loss.as_ref(), data.vocab().len() as i64, false)?;
        if tc.precision == Precision::Bf16 {
            if device == Device::Cpu && !crate::precision::cpu_has_native_bf16() {
                tracing::warn!(
                    "trainer.precision = \"bf16\" on a CPU without AVX-512 BF16 or AMX: libtorch \
                     emulates bf16 matmuls here, which is many times slower than f32"
                );
            }
            tracing::info!(device = ?device, "bf16 autocast on (loss, gradients and optimiser state stay float32)");
        }
        if tc.precision == Precision::F64 {
            tracing::info!(device = ?device, "float64: parameters, gradients, optimiser state and loss");
        }
        let params = named_trainable(&vs);
        let n_params: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
        tracing::info!(parameters = n_params, model = ?config.model, loss = ?config.loss, optim = ?config.optim, "model built");
        let optimizer = config.build_optimizer(params)?;
        let schedule = config
            .schedule
            .as_ref()
            .map(|s| s.build(config.optim.lr()))
            .transpose()?;
        let teacher = tc
            .teacher
            .as_deref()
            .map(|t| Teacher::load(t, data.vocab(), device))
            .transpose()?;
        let config_toml = config.to_toml()?;
        let mut trainer = Self::new(data, vs, model, config.loss, optimizer, tc);
        trainer.schedule = schedule;
        trainer.teacher = teacher;
        trainer.config_toml = config_toml;
        trainer.run_dir = Some(dir.clone());
        trainer.add_callback(MetricsLogger::new(trainer.config.log_every, Some(dir)));
        trainer.add_callback(EarlyStopping {
            patience: trainer.config.patience,
        });
        if trainer.config.progress {
            trainer.add_callback(ProgressBar::new());
        }
        Ok(trainer)
    }

    /// Whether this process is the one that writes files and reports (rank 0, or the only one).
    pub fn is_primary(&self) -> bool {
        self.strategy.is_primary()
    }

    /// Stops training gracefully when `interrupt` fires (SIGINT/SIGTERM): the current step
    /// finishes, a checkpoint, the final weights and `summary.json` are written, and
    /// [`FitSummary::interrupted`] names the signal.
    pub fn with_interrupt(mut self, interrupt: crate::interrupt::Interrupt) -> Self {
        self.interrupt = Some(interrupt);
        self
    }

    /// Trains as one process of `strategy` (default: [`crate::strategy::SingleProcess`]). A
    /// process that is not the primary one writes no files and runs no callbacks that do.
    pub fn with_strategy(mut self, strategy: Box<dyn crate::strategy::Strategy>) -> Self {
        if !strategy.is_primary() {
            self.run_dir = None;
            self.callbacks.clear();
        }
        self.strategy = strategy;
        self
    }

    /// Writes the run's files (weights, checkpoints) under `dir`.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// Sets a learning-rate schedule (applied before every optimiser step).
    pub fn with_schedule(mut self, schedule: Box<dyn LrSchedule>) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Adds a callback; callbacks run in the order added.
    pub fn add_callback(&mut self, callback: impl Callback + 'static) {
        self.callbacks.push(Box::new(callback));
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
        self.pos.step
    }

    /// The run directory, when files are written.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_deref()
    }

    /// The signal that stops training, if one came. With several processes, the one they agreed
    /// on at the end of the last step: a signal reaches the processes at slightly different
    /// times, and they must all stop after the same step.
    fn interrupted(&self) -> Option<crate::interrupt::Signal> {
        if self.strategy.world_size() > 1 {
            return self.agreed_signal;
        }
        self.local_signal()
    }

    /// The signal this process received, if any.
    fn local_signal(&self) -> Option<crate::interrupt::Signal> {
        self.interrupt
            .as_ref()
            .and_then(crate::interrupt::Interrupt::received)
    }

    /// Makes every process take the same decision to stop: with several processes, `stop`
    /// (decided by this process's callbacks, which run on rank 0 alone) and any signal received
    /// by any process are summed over processes, so all of them stop after the same step (else
    /// the ones that go on wait in the next collective for the ones that stopped). One process:
    /// `stop` as it is.
    ///
    /// # Errors
    /// Communication errors.
    fn agree_to_stop(&mut self, stop: Option<String>) -> Result<Option<String>, TrainerError> {
        use crate::interrupt::Signal;
        if self.strategy.world_size() == 1 {
            return Ok(stop);
        }
        let signal = self.local_signal();
        let flags = [
            f64::from(u8::from(stop.is_some())),
            f64::from(u8::from(signal == Some(Signal::Int))),
            f64::from(u8::from(signal == Some(Signal::Term))),
        ];
        let summed = self
            .strategy
            .all_reduce_sum(&Tensor::from_slice(&flags).f_to(self.device)?)?;
        let summed = Vec::<f64>::try_from(summed.f_to_device(Device::Cpu)?)?;
        if self.agreed_signal.is_none() {
            self.agreed_signal = if summed[1] > 0.0 {
                Some(Signal::Int)
            } else if summed[2] > 0.0 {
                Some(Signal::Term)
            } else {
                None
            };
        }
        Ok(stop.or_else(|| {
            (summed[0] > 0.0).then(|| "stopped by rank 0 (early stopping or a callback)".into())
        }))
    }

    /// The validation at the end of a run stopped mid-epoch: updates the best validation loss
    /// (the caller writes `checkpoints/best` when it improved) and runs the evaluation callbacks
    /// (metrics files), but neither the schedule nor early stopping sees it. Returns the stats and
    /// whether they improved on the best.
    fn final_validation(
        &mut self,
        valid: Option<&dyn Batches>,
        epoch: u64,
    ) -> Result<Option<(EvalStats, bool)>, TrainerError> {
        let Some(v) = valid else { return Ok(None) };
        let t = Instant::now();
        let stats = self.evaluate(v)?;
        let improved = self.pos.best_valid_loss.is_none_or(|b| stats.loss < b);
        if improved {
            self.pos.best_valid_loss = Some(stats.loss);
        }
        self.pos.valid_loss = Some(stats.loss);
        self.last_valid = Some(stats);
        let event = EvalEvent {
            epoch,
            step: self.pos.step,
            stats,
            improved,
            evals_without_improvement: self.pos.evals_without_improvement,
            seconds: t.elapsed().as_secs_f64(),
        };
        for c in &mut self.callbacks {
            // The run is ending: a stop asked for here changes nothing.
            let _ = c.on_eval_end(&event)?;
        }
        Ok(Some((stats, improved)))
    }

    fn max_steps_reached(&self) -> bool {
        self.config.max_steps > 0 && self.pos.step >= self.config.max_steps
    }

    /// Trains for `epochs` (or until `max_steps`, or early stopping), validating after every
    /// epoch and every `eval_every` steps, checkpointing at each validation and at the end, then
    /// scores the test split with the final weights if there is one. Writes `model.safetensors`
    /// (final weights), `metrics.jsonl`/`.csv` and `summary.json` into the run directory.
    ///
    /// The loop is flat and counted in steps: each turn reads the batch at the loader's cursor
    /// (epoch, index), takes one step and runs the callbacks; an epoch's end (validation,
    /// checkpoint, epoch callbacks) happens when the loader's epoch is exhausted.
    ///
    /// # Errors
    /// [`TrainerError::NonFinite`] when the loss becomes NaN or infinite with
    /// `on_non_finite = "stop"` (the last checkpoint stays loadable), and any error of the parts.
    pub fn fit(&mut self) -> Result<FitSummary, TrainerError> {
        let mut variables: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        self.strategy.prepare(&variables)?;
        self.nan_injection = crate::fault::NanInjection::from_env()?;
        let seed = self.config.seed as u64;
        let train = self
            .strategy
            .shard(self.data.train_batches(self.device, seed)?)?;
        if !(train.batch_size() as u64).is_multiple_of(self.config.accumulate) {
            return Err(TrainerError::Config {
                source_name: "trainer.accumulate".into(),
                message: format!(
                    "accumulate = {} must divide each process's batch: data.batch_size / world \
                     size = {} rows with {} processes",
                    self.config.accumulate,
                    train.batch_size(),
                    self.strategy.world_size()
                ),
            });
        }
        let valid = if self.config.eval {
            Some(self.strategy.shard(self.data.valid_batches(self.device)?)?)
        } else {
            None
        };
        let valid = valid.as_deref();
        tracing::info!(
            steps_per_epoch = train.len(),
            tokens_per_step = train.batch_size() * train.seq_len(),
            epochs = self.config.epochs,
            accumulate = self.config.accumulate,
            start_step = self.pos.step,
            "training"
        );
        let mut epochs = Vec::new();
        let mut stop: Option<String> = None;
        let mut run: Option<EpochRun> = None;
        while stop.is_none() && !self.max_steps_reached() && self.interrupted().is_none() {
            let r = match &mut run {
                Some(r) => r,
                None if self.pos.epoch > self.config.epochs => break,
                None => run.insert(self.begin_epoch(train.as_ref())?),
            };
            let cursor = Cursor {
                epoch: r.epoch,
                index: self.pos.window,
            };
            let batch = train.get(cursor)?.ok_or_else(|| TrainerError::Config {
                source_name: "[data]".into(),
                message: format!(
                    "the training loader has no batch at {cursor:?} (it reports {} per epoch)",
                    train.len()
                ),
            })?;
            if let Some(reason) = self.step_and_report(r, &batch, train.as_ref(), valid)? {
                stop = stop.or(Some(reason));
            }
            if self.pos.window >= train.len() {
                let r = run.take().expect("an epoch is running");
                if let Some(reason) = self.end_epoch(r, valid, &mut epochs)? {
                    stop = stop.or(Some(reason));
                }
            }
        }
        if let Some(r) = run.take() {
            self.end_partial_epoch(r, valid, &mut epochs)?;
        }
        self.finish(epochs, stop)
    }

    /// Starts epoch `pos.epoch` (or continues it mid-way after a resume): the model's state for
    /// the first batch (after a resume, this process's rows of the checkpoint's state) and the
    /// epoch's counters.
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the checkpoint's state does not hold the global batch.
    fn begin_epoch(&mut self, train: &dyn Batches) -> Result<EpochRun, TrainerError> {
        let state = match self.resume_state.take() {
            Some(s) if self.pos.window > 0 && train.carries_state() => {
                self.local_rows(s, train.batch_size())?
            }
            _ => self.model.initial_state(train.batch_size(), self.device),
        };
        let teacher_state = self
            .teacher
            .as_ref()
            .map(|t| t.initial_state(train.batch_size(), self.device));
        if self.pos.window == 0 {
            self.pos.epoch_loss_sum = 0.0;
            self.pos.epoch_steps = 0;
            self.pos.epoch_tokens = 0;
            self.pos.epoch_seconds = 0.0;
        }
        Ok(EpochRun {
            epoch: self.pos.epoch,
            carries_state: train.carries_state(),
            state,
            teacher_state,
            loss_sum: Tensor::zeros([], (Kind::Double, self.device)),
            last_step_end: Instant::now(),
            just_validated: false,
        })
    }

    /// This process's rows of a checkpoint's state, which holds the global batch (dimension 1
    /// of every tensor): rows `rank · b .. (rank + 1) · b` for a local batch of `b`, the rows
    /// its loader reads. A checkpoint of a run with another world size is resharded this way.
    fn local_rows(&self, state: HiddenState, b: i64) -> Result<HiddenState, TrainerError> {
        let (rank, world_size) = (self.strategy.rank() as i64, self.strategy.world_size());
        let global = b * world_size as i64;
        let mut rows = Vec::with_capacity(state.0.len());
        for (i, t) in state.0.into_iter().enumerate() {
            if t.dim() < 2 || t.size()[1] != global {
                // `Trainer::resume` checked this against data.batch_size already.
                return Err(TrainerError::Config {
                    source_name: format!("checkpoint state.safetensors, tensor hidden.{i}"),
                    message: format!(
                        "shape {:?} does not hold the global batch of {global} rows in dimension 1",
                        t.size()
                    ),
                });
            }
            rows.push(if world_size == 1 {
                t
            } else {
                t.f_narrow(1, rank * b, b)?.f_contiguous()?
            });
        }
        Ok(HiddenState(rows))
    }

    /// One step on `batch`, then the step's callbacks and, every `eval_every` steps, a
    /// validation with a checkpoint. Returns a stop reason if a callback or a signal asked for one.
    fn step_and_report(
        &mut self,
        r: &mut EpochRun,
        batch: &Batch,
        train: &dyn Batches,
        valid: Option<&dyn Batches>,
    ) -> Result<Option<String>, TrainerError> {
        let t0 = Instant::now();
        if !train.carries_state() {
            // Batches are independent: every one starts from the model's initial state.
            r.state = self.model.initial_state(train.batch_size(), self.device);
            if let Some(t) = &self.teacher {
                r.teacher_state = Some(t.initial_state(train.batch_size(), self.device));
            }
        }
        let (loss, skipped) =
            self.train_step(batch, &mut r.state, r.teacher_state.as_mut(), r.epoch, None)?;
        self.pos.step += 1;
        let every = self.config.check_replicas_every;
        if every > 0 && self.strategy.world_size() > 1 && self.pos.step.is_multiple_of(every) {
            crate::strategy::check_replicas(
                self.strategy.as_ref(),
                &named_trainable(&self.vs),
                self.pos.step,
            )?;
        }
        self.pos.window = batch.index + 1;
        if skipped {
            self.pos.skipped_steps += 1;
        } else {
            r.loss_sum += loss.to_kind(Kind::Double);
            self.pos.epoch_steps += 1;
        }
        let tokens = batch.targets.numel() as u64;
        self.pos.epoch_tokens += tokens;
        let step_seconds = r.last_step_end.elapsed().as_secs_f64();
        r.last_step_end = Instant::now();
        self.pos.epoch_seconds += t0.elapsed().as_secs_f64();
        if self.first_step_seconds.is_none() {
            self.first_step_seconds = Some(
                run_dir::process_age_seconds()
                    .unwrap_or_else(|| self.started.elapsed().as_secs_f64()),
            );
        }
        let event = StepEvent {
            epoch: r.epoch,
            step: self.pos.step,
            window: batch.index,
            windows: train.len(),
            loss: &loss,
            lr: self.optimizer.lr(),
            grad_norm: self.last_grad_norm,
            metrics: &self.last_metrics,
            tokens,
            step_seconds,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        };
        let mut actions = Vec::new();
        for c in &mut self.callbacks {
            actions.extend(c.on_step_end(&event)?);
        }
        let mut stop = self.agree_to_stop(first_stop(&actions))?;
        if let Some(signal) = self.interrupted() {
            stop = stop.or_else(|| Some(format!("interrupted by {signal}")));
        }
        r.just_validated = self.interrupted().is_none()
            && self.config.eval_every > 0
            && self.pos.step.is_multiple_of(self.config.eval_every)
            && self.pos.window < train.len();
        if r.just_validated {
            self.pos.epoch_loss_sum += r.loss_sum.double_value(&[]);
            r.loss_sum = r.loss_sum.zeros_like();
            let state = train.carries_state().then_some(&r.state);
            if let Some(s) = self.validate_and_checkpoint(valid, state, true)? {
                stop = stop.or(Some(s));
            }
            // Early stopping decides on rank 0 alone.
            stop = self.agree_to_stop(stop)?;
        }
        Ok(stop)
    }

    /// The end of a complete epoch: validation, checkpoint, the epoch's callbacks. Returns a stop
    /// reason if a callback asked for one.
    fn end_epoch(
        &mut self,
        r: EpochRun,
        valid: Option<&dyn Batches>,
        epochs: &mut Vec<EpochStats>,
    ) -> Result<Option<String>, TrainerError> {
        let epoch = r.epoch;
        self.pos.epoch_loss_sum += r.loss_sum.double_value(&[]);
        let train_loss = self.pos.epoch_loss_sum / self.pos.epoch_steps.max(1) as f64;
        if !train_loss.is_finite() && self.config.on_non_finite == OnNonFinite::Stop {
            return Err(TrainerError::NonFinite {
                step: self.pos.step,
                epoch,
                value: train_loss,
                ranks: String::new(),
            });
        }
        self.pos.epoch += 1;
        self.pos.window = 0;
        let mut stop = self.validate_and_checkpoint(valid, None, false)?;
        let stats = EpochStats {
            epoch,
            step: self.pos.step,
            complete: true,
            train_loss,
            valid: self.last_valid,
            // The epoch's counters are reset when the next epoch starts.
            tokens_per_sec: self.pos.epoch_tokens as f64 / self.pos.epoch_seconds.max(1e-9),
            lr: self.optimizer.lr(),
            train_seconds: self.pos.epoch_seconds,
        };
        let mut actions = Vec::new();
        for c in &mut self.callbacks {
            actions.extend(c.on_epoch_end(&stats)?);
        }
        stop = self.agree_to_stop(stop.or_else(|| first_stop(&actions)))?;
        epochs.push(stats);
        Ok(stop)
    }

    /// The end of a run stopped mid-epoch: the position and the model's state are kept so that a
    /// resume continues here. The last validation counts for `best` and reaches every metrics
    /// file, but not the schedule or early stopping, so a resumed run trains as an uninterrupted
    /// one; when the last step already validated (at `eval_every`), that validation and its
    /// checkpoint are this step's, not done twice. An interrupted run skips it: a signal asks to
    /// exit promptly.
    fn end_partial_epoch(
        &mut self,
        r: EpochRun,
        valid: Option<&dyn Batches>,
        epochs: &mut Vec<EpochStats>,
    ) -> Result<(), TrainerError> {
        let epoch = r.epoch;
        self.pos.epoch_loss_sum += r.loss_sum.double_value(&[]);
        let state = r.carries_state.then_some(&r.state);
        let valid_stats = if r.just_validated {
            self.last_valid
        } else if self.interrupted().is_some() {
            self.save_checkpoint(false, state)?;
            None
        } else {
            let stats = self.final_validation(valid, epoch)?;
            let improved = stats.is_some_and(|s| s.1);
            self.save_checkpoint(improved, state)?;
            stats.map(|s| s.0)
        };
        let stats = EpochStats {
            epoch,
            step: self.pos.step,
            complete: false,
            train_loss: self.pos.epoch_loss_sum / self.pos.epoch_steps.max(1) as f64,
            valid: valid_stats,
            tokens_per_sec: self.pos.epoch_tokens as f64 / self.pos.epoch_seconds.max(1e-9),
            lr: self.optimizer.lr(),
            train_seconds: self.pos.epoch_seconds,
        };
        tracing::info!(
            epoch,
            step = self.pos.step,
            train_loss = format!("{:.4}", stats.train_loss),
            valid_loss = stats.valid.map(|v| format!("{:.4}", v.loss)),
            valid_ppl = stats.valid.map(|v| format!("{:.2}", v.perplexity)),
            tokens_per_sec = format!("{:.0}", stats.tokens_per_sec),
            "stopped mid-epoch"
        );
        for c in &mut self.callbacks {
            c.on_epoch_end(&stats)?;
        }
        epochs.push(stats);
        Ok(())
    }

    /// After the last step: final weights, the test split, the end-of-run summary.
    fn finish(
        &mut self,
        epochs: Vec<EpochStats>,
        stop: Option<String>,
    ) -> Result<FitSummary, TrainerError> {
        if let Some(reason) = &stop {
            tracing::info!(step = self.pos.step, "{reason}");
        }
        let taken: u64 = epochs
            .iter()
            .map(|e: &EpochStats| e.step)
            .max()
            .unwrap_or(0);
        if self.pos.skipped_steps > 0 && self.pos.skipped_steps >= taken {
            tracing::warn!(
                skipped = self.pos.skipped_steps,
                "every step was skipped for a non-finite loss or gradient: the model never \
                 trained (is the learning rate too high, or the data broken?)"
            );
        }
        if let Some(dir) = &self.run_dir {
            run_dir::save_weights(&self.vs, &dir.join(files::WEIGHTS))?;
        }
        let interrupted = self.interrupted();
        let tests = self
            .data
            .test_batches(self.device)
            .filter(|_| interrupted.is_none());
        let test = match tests {
            Some(batches) => {
                let s = self.evaluate(self.strategy.shard(batches?)?.as_ref())?;
                tracing::info!(
                    test_loss = format!("{:.4}", s.loss),
                    test_ppl = format!("{:.2}", s.perplexity),
                    "test"
                );
                if let Some(dir) = &self.run_dir {
                    run_dir::append_metrics(
                        &dir.join(files::METRICS),
                        &serde_json::json!({"kind": "test", "step": self.pos.step, "loss": s.loss,
                            "perplexity": s.perplexity, "bits": s.bits, "tokens": s.tokens}),
                    )?;
                }
                Some(s)
            }
            None => None,
        };
        let summary = FitSummary {
            epochs,
            best_valid_loss: self.pos.best_valid_loss,
            test,
            steps: self.pos.step,
            skipped_steps: self.pos.skipped_steps,
            stopped_early: stop,
            interrupted,
            run_dir: self.run_dir.clone(),
        };
        if let Some(dir) = &self.run_dir {
            // Throughput of this process's training (evaluation excluded), and model FLOP
            // utilisation against a matmul ceiling measured now on the same device.
            let seconds: f64 = summary.epochs.iter().map(|e| e.train_seconds).sum();
            let tokens: f64 = summary
                .epochs
                .iter()
                .map(|e| e.tokens_per_sec * e.train_seconds)
                .sum();
            let tokens_per_sec = tokens / seconds.max(1e-9);
            let utilisation = crate::mfu::Utilisation::measure(
                self.model.flops_per_token(),
                tokens_per_sec,
                self.device,
                self.config.precision.matmul_kind(),
            );
            tracing::info!(
                tokens_per_sec = format!("{tokens_per_sec:.0}"),
                achieved_gflop_per_s = utilisation.achieved_gflop_per_s.map(|g| format!("{g:.1}")),
                matmul_ceiling_gflop_per_s = utilisation
                    .matmul_ceiling_gflop_per_s
                    .map(|g| format!("{g:.1}")),
                mfu = utilisation.mfu.map(|m| format!("{:.1}%", 100.0 * m)),
                "throughput"
            );
            let record = serde_json::json!({
                "tokens_per_sec": tokens_per_sec,
                "utilisation": utilisation,
                "steps": summary.steps,
                "skipped_steps": summary.skipped_steps,
                "best_valid_loss": summary.best_valid_loss,
                "final_epoch": summary.epochs.last(),
                "test": summary.test,
                "stopped_early": summary.stopped_early,
                "interrupted": summary.interrupted.map(|s| s.name()),
                "peak_rss_mib": run_dir::peak_rss_mib(),
                "first_step_s": self.first_step_seconds,
                "wall_s": self.started.elapsed().as_secs_f64(),
                "device": format!("{:?}", self.device),
                "threads": tch::get_num_threads(),
            });
            let json = serde_json::to_vec_pretty(&record).map_err(|e| TrainerError::io(dir, e))?;
            run_dir::write_atomically(&dir.join(files::SUMMARY), &json)?;
        }
        // No process exits while the primary one writes the final weights and the summary.
        self.strategy.barrier()?;
        Ok(summary)
    }

    /// Validates (if enabled), updates the best metric and the schedule, writes a checkpoint
    /// (and `best`), and runs the callbacks. Returns a stop reason if a callback asked for one.
    fn validate_and_checkpoint(
        &mut self,
        valid: Option<&dyn Batches>,
        hidden: Option<&HiddenState>,
        mid_epoch: bool,
    ) -> Result<Option<String>, TrainerError> {
        let mut stop = None;
        let mut improved = false;
        self.last_valid = None;
        if let Some(v) = valid {
            let t = Instant::now();
            let stats = self.evaluate(v)?;
            improved = self.pos.best_valid_loss.is_none_or(|b| stats.loss < b);
            if improved {
                self.pos.best_valid_loss = Some(stats.loss);
                self.pos.evals_without_improvement = 0;
            } else {
                self.pos.evals_without_improvement += 1;
            }
            if let Some(s) = self.schedule.as_mut() {
                s.on_validation(stats.loss);
            }
            self.pos.valid_loss = Some(stats.loss);
            self.last_valid = Some(stats);
            let event = EvalEvent {
                epoch: self.pos.epoch.saturating_sub(u64::from(!mid_epoch)).max(1),
                step: self.pos.step,
                stats,
                improved,
                evals_without_improvement: self.pos.evals_without_improvement,
                seconds: t.elapsed().as_secs_f64(),
            };
            let mut actions = Vec::new();
            for c in &mut self.callbacks {
                actions.extend(c.on_eval_end(&event)?);
            }
            stop = first_stop(&actions);
        }
        self.save_checkpoint(improved, hidden)?;
        Ok(stop)
    }

    /// Writes a checkpoint (and `best` when `best`), on the primary process. Every process calls
    /// it together: the recurrent state mid-epoch is first gathered from every process, so the
    /// checkpoint holds the global batch's state (the same as a one-process run's), and every
    /// process waits at a barrier until the primary one has written it, so none runs ahead or
    /// exits meanwhile.
    fn save_checkpoint(
        &mut self,
        best: bool,
        hidden: Option<&HiddenState>,
    ) -> Result<(), TrainerError> {
        if !self.config.checkpoint {
            return Ok(());
        }
        let hidden = hidden.filter(|_| self.pos.window > 0);
        let global = hidden.map(|h| self.gather_state(h)).transpose()?;
        let written = self.write_checkpoint(best, global.as_ref());
        if written.is_ok() {
            self.strategy.barrier()?;
        }
        // A primary process that failed to write returns its error without the barrier; the
        // others' next collective then fails, naming it as lost.
        written
    }

    /// The global batch's state from every process's rows (dimension 1 of every tensor, rank r's
    /// rows after rank r - 1's, as [`Batches::shard`] deals them). One process: `hidden`.
    fn gather_state(&self, hidden: &HiddenState) -> Result<HiddenState, TrainerError> {
        if self.strategy.world_size() == 1 {
            return Ok(hidden.detach());
        }
        let mut global = Vec::with_capacity(hidden.0.len());
        for t in &hidden.0 {
            // [world_size, d0, b, ...] -> [d0, world_size, b, ...] -> [d0, world_size · b, ...]
            let all = self.strategy.all_gather(&t.f_contiguous()?)?;
            global.push(all.f_movedim([0], [1])?.f_flatten(1, 2)?.f_contiguous()?);
        }
        Ok(HiddenState(global))
    }

    /// The primary process's part of [`Trainer::save_checkpoint`]: the files.
    fn write_checkpoint(
        &mut self,
        best: bool,
        hidden: Option<&HiddenState>,
    ) -> Result<(), TrainerError> {
        let Some(dir) = self.run_dir.clone() else {
            return Ok(());
        };
        self.pos.world_size = self.strategy.world_size();
        self.pos.optimizer_steps = self.optimizer.step_count();
        self.pos.schedule_state = self
            .schedule
            .as_ref()
            .map(|s| s.state())
            .unwrap_or(serde_json::Value::Null);
        let name = format!("step-{:08}", self.pos.step);
        let path = checkpoint::save(
            &dir,
            &name,
            &self.vs,
            self.optimizer.as_ref(),
            hidden,
            &self.pos,
        )?;
        checkpoint::prune(&dir, self.config.keep_last.max(1));
        if best {
            checkpoint::save(
                &dir,
                checkpoint::BEST,
                &self.vs,
                self.optimizer.as_ref(),
                hidden,
                &self.pos,
            )?;
        }
        let event = CheckpointEvent {
            path,
            step: self.pos.step,
        };
        for c in &mut self.callbacks {
            c.on_checkpoint(&event)?;
        }
        Ok(())
    }

    /// Mean NLL (nats per token) and perplexity of the model on `batches`, without gradients,
    /// carrying the hidden state across windows.
    ///
    /// Under `precision = "bf16"` the forward passes run under bf16 autocast, as in training.
    ///
    /// # Errors
    /// Model and loss errors.
    pub fn evaluate(&self, batches: &dyn Batches) -> Result<EvalStats, TrainerError> {
        self.config.precision.scope(self.device, || {
            let (sum, count) = evaluate_sums(
                self.model.as_ref(),
                batches,
                self.device,
                self.loss.ignore_index(),
            )?;
            let (sum, count) = (
                self.strategy.all_reduce_sum(&sum)?,
                self.strategy.all_reduce_sum(&count)?,
            );
            Ok(EvalStats::new(
                sum.double_value(&[]),
                count.double_value(&[]) as u64,
            ))
        })
    }
}

/// The running part of one epoch in [`Trainer::fit`].
struct EpochRun {
    epoch: u64,
    /// Whether the loader's batches continue each other (the model's state is carried).
    carries_state: bool,
    state: HiddenState,
    teacher_state: Option<HiddenState>,
    /// Summed step losses since the last validation (float64, on the device).
    loss_sum: Tensor,
    last_step_end: Instant,
    /// Whether the last step ended with a validation (+ checkpoint) at `eval_every`.
    just_validated: bool,
}

fn first_stop(actions: &[Action]) -> Option<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Stop { reason } => reason.clone(),
        })
        .next()
}

/// Loads the weights saved in a run or checkpoint directory into `vs` (names must match).
///
/// # Errors
/// [`TrainerError::Io`] naming the file.
pub fn load_weights(vs: &mut nn::VarStore, dir: &Path) -> Result<(), TrainerError> {
    // Every tensor is checked (name and shape) before any is copied: a bad file leaves the
    // model as it was, and the error names the tensor and both shapes.
    crate::inference::load_weights(
        vs,
        &dir.join(files::WEIGHTS),
        "the model of this run's config",
    )
}
