//! `perplex generate`: continue a prompt with a trained model.
use std::path::PathBuf;

use anyhow::{bail, Context};

use perplex_trainer::{parse_device, LoadedModel, SamplingOptions};

/// Arguments of `perplex generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A run directory or one of its checkpoint directories (`RUN/checkpoints/NAME`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue, tokenized with the run's tokenizer; empty starts a new line.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding (always the most likely token).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Nucleus sampling: only among the most likely tokens whose probabilities reach P (1: all).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "P",
        allow_negative_numbers = true
    )]
    pub top_p: f64,
    /// Random seed: the same seed, model, options and device give the same text.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: i64,
    /// Vocabulary ids never to generate (repeatable, or comma-separated).
    #[arg(
        long = "ban",
        value_name = "ID",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub ban: Vec<i64>,
    /// Tokens never to generate, by their text (repeatable; e.g. `--ban-token '<unk>'`).
    #[arg(long = "ban-token", value_name = "TOKEN")]
    pub ban_token: Vec<String>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sample all `--max-tokens` even past the end-of-text token (a pretrained model stops
    /// there by default, as transformers' `generate` does at `eos_token_id`).
    #[arg(long)]
    pub ignore_eos: bool,
    /// libtorch intra-op threads (as `trainer.threads`); default: libtorch's (the CPUs). On a
    /// busy machine fewer threads than CPUs can be much faster.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs `perplex generate`: the text (prompt and continuation) goes to stdout, notes to stderr.
///
/// # Errors
/// A checkpoint that cannot be loaded, a banned token not in the vocabulary, bad sampling
/// options.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n as i32);
    }
    let device = parse_device(&args.device)?;
    let model = LoadedModel::load(&args.checkpoint, device)
        .with_context(|| format!("loading the model in {}", args.checkpoint.display()))?;
    let mut banned_ids = args.ban.clone();
    for token in &args.ban_token {
        if !model.vocab.contains(token) {
            bail!(
                "--ban-token {token:?} is not in the vocabulary of {} ({} tokens)",
                args.checkpoint.display(),
                model.vocab.len()
            );
        }
        banned_ids.push(model.vocab.id(token));
    }
    let options = SamplingOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        banned_ids,
        stop_ids: if args.ignore_eos {
            Vec::new()
        } else {
            model.eos_ids()
        },
    };
    let generation = model.sample(&args.prompt, &options)?;
    if generation.prompt_unknown > 0 {
        eprintln!(
            "note: {} of the prompt's {} {}s are not in the vocabulary and were read as <unk>",
            generation.prompt_unknown,
            generation.prompt_ids.len(),
            model.tokenizer_kind().unit()
        );
    }
    if generation.prompt_cropped > 0 {
        let context = model.model.max_seq_len().unwrap_or(0);
        eprintln!(
            "warning: the prompt (with the line break read before it) is {} tokens, more than \
             the model reads (block_size = {context}): generation continues from its last \
             {context}, the first {} are not seen",
            generation.prompt_cropped + context as usize,
            generation.prompt_cropped
        );
    }
    let text = generation.text;
    if text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}
