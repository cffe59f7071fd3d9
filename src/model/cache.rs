//! Preallocated KV cache for batched, left-padded generation.
//!
//! Per layer, K and V are `(batch, n_kv_heads, capacity, head_dim)` tensors written in place
//! (`Tensor::slice_set`), so a decode step copies only its new column. All rows share the
//! column count [`KvCache::len`]; row `b` starts with `left_pad[b]` padding columns, which are
//! masked as keys, and its RoPE position of column `c` is `c - left_pad[b]`.

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
    /// and return views of the filled columns `0..len+T`. The column count itself moves on
    /// [`KvCache::advance`], once every layer is written.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            return Err(ModelError::CacheFull {
                needed: self.len + t,
                capacity: self.capacity,
            }
            .into_candle());
        }
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 2, self.len)?;
        Ok((
            kc.narrow(2, 0, self.len + t)?,
            vc.narrow(2, 0, self.len + t)?,
        ))
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
        let shape = (new_b, self.n_kv_heads, self.capacity, self.head_dim);
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

    /// Forget every column (keeps the buffers); `left_pad` is replaced.
    pub fn reset(&mut self, left_pad: Vec<usize>) -> Result<()> {
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
    pub fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = &self.layers[layer];
        Ok((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?))
    }
}
