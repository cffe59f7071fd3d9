//! `east cluster`, the stage after sampling: extract and grade every completion, group a
//! question's completions by final answer, and summarise the groups (entropy, accuracy, dominance
//! of the most common wrong answer) into `clusters.jsonl`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::grade::{self, Answer, GradeOptions};
use crate::io::{parse_line, AtomicFile, InputError, JsonlBatches};
use crate::progress;
use crate::schema::{Cluster, ClusterRecord, SampleRecord};

/// How completions are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterBy {
    /// Exact normalised answer string (the authors' behaviour: "0.5" and "\frac{1}{2}" differ).
    String,
    /// Answers that grade as equal share a cluster.
    Equivalence,
}

/// `[cluster]`: how completions are graded and grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `equivalence` merges answers that grade as equal; `string` is the authors' exact match.
    pub by: ClusterBy,
    /// Qwen2.5-Math toolkit's rule that `pred` equals `ref×100` or `ref/100` (off, as in EAST).
    pub percent_rule: bool,
    /// Rounded decimals: `false` (TOML) compares them exactly, so `0.6667` is not `\frac{2}{3}`;
    /// a relative tolerance (the Qwen toolkit's is `1e-4`) accepts a decimal within it.
    #[serde(with = "approximate")]
    pub approximate: Option<f64>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            by: ClusterBy::Equivalence,
            percent_rule: false,
            approximate: None,
        }
    }
}

impl ClusterConfig {
    /// The grader's options these settings ask for.
    pub fn grade_options(&self) -> GradeOptions {
        GradeOptions {
            percent_rule: self.percent_rule,
            approximate: self.approximate,
            ..GradeOptions::default()
        }
    }

    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.approximate {
            Some(tol) if !(tol > 0.0 && tol < 1.0) => Err((
                "approximate",
                format!("must be false or a relative tolerance in (0, 1), got {tol}"),
            )),
            _ => Ok(()),
        }
    }
}

/// `cluster.approximate` in TOML: `false`, or the tolerance as a number.
mod approximate {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_bool(false),
            Some(tol) => s.serialize_f64(*tol),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Tolerance(f64),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Flag(false)) => Ok(None),
            Ok(Raw::Tolerance(tol)) => Ok(Some(tol)),
            Ok(Raw::Flag(true)) | Err(_) => Err(D::Error::custom(
                "expected false or a relative tolerance such as 1e-4 (the Qwen toolkit's)",
            )),
        }
    }
}

/// Grades and clusters one question's completions.
pub fn cluster_question(
    record: &SampleRecord,
    by: ClusterBy,
    opts: &GradeOptions,
) -> ClusterRecord {
    let n = record.completions.len();
    let reference = Answer::parse(&record.answer);

    // Extract once per completion, then work on distinct normalised answers only: a question's
    // n completions typically hold far fewer distinct answers.
    let mut distinct: Vec<Answer> = Vec::new();
    let mut distinct_count: Vec<usize> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut distinct_of: Vec<Option<usize>> = Vec::with_capacity(n);
    for completion in &record.completions {
        let slot = grade::extract_answer(completion).map(|raw| {
            let answer = Answer::parse(&raw);
            match index_of.get(&answer.normalized) {
                Some(&i) => i,
                None => {
                    index_of.insert(answer.normalized.clone(), distinct.len());
                    distinct.push(answer);
                    distinct_count.push(0);
                    distinct.len() - 1
                }
            }
        });
        if let Some(i) = slot {
            distinct_count[i] += 1;
        }
        distinct_of.push(slot);
    }
    let distinct_correct: Vec<bool> = distinct
        .iter()
        .map(|a| a.equivalent(&reference, opts))
        .collect();

    // Map distinct answers to clusters, in order of first appearance.
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut cluster_of_distinct: Vec<usize> = vec![usize::MAX; distinct.len()];
    let mut representative: Vec<usize> = Vec::new(); // distinct index of each cluster's first member
    let mut correct_cluster: Option<usize> = None;
    for (d, answer) in distinct.iter().enumerate() {
        let found = match by {
            ClusterBy::String => None,
            // Every correct answer is equivalent to the reference, hence to every other correct
            // answer: they form one cluster without pairwise comparisons.
            ClusterBy::Equivalence if distinct_correct[d] => correct_cluster,
            ClusterBy::Equivalence => representative
                .iter()
                .position(|&r| !distinct_correct[r] && distinct[r].equivalent(answer, opts)),
        };
        let c = match found {
            Some(c) => c,
            None => {
                clusters.push(Cluster {
                    answer: Some(answer.normalized.clone()),
                    count: 0,
                    correct: distinct_correct[d],
                });
                representative.push(d);
                clusters.len() - 1
            }
        };
        if distinct_correct[d] && correct_cluster.is_none() {
            correct_cluster = Some(c);
        }
        cluster_of_distinct[d] = c;
        clusters[c].count += distinct_count[d];
    }
    let no_answer = distinct_of.iter().filter(|s| s.is_none()).count();
    let none_cluster = if no_answer > 0 {
        clusters.push(Cluster {
            answer: None,
            count: no_answer,
            correct: false,
        });
        clusters.len() - 1
    } else {
        usize::MAX
    };

    let cluster_of: Vec<usize> = distinct_of
        .iter()
        .map(|s| s.map_or(none_cluster, |d| cluster_of_distinct[d]))
        .collect();
    let preds: Vec<Option<String>> = distinct_of
        .iter()
        .map(|s| s.map(|d| distinct[d].normalized.clone()))
        .collect();
    let correct: Vec<bool> = distinct_of
        .iter()
        .map(|s| s.is_some_and(|d| distinct_correct[d]))
        .collect();
    let n_correct = correct.iter().filter(|&&c| c).count();
    let entropy = entropy_bits(clusters.iter().map(|c| c.count), n);
    let dominant = clusters
        .iter()
        .filter(|c| !c.correct)
        .map(|c| c.count)
        .max()
        .unwrap_or(0);

    ClusterRecord {
        id: record.id.clone(),
        answer: record.answer.clone(),
        preds,
        correct,
        clusters,
        cluster_of,
        entropy,
        accuracy: n_correct as f64 / n as f64,
        dominant_wrong: dominant as f64 / n as f64,
        samples_sha256: Some(record.fingerprint()),
    }
}

/// Shannon entropy in bits of the proportions `count / n`.
pub fn entropy_bits(counts: impl Iterator<Item = usize>, n: usize) -> f64 {
    let n = n as f64;
    let h: f64 = counts
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    // A single cluster gives -1·log2(1) = -0.0; report it as 0.
    h.max(0.0)
}

/// What `east cluster` did.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSummary {
    pub samples: PathBuf,
    pub out: PathBuf,
    pub questions: usize,
    pub completions: usize,
    pub no_answer: usize,
    pub correct: usize,
    pub questions_all_wrong: usize,
    pub questions_all_correct: usize,
}

/// Lines parsed and graded in parallel per batch; batches are written in order, so memory stays
/// bounded by one batch whatever the file size.
const BATCH_LINES: usize = 256;

/// Reads `samples`, writes `out` (atomically) and returns counts. `references` (question id →
/// answer, from `east cluster --dataset`) replace the reference answers of the samples file.
pub fn cluster_file(
    samples: &Path,
    out: &Path,
    config: &ClusterConfig,
    references: Option<&HashMap<String, String>>,
) -> anyhow::Result<ClusterSummary> {
    let grade = config.grade_options();
    let total_bytes = std::fs::metadata(samples)
        .map_err(|e| InputError::io(samples, e))?
        .len();
    let bar = progress::bytes_bar(total_bytes, "cluster");
    let mut batches = JsonlBatches::open(samples, BATCH_LINES)?;
    let mut writer = AtomicFile::create(out)?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut summary = ClusterSummary {
        samples: samples.to_path_buf(),
        out: out.to_path_buf(),
        questions: 0,
        completions: 0,
        no_answer: 0,
        correct: 0,
        questions_all_wrong: 0,
        questions_all_correct: 0,
    };
    while let Some(batch) = batches.next_batch()? {
        let results: Vec<Result<ClusterRecord, InputError>> = batch
            .par_iter()
            .map(|line| {
                let mut record: SampleRecord = parse_line(samples, line)?;
                record.validate(samples, line.number)?;
                if let Some(refs) = references {
                    record.answer = refs.get(&record.id).cloned().ok_or_else(|| {
                        InputError::field(
                            samples,
                            line.number,
                            "id",
                            format!("`{}` is not in the dataset given by --dataset", record.id),
                        )
                    })?;
                }
                Ok(cluster_question(&record, config.by, &grade))
            })
            .collect();
        for (line, result) in batch.iter().zip(results) {
            let record = result?;
            if !seen.insert(record.id.clone()) {
                return Err(InputError::field(
                    samples,
                    line.number,
                    "id",
                    format!("duplicate id `{}`", record.id),
                )
                .into());
            }
            summary.questions += 1;
            summary.completions += record.n();
            summary.no_answer += record.preds.iter().filter(|p| p.is_none()).count();
            let c = record.correct.iter().filter(|&&c| c).count();
            summary.correct += c;
            summary.questions_all_wrong += usize::from(c == 0);
            summary.questions_all_correct += usize::from(c == record.n());
            writer.write_json_line(&record)?;
            bar.inc(line.text.len() as u64 + 1);
        }
    }
    writer.commit()?;
    bar.finish_and_clear();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(answer: &str, completions: &[&str]) -> SampleRecord {
        SampleRecord {
            id: "q".into(),
            question: "?".into(),
            answer: answer.into(),
            completions: completions.iter().map(|s| s.to_string()).collect(),
            finish: None,
            tokens: None,
            index: None,
        }
    }

    #[test]
    fn entropy_matches_hand_values() {
        assert_eq!(entropy_bits([4].into_iter(), 4), 0.0);
        assert!((entropy_bits([2, 2].into_iter(), 4) - 1.0).abs() < 1e-12);
        assert!((entropy_bits([1, 1, 1, 1].into_iter(), 4) - 2.0).abs() < 1e-12);
        // p = (1/2, 1/4, 1/4): 1/2·1 + 2·1/4·2 = 1.5 bits
        assert!((entropy_bits([2, 1, 1].into_iter(), 4) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn string_mode_splits_equal_values_written_differently() {
        let r = record(
            "1/2",
            &[
                "\\boxed{0.5}",
                "\\boxed{\\frac{1}{2}}",
                "\\boxed{3}",
                "no idea",
            ],
        );
        let c = cluster_question(&r, ClusterBy::String, &GradeOptions::default());
        assert_eq!(c.correct, vec![true, true, false, false]);
        assert_eq!(c.clusters.len(), 4);
        assert_eq!(
            c.clusters[3],
            Cluster {
                answer: None,
                count: 1,
                correct: false
            }
        );
        assert!((c.entropy - 2.0).abs() < 1e-12);
        assert_eq!(c.accuracy, 0.5);
        assert_eq!(c.dominant_wrong, 0.25);
        assert_eq!(c.cluster_of, vec![0, 1, 2, 3]);
    }

    #[test]
    fn equivalence_mode_merges_them() {
        let r = record(
            "1/2",
            &[
                "\\boxed{0.5}",
                "\\boxed{\\frac{1}{2}}",
                "\\boxed{3}",
                "\\boxed{3.0}",
                "no idea",
            ],
        );
        let c = cluster_question(&r, ClusterBy::Equivalence, &GradeOptions::default());
        assert_eq!(c.clusters.len(), 3);
        assert_eq!(c.clusters[0].count, 2);
        assert!(c.clusters[0].correct);
        assert_eq!(c.clusters[1].count, 2);
        assert!(!c.clusters[1].correct);
        assert_eq!(c.cluster_of, vec![0, 0, 1, 1, 2]);
        // p = (2/5, 2/5, 1/5)
        let h = -(2.0 * 0.4 * 0.4f64.log2() + 0.2 * 0.2f64.log2());
        assert!((c.entropy - h).abs() < 1e-12);
        assert_eq!(c.dominant_wrong, 0.4);
    }

    #[test]
    fn no_answer_completions_form_one_wrong_cluster() {
        let r = record("7", &["I give up", "hmm", "\\boxed{7}"]);
        let c = cluster_question(&r, ClusterBy::Equivalence, &GradeOptions::default());
        assert_eq!(c.preds, vec![None, None, Some("7".into())]);
        assert_eq!(c.clusters.len(), 2);
        assert_eq!(
            c.clusters[1],
            Cluster {
                answer: None,
                count: 2,
                correct: false
            }
        );
        assert!((c.dominant_wrong - 2.0 / 3.0).abs() < 1e-12);
    }
}
