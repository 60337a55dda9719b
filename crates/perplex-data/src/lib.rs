//! Language-model data for perplex: text corpora, tokenizers, vocabularies and data loaders.
//!
//! The pipeline is `text file -> Tokenizer -> Vocabulary -> token ids -> loader`. Tokenizers
//! ([`TokenizerKind`]): `word` ([`WordTokenizer`]), `char` ([`CharTokenizer`]), `whitespace`
//! ([`WhitespaceTokenizer`], WikiText's convention: `<unk>` in the text is the unknown token) and
//! `bpe` ([`HfTokenizer`], a Hugging Face tokenizer: a byte-level BPE trained on the training
//! split, or any `tokenizer.json` given as `tokenizer_file`). The first three build their
//! [`Vocabulary`] from the training split's counts, `<unk>` at id 0; a Hugging Face tokenizer's
//! vocabulary is the tokenizer's own tokens in its id order ([`Vocabulary::from_hf`]), so the
//! model's ids are exactly those Python's `tokenizers` gives, and it travels with the vocabulary
//! (`tokenizer.json` beside `vocab.json`). A loader
//! implements [`Batches`]: it yields int64 `[batch, seq]` inputs and targets by [`Cursor`]
//! (epoch, index), which a checkpoint records, and cuts itself into the shard of one process
//! ([`Batches::shard`]). Two loaders: [`BpttBatches`] (PyTorch's `word_language_model`: the
//! stream cut into `batch_size` contiguous columns read in windows of `seq_len` tokens, the
//! recurrent state carried) and [`RandomWindows`] (nanoGPT's `get_batch`: windows at seeded
//! random offsets, over compact [`TokenIds`]).
//!
//! ```no_run
//! use perplex_data::{Batches, Cursor, DataConfig, LmData, LoaderKind};
//!
//! let config = DataConfig { loader: LoaderKind::RandomWindows, ..DataConfig::default() };
//! let data = LmData::load(&config)?; // Tiny Shakespeare, word level, 90/10 split
//! let train = data.train_loader(tch::Device::Cpu, 1337)?;
//! let mine = train.shard(0, 2)?; // rank 0 of 2 reads rows 0..32 of every batch
//! let batch = mine.get(Cursor { epoch: 1, index: 0 })?.unwrap();
//! assert_eq!(batch.inputs.size(), [32, 35]); // int64 [batch, seq]; targets one token ahead
//! assert_eq!(train.len(), mine.len()); // same batches per epoch, half the rows each
//! # Ok::<(), perplex_data::DataError>(())
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod batches;
pub mod corpus;
pub mod error;
pub mod fetch;
pub mod hf;
mod pieces;
pub mod prepared;
pub mod source;
pub mod stream;
pub mod token_file;
pub mod tokenizer;
pub mod vocab;

pub use batch::{BpttBatch, BpttBatches};
pub use batches::{collect_epoch, Batch, Batches, Cursor, LoaderKind, RandomWindows, TokenIds};
pub use corpus::{DataConfig, LmData, TokenizerKind};
pub use error::DataError;
pub use fetch::{fetch_corpus, KnownCorpus, TINY_SHAKESPEARE};
pub use hf::HfTokenizer;
pub use prepared::{prepare, PrepareReport, PreparedData, StreamWindows};
pub use source::{open_source, DataSource};
pub use stream::TokenStream;
pub use token_file::{MmapTokens, TokenDtype, TokenFileHeader, TokenFileWriter};
pub use tokenizer::{CharTokenizer, Tokenizer, WhitespaceTokenizer, WordTokenizer};
pub use vocab::Vocabulary;
