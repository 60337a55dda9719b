//! `perplex eval`: loss, perplexity and bits per token of a trained model on a split of its
//! corpus or on any text file, with the tokens it found most surprising.
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use tch::Tensor;

use perplex_trainer::{parse_device, LoadedModel, TokenLoss};

/// Arguments of `perplex eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A run directory or one of its checkpoint directories (`RUN/checkpoints/NAME`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// `valid` or `test` (the run's corpus, re-read from the paths in its config, relative to
    /// the working directory), or a UTF-8 text file to tokenize with the run's tokenizer and
    /// vocabulary (write `./valid` for a file of that name).
    #[arg(long, default_value = "valid")]
    pub split: String,
    /// Write `position<TAB>token<TAB>nll_nats` for every scored token to this TSV file
    /// (tokens escaped: `\n`, `\t`, `\r`, `\\`).
    #[arg(long, value_name = "OUT.tsv")]
    pub per_token: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch intra-op threads (as `trainer.threads`); default: libtorch's (the CPUs). On a
    /// busy machine fewer threads than CPUs can be much faster.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Independent streams the text is cut into (each starts from a fresh state); default: the
    /// run's evaluation batch size, lowered when the text is too short for it.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sliding-window perplexity (transformers' guide "Perplexity of fixed-length models"):
    /// windows of the model's context (`--max-length`) starting every N tokens, each token
    /// scored once with up to context - 1 tokens before it. Without it, the text is cut into
    /// `--batch-size` streams read in windows of the run's `seq_len`.
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    /// The window of `--stride`; default: the model's context (`block_size`,
    /// `n_positions`, `max_position_embeddings`), else the run's `seq_len`.
    #[arg(long, value_name = "TOKENS", requires = "stride")]
    pub max_length: Option<usize>,
    /// How many of the most surprising tokens to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// Runs `perplex eval`.
///
/// # Errors
/// A checkpoint that cannot be loaded, a split or file that cannot be read or is too short, a
/// per-token file that cannot be written.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    // Before any long work: the per-token file must be writable.
    if let Some(out) = &args.per_token {
        perplex_trainer::run_dir::check_writable_file(out).context("--per-token")?;
    }
    if let Some(n) = args.threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n as i32);
    }
    let device = parse_device(&args.device)?;
    let model = LoadedModel::load(&args.checkpoint, device)
        .with_context(|| format!("loading the model in {}", args.checkpoint.display()))?;
    if args.split == "test" {
        if let Some(why) = no_test_split(&model.config.data) {
            bail!(
                "the run in {} has no test split: {why}",
                args.checkpoint.display()
            );
        }
    }
    let (ids, what) = match args.split.as_str() {
        "valid" | "test" => {
            let ids = model
                .split_ids(&args.split)
                .with_context(|| format!("reading the {} split of the run's corpus", args.split))?;
            (ids, format!("{} split", args.split))
        }
        file => {
            let path = PathBuf::from(file);
            let text = perplex_data::corpus::read_text(&path).with_context(|| {
                format!("reading --split {file} (not `valid` or `test`, so a file)")
            })?;
            (model.encode(&text)?, path.display().to_string())
        }
    };
    let n = ids.size1()? as usize;
    if n < 2 {
        bail!("{what} has {n} token(s): at least 2 are needed to score one");
    }
    let data = &model.config.data;
    let seq_len = data.seq_len;
    if let Some(stride) = args.stride {
        let max_length = args.max_length.unwrap_or_else(|| {
            model
                .model
                .max_seq_len()
                .map_or(seq_len, |n| n.max(0) as usize)
        });
        let losses = model.strided_token_losses(&ids, max_length, stride)?;
        let scored = format!(
            "{what}: {} of {n} {}s (windows of {max_length}, stride {stride})",
            losses.len(),
            model.tokenizer_kind().unit()
        );
        return report(&model, &ids, &losses, &scored, &args);
    }
    let wanted = args
        .batch_size
        .unwrap_or(data.eval_batch_size.unwrap_or(data.batch_size));
    if wanted == 0 {
        bail!("--batch-size must be at least 1");
    }
    // The text is cut into `batch_size` streams (PyTorch word_language_model's `batchify`):
    // each stream's first token is never a target and the tail that does not fill a stream is
    // dropped, so up to 2 x batch_size tokens go unscored. With at least one window
    // (`seq_len` + 1 tokens) per stream that is at most ~2/(seq_len + 1) of the text; more
    // streams than that would leave most of a short text unscored.
    let batch_size = wanted.min(n / (seq_len + 1)).max(1);
    if batch_size < wanted {
        eprintln!(
            "note: {what} has {n} tokens, too few for {wanted} streams of a {seq_len}-token window; scoring it as {batch_size}"
        );
    }
    let losses = model.token_losses(&ids, batch_size, seq_len)?;
    let scored = format!(
        "{what}: {} of {n} {}s ({batch_size} stream{} x windows of {seq_len})",
        losses.len(),
        model.tokenizer_kind().unit(),
        if batch_size == 1 { "" } else { "s" },
    );
    report(&model, &ids, &losses, &scored, &args)
}

/// Prints the scores of `losses` (and the surprises, the per-token file).
fn report(
    model: &LoadedModel,
    ids: &Tensor,
    losses: &[TokenLoss],
    scored: &str,
    args: &EvalArgs,
) -> anyhow::Result<()> {
    let n = ids.size1()? as usize;
    let unit = model.tokenizer_kind().unit();
    let unk = model.vocab.unk_id();
    let unknown = Vec::<i64>::try_from(ids)?
        .iter()
        .filter(|&&i| Some(i) == unk)
        .count();

    let sum: f64 = losses.iter().map(|t| t.nll).sum();
    let count = losses.len();
    let loss = sum / count.max(1) as f64;
    println!("checkpoint   {}", model.weights.display());
    println!(
        "scored       {scored}, {:.2}% <unk>",
        100.0 * unknown as f64 / n as f64
    );
    println!();
    let rows = [
        (format!("loss (nats per {unit})"), format!("{loss:.4}")),
        ("perplexity".to_string(), format!("{:.2}", loss.exp())),
        (
            format!("bits per {unit}"),
            format!("{:.4}", loss / std::f64::consts::LN_2),
        ),
    ];
    println!("{:<26} {:>10}", "metric", "value");
    println!("{:<26} {:>10}", "-".repeat(26), "-".repeat(10));
    for (k, v) in &rows {
        println!("{k:<26} {v:>10}");
    }

    if args.top > 0 {
        println!();
        print!("{}", surprising(model, ids, losses, args.top)?);
    }
    if let Some(out) = &args.per_token {
        let mut tsv = String::from("position\ttoken\tnll_nats\n");
        for t in losses {
            let token = model.vocab.token(t.id).unwrap_or("<unk>");
            writeln!(tsv, "{}\t{}\t{:.6}", t.position, escape(token), t.nll)?;
        }
        perplex_trainer::run_dir::write_atomically(out, tsv.as_bytes())?;
        println!();
        println!("per-token losses: {} ({count} rows)", out.display());
    }
    Ok(())
}

/// Why a run's data config gives no test split (with what to do instead), or `None` when it
/// gives one.
fn no_test_split(data: &perplex_data::DataConfig) -> Option<String> {
    if data.train.is_some() {
        return data.test.is_none().then(|| {
            "its config reads the corpus from separate files (data.train, data.valid) and names \
             no data.test; use --split valid, or score a text file: --split FILE"
                .to_string()
        });
    }
    (data.splits.len() < 3).then(|| {
        let splits: Vec<String> = data.splits.iter().map(|f| format!("{f}")).collect();
        format!(
            "its config splits the corpus as [{}] (train, valid); use --split valid, or train \
             with data.splits = [0.8, 0.1, 0.1] for a test split",
            splits.join(", ")
        )
    })
}

/// A table of the `top` tokens with the highest NLL, with the text before each.
fn surprising(
    model: &LoadedModel,
    ids: &Tensor,
    losses: &[TokenLoss],
    top: usize,
) -> anyhow::Result<String> {
    let all = Vec::<i64>::try_from(ids)?;
    let mut worst: Vec<&TokenLoss> = losses.iter().collect();
    worst.sort_by(|a, b| b.nll.total_cmp(&a.nll));
    worst.truncate(top);
    let context_tokens = match model.tokenizer_kind() {
        perplex_data::TokenizerKind::Word | perplex_data::TokenizerKind::Whitespace => 6,
        perplex_data::TokenizerKind::Bpe => 8,
        perplex_data::TokenizerKind::Char => 24,
    };
    let tokenizer = model.tokenizer()?;
    let mut s = String::new();
    writeln!(s, "most surprising {}s:", model.tokenizer_kind().unit())?;
    writeln!(
        s,
        "{:>4} {:>9} {:>10} {:>8}  {:<16} context",
        "rank", "position", "nll (nats)", "p", "token"
    )?;
    for (rank, t) in worst.iter().enumerate() {
        let from = t.position.saturating_sub(context_tokens);
        let before: Vec<&str> = all[from..t.position]
            .iter()
            .map(|&i| model.vocab.token(i).unwrap_or("<unk>"))
            .collect();
        let token = model.vocab.token(t.id).unwrap_or("<unk>");
        writeln!(
            s,
            "{:>4} {:>9} {:>10.3} {:>8.1e}  {:<16} …{}",
            rank + 1,
            t.position,
            t.nll,
            (-t.nll).exp(),
            format!("{token:?}"),
            escape(&tokenizer.detokenize(&before)),
        )?;
    }
    Ok(s)
}

/// A token made safe for one TSV cell or one line of a table.
fn escape(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for c in token.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_test_split_names_the_splits_there_are() {
        let mut data = perplex_data::DataConfig {
            splits: vec![0.9, 0.1],
            ..Default::default()
        };
        let why = no_test_split(&data).unwrap();
        assert!(
            why.contains("[0.9, 0.1] (train, valid)") && why.contains("--split valid"),
            "{why}"
        );
        data.splits = vec![0.8, 0.1, 0.1];
        assert_eq!(no_test_split(&data), None);
        data.train = Some("train.txt".into());
        data.valid = Some("valid.txt".into());
        assert!(no_test_split(&data).unwrap().contains("data.test"));
        data.test = Some("test.txt".into());
        assert_eq!(no_test_split(&data), None);
    }

    #[test]
    fn escaping_keeps_one_token_per_cell() {
        assert_eq!(escape("a\tb\nc\\"), "a\\tb\\nc\\\\");
        assert_eq!(escape("word"), "word");
    }
}
