//! The peak memory of a training run, by part, from the model's configuration alone (no
//! weights): what `east train --estimate-memory` prints, what every training run logs at its
//! start, and what `train.gradient_checkpointing = "auto"` decides by.
//!
//! The activation terms count the tensors the autograd engine's graph keeps per decoder layer
//! (see [`layer_activation_elems`]); the other parts are the weights, the optimiser state and
//! the working sets of the backward, the vocabulary head and the recomputation. The estimate
//! is checked against the measured peak RSS on the CPU (`tests/train_memory.rs`,
//! `EAST_BENCH_MODE=estimate cargo bench --bench train`).

use candle_core::DType;
use serde::Serialize;

use super::engine::LoraSpec;
use crate::model::LlamaConfig;

const GIB: f64 = (1u64 << 30) as f64;

/// What the estimate depends on besides the model's configuration.
#[derive(Debug, Clone)]
pub struct MemoryShape {
    /// The compute dtype of the forward and backward (the model's dtype).
    pub dtype: DType,
    /// On a CUDA device (the vocabulary head's chunk is larger there).
    pub cuda: bool,
    pub lora: Option<LoraSpec>,
    /// Sequences per micro-batch (examples × 2 for DPO's chosen and rejected rows).
    pub rows: usize,
    /// Tokens per sequence (the longest row of a micro-batch: `train.max_length` at worst).
    pub row_tokens: usize,
    /// Target tokens per micro-batch, the rows of the vocabulary head (`rows × row_tokens`
    /// at worst, what a training run assumes).
    pub targets: usize,
    /// Micro-batches per optimiser step (> 1: gradients accumulate across backwards).
    pub accumulation: usize,
    pub checkpointing: bool,
    /// Rows whose reference log-probabilities are cached (DPO/KTO; 0 otherwise).
    pub reference_rows: usize,
}

/// One part of the peak.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: &'static str,
    pub bytes: u64,
}

/// The estimated peak by part; `total` is their sum.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub parts: Vec<Part>,
    pub total: u64,
    pub checkpointing: bool,
    /// Sequences per micro-batch and tokens per sequence it was made for.
    /// (`total` is not the parts' sum: the vocabulary head's chunk is live in the forward,
    /// the backward's working sets in the backward, the gradient sums after it, and the
    /// total takes the largest phase.)
    pub rows: usize,
    pub row_tokens: usize,
}

impl MemoryEstimate {
    /// The part called `name` in bytes (0 when absent).
    pub fn part(&self, name: &str) -> u64 {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.bytes)
    }

    /// The table `east train --estimate-memory` prints (GiB, two decimals).
    pub fn table(&self) -> String {
        let mut s = String::new();
        for p in &self.parts {
            s.push_str(&format!(
                "  {:<34} {:>9.2} GiB\n",
                p.name,
                p.bytes as f64 / GIB
            ));
        }
        s.push_str(&format!(
            "  {:<34} {:>9.2} GiB\n",
            "total",
            self.total as f64 / GIB
        ));
        s
    }
}

/// Bytes of one element of `dtype`.
fn size(dtype: DType) -> u64 {
    dtype.size_in_bytes() as u64
}

/// The optimiser's dtype: f64 for an f64 model, else f32.
fn master(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// `(in, out)` of the seven projections of a layer, in [`super::engine::PROJECTIONS`] order.
fn projections(cfg: &LlamaConfig) -> [(usize, usize); 7] {
    cfg.projection_dims()
}

/// Trainable elements: every weight, or the LoRA matrices.
pub fn trainable_elems(cfg: &LlamaConfig, lora: Option<&LoraSpec>) -> u64 {
    match lora {
        None => cfg.num_parameters() as u64,
        Some(spec) => {
            let per_layer: usize = projections(cfg)
                .iter()
                .zip(super::engine::PROJECTIONS)
                .filter(|(_, name)| spec.targets.iter().any(|t| t == name))
                .map(|((i, o), _)| spec.rank * (i + o))
                .sum();
            (per_layer * cfg.num_hidden_layers) as u64
        }
    }
}

/// Elements the autograd graph keeps for one decoder layer of a micro-batch of `n` tokens in
/// `b` rows of `t` (model dtype), counted from the ops of `Llama::forward_hidden`:
/// the residual input, both norms' outputs, the attention and MLP sums (6·h per token); q, k
/// and v as projected and made contiguous, q and k after RoPE, the attention output and its
/// contiguous copy (5·q + 5·kv); gate, up and their SwiGLU product (3·i). What the family's
/// [`Arch`](crate::model::config::Arch) adds: each biased projection's sum (its output width
/// again), the q/k norms' outputs (q + kv). No attention
/// probabilities: `train_ops::attention` recomputes them in its backward (they were
/// `(b, heads, t, t)` per layer, the largest activation of long rows). With LoRA each adapted projection also keeps the adapter's
/// product and the sum (2·out) and the rank-sized middle; with dropout the mask and the
/// dropped input (2·in).
pub fn layer_activation_elems(
    cfg: &LlamaConfig,
    lora: Option<&LoraSpec>,
    b: usize,
    t: usize,
) -> u64 {
    let n = (b * t) as u64;
    let h = cfg.hidden_size as u64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let mut per_token = 6 * h + 5 * q + 5 * kv + 3 * i;
    let arch = &cfg.arch;
    for (w, (_, dout)) in projections(cfg).iter().enumerate() {
        if arch.has_bias(w) {
            per_token += *dout as u64;
        }
    }
    if arch.qk_norm {
        per_token += q + kv;
    }
    if let Some(spec) = lora {
        for ((din, dout), name) in projections(cfg).iter().zip(super::engine::PROJECTIONS) {
            if spec.targets.iter().any(|t| t == name) {
                per_token += 2 * *dout as u64 + spec.rank as u64;
                if spec.dropout > 0.0 {
                    per_token += 2 * *din as u64;
                }
            }
        }
    }
    n * per_token
}

/// Elements of the transient buffers of one layer's backward at its widest: the attention's
/// recomputed probabilities, their gradient and the softmax backward's two temporaries (4
/// probability-sized tensors, in the accumulation dtype) and the MLP's gradients (3·i per
/// token).
fn layer_backward_elems(cfg: &LlamaConfig, b: usize, t: usize) -> (u64, u64) {
    let probs = (b * cfg.num_attention_heads * t * t) as u64;
    let mlp = (b * t * 3 * cfg.intermediate_size) as u64;
    (4 * probs, mlp)
}

/// The estimated peak of training `cfg` with `shape`.
pub fn estimate(cfg: &LlamaConfig, shape: &MemoryShape) -> MemoryEstimate {
    let s = size(shape.dtype);
    let m = size(master(shape.dtype));
    let acc = size(crate::model::train_ops::accumulation_dtype(shape.dtype));
    let lora = shape.lora.as_ref();
    let all = cfg.num_parameters() as u64;
    let trainable = trainable_elems(cfg, lora);
    let (b, t) = (shape.rows, shape.row_tokens);
    let n = (b * t) as u64;
    let h = cfg.hidden_size as u64;
    let layers = cfg.num_hidden_layers as u64;

    // the forward runs on compute-dtype weights: a cast of the masters for a half dtype,
    // the masters themselves otherwise; LoRA's frozen base is in the compute dtype
    let compute_weights = match (lora, s == m) {
        (None, true) => 0,
        (None, false) => all * s,
        (Some(_), _) => all * s + trainable * s,
    };
    // The accumulators (master dtype, `add_grad`) of the earlier micro-batches of a step;
    // the backward's gradient store (compute dtype), summed into them one tensor at a time
    // after the backward. With one micro-batch the store becomes the accumulators (cast to
    // the master dtype one tensor at a time; in f32 they are the same tensors).
    let accumulators = if shape.accumulation > 1 {
        trainable * m
    } else {
        0
    };
    let store = trainable * s;
    let store_summed = if shape.accumulation > 1 {
        store
    } else {
        trainable * m
    };
    let grads = accumulators + store_summed;
    let layer_act = layer_activation_elems(cfg, lora, b, t) * s;
    // shared by all layers: the additive mask (b, 1, t, t) and the embedding output
    let shared = (b * t * t) as u64 * s + n * h * s;
    let activations = if shape.checkpointing {
        // each layer's input (the previous layer's output), kept by its checkpoint node
        layers * n * h * s + shared
    } else {
        layers * layer_act + shared
    };
    let (bwd_probs, bwd_mlp) = layer_backward_elems(cfg, b, t);
    let backward = bwd_probs * acc + bwd_mlp * s;
    // the recomputed layer's activations, plus what the checkpoint adds around it: the
    // input's copy, the output, its product with the upstream gradient and that product's
    // other gradient (4 hidden states). (The recomputed forward's attention scores are freed
    // before its backward, whose working set is counted above: the attention keeps no
    // probabilities.)
    let recompute = if shape.checkpointing {
        layer_act + 4 * n * h * s
    } else {
        0
    };
    let head = head_bytes(cfg, shape, m);
    let (head_grad_fwd, head_grad_bwd) = head_grad_bytes(cfg, shape, s, m);
    let sum = gradient_sum_bytes(cfg, shape, s, m);
    let reference = shape.reference_rows as u64 * 8;
    let parts = vec![
        Part {
            name: "compute-dtype weights",
            bytes: compute_weights,
        },
        Part {
            name: "f32 master weights",
            bytes: trainable * m,
        },
        Part {
            name: "AdamW moments",
            bytes: 2 * trainable * m,
        },
        Part {
            name: "gradients",
            bytes: grads,
        },
        Part {
            name: "activations per micro-batch",
            bytes: activations,
        },
        Part {
            name: "backward working set",
            bytes: backward,
        },
        Part {
            name: "recomputation working set",
            bytes: recompute,
        },
        Part {
            name: "vocabulary-head chunk",
            bytes: head,
        },
        Part {
            name: "output-layer weight gradient",
            bytes: head_grad_fwd,
        },
        Part {
            name: "gradient sum working set",
            bytes: sum,
        },
        Part {
            name: "reference log-prob cache",
            bytes: reference,
        },
    ];
    // Three phases, each after the one before has freed its buffers: the forward (the head's
    // chunk and its weight gradient; the checkpointed forward holds one layer's activations
    // at a time, like the recomputation), the backward (its working sets and the gradient
    // store growing to its full size) and the accumulation (the store summed into the
    // accumulators one tensor at a time, the graph and its activations freed).
    let base = compute_weights + 3 * trainable * m + accumulators + reference;
    let forward = base + activations + (head + head_grad_fwd).max(recompute);
    let backward_phase = base + activations + backward + recompute + store + head_grad_bwd;
    let accumulate = base + store_summed + head_grad_bwd + sum;
    let total = forward.max(backward_phase).max(accumulate);
    MemoryEstimate {
        parts,
        total,
        checkpointing: shape.checkpointing,
        rows: shape.rows,
        row_tokens: shape.row_tokens,
    }
}

/// The vocabulary head's chunk: the logits of `chunk` positions, the softmax's exponentials and
/// probabilities, the scaled probabilities and the logit gradients (5 chunk × vocab tensors in
/// the master dtype), plus the hidden states at the target positions and their gradient.
fn head_bytes(cfg: &LlamaConfig, shape: &MemoryShape, m: u64) -> u64 {
    let chunk = super::engine::autograd::head_chunk_rows(cfg.vocab_size, shape.cuda) as u64;
    let targets = shape.targets as u64;
    5 * chunk.min(targets) * cfg.vocab_size as u64 * m + 2 * targets * cfg.hidden_size as u64 * m
}

/// The output layer's weight gradient, which full fine-tuning makes in the forward (the
/// head is not in the autograd graph): `(in the forward, through the backward)` in bytes.
/// In the forward it is summed over the head's chunks, `d + g` holding three at once from
/// the second chunk on (with one chunk: the product and, in a half dtype, its f32 cast).
/// Through the backward it is a second embedding-sized tensor when the embeddings are tied,
/// besides the backward's gradient of the embedding, until the two are summed; untied, it is
/// the head's accumulator (in `gradients`).
fn head_grad_bytes(cfg: &LlamaConfig, shape: &MemoryShape, s: u64, m: u64) -> (u64, u64) {
    if shape.lora.is_some() {
        return (0, 0);
    }
    let elems = (cfg.vocab_size * cfg.hidden_size) as u64;
    let chunk = super::engine::autograd::head_chunk_rows(cfg.vocab_size, shape.cuda);
    let forward = if shape.targets > chunk {
        3 * elems * m
    } else {
        elems * (m + if s == m { 0 } else { s })
    };
    let backward = if cfg.tie_word_embeddings {
        elems * m
    } else {
        0
    };
    (forward, backward)
}

/// The accumulation's working set: `a + g` for one tensor at a time (the sum, and in a half
/// dtype `g`'s f32 cast), for the largest tensor whose gradient meets an earlier one: with
/// several micro-batches every trainable tensor, with one only the tied embedding (the
/// output layer's gradient from the forward and the embedding's from the backward).
fn gradient_sum_bytes(cfg: &LlamaConfig, shape: &MemoryShape, s: u64, m: u64) -> u64 {
    let vh = (cfg.vocab_size * cfg.hidden_size) as u64;
    let largest = match &shape.lora {
        None => vh.max((cfg.intermediate_size * cfg.hidden_size) as u64),
        Some(spec) => projections(cfg)
            .iter()
            .map(|&(i, o)| (spec.rank * i.max(o)) as u64)
            .max()
            .unwrap_or(0),
    };
    let elems = if shape.accumulation > 1 {
        largest
    } else if shape.lora.is_none() && cfg.tie_word_embeddings {
        vh
    } else {
        0
    };
    elems * (m + if s == m { 0 } else { m })
}

/// The model's configuration without its weights: GGUF metadata, a folder's `config.json`, or
/// a hub repo's `config.json` (fetched alone, or read from the hub cache).
pub fn model_config(spec: &str) -> anyhow::Result<LlamaConfig> {
    use crate::model::ModelSource;
    use anyhow::Context;
    match crate::model::load::resolve_spec(spec)? {
        ModelSource::Gguf(path) => {
            let mut f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut f)
                .with_context(|| format!("reading GGUF metadata of {}", path.display()))?;
            Ok(LlamaConfig::from_gguf(
                &content.metadata,
                &content.tensor_infos,
                &path.display().to_string(),
            )?)
        }
        ModelSource::Folder(dir) => {
            let p = dir.join("config.json");
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(LlamaConfig::from_hf_json(&text, &p.display().to_string())?)
        }
        ModelSource::Hub { repo, revision } => {
            use hf_hub::{Repo, RepoType};
            let r = match revision {
                Some(rev) => Repo::with_revision(repo.clone(), RepoType::Model, rev),
                None => Repo::new(repo.clone(), RepoType::Model),
            };
            let cache = hf_hub::Cache::from_env();
            let path = match cache.repo(r.clone()).get("config.json") {
                Some(p) => p,
                None => hf_hub::api::sync::ApiBuilder::from_env()
                    .with_progress(false)
                    .build()?
                    .repo(r)
                    .get("config.json")
                    .with_context(|| format!("fetching config.json of {repo}"))?,
            };
            let text = std::fs::read_to_string(&path)?;
            Ok(LlamaConfig::from_hf_json(
                &text,
                &format!("{repo}/config.json"),
            )?)
        }
    }
}

/// The shape of a run of `train`: micro-batches of `train.micro_batch_size` examples (two
/// sequences each for DPO) of `row_tokens` tokens, `examples` examples in the data set.
pub fn shape_of(
    train: &super::TrainConfig,
    dtype: DType,
    cuda: bool,
    row_tokens: usize,
    examples: usize,
    checkpointing: bool,
) -> MemoryShape {
    let per_example = if train.loss.needs_rejected() && train.loss == crate::schema::Loss::Dpo {
        2
    } else {
        1
    };
    MemoryShape {
        dtype,
        cuda,
        lora: train.lora_spec(),
        rows: train.micro_batch_size * per_example,
        row_tokens,
        targets: train.micro_batch_size * per_example * row_tokens,
        accumulation: train.batch_size / train.micro_batch_size.max(1),
        checkpointing,
        reference_rows: if train.loss.needs_rejected() {
            examples * (per_example + 1)
        } else {
            0
        },
    }
}

/// The memory available for `"auto"`: `train.memory_limit`, else a CUDA device's free memory
/// (asked of `nvidia-smi`), else none (the CPU without a limit).
fn available(train: &super::TrainConfig, cuda: Option<usize>) -> anyhow::Result<Option<u64>> {
    if let Some(gib) = train.memory_limit {
        return Ok(Some((gib * GIB) as u64));
    }
    let Some(gpu_id) = cuda else {
        return Ok(None);
    };
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free",
            "--format=csv,noheader,nounits",
            &format!("--id={gpu_id}"),
        ])
        .output();
    let mib = out.ok().filter(|o| o.status.success()).and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u64>()
            .ok()
    });
    match mib {
        Some(m) => Ok(Some(m << 20)),
        None => anyhow::bail!(
            "train.gradient_checkpointing = \"auto\" needs the GPU's free memory, and nvidia-smi did not give it: set train.memory_limit (GiB) or gradient_checkpointing = true/false"
        ),
    }
}

/// Whether a run checkpoints activations, and the estimate it runs under, for a run on CUDA
/// device `cuda` (None: the CPU). `"auto"` turns checkpointing on when the estimate without
/// it exceeds the memory available; the CPU engine never checkpoints.
pub fn decide(
    cfg: &LlamaConfig,
    train: &super::TrainConfig,
    cuda: Option<usize>,
    dtype: DType,
    (row_tokens, examples): (usize, usize),
    autograd: bool,
) -> anyhow::Result<(bool, MemoryEstimate)> {
    use super::config::Checkpointing;
    let shape = |on| shape_of(train, dtype, cuda.is_some(), row_tokens, examples, on);
    let on = match train.gradient_checkpointing {
        Checkpointing::Off => false,
        Checkpointing::On => true,
        Checkpointing::Auto if !autograd => false,
        Checkpointing::Auto => match available(train, cuda)? {
            Some(limit) => estimate(cfg, &shape(false)).total > limit,
            None => false,
        },
    };
    let est = estimate(cfg, &shape(on));
    Ok((on, est))
}

/// Logs `est` to stderr: the table, then one JSON line.
pub fn log(est: &MemoryEstimate) {
    eprintln!(
        "east train: estimated peak memory ({} sequences × {} tokens per micro-batch, checkpointing {}):\n{}",
        est.rows,
        est.row_tokens,
        if est.checkpointing { "on" } else { "off" },
        est.table().trim_end()
    );
    let json = serde_json::json!({
        "event": "memory_estimate",
        "estimate": est,
    });
    eprintln!("{json}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, Family};

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            arch: Arch::default(),
            vocab_size: 100,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }

    #[test]
    fn optimiser_parts_are_the_hand_counts() {
        let cfg = tiny();
        // embed 800 + lm_head 800 + final norm 8 + per layer (8·8 + 2·8·4 + 8·8 + 3·8·16 + 16)
        let per_layer = 64 + 64 + 64 + 384 + 16;
        assert_eq!(cfg.num_parameters(), 1608 + 2 * per_layer);
        let shape = MemoryShape {
            dtype: DType::BF16,
            cuda: true,
            lora: None,
            rows: 1,
            row_tokens: 4,
            targets: 4,
            accumulation: 2,
            checkpointing: false,
            reference_rows: 0,
        };
        let e = estimate(&cfg, &shape);
        let p = cfg.num_parameters() as u64;
        assert_eq!(e.part("compute-dtype weights"), 2 * p);
        assert_eq!(e.part("f32 master weights"), 4 * p);
        assert_eq!(e.part("AdamW moments"), 8 * p);
        assert_eq!(e.part("gradients"), 2 * p + 4 * p);
        // the head's gradient, 100 × 8, in one chunk: the bf16 product and its f32 cast
        assert_eq!(e.part("output-layer weight gradient"), 800 * (2 + 4));
        // a + g on the largest tensor (the 100 × 8 embedding or head): the f32 cast of the
        // bf16 g and the f32 sum
        assert_eq!(e.part("gradient sum working set"), 800 * (4 + 4));
        // the head's chunk (forward), the backward's buffers and the sums are not live at once;
        // the earlier micro-batch's f32 accumulators are
        let base = 2 * p + 12 * p + 4 * p;
        let act = e.part("activations per micro-batch");
        let forward = base + act + e.part("vocabulary-head chunk") + 800 * 6;
        let backward = base + act + e.part("backward working set") + 2 * p;
        let accumulate = base + 2 * p + 800 * 8;
        assert_eq!(e.total, forward.max(backward).max(accumulate));
    }

    #[test]
    fn tied_full_fine_tuning_holds_the_embedding_gradient_twice() {
        let mut cfg = tiny();
        cfg.tie_word_embeddings = true;
        let shape = MemoryShape {
            dtype: DType::F32,
            cuda: false,
            lora: None,
            rows: 1,
            row_tokens: 4,
            targets: 4,
            accumulation: 1,
            checkpointing: false,
            reference_rows: 0,
        };
        let e = estimate(&cfg, &shape);
        let p = cfg.num_parameters() as u64;
        assert_eq!(e.part("gradients"), 4 * p);
        assert_eq!(e.part("output-layer weight gradient"), 800 * 4);
        assert_eq!(e.part("gradient sum working set"), 800 * 4);
        // summing: the store (= the accumulators), the head's gradient from the forward and
        // their sum
        let accumulate = 12 * p + 4 * p + 800 * 4 + 800 * 4;
        assert!(e.total >= accumulate);
        let act = e.part("activations per micro-batch");
        let backward = 12 * p + act + e.part("backward working set") + 4 * p + 800 * 4;
        let forward = 12 * p + act + e.part("vocabulary-head chunk") + 800 * 4;
        assert_eq!(e.total, forward.max(backward).max(accumulate));
    }

    #[test]
    fn lora_trains_rank_times_in_plus_out_per_target() {
        let cfg = tiny();
        let spec = LoraSpec {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: vec!["q_proj".into(), "down_proj".into()],
        };
        // q: 2·(8 + 8), down: 2·(16 + 8), two layers
        assert_eq!(trainable_elems(&cfg, Some(&spec)), 2 * (32 + 48));
    }

    #[test]
    fn checkpointing_keeps_one_hidden_state_per_layer() {
        let cfg = tiny();
        let mut shape = MemoryShape {
            dtype: DType::F32,
            cuda: false,
            lora: None,
            rows: 2,
            row_tokens: 16,
            targets: 32,
            accumulation: 1,
            checkpointing: true,
            reference_rows: 0,
        };
        let on = estimate(&cfg, &shape);
        shape.checkpointing = false;
        let off = estimate(&cfg, &shape);
        let shared = (2 * 16 * 16 + 32 * 8) * 4;
        assert_eq!(
            on.part("activations per micro-batch"),
            2 * 32 * 8 * 4 + shared
        );
        // per token 6·8 + 5·8 + 5·4 + 3·16 = 156; no attention probabilities
        assert_eq!(
            off.part("activations per micro-batch"),
            2 * 32 * 156 * 4 + shared
        );
        assert_eq!(
            on.part("recomputation working set"),
            32 * 156 * 4 + 4 * 32 * 8 * 4
        );
        assert_eq!(off.part("recomputation working set"), 0);
    }

    #[test]
    fn family_biases_and_head_norms_are_counted() {
        let mut cfg = tiny();
        let per_layer = 64 + 64 + 64 + 384 + 16;
        cfg.arch = Arch::of(Family::Qwen2);
        // q, k and v biases: 8 + 4 + 4 per layer
        assert_eq!(cfg.num_parameters(), 1608 + 2 * (per_layer + 16));
        // per token: Llama's 156, and each biased projection's sum (8 + 4 + 4)
        assert_eq!(layer_activation_elems(&cfg, None, 2, 16), 32 * (156 + 16));
        cfg.arch = Arch::of(Family::Qwen3);
        // q_norm and k_norm: head_dim 4 each per layer
        assert_eq!(cfg.num_parameters(), 1608 + 2 * (per_layer + 8));
        // the norms' outputs: q (8) and kv (4) per token
        assert_eq!(layer_activation_elems(&cfg, None, 2, 16), 32 * (156 + 12));
        cfg.arch = Arch::of(Family::Mistral);
        assert_eq!(cfg.num_parameters(), 1608 + 2 * per_layer);
    }
}
