//! The run configuration: TOML file, then `PERPLEX__SECTION__KEY` environment variables, then
//! `--set section.key=value` overrides, merged by the `config` crate.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use perplex_data::DataConfig;
use perplex_losses::{Loss, SoftmaxCrossEntropy};
use perplex_model::{GruLmConfig, ModelConfig};
use perplex_optim::{AdamConfig, OptimizerConfig, ScheduleConfig};

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
                let value = String::deserialize(d)?;
                match value.as_str() {
                    $($name => Ok(Self::$variant),)+
                    other => Err(<D::Error as serde::de::Error>::custom(format!(
                        "`{other}` is not one of {}",
                        Self::NAMES
                            .iter()
                            .map(|n| format!("\"{n}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    };
}
pub(crate) use config_enum;

/// What to do when the training loss is NaN or infinite.
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
}

config_enum!(Precision { F32 => "f32", Bf16 => "bf16" });

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
    /// `f32` or `bf16`. Default `f32`.
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
    /// `stop` or `skip` when the loss is NaN/infinite. Default `stop`.
    pub on_non_finite: OnNonFinite,
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

impl RunConfig {
    /// Loads a run config: defaults, then `file` (TOML) if given, then environment variables
    /// `PERPLEX__SECTION__KEY=value`, then each `overrides` entry `section.key=value` (the value
    /// is TOML: `3`, `0.1`, `true`, `"text"`, `[0.8, 0.1, 0.1]`; a bare word is taken as a
    /// string).
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the file or override and the key: an unknown key, a value
    /// of the wrong type, an unknown `type` (listing the registered ones), a malformed override.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, TrainerError> {
        let origin = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "the default config".into());
        // A section given without `type` (e.g. only `--set model.hidden_size=128`) keeps the
        // default implementation.
        let mut builder = config::Config::builder()
            .set_default("model.type", "gru")
            .and_then(|b| b.set_default("loss.type", "softmax_cross_entropy"))
            .and_then(|b| b.set_default("optim.type", "adam"))
            .map_err(|e| TrainerError::Config {
                source_name: "defaults".into(),
                message: e.to_string(),
            })?;
        if let Some(f) = file {
            if !f.exists() {
                return Err(TrainerError::Config {
                    source_name: f.display().to_string(),
                    message: "file not found".into(),
                });
            }
            builder = builder.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        for o in overrides {
            let snippet = override_to_toml(o)?;
            builder =
                builder.add_source(config::File::from_str(&snippet, config::FileFormat::Toml));
        }
        let merged = builder.build().map_err(|e| TrainerError::Config {
            source_name: origin.clone(),
            message: e.to_string(),
        })?;
        let mut with_context = origin.clone();
        let env_prefix = format!("{ENV_PREFIX}__");
        let mut env: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with(&env_prefix))
            .collect();
        if !env.is_empty() {
            env.sort();
            with_context.push_str(&format!(" with environment {}", env.join(", ")));
        }
        if !overrides.is_empty() {
            with_context.push_str(&format!(" with overrides {overrides:?}"));
        }
        merged
            .try_deserialize::<RunConfig>()
            .map_err(|e| TrainerError::Config {
                source_name: with_context,
                message: explain(e.to_string()),
            })
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
}

/// `a.b=3` -> `a.b = 3` as TOML; a value that is not valid TOML becomes a string.
fn override_to_toml(o: &str) -> Result<String, TrainerError> {
    let bad = |m: &str| TrainerError::Config {
        source_name: format!("--set {o}"),
        message: m.into(),
    };
    let (key, value) = o
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. trainer.epochs=3"))?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(bad("the key must be dotted names like trainer.epochs"));
    }
    let value = value.trim();
    let candidate = format!("{key} = {value}");
    if toml::from_str::<toml::Table>(&candidate).is_ok() {
        Ok(candidate)
    } else {
        Ok(format!(
            "{key} = {}",
            toml::Value::String(value.to_string())
        ))
    }
}

/// Makes serde's messages say what to do.
fn explain(message: String) -> String {
    if message.contains("unknown variant") || message.contains("unknown field `type`") {
        format!("{message} (run `perplex losses` to list the registered losses)")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_as_toml_with_string_fallback() {
        assert_eq!(
            override_to_toml("trainer.epochs=3").unwrap(),
            "trainer.epochs = 3"
        );
        assert_eq!(
            override_to_toml("trainer.device=cpu").unwrap(),
            "trainer.device = \"cpu\""
        );
        assert!(override_to_toml("noequals").is_err());
        assert!(override_to_toml("bad key=1").is_err());
    }
}
