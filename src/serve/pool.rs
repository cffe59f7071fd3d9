//! Many questions through one [`Client`]: `concurrency` worker threads send requests for the
//! questions in order, and the finished questions are handed back in that same order (a small
//! window of later questions may finish first and wait), so a samples file's lines come out in
//! question order whatever the server's timing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use super::client::{request_seed, Client, GenParams, Prompt, RequestError};
use super::response::Choice;
use super::Served;

/// The completions one question needs.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub prompt: Prompt,
    /// Sample indices `first_sample..first_sample + samples`.
    pub first_sample: usize,
    pub samples: usize,
}

/// Completions per request, shared by the workers: starts at `n` (or `server.n_per_request`)
/// and drops when the server refuses `n` > 1 or answers fewer choices than asked.
pub struct PerRequest(AtomicUsize);

impl PerRequest {
    pub fn new(n: usize) -> Self {
        PerRequest(AtomicUsize::new(n.max(1)))
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
    /// Lowers the value to `k`; true when this call changed it (to say so once in the log).
    fn lower(&self, k: usize) -> bool {
        self.0.fetch_min(k.max(1), Ordering::Relaxed) > k.max(1)
    }
}

/// Generates every job's completions, calling `on_done(job index, choices)` in job order.
/// `on_fallback(k, reason)` is called when the completions per request drop to k.
/// The first failed request (after its retries) stops the work and is returned; questions
/// already handed to `on_done` stay done.
pub fn generate(
    server: &Served,
    jobs: &[Job],
    params: &GenParams,
    seed: u64,
    on_fallback: &(dyn Fn(usize, &str) + Sync),
    mut on_done: impl FnMut(usize, Vec<Choice>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    // as the native decoder: a template that renders nothing is no prompt to sample from
    if let Some(job) = jobs
        .iter()
        .find(|j| matches!(&j.prompt, Prompt::Text(t) if t.is_empty()))
    {
        anyhow::bail!(
            "question `{}`: empty prompt (the model's chat template rendered nothing)",
            job.id
        );
    }
    let (client, concurrency, per_request) =
        (&server.client, server.concurrency, &server.per_request);
    let next_job = AtomicUsize::new(0);
    let delivered = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Workers run at most this far ahead of the first undelivered question.
    let window = 4 * concurrency.max(1) + 1;
    let (tx, rx) = mpsc::channel::<Result<(usize, usize, Vec<Choice>), RequestError>>();
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.min(jobs.len()).max(1) {
            let tx = tx.clone();
            let (next_job, delivered, stop) = (&next_job, &delivered, &stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let j = next_job.fetch_add(1, Ordering::Relaxed);
                if j >= jobs.len() {
                    return;
                }
                while j >= delivered.load(Ordering::Relaxed) + window {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let r = run_job(
                    client,
                    &jobs[j],
                    params,
                    seed,
                    per_request,
                    on_fallback,
                    stop,
                    |first, c| {
                        let _ = tx.send(Ok((j, first, c)));
                    },
                );
                if let Err(e) = r {
                    stop.store(true, Ordering::Relaxed);
                    let _ = tx.send(Err(e));
                    return;
                }
            });
        }
        drop(tx);
        let mut partial: BTreeMap<usize, Vec<Option<Choice>>> = BTreeMap::new();
        let mut next = 0usize;
        for msg in rx {
            let (j, first, choices) = match msg {
                Ok(m) => m,
                Err(e) => {
                    first_error.lock().unwrap().get_or_insert(e.into());
                    continue;
                }
            };
            if stop.load(Ordering::Relaxed) {
                continue;
            }
            let job = &jobs[j];
            let slots = partial.entry(j).or_insert_with(|| vec![None; job.samples]);
            for (k, c) in choices.into_iter().enumerate() {
                slots[first - job.first_sample + k] = Some(c);
            }
            while partial
                .get(&next)
                .is_some_and(|s| s.iter().all(Option::is_some))
            {
                let done: Vec<Choice> = partial
                    .remove(&next)
                    .unwrap()
                    .into_iter()
                    .flatten()
                    .collect();
                if let Err(e) = on_done(next, done) {
                    stop.store(true, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e);
                    break;
                }
                next += 1;
                delivered.store(next, Ordering::Relaxed);
            }
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends one job's requests (splitting it as `per_request` says), reporting each answer's
/// choices with the sample index of its first one.
#[allow(clippy::too_many_arguments)]
fn run_job(
    client: &Client,
    job: &Job,
    params: &GenParams,
    seed: u64,
    per_request: &PerRequest,
    on_fallback: &(dyn Fn(usize, &str) + Sync),
    stop: &AtomicBool,
    mut report: impl FnMut(usize, Vec<Choice>),
) -> Result<(), RequestError> {
    let end = job.first_sample + job.samples;
    let mut first = job.first_sample;
    while first < end {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let want = per_request.get().min(end - first);
        let s = request_seed(seed, &job.id, first);
        match client.complete(&job.prompt, want, s, params) {
            Ok(mut choices) if !choices.is_empty() => {
                if choices.len() < want && per_request.lower(choices.len()) {
                    on_fallback(
                        choices.len(),
                        &format!(
                            "asked for {want} completions, the server answered {}",
                            choices.len()
                        ),
                    );
                }
                choices.truncate(want);
                let k = choices.len();
                report(first, choices);
                first += k;
            }
            Ok(_) => {
                return Err(RequestError::Bad {
                    url: client.urls().join(", "),
                    error: super::response::BadResponse("the server answered no choices".into()),
                })
            }
            Err(RequestError::Refused { message, .. })
                if want > 1 && super::response::refuses_n(&message) =>
            {
                if per_request.lower(1) {
                    on_fallback(1, &message);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
