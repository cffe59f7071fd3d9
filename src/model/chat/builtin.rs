//! The hard-coded chat formats east falls back to for a model that carries no chat template
//! (none in tokenizer_config.json, chat_template.jinja or the GGUF): recognised from the
//! tokenizer's special tokens. A model with a template is always rendered by its template
//! ([`super::jinja`]).
//!
//! * [`ChatFormat::ChatMl`]: `<|im_start|>{role}\n{content}<|im_end|>\n` per message,
//!   generation prompt `<|im_start|>assistant\n`.
//! * [`ChatFormat::Llama3`]: Llama 3.1's template for plain messages (`<|begin_of_text|>`, a
//!   system header with "Cutting Knowledge Date" and "Today Date" lines, contents trimmed,
//!   `<|eot_id|>` after each turn).
//! * [`ChatFormat::Llama2`]: `[INST] <<SYS>>`.

use serde::{Deserialize, Serialize};

use super::Message;
use crate::model::tokenizer::Tokenizer;

/// A built-in chat format (the fallback for template-less models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatFormat {
    ChatMl,
    Llama3,
    Llama2,
}

impl ChatFormat {
    /// Recognise the format of a template-less model from its tokenizer's special tokens.
    pub fn detect(tokenizer: &Tokenizer) -> Option<Self> {
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

    /// The messages, optionally followed by the generation prompt; `date` is Llama 3's
    /// "Today Date" (format "%d %b %Y", e.g. "26 Jul 2024"), other formats ignore it.
    /// The messages, optionally followed by the generation prompt; `date` is Llama 3's
    /// "Today Date" (format "%d %b %Y", e.g. "26 Jul 2024"), other formats ignore it.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, date: &str) -> String {
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
