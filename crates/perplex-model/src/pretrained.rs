//! `[model] init_from = "DIR"`: a model built from a transformers directory.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::nn;

use crate::{BuildContext, LanguageModel, ModelConfig, ModelError};

/// `[model] init_from = "DIR"` (`type = "pretrained"`, implied by `init_from`): the model
/// described by `DIR/config.json` (GPT-2, Llama, Qwen2, Mistral; see [`crate::hf::resolve`]),
/// starting from `DIR`'s weights. Only `dropout` may be given beside it (any other key is
/// refused by name: the architecture is the checkpoint's). A run resolves it into the concrete
/// config (`type = "llama"` or `"transformer"` with every key, and `init_from` kept), which is
/// what its `config.toml` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainedConfig {
    /// The transformers directory (the output of `save_pretrained`).
    pub init_from: PathBuf,
    /// Dropout for fine-tuning: GPT-2's residual, embedding and attention dropout, a Llama's
    /// attention dropout. Default: the directory's `config.json` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
}

#[typetag::serde(name = "pretrained")]
impl ModelConfig for PretrainedConfig {
    /// Builds the resolved model (random weights: the caller loads `init_from`'s with
    /// [`crate::hf::load_weights`]).
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
    ) -> Result<Box<dyn LanguageModel>, ModelError> {
        crate::hf::resolve(&self.init_from, self.dropout)?.build(path, context)
    }

    fn init_from(&self) -> Option<&std::path::Path> {
        Some(&self.init_from)
    }

    fn hf_format(&self) -> Option<Box<dyn crate::hf::HfFormat>> {
        crate::hf::resolve(&self.init_from, self.dropout)
            .ok()?
            .hf_format()
    }

    fn resolve(&self) -> Result<Option<Box<dyn ModelConfig>>, ModelError> {
        crate::hf::resolve(&self.init_from, self.dropout).map(Some)
    }
}
