//! The [`Generator`] of east's own batched decoder: each group of questions is decoded together,
//! a question's n samples in chunks of `work.chunk` rows.

use std::time::Instant;

use super::{Completion, Generator, Sink, Span, Work};
use crate::decode::{generate_group, Generation, Request};
use crate::model::{LoadedModel, ModelText};
use crate::serve::Served;

impl Generator for LoadedModel {
    fn text(&self) -> &ModelText {
        self
    }

    fn served(&self) -> Option<&Served> {
        None
    }

    fn generate(&self, work: &Work, sink: &mut dyn Sink) -> anyhow::Result<()> {
        for group in &work.groups {
            if group.iter().all(|&i| work.is_done(i)) {
                continue;
            }
            // The whole group is decoded even when part of it was written before a crash: its
            // samples depend on which rows share the batch.
            let (per_question, spans) = decode_group(self, work, group, sink)?;
            for (&i, gens) in group.iter().zip(per_question) {
                if !work.is_done(i) {
                    sink.question(i, gens.into_iter().map(Completion::from).collect())?;
                }
            }
            sink.flush(&spans)?;
        }
        Ok(())
    }
}

/// Decodes every sample of `group`'s questions, `work.chunk` samples per question at a time;
/// returns each question's samples in order and one span per chunk.
fn decode_group(
    lm: &LoadedModel,
    work: &Work,
    group: &[usize],
    sink: &mut dyn Sink,
) -> anyhow::Result<(Vec<Vec<Generation>>, Vec<Span>)> {
    let mut per_question: Vec<Vec<Generation>> = vec![Vec::new(); group.len()];
    let mut spans = Vec::new();
    let chunk = work.chunk.min(work.samples).max(1);
    let mut first = 0;
    while first < work.samples {
        let take = chunk.min(work.samples - first);
        let requests: Vec<Request> = group
            .iter()
            .map(|&i| Request {
                prompt_ids: work.prompt_ids[i].clone(),
                id: work.questions[i].id.clone(),
                first_sample: first,
                samples: take,
            })
            .collect();
        let started = Instant::now();
        let (gens, stats) = generate_group(lm, &requests, &work.decode, |k| sink.progress(k))?;
        spans.push(Span {
            first_question: group[0],
            questions: group.len(),
            first_sample: first,
            rows: take * group.len(),
            prompt_tokens: stats.prompt_tokens,
            generated_tokens: stats.generated,
            steps: Some(stats.steps),
            seconds: started.elapsed().as_secs_f64(),
        });
        for (slot, g) in per_question.iter_mut().zip(gens) {
            slot.extend(g);
        }
        first += take;
    }
    Ok((per_question, spans))
}

impl From<Generation> for Completion {
    fn from(g: Generation) -> Self {
        Completion {
            tokens: g.token_ids.len(),
            text: g.text,
            finish: g.finish,
        }
    }
}
