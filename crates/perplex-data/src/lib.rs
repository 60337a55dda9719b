//! Language-model data for perplex: text corpora, tokenizers, vocabularies and BPTT batching.
//!
//! The pipeline is `text file -> Tokenizer -> Vocabulary -> token ids -> BpttBatches`, following
//! PyTorch's `word_language_model` example: the token stream is cut into `batch_size` contiguous
//! columns and read in windows of `seq_len` tokens, the targets shifted by one.
//!
//! ```no_run
//! use perplex_data::{DataConfig, LmData};
//!
//! let config = DataConfig::default(); // Tiny Shakespeare, word level, 90/10 split
//! let data = LmData::load(&config)?;
//! println!("vocabulary: {} tokens", data.vocab.len());
//! for batch in data.train_batches(tch::Device::Cpu)?.iter() {
//!     // batch.inputs and batch.targets are int64 tensors of shape [batch_size, seq_len]
//!     assert_eq!(batch.inputs.size(), batch.targets.size());
//! }
//! # Ok::<(), perplex_data::DataError>(())
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod corpus;
pub mod error;
pub mod fetch;
pub mod source;
pub mod stream;
pub mod tokenizer;
pub mod vocab;

pub use batch::{BpttBatch, BpttBatches};
pub use corpus::{DataConfig, LmData, TokenizerKind};
pub use error::DataError;
pub use fetch::{fetch_corpus, KnownCorpus, TINY_SHAKESPEARE};
pub use source::DataSource;
pub use stream::TokenStream;
pub use tokenizer::{CharTokenizer, Tokenizer, WordTokenizer};
pub use vocab::Vocabulary;
