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
    /// Largest answer read, in MB (10^6 bytes): an answer of n long completions is large.
    pub max_response_mb: u64,
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
            max_response_mb: 256,
            launch: None,
            startup_timeout_s: 900.0,
            checkpoint_format: CheckpointFormat::Hf,
        }
    }
}

/// The longest `timeout_s` and `startup_timeout_s`: a day.
pub const MAX_SECONDS: f64 = 86_400.0;

/// The largest `max_response_mb` (it is held in memory whole).
pub const MAX_RESPONSE_MB: u64 = 65_536;

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
        for (key, value) in [
            ("timeout_s", self.timeout_s),
            ("startup_timeout_s", self.startup_timeout_s),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= MAX_SECONDS) {
                return Err((
                    key,
                    format!("must be > 0 and at most {MAX_SECONDS} (a day), got {value}"),
                ));
            }
        }
        if !(1..=MAX_RESPONSE_MB).contains(&self.max_response_mb) {
            return Err((
                "max_response_mb",
                format!(
                    "must be between 1 and {MAX_RESPONSE_MB}, got {}",
                    self.max_response_mb
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_are_bounded() {
        let ok = ServerConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        for (key, bad) in [
            (
                "timeout_s",
                ServerConfig {
                    timeout_s: 1e20,
                    ..ok.clone()
                },
            ),
            (
                "timeout_s",
                ServerConfig {
                    timeout_s: f64::INFINITY,
                    ..ok.clone()
                },
            ),
            (
                "timeout_s",
                ServerConfig {
                    timeout_s: 0.0,
                    ..ok.clone()
                },
            ),
            (
                "startup_timeout_s",
                ServerConfig {
                    startup_timeout_s: 1e20,
                    ..ok.clone()
                },
            ),
            (
                "startup_timeout_s",
                ServerConfig {
                    startup_timeout_s: f64::NAN,
                    ..ok.clone()
                },
            ),
            (
                "max_response_mb",
                ServerConfig {
                    max_response_mb: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_response_mb",
                ServerConfig {
                    max_response_mb: u64::MAX,
                    ..ok.clone()
                },
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().0, key);
        }
        let day = ServerConfig {
            timeout_s: MAX_SECONDS,
            startup_timeout_s: MAX_SECONDS,
            ..ok
        };
        assert_eq!(day.validate(), Ok(()));
        // what the bound keeps away: a panic converting the seconds
        assert!(std::time::Duration::try_from_secs_f64(1e20).is_err());
    }
}
