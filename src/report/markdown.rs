//! `report.md`: the sections of the report in order, each rendered from numbers computed
//! before (see [`super::write_report`]).

use std::collections::BTreeSet;
use std::fmt::Write;

use super::compare::{self, Outcome, ALPHA};
use super::{average, sampled, Figure, RunView, Summary};
use crate::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};

/// Everything `report.md` shows.
pub struct Document<'a> {
    pub views: &'a [RunView],
    pub summary: &'a Summary,
    /// Per run (in the order of `views`): each round against round 0.
    pub within: &'a [Vec<Outcome>],
    /// `--compare`.
    pub across: &'a [Outcome],
    pub average: Option<&'a average::Table>,
    /// Per run: notes on sampled rounds shown elsewhere.
    pub sampled_notes: &'a [Vec<String>],
    pub figures: &'a [Figure],
}

impl Document<'_> {
    pub fn render(&self) -> String {
        let mut md = String::from("# EAST report\n\n");
        md.push_str(&self.accuracy_table());
        md.push_str(&self.round_0_comparisons());
        if !self.across.is_empty() {
            md.push_str(&compare::render(
                "Run against run",
                "`--compare A B`: B against A on each dataset and round both evaluated, question by question.",
                self.across,
            ));
        }
        if let Some(table) = self.average {
            md.push_str(&average::render(table));
        }
        md.push_str(&self.sampled());
        for f in self.figures {
            let _ = writeln!(md, "## {}\n", f.heading);
            if !f.caption.is_empty() {
                let _ = writeln!(md, "{}\n", f.caption);
            }
            let _ = writeln!(md, "![{}]({})\n", f.heading, f.file);
        }
        md.push_str(&self.time_per_stage());
        md
    }

    /// Table 1: accuracy per run, round and dataset, each with its interval and counts.
    fn accuracy_table(&self) -> String {
        let datasets: BTreeSet<&String> = self
            .views
            .iter()
            .flat_map(|v| v.evals.keys().map(|(_, d)| d))
            .collect();
        let mut md = String::from("## Accuracy (%)\n\nGreedy accuracy in %, then its 95% interval (Wilson's score interval) in brackets, then questions answered correctly / questions. The interval is where the accuracy on the whole population of such questions plausibly lies; two rounds evaluated on the same questions are compared in the next section, not by whether their intervals overlap.\n\n");
        let names: Vec<&str> = datasets.iter().map(|d| d.as_str()).collect();
        let _ = writeln!(
            md,
            "| run | setting | round | grading | {} |",
            names.join(" | ")
        );
        let _ = writeln!(md, "|---|---|---|---|{}", "---|".repeat(names.len()));
        for v in self.views {
            let rounds: BTreeSet<usize> = v.evals.keys().map(|(t, _)| *t).collect();
            for t in rounds {
                let cells: Vec<String> = datasets
                    .iter()
                    .map(|d| {
                        v.evals
                            .get(&(t, (*d).clone()))
                            .map_or("–".into(), |e| e.accuracy().cell())
                    })
                    .collect();
                let gradings: BTreeSet<&str> = v
                    .evals
                    .iter()
                    .filter(|((r, _), _)| *r == t)
                    .map(|(_, e)| e.grading.as_str())
                    .collect();
                let setting = if t == 0 {
                    "base model".to_string()
                } else {
                    v.setting()
                };
                let grading: Vec<&str> = gradings.into_iter().collect();
                let _ = writeln!(
                    md,
                    "| {} | {setting} | {t} | {} | {} |",
                    v.name,
                    grading.join(", "),
                    cells.join(" | ")
                );
            }
        }
        md.push('\n');
        md
    }

    /// Each run's rounds against its round 0, or why there is nothing to compare.
    fn round_0_comparisons(&self) -> String {
        let outcomes: Vec<Outcome> = self.within.iter().flatten().cloned().collect();
        let without_base: Vec<&str> = self
            .views
            .iter()
            .filter(|v| {
                let rounds: BTreeSet<usize> = v.evals.keys().map(|(t, _)| *t).collect();
                !rounds.contains(&0) && !rounds.is_empty()
            })
            .map(|v| v.name.as_str())
            .collect();
        if outcomes.is_empty() && without_base.is_empty() {
            return String::new();
        }
        let intro = format!(
            "The same questions, evaluated before and after training: B − A is the change in points, its 95% interval a paired bootstrap over questions ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}), and McNemar's exact test asks whether the questions only one side got right split more unevenly than a fair coin would (p < {ALPHA}: significant)."
        );
        let mut md = compare::render("Each round against round 0", &intro, &outcomes);
        if !without_base.is_empty() {
            let _ = writeln!(
                md,
                "No round 0 (run.eval_base = false) in {}: compare with a run that has it by `--compare`.\n",
                without_base.join(", ")
            );
        }
        md
    }

    /// pass@k and maj@k per run and sampled round.
    fn sampled(&self) -> String {
        let any = self.summary.runs.iter().any(|r| !r.sampled.is_empty())
            || self.sampled_notes.iter().any(|n| !n.is_empty());
        if !any {
            return String::new();
        }
        let mut md = String::from("## pass@k and maj@k of the samples\n\nFrom each sampled round's clusters.jsonl (the training questions the round sampled). pass@k is Chen et al.'s unbiased estimate that at least one of k samples is right, averaged over questions, with a bootstrap 95% interval over questions; maj@k is the share of questions whose most frequent answer cluster among the first k samples (in the file's order; samples without an answer do not vote; ties go to the cluster that appears first) is the right one, with Wilson's interval.\n\n");
        for ((v, run), notes) in self
            .views
            .iter()
            .zip(&self.summary.runs)
            .zip(self.sampled_notes)
        {
            if !run.sampled.is_empty() {
                md.push_str(&sampled::render(&v.name, &run.sampled));
            }
            for n in notes {
                let _ = writeln!(md, "{n}\n");
            }
        }
        md
    }

    /// Seconds per stage, from each run's `summary.json`.
    fn time_per_stage(&self) -> String {
        if self.views.iter().all(|v| v.rounds.is_empty()) {
            return String::new();
        }
        let mut md = String::from("## Time per stage\n\nSeconds of the attempt that completed each stage; the outcome is that of the last `east run`.\n\n| run | round | stage | last outcome | seconds |\n|---|---|---|---|---|\n");
        for v in self.views {
            for r in &v.rounds {
                for st in &r.stages {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {:.1} |",
                        v.name,
                        r.round,
                        st.stage,
                        st.outcome.as_str(),
                        st.seconds
                    );
                }
            }
        }
        md.push('\n');
        md
    }
}
