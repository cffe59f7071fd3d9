//! Reading train.jsonl for `east train`: TRL's conversational form (what `east weight` writes:
//! `prompt` a list of messages, `completion`/`chosen`/`rejected` a list with the assistant
//! message) and TRL's standard form (plain strings, the prompt already rendered), tokenised,
//! truncated and packed into micro-batches.
//!
//! Conversational rows are rendered with the model's chat format the way TRL does it
//! (`prompt` = the prompt messages + generation prompt; the completion = the rest of the whole
//! rendered conversation, end-of-turn included). Standard rows are used as given; the
//! model's end-of-turn token is appended to a completion that does not already end with it
//! (TRL appends EOS).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::engine::Packed;
use crate::io::{InputError, JsonlBatches};
use crate::model::tokenizer::encode;
use crate::model::{Chat, Message, Tokenizer};
use crate::schema::Loss;

/// One training example, tokenised.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    /// 1-based line in the file.
    pub line: usize,
    pub prompt: Vec<u32>,
    /// SFT and KTO: one completion; DPO: chosen then rejected (each truncated with the same
    /// prompt).
    pub completions: Vec<Vec<u32>>,
    /// KTO: desirable (true) or undesirable.
    pub label: Option<bool>,
    /// The row's `weight` (1 when absent and not required).
    pub weight: f64,
    /// KTO: the completion of another question, for the KL estimate (see [`kl_partners`]).
    pub kl_completion: Option<Vec<u32>>,
    pub kl_prompt: Option<Vec<u32>>,
    /// Prompt or completion was cut to `max_length`.
    pub truncated: bool,
}

impl Example {
    /// Tokens the policy processes for this example (prompt repeated per completion).
    pub fn tokens(&self) -> usize {
        self.completions
            .iter()
            .map(|c| self.prompt.len() + c.len())
            .sum()
    }
}

/// A tokenised training file.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub path: PathBuf,
    /// SHA-256 of the file's bytes (hex).
    pub sha256: String,
    pub loss: Loss,
    pub examples: Vec<Example>,
    pub truncated: usize,
    pub conversational: usize,
    pub standard: usize,
}

/// How rows become token ids.
pub struct Tokenizing<'a> {
    pub tokenizer: &'a Tokenizer,
    pub chat: &'a Chat,
    /// Appended to standard-form completions that do not end with it.
    pub end_of_turn: u32,
    pub max_length: usize,
    /// Rows must carry a `weight` (weighting = data).
    pub require_weight: bool,
}

/// A text field: plain string (standard form) or a list of messages (conversational form).
enum Text {
    Plain(String),
    Messages(Vec<Message>),
}

fn parse_text(v: &Value, field: &str, path: &Path, line: usize) -> Result<Text, InputError> {
    match v {
        Value::String(s) => Ok(Text::Plain(s.clone())),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(InputError::field(
                    path,
                    line,
                    field,
                    "is an empty list of messages",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, m) in items.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) => out.push(Message::new(r, c)),
                    _ => {
                        return Err(InputError::field(
                            path,
                            line,
                            field,
                            format!(
                                "message {i} must be an object with string `role` and `content`"
                            ),
                        ))
                    }
                }
            }
            Ok(Text::Messages(out))
        }
        Value::Null => Err(InputError::field(path, line, field, "is missing")),
        other => Err(InputError::field(
            path,
            line,
            field,
            format!(
                "must be a string or a list of messages, got {}",
                type_name(other)
            ),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A raw row before tokenisation: (prompt text, completion texts, standard form?).
struct Rendered {
    id: String,
    line: usize,
    prompt: String,
    completions: Vec<String>,
    standard: bool,
    label: Option<bool>,
    weight: f64,
}

fn render_row(
    v: &Value,
    loss: Loss,
    tk: &Tokenizing,
    path: &Path,
    line: usize,
) -> Result<Rendered, InputError> {
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::line(path, line, "expected a JSON object"))?;
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    let id = match get("id") {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Null => format!("line {line}"),
        other => {
            return Err(InputError::field(
                path,
                line,
                "id",
                format!("must be a string, got {}", type_name(other)),
            ))
        }
    };
    if obj.contains_key("messages") && !obj.contains_key("prompt") {
        return Err(InputError::field(
            path,
            line,
            "prompt",
            "is missing (rows with only `messages` are not supported: east trains on prompt/completion rows)",
        ));
    }
    let prompt = parse_text(get("prompt"), "prompt", path, line)?;
    let completion_fields: &[&str] = match loss {
        Loss::Sft | Loss::Kto => &["completion"],
        Loss::Dpo => &["chosen", "rejected"],
    };
    let mut completions = Vec::new();
    let standard = matches!(prompt, Text::Plain(_));
    let template_err = |f: &str, e: crate::model::ModelError| InputError::field(path, line, f, e);
    let prompt_text = match &prompt {
        Text::Plain(s) => s.clone(),
        Text::Messages(m) => tk
            .chat
            .render(m, true)
            .map_err(|e| template_err("prompt", e))?,
    };
    for &f in completion_fields {
        let c = parse_text(get(f), f, path, line)?;
        let text = match (&prompt, c) {
            (Text::Plain(_), Text::Plain(s)) => s,
            (Text::Messages(pm), Text::Messages(cm)) => {
                if let Some(bad) = cm.iter().find(|m| m.role != "assistant") {
                    return Err(InputError::field(
                        path,
                        line,
                        f,
                        format!("messages must have role `assistant`, got `{}`", bad.role),
                    ));
                }
                tk.chat
                    .render_training(pm, &cm)
                    .map_err(|e| template_err(f, e))?
                    .1
            }
            (Text::Plain(_), Text::Messages(_)) => {
                return Err(InputError::field(
                    path,
                    line,
                    f,
                    "is a list of messages but `prompt` is a string (use one form per row)",
                ))
            }
            (Text::Messages(_), Text::Plain(_)) => {
                return Err(InputError::field(
                    path,
                    line,
                    f,
                    "is a string but `prompt` is a list of messages (use one form per row)",
                ))
            }
        };
        if text.is_empty() {
            return Err(InputError::field(path, line, f, "is empty"));
        }
        completions.push(text);
    }
    if prompt_text.is_empty() {
        return Err(InputError::field(path, line, "prompt", "is empty"));
    }
    let label = if loss == Loss::Kto {
        match get("label") {
            Value::Bool(b) => Some(*b),
            Value::Null => {
                return Err(InputError::field(
                    path,
                    line,
                    "label",
                    "is missing (KTO rows need `label`: true or false)",
                ))
            }
            other => {
                return Err(InputError::field(
                    path,
                    line,
                    "label",
                    format!("must be true or false, got {}", type_name(other)),
                ))
            }
        }
    } else {
        None
    };
    let weight = match get("weight") {
        Value::Number(n) => {
            let w = n.as_f64().unwrap_or(f64::NAN);
            if !w.is_finite() || w < 0.0 {
                return Err(InputError::field(path, line, "weight", format!("must be a finite number ≥ 0, got {n}")));
            }
            w
        }
        Value::Null if !tk.require_weight => 1.0,
        Value::Null => {
            return Err(InputError::field(
                path,
                line,
                "weight",
                "is missing (train.jsonl from `east weight` has one; for unweighted data use --weighting none)",
            ))
        }
        other => return Err(InputError::field(path, line, "weight", format!("must be a number, got {}", type_name(other)))),
    };
    Ok(Rendered {
        id,
        line,
        prompt: prompt_text,
        completions,
        standard,
        label,
        weight,
    })
}

/// Cuts `prompt ++ completion` to `max_length`: the completion is kept whole while the prompt
/// keeps at least half the budget; beyond that the completion loses its end and the prompt its
/// beginning. `longest` is the longest completion sharing this prompt (DPO), so every
/// completion of a row is paired with the same prompt. Returns (prompt, was cut).
pub fn truncate_prompt(prompt: &[u32], longest: usize, max_length: usize) -> (Vec<u32>, bool) {
    if prompt.len() + longest <= max_length {
        return (prompt.to_vec(), false);
    }
    let keep = prompt
        .len()
        .min((max_length / 2).max(max_length.saturating_sub(longest)))
        .min(max_length - 1)
        .max(1);
    (prompt[prompt.len() - keep..].to_vec(), keep < prompt.len())
}

fn tokenize(r: Rendered, tk: &Tokenizing, path: &Path) -> Result<(Example, bool), InputError> {
    let err = |field: &str, e: candle_core::Error| InputError::field(path, r.line, field, e);
    let prompt = encode(tk.tokenizer, &r.prompt).map_err(|e| err("prompt", e))?;
    if prompt.is_empty() {
        return Err(InputError::field(path, r.line, "prompt", "has no tokens"));
    }
    let mut completions = Vec::new();
    for (i, c) in r.completions.iter().enumerate() {
        let mut ids = encode(tk.tokenizer, c)
            .map_err(|e| err(if i == 0 { "completion" } else { "rejected" }, e))?;
        if r.standard && ids.last() != Some(&tk.end_of_turn) {
            ids.push(tk.end_of_turn);
        }
        completions.push(ids);
    }
    let longest = completions.iter().map(Vec::len).max().unwrap_or(0);
    let (prompt, mut cut) = truncate_prompt(&prompt, longest, tk.max_length);
    for c in &mut completions {
        let room = tk.max_length - prompt.len();
        if c.len() > room {
            c.truncate(room);
            cut = true;
        }
    }
    Ok((
        Example {
            id: r.id,
            line: r.line,
            prompt,
            completions,
            label: r.label,
            weight: r.weight,
            kl_completion: None,
            kl_prompt: None,
            truncated: cut,
        },
        r.standard,
    ))
}

/// Reads and tokenises `path` for `loss`. Errors name the file, line and field.
pub fn load(path: &Path, loss: Loss, tk: &Tokenizing) -> anyhow::Result<TrainData> {
    let bytes = std::fs::read(path).map_err(|e| InputError::io(path, e))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let mut lines = JsonlBatches::open(path, 4096)?;
    let mut raw = Vec::new();
    while let Some(batch) = lines.next_batch()? {
        for l in batch {
            let v: Value = serde_json::from_str(&l.text).map_err(|e| {
                InputError::line(
                    path,
                    l.number,
                    format!("malformed JSON at column {}: {e}", e.column()),
                )
            })?;
            raw.push((l.number, v));
        }
    }
    let rendered: Vec<Rendered> = raw
        .iter()
        .map(|(n, v)| render_row(v, loss, tk, path, *n))
        .collect::<Result<_, _>>()?;
    let tokenized: Vec<(Example, bool)> = rendered
        .into_par_iter()
        .map(|r| tokenize(r, tk, path))
        .collect::<Result<_, _>>()?;
    let standard = tokenized.iter().filter(|(_, s)| *s).count();
    let mut examples: Vec<Example> = tokenized.into_iter().map(|(e, _)| e).collect();
    if loss == Loss::Kto {
        kl_partners(&mut examples, tk.max_length);
    }
    let truncated = examples.iter().filter(|e| e.truncated).count();
    Ok(TrainData {
        path: path.to_path_buf(),
        sha256,
        loss,
        conversational: examples.len() - standard,
        standard,
        examples,
        truncated,
    })
}

/// KTO's KL estimate pairs each prompt with the completion of another question, as TRL's
/// KTOTrainer does (it rotates completions by one within each batch of its preprocessing).
/// Here the partner of example `i` is the nearest earlier example in file order (cyclically)
/// whose prompt differs, so `east weight`'s adjacent desirable/undesirable rows of one question
/// never pair with each other; fixed before training, so the reference values can be cached.
pub fn kl_partners(examples: &mut [Example], max_length: usize) {
    let n = examples.len();
    let partners: Vec<usize> = (0..n)
        .map(|i| {
            (1..n)
                .map(|d| (i + n - d) % n)
                .find(|&j| examples[j].prompt != examples[i].prompt)
                .unwrap_or((i + n - 1) % n)
        })
        .collect();
    let completions: Vec<Vec<u32>> = partners
        .iter()
        .map(|&j| examples[j].completions[0].clone())
        .collect();
    for (e, c) in examples.iter_mut().zip(completions) {
        let (p, _) = truncate_prompt(&e.prompt, c.len(), max_length);
        let room = max_length - p.len();
        let mut c = c;
        c.truncate(room);
        e.kl_prompt = Some(p);
        e.kl_completion = Some(c);
    }
}

/// The rows one micro-batch of examples gives the policy: SFT/KTO one per example, DPO the
/// chosen rows then the rejected rows (as TRL's concatenated forward).
pub fn pack(examples: &[&Example]) -> Packed {
    let mut p = Packed::new();
    let k = examples.first().map(|e| e.completions.len()).unwrap_or(1);
    for c in 0..k {
        for e in examples {
            p.push(&e.prompt, &e.completions[c]);
        }
    }
    p
}

/// KTO's mismatched rows for the KL estimate.
pub fn pack_kl(examples: &[&Example]) -> Packed {
    let mut p = Packed::new();
    for e in examples {
        p.push(
            e.kl_prompt.as_ref().expect("KTO examples have KL rows"),
            e.kl_completion.as_ref().expect("KTO examples have KL rows"),
        );
    }
    p
}

/// The order of examples in `epoch` (seeded; every epoch a new permutation).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut h = Sha256::new();
    h.update(b"east-train-order");
    h.update(seed.to_le_bytes());
    h.update((epoch as u64).to_le_bytes());
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(h.finalize().into());
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_completion_while_the_prompt_keeps_half() {
        let p: Vec<u32> = (0..10).collect();
        assert_eq!(truncate_prompt(&p, 5, 20), (p.clone(), false));
        // 10 + 15 > 20: prompt keeps max(10, 5) = 10 → completion must lose 5
        assert_eq!(truncate_prompt(&p, 15, 20).0.len(), 10);
        // 10 + 8 > 16: prompt keeps max(8, 8) = 8 (its end)
        assert_eq!(truncate_prompt(&p, 8, 16).0, (2..10).collect::<Vec<u32>>());
        // tiny budget: at least one prompt token, at most max_length − 1
        assert_eq!(truncate_prompt(&p, 1, 2).0, vec![9]);
    }

    #[test]
    fn packing_lays_rows_end_to_end_with_targets_on_the_response() {
        let e = |p: Vec<u32>, c: Vec<Vec<u32>>| Example {
            id: "x".into(),
            line: 1,
            prompt: p,
            completions: c,
            label: None,
            weight: 1.0,
            kl_completion: None,
            kl_prompt: None,
            truncated: false,
        };
        let a = e(vec![1, 2], vec![vec![3, 4], vec![5]]);
        let b = e(vec![6], vec![vec![7], vec![8, 9]]);
        let p = pack(&[&a, &b]);
        assert_eq!(p.tokens, vec![1, 2, 3, 4, 6, 7, 1, 2, 5, 6, 8, 9]);
        assert_eq!(p.rows, vec![0, 4, 6, 9, 12]);
        let t: Vec<(usize, u32, usize)> = p.targets.iter().map(|t| (t.pos, t.id, t.row)).collect();
        assert_eq!(
            t,
            vec![
                (1, 3, 0),
                (2, 4, 0),
                (4, 7, 1),
                (7, 5, 2),
                (9, 8, 3),
                (10, 9, 3)
            ]
        );
        assert_eq!(p.positions(), vec![0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(100, 42, 0);
        assert_eq!(a, epoch_order(100, 42, 0));
        assert_ne!(a, epoch_order(100, 42, 1));
        assert_ne!(a, epoch_order(100, 43, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }
}
