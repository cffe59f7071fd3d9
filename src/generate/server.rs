//! The [`Generator`] of an OpenAI-compatible server (`backend = "openai"`): each question is
//! one job of n completions (split into requests of `server.n_per_request`, or fewer once the
//! server refuses n > 1), sent concurrently and delivered in question order, each question made
//! durable as it arrives, so a killed run resumes as the native one does.

use std::sync::Mutex;
use std::time::Instant;

use super::{Completion, Generator, Note, Sink, Span, Work};
use crate::model::tokenizer::encode;
use crate::model::ModelText;
use crate::serve::response::Choice;
use crate::serve::{self, Served};

/// A connected server, and the model text that renders its prompts and counts its tokens.
pub struct ServerGenerator<'a> {
    pub served: &'a Served,
    pub text: ModelText,
}

impl Generator for ServerGenerator<'_> {
    fn text(&self) -> &ModelText {
        &self.text
    }

    fn served(&self) -> Option<&Served> {
        Some(self.served)
    }

    fn generate(&self, work: &Work, sink: &mut dyn Sink) -> anyhow::Result<()> {
        let todo: Vec<usize> = work
            .groups
            .iter()
            .flatten()
            .copied()
            .filter(|&i| !work.is_done(i))
            .collect();
        let jobs = self.jobs(work, &todo)?;
        let params = serve::GenParams {
            temperature: work.decode.sampling.temperature,
            top_p: work.decode.sampling.top_p,
            max_tokens: work.decode.max_new_tokens,
            stop: work.decode.stop.clone(),
        };
        // Workers report fallbacks from their threads; the sink hears of them with the next
        // question delivered.
        let fallbacks: Mutex<Vec<Note>> = Mutex::new(Vec::new());
        let on_fallback = |n: usize, why: &str| {
            let reason = why.to_string();
            fallbacks
                .lock()
                .unwrap()
                .push(Note::PerRequest { n, reason });
        };
        let mut last = Instant::now();
        let on_done = |j: usize, choices: Vec<Choice>| {
            for note in fallbacks.lock().unwrap().drain(..) {
                sink.note(note)?;
            }
            let span = self.deliver(work, todo[j], choices, last, sink)?;
            last = Instant::now();
            sink.flush(&[span])
        };
        let seed = work.decode.seed;
        serve::generate(self.served, &jobs, &params, seed, &on_fallback, on_done)
    }
}

impl ServerGenerator<'_> {
    /// One job per question of `todo`: its prompt as the server takes it, and n completions.
    fn jobs(&self, work: &Work, todo: &[usize]) -> candle_core::Result<Vec<serve::Job>> {
        todo.iter()
            .map(|&i| {
                let q = &work.questions[i];
                Ok(serve::Job {
                    id: q.id.clone(),
                    prompt: self.served.prompt(&self.text, &q.question)?,
                    first_sample: 0,
                    samples: work.samples,
                })
            })
            .collect()
    }

    /// Hands question `i`'s `choices` to `sink`, with their tokens counted by east's
    /// tokenizer; returns what the question took since `since`.
    fn deliver(
        &self,
        work: &Work,
        i: usize,
        choices: Vec<Choice>,
        since: Instant,
        sink: &mut dyn Sink,
    ) -> anyhow::Result<Span> {
        let completions = choices
            .into_iter()
            .map(|c| {
                Ok(Completion {
                    tokens: encode(&self.text.tokenizer, &c.text)?.len(),
                    text: c.text,
                    finish: c.finish,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let generated = completions.iter().map(|c| c.tokens).sum();
        let rows = completions.len();
        sink.progress(generated);
        sink.question(i, completions)?;
        Ok(Span {
            first_question: i,
            questions: 1,
            first_sample: 0,
            rows,
            prompt_tokens: work.prompt_ids[i].len(),
            generated_tokens: generated,
            steps: None,
            seconds: since.elapsed().as_secs_f64(),
        })
    }
}
