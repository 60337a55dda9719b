//! A training loop composed by hand from the engine's own pieces, without the `Trainer`: a data
//! loader read by cursor (`perplex_data::Batches`), a model built for its context
//! (`perplex_model::ModelConfig::build` with a `BuildContext`), a loss picked by name
//! (`perplex_losses`), an optimiser with the global gradient norm (`perplex_optim`), the
//! trainer's evaluation (`perplex_trainer::evaluate`) and the model's own decoder for
//! generation.
//!
//! Run: `cargo xtask example custom_loop` (add `-- STEPS` to change the number of steps).
//! It trains a small character-level GRU on Tiny Shakespeare with label-smoothed cross-entropy
//! plus a z-loss, clipping gradients, reports validation perplexity before and after, and
//! greedily continues a prompt.
use anyhow::Result;
use perplex_data::{CharTokenizer, Cursor, DataConfig, LmData, Tokenizer, TokenizerKind};
use perplex_losses::{Loss, LossInput};
use perplex_model::{BuildContext, GruLmConfig, LanguageModel, ModelConfig};
use perplex_optim::{clip_grad_norm, AdamConfig, OptimizerConfig};
use tch::{nn, Device, Tensor};

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
    // Any loader will do: `data.loader = "random_windows"` gives independent windows instead.
    let train = data.train_loader(device, 0)?;
    let valid = data.valid_batches(device)?;

    // Model and optimiser over its named variables.
    let vs = nn::VarStore::new(device);
    let model = GruLmConfig {
        embedding_dim: 64,
        hidden_size: 256,
        ..Default::default()
    }
    .build(
        &vs.root(),
        &BuildContext::new(data.vocab.len() as i64)
            .with_seq_len(train.seq_len())
            .with_device(device),
    )?;
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
    for step in 0..steps {
        // Epochs are the loader's: the cursor says which epoch and which batch.
        let cursor = Cursor {
            epoch: 1 + (step / train.len()) as u64,
            index: step % train.len(),
        };
        let batch = train.get(cursor)?.expect("index < len()");
        if cursor.index == 0 || !train.carries_state() {
            state = model.initial_state(train.batch_size(), device);
        }
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
        if step % 50 == 0 {
            let terms: Vec<String> = result
                .metrics
                .iter()
                .map(|(n, v)| format!("{n} {:.4}", v.double_value(&[])))
                .collect();
            println!(
                "step {:>4} loss {:.4} ({})",
                step,
                result.loss.double_value(&[]),
                terms.join(", ")
            );
        }
    }
    println!(
        "validation perplexity after {steps} steps: {:.2}",
        perplexity(model.as_ref(), &valid, device)?
    );

    // Generation through the model's own decoder (recurrent carry for the GRU; a key/value
    // cache for a Transformer): greedy, 60 characters after a prompt.
    let prompt = "ROMEO:\n";
    let mut ids = data.vocab.encode(&CharTokenizer.tokenize(prompt));
    tch::no_grad(|| -> Result<()> {
        let mut decoder = model.decoder(1, device);
        let mut input = Tensor::from_slice(&ids).to_device(device).view([1, -1]);
        for _ in 0..60 {
            let next = decoder.feed(&input)?.argmax(-1, false).int64_value(&[0]);
            ids.push(next);
            input = Tensor::from_slice(&[next]).to_device(device).view([1, 1]);
        }
        Ok(())
    })?;
    let text: String = ids
        .iter()
        .map(|&i| data.vocab.token(i).unwrap_or("?"))
        .collect();
    println!("greedy sample: {text:?}");
    Ok(())
}

/// exp(mean NLL per character) over the validation split, without gradients: the trainer's own
/// evaluation (state carried across windows when the loader's windows continue each other).
fn perplexity(
    model: &dyn LanguageModel,
    batches: &perplex_data::BpttBatches,
    device: Device,
) -> Result<f64> {
    Ok(perplex_trainer::evaluate(model, batches, device, -100)?.perplexity)
}
