//! Typed errors of model loading.
//!
//! Loading returns [`ModelError`]; the tensor code (forward passes, KV cache) returns
//! `candle_core::Result` so that it composes with candle code (a [`ModelError`] raised there,
//! e.g. [`ModelError::CacheFull`], travels as its message; `KvCache::ensure_room` gives it typed).

use std::path::PathBuf;

/// What can go wrong when resolving, reading or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file that the model spec needs does not exist.
    #[error("file not found: {}{hint}", path.display())]
    MissingFile { path: PathBuf, hint: String },

    /// The checkpoint is not of a family east runs.
    #[error(
        "{origin}: unsupported architecture `{found}` (east runs `llama`, `mistral`, `qwen2` and `qwen3` models; GGUF: `llama`, `qwen2`, `qwen3`)"
    )]
    WrongArchitecture { found: String, origin: String },

    /// A sequence longer than the model's sliding attention window, which east does not
    /// implement (up to the window it equals attending to every earlier token).
    #[error("a sequence of {tokens} tokens is longer than the model's sliding attention window of {window} tokens (`sliding_window` in config.json, `*.attention.sliding_window` in GGUF metadata), which east does not implement: shorten the sequences (sample.max_new_tokens, eval.max_new_tokens, train.max_length)")]
    SlidingWindow { tokens: usize, window: usize },

    /// A tensor exists but has the wrong shape for the config.
    #[error("{origin}: tensor `{name}` has shape {found:?}, the config expects {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        origin: String,
    },

    /// A tensor that the config requires is absent (it is never randomly initialised).
    #[error("{origin}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String, origin: String },

    /// The checkpoint holds a tensor this implementation does not know (e.g. attention biases).
    #[error("{origin}: unexpected tensor `{name}` ({why})")]
    UnexpectedTensor {
        name: String,
        why: String,
        origin: String,
    },

    /// config.json / GGUF metadata is missing a value or holds an inconsistent one.
    #[error("{origin}: invalid model config: {msg}")]
    InvalidConfig { msg: String, origin: String },

    /// The tokenizer could not be read or built.
    #[error("{origin}: tokenizer: {msg}")]
    Tokenizer { msg: String, origin: String },

    /// A model without a chat template whose tokenizer names no built-in format either.
    #[error("{origin}: no chat template (tokenizer_config.json, chat_template.jinja or GGUF tokenizer.chat_template) and no <|im_start|> or <|start_header_id|>/<|eot_id|> special tokens to fall back on")]
    UnknownChatFormat { origin: String },

    /// The chat template does not compile or fails to render (`raise_exception`, …).
    #[error("{origin}: chat template: {msg}")]
    ChatTemplate { origin: String, msg: String },

    /// A GGUF file could not be read.
    #[error("{}: GGUF: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },

    /// Downloading from the Hugging Face hub failed.
    #[error("Hugging Face hub ({repo}): {msg}")]
    Hub { repo: String, msg: String },

    /// A forward step would write past the preallocated KV cache.
    #[error("KV cache full: {needed} columns needed, capacity is {capacity}")]
    CacheFull { needed: usize, capacity: usize },

    /// The OS error is in the message, not a `source`, so that `{:#}` does not print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{}: invalid JSON: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Wrap into a candle error (for code paths that return `candle_core::Result`); the
    /// message is kept, the type is not (candle stores wrapped errors as `Display`).
    pub fn into_candle(self) -> candle_core::Error {
        candle_core::Error::Msg(self.to_string())
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile {
                path: path.to_path_buf(),
                hint: String::new(),
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                error: source,
            }
        }
    })
}

pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        error: source,
    })
}
