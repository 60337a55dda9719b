//! The run configuration: TOML file, then `PERPLEX__SECTION__KEY` environment variables, then
//! `--set section.key=value` overrides, merged by the `config` crate.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use perplex_data::DataConfig;
use perplex_losses::{Loss, SoftmaxCrossEntropy};
use perplex_model::{GruLmConfig, ModelConfig};
use perplex_optim::{AdamConfig, OptimizerConfig};

use crate::TrainerError;

/// A whole run: `[data]`, `[model]`, `[loss]`, `[optim]`, `[trainer]`.
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
            trainer: TrainerConfig::default(),
        }
    }
}

/// The `[trainer]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// Passes over the training split. Default 10.
    pub epochs: u64,
    /// Stop after this many optimiser steps in total (0 = no limit). Default 0.
    pub max_steps: u64,
    /// Seed of libtorch's generator (initial weights, dropout). Default 1337.
    pub seed: i64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`. Default `auto`.
    pub device: String,
    /// libtorch intra-op threads; 0 keeps libtorch's default (the number of cores). Default 0.
    pub threads: usize,
    /// Clip gradients to this global L2 norm (`clip_grad_norm_`); 0 disables. Default 0.
    pub clip_grad_norm: f64,
    /// Log the running training loss every this many steps (0 = only per epoch). Default 20.
    pub log_every: u64,
    /// Directory under which each run gets its own directory. Default `runs`.
    pub run_dir: PathBuf,
    /// Name of this run's directory; default: `run-<unix time>`.
    pub run_name: Option<String>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: 0,
            seed: 1337,
            device: "auto".into(),
            threads: 0,
            clip_grad_norm: 0.0,
            log_every: 20,
            run_dir: PathBuf::from("runs"),
            run_name: None,
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
        let mut builder = config::Config::builder();
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
