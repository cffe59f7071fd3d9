//! Preallocated KV cache for batched, left-padded generation.
//!
//! Per layer, K and V are `(batch, n_kv_heads, capacity, head_dim)` tensors written in place
//! (`Tensor::slice_set`), so a decode step copies only its new column. All rows share the
//! column count [`KvCache::len`]; row `b` starts with `left_pad[b]` padding columns, which are
//! masked as keys, and its RoPE position of column `c` is `c - left_pad[b]`.
//!
//! Shared prefix ([`KvCache::share_prefix`]): the n samples of a prompt have the same prompt
//! keys and values, so instead of copying the prefilled columns into every sample's row, they
//! stay once per prompt ("prefix rows") and each sample row holds only its own generated
//! columns. Row `b` then reads as its prefix row's columns followed by its own; columns,
//! positions and padding are counted over that concatenation, so nothing outside the cache
//! sees the difference except the decode kernel, which reads both parts without copying.

use candle_core::{DType, Device, Result, Tensor};

use super::config::LlamaConfig;
use super::error::ModelError;

#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer (K, V), each `(batch, n_kv_heads, capacity, head_dim)`, contiguous.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    left_pad: Vec<usize>,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
    /// The prompt columns shared by several rows, when [`KvCache::share_prefix`] was called.
    prefix: Option<Prefix>,
}

/// Prefilled columns kept once per prompt: per layer (K, V), each
/// `(prompts, n_kv_heads, len, head_dim)`, contiguous; `rows[b]` = the prefix row of row `b`.
#[derive(Debug, Clone)]
struct Prefix {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    rows: Vec<usize>,
}

/// The keys and values a layer's attention reads after [`KvCache::append`]: the row's own
/// columns `(batch, n_kv, own, D)` (views), preceded, with a shared prefix, by the prefix
/// columns of row `b`'s prefix row `prefix_rows[b]`.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
    pub prefix: Option<(Tensor, Tensor, Vec<usize>)>,
}

impl LayerKv {
    /// K and V with the prefix columns copied in front of every row's own columns (for the
    /// general attention path; the decode kernel reads the parts without this copy).
    pub fn full(&self) -> Result<(Tensor, Tensor)> {
        match &self.prefix {
            None => Ok((self.k.clone(), self.v.clone())),
            Some((pk, pv, rows)) => {
                let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
                let idx = Tensor::new(idx.as_slice(), pk.device())?;
                Ok((
                    Tensor::cat(&[&pk.index_select(&idx, 0)?, &self.k], 2)?,
                    Tensor::cat(&[&pv.index_select(&idx, 0)?, &self.v], 2)?,
                ))
            }
        }
    }
}

impl KvCache {
    /// An empty cache for `batch` rows of up to `capacity` columns (prompt + generated tokens,
    /// padding included). `left_pad[b]` = padding columns at the start of row `b` (the prefill
    /// must be left-padded accordingly; use zeros when rows are not padded).
    pub fn new(
        cfg: &LlamaConfig,
        batch: usize,
        capacity: usize,
        left_pad: Vec<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if left_pad.len() != batch {
            candle_core::bail!(
                "KvCache::new: left_pad has {} entries for {batch} rows",
                left_pad.len()
            )
        }
        if let Some(&p) = left_pad.iter().find(|&&p| p > capacity) {
            candle_core::bail!("KvCache::new: left_pad {p} exceeds the capacity {capacity}")
        }
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            len: 0,
            capacity,
            left_pad,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            dtype,
            device: device.clone(),
            prefix: None,
        })
    }

    /// Bytes a cache of this shape takes (K and V of every layer), to size batches.
    pub fn bytes_needed(cfg: &LlamaConfig, batch: usize, capacity: usize, dtype: DType) -> usize {
        2 * cfg.num_hidden_layers
            * batch
            * cfg.num_key_value_heads
            * capacity
            * cfg.head_dim
            * dtype.size_in_bytes()
    }

    /// Columns written so far (the same for every row).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.left_pad.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Columns still free.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    pub fn left_pad(&self) -> &[usize] {
        &self.left_pad
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Typed check that `new_cols` more columns fit.
    pub fn ensure_room(&self, new_cols: usize) -> std::result::Result<(), ModelError> {
        if self.len + new_cols > self.capacity {
            return Err(ModelError::CacheFull {
                needed: self.len + new_cols,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// The number of real (non-padding) tokens of row `b` so far = the RoPE position of its
    /// next token.
    pub fn next_position(&self, b: usize) -> usize {
        self.len.saturating_sub(self.left_pad[b])
    }

    /// Write `k`, `v` (`(batch, n_kv, T, D)`, contiguous) at columns `len..len+T` of `layer`
    /// and return the filled columns `0..len+T` (views). The column count itself moves on
    /// [`KvCache::advance`], once every layer is written.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<LayerKv> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            return Err(ModelError::CacheFull {
                needed: self.len + t,
                capacity: self.capacity,
            }
            .into_candle());
        }
        let own = self.len - self.prefix_len();
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 2, own)?;
        vc.slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 2, own)?;
        Ok(LayerKv {
            k: kc.narrow(2, 0, own + t)?,
            v: vc.narrow(2, 0, own + t)?,
            prefix: self.prefix.as_ref().map(|p| {
                let (pk, pv) = &p.layers[layer];
                (pk.clone(), pv.clone(), p.rows.clone())
            }),
        })
    }

    /// Columns held once per prompt (0 without a shared prefix).
    fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len)
    }

    /// Row `i` becomes `counts[i]` consecutive rows, like [`KvCache::repeat_rows`], but the
    /// columns written so far stay once per prompt as a shared prefix instead of being copied
    /// into each row: the decode kernel then reads a prompt's keys and values once for all of
    /// its rows (they stay in the CPU's caches), and compaction copies only generated columns.
    pub fn share_prefix(&mut self, counts: &[usize]) -> Result<()> {
        if counts.len() != self.batch() {
            candle_core::bail!(
                "share_prefix: {} counts for {} rows",
                counts.len(),
                self.batch()
            )
        }
        if self.prefix.is_some() || self.is_empty() {
            candle_core::bail!("share_prefix: needs a prefilled cache without a shared prefix")
        }
        let rows: Vec<usize> = counts
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
            .collect();
        let own_shape = (
            rows.len(),
            self.n_kv_heads,
            self.capacity - self.len,
            self.head_dim,
        );
        let mut layers = Vec::with_capacity(self.layers.len());
        for (k, v) in self.layers.iter_mut() {
            let shared = (
                k.narrow(2, 0, self.len)?.contiguous()?,
                v.narrow(2, 0, self.len)?.contiguous()?,
            );
            layers.push(shared);
            *k = Tensor::zeros(own_shape, self.dtype, &self.device)?;
            *v = Tensor::zeros(own_shape, self.dtype, &self.device)?;
        }
        self.left_pad = rows.iter().map(|&r| self.left_pad[r]).collect();
        self.prefix = Some(Prefix {
            layers,
            len: self.len,
            rows,
        });
        Ok(())
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keep only `rows` (indices into the current batch, in the given order; repeats allowed):
    /// finished rows leave the batch. The new cache has the same capacity and length.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        let batch = self.batch();
        if let Some(&r) = rows.iter().find(|&&r| r >= batch) {
            candle_core::bail!("select_rows: row {r} is out of range (batch {batch})")
        }
        let new_b = rows.len();
        let shape = (
            new_b,
            self.n_kv_heads,
            self.capacity - self.prefix_len(),
            self.head_dim,
        );
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::new(idx.as_slice(), &self.device)?;
        for (k, v) in self.layers.iter_mut() {
            for t in [k, v] {
                // index_select needs a contiguous source, so the whole capacity is copied
                // (the new buffer has that size anyway).
                let fresh = if new_b == 0 {
                    Tensor::zeros(shape, self.dtype, &self.device)?
                } else {
                    t.index_select(&idx, 0)?
                };
                *t = fresh;
            }
        }
        self.left_pad = rows.iter().map(|&r| self.left_pad[r]).collect();
        if let Some(p) = self.prefix.as_mut() {
            p.rows = rows.iter().map(|&r| p.rows[r]).collect();
        }
        Ok(())
    }

    /// Row `i` becomes `counts[i]` consecutive rows (0 drops it): one prefill of a question
    /// serves its n samples.
    pub fn repeat_rows(&mut self, counts: &[usize]) -> Result<()> {
        if counts.len() != self.batch() {
            candle_core::bail!(
                "repeat_rows: {} counts for {} rows",
                counts.len(),
                self.batch()
            )
        }
        let rows: Vec<usize> = counts
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
            .collect();
        self.select_rows(&rows)
    }

    /// Forget every column (keeps the buffers); `left_pad` is replaced. Not for a cache with
    /// a shared prefix (its rows' buffers hold only the generated columns).
    pub fn reset(&mut self, left_pad: Vec<usize>) -> Result<()> {
        if self.prefix.is_some() {
            candle_core::bail!("reset: the cache has a shared prefix")
        }
        if left_pad.len() != self.batch() {
            candle_core::bail!(
                "reset: left_pad has {} entries for {} rows",
                left_pad.len(),
                self.batch()
            )
        }
        self.left_pad = left_pad;
        self.len = 0;
        Ok(())
    }

    /// The filled K and V of `layer`, `(batch, n_kv, len, head_dim)` views (for tests/debugging).
    /// With a shared prefix, the prefix columns are copied in front of each row's own.
    pub fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = &self.layers[layer];
        let own = self.len - self.prefix_len();
        LayerKv {
            k: k.narrow(2, 0, own)?,
            v: v.narrow(2, 0, own)?,
            prefix: self.prefix.as_ref().map(|p| {
                let (pk, pv) = &p.layers[layer];
                (pk.clone(), pv.clone(), p.rows.clone())
            }),
        }
        .full()
    }
}
