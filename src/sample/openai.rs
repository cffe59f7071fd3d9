//! `east sample` through an OpenAI-compatible server (`sample.backend = "openai"`): the same
//! questions, prompts, files and guarantees as the native sampler, the completions from the
//! server. Each question is one job of n completions (split into requests of
//! `server.n_per_request`, or fewer once the server refuses n > 1); finished questions are
//! appended in question order, so a killed run resumes as the native one does.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::ProgressBar;

use crate::data::Question;
use crate::io::{AppendLog, InputError};
use crate::model::ModelText;
use crate::progress::MetricsLog;
use crate::schema::SampleRecord;
use crate::serve::{self, Served};

/// Samples the questions `todo` (indices into `questions`, in order) through `server`; returns
/// the number of generated tokens (counted with east's tokenizer: servers count one choice only).
#[allow(clippy::too_many_arguments)]
pub(super) fn sample_via_server(
    text: &ModelText,
    server: &Served,
    questions: &[Question],
    todo: &[usize],
    n: usize,
    params: &serve::GenParams,
    seed: u64,
    log: &mut AppendLog,
    metrics: &mut MetricsLog,
    bar: &ProgressBar,
) -> anyhow::Result<usize> {
    let jobs: Vec<serve::Job> = todo
        .iter()
        .map(|&i| {
            Ok(serve::Job {
                id: questions[i].id.clone(),
                prompt: server.prompt(text, &questions[i].question)?,
                first_sample: 0,
                samples: n,
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let fallbacks: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let on_fallback = |k: usize, why: &str| {
        // on stderr whether or not the bar is drawn (println shows only on a terminal)
        bar.suspend(|| eprintln!("server: {k} completion(s) per request from now on ({why})"));
        fallbacks.lock().unwrap().push((k, why.to_string()));
    };
    let started = Instant::now();
    let (mut generated, mut completions) = (0usize, 0usize);
    let out = log.path().to_path_buf();
    serve::generate(server, &jobs, params, seed, &on_fallback, |j, choices| {
        for (k, why) in fallbacks.lock().unwrap().drain(..) {
            metrics.log(
                &serde_json::json!({"event": "n_per_request", "n_per_request": k, "reason": why}),
            )?;
        }
        let i = todo[j];
        let q = &questions[i];
        let mut tokens = Vec::with_capacity(choices.len());
        for c in &choices {
            tokens.push(crate::model::tokenizer::encode(&text.tokenizer, &c.text)?.len() as u32);
        }
        let count: u32 = tokens.iter().sum();
        generated += count as usize;
        completions += choices.len();
        let record = SampleRecord {
            id: q.id.clone(),
            question: q.question.clone(),
            answer: q.answer.clone(),
            finish: Some(choices.iter().map(|c| c.finish).collect()),
            tokens: Some(tokens),
            completions: choices.into_iter().map(|c| c.text).collect(),
            index: Some(i),
        };
        log.append(&record).map_err(|e| InputError::io(&out, e))?;
        log.sync().map_err(|e| InputError::io(&out, e))?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        metrics.log(&serde_json::json!({"event": "question", "index": i, "completions": record.completions.len(),
                "generated_tokens": count, "seconds_since_start": secs}))?;
        bar.inc(1);
        bar.set_message(format!(
            "{:.1} completions/s, {:.0} tok/s",
            completions as f64 / secs,
            generated as f64 / secs
        ));
        Ok(())
    })?;
    Ok(generated)
}

/// The questions of `units` not yet in the file, in order.
pub(super) fn todo_of(
    units: &[std::ops::Range<usize>],
    questions: &[Question],
    done: &HashSet<String>,
) -> Vec<usize> {
    units
        .iter()
        .flat_map(|u| u.clone())
        .filter(|&i| !done.contains(&questions[i].id))
        .collect()
}
