//! The `[server]` section: where an OpenAI-compatible serving engine (vLLM, SGLang, llama.cpp's
//! server) answers, how hard to push it, and how `east run` starts one per round.

use serde::{Deserialize, Deserializer, Serialize};

/// Which engine generates completions for `east sample` / `east eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// east's own batched decoder, in process.
    #[default]
    Native,
    /// An OpenAI-compatible server (`[server]` section).
    Openai,
}

impl Backend {
    /// Whether this is the in-process decoder.
    pub fn is_native(&self) -> bool {
        *self == Backend::Native
    }
}

/// Which endpoint receives the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/completions` with the prompt rendered by east (byte-identical to the native one).
    #[default]
    Completions,
    /// `/v1/chat/completions` with the messages; the server applies its own chat template.
    Chat,
}

/// How `east run` hands a round's trained model to `server.launch`'s `{model}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointFormat {
    /// The Hugging Face folder east writes (vLLM, SGLang).
    #[default]
    Hf,
    /// A GGUF file exported from it with the base GGUF's metadata and tokenizer (llama.cpp).
    Gguf,
}

/// `[server]`: an OpenAI-compatible server used when `sample.backend` or `eval.backend` is
/// `"openai"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Base URL(s) ending in `/v1`; requests go to the one with the fewest in flight.
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// Served model name (default: the one model `/v1/models` lists).
    pub model: Option<String>,
    /// `completions` (east renders the prompt) or `chat` (the server's chat template).
    pub api: Api,
    /// Name of the environment variable holding the API key (never written anywhere).
    pub api_key_env: Option<String>,
    /// Requests in flight at once, over all URLs.
    pub concurrency: usize,
    /// Seconds one request may take.
    pub timeout_s: f64,
    /// Retries of a request after a connection error, timeout, 429 or 5xx (exponential backoff).
    pub retries: usize,
    /// Completions asked for per request (default: all n, or 1 once a server refuses n > 1).
    pub n_per_request: Option<usize>,
    /// Command `east run` starts for each round's model: `{model}`, `{adapter}`, `{port}`, `{seed}`.
    pub launch: Option<String>,
    /// Seconds `east run` waits for a launched server's `/v1/models`.
    pub startup_timeout_s: f64,
    /// Form of a trained checkpoint for `{model}`: `hf` folder or `gguf` export.
    pub checkpoint_format: CheckpointFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            url: Vec::new(),
            model: None,
            api: Api::Completions,
            api_key_env: None,
            concurrency: 64,
            timeout_s: 600.0,
            retries: 5,
            n_per_request: None,
            launch: None,
            startup_timeout_s: 900.0,
            checkpoint_format: CheckpointFormat::Hf,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl ServerConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for u in &self.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(("url", format!("`{u}` is not an http:// or https:// URL")));
            }
        }
        if self.concurrency == 0 {
            return Err(("concurrency", "must be at least 1".into()));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(("timeout_s", format!("must be > 0, got {}", self.timeout_s)));
        }
        if !(self.startup_timeout_s.is_finite() && self.startup_timeout_s > 0.0) {
            return Err((
                "startup_timeout_s",
                format!("must be > 0, got {}", self.startup_timeout_s),
            ));
        }
        if self.n_per_request == Some(0) {
            return Err(("n_per_request", "must be at least 1 when set".into()));
        }
        if let Some(l) = &self.launch {
            if !l.contains("{model}") {
                return Err((
                    "launch",
                    "must contain {model} (the round's model is passed there)".into(),
                ));
            }
            if !l.contains("{port}") {
                return Err((
                    "launch",
                    "must contain {port} (east picks a free port and connects there)".into(),
                ));
            }
            if !self.url.is_empty() {
                return Err((
                    "url",
                    "is set together with server.launch: a launched server's URL is east's choice; remove one".into(),
                ));
            }
        }
        if let Some(name) = &self.api_key_env {
            if name.is_empty() || name.contains('=') {
                return Err((
                    "api_key_env",
                    format!("`{name}` is not an environment variable name"),
                ));
            }
        }
        Ok(())
    }
}
