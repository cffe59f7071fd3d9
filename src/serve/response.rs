//! Parsing the answers of `/v1/completions` and `/v1/chat/completions` (vLLM, SGLang,
//! llama.cpp's server) and their error bodies.

use serde_json::Value;

use crate::schema::Finish;

/// One generated completion of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub text: String,
    pub finish: Finish,
}

/// A response east cannot use: the message says what was wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadResponse(pub String);

/// The choices of a completions (or chat completions) response, in `index` order. Every index
/// 0..k−1 must appear once; `finish_reason` must say why the completion ended.
pub fn parse_choices(body: &str, chat: bool) -> Result<Vec<Choice>, BadResponse> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| BadResponse(format!("response is not JSON ({e}): {}", excerpt(body))))?;
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| BadResponse(format!("response has no `choices`: {}", excerpt(body))))?;
    let mut slots: Vec<Option<Choice>> = vec![None; choices.len()];
    for (k, c) in choices.iter().enumerate() {
        let index = match c.get("index") {
            Some(i) => i
                .as_u64()
                .ok_or_else(|| BadResponse(format!("choice {k}: `index` is not a number")))?
                as usize,
            None => k,
        };
        let text = if chat {
            c.pointer("/message/content").and_then(Value::as_str)
        } else {
            c.get("text").and_then(Value::as_str)
        }
        .ok_or_else(|| {
            let field = if chat { "message.content" } else { "text" };
            BadResponse(format!("choice {index}: no `{field}` string"))
        })?;
        let finish = finish_of(c.get("finish_reason"))
            .map_err(|m| BadResponse(format!("choice {index}: {m}")))?;
        let slot = slots.get_mut(index).ok_or_else(|| {
            BadResponse(format!(
                "choice index {index} out of range ({} choices)",
                choices.len()
            ))
        })?;
        if slot.is_some() {
            return Err(BadResponse(format!("choice index {index} appears twice")));
        }
        *slot = Some(Choice {
            text: text.to_string(),
            finish,
        });
    }
    Ok(slots
        .into_iter()
        .map(|c| c.expect("every slot filled"))
        .collect())
}

/// `finish_reason` → [`Finish`]: `length` ran out of tokens; `stop` (and engines' synonyms for
/// an EOS or stop string) ended on its own.
fn finish_of(v: Option<&Value>) -> Result<Finish, String> {
    match v.and_then(Value::as_str) {
        Some("length") => Ok(Finish::Length),
        Some("stop" | "eos" | "stop_sequence" | "eos_token") => Ok(Finish::Stop),
        Some(other) => Err(format!(
            "finish_reason `{other}` (the server aborted the completion?)"
        )),
        None => Err("no finish_reason".into()),
    }
}

/// The server's own message from an error body (OpenAI's `{"error": {"message"}}`, vLLM's
/// `{"message"}`), else the body itself, shortened.
pub fn error_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let msg = v.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    msg.unwrap_or_else(|| excerpt(body))
}

/// Whether an error message refuses `n` > 1 (llama.cpp's server before it supported `n`:
/// "Only one completion choice is allowed").
pub fn refuses_n(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("only one completion choice")
        || m.contains("n > 1")
        || m.contains("n must be 1")
        || m.contains("`n`")
        || m.contains("'n'")
        || m.contains("\"n\"")
}

/// The served model names of a `/v1/models` answer.
pub fn model_ids(body: &str) -> Result<Vec<String>, BadResponse> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| BadResponse(format!("/models answer is not JSON ({e})")))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| BadResponse(format!("/models answer has no `data`: {}", excerpt(body))))?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect())
}

fn excerpt(body: &str) -> String {
    let s: String = body.chars().take(300).collect();
    if s.len() < body.len() {
        format!("{s}…")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_put_in_index_order() {
        let body = r#"{"choices":[{"index":1,"text":"b","finish_reason":"length"},
            {"index":0,"text":"a","finish_reason":"stop"}]}"#;
        let c = parse_choices(body, false).unwrap();
        assert_eq!(c[0].text, "a");
        assert_eq!(c[0].finish, Finish::Stop);
        assert_eq!(c[1].text, "b");
        assert_eq!(c[1].finish, Finish::Length);
    }

    #[test]
    fn bad_indices_and_reasons_are_errors() {
        let dup = r#"{"choices":[{"index":0,"text":"a","finish_reason":"stop"},{"index":0,"text":"b","finish_reason":"stop"}]}"#;
        assert!(parse_choices(dup, false).unwrap_err().0.contains("twice"));
        let gap = r#"{"choices":[{"index":2,"text":"a","finish_reason":"stop"}]}"#;
        assert!(parse_choices(gap, false)
            .unwrap_err()
            .0
            .contains("out of range"));
        let abort = r#"{"choices":[{"index":0,"text":"a","finish_reason":"abort"}]}"#;
        assert!(parse_choices(abort, false).unwrap_err().0.contains("abort"));
        assert!(parse_choices("<html>", false).is_err());
    }

    #[test]
    fn error_messages_of_each_engine() {
        assert_eq!(
            error_message(
                r#"{"error":{"code":400,"message":"Only one completion choice is allowed","type":"invalid_request_error"}}"#
            ),
            "Only one completion choice is allowed"
        );
        assert_eq!(
            error_message(
                r#"{"object":"error","message":"max_tokens too large","type":"BadRequestError","code":400}"#
            ),
            "max_tokens too large"
        );
        assert!(refuses_n("Only one completion choice is allowed"));
        assert!(!refuses_n("max_tokens too large"));
    }
}
