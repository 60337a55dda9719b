//! A training loop composed by hand from perplex's crates, without the `Trainer`:
//! data (`perplex-data`), model (`perplex-model`), loss (`perplex-losses`) and optimiser
//! (`perplex-optim`).
//!
//! Run: `cargo xtask example custom_loop` (add `-- STEPS` to change the number of steps).
//! It trains a small character-level GRU on Tiny Shakespeare with label-smoothed cross-entropy
//! plus a z-loss, clipping gradients, and reports validation perplexity before and after.
use anyhow::Result;
use perplex_data::{DataConfig, LmData, TokenizerKind};
use perplex_losses::{Loss, LossInput};
use perplex_model::{BuildContext, GruLmConfig, LanguageModel, ModelConfig};
use perplex_optim::{clip_grad_norm, AdamConfig, OptimizerConfig};
use tch::{nn, Device, Kind, Tensor};

fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    tch::manual_seed(0);
    let device = Device::cuda_if_available();

    // Data: characters of Tiny Shakespeare, fetched into ./data if missing.
    let data = LmData::load(&DataConfig {
        tokenizer: TokenizerKind::Char,
        max_vocab_size: 0,
        batch_size: 32,
        seq_len: 64,
        ..DataConfig::default()
    })?;
    let train = data.train_batches(device)?;
    let valid = data.valid_batches(device)?;

    // Model and optimiser over its named variables.
    let vs = nn::VarStore::new(device);
    let model = GruLmConfig {
        embedding_dim: 64,
        hidden_size: 256,
        ..Default::default()
    }
    .build(&vs.root(), &BuildContext::new(data.vocab.len() as i64))?;
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = AdamConfig {
        lr: 3e-3,
        ..Default::default()
    }
    .build(params)?;

    // The objective is chosen like a config would: cross-entropy with smoothing + 1e-4 z-loss.
    let loss: Box<dyn Loss> = serde_json::from_value(serde_json::json!({
        "type": "weighted_sum",
        "terms": [
            {"weight": 1.0, "loss": {"type": "softmax_cross_entropy", "label_smoothing": 0.05}},
            {"weight": 1e-4, "loss": {"type": "z_loss"}}
        ]
    }))?;

    println!(
        "validation perplexity before: {:.2}",
        perplexity(model.as_ref(), &valid, device)?
    );
    let mut state = model.initial_state(train.batch_size(), device);
    for batch in train.iter().take(steps) {
        let out = model.forward(&batch.inputs, &state.detach(), true)?;
        let result = loss.forward(&LossInput::from_hidden(
            &out.hidden,
            &out.head.weight,
            out.head.bias.as_ref(),
            &batch.targets,
        ))?;
        opt.zero_grad();
        result.loss.backward();
        let _grad_norm = clip_grad_norm(opt.params(), 1.0)?;
        opt.step()?;
        state = out.state;
        if batch.index % 50 == 0 {
            let terms: Vec<String> = result
                .metrics
                .iter()
                .map(|(n, v)| format!("{n} {:.4}", v.double_value(&[])))
                .collect();
            println!(
                "step {:>4} loss {:.4} ({})",
                batch.index,
                result.loss.double_value(&[]),
                terms.join(", ")
            );
        }
    }
    println!(
        "validation perplexity after {steps} steps: {:.2}",
        perplexity(model.as_ref(), &valid, device)?
    );
    Ok(())
}

/// exp(mean NLL per character) over the validation split, without gradients.
fn perplexity(
    model: &dyn LanguageModel,
    batches: &perplex_data::BpttBatches,
    device: Device,
) -> Result<f64> {
    tch::no_grad(|| {
        let mut state = model.initial_state(batches.batch_size(), device);
        let (mut sum, mut count) = (0.0, 0.0);
        for b in batches.iter() {
            let out = model.forward(&b.inputs, &state, false)?;
            let input = LossInput::from_hidden(
                &out.hidden,
                &out.head.weight,
                out.head.bias.as_ref(),
                &b.targets,
            );
            let (s, c) = perplex_losses::metrics::nll_sum(&input, -100)?;
            sum += s.double_value(&[]);
            count += c.to_kind(Kind::Double).double_value(&[]);
            state = out.state;
        }
        Ok((sum / count).exp())
    })
}
