//! Datasets: the bundled GSM8K, MATH and MATH-500 copies, or any JSONL file with configurable
//! field names, turned into [`Question`]s with a final reference answer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::grade;
use crate::io::{read_jsonl, InputError};

pub use crate::model::chat::{east_messages, Message, EAST_SYSTEM_PROMPT};

/// One question with its ground-truth final answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Stable id: `<dataset>/<split>/<line index>` for bundled data, or the id field of a custom file.
    pub id: String,
    pub question: String,
    /// The final answer (already extracted from a worked solution where the dataset has one).
    pub answer: String,
    /// MATH difficulty ("Level 1".."Level 5"), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// MATH subject ("Algebra", …), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Which dataset to read: a bundled one by name, or a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    Gsm8k,
    Math,
    Math500,
    File(PathBuf),
}

impl DatasetSpec {
    pub fn parse(s: &str) -> DatasetSpec {
        match s {
            "gsm8k" => DatasetSpec::Gsm8k,
            "math" => DatasetSpec::Math,
            "math500" => DatasetSpec::Math500,
            path => DatasetSpec::File(PathBuf::from(path)),
        }
    }

    pub fn name(&self) -> String {
        match self {
            DatasetSpec::Gsm8k => "gsm8k".into(),
            DatasetSpec::Math => "math".into(),
            DatasetSpec::Math500 => "math500".into(),
            DatasetSpec::File(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetSpec::File(p) => write!(f, "{}", p.display()),
            other => f.write_str(&other.name()),
        }
    }
}

/// How the reference answer of a custom JSONL file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AnswerFormat {
    /// `#### N` → GSM8K style, a `\boxed{}` → MATH style, anything else is the answer itself.
    #[default]
    Auto,
    /// The field holds the final answer.
    Final,
    /// A GSM8K worked solution ending in `#### N`.
    Gsm8k,
    /// A worked solution whose last `\boxed{}` holds the answer.
    Boxed,
}

/// Field names of a custom JSONL dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMap {
    /// Question text field; when absent from a record, `problem` is tried.
    pub question: String,
    /// Reference answer field.
    pub answer: String,
    pub answer_format: AnswerFormat,
    /// Optional id field; otherwise ids are `<file stem>/<line index>`.
    pub id: Option<String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            question: "question".into(),
            answer: "answer".into(),
            answer_format: AnswerFormat::Auto,
            id: None,
        }
    }
}

/// `[data]`: the training questions that are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `gsm8k`, `math`, `math500` or a path to a JSONL file.
    pub dataset: String,
    /// `train` or `test` (a JSONL file has no splits: ignored).
    pub split: String,
    /// Use only the first `limit` questions.
    pub limit: Option<usize>,
    /// Field names of a custom JSONL file.
    pub fields: FieldMap,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "gsm8k".into(),
            split: "train".into(),
            limit: None,
            fields: FieldMap::default(),
        }
    }
}

impl DataConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.limit == Some(0) {
            return Err(("limit", "must be at least 1 when set".into()));
        }
        if !matches!(self.split.as_str(), "train" | "test") && !self.dataset.ends_with(".jsonl") {
            return Err((
                "split",
                format!("must be train or test, got `{}`", self.split),
            ));
        }
        Ok(())
    }

    /// The questions this section selects.
    pub fn questions(&self) -> anyhow::Result<Vec<Question>> {
        load_questions(&self.dataset, &self.split, self.limit, &self.fields)
    }
}

/// The first `limit` questions of a dataset split; an empty selection is an error.
pub fn load_questions(
    dataset: &str,
    split: &str,
    limit: Option<usize>,
    fields: &FieldMap,
) -> anyhow::Result<Vec<Question>> {
    let mut questions = load(&DatasetSpec::parse(dataset), split, fields)?;
    if let Some(limit) = limit {
        questions.truncate(limit);
    }
    if questions.is_empty() {
        anyhow::bail!("dataset {dataset} ({split}) has no questions");
    }
    Ok(questions)
}

/// Errors of dataset loading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("dataset {dataset} has no split `{split}` (available: {available})")]
    NoSplit {
        dataset: String,
        split: String,
        available: &'static str,
    },
}

const GSM8K_TRAIN: &str = include_str!("../../data/gsm8k/train.jsonl");
const GSM8K_TEST: &str = include_str!("../../data/gsm8k/test.jsonl");
const MATH_TRAIN: &str = include_str!("../../data/math/train.jsonl");
const MATH_TEST: &str = include_str!("../../data/math/test.jsonl");
const MATH500_TEST: &str = include_str!("../../data/math/test500.jsonl");

/// Loads the questions of a dataset split. Bundled datasets are compiled into the binary, so
/// `east` finds them wherever it is installed.
pub fn load(
    spec: &DatasetSpec,
    split: &str,
    fields: &FieldMap,
) -> Result<Vec<Question>, DataError> {
    let (text, origin, style) = match (spec, split) {
        (DatasetSpec::Gsm8k, "train") => (GSM8K_TRAIN, "data/gsm8k/train.jsonl", Bundled::Gsm8k),
        (DatasetSpec::Gsm8k, "test") => (GSM8K_TEST, "data/gsm8k/test.jsonl", Bundled::Gsm8k),
        (DatasetSpec::Math, "train") => (MATH_TRAIN, "data/math/train.jsonl", Bundled::Math),
        (DatasetSpec::Math, "test") => (MATH_TEST, "data/math/test.jsonl", Bundled::Math),
        (DatasetSpec::Math500, "test") => {
            (MATH500_TEST, "data/math/test500.jsonl", Bundled::Math500)
        }
        (DatasetSpec::File(path), _) => return load_file(path, fields),
        (DatasetSpec::Math500, _) => {
            return Err(DataError::NoSplit {
                dataset: spec.name(),
                split: split.into(),
                available: "test",
            })
        }
        _ => {
            return Err(DataError::NoSplit {
                dataset: spec.name(),
                split: split.into(),
                available: "train, test",
            })
        }
    };
    parse_bundled(text, Path::new(origin), &spec.name(), split, style)
}

#[derive(Clone, Copy)]
enum Bundled {
    Gsm8k,
    Math,
    Math500,
}

fn parse_bundled(
    text: &str,
    origin: &Path,
    name: &str,
    split: &str,
    style: Bundled,
) -> Result<Vec<Question>, DataError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let record: Value = serde_json::from_str(line)
            .map_err(|e| InputError::line(origin, number, e.to_string()))?;
        let get = |field: &str| -> Result<String, InputError> {
            match record.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(InputError::field(
                    origin,
                    number,
                    field,
                    "missing or not a string",
                )),
            }
        };
        let id = format!("{name}/{split}/{index}");
        let q = match style {
            Bundled::Gsm8k => {
                let answer = get("answer")?;
                Question {
                    id,
                    question: get("question")?,
                    answer: grade::gsm8k_reference(&answer).ok_or_else(|| {
                        InputError::field(origin, number, "answer", "no `#### N` final answer")
                    })?,
                    level: None,
                    subject: None,
                }
            }
            Bundled::Math => {
                let solution = get("solution")?;
                Question {
                    id,
                    question: get("problem")?,
                    answer: grade::math_reference(&solution).ok_or_else(|| {
                        InputError::field(origin, number, "solution", "no \\boxed{} answer")
                    })?,
                    level: get("level").ok(),
                    subject: get("type").ok(),
                }
            }
            Bundled::Math500 => Question {
                id,
                question: get("problem")?,
                answer: get("answer")?,
                level: get("level").ok().map(|l| format!("Level {l}")),
                subject: get("subject").ok(),
            },
        };
        out.push(q);
    }
    Ok(out)
}

fn load_file(path: &Path, fields: &FieldMap) -> Result<Vec<Question>, DataError> {
    let records: Vec<(usize, Value)> = read_jsonl(path)?;
    let stem = DatasetSpec::File(path.to_path_buf()).name();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(records.len());
    for (index, (number, record)) in records.into_iter().enumerate() {
        let text_field = |field: &str| -> Option<String> {
            match record.get(field)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let question = text_field(&fields.question)
            .or_else(|| {
                if fields.question == "question" {
                    text_field("problem")
                } else {
                    None
                }
            })
            .ok_or_else(|| {
                InputError::field(path, number, &fields.question, "missing or not a string")
            })?;
        let raw_answer = text_field(&fields.answer).ok_or_else(|| {
            InputError::field(path, number, &fields.answer, "missing or not a string")
        })?;
        let answer = reference_answer(&raw_answer, fields.answer_format).ok_or_else(|| {
            InputError::field(
                path,
                number,
                &fields.answer,
                "no final answer could be read from it",
            )
        })?;
        let id = match &fields.id {
            Some(f) => text_field(f)
                .ok_or_else(|| InputError::field(path, number, f, "missing or not a string"))?,
            None => format!("{stem}/{index}"),
        };
        if !seen.insert(id.clone()) {
            return Err(InputError::field(
                path,
                number,
                fields.id.as_deref().unwrap_or("id"),
                format!("duplicate id `{id}`"),
            )
            .into());
        }
        out.push(Question {
            id,
            question,
            answer,
            level: text_field("level"),
            subject: text_field("subject").or_else(|| text_field("type")),
        });
    }
    Ok(out)
}

/// Reads the final reference answer out of an answer field written in `format`.
pub fn reference_answer(raw: &str, format: AnswerFormat) -> Option<String> {
    match format {
        AnswerFormat::Final => Some(raw.trim().to_string()).filter(|s| !s.is_empty()),
        AnswerFormat::Gsm8k => grade::gsm8k_reference(raw),
        AnswerFormat::Boxed => grade::math_reference(raw),
        AnswerFormat::Auto => {
            if raw.contains("####") {
                grade::gsm8k_reference(raw)
            } else if raw.contains("\\boxed") || raw.contains("\\fbox") {
                grade::math_reference(raw)
            } else {
                reference_answer(raw, AnswerFormat::Final)
            }
        }
    }
}

/// Keeps the questions of shard `index` of `count` (0-based), by position: question j goes to
/// shard j mod count, so shards are balanced and their union is the whole set with no duplicates.
pub fn shard<T>(items: Vec<T>, index: usize, count: usize) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .filter(|(j, _)| j % count == index)
        .map(|(_, q)| q)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_splits_have_the_documented_sizes() {
        let f = FieldMap::default();
        assert_eq!(load(&DatasetSpec::Gsm8k, "train", &f).unwrap().len(), 7473);
        assert_eq!(load(&DatasetSpec::Gsm8k, "test", &f).unwrap().len(), 1319);
        assert_eq!(load(&DatasetSpec::Math, "train", &f).unwrap().len(), 7500);
        assert_eq!(load(&DatasetSpec::Math, "test", &f).unwrap().len(), 5000);
        let m500 = load(&DatasetSpec::Math500, "test", &f).unwrap();
        assert_eq!(m500.len(), 500);
        assert_eq!(m500[0].answer, "\\left( 3, \\frac{\\pi}{2} \\right)");
        assert_eq!(m500[0].level.as_deref(), Some("Level 2"));
        assert!(matches!(
            load(&DatasetSpec::Math500, "train", &f),
            Err(DataError::NoSplit { .. })
        ));
    }

    #[test]
    fn gsm8k_first_question_reads_its_final_answer() {
        let qs = load(&DatasetSpec::Gsm8k, "train", &FieldMap::default()).unwrap();
        assert_eq!(qs[0].id, "gsm8k/train/0");
        assert!(qs[0].question.starts_with("Natalia sold clips"));
        assert_eq!(qs[0].answer, "72");
    }

    #[test]
    fn shards_partition_the_questions() {
        let items: Vec<usize> = (0..10).collect();
        let mut all: Vec<usize> = (0..3).flat_map(|i| shard(items.clone(), i, 3)).collect();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(shard(items, 1, 3), vec![1, 4, 7]);
    }

    #[test]
    fn custom_file_with_field_names_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.jsonl");
        std::fs::write(
            &path,
            "{\"q\":\"1+1?\",\"a\":\"so #### 2\"}\n{\"q\":\"2+2?\",\"a\":\"$\\\\boxed{4}$\"}\n",
        )
        .unwrap();
        let fields = FieldMap {
            question: "q".into(),
            answer: "a".into(),
            ..FieldMap::default()
        };
        let qs = load(&DatasetSpec::File(path.clone()), "train", &fields).unwrap();
        assert_eq!(qs[0].answer, "2");
        assert_eq!(qs[1].answer, "4");
        assert_eq!(qs[1].id, "mine/1");

        std::fs::write(&path, "{\"q\":\"1+1?\",\"a\":\"2\"}\n{\"q\":\"2+2?\"}\n").unwrap();
        let err = load(&DatasetSpec::File(path.clone()), "train", &fields)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mine.jsonl:2:") && err.contains("`a`"),
            "{err}"
        );
    }
}
