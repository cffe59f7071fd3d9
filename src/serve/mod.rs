//! Sampling and evaluation on an OpenAI-compatible serving engine (vLLM, SGLang, llama.cpp's
//! server): the `[server]` section ([`ServerConfig`]), a blocking client with retries and
//! least-outstanding-requests balancing over several URLs, failing ones out of rotation
//! ([`Client`], [`balance`]), concurrent generation of many questions in order
//! ([`generate`]), response parsing ([`response`]), and the server that `east run` starts for
//! each round's model ([`launch`]; its process group and watchdog: [`group`]).
//!
//! Prompts are rendered by east ([`ModelText::east_prompt_text`], the text the native sampler
//! tokenizes; only the tokenizer, config and chat template are loaded, not the weights) and
//! sent to `/v1/completions`, so a question's prompt is the same whichever backend samples it;
//! `server.api = "chat"` sends the messages instead.

pub mod balance;
pub mod client;
pub mod config;
pub mod gguf_export;
pub mod group;
pub mod launch;
pub mod pool;
pub mod response;

pub use client::{request_seed, Client, GenParams, Prompt, RequestError};
pub use config::{Api, Backend, CheckpointFormat, ServerConfig};
pub use pool::{generate, Job, PerRequest};

use crate::model::{east_messages, ModelText};

/// A connected server and how hard to drive it.
pub struct Served {
    pub client: Client,
    /// Requests in flight at once (`server.concurrency`).
    pub concurrency: usize,
    /// Completions per request, lowered when the server refuses n > 1.
    pub per_request: PerRequest,
}

impl Served {
    /// Connects to `urls` with `cfg`'s settings, for `n` completions per question.
    pub fn connect(cfg: &ServerConfig, urls: &[String], n: usize) -> anyhow::Result<Served> {
        Ok(Served {
            client: Client::connect(cfg, urls)?,
            concurrency: cfg.concurrency,
            per_request: PerRequest::new(cfg.n_per_request.unwrap_or(n).min(n.max(1))),
        })
    }

    /// What is sent for `question`: the EAST prompt rendered by east, or its messages.
    pub fn prompt(&self, text: &ModelText, question: &str) -> candle_core::Result<Prompt> {
        Ok(if self.client.is_chat() {
            Prompt::Messages(east_messages(question))
        } else {
            Prompt::Text(text.east_prompt_text(question)?)
        })
    }
}
