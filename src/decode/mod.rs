//! The batched decoder behind `east sample` (n temperature samples per question) and `east eval`
//! (one greedy completion per question): prompts in, completions out, nothing written to disk.
//!
//! A *group* of prompts is decoded together: the prompts are left-padded and prefilled once
//! (one prefill per question, however many samples it gets), the cache rows are then repeated
//! so each sample has its own row, and every decode step runs all live rows through the model at
//! once. Rows that finish leave the batch (the cache is compacted once enough of them are done,
//! since compaction copies the cache). The KV cache is preallocated for the whole generation.
//! On the CPU the rows are dealt out to one shard per core, each with its own cache rows, which
//! runs the decoder layers on its core alone; the vocabulary head then runs once over all rows.
//!
//! Determinism: each sample row draws its random numbers from its own generator, seeded by
//! (seed, question id, sample index). Given the same group, the same rows come out, so a
//! resumed or sharded run that forms the same groups reproduces a whole run exactly.

pub mod logits;
pub mod on_device;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub use logits::{sample_one, sample_rows, Sampling};
pub use on_device::SamplerPlacement;

use crate::model::tokenizer::decode;
use crate::model::{KvCache, LoadedModel, ModelText};
use crate::schema::Finish;
use on_device::next_tokens;

/// One prompt of a group and how many samples it gets.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt_ids: Vec<u32>,
    /// Question id (seeds the sample streams).
    pub id: String,
    /// Index of the first sample of this request within its question (when a question's samples
    /// are split over several groups) and how many to draw.
    pub first_sample: usize,
    pub samples: usize,
}

/// One finished sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Generated tokens, without the EOS token that ended them.
    pub token_ids: Vec<u32>,
    pub finish: Finish,
}

/// Decoding settings shared by every group.
#[derive(Debug, Clone)]
pub struct DecodeSettings {
    pub sampling: Sampling,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Stop strings besides the EOS tokens; the text is cut before the first occurrence.
    pub stop: Vec<String>,
    /// Where each step's logits become tokens (the device, on a GPU, so that only a few
    /// hundred kilobytes cross to the host per step).
    pub sampler: SamplerPlacement,
    /// The KV cache's dtype; None: the model's. f16 under an f32 model on the CPU halves the
    /// bytes the decode attention reads per step (it widens to f32 and accumulates in f32),
    /// but rounds every cached key and value, so the samples differ from an f32 cache's.
    pub kv_dtype: Option<candle_core::DType>,
    /// On the CPU, how many shards of rows a group is decoded in, each on its own core with
    /// the same samples whatever the count; None: one per core while each keeps 16 rows.
    pub cpu_shards: Option<usize>,
}

/// Counters reported back to progress bars and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// Tokens generated (EOS included: it was computed too).
    pub generated: usize,
    pub prompt_tokens: usize,
    pub steps: usize,
}

/// The generator of a sample stream.
pub fn stream_rng(seed: u64, id: &str, sample: usize) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"east-sample");
    h.update(seed.to_le_bytes());
    h.update((id.len() as u64).to_le_bytes());
    h.update(id.as_bytes());
    h.update((sample as u64).to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

struct Row {
    request: usize,
    rng: ChaCha8Rng,
    ids: Vec<u32>,
    finish: Option<Finish>,
    /// Byte length of the text where a stop string was found.
    cut: Option<usize>,
}

impl Row {
    /// Appends `token`, or finishes the row on an EOS token, a stop string or the length limit.
    fn take(
        &mut self,
        token: u32,
        lm: &LoadedModel,
        settings: &DecodeSettings,
        stop_window: usize,
    ) -> anyhow::Result<()> {
        if lm.eos_ids.contains(&token) {
            self.finish = Some(Finish::Stop);
            return Ok(());
        }
        self.ids.push(token);
        if stop_window > 0 {
            if let Some(cut) = find_stop(lm, &self.ids, &settings.stop, stop_window)? {
                self.cut = Some(cut);
                self.finish = Some(Finish::Stop);
                return Ok(());
            }
        }
        if self.ids.len() >= settings.max_new_tokens {
            self.finish = Some(Finish::Length);
        }
        Ok(())
    }
}

/// Rows per shard below which a group is not split: every shard reads every weight once per
/// step, so with few rows a step is bound by reading the weights rather than by arithmetic.
const MIN_SHARD_ROWS: usize = 16;

/// How many shards a group of `rows` sample rows is decoded in: on the CPU, one per core
/// (rayon's threads) as long as each keeps `MIN_SHARD_ROWS` rows, each running every op of its
/// decoder layers on its core alone. Splitting each op across the cores instead makes the
/// cores meet at ~10 barriers per layer, and a decode step's products (a hundred-odd rows by
/// 576) split badly: in `cargo bench --bench gemm` on two cores the layers' products over 128
/// rows ran at 92–166 GFLOP/s on both threads, and over 64 rows at 97–142 on one thread, of
/// which two shards run two at once. Every row's arithmetic is the same however the rows are
/// sharded (see [`Shard::step`]; tests/decode_regression.rs).
fn shard_count(device: &Device, rows: usize) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    rayon::current_num_threads()
        .min(rows / MIN_SHARD_ROWS)
        .max(1)
}

/// Sample rows decoded together, with their own KV cache rows and next-token logits.
struct Shard {
    /// The rows and their index in the group (rows are handed back in that order).
    rows: Vec<(usize, Row)>,
    /// `live[b]` = index into `rows` of cache row b.
    live: Vec<usize>,
    cache: KvCache,
    logits: Tensor,
    done: bool,
}

impl Shard {
    /// Deals `rows` out to `n` shards in turn (row i to shard i mod n), so that each gets a
    /// like share of every question's samples and the shards finish at about the same time;
    /// `prepare` makes a shard's cache and first logits from its rows' request indices.
    fn split(
        rows: Vec<Row>,
        n: usize,
        prepare: impl Fn(&[usize]) -> candle_core::Result<(KvCache, Tensor)>,
    ) -> anyhow::Result<Vec<Shard>> {
        let mut parts: Vec<Vec<(usize, Row)>> = (0..n).map(|_| Vec::new()).collect();
        for (i, row) in rows.into_iter().enumerate() {
            parts[i % n].push((i, row));
        }
        parts
            .into_iter()
            .map(|rows| {
                let of_request: Vec<usize> = rows.iter().map(|(_, r)| r.request).collect();
                let (cache, logits) = prepare(&of_request)?;
                Ok(Shard {
                    live: (0..rows.len()).collect(),
                    rows,
                    cache,
                    logits,
                    done: false,
                })
            })
            .collect()
    }

    /// The rows of every shard, in their order in the group.
    fn join(shards: Vec<Shard>) -> Vec<Row> {
        let mut all: Vec<(usize, Row)> = shards.into_iter().flat_map(|s| s.rows).collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    }

    /// Picks each live row's next token from `logits`, drops finished rows from the batch now
    /// and then, and runs the decoder layers for the rest; returns the tokens produced and the
    /// rows' hidden states for the vocabulary head (None once every row has finished).
    fn step(
        &mut self,
        lm: &LoadedModel,
        settings: &DecodeSettings,
        stop_window: usize,
    ) -> anyhow::Result<(usize, Option<Tensor>)> {
        if self.done {
            return Ok((0, None));
        }
        let uniforms: Vec<f64> = self
            .live
            .iter()
            .map(|&i| {
                let row = &mut self.rows[i].1;
                // Finished rows still in the batch draw nothing, so streams stay aligned.
                if row.finish.is_none() && !settings.sampling.is_greedy() {
                    row.rng.random::<f64>()
                } else {
                    0.0
                }
            })
            .collect();
        let next = next_tokens(&self.logits, settings.sampling, &uniforms, settings.sampler)?;
        let mut produced = 0;
        for (b, &i) in self.live.iter().enumerate() {
            let row = &mut self.rows[i].1;
            if row.finish.is_none() {
                produced += 1;
                row.take(next[b], lm, settings, stop_window)?;
            }
        }
        let still: Vec<usize> = (0..self.live.len())
            .filter(|&b| self.rows[self.live[b]].1.finish.is_none())
            .collect();
        if still.is_empty() {
            self.done = true;
            return Ok((produced, None));
        }
        // Compact once an eighth of the batch is dead weight: the copy costs about as much as
        // a few steps of running the finished rows along. Never down to one row out of more:
        // gemm multiplies a single row with another kernel (a matrix-vector product) whose
        // sums round differently, and a row's samples would then depend on which rows it
        // was batched with.
        let dead = self.live.len() - still.len();
        if dead > 0 && (dead * 8 >= self.live.len() || self.live.len() <= 8) {
            let mut keep = still;
            if keep.len() == 1 && self.live.len() > 1 {
                let other = usize::from(keep[0] == 0);
                keep = vec![keep[0].min(other), keep[0].max(other)];
            }
            self.cache.select_rows(&keep)?;
            self.live = keep.iter().map(|&b| self.live[b]).collect();
        }
        let feed: Vec<u32> = self
            .live
            .iter()
            .map(|&i| self.rows[i].1.ids.last().copied().unwrap_or(lm.pad_id))
            .collect();
        let feed = Tensor::from_vec(feed, (self.live.len(), 1), self.logits.device())?;
        let hidden = lm.model.forward_step_hidden(&feed, &mut self.cache)?;
        Ok((produced, Some(hidden)))
    }
}

/// Decodes one group; `on_step` is told how many tokens each step generated (for progress).
/// Returns, per request, its samples in order.
pub fn generate_group(
    lm: &LoadedModel,
    requests: &[Request],
    settings: &DecodeSettings,
    mut on_step: impl FnMut(usize),
) -> anyhow::Result<(Vec<Vec<Generation>>, StepStats)> {
    let model = &lm.model;
    let device: Device = model.device().clone();
    let mut stats = StepStats::default();
    if requests.is_empty() {
        return Ok((Vec::new(), stats));
    }
    if let Some(r) = requests.iter().find(|r| r.prompt_ids.is_empty()) {
        anyhow::bail!("question `{}`: empty prompt", r.id);
    }

    // Prefill every distinct prompt once, left-padded to the longest.
    let longest = requests
        .iter()
        .map(|r| r.prompt_ids.len())
        .max()
        .unwrap_or(0);
    let capacity = longest + settings.max_new_tokens;
    let left_pad: Vec<usize> = requests
        .iter()
        .map(|r| longest - r.prompt_ids.len())
        .collect();
    let mut prompt = Vec::with_capacity(requests.len() * longest);
    for (r, &pad) in requests.iter().zip(&left_pad) {
        prompt.extend(std::iter::repeat_n(lm.pad_id, pad));
        prompt.extend_from_slice(&r.prompt_ids);
    }
    stats.prompt_tokens = requests.iter().map(|r| r.prompt_ids.len()).sum();
    let prompt = Tensor::from_vec(prompt, (requests.len(), longest), &device)?;
    let kv_dtype = settings.kv_dtype.unwrap_or(model.dtype());
    let mut cache = KvCache::new(
        model.config(),
        requests.len(),
        capacity,
        left_pad,
        kv_dtype,
        &device,
    )?;
    let prefill_logits = model.forward_step(&prompt, &mut cache)?;

    // One row per sample; the cache rows of a prompt are repeated for its samples.
    let mut rows: Vec<Row> = Vec::with_capacity(requests.iter().map(|r| r.samples).sum());
    for (q, r) in requests.iter().enumerate() {
        for s in 0..r.samples {
            rows.push(Row {
                request: q,
                rng: stream_rng(settings.seed, &r.id, r.first_sample + s),
                ids: Vec::new(),
                finish: None,
                cut: None,
            });
        }
    }
    // The prompt columns stay once per question where the CPU decode kernel reads them that
    // way; elsewhere (GPU, other dtypes) every sample row gets a copy.
    let share = device.is_cpu()
        && model.dtype() == candle_core::DType::F32
        && matches!(kv_dtype, candle_core::DType::F32 | candle_core::DType::F16);
    let n_shards = match settings.cpu_shards {
        // at least two rows per shard: gemm multiplies a single row differently (see `step`)
        Some(n) if device.is_cpu() => n.clamp(1, (rows.len() / 2).max(1)),
        _ => shard_count(&device, rows.len()),
    };
    let mut shards = Shard::split(rows, n_shards, |of_request| {
        let mut counts = vec![0; requests.len()];
        for &q in of_request {
            counts[q] += 1;
        }
        let mut c = cache.clone();
        if share {
            c.share_prefix(&counts)?;
        } else {
            c.repeat_rows(&counts)?;
        }
        let of_prompt: Vec<u32> = of_request.iter().map(|&q| q as u32).collect();
        let logits =
            prefill_logits.index_select(&Tensor::new(of_prompt.as_slice(), &device)?, 0)?;
        Ok((c, logits))
    })?;
    drop(cache);

    let stop_window = settings.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    let step = |s: &mut Shard| s.step(lm, settings, stop_window);
    while shards.iter().any(|s| !s.done) {
        let stepped: Vec<(usize, Option<Tensor>)> = if shards.len() == 1 {
            vec![step(&mut shards[0])?]
        } else {
            // One shard per core, each with its ops on that core alone (see `shard_count`).
            use rayon::prelude::*;
            shards
                .par_iter_mut()
                .map(|s| candle_core::utils::with_serial_ops(|| step(s)))
                .collect::<anyhow::Result<_>>()?
        };
        // The vocabulary head once over every shard's rows: its weight is the largest, and
        // one product over all rows, split across the cores, reads it once.
        let hidden: Vec<&Tensor> = stepped.iter().filter_map(|(_, h)| h.as_ref()).collect();
        if !hidden.is_empty() {
            let logits = model
                .step_logits(&Tensor::cat(&hidden, 0)?)?
                .to_dtype(DType::F32)?;
            let mut offset = 0;
            for (shard, (_, h)) in shards.iter_mut().zip(&stepped) {
                if let Some(h) = h {
                    let rows = h.dim(0)?;
                    shard.logits = logits.narrow(0, offset, rows)?;
                    offset += rows;
                }
            }
        }
        let produced: usize = stepped.iter().map(|(n, _)| n).sum();
        stats.generated += produced;
        stats.steps += 1;
        on_step(produced);
    }
    let rows = Shard::join(shards);

    let mut out: Vec<Vec<Generation>> = requests
        .iter()
        .map(|r| Vec::with_capacity(r.samples))
        .collect();
    for row in rows {
        let mut text = decode(&lm.tokenizer, &row.ids, true)?;
        if let Some(cut) = row.cut {
            text.truncate(cut);
        }
        out[row.request].push(Generation {
            text,
            token_ids: row.ids,
            finish: row.finish.unwrap_or(Finish::Length),
        });
    }
    Ok((out, stats))
}

/// The longest prompt plus `max_new_tokens` must fit the model's context: otherwise the KV cache
/// is sized past it (slow, or an allocation that aborts). Returns `max_new_tokens`, or the most
/// that fits, saying so; a prompt that alone fills the context is an error naming the question
/// (`id(i)` is the id of prompt `i`'s question).
pub fn fit_context<'a>(
    lm: &ModelText,
    prompts: &[Vec<u32>],
    id: impl Fn(usize) -> &'a str,
    max_new_tokens: usize,
    key: &str,
) -> anyhow::Result<usize> {
    let context = lm.config.max_position_embeddings;
    let Some((i, longest)) = prompts
        .iter()
        .map(Vec::len)
        .enumerate()
        .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)))
    else {
        return Ok(max_new_tokens);
    };
    if longest >= context {
        anyhow::bail!(
            "question `{}`: its prompt is {longest} tokens, the model's context ({}, max_position_embeddings) leaves no room for an answer",
            id(i),
            context
        );
    }
    let room = context - longest;
    if max_new_tokens > room {
        eprintln!(
            "east: {key} = {max_new_tokens} is more than fits the model's context ({context} tokens, the longest prompt {longest}): using {room}"
        );
        return Ok(room);
    }
    Ok(max_new_tokens)
}

/// Looks for a stop string in the text of the last few tokens; returns where the full text
/// must be cut. Only the tail is decoded each step, so checking stays O(1) per token.
fn find_stop(
    lm: &LoadedModel,
    ids: &[u32],
    stops: &[String],
    window: usize,
) -> anyhow::Result<Option<usize>> {
    // A token decodes to at least one byte, so `window` tokens cover any stop string that ends
    // in the newest token; a few more absorb multi-byte characters split across tokens.
    let tail_len = (window + 4).min(ids.len());
    let tail = decode(&lm.tokenizer, &ids[ids.len() - tail_len..], true)?;
    if !stops.iter().any(|s| tail.contains(s.as_str())) {
        return Ok(None);
    }
    let full = decode(&lm.tokenizer, ids, true)?;
    Ok(stops.iter().filter_map(|s| full.find(s.as_str())).min())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_independent_and_reproducible() {
        let a: Vec<u64> = (0..4).map(|s| stream_rng(1, "q", s).random()).collect();
        let b: Vec<u64> = (0..4).map(|s| stream_rng(1, "q", s).random()).collect();
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<u64> = a.iter().cloned().collect();
        assert_eq!(distinct.len(), 4);
        assert_ne!(
            stream_rng(1, "q", 0).random::<u64>(),
            stream_rng(2, "q", 0).random::<u64>()
        );
        assert_ne!(
            stream_rng(1, "q", 0).random::<u64>(),
            stream_rng(1, "r", 0).random::<u64>()
        );
    }
}
