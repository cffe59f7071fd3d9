//! Tokenizers: reading `tokenizer.json`, building one from GGUF metadata, and the encode /
//! decode conventions of east.
//!
//! Prompts are rendered to text by [`super::chat::ChatFormat`] (which writes BOS and the
//! special tokens itself), then encoded with [`encode`], which adds **no** special tokens but
//! does recognise special tokens written in the text (`<|im_start|>` → one id).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::{json, Value};
pub use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

fn tok_err(origin: &str, msg: impl ToString) -> ModelError {
    ModelError::Tokenizer {
        msg: msg.to_string(),
        origin: origin.to_string(),
    }
}

/// Read a `tokenizer.json`.
pub fn load_tokenizer_file(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            hint: " (a model folder needs tokenizer.json)".into(),
        });
    }
    Tokenizer::from_file(path).map_err(|e| tok_err(&path.display().to_string(), e))
}

/// Encode text without adding special tokens (chat rendering writes them); special tokens
/// spelled in the text map to their ids.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> candle_core::Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))
}

/// Decode ids to text; `skip_special` drops special tokens (`<|im_end|>`, …).
pub fn decode(
    tokenizer: &Tokenizer,
    ids: &[u32],
    skip_special: bool,
) -> candle_core::Result<String> {
    tokenizer
        .decode(ids, skip_special)
        .map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))
}

/// Id of a token given by its exact content (special tokens included).
pub fn token_id(tokenizer: &Tokenizer, token: &str) -> Option<u32> {
    tokenizer.token_to_id(token)
}

/// Llama 3's pre-tokenizer split (from its tokenizer.json / llama.cpp `llama-bpe`).
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pre-tokenizer split (its tokenizer.json; llama.cpp `qwen2`): Llama 3's, but digits
/// one by one.
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer (in tokenizer.json form) for a llama.cpp `tokenizer.ggml.pre` value,
/// whether BPE should ignore merges for whole-word vocabulary hits (Llama 3 does), and the
/// normalizer (Qwen2's tokenizer.json: NFC).
fn pre_tokenizer_for(pre: &str, origin: &str) -> Result<(Value, bool, Value)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        // GPT-2 regex on top of single-digit splitting (llama.cpp: "\p{N}" then the GPT-2
        // regex; the HF tokenizer.json of SmolLM/StarCoder: Digits(individual) + ByteLevel).
        "smollm" | "starcoder" | "refact" | "codeshell" => Ok((
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
            Value::Null,
        )),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => Ok((
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            true,
            Value::Null,
        )),
        // Qwen2/2.5/3 and the DeepSeek-R1 Qwen distills
        "qwen2" | "deepseek-r1-qwen" => Ok((
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            false,
            json!({"type": "NFC"}),
        )),
        "gpt2" | "default" | "" => Ok((byte_level(true), false, Value::Null)),
        other => Err(tok_err(
            origin,
            format!("GGUF pre-tokenizer `{other}` is not supported (supported: smollm, starcoder, llama-bpe, qwen2, deepseek-r1-qwen, gpt2)"),
        )),
    }
}

/// tokenizer.json for a byte-level BPE: `tokens` (id = index, byte-level alphabet), `merges`
/// ("a b"), llama.cpp token types (3 = control → special added token, 4 = user-defined →
/// added token), and a llama.cpp pre-tokenizer name.
pub fn byte_level_bpe_json(
    tokens: &[String],
    merges: &[String],
    token_types: &[i64],
    pre: &str,
    origin: &str,
) -> Result<Value> {
    let (pre_tokenizer, ignore_merges, normalizer) = pre_tokenizer_for(pre, origin)?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = token_types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// Build a Hugging Face tokenizer from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE
/// (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizer named by `tokenizer.ggml.pre`;
/// control tokens (token_type 3) become special added tokens, user-defined ones (4) plain
/// added tokens. Returns the tokenizer and its tokenizer.json value.
pub fn tokenizer_from_gguf(
    metadata: &HashMap<String, gguf_file::Value>,
    origin: &str,
) -> Result<(Tokenizer, Value)> {
    let get_str = |k: &str| metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
    let model = get_str("tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        return Err(tok_err(
            origin,
            format!(
                "GGUF tokenizer model `{model}` is not supported (byte-level BPE `gpt2` only; for sentencepiece models use the Hugging Face folder)"
            ),
        ));
    }
    let strings = |k: &str| -> Result<Vec<String>> {
        match metadata.get(k) {
            Some(gguf_file::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| tok_err(origin, format!("{k}: {e}")))
                })
                .collect(),
            _ => Err(tok_err(origin, format!("missing `{k}`"))),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let token_types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
        Some(gguf_file::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                gguf_file::Value::I32(x) => *x as i64,
                gguf_file::Value::U32(x) => *x as i64,
                gguf_file::Value::I8(x) => *x as i64,
                gguf_file::Value::U8(x) => *x as i64,
                _ => 1,
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = get_str("tokenizer.ggml.pre").unwrap_or_default();
    let tj = byte_level_bpe_json(&tokens, &merges, &token_types, &pre, origin)?;
    let text = serde_json::to_string(&tj).map_err(|e| tok_err(origin, e))?;
    let tokenizer: Tokenizer = text.parse().map_err(|e| tok_err(origin, e))?;
    Ok((tokenizer, tj))
}
