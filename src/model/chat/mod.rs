//! Chat prompts: the messages east sends a model, rendered to text the way transformers'
//! `apply_chat_template` renders them — by executing the model's own Jinja chat template
//! ([`jinja`]; from tokenizer_config.json, chat_template.jinja or the GGUF's
//! `tokenizer.chat_template`). Only a model that carries no template falls back to a built-in
//! format ([`builtin::ChatFormat`], recognised from its special tokens, with a warning).
//!
//! [`Chat`] is what a loaded model renders with:
//! * [`Chat::east_prompt`]: the prompt sampling and evaluation decode from. With
//!   [`PromptStyle::Chat`] it is the template applied to system [`EAST_SYSTEM_PROMPT`] + user
//!   question + generation prompt; with [`PromptStyle::Authors`] it is the EAST authors' Llama 3
//!   prompt text ([`AUTHORS_LLAMA_PROMPT`]), what their data generation and evaluation used.
//! * [`Chat::render_training`]: TRL's prompt/completion split (`maybe_apply_chat_template`):
//!   prompt = the prompt messages + generation prompt, completion = the rest of the whole
//!   rendered conversation. Training always uses the template (the authors trained with TRL,
//!   which applies it).
//!
//! `strftime_now` (Llama 3.2's "Today Date") reports `model.date` ([`date::DEFAULT_DATE`]),
//! so a prompt is the same whatever day it is rendered on.
//!
//! Rendered text holds the BOS token when the template writes one; encode it with
//! [`super::tokenizer::encode`], which adds no special tokens of its own.

pub mod builtin;
pub mod date;
pub mod jinja;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use builtin::ChatFormat;
pub use date::{PinnedDate, DEFAULT_DATE};
pub use jinja::ChatTemplate;

use super::error::ModelError;
use super::tokenizer::Tokenizer;

/// The EAST system prompt (reference code, used for every chat format).
pub const EAST_SYSTEM_PROMPT: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// The EAST authors' Llama 3 prompt for data generation and evaluation
/// (`PROMPT_TEMPLATE_LLAMA` in their `data_generation/preprocess.py`, run through the Qwen2.5-Math
/// evaluation toolkit): `{input}` is the question. Their Python literal starts with a newline
/// (the layout of a triple-quoted string) that would come before `<|begin_of_text|>`; it is not
/// part of the prompt. No "Cutting Knowledge Date" / "Today Date" lines, a newline (not two)
/// after each header, a newline after the system turn.
pub const AUTHORS_LLAMA_PROMPT: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\nPlease reason step by step, and put your final answer within \\boxed{}.<|eot_id|>\n<|start_header_id|>user<|end_header_id|>\n{input}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n";

/// Names the way east renders prompts; part of the pipeline's stage keys, so that samples and
/// evaluations made with differently rendered prompts are not reused. Change it whenever the
/// rendering of any prompt changes.
pub const RENDERING: &str = "jinja-templates-1";

/// One chat message (TRL's conversational format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The EAST prompt of a question: system [`EAST_SYSTEM_PROMPT`] + user question.
pub fn east_messages(question: &str) -> Vec<Message> {
    vec![Message::system(EAST_SYSTEM_PROMPT), Message::user(question)]
}

/// `model.prompt_style`: how the prompt of a question is written for sampling and evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    /// The model's own chat template applied to system + user messages (what transformers,
    /// TRL and vLLM do).
    #[default]
    Chat,
    /// The EAST authors' Llama 3 prompt text ([`AUTHORS_LLAMA_PROMPT`]); Llama 3 vocabularies only.
    Authors,
}

/// How a model's chat prompts are rendered: settings of `[model]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatSettings {
    pub style: PromptStyle,
    /// What the template's `strftime_now` reports.
    pub date: PinnedDate,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            style: PromptStyle::Chat,
            date: DEFAULT_DATE.parse().expect("the default date parses"),
        }
    }
}

#[derive(Debug, Clone)]
enum Renderer {
    Template(Arc<ChatTemplate>),
    Builtin(ChatFormat),
}

/// A model's prompt renderer (see the module docs).
#[derive(Debug, Clone)]
pub struct Chat {
    renderer: Renderer,
    settings: ChatSettings,
    /// The special token that ends an assistant turn ("" when none is known).
    end_of_turn: String,
    /// The model, for error messages.
    origin: String,
}

impl Chat {
    /// The renderer of a model: its `template` when it has one, else the built-in format its
    /// special tokens name (with a warning on stderr), else an error. `special_tokens` are the
    /// template variables `bos_token`, `eos_token`, ….
    pub fn for_model(
        template: Option<&str>,
        special_tokens: BTreeMap<String, String>,
        tokenizer: &Tokenizer,
        settings: ChatSettings,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let err = |msg: String| ModelError::ChatTemplate {
            origin: origin.to_string(),
            msg,
        };
        let renderer = match template {
            Some(t) => Renderer::Template(Arc::new(
                ChatTemplate::new(t, special_tokens, settings.date).map_err(err)?,
            )),
            None => {
                let format =
                    ChatFormat::detect(tokenizer).ok_or_else(|| ModelError::UnknownChatFormat {
                        origin: origin.to_string(),
                    })?;
                eprintln!(
                    "east: warning: {origin} carries no chat template (tokenizer_config.json, chat_template.jinja or GGUF tokenizer.chat_template); rendering prompts in east's built-in {format:?} format"
                );
                Renderer::Builtin(format)
            }
        };
        let mut chat = Self {
            renderer,
            settings,
            end_of_turn: String::new(),
            origin: origin.to_string(),
        };
        chat.end_of_turn = chat.find_end_of_turn(tokenizer);
        if settings.style == PromptStyle::Authors
            && tokenizer.token_to_id("<|start_header_id|>").is_none()
        {
            return Err(err(
                "model.prompt_style = \"authors\" is the EAST authors' Llama 3 prompt, but this tokenizer has no <|start_header_id|> token (use prompt_style = \"chat\")".into(),
            ));
        }
        Ok(chat)
    }

    /// A renderer for a template alone, without a tokenizer (so its end-of-turn token is not
    /// looked up): for rendering text, e.g. to check a template.
    pub fn from_template(
        source: &str,
        special_tokens: BTreeMap<String, String>,
        settings: ChatSettings,
    ) -> Result<Self, ModelError> {
        let origin = "chat template".to_string();
        let t = ChatTemplate::new(source, special_tokens, settings.date).map_err(|msg| {
            ModelError::ChatTemplate {
                origin: origin.clone(),
                msg,
            }
        })?;
        Ok(Self {
            renderer: Renderer::Template(Arc::new(t)),
            settings,
            end_of_turn: String::new(),
            origin,
        })
    }

    /// A renderer that uses a built-in format (tests, and models without a template).
    pub fn builtin(format: ChatFormat, settings: ChatSettings) -> Self {
        Self {
            end_of_turn: format.end_of_turn().to_string(),
            renderer: Renderer::Builtin(format),
            settings,
            origin: format!("built-in {format:?}"),
        }
    }

    /// The model's template text, when it has one.
    pub fn template(&self) -> Option<&str> {
        match &self.renderer {
            Renderer::Template(t) => Some(t.source()),
            Renderer::Builtin(_) => None,
        }
    }

    /// The built-in format in use, when the model has no template.
    pub fn builtin_format(&self) -> Option<ChatFormat> {
        match &self.renderer {
            Renderer::Template(_) => None,
            Renderer::Builtin(f) => Some(*f),
        }
    }

    pub fn settings(&self) -> ChatSettings {
        self.settings
    }

    /// The special token that ends an assistant turn (`<|im_end|>`, `<|eot_id|>`, …; "" when the
    /// template writes none): generation stops on it.
    pub fn end_of_turn(&self) -> &str {
        &self.end_of_turn
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        match &self.renderer {
            Renderer::Template(t) => {
                t.render(messages, add_generation_prompt)
                    .map_err(|msg| ModelError::ChatTemplate {
                        origin: self.origin.clone(),
                        msg,
                    })
            }
            Renderer::Builtin(f) => {
                let date = self
                    .settings
                    .date
                    .strftime("%d %b %Y")
                    .expect("supported format");
                Ok(f.render(messages, add_generation_prompt, &date))
            }
        }
    }

    /// The prompt of a question for sampling and evaluation (see [`PromptStyle`]).
    pub fn east_prompt(&self, question: &str) -> Result<String, ModelError> {
        match self.settings.style {
            PromptStyle::Chat => self.render(&east_messages(question), true),
            PromptStyle::Authors => Ok(AUTHORS_LLAMA_PROMPT.replace("{input}", question)),
        }
    }

    /// Training text in TRL's way: `prompt` = the prompt messages with the generation prompt;
    /// completion = the rest of the whole conversation (`prompt` messages + `completion`
    /// messages). A template whose prompt is not a prefix of the conversation (DeepSeek-R1's
    /// generation prompt opens a `<think>` its conversations do not write) is an error, where
    /// TRL would cut the conversation at the prompt's length.
    pub fn render_training(
        &self,
        prompt: &[Message],
        completion: &[Message],
    ) -> Result<(String, String), ModelError> {
        let p = self.render(prompt, true)?;
        let mut all = prompt.to_vec();
        all.extend_from_slice(completion);
        let full = self.render(&all, false)?;
        match full.strip_prefix(&p) {
            Some(rest) => Ok((p, rest.to_string())),
            None => Err(ModelError::ChatTemplate {
                origin: self.origin.clone(),
                msg: "the chat template does not render the prompt (with the generation prompt) as a prefix of the conversation, so the completion cannot be split off as TRL does".into(),
            }),
        }
    }

    /// The special token a template writes right after an assistant message's content.
    fn find_end_of_turn(&self, tokenizer: &Tokenizer) -> String {
        const MARK: &str = "\u{e000}east-end-of-turn-probe\u{e000}";
        let conv = [Message::user("1 + 1?"), Message::assistant(MARK)];
        let Ok(text) = self.render(&conv, false) else {
            return String::new();
        };
        let Some((_, after)) = text.split_once(MARK) else {
            return String::new();
        };
        let specials = tokenizer.get_added_tokens_decoder();
        tokenizer
            .encode(after, false)
            .ok()
            .and_then(|e| e.get_ids().first().copied())
            .and_then(|id| {
                specials
                    .get(&id)
                    .filter(|t| t.special)
                    .map(|t| t.content.clone())
            })
            .unwrap_or_default()
    }
}
