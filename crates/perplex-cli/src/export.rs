//! `perplex export --format hf`: a run (or checkpoint) as a transformers directory.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tch::Device;

use perplex_trainer::LoadedModel;

/// Arguments of `perplex export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A run directory or one of its checkpoint directories.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// `hf`: a Hugging Face transformers directory (`config.json`, `model.safetensors`,
    /// tokenizer files, `generation_config.json`) that `AutoModelForCausalLM.from_pretrained`
    /// loads.
    #[arg(long, default_value = "hf")]
    pub format: String,
    /// The directory to create (it must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// The tokenizer files of a transformers directory, copied from the one the run started from.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Runs `perplex export`.
///
/// # Errors
/// An unknown format, an `--out` that holds files, a run that cannot be loaded, a model type
/// without a transformers form (the recurrent models), a directory that cannot be written.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.format != "hf" {
        bail!("--format {}: expected `hf`", args.format);
    }
    let out = &args.out;
    if out.exists()
        && (!out.is_dir()
            || std::fs::read_dir(out)
                .with_context(|| format!("reading {}", out.display()))?
                .next()
                .is_some())
    {
        bail!(
            "{} exists and is not an empty directory: choose a new --out",
            out.display()
        );
    }
    let model = LoadedModel::load(&args.checkpoint, Device::Cpu)
        .with_context(|| format!("loading the model in {}", args.checkpoint.display()))?;
    let Some(format) = model.config.model.hf_format() else {
        let ty = serde_json::to_value(&model.config.model)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_else(|| "this type".into());
        bail!(
            "the model in {} (model.type = \"{ty}\") has no transformers form: perplex exports \
             its Transformer (as GPT2LMHeadModel) and its Llama (as LlamaForCausalLM or \
             Qwen2ForCausalLM)",
            args.checkpoint.display(),
        );
    };
    format.exportable().map_err(|m| anyhow::anyhow!("{m}"))?;
    // Written beside --out, renamed into place at the end: a failure leaves nothing behind.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".perplex-export-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    let dir = staging.path();
    perplex_model::hf::write_model(&model.vs, format.as_ref(), model.model.vocab_size(), dir)?;
    let notes = write_tokenizer(&model, dir)?;
    special_ids(&model, dir)?;
    if out.exists() {
        std::fs::remove_dir(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    let kept = staging.keep();
    std::fs::rename(&kept, out)
        .with_context(|| format!("moving {} to {}", kept.display(), out.display()))?;
    // The class config.json names (Qwen2ForCausalLM for a Llama with Qwen2's biases).
    let architecture = format.config_json(model.model.vocab_size())["architectures"][0]
        .as_str()
        .unwrap_or(format.architecture())
        .to_string();
    println!(
        "exported {} ({architecture}) to {}",
        args.checkpoint.display(),
        out.display()
    );
    let with_tokenizer = notes.is_empty();
    for n in notes {
        println!("note: {n}");
    }
    let dir = format!("{:?}", out.display().to_string());
    if with_tokenizer {
        println!(
            "load it with: AutoModelForCausalLM.from_pretrained({dir}) and \
             AutoTokenizer.from_pretrained({dir})"
        );
    } else {
        println!("load it with: AutoModelForCausalLM.from_pretrained({dir})");
    }
    Ok(())
}

/// The tokenizer files and `generation_config.json`: copied from the transformers directory
/// the run's tokenizer came from when there is one, else written from the run's
/// `tokenizer.json`. Returns notes for the user.
fn write_tokenizer(model: &LoadedModel, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    let Some(tokenizer) = model.vocab.hf_tokenizer() else {
        notes.push(format!(
            "the run's tokenizer (`{}`) is not a Hugging Face tokenizer, so no tokenizer files \
             were written; token ids are those of the run's vocab.json",
            format!("{:?}", model.tokenizer_kind()).to_lowercase()
        ));
        return Ok(notes);
    };
    tokenizer.save(&dir.join("tokenizer.json"))?;
    let source = model
        .hf_dir
        .clone()
        .or_else(|| model.config.model.init_from().map(Path::to_path_buf))
        .or_else(|| {
            model
                .config
                .data
                .tokenizer_file
                .as_ref()
                .and_then(|f| f.parent().map(Path::to_path_buf))
        });
    let mut copied = Vec::new();
    if let Some(src) = &source {
        for f in TOKENIZER_FILES {
            if src.join(f).is_file() {
                std::fs::copy(src.join(f), dir.join(f))
                    .with_context(|| format!("copying {}", src.join(f).display()))?;
                copied.push(*f);
            }
        }
    }
    let eot = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
        .into_iter()
        .find(|t| model.vocab.contains(t));
    if !copied.contains(&"tokenizer_config.json") {
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.model.max_seq_len().unwrap_or(1024),
        });
        if let Some(t) = eot {
            config["bos_token"] = serde_json::json!(t);
            config["eos_token"] = serde_json::json!(t);
        }
        write_json(&dir.join("tokenizer_config.json"), &config)?;
    }
    if !copied.contains(&"generation_config.json") {
        let id = eot.map(|t| model.vocab.id(t) as u32);
        write_json(
            &dir.join("generation_config.json"),
            &perplex_model::hf::generation_config(id, id),
        )?;
    }
    Ok(notes)
}

/// `bos_token_id` / `eos_token_id` (and `pad_token_id`) of `config.json`: those of the directory
/// the run started from, else the run's end-of-text token, else null (transformers' GPT-2
/// default, 50256, would point outside a smaller vocabulary).
fn special_ids(model: &LoadedModel, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(perplex_model::hf::CONFIG);
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let source = model
        .hf_dir
        .clone()
        .or_else(|| model.config.model.init_from().map(Path::to_path_buf))
        .map(|d| d.join(perplex_model::hf::CONFIG))
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let eot = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
        .into_iter()
        .find(|t| model.vocab.contains(t))
        .map(|t| serde_json::json!(model.vocab.id(t)))
        .unwrap_or(serde_json::Value::Null);
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        let value = match &source {
            Some(s) => s.get(key).cloned().unwrap_or(serde_json::Value::Null),
            None if key == "pad_token_id" => serde_json::Value::Null,
            None => eot.clone(),
        };
        config[key] = value;
    }
    write_json(&path, &config)
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
