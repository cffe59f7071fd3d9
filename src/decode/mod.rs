//! The batched decoder behind `east sample` (n temperature samples per question) and `east eval`
//! (one greedy completion per question): prompts in, completions out, nothing written to disk.
//!
//! A *group* of prompts is decoded together: the prompts are left-padded and prefilled once
//! (one prefill per question, however many samples it gets), the cache rows are then repeated
//! so each sample has its own row, and every decode step runs all live rows through the model at
//! once. Rows that finish leave the batch (the cache is compacted once enough of them are done,
//! since compaction copies the cache). The KV cache is preallocated for the whole generation.
//!
//! Determinism: each sample row draws its random numbers from its own generator, seeded by
//! (seed, question id, sample index). Given the same group, the same rows come out, so a
//! resumed or sharded run that forms the same groups reproduces a whole run exactly.

pub mod logits;
pub mod on_device;

use candle_core::{Device, Tensor};
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
    let counts: Vec<usize> = requests.iter().map(|r| r.samples).collect();
    let mut rows: Vec<Row> = Vec::with_capacity(counts.iter().sum());
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
    if device.is_cpu()
        && model.dtype() == candle_core::DType::F32
        && matches!(kv_dtype, candle_core::DType::F32 | candle_core::DType::F16)
    {
        cache.share_prefix(&counts)?;
    } else {
        cache.repeat_rows(&counts)?;
    }
    let row_of_prompt: Vec<u32> = rows.iter().map(|r| r.request as u32).collect();
    let mut logits =
        prefill_logits.index_select(&Tensor::new(row_of_prompt.as_slice(), &device)?, 0)?;

    // `live[b]` = index into `rows` of cache row b.
    let mut live: Vec<usize> = (0..rows.len()).collect();
    let stop_window = settings.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    loop {
        let uniforms: Vec<f64> = live
            .iter()
            .map(|&i| {
                let row = &mut rows[i];
                // Finished rows still in the batch draw nothing, so streams stay aligned.
                if row.finish.is_none() && !settings.sampling.is_greedy() {
                    row.rng.random::<f64>()
                } else {
                    0.0
                }
            })
            .collect();
        let next = next_tokens(&logits, settings.sampling, &uniforms, settings.sampler)?;
        let mut produced = 0;
        for (b, &i) in live.iter().enumerate() {
            let row = &mut rows[i];
            if row.finish.is_some() {
                continue;
            }
            produced += 1;
            let token = next[b];
            if lm.eos_ids.contains(&token) {
                row.finish = Some(Finish::Stop);
                continue;
            }
            row.ids.push(token);
            if stop_window > 0 {
                if let Some(cut) = find_stop(lm, &row.ids, &settings.stop, stop_window)? {
                    row.cut = Some(cut);
                    row.finish = Some(Finish::Stop);
                    continue;
                }
            }
            if row.ids.len() >= settings.max_new_tokens {
                row.finish = Some(Finish::Length);
            }
        }
        stats.generated += produced;
        stats.steps += 1;
        on_step(produced);

        let still: Vec<usize> = (0..live.len())
            .filter(|&b| rows[live[b]].finish.is_none())
            .collect();
        if still.is_empty() {
            break;
        }
        // Compact once an eighth of the batch is dead weight: the copy costs about as much as
        // a few steps of running the finished rows along.
        let dead = live.len() - still.len();
        if dead > 0 && (dead * 8 >= live.len() || live.len() <= 8) {
            cache.select_rows(&still)?;
            live = still.iter().map(|&b| live[b]).collect();
        }
        let feed: Vec<u32> = live
            .iter()
            .map(|&i| rows[i].ids.last().copied().unwrap_or(lm.pad_id))
            .collect();
        let feed = Tensor::from_vec(feed, (live.len(), 1), &device)?;
        logits = model.forward_step(&feed, &mut cache)?;
    }

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
