//! Reading the golden fixtures of `tests/data` (made once by `tests/data/make_fixtures.py`).
use std::path::PathBuf;

use perplex_model::{BuildContext, LanguageModel, ModelConfig};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

/// A model saved by PyTorch, the input it was run on and what it gave.
pub struct Fixture {
    pub model: Box<dyn LanguageModel>,
    pub vs: nn::VarStore,
    /// int64 `[batch, seq]`.
    pub input: Tensor,
    doc: Value,
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

impl Fixture {
    /// Builds the `model_type` model of `NAME.json`'s config and loads `NAME.safetensors` into it.
    pub fn load(name: &str, model_type: &str) -> Self {
        let text = std::fs::read_to_string(path(&format!("{name}.json"))).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut config = doc["config"].as_object().unwrap().clone();
        let vocab_size = config.remove("vocab_size").unwrap().as_i64().unwrap();
        config.insert("type".into(), model_type.into());
        let config: Box<dyn ModelConfig> = serde_json::from_value(config.into()).unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = config
            .build(&vs.root(), &BuildContext::new(vocab_size))
            .unwrap();
        vs.load(path(&format!("{name}.safetensors"))).unwrap();
        let rows: Vec<Vec<i64>> = serde_json::from_value(doc["input"].clone()).unwrap();
        let input = Tensor::from_slice2(&rows);
        Self {
            model,
            vs,
            input,
            doc,
        }
    }

    /// The output `key` (`logits`, `h`, `c`) PyTorch computed, float64.
    pub fn expected(&self, key: &str) -> Tensor {
        let values: Vec<f64> = serde_json::from_value(self.doc[key]["values"].clone()).unwrap();
        let shape: Vec<i64> = serde_json::from_value(self.doc[key]["shape"].clone()).unwrap();
        Tensor::from_slice(&values).view(shape.as_slice())
    }
}

/// The largest absolute difference between two tensors of one shape, in float64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
