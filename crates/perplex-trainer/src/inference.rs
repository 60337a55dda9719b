//! Using a trained model: load a run or checkpoint directory, score text, generate text.
//!
//! A run directory holds `config.toml`, `vocab.json` (with `tokenizer.json` for
//! `tokenizer = "bpe"`) and `model.safetensors`; a checkpoint directory
//! (`RUN/checkpoints/<name>/`) holds its own `model.safetensors` and shares the run's config,
//! vocabulary and tokenizer, which [`LoadedModel::load`] finds two levels above it (only
//! there: another directory never borrows its parents' files).
use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

use std::sync::Arc;

use perplex_data::{
    batch::ids_to_tensor, BpttBatches, LmData, Tokenizer, TokenizerKind, Vocabulary, WordTokenizer,
};
use perplex_model::{BuildContext, LanguageModel};

use crate::sampling::{Sampler, SamplingOptions};
use crate::{evaluate, EvalStats, RunConfig, TrainerError};

use crate::run_dir::files::{CONFIG, VOCAB, WEIGHTS};

/// How many directories above a checkpoint directory `config.toml` and `vocab.json` may be:
/// `RUN/checkpoints/<name>/` is two below `RUN/`.
const MAX_LEVELS_UP: usize = 2;

/// A trained model ready for evaluation and generation, rebuilt from its run's files.
#[derive(Debug)]
pub struct LoadedModel {
    /// The run's resolved config (`config.toml`).
    pub config: RunConfig,
    /// The run's vocabulary (`vocab.json`; with the run's `tokenizer.json` for `bpe`).
    pub vocab: Vocabulary,
    /// The model's variables, loaded from `model.safetensors`.
    pub vs: nn::VarStore,
    /// The model, built from `config.model`.
    pub model: Box<dyn LanguageModel>,
    /// Where the model runs.
    pub device: Device,
    /// The weights file that was loaded.
    pub weights: PathBuf,
    /// The transformers directory the model was read from, when `--checkpoint` named one
    /// (not a run): its text is not read after a line break, as transformers' `generate` does.
    pub hf_dir: Option<PathBuf>,
}

/// The negative log-likelihood of one scored token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLoss {
    /// Index of the token in the scored stream (from 0; the first token of each of the
    /// `batch_size` columns is context only and never scored).
    pub position: usize,
    /// The token's vocabulary id.
    pub id: i64,
    /// `-ln p(token | everything before it in its column)`, nats.
    pub nll: f64,
}

/// What [`LoadedModel::sample`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt's ids as fed to the model (unknown tokens get the unknown id).
    pub prompt_ids: Vec<i64>,
    /// Prompt tokens that are not in the vocabulary.
    pub prompt_unknown: usize,
    /// Tokens at the start of what was read (the line break and the prompt) that a model with a
    /// bounded context ([`LanguageModel::max_seq_len`], a Transformer's `block_size`) never saw:
    /// it reads only the last `max_seq_len` tokens. 0 when everything fits.
    pub prompt_cropped: usize,
    /// The generated ids: `max_tokens` of them, fewer when one of
    /// [`SamplingOptions::stop_ids`] ended generation (that id is the last).
    pub ids: Vec<i64>,
    /// Prompt and continuation as text ([`perplex_data::Tokenizer::detokenize`]).
    pub text: String,
}

impl LoadedModel {
    /// Loads the model in `dir`, a run directory or a checkpoint directory: `model.safetensors`
    /// from `dir`, `config.toml` and `vocab.json` from `dir` or one of its two parents.
    ///
    /// # Errors
    /// [`TrainerError::Io`] naming the missing directory or file (or the weights file whose
    /// variables do not match the model the config describes), [`TrainerError::Config`] for an
    /// unreadable config, [`TrainerError::Data`] for an unreadable vocabulary.
    pub fn load(dir: &Path, device: Device) -> Result<Self, TrainerError> {
        if perplex_model::hf::is_hf_dir(dir) {
            return Self::load_hf(dir, device);
        }
        if !dir.is_dir() {
            return Err(TrainerError::Io {
                path: dir.to_path_buf(),
                message: "no such directory (expected a run directory or a checkpoint directory \
                          holding model.safetensors)"
                    .into(),
            });
        }
        let weights = dir.join(WEIGHTS);
        if !weights.is_file() {
            return Err(TrainerError::Io {
                path: weights,
                message: "file not found (has the run finished an epoch or saved a checkpoint?)"
                    .into(),
            });
        }
        let config_path = find_upwards(dir, CONFIG)?;
        let vocab_path = find_upwards(dir, VOCAB)?;
        let config = RunConfig::load(Some(&config_path), &[])?;
        let vocab = Vocabulary::load(&vocab_path)?;
        let mut vs = nn::VarStore::new(device);
        let context = BuildContext::new(vocab.len() as i64)
            .with_seq_len(config.data.seq_len as i64)
            .with_device(device);
        let model = config.model.build(&vs.root(), &context)?;
        // The dtype the run trained in (float64 for `precision = "f64"`), which the weights
        // file holds.
        config.trainer.precision.convert(&mut vs);
        let model_of = format!(
            "the model of {} with the {} tokens of {}",
            config_path.display(),
            vocab.len(),
            vocab_path.display()
        );
        load_weights(&mut vs, &weights, &model_of)?;
        Ok(Self {
            config,
            vocab,
            vs,
            model,
            device,
            weights,
            hf_dir: None,
        })
    }

    /// Loads a transformers directory (the output of `save_pretrained`: `config.json`, the
    /// safetensors weights, `tokenizer.json`) as a model of perplex: the config read by
    /// [`perplex_model::hf::resolve`], the weights by [`perplex_model::hf::load_weights`]
    /// (float32), the directory's tokenizer. Windows are the model's context
    /// (`data.seq_len` = `n_positions` / `max_position_embeddings`); there is no corpus, so
    /// [`LoadedModel::split_ids`] refuses `valid` and `test`.
    ///
    /// # Errors
    /// [`TrainerError::Model`] naming the file and key or tensor; [`TrainerError::Config`] for a
    /// directory without `tokenizer.json`; [`TrainerError::Data`] for an unreadable tokenizer.
    pub fn load_hf(dir: &Path, device: Device) -> Result<Self, TrainerError> {
        let tokenizer_file = dir.join("tokenizer.json");
        if !tokenizer_file.is_file() {
            return Err(TrainerError::Io {
                path: tokenizer_file,
                message: "file not found: perplex reads and writes the text of a transformers \
                          directory with its tokenizer.json (save it with the model: \
                          tokenizer.save_pretrained(DIR))"
                    .into(),
            });
        }
        let mut config = RunConfig {
            // Inference: no dropout, whatever the checkpoint trained with.
            model: Box::new(perplex_model::PretrainedConfig {
                init_from: dir.to_path_buf(),
                dropout: Some(0.0),
            }),
            ..RunConfig::default()
        };
        config.resolve_pretrained(false)?;
        let file = config
            .data
            .tokenizer_file
            .clone()
            .expect("resolve_pretrained sets the tokenizer");
        let tokenizer = perplex_data::HfTokenizer::from_file(&file)?;
        let vocab = Vocabulary::from_hf(Arc::new(tokenizer))?;
        let vs = nn::VarStore::new(device);
        let context = BuildContext::new(vocab.len() as i64).with_device(device);
        let model = config.model.build(&vs.root(), &context)?;
        let format = config
            .model
            .hf_format()
            .expect("a resolved transformers config has a format");
        let report = perplex_model::hf::load_weights(&vs, format.as_ref(), dir)?;
        tracing::info!(
            dir = %dir.display(),
            architecture = format.architecture(),
            parameters = report.parameters,
            "transformers model loaded"
        );
        if let Some(n) = model.max_seq_len() {
            config.data.seq_len = n as usize;
        }
        config.data.path = None;
        let weights = [perplex_model::hf::WEIGHTS, perplex_model::hf::INDEX]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .unwrap_or_else(|| dir.join(perplex_model::hf::WEIGHTS));
        Ok(Self {
            config,
            vocab,
            vs,
            model,
            device,
            weights,
            hf_dir: Some(dir.to_path_buf()),
        })
    }

    /// The end-of-text ids of a pretrained model (a transformers directory, or a run started
    /// from one): `eos_token_id` of its `generation_config.json`, else of its `config.json` (one
    /// id or a list). Empty for a model trained from scratch, or a directory that names none.
    pub fn eos_ids(&self) -> Vec<i64> {
        let Some(dir) = self
            .hf_dir
            .clone()
            .or_else(|| self.config.model.init_from().map(Path::to_path_buf))
        else {
            return Vec::new();
        };
        for file in ["generation_config.json", "config.json"] {
            let Some(json) = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            else {
                continue;
            };
            let ids: Vec<i64> = match json.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_i64()).collect(),
                _ => continue,
            };
            return ids;
        }
        Vec::new()
    }

    /// The NLL of every token of `ids` (int64 `[n]`) but the first, by the sliding-window
    /// method of transformers' guide "Perplexity of fixed-length models": windows of
    /// `max_length` tokens starting every `stride` tokens; a window scores only the tokens that
    /// no earlier window scored, each with all the window's tokens before it as context (up to
    /// `max_length - 1`). `stride = max_length` is disjoint windows; `stride = 1` gives every
    /// token a full context. Sorted by position.
    ///
    /// (The guide's loop weights each window's mean loss by its new targets minus one, a count
    /// that is exact only for disjoint windows; this sums the per-token NLLs, so every scored
    /// token counts once.)
    ///
    /// # Errors
    /// [`TrainerError::Config`] for a zero `stride` or `max_length` below 2, or a `stride` above
    /// `max_length` (tokens would go unscored); model errors.
    pub fn strided_token_losses(
        &self,
        ids: &Tensor,
        max_length: usize,
        stride: usize,
    ) -> Result<Vec<TokenLoss>, TrainerError> {
        if max_length < 2 {
            return Err(TrainerError::Config {
                source_name: "--max-length".into(),
                message: format!(
                    "{max_length}: a window needs at least 2 tokens (one to read, one to score)"
                ),
            });
        }
        if let Some(limit) = self.model.max_seq_len() {
            if max_length as i64 > limit {
                return Err(TrainerError::Config {
                    source_name: "--max-length".into(),
                    message: format!("{max_length}: the model reads at most {limit} positions"),
                });
            }
        }
        if stride == 0 || stride > max_length {
            return Err(TrainerError::Config {
                source_name: "--stride".into(),
                message: format!(
                    "{stride} with windows of {max_length} tokens: expected 1 <= stride <= \
                     {max_length} (tokens between windows would go unscored)"
                ),
            });
        }
        let n = ids.size1()? as usize;
        let all = Vec::<i64>::try_from(ids)?;
        let mut out = Vec::with_capacity(n.saturating_sub(1));
        let mut scored_to = 1; // position 0 has no context
        let mut begin = 0;
        self.with_run_precision(|| {
            tch::no_grad(|| -> Result<(), TrainerError> {
                while scored_to < n {
                    let end = (begin + max_length).min(n);
                    let window = ids
                        .f_narrow(0, begin as i64, (end - begin) as i64)?
                        .f_to_device(self.device)?
                        .f_view([1, -1])?;
                    let state = self.model.initial_state(1, self.device);
                    let logits = self.model.forward(&window, &state, false)?.logits();
                    let kind = match logits.kind() {
                        Kind::Double => Kind::Double,
                        _ => Kind::Float,
                    };
                    // Logits at window position j predict the token at begin + j + 1; a
                    // window's first token has no context in it (disjoint windows leave it
                    // unscored, as the guide does).
                    let from = scored_to.max(begin + 1);
                    let (first, count) = (from - begin - 1, end - from);
                    let targets = ids
                        .f_narrow(0, from as i64, count as i64)?
                        .f_to_device(self.device)?;
                    let nll = logits
                        .f_select(0, 0)?
                        .f_narrow(0, first as i64, count as i64)?
                        .f_to_kind(kind)?
                        .f_cross_entropy_loss(
                            &targets,
                            None::<Tensor>,
                            tch::Reduction::None,
                            -100,
                            0.0,
                        )?;
                    let nll = Vec::<f64>::try_from(
                        nll.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?,
                    )?;
                    for (k, loss) in nll.into_iter().enumerate() {
                        let position = from + k;
                        out.push(TokenLoss {
                            position,
                            id: all[position],
                            nll: loss,
                        });
                    }
                    scored_to = end;
                    begin += stride;
                }
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// The run's tokenizer (`[data] tokenizer`).
    pub fn tokenizer_kind(&self) -> TokenizerKind {
        self.config.data.tokenizer
    }

    /// The run's tokenizer itself: the rule-based one, or for `bpe` the run's own
    /// `tokenizer.json` (loaded with `vocab.json`).
    ///
    /// # Errors
    /// [`TrainerError::Data`] for a `bpe` run whose `vocab.json` names no tokenizer.
    pub fn tokenizer(&self) -> Result<Arc<dyn Tokenizer>, TrainerError> {
        Ok(self.tokenizer_kind().for_vocab(&self.vocab)?)
    }

    /// Tokenizes `text` with the run's tokenizer and encodes it with the run's vocabulary:
    /// int64 `[n]` on the CPU, unknown tokens as the unknown id (`<unk>`, 0, at word level).
    /// A Hugging Face tokenizer's ids are its own.
    ///
    /// # Errors
    /// As [`LoadedModel::tokenizer`].
    pub fn encode(&self, text: &str) -> Result<Tensor, TrainerError> {
        let tokens = self.tokenizer()?.tokenize(text);
        Ok(ids_to_tensor(&self.vocab.encode(&tokens)))
    }

    /// The ids of a split of the run's corpus (`valid` or `test`), re-read and re-tokenized from
    /// the paths in the run's config (relative paths are relative to the working directory), in
    /// the run's vocabulary.
    ///
    /// # Errors
    /// [`TrainerError::Config`] for another split name or a corpus without a test split;
    /// [`TrainerError::Data`] when the corpus cannot be read.
    pub fn split_ids(&self, split: &str) -> Result<Tensor, TrainerError> {
        if let Some(dir) = &self.hf_dir {
            return Err(TrainerError::Config {
                source_name: "split".into(),
                message: format!(
                    "{} is a transformers directory, not a run: it has no `{split}` split; \
                     score a text file with --split FILE",
                    dir.display()
                ),
            });
        }
        if self.config.data.prepared.is_some() {
            // Token files made with the run's vocabulary (checked when they are opened).
            let data = perplex_data::PreparedData::open(&self.config.data)?;
            if data.vocab != self.vocab {
                return Err(TrainerError::Config {
                    source_name: "data.prepared".into(),
                    message: "the token files were made with another vocabulary than the run's \
                              vocab.json"
                        .into(),
                });
            }
            return match data.split_ids(split) {
                Some(ids) => Ok(ids?),
                None => Err(TrainerError::Config {
                    source_name: "split".into(),
                    message: format!(
                        "no `{split}` split in {}: expected `valid`, or `test` when the corpus \
                         was prepared with a test split",
                        self.config
                            .data
                            .prepared
                            .as_deref()
                            .unwrap_or(std::path::Path::new("."))
                            .display()
                    ),
                }),
            };
        }
        let data = LmData::load_with_vocab(&self.config.data, Some(self.vocab.clone()))?;
        let ids = match split {
            "valid" => data.valid.shallow_clone(),
            "test" => data
                .test
                .as_ref()
                .map(Tensor::shallow_clone)
                .ok_or_else(|| TrainerError::Config {
                    source_name: "[data]".into(),
                    message: format!(
                        "the run's corpus has no test split (splits = {:?}; give 3 fractions \
                         or a `test` file)",
                        self.config.data.splits
                    ),
                })?,
            other => {
                return Err(TrainerError::Config {
                    source_name: "split".into(),
                    message: format!("unknown split `{other}`: expected `valid` or `test`"),
                })
            }
        };
        // The corpus rebuilds its vocabulary from the training split; map its ids to the run's
        // own, so that a corpus edited since training is still scored in the model's vocabulary.
        if data.vocab == self.vocab {
            return Ok(ids);
        }
        tracing::warn!(
            "the corpus now gives a different vocabulary than the run's vocab.json; \
             mapping its tokens to the run's ids"
        );
        let map: Vec<i64> = data
            .vocab
            .tokens()
            .iter()
            .map(|t| self.vocab.id(t))
            .collect();
        Ok(ids_to_tensor(&map).f_index_select(0, &ids)?)
    }

    /// BPTT windows over `ids` (int64 `[n]`) for evaluation: `batch_size` columns read
    /// `seq_len` tokens at a time, the last window possibly shorter.
    ///
    /// # Errors
    /// [`TrainerError::Data`] when `ids` cannot fill two tokens per column.
    pub fn batches(
        &self,
        ids: &Tensor,
        batch_size: usize,
        seq_len: usize,
        name: &str,
    ) -> Result<BpttBatches, TrainerError> {
        Ok(BpttBatches::new(
            ids,
            batch_size,
            seq_len,
            false,
            name,
            self.device,
        )?)
    }

    /// Runs `f` under the run's `trainer.precision`: bf16 autocast for a bf16 run, as the
    /// trainer's validation does, so that scores match the ones logged in training.
    fn with_run_precision<T>(&self, f: impl FnOnce() -> T) -> T {
        self.config.trainer.precision.scope(self.device, f)
    }

    /// Mean NLL, perplexity and bits per token of the model on `batches`, exactly as the trainer
    /// validates ([`evaluate`]; under bf16 autocast for a run trained with `precision = "bf16"`).
    ///
    /// # Errors
    /// Model and loss errors.
    pub fn evaluate(&self, batches: &BpttBatches) -> Result<EvalStats, TrainerError> {
        let ignore_index = self.config.loss.ignore_index();
        self.with_run_precision(|| {
            evaluate(self.model.as_ref(), batches, self.device, ignore_index)
        })
    }

    /// The NLL of every scored token of `ids` (int64 `[n]`), read as [`LoadedModel::batches`]
    /// cuts it, the hidden state carried from window to window; sorted by position. The mean of
    /// the `nll`s is [`LoadedModel::evaluate`]'s loss on the same batches.
    ///
    /// # Errors
    /// [`TrainerError::Data`] when `ids` is too short for `batch_size`; model errors.
    pub fn token_losses(
        &self,
        ids: &Tensor,
        batch_size: usize,
        seq_len: usize,
    ) -> Result<Vec<TokenLoss>, TrainerError> {
        let batches = self.batches(ids, batch_size, seq_len, "scored text")?;
        let columns = ids.size1()? as usize / batch_size;
        let mut out = Vec::with_capacity(batches.tokens_per_pass());
        self.with_run_precision(|| {
            tch::no_grad(|| -> Result<(), TrainerError> {
                let mut state = self.model.initial_state(batches.batch_size(), self.device);
                for batch in batches.iter() {
                    let result = self.model.forward(&batch.inputs, &state, false)?;
                    let logits = result.logits();
                    let vocab = logits.size()[2];
                    // float32 for bf16 logits, as the losses do; a float64 model's stay float64.
                    let kind = match logits.kind() {
                        Kind::Double => Kind::Double,
                        _ => Kind::Float,
                    };
                    let nll = logits
                        .f_view([-1, vocab])?
                        .f_to_kind(kind)?
                        .f_cross_entropy_loss(
                            &batch.targets.f_reshape([-1])?,
                            None::<Tensor>,
                            tch::Reduction::None,
                            -100,
                            0.0,
                        )?;
                    let nll = Vec::<f64>::try_from(
                        nll.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?,
                    )?;
                    let targets = Vec::<i64>::try_from(
                        batch.targets.f_reshape([-1])?.f_to_device(Device::Cpu)?,
                    )?;
                    let len = batch.targets.size()[1] as usize;
                    let start = batch.index * seq_len;
                    for (k, (&id, &loss)) in targets.iter().zip(&nll).enumerate() {
                        let (row, t) = (k / len, k % len);
                        out.push(TokenLoss {
                            position: row * columns + start + t + 1,
                            id,
                            nll: loss,
                        });
                    }
                    state = result.state;
                }
                Ok(())
            })
        })?;
        out.sort_by_key(|t| t.position);
        Ok(out)
    }

    /// Continues `prompt` and returns prompt and continuation as text; see
    /// [`LoadedModel::sample`].
    ///
    /// # Errors
    /// As [`LoadedModel::sample`].
    pub fn generate(
        &self,
        prompt: &str,
        options: &SamplingOptions,
    ) -> Result<String, TrainerError> {
        Ok(self.sample(prompt, options)?.text)
    }

    /// Continues `prompt` by `options.max_tokens` tokens.
    ///
    /// The prompt is tokenized with the run's tokenizer (at word level the `<eos>` the tokenizer
    /// adds after the last line is dropped, so generation continues the prompt's last line) and
    /// run through the model after a line break (`<eos>` or `\n`, when the vocabulary has it and
    /// the prompt does not start with one), so that the prompt starts a line as text in the
    /// corpus does; each next token is then drawn as [`SamplingOptions`] says and fed back.
    ///
    /// # Errors
    /// [`TrainerError::Config`] for a negative or non-finite temperature, a `top_p` outside
    /// `(0, 1]`, a banned id outside the vocabulary, every id banned, or an empty prompt when the
    /// vocabulary has no line break; model errors.
    pub fn sample(
        &self,
        prompt: &str,
        options: &SamplingOptions,
    ) -> Result<Generation, TrainerError> {
        // Refuse bad options before reading the prompt.
        let sampler = Sampler::new(options, self.vocab.len() as i64, self.device)?;
        let kind = self.tokenizer_kind();
        let tokenizer = self.tokenizer()?;
        let mut prompt_tokens = tokenizer.tokenize(prompt);
        if matches!(kind, TokenizerKind::Word | TokenizerKind::Whitespace)
            && prompt_tokens.last().map(String::as_str) == Some(WordTokenizer::EOS)
        {
            prompt_tokens.pop();
        }
        let prompt_unknown = prompt_tokens
            .iter()
            .filter(|t| !self.vocab.contains(t))
            .count();
        let prompt_ids = self.vocab.encode(&prompt_tokens);
        // The model is read a line break before the prompt (not part of the text): it was
        // trained on states carried through the corpus and continues a prompt read from a zero
        // state poorly (greedy decoding of a word-level GRU after "The king" gives rare words,
        // after "<eos> The king" a plausible line).
        let line_break = match kind {
            TokenizerKind::Word | TokenizerKind::Whitespace => WordTokenizer::EOS.to_string(),
            TokenizerKind::Char => "\n".to_string(),
            // The tokenizer's spelling of a newline (`Ċ` in a byte-level BPE).
            TokenizerKind::Bpe => tokenizer.tokenize("\n").concat(),
        };
        let line_break = line_break.as_str();
        let mut feed = Vec::with_capacity(prompt_ids.len() + 1);
        // A pretrained model (a transformers directory, or a run started from one) reads the
        // prompt as transformers' `generate` does, with nothing before it.
        let pretrained = self.hf_dir.is_some() || self.config.model.init_from().is_some();
        if !pretrained
            && self.vocab.contains(line_break)
            && prompt_tokens.first().map(String::as_str) != Some(line_break)
        {
            feed.push(self.vocab.id(line_break));
        }
        feed.extend_from_slice(&prompt_ids);
        if feed.is_empty() && pretrained {
            return Err(TrainerError::Config {
                source_name: "prompt".into(),
                message: "the prompt is empty: give a prompt (a pretrained model's text starts \
                          where the prompt does)"
                    .into(),
            });
        }
        if feed.is_empty() {
            return Err(TrainerError::Config {
                source_name: "prompt".into(),
                message: format!(
                    "the prompt is empty and the vocabulary has no {line_break:?} to start from: give a prompt"
                ),
            });
        }
        let prompt_cropped = self
            .model
            .max_seq_len()
            .map_or(0, |n| feed.len().saturating_sub(n.max(0) as usize));
        let ids = tch::no_grad(|| self.sample_ids(&feed, options, sampler))?;
        let mut tokens: Vec<&str> = prompt_tokens.iter().map(String::as_str).collect();
        tokens.extend(
            ids.iter()
                .map(|&i| self.vocab.token(i).unwrap_or(Vocabulary::UNK)),
        );
        Ok(Generation {
            prompt_ids,
            prompt_unknown,
            prompt_cropped,
            text: tokenizer.detokenize(&tokens),
            ids,
        })
    }

    /// The sampling loop (under `no_grad`): `feed` must be non-empty.
    fn sample_ids(
        &self,
        feed: &[i64],
        options: &SamplingOptions,
        mut sampler: Sampler,
    ) -> Result<Vec<i64>, TrainerError> {
        let input = ids_to_tensor(feed)
            .f_to_device(self.device)?
            .f_view([1, -1])?;
        let mut decoder = self.model.decoder(1, self.device);
        let mut logits = decoder.feed(&input)?.f_select(0, 0)?;
        let mut out = Vec::with_capacity(options.max_tokens);
        for i in 0..options.max_tokens {
            let next = sampler.next(&logits)?;
            out.push(next);
            if i + 1 == options.max_tokens || options.stop_ids.contains(&next) {
                break;
            }
            let input = Tensor::from_slice(&[next])
                .f_to_device(self.device)?
                .f_view([1, 1])?;
            logits = decoder.feed(&input)?.f_select(0, 0)?;
        }
        Ok(out)
    }
}

/// Copies the tensors of the safetensors file `weights` into the variables of `vs`, after
/// checking that each variable is in the file with the variable's shape and dtype; `model_of` says which
/// model the variables belong to. Errors name the file, the tensor and both shapes, never
/// libtorch's backtrace (usable wherever weights are loaded, e.g. when resuming).
pub(crate) fn load_weights(
    vs: &mut nn::VarStore,
    weights: &Path,
    model_of: &str,
) -> Result<(), TrainerError> {
    let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(weights)
        .map_err(|e| TrainerError::io(weights, e))?
        .into_iter()
        .collect();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mismatch = |message: String| TrainerError::Io {
        path: weights.to_path_buf(),
        message: format!("the weights do not fit {model_of}: {message}"),
    };
    for (name, var) in &variables {
        let Some(tensor) = saved.get(name) else {
            return Err(mismatch(format!(
                "the file has no tensor `{name}` (it holds {})",
                names(saved.keys())
            )));
        };
        if tensor.size() != var.size() {
            return Err(mismatch(format!(
                "tensor `{name}` has shape {:?} in the file, the model expects {:?}",
                tensor.size(),
                var.size()
            )));
        }
        if tensor.kind() != var.kind() {
            return Err(mismatch(format!(
                "tensor `{name}` is {:?} in the file, the model's variables are {:?} \
                 (trainer.precision decides: \"f64\" trains and loads Double, \"f32\" and \
                 \"bf16\" Float)",
                tensor.kind(),
                var.kind()
            )));
        }
    }
    // A tensor the model has no variable for would be dropped silently (a separate output head
    // loaded into a model whose head is tied to its embedding): refused, named.
    let mut extra: Vec<&String> = saved
        .keys()
        .filter(|k| !variables.iter().any(|(n, _)| n == *k))
        .collect();
    extra.sort();
    if !extra.is_empty() {
        return Err(mismatch(format!(
            "the file holds {} the model does not have ({}; a different model type, or \
             `tie_weights` changed?)",
            if extra.len() == 1 {
                "a tensor"
            } else {
                "tensors"
            },
            names(extra.into_iter())
        )));
    }
    tch::no_grad(|| -> Result<(), TrainerError> {
        for (name, mut var) in variables {
            var.f_copy_(&saved[&name]).map_err(|e| {
                mismatch(format!(
                    "tensor `{name}`: {}",
                    perplex_data::error::tch_reason(&e)
                ))
            })?;
        }
        Ok(())
    })
}

/// Names in sorted order, backquoted and comma-separated.
fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut names: Vec<&String> = names.collect();
    names.sort();
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    if list.is_empty() {
        "no tensor".into()
    } else {
        list.join(", ")
    }
}

/// `dir/name`, or, when `dir` is a checkpoint directory (`RUN/checkpoints/<name>/`), the run's
/// `RUN/name`, `MAX_LEVELS_UP` above it. Any other directory is not searched above: a run
/// directory that lacks the file must not pick up an unrelated one from its parents.
fn find_upwards(dir: &Path, name: &str) -> Result<PathBuf, TrainerError> {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let in_checkpoints = absolute
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == crate::checkpoint::CHECKPOINTS);
    let mut candidates = vec![absolute.join(name)];
    if in_checkpoints {
        if let Some(run) = absolute.ancestors().nth(MAX_LEVELS_UP) {
            candidates.push(run.join(name));
        }
    }
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(TrainerError::Io {
        path: dir.join(name),
        message: format!("file not found (tried {})", tried.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use perplex_data::CharTokenizer;
    use perplex_model::{GruLmConfig, ModelConfig};

    /// A run directory with an untrained tiny char-level GRU over `text`'s characters.
    fn tiny_run(text: &str) -> (tempfile::TempDir, LoadedModel) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RunConfig::default();
        config.data.tokenizer = TokenizerKind::Char;
        config.model = Box::new(GruLmConfig {
            embedding_dim: 8,
            hidden_size: 16,
            num_layers: 1,
            dropout: 0.0,
            tie_weights: false,
        });
        std::fs::write(dir.path().join(CONFIG), config.to_toml().unwrap()).unwrap();
        let tokens = CharTokenizer.tokenize(text);
        let vocab = Vocabulary::build(&tokens, None);
        vocab.save(&dir.path().join(VOCAB)).unwrap();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = config
            .model
            .build(&vs.root(), &BuildContext::new(vocab.len() as i64))
            .unwrap();
        vs.save(dir.path().join(WEIGHTS)).unwrap();
        let loaded = LoadedModel::load(dir.path(), Device::Cpu).unwrap();
        (dir, loaded)
    }

    const TEXT: &str = "the cat sat on the mat\nand the dog sat on the log\n";

    #[test]
    fn token_losses_average_to_the_trainer_evaluation() {
        let (_dir, m) = tiny_run(TEXT);
        let ids = m.encode(&TEXT.repeat(4)).unwrap();
        let per_token = m.token_losses(&ids, 3, 5).unwrap();
        let stats = m.evaluate(&m.batches(&ids, 3, 5, "t").unwrap()).unwrap();
        assert_eq!(per_token.len() as u64, stats.tokens);
        let mean = per_token.iter().map(|t| t.nll).sum::<f64>() / per_token.len() as f64;
        assert!((mean - stats.loss).abs() < 1e-5, "{mean} vs {}", stats.loss);
        // Positions index the stream and name the token found there.
        let all: Vec<i64> = Vec::try_from(&ids).unwrap();
        assert!(per_token.iter().all(|t| all[t.position] == t.id));
    }

    #[test]
    fn same_seed_gives_same_text_and_banned_ids_never_appear() {
        let (_dir, m) = tiny_run(TEXT);
        let banned = vec![m.vocab.id("t"), m.vocab.id(" ")];
        let options = SamplingOptions {
            max_tokens: 300,
            seed: 11,
            banned_ids: banned.clone(),
            ..Default::default()
        };
        let a = m.sample("the ", &options).unwrap();
        let b = m.sample("the ", &options).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.ids.len(), 300);
        assert!(a.ids.iter().all(|i| !banned.contains(i)));
        assert!(a.text.starts_with("the "));
    }

    #[test]
    fn greedy_and_top_k_one_agree() {
        let (_dir, m) = tiny_run(TEXT);
        let greedy = SamplingOptions {
            max_tokens: 40,
            temperature: 0.0,
            ..Default::default()
        };
        let top1 = SamplingOptions {
            max_tokens: 40,
            top_k: 1,
            seed: 5,
            ..Default::default()
        };
        assert_eq!(
            m.generate("cat", &greedy).unwrap(),
            m.generate("cat", &top1).unwrap()
        );
    }

    #[test]
    fn bad_sampling_options_reach_the_caller() {
        let (_dir, m) = tiny_run(TEXT);
        let options = SamplingOptions {
            banned_ids: vec![999],
            ..Default::default()
        };
        let e = m.sample("a", &options).unwrap_err().to_string();
        assert!(e.contains("id 999 is not in the vocabulary"), "{e}");
    }

    #[test]
    fn checkpoint_directory_finds_config_two_levels_up() {
        let (dir, m) = tiny_run(TEXT);
        let ckpt = dir.path().join("checkpoints").join("step-10");
        std::fs::create_dir_all(&ckpt).unwrap();
        m.vs.save(ckpt.join(WEIGHTS)).unwrap();
        let loaded = LoadedModel::load(&ckpt, Device::Cpu).unwrap();
        assert_eq!(loaded.vocab, m.vocab);
        assert_eq!(loaded.weights, ckpt.join(WEIGHTS));
    }

    /// A directory that is not a checkpoint's does not borrow a parent's `config.toml`: a run
    /// directory missing its own is an error naming the file, not another run's config.
    #[test]
    fn a_run_directory_without_its_config_does_not_use_a_parents() {
        let (dir, m) = tiny_run(TEXT);
        let inner = dir.path().join("other-run");
        std::fs::create_dir_all(&inner).unwrap();
        m.vs.save(inner.join(WEIGHTS)).unwrap();
        let e = LoadedModel::load(&inner, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&inner.join(CONFIG).display().to_string()) && e.contains("not found"),
            "{e}"
        );
    }

    /// A separate output head saved beside the model's variables (a model trained with
    /// `tie_weights = false`, loaded into one that ties) is refused, not dropped.
    #[test]
    fn a_tensor_the_model_does_not_have_is_refused_by_name() {
        let (dir, m) = tiny_run(TEXT);
        let mut tensors: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
        tensors.push((
            "head.weight".into(),
            Tensor::zeros([3, 4], tch::kind::FLOAT_CPU),
        ));
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, dir.path().join(WEIGHTS)).unwrap();
        let e = LoadedModel::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`head.weight`") && e.contains("tie_weights"),
            "{e}"
        );
    }

    #[test]
    fn weights_of_another_shape_name_the_tensor_and_both_shapes() {
        let (dir, m) = tiny_run(TEXT);
        let other = nn::VarStore::new(Device::Cpu);
        let config = GruLmConfig {
            embedding_dim: 8,
            hidden_size: 12,
            num_layers: 1,
            dropout: 0.0,
            tie_weights: false,
        };
        let _model = config
            .build(&other.root(), &BuildContext::new(m.vocab.len() as i64))
            .unwrap();
        other.save(dir.path().join(WEIGHTS)).unwrap();
        let e = LoadedModel::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors")
                && e.contains(
                    "`gru.bias_hh_l0` has shape [36] in the file, the model expects [48]"
                ),
            "{e}"
        );
        assert!(
            !e.contains("frame #") && !e.contains("Exception raised from"),
            "{e}"
        );

        // A file without one of the model's tensors.
        let w = Tensor::zeros([2], tch::kind::FLOAT_CPU);
        Tensor::write_safetensors(&[("other", &w)], dir.path().join(WEIGHTS)).unwrap();
        let e = LoadedModel::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tensor `embedding.weight` (it holds `other`)"),
            "{e}"
        );

        // Not a safetensors file at all.
        std::fs::write(dir.path().join(WEIGHTS), b"garbage!garbage!").unwrap();
        let e = LoadedModel::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("not a safetensors file"),
            "{e}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = LoadedModel::load(&dir.path().join("nope"), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
        let e = LoadedModel::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("not found"),
            "{e}"
        );
        std::fs::write(dir.path().join(WEIGHTS), b"").unwrap();
        let e = LoadedModel::load(dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.toml") && e.contains("not found"), "{e}");
    }
}
