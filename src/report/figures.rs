//! The report's figures, one function each: accuracy against a (the paper's Figure 3), accuracy
//! per round (Figure 4), the training questions at (H(x), 1 − A(x)) coloured by R(x) (Figure 5)
//! and the distribution of question weights.

use std::collections::{BTreeMap, BTreeSet};

use super::svg::{Mark, Plot, Series};
use super::RunView;
use crate::schema::ClusterRecord;
use crate::train::loss::Weighting;
use crate::weight::{Mapping, Metric};

/// A point with an interval: `(x, (y, y_low, y_high))`.
type Point = (f64, (f64, f64, f64));

/// Round-1 accuracy against the exponent a, one line per loss and dataset with Wilson error
/// bars, over the runs `a` matters for (power mapping, data weighting; vanilla at a = 0).
/// `None` unless some line has two points.
pub fn accuracy_vs_a(views: &[RunView], datasets: &[String]) -> Option<Plot> {
    let mut by_a: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for v in views {
        let w = &v.config.weight;
        let on_axis = matches!(w.metric, Metric::Entropy | Metric::Uniform);
        if w.mapping != Mapping::Power || !on_axis || v.config.train.weighting != Weighting::Data {
            continue;
        }
        // Vanilla (uniform weights) is the a = 0 point of the power mapping.
        let a = if w.metric == Metric::Uniform {
            0.0
        } else {
            w.a
        };
        for d in datasets {
            if let Some(e) = v.evals.get(&(1, d.clone())) {
                let acc = e.accuracy();
                by_a.entry(format!("{} {}", v.config.train.loss.name(), d))
                    .or_default()
                    .push((a, percent(acc.accuracy, acc.ci95.low, acc.ci95.high)));
            }
        }
    }
    if !by_a.values().any(|p| p.len() >= 2) {
        return None;
    }
    let series = by_a
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            with_errors(name, &points)
        })
        .collect();
    Some(Plot {
        title: "Accuracy against the exponent a (round 1)".into(),
        x_label: "a".into(),
        y_label: "accuracy (%), 95% interval".into(),
        series,
        shade_label: None,
        integer_x: false,
        from_zero: false,
    })
}

/// Accuracy per round, one line per run and dataset with Wilson error bars. Lines are nudged
/// apart sideways (a few hundredths of a round each) so their bars do not hide each other.
pub fn accuracy_per_round(views: &[RunView], datasets: &[String]) -> Option<Plot> {
    let mut lines = Vec::new();
    for v in views {
        for d in datasets {
            let points: Vec<Point> = v
                .evals
                .iter()
                .filter(|((_, ds), _)| ds == d)
                .map(|((t, _), e)| {
                    let acc = e.accuracy();
                    (
                        *t as f64,
                        percent(acc.accuracy, acc.ci95.low, acc.ci95.high),
                    )
                })
                .collect();
            if !points.is_empty() {
                lines.push((format!("{} {}", v.name, d), points));
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    let middle = (lines.len() - 1) as f64 / 2.0;
    let step = (0.3 / lines.len() as f64).min(0.04);
    let series = lines
        .into_iter()
        .enumerate()
        .map(|(i, (name, points))| {
            let shift = (i as f64 - middle) * step;
            let moved: Vec<_> = points.iter().map(|(x, y)| (x + shift, *y)).collect();
            with_errors(name, &moved)
        })
        .collect();
    Some(Plot {
        title: "Accuracy per round".into(),
        x_label: "round (0 = base model)".into(),
        y_label: "accuracy (%), 95% interval".into(),
        series,
        shade_label: None,
        integer_x: true,
        from_zero: false,
    })
}

/// Figure 5 as the paper draws it: each sampled question at (H(x), 1 − A(x)), coloured by R(x),
/// the share of its samples in the largest wrong cluster. `trained` holds the ids of the round's
/// training set when there is one: its questions are discs, the others rings.
pub fn entropy_scatter(
    title: &str,
    records: &[ClusterRecord],
    trained: Option<&BTreeSet<String>>,
) -> Plot {
    let (kept, left): (Vec<&ClusterRecord>, Vec<&ClusterRecord>) = records
        .iter()
        .partition(|r| trained.is_none_or(|ids| ids.contains(&r.id)));
    let series = |name: String, rs: &[&ClusterRecord], hollow: bool| Series {
        name,
        points: rs.iter().map(|r| (r.entropy, 1.0 - r.accuracy)).collect(),
        mark: Mark::Scatter,
        shade: Some(rs.iter().map(|r| r.dominant_wrong).collect()),
        y_errors: None,
        hollow,
    };
    let mut all = Vec::new();
    match trained {
        Some(_) => {
            all.push(series(format!("{} trained on", kept.len()), &kept, false));
            if !left.is_empty() {
                all.push(series(
                    format!("{} not in train.jsonl", left.len()),
                    &left,
                    true,
                ));
            }
        }
        None => all.push(series(format!("{} questions", kept.len()), &kept, false)),
    }
    Plot {
        title: title.to_string(),
        x_label: "H(x): answer entropy (bits)".into(),
        y_label: "1 − A(x): share of wrong samples".into(),
        series: all,
        shade_label: Some("R(x): largest wrong answer's share of the samples".into()),
        integer_x: false,
        from_zero: true,
    }
}

/// A 20-bin histogram of one weight per question; `None` without weights.
pub fn histogram(values: &[f64], title: &str) -> Option<Plot> {
    if values.is_empty() {
        return None;
    }
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let bins = 20usize;
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let mut counts = vec![0usize; bins];
    for v in values {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let points = counts
        .iter()
        .enumerate()
        .map(|(b, &c)| (lo + (b as f64 + 0.5) * width, c as f64))
        .collect();
    Some(Plot {
        title: title.to_string(),
        x_label: "weight".into(),
        y_label: "questions".into(),
        series: vec![Series::new(
            format!("{} questions", values.len()),
            points,
            Mark::Bars(width),
        )],
        shade_label: None,
        integer_x: false,
        from_zero: false,
    })
}

/// An accuracy and its interval, as fractions, in percent.
fn percent(value: f64, low: f64, high: f64) -> (f64, f64, f64) {
    (100.0 * value, 100.0 * low, 100.0 * high)
}

/// A line through `(x, (y, low, high))` with its error bars.
fn with_errors(name: String, points: &[Point]) -> Series {
    let mut s = Series::new(
        name,
        points.iter().map(|(x, (y, _, _))| (*x, *y)).collect(),
        Mark::Line,
    );
    s.y_errors = Some(points.iter().map(|(_, (_, lo, hi))| (*lo, *hi)).collect());
    s
}
