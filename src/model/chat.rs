//! Chat prompt rendering, faithful to the models' own chat templates as rendered by
//! `tokenizer.apply_chat_template` (what the EAST authors' code fed the model).
//!
//! * [`ChatFormat::ChatMl`] (SmolLM2, Qwen): `<|im_start|>{role}\n{content}<|im_end|>\n` per
//!   message, generation prompt `<|im_start|>assistant\n`. The messages are rendered as given:
//!   SmolLM2's template would insert its default system prompt when there is none, east
//!   always passes one ([`EAST_SYSTEM_PROMPT`]).
//! * [`ChatFormat::Llama3`] (Llama 3.1 / 3.2 Instruct): `<|begin_of_text|>`, then a system
//!   header that always carries `Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n`
//!   before the system text, every content `trim`med, `<|eot_id|>` after each turn, generation
//!   prompt `<|start_header_id|>assistant<|end_header_id|>\n\n`. The date is the template's
//!   own default, `26 Jul 2024` ([`LLAMA3_DEFAULT_DATE`]): that is exactly what Llama-3.1's
//!   template renders, and what Llama-3.2's renders when no `strftime_now` is available
//!   (with it, 3.2 puts the day of the run, which makes prompts irreproducible — use
//!   [`ChatFormat::render_with_date`] to mimic a given day).
//! * [`ChatFormat::Llama2`] (`[INST] <<SYS>>`), for completeness.
//!
//! Rendered text holds the BOS token when the template writes one (Llama 3/2); encode it with
//! [`super::tokenizer::encode`], which adds no special tokens of its own.

use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;

/// The EAST system prompt (reference code, used for every chat format).
pub const EAST_SYSTEM_PROMPT: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// The date Llama 3.x templates use when none is given.
pub const LLAMA3_DEFAULT_DATE: &str = "26 Jul 2024";

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatFormat {
    ChatMl,
    Llama3,
    Llama2,
}

impl ChatFormat {
    /// Recognise the format from a chat template (GGUF `tokenizer.chat_template` or
    /// tokenizer_config.json), else from the tokenizer's special tokens.
    pub fn detect(tokenizer: &Tokenizer, chat_template: Option<&str>) -> Option<Self> {
        if let Some(t) = chat_template {
            if t.contains("<|im_start|>") {
                return Some(Self::ChatMl);
            }
            if t.contains("<|start_header_id|>") {
                return Some(Self::Llama3);
            }
            if t.contains("[INST]") {
                return Some(Self::Llama2);
            }
        }
        let has = |s: &str| tokenizer.token_to_id(s).is_some();
        if has("<|im_start|>") && has("<|im_end|>") {
            Some(Self::ChatMl)
        } else if has("<|start_header_id|>") && has("<|eot_id|>") {
            Some(Self::Llama3)
        } else {
            None
        }
    }

    /// The token that ends an assistant turn (generation stops on it).
    pub fn end_of_turn(&self) -> &'static str {
        match self {
            Self::ChatMl => "<|im_end|>",
            Self::Llama3 => "<|eot_id|>",
            Self::Llama2 => "</s>",
        }
    }

    /// Prompt text for generation: the messages, then the assistant header.
    pub fn render_prompt(&self, messages: &[Message]) -> String {
        self.render(messages, true, LLAMA3_DEFAULT_DATE)
    }

    /// Like [`ChatFormat::render_prompt`] with Llama 3's "Today Date" set to `date`
    /// (format "%d %b %Y", e.g. "05 Mar 2025"); other formats ignore it.
    pub fn render_with_date(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        date: &str,
    ) -> String {
        self.render(messages, add_generation_prompt, date)
    }

    /// A whole conversation, optionally followed by the generation prompt.
    pub fn render_conversation(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        self.render(messages, add_generation_prompt, LLAMA3_DEFAULT_DATE)
    }

    /// The EAST prompt for a question (system prompt + question + generation prompt).
    pub fn east_prompt(&self, question: &str) -> String {
        self.render_prompt(&east_messages(question))
    }

    /// Training text in TRL's way (`maybe_apply_chat_template`): `prompt` = the prompt
    /// messages with the generation prompt; `completion` = the rest of the whole conversation
    /// (prompt + assistant `answer`), i.e. the answer as the template writes it followed by
    /// the end of turn (`<|im_end|>\n` for ChatML, `<|eot_id|>` for Llama 3).
    /// `prompt + completion` is exactly the rendered conversation.
    pub fn render_training(&self, prompt: &[Message], answer: &str) -> (String, String) {
        let p = self.render_prompt(prompt);
        let mut all = prompt.to_vec();
        all.push(Message::assistant(answer));
        let full = self.render_conversation(&all, false);
        match full.strip_prefix(&p) {
            Some(rest) => (p, rest.to_string()),
            // Cannot happen for these templates; keep the split well-defined anyway.
            None => (p.clone(), full[p.len().min(full.len())..].to_string()),
        }
    }

    fn render(&self, messages: &[Message], add_generation_prompt: bool, date: &str) -> String {
        let mut s = String::new();
        match self {
            Self::ChatMl => {
                for m in messages {
                    s.push_str("<|im_start|>");
                    s.push_str(&m.role);
                    s.push('\n');
                    s.push_str(&m.content);
                    s.push_str("<|im_end|>\n");
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            Self::Llama3 => {
                s.push_str("<|begin_of_text|>");
                let (system, rest) = match messages.first() {
                    Some(m) if m.role == "system" => (m.content.trim(), &messages[1..]),
                    _ => ("", messages),
                };
                s.push_str("<|start_header_id|>system<|end_header_id|>\n\n");
                s.push_str("Cutting Knowledge Date: December 2023\n");
                s.push_str("Today Date: ");
                s.push_str(date);
                s.push_str("\n\n");
                s.push_str(system);
                s.push_str("<|eot_id|>");
                for m in rest {
                    s.push_str("<|start_header_id|>");
                    s.push_str(&m.role);
                    s.push_str("<|end_header_id|>\n\n");
                    s.push_str(m.content.trim());
                    s.push_str("<|eot_id|>");
                }
                if add_generation_prompt {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            Self::Llama2 => {
                // Meta's Llama-2-chat template: the system prompt is folded into the first
                // user turn; assistant turns end with </s>.
                let (system, rest) = match messages.first() {
                    Some(m) if m.role == "system" => (Some(m.content.as_str()), &messages[1..]),
                    _ => (None, messages),
                };
                for (i, m) in rest.iter().enumerate() {
                    if m.role == "user" {
                        let content = match (i, system) {
                            (0, Some(sys)) => {
                                format!("<<SYS>>\n{}\n<</SYS>>\n\n{}", sys, m.content)
                            }
                            _ => m.content.clone(),
                        };
                        s.push_str("<s>[INST] ");
                        s.push_str(content.trim());
                        s.push_str(" [/INST]");
                    } else if m.role == "assistant" {
                        s.push(' ');
                        s.push_str(m.content.trim());
                        s.push_str(" </s>");
                    }
                }
            }
        }
        s
    }
}
