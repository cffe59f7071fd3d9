//! The zero-shot chat prompt of EAST: a system message asking for a boxed answer, then the question.

use serde::{Deserialize, Serialize};

/// System text of the authors' prompt, used for every chat format (Llama 3, ChatML).
pub const SYSTEM_PROMPT: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

/// One chat message in TRL's conversational form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.to_string(), content: content.to_string() }
    }
}

/// The prompt messages for a question: system + user.
pub fn chat_messages(question: &str) -> Vec<Message> {
    vec![Message::new("system", SYSTEM_PROMPT), Message::new("user", question)]
}
