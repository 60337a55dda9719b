//! The run configuration: TOML file, then `PERPLEX__SECTION__KEY` environment variables, then
//! `--set section.key=value` overrides, merged and read by `config_tree` the same way in
//! every process.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use perplex_data::DataConfig;
use perplex_losses::{Loss, SoftmaxCrossEntropy};
use perplex_model::{GruLmConfig, ModelConfig};
use perplex_optim::{AdamConfig, OptimizerConfig, ParamGroup, ScheduleConfig};

use crate::config_tree::{self, Layers, LoadError, Source};
use crate::device::parse_device;
use crate::host_memory::HostAllocator;
use crate::TrainerError;

/// A whole run: `[data]`, `[model]`, `[loss]`, `[optim]`, optional `[schedule]`, `[trainer]`.
///
/// `model`, `loss` and `optim` are chosen by their `type` key among the registered
/// implementations (typetag), so plugins add choices without changing this struct.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Corpus, tokenizer, vocabulary and batching.
    #[serde(default)]
    pub data: DataConfig,
    /// The model; default `{ type = "gru" }` (the seed model).
    #[serde(default = "default_model")]
    pub model: Box<dyn ModelConfig>,
    /// The training objective; default `{ type = "softmax_cross_entropy" }`.
    #[serde(default = "default_loss")]
    pub loss: Box<dyn Loss>,
    /// The optimiser; default `{ type = "adam", lr = 1e-3 }`.
    #[serde(default = "default_optim")]
    pub optim: Box<dyn OptimizerConfig>,
    /// Parameter groups (`[[param_groups]]` tables of `params`, `below_dims`, `lr_scale`,
    /// `weight_decay`; see [`ParamGroup`]). Absent: the optimiser's defaults (AdamW: no decay on
    /// tensors of fewer than two dimensions); `param_groups = []`: no groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_groups: Option<Vec<ParamGroup>>,
    /// Learning-rate schedule over optimiser steps; default none (constant `optim.lr`).
    #[serde(default)]
    pub schedule: Option<Box<dyn ScheduleConfig>>,
    /// The loop.
    #[serde(default)]
    pub trainer: TrainerConfig,
}

fn default_model() -> Box<dyn ModelConfig> {
    Box::new(GruLmConfig::default())
}

fn default_loss() -> Box<dyn Loss> {
    Box::new(SoftmaxCrossEntropy::default())
}

fn default_optim() -> Box<dyn OptimizerConfig> {
    Box::new(AdamConfig::default())
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            model: default_model(),
            loss: default_loss(),
            optim: default_optim(),
            param_groups: None,
            schedule: None,
            trainer: TrainerConfig::default(),
        }
    }
}

/// Implements `as_str`, `Display`, `Serialize` and `Deserialize` for a fieldless enum written
/// as one of the given strings in a config; any other value is rejected with an error that lists
/// them (serde's derived message speaks of "variant constructors" and tables).
macro_rules! config_enum {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The values accepted in a config file.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// This value as written in a config file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Names;
                impl serde::de::Visitor<'_> for Names {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(
                            f,
                            "one of {}",
                            <$ty>::NAMES
                                .iter()
                                .map(|n| format!("\"{n}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<$ty, E> {
                        match value {
                            $($name => Ok(<$ty>::$variant),)+
                            other => Err(E::custom(format!(
                                "`{other}` is not one of {}",
                                <$ty>::NAMES
                                    .iter()
                                    .map(|n| format!("\"{n}\""))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))),
                        }
                    }
                }
                d.deserialize_str(Names)
            }
        }
    };
}
pub(crate) use config_enum;

/// What to do when the training loss, or any gradient element (looked at before clipping), is NaN
/// or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNonFinite {
    /// Stop the run with an error naming the step; the last good checkpoint stays on disk.
    #[default]
    Stop,
    /// Skip that batch's update with a warning and count it (`skipped_steps` in the metrics).
    Skip,
}

config_enum!(OnNonFinite { Stop => "stop", Skip => "skip" });

/// Numeric precision of the model's forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// float32 everywhere.
    #[default]
    F32,
    /// bfloat16 autocast on the run's device, CPU or CUDA (`torch.autocast(device_type,
    /// dtype=torch.bfloat16)`, see [`crate::precision`]): matmuls and the GRU's projections in
    /// bf16; the loss, the parameters, their gradients and the optimiser state stay float32.
    /// Worth it on GPUs and on CPUs with AVX-512 BF16 or AMX; elsewhere libtorch emulates bf16.
    Bf16,
    /// float64 everywhere (Lightning's `precision="64-true"`): the parameters (initialised as in
    /// float32, then widened), their gradients, the optimiser state, the hidden state, the
    /// activations and the loss. For checks that need more digits than float32 has (gradient
    /// checks, data-parallel equivalence to 1e-6); about half `f32`'s speed on a 2-core CPU
    /// (docs/training.md, "Float64"). Checkpoints and `model.safetensors` hold float64 tensors.
    F64,
}

config_enum!(Precision { F32 => "f32", Bf16 => "bf16", F64 => "f64" });

/// The `[trainer]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// Passes over the training split. Default 10.
    pub epochs: u64,
    /// Stop after this many optimiser steps in total (0 = no limit). Default 0.
    pub max_steps: u64,
    /// Seed of libtorch's generator (initial weights; dropout is reseeded from `seed` and the
    /// step number at every step, so resumed runs draw the same masks). Default 1337.
    pub seed: i64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`. Default `auto`.
    pub device: String,
    /// libtorch intra-op threads; 0 keeps libtorch's default (the number of cores). Default 0.
    pub threads: usize,
    /// `f32`, `bf16` (autocast; parameters stay float32) or `f64` (everything float64). A
    /// resume cannot switch between `f64` and the others (the checkpoint's dtype). Default `f32`.
    pub precision: Precision,
    /// `retain` (keep freed host memory for reuse: fewer page faults per step, a higher peak
    /// resident set) or `system` (the C library's defaults); see [`crate::host_memory`].
    /// Default `retain`.
    pub host_allocator: HostAllocator,
    /// Split each batch's rows into this many micro-batches whose gradients are accumulated
    /// before one optimiser step; `batch_size` must be divisible by it. The loss is normalised
    /// by the whole batch's token count, so the gradient equals the full batch's. Default 1.
    pub accumulate: u64,
    /// Clip gradients to this global L2 norm (`clip_grad_norm_`); 0 disables. Default 0.
    pub clip_grad_norm: f64,
    /// Clamp every gradient element to `[-v, v]` (`clip_grad_value_`); 0 disables. Default 0.
    pub clip_grad_value: f64,
    /// Validate at the end of every epoch. Default true.
    pub eval: bool,
    /// Also validate (and checkpoint) every this many steps; 0 = only at epoch ends. Default 0.
    pub eval_every: u64,
    /// Stop after this many validations without improvement of the validation loss; 0 never
    /// stops early. Default 0.
    pub patience: u64,
    /// Write a checkpoint at every validation. Default true.
    pub checkpoint: bool,
    /// Keep this many most recent checkpoints (besides `best`). Default 2.
    pub keep_last: usize,
    /// `stop` or `skip` when the loss or a gradient is NaN/infinite. Default `stop`.
    pub on_non_finite: OnNonFinite,
    /// Data parallel: every this many optimiser steps, compare every parameter's checksum
    /// across the ranks (one all-gather of two float64 numbers per parameter) and stop naming
    /// the first parameter that differs; replicas that drift apart otherwise train on silently.
    /// 0 (default): never. Ignored in a single process.
    pub check_replicas_every: u64,
    /// Log (and write to `metrics.jsonl`) the running training loss every this many steps
    /// (0 = only per epoch). Default 20.
    pub log_every: u64,
    /// Show a progress bar (only when stderr is a terminal). Default true.
    pub progress: bool,
    /// Directory under which each run gets its own directory. Default `runs`.
    pub run_dir: PathBuf,
    /// Name of this run's directory; default: `run-<unix time>`.
    pub run_name: Option<String>,
    /// A run or checkpoint directory of a teacher model (same vocabulary) whose logits are
    /// given to the loss as `teacher_logits` (for `distillation_kl`). Default none.
    pub teacher: Option<PathBuf>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: 0,
            seed: 1337,
            device: "auto".into(),
            threads: 0,
            precision: Precision::F32,
            host_allocator: HostAllocator::Retain,
            accumulate: 1,
            clip_grad_norm: 0.0,
            clip_grad_value: 0.0,
            eval: true,
            eval_every: 0,
            patience: 0,
            checkpoint: true,
            keep_last: 2,
            on_non_finite: OnNonFinite::Stop,
            check_replicas_every: 0,
            log_every: 20,
            progress: true,
            run_dir: PathBuf::from("runs"),
            run_name: None,
            teacher: None,
        }
    }
}

/// Prefix of environment overrides: `PERPLEX__TRAINER__EPOCHS=3` sets `trainer.epochs`.
pub const ENV_PREFIX: &str = "PERPLEX";

/// The sections of a run config, in the order they are logged.
pub const SECTIONS: &[&str] = &[
    "data",
    "model",
    "loss",
    "optim",
    "param_groups",
    "schedule",
    "trainer",
];

impl RunConfig {
    /// Loads a run config: defaults, then `file` (TOML) if given, then environment variables
    /// `PERPLEX__SECTION__KEY=value`, then each `overrides` entry `section.key=value`, the same
    /// way in every process (see `config_tree` for the rules).
    ///
    /// File values are typed by TOML and read strictly: a quoted number for a number key and a
    /// float for an integer key are errors. Environment and `--set` values are text that takes
    /// the type of its key: a string key keeps it exactly (`run_name=0042` stays `0042`), a
    /// number or boolean key parses it (an integer key rejects `3.5`); a quoted string, an array
    /// (`[0.8, 0.1, 0.1]`) or an inline table is read as TOML. An override that changes a
    /// section's `type` starts that section from the new type's defaults, keeping the keys the
    /// overrides give and logging the file keys it drops.
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the file, environment variable or override and the full
    /// key path: an unknown key, a value of the wrong type, an unknown `type` or tokenizer
    /// (listing the registered ones), a malformed override.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, TrainerError> {
        let (config, warnings) = Self::load_with_warnings(file, overrides)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(config)
    }

    /// [`RunConfig::load`] without logging: the config and the warnings (keys dropped by a
    /// `type` switch).
    pub(crate) fn load_with_warnings(
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<(Self, Vec<String>), TrainerError> {
        Self::load_layers(file, config_tree::env_overrides(), overrides)
    }

    /// The config of `file` alone: no `PERPLEX__*` environment variable, no override. What a
    /// run directory's `config.toml` says, for a resume to compare the new config with.
    ///
    /// # Errors
    /// As [`RunConfig::load`].
    pub fn load_file_only(file: &Path) -> Result<Self, TrainerError> {
        Ok(Self::load_layers(Some(file), Vec::new(), &[])?.0)
    }

    fn load_layers(
        file: Option<&Path>,
        env: Vec<(String, String)>,
        overrides: &[String],
    ) -> Result<(Self, Vec<String>), TrainerError> {
        let origin = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "the default config".into());
        let to_error = |e: LoadError| {
            let source_name = match &e.source {
                Some(s @ (Source::Env(_) | Source::Set(_))) => format!("{origin} with {s}"),
                Some(Source::File(f)) => f.display().to_string(),
                Some(Source::Default) => origin.clone(),
                None => {
                    let mut with = origin.clone();
                    if !env.is_empty() {
                        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
                        with.push_str(&format!(" with environment {}", names.join(", ")));
                    }
                    if !overrides.is_empty() {
                        with.push_str(&format!(" with overrides {overrides:?}"));
                    }
                    with
                }
            };
            TrainerError::Config {
                source_name,
                message: e.message,
            }
        };
        let layers = Layers {
            file,
            env: env.clone(),
            overrides,
        };
        let (tree, warnings) = config_tree::merge_layers(&layers).map_err(&to_error)?;
        let config = config_tree::deserialize::<RunConfig>(&tree).map_err(&to_error)?;
        Ok((config, warnings))
    }

    /// Makes every file path of the config absolute, relative to `base` (the directory training
    /// is started in): the corpus files, `data_dir`, `run_dir` and the teacher. A run directory's
    /// `config.toml` then works from any directory (`perplex eval --checkpoint RUN` elsewhere).
    pub fn absolutize_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let d = &mut self.data;
        for p in [
            &mut d.path,
            &mut d.train,
            &mut d.valid,
            &mut d.test,
            &mut d.tokenizer_file,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        abs(&mut d.data_dir);
        abs(&mut self.trainer.run_dir);
        if let Some(t) = &mut self.trainer.teacher {
            abs(t);
        }
    }

    /// Checks that `world_size` processes can share this config's batches: each takes
    /// `data.batch_size / world_size` rows of every training batch (a multiple of
    /// `trainer.accumulate`) and `eval_batch_size / world_size` of every evaluation batch. Run
    /// before any file of a run is written, and by `--dry-run` under a launcher.
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the key, its value and the world size.
    pub fn check_world_size(&self, world_size: usize) -> Result<(), TrainerError> {
        if world_size <= 1 {
            return Ok(());
        }
        let bad = |key: &str, value: usize, expected: String| TrainerError::Config {
            source_name: key.to_string(),
            message: format!("{key} = {value}: expected {expected}"),
        };
        let (batch, accumulate) = (
            self.data.batch_size,
            self.trainer.accumulate.max(1) as usize,
        );
        if !batch.is_multiple_of(world_size) {
            return Err(bad(
                "data.batch_size",
                batch,
                format!(
                    "a multiple of the world size {world_size} (the global batch is shared \
                    out in equal rows)"
                ),
            ));
        }
        if !(batch / world_size).is_multiple_of(accumulate) {
            return Err(bad(
                "data.batch_size",
                batch,
                format!(
                    "each of the {world_size} processes' {} rows to be a multiple of \
                    trainer.accumulate = {accumulate}",
                    batch / world_size
                ),
            ));
        }
        if let Some(eval) = self.data.eval_batch_size {
            if !eval.is_multiple_of(world_size) {
                return Err(bad(
                    "data.eval_batch_size",
                    eval,
                    format!("a multiple of the world size {world_size}"),
                ));
            }
        }
        Ok(())
    }

    /// Runs the checks that [`crate::Trainer::from_config`] runs before training, without
    /// creating the run directory or reading the corpus: the device, `trainer.accumulate`
    /// against `data.batch_size`, the data options, the model's options (the model is built on
    /// the CPU with a stand-in vocabulary), the optimiser's options (built over that model's
    /// parameters), the schedule's options and the teacher directory. Draws from libtorch's
    /// random generator (the stand-in model's weights).
    ///
    /// The loss's options are checked by one forward pass on a probe batch
    /// ([`perplex_losses::probe`]) over a vocabulary of 2^18 tokens: option values (a
    /// `label_smoothing` of 1.5, a `weighted_sum` without terms, `reduction = "none"`) are
    /// refused here; what depends on the real vocabulary (a class `weight`'s length) is checked
    /// when training loads the corpus, still before any file is written.
    ///
    /// # Errors
    /// The [`TrainerError`] that training would stop with.
    pub fn validate(&self) -> Result<(), TrainerError> {
        let tc = &self.trainer;
        parse_device(&tc.device)?;
        check_accumulate(tc.accumulate, self.data.batch_size)?;
        self.data.validate()?;
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        // The vocabulary is only known once the corpus is read; any size exercises the checks.
        const STAND_IN_VOCAB: i64 = 8;
        self.model.build(
            &vs.root(),
            &perplex_model::BuildContext::new(STAND_IN_VOCAB)
                .with_seq_len(self.data.seq_len as i64),
        )?;
        // `init_from`: the checkpoint's files, names and shapes against the model (nothing read
        // but the headers).
        if let (Some(dir), Some(format)) = (self.model.init_from(), self.model.hf_format()) {
            perplex_model::hf::check_weights(&vs, format.as_ref(), dir)?;
        }
        self.build_optimizer(crate::named_trainable(&vs))?;
        check_loss(self.loss.as_ref(), 1 << 18, true)?;
        if let Some(s) = &self.schedule {
            s.build(self.optim.lr())?;
        }
        if let Some(t) = &tc.teacher {
            if !t.exists() {
                return Err(TrainerError::Config {
                    source_name: "trainer.teacher".into(),
                    message: format!("{} does not exist", t.display()),
                });
            }
        }
        Ok(())
    }

    /// Resolves `[model] init_from = "DIR"`: the model section becomes the concrete config of
    /// `DIR/config.json` (`type = "llama"` or `"transformer"`, every key, `init_from` kept), and
    /// the run's tokenizer the directory's `tokenizer.json` (`data.tokenizer = "bpe"`) unless
    /// `data.tokenizer_file` or `data.prepared` names one. For a new run (`check`), a concrete
    /// config that names `init_from` itself must describe the directory's model: any
    /// architecture key that differs from `config.json` is refused by name (dropout aside).
    /// Does nothing for a model without `init_from`; idempotent.
    ///
    /// # Errors
    /// [`TrainerError::Model`] naming the file and key of the directory, or
    /// [`TrainerError::Config`] for a directory without `tokenizer.json` (and no
    /// `data.tokenizer_file`) or an architecture key that differs.
    pub fn resolve_pretrained(&mut self, check: bool) -> Result<(), TrainerError> {
        let explicit = self.model.resolve()?;
        let was_concrete = explicit.is_none();
        if let Some(concrete) = explicit {
            self.model = concrete;
        }
        let Some(dir) = self.model.init_from().map(Path::to_path_buf) else {
            return Ok(());
        };
        if check && was_concrete {
            check_against_directory(self.model.as_ref(), &dir)?;
        }
        if self.data.tokenizer_file.is_none() && self.data.prepared.is_none() {
            let file = dir.join("tokenizer.json");
            if !file.is_file() {
                return Err(TrainerError::Config {
                    source_name: "model.init_from".into(),
                    message: format!(
                        "{} has no tokenizer.json: set data.tokenizer_file to the tokenizer the \
                         model was trained with",
                        dir.display()
                    ),
                });
            }
            self.data.tokenizer_file = Some(file);
        }
        if self.data.tokenizer != perplex_data::TokenizerKind::Bpe {
            tracing::info!(
                "model.init_from: data.tokenizer = \"bpe\" (the pretrained model's tokenizer.json), \
                 not \"{}\"",
                format!("{:?}", self.data.tokenizer).to_lowercase()
            );
            self.data.tokenizer = perplex_data::TokenizerKind::Bpe;
        }
        Ok(())
    }

    /// The config as TOML (what a run directory's `config.toml` holds).
    ///
    /// # Errors
    /// [`TrainerError::Config`] if a plugin's config cannot be serialised.
    pub fn to_toml(&self) -> Result<String, TrainerError> {
        toml::to_string_pretty(self).map_err(|e| TrainerError::Config {
            source_name: "resolved config".into(),
            message: e.to_string(),
        })
    }

    /// Each section (`[data]`, `[model]`, ...) as TOML, in [`SECTIONS`] order, as
    /// [`RunConfig::to_toml`] writes it; an absent `[schedule]` is left out.
    ///
    /// # Errors
    /// [`TrainerError::Config`] if a plugin's config cannot be serialised.
    pub fn sections_toml(&self) -> Result<Vec<(&'static str, String)>, TrainerError> {
        let err = |e: &dyn std::fmt::Display| TrainerError::Config {
            source_name: "resolved config".into(),
            message: e.to_string(),
        };
        let mut all = toml::Table::try_from(self).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for name in SECTIONS {
            if let Some(v) = all.remove(*name) {
                let mut one = toml::Table::new();
                one.insert(name.to_string(), v);
                out.push((*name, toml::to_string_pretty(&one).map_err(|e| err(&e))?));
            }
        }
        Ok(out)
    }

    /// The parameter groups in effect: `param_groups`, or the optimiser's defaults.
    pub fn param_groups(&self) -> Vec<ParamGroup> {
        self.param_groups
            .clone()
            .unwrap_or_else(|| self.optim.default_param_groups())
    }

    /// The configured optimiser over `params`, split into [`RunConfig::param_groups`].
    ///
    /// # Errors
    /// [`TrainerError::Optim`] for bad options or groups.
    pub fn build_optimizer(
        &self,
        params: perplex_optim::NamedParams,
    ) -> Result<Box<dyn perplex_optim::Optimizer>, TrainerError> {
        Ok(perplex_optim::build_grouped(
            self.optim.as_ref(),
            params,
            &self.param_groups(),
        )?)
    }

    /// Logs the resolved config section by section (`tracing::info!`, one event per section).
    pub fn log_sections(&self) {
        match self.sections_toml() {
            Ok(sections) => {
                for (name, text) in sections {
                    tracing::info!(section = name, "resolved config:\n{}", text.trim_end());
                }
            }
            Err(e) => tracing::warn!("cannot show the resolved config: {e}"),
        }
    }
}

/// `trainer.accumulate` must be positive and divide `data.batch_size`.
pub(crate) fn check_accumulate(accumulate: u64, batch_size: usize) -> Result<(), TrainerError> {
    if accumulate == 0 || !(batch_size as u64).is_multiple_of(accumulate) {
        return Err(TrainerError::Config {
            source_name: "trainer.accumulate".into(),
            message: format!(
                "accumulate = {accumulate} must be positive and divide data.batch_size = {batch_size}"
            ),
        });
    }
    Ok(())
}

/// A concrete model config that names `init_from` must be the directory's model: compared
/// through transformers' `config.json` form of both (dropout keys aside).
fn check_against_directory(model: &dyn ModelConfig, dir: &Path) -> Result<(), TrainerError> {
    // Dropout is the one key a run may choose: resolve with any value (it is not compared).
    let theirs = perplex_model::hf::resolve(dir, Some(0.0))?;
    let (Some(ours), Some(theirs)) = (model.hf_format(), theirs.hf_format()) else {
        return Err(TrainerError::Config {
            source_name: "model.init_from".into(),
            message: format!(
                "model.type has no transformers form, so it cannot start from {}",
                dir.display()
            ),
        });
    };
    let (ours, theirs) = (ours.config_json(0), theirs.config_json(0));
    let dropout = [
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "attention_dropout",
    ];
    let differences: Vec<String> = theirs
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| !dropout.contains(&key.as_str()))
        .filter(|(key, want)| &ours[key.as_str()] != *want)
        .map(|(key, want)| format!("{key} = {} (config.json: {want})", ours[key.as_str()]))
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(TrainerError::Config {
        source_name: "model".into(),
        message: format!(
            "the model section describes another model than {}: {}; with init_from, leave the \
             architecture to the directory (write only init_from and dropout under [model])",
            dir.join("config.json").display(),
            differences.join(", ")
        ),
    })
}

/// Runs the loss once on a probe batch over `vocab_size` tokens ([`perplex_losses::probe`]) and
/// checks that it is a scalar, as training needs. With `options_only`, errors that depend on the
/// vocabulary (shapes, a class `weight`'s length, banned ids) are not reported: the vocabulary is
/// a stand-in.
///
/// # Errors
/// [`TrainerError::Loss`] naming the option, or [`TrainerError::Config`] for a loss that is not
/// a scalar.
pub(crate) fn check_loss(
    loss: &dyn Loss,
    vocab_size: i64,
    options_only: bool,
) -> Result<(), TrainerError> {
    match perplex_losses::probe(loss, vocab_size) {
        Ok(value) if value.dim() != 0 => Err(TrainerError::Config {
            source_name: "[loss]".into(),
            message: "the training loss must be a scalar: set `reduction` to `mean` or `sum`"
                .into(),
        }),
        Ok(_) => Ok(()),
        Err(e) if !options_only => Err(e.into()),
        // Options whose check needs the real vocabulary are left to training.
        Err(perplex_losses::LossError::InvalidOption {
            option: "weight" | "banned_ids",
            ..
        }) => Ok(()),
        Err(e @ perplex_losses::LossError::InvalidOption { .. }) => Err(e.into()),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads from a file body, explicit environment variables and `--set` entries (the process
    /// environment is not read, so tests do not race).
    fn load(
        body: &str,
        env: &[(&str, &str)],
        sets: &[&str],
    ) -> Result<(RunConfig, Vec<String>), LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, body).unwrap();
        let overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let layers = Layers {
            file: Some(&file),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: &overrides,
        };
        let (tree, warnings) = config_tree::merge_layers(&layers)?;
        Ok((config_tree::deserialize(&tree)?, warnings))
    }

    fn err(body: &str, env: &[(&str, &str)], sets: &[&str]) -> LoadError {
        load(body, env, sets).expect_err("should be rejected")
    }

    fn json<T: Serialize + ?Sized>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn a_float_for_an_integer_key_is_an_error_naming_the_key() {
        let e = err("[trainer]\nepochs = 3.5\n", &[], &[]);
        assert_eq!(
            e.message,
            "trainer.epochs: invalid type: floating point `3.5`, expected u64"
        );
        assert!(matches!(e.source, Some(Source::File(_))), "{e:?}");
        let e = err(
            "[schedule]\nwarmup_steps = 10.6\ntotal_steps = 100\ntype = \"warmup_cosine\"\n",
            &[],
            &[],
        );
        assert_eq!(
            e.message,
            "schedule.warmup_steps: invalid type: floating point `10.6`, expected i64"
        );
        let e = err("", &[], &["trainer.max_steps=1.6"]);
        assert_eq!(
            e.message,
            "trainer.max_steps: invalid type: floating point `1.6`, expected u64"
        );
        assert_eq!(e.source, Some(Source::Set("trainer.max_steps=1.6".into())));
        let e = err("", &[("PERPLEX__TRAINER__EPOCHS", "3.5")], &[]);
        assert_eq!(
            e.source,
            Some(Source::Env("PERPLEX__TRAINER__EPOCHS".into()))
        );
        assert!(e.message.starts_with("trainer.epochs: "), "{e:?}");
    }

    #[test]
    fn override_text_takes_the_type_of_its_key() {
        let (c, _) = load(
            "[trainer]\nrun_name = \"file\"\n",
            &[("PERPLEX__TRAINER__RUN_NAME", "0042")],
            &[],
        )
        .unwrap();
        assert_eq!(c.trainer.run_name.as_deref(), Some("0042"));
        let (c, _) = load("", &[], &["trainer.run_name=0042", "trainer.device=cpu"]).unwrap();
        assert_eq!(c.trainer.run_name.as_deref(), Some("0042"));
        assert_eq!(c.trainer.device, "cpu");
        let (c, _) = load("", &[], &["trainer.run_name=\"1e3\""]).unwrap();
        assert_eq!(c.trainer.run_name.as_deref(), Some("1e3"));
        let (c, _) = load(
            "",
            &[
                ("PERPLEX__TRAINER__EVAL", "false"),
                ("PERPLEX__OPTIM__LR", "1"),
            ],
            &[
                "trainer.epochs=3",
                "data.splits=[0.8, 0.1, 0.1]",
                "loss.label_smoothing=.25",
            ],
        )
        .unwrap();
        assert!(!c.trainer.eval);
        assert_eq!(c.trainer.epochs, 3);
        assert_eq!(c.optim.lr(), 1.0);
        assert_eq!(c.data.splits, vec![0.8, 0.1, 0.1]);
        assert_eq!(json(&c.loss)["label_smoothing"], 0.25);
        let e = err("", &[], &["trainer.eval=yes"]);
        assert_eq!(
            e.message,
            "trainer.eval: invalid type: string \"yes\", expected a boolean"
        );
    }

    #[test]
    fn quoted_numbers_in_a_file_are_rejected_naming_the_key() {
        let e = err(
            "[loss]\ntype = \"softmax_cross_entropy\"\nlabel_smoothing = '0.1'\n",
            &[],
            &[],
        );
        assert_eq!(
            e.message,
            "loss.label_smoothing: invalid type: string \"0.1\", expected f64"
        );
        // The same with `type` last: typetag no longer sees the keys in another order.
        let e2 = err(
            "[loss]\nlabel_smoothing = '0.1'\ntype = \"softmax_cross_entropy\"\n",
            &[],
            &[],
        );
        assert_eq!(e.message, e2.message);
        let e = err("[trainer]\nepochs = \"3\"\n", &[], &[]);
        assert_eq!(
            e.message,
            "trainer.epochs: invalid type: string \"3\", expected u64"
        );
        // A string key does not take a number from a file either; a float key takes an integer.
        assert!(err("[trainer]\nrun_name = 42\n", &[], &[])
            .message
            .starts_with("trainer.run_name: invalid type: integer `42`"));
        let (c, _) = load("[optim]\nlr = 1\n", &[], &[]).unwrap();
        assert_eq!(c.optim.lr(), 1.0);
    }

    #[test]
    fn type_position_in_a_section_does_not_matter() {
        let first = "[loss]\ntype = \"softmax_cross_entropy\"\nlabel_smoothing = 0.1\n";
        let last = "[loss]\nlabel_smoothing = 0.1\ntype = \"softmax_cross_entropy\"\n";
        let a = load(first, &[], &[]).unwrap().0.to_toml().unwrap();
        let b = load(last, &[], &[]).unwrap().0.to_toml().unwrap();
        assert_eq!(a, b);
        assert!(a.contains("label_smoothing = 0.1"), "{a}");
    }

    #[test]
    fn a_type_switch_restarts_the_section_and_keeps_the_overrides_keys() {
        let body = "[optim]\ntype = \"adam\"\nlr = 0.01\neps = 1e-6\nbetas = [0.8, 0.9]\n";
        let (c, warnings) = load(body, &[], &["optim.type=sgd", "optim.momentum=0.9"]).unwrap();
        let o = json(&c.optim);
        assert_eq!(o["type"], "sgd");
        assert_eq!(o["momentum"], 0.9);
        assert_eq!(o["lr"], json(&perplex_optim::SgdConfig::default())["lr"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "`--set optim.type=sgd` replaced [optim]: dropped betas, eps, lr from "
            ) && warnings[0].ends_with("run.toml"),
            "{warnings:?}"
        );
        // Environment overrides of the section are kept too.
        let (c, _) = load(body, &[("PERPLEX__OPTIM__LR", "0.5")], &["optim.type=sgd"]).unwrap();
        assert_eq!(json(&c.optim)["lr"], 0.5);
        // The same type keeps the file's keys.
        let (c, warnings) = load(body, &[], &["optim.type=adam"]).unwrap();
        assert_eq!(json(&c.optim)["eps"], 1e-6);
        assert!(warnings.is_empty());
        // Switching away from a default type drops nothing of the file but the defaults.
        let (c, warnings) = load("", &[("PERPLEX__OPTIM__TYPE", "sgd")], &[]).unwrap();
        assert_eq!(json(&c.optim)["type"], "sgd");
        assert!(warnings.is_empty());
    }

    #[test]
    fn unknown_names_list_the_registered_ones() {
        for (body, expected) in [
            ("[model]\ntype = \"grux\"\n", "model.type: unknown model `grux`; registered models: `gru`"),
            ("[optim]\ntype = \"adamx\"\n", "optim.type: unknown optimiser `adamx`; registered optimisers: `adagrad`, `adam`, `adamw`, `rmsprop`, `sgd`"),
            ("[schedule]\ntype = \"cosin\"\n", "schedule.type: unknown schedule `cosin`; registered schedules: "),
            ("[loss]\ntype = \"xent\"\n", "loss.type: unknown loss `xent`; registered losses: "),
            ("[data]\ntokenizer = \"sentencepiece\"\n", "data.tokenizer: unknown tokenizer `sentencepiece`; accepted tokenizers: `word`, `char`, `whitespace`, `bpe`"),
        ] {
            let e = err(body, &[], &[]);
            assert!(e.message.starts_with(expected), "{e:?}");
        }
        let e = err("[schedule]\ntype = \"cosin\"\n", &[], &[]);
        assert!(e.message.contains("`warmup_cosine`"), "{e:?}");
        let e = err("", &[], &["loss.type=xent"]);
        assert!(e.message.contains("`softmax_cross_entropy`"), "{e:?}");
        assert_eq!(e.source, Some(Source::Set("loss.type=xent".into())));
    }

    #[test]
    fn validate_runs_the_training_checks() {
        let (c, _) = load("", &[], &["optim.lr=-1"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("lr"), "{e}");
        let (c, _) = load("", &[], &["trainer.accumulate=3"]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("accumulate"));
        let (c, _) = load(
            "[schedule]\ntype = \"warmup_cosine\"\nwarmup_steps = 10\ntotal_steps = 5\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(c.validate().is_err());
        let (c, _) = load("", &[], &["data.splits=[0.5, 0.9]"]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("splits"));
        let (c, _) = load("", &[], &["trainer.device=cpu"]).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn param_groups_load_default_for_adamw_and_round_trip() {
        let body = "[optim]\ntype = \"adamw\"\n\n[[param_groups]]\nparams = [\"out.*\"]\nlr_scale = 0.5\nweight_decay = 0.0\n";
        let (c, _) = load(body, &[], &[]).unwrap();
        let groups = c.param_groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (groups[0].lr_scale, groups[0].weight_decay),
            (0.5, Some(0.0))
        );
        let again: RunConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.param_groups(), groups);
        // Absent: AdamW's default (no decay below two dimensions); Adam has none.
        let (c, _) = load("[optim]\ntype = \"adamw\"\n", &[], &[]).unwrap();
        assert_eq!(c.param_groups(), vec![ParamGroup::no_decay_below_2d()]);
        let (c, _) = load("", &[], &[]).unwrap();
        assert!(c.param_groups().is_empty());
        // An explicit empty list turns AdamW's default off.
        let (c, _) = load("param_groups = []\n[optim]\ntype = \"adamw\"\n", &[], &[]).unwrap();
        assert!(c.param_groups().is_empty());
        // Bad groups are caught before training (dry-run too).
        let (c, _) = load(
            "[[param_groups]]\nparams = [\"*\"]\nlr_scale = -1.0\n[trainer]\ndevice = \"cpu\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("lr_scale"));
    }

    #[test]
    fn sections_are_logged_as_config_toml_writes_them() {
        let (c, _) = load("[schedule]\ntype = \"cosine\"\nt_max = 10\n", &[], &[]).unwrap();
        let sections = c.sections_toml().unwrap();
        let names: Vec<&str> = sections.iter().map(|(n, _)| *n).collect();
        let present: Vec<&str> = SECTIONS
            .iter()
            .copied()
            .filter(|s| *s != "param_groups")
            .collect();
        assert_eq!(names, present);
        assert!(sections[3].1.starts_with("[optim]\n"), "{sections:?}");
        let whole: toml::Table = toml::from_str(&c.to_toml().unwrap()).unwrap();
        for (name, text) in sections {
            let one: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(one[name], whole[name]);
        }
    }
}
