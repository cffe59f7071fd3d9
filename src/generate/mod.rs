//! Where `east sample` and `east eval` get their completions: one [`Generator`] that east's own
//! decoder ([`native`]) and an OpenAI-compatible server ([`server`]) both implement, and
//! [`open`], the one place that chooses between them.
//!
//! A stage hands a generator its [`Work`] (the questions, their prompts, the groups they are
//! decoded in, which are already written, how to sample) and a [`Sink`]; the generator calls the
//! sink with each finished question in work order and tells it when the questions handed so far
//! must be made durable. The stage alone writes files, so both engines give the same records,
//! resumption and logs.

mod native;
mod server;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::data::Question;
use crate::decode::{fit_context, DecodeSettings};
use crate::model::chat::PinnedDate;
use crate::model::{ChatSettings, ModelConfig, ModelText, PromptStyle};
use crate::schema::Finish;
use crate::serve::{Api, Backend, Served, ServerConfig};

pub use server::ServerGenerator;

/// Completions for questions, from east's decoder or a server.
pub trait Generator {
    /// The tokenizer, config and chat template: what renders the prompts.
    fn text(&self) -> &ModelText;

    /// The server the completions come from; `None` for east's own decoder.
    fn served(&self) -> Option<&Served>;

    /// Generates `work`: every question of `work.groups` not yet done gets `work.samples`
    /// completions, handed to `sink` in work order, each followed at some point by a
    /// [`Sink::flush`] that covers it. The first failure stops the work; questions already
    /// flushed stay done.
    fn generate(&self, work: &Work, sink: &mut dyn Sink) -> anyhow::Result<()>;

    /// Which `backend` setting this engine answers to.
    fn backend(&self) -> Backend {
        match self.served() {
            Some(_) => Backend::Openai,
            None => Backend::Native,
        }
    }

    /// What decides this engine's prompts besides the model and the questions.
    fn prompt_key(&self) -> PromptKey {
        PromptKey::new(
            self.text().chat.settings(),
            self.served().map(|s| s.client.api()),
        )
    }
}

/// What decides the prompt a question is sent as, besides the model's files and the question:
/// `model.prompt_style`, `model.date`, east's way of rendering
/// ([`crate::model::chat::RENDERING`]) and, for a server, `server.api` (east's rendered text or
/// the messages, rendered by the server's template). Part of the settings a samples file or an
/// evaluation is resumed with, so that one file never holds prompts of two kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptKey {
    pub style: PromptStyle,
    pub date: PinnedDate,
    pub rendering: String,
    /// `server.api`; none for east's own decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
}

impl PromptKey {
    /// The key of prompts rendered with `chat` settings and sent through `api` (none: east's
    /// own decoder).
    pub fn new(chat: ChatSettings, api: Option<Api>) -> Self {
        PromptKey {
            style: chat.style,
            date: chat.date,
            rendering: crate::model::chat::RENDERING.to_string(),
            api,
        }
    }

    /// The key the engine of `backend` will have, from the configuration alone (what `east
    /// run` keys a stage by before starting any server).
    pub fn of_config(model: &ModelConfig, backend: Backend, server: &ServerConfig) -> Self {
        let api = (backend == Backend::Openai).then_some(server.api);
        Self::new(model.chat_settings(), api)
    }
}

/// The engine of `backend` for `model`: east's decoder on the loaded weights, or the server
/// that `server` connects (for which east loads only the tokenizer, config and chat template).
/// The stage commands connect to a running server; `east run` to the one it launched for the
/// model.
pub fn open<'a>(
    model: &ModelConfig,
    backend: Backend,
    server: impl FnOnce() -> anyhow::Result<&'a Served>,
) -> anyhow::Result<Box<dyn Generator + 'a>> {
    Ok(match backend {
        Backend::Native => Box::new(crate::model::load_model(model)?),
        Backend::Openai => Box::new(ServerGenerator {
            served: server()?,
            text: crate::model::load_model_text(model)?,
        }),
    })
}

/// What to generate.
pub struct Work<'a> {
    pub questions: &'a [Question],
    /// The token ids of every question's prompt ([`prompt_ids`]).
    pub prompt_ids: &'a [Vec<u32>],
    /// Question indices decoded together, in order. The native decoder decodes a group whole,
    /// even when some of its questions are done, because a sample depends on the rows that share
    /// its batch; a group whose questions are all done is skipped. A server takes the questions
    /// one by one in this order.
    pub groups: Vec<Vec<usize>>,
    /// Ids of the questions already written: not handed to the sink again.
    pub done: &'a HashSet<String>,
    /// Completions per question.
    pub samples: usize,
    /// Most samples of one question decoded at once (the native decoder splits larger n).
    pub chunk: usize,
    pub decode: DecodeSettings,
}

impl Work<'_> {
    /// Whether question `i` is already written.
    pub fn is_done(&self, i: usize) -> bool {
        self.done.contains(&self.questions[i].id)
    }
}

/// One generated completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish: Finish,
    /// Generated tokens (the native decoder's, without the EOS token; a server's, counted with
    /// east's tokenizer, since servers count one choice only).
    pub tokens: usize,
}

/// What decoding one piece of work measured, for the stage's metrics log.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The first question of the piece and how many it held (done ones included).
    pub first_question: usize,
    pub questions: usize,
    /// The sample index of the piece's first row, and its rows.
    pub first_sample: usize,
    pub rows: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Decoder steps (the native decoder only).
    pub steps: Option<usize>,
    /// Wall time of the piece (a server's: since the previous piece, so spans add up to the
    /// whole generation).
    pub seconds: f64,
}

impl Span {
    /// The span as a metrics line named `event`, with its tokens/s.
    pub fn log_line(&self, event: &str) -> serde_json::Value {
        let mut line = serde_json::json!({"event": event, "first_question": self.first_question,
            "questions": self.questions, "first_sample": self.first_sample, "rows": self.rows,
            "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.generated_tokens as f64 / self.seconds.max(1e-9)});
        if let Some(steps) = self.steps {
            line["steps"] = steps.into();
        }
        line
    }
}

/// Something the engine changed on its own, worth a line in the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The server gets `n` completions per request from now on, for `reason`.
    PerRequest { n: usize, reason: String },
}

/// Where a [`Generator`] delivers: the stage's writer.
pub trait Sink {
    /// `tokens` more tokens were generated (for the progress display).
    fn progress(&mut self, tokens: usize);
    /// Question `index`'s completions, in sample order (once per question not done).
    fn question(&mut self, index: usize, completions: Vec<Completion>) -> anyhow::Result<()>;
    /// The questions handed since the last flush are complete: make them durable, and log
    /// what decoding them measured.
    fn flush(&mut self, spans: &[Span]) -> anyhow::Result<()>;
    /// The engine changed how it works.
    fn note(&mut self, note: Note) -> anyhow::Result<()>;
}

/// Every question's prompt ids, and `max_new_tokens` cut to what fits the model's context
/// beside the longest prompt (`key` names the setting in the message that says so). Every
/// prompt counts, not only those left to do, so that shards and resumed runs agree.
pub fn prompt_ids(
    text: &ModelText,
    questions: &[Question],
    max_new_tokens: usize,
    key: &str,
) -> anyhow::Result<(Vec<Vec<u32>>, usize)> {
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| text.east_prompt_ids(&q.question))
        .collect::<Result<_, _>>()?;
    let id = |i: usize| questions[i].id.as_str();
    let fitted = fit_context(text, &prompts, id, max_new_tokens, key)?;
    Ok((prompts, fitted))
}
