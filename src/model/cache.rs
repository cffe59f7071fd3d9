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

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Tensor};

use super::config::LlamaConfig;
use super::error::ModelError;

/// A clone owns copies of the rows' buffers (see its `Clone`): [`KvCache::select_rows`]
/// compacts them in place.
#[derive(Debug)]
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
impl Clone for KvCache {
    /// On the CPU, copies the rows' own buffers: they are compacted in place there, which a
    /// clone sharing them would see. Elsewhere (no in-place compaction) and for the shared
    /// prefix, never written after it is made, the buffers stay shared.
    fn clone(&self) -> Self {
        let copy = |t: &Tensor| match t.device() {
            // A CPU copy fails only where allocation aborts anyway.
            Device::Cpu => t.copy().expect("copying a CPU buffer"),
            _ => t.clone(),
        };
        Self {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| (copy(k), copy(v)))
                .collect(),
            len: self.len,
            capacity: self.capacity,
            left_pad: self.left_pad.clone(),
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

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
        // the longest row a cache of this capacity can hold: fail before any work when the
        // model's sliding window would cut it
        let unpadded = capacity - left_pad.iter().copied().min().unwrap_or(0);
        cfg.check_sequence_len(unpadded)
            .map_err(|e| e.into_candle())?;
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
    /// finished rows leave the batch. The new cache has the same capacity and length. On the
    /// CPU, rows in increasing order are moved within the buffers they are in.
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
        // Rows kept in increasing order (finished rows leaving the batch) move down in place,
        // only their filled columns: copying the whole capacity into a fresh buffer cost a
        // decode step ~3,000 page faults and a pass over every row's memory.
        let in_place = self.device.is_cpu() && new_b > 0 && rows.windows(2).all(|w| w[0] < w[1]);
        if in_place {
            let op = CompactRows {
                rows,
                filled: self.len - self.prefix_len(),
            };
            for (k, v) in self.layers.iter_mut() {
                for t in [k, v] {
                    t.inplace_op1(&op)?;
                    *t = t.narrow(0, 0, new_b)?;
                }
            }
        } else {
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

/// Moves row `rows[i]` of a contiguous `(batch, n_kv, capacity, head_dim)` buffer to row `i`,
/// copying its first `filled` columns. `rows` is strictly increasing, so `rows[i] >= i`: every
/// row is read before a later move writes over it.
struct CompactRows<'a> {
    rows: &'a [usize],
    filled: usize,
}

impl CompactRows<'_> {
    fn apply<T: Copy>(&self, buf: &mut [T], layout: &Layout) -> Result<()> {
        let (batch, kv, cap, d) = layout.shape().dims4()?;
        if !layout.is_contiguous() || self.filled > cap || self.rows.len() > batch {
            candle_core::bail!("compact rows: {:?} buffer", layout.shape())
        }
        let buf = &mut buf[layout.start_offset()..][..batch * kv * cap * d];
        let (row, head) = (kv * cap * d, cap * d);
        for (i, &r) in self.rows.iter().enumerate().filter(|&(i, &r)| i != r) {
            for h in 0..kv {
                let src = r * row + h * head;
                buf.copy_within(src..src + self.filled * d, i * row + h * head);
            }
        }
        Ok(())
    }
}

impl InplaceOp1 for CompactRows<'_> {
    fn name(&self) -> &'static str {
        "east-compact-kv-rows"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        match storage {
            CpuStorage::F32(v) => self.apply(v, layout),
            CpuStorage::F16(v) => self.apply(v, layout),
            CpuStorage::BF16(v) => self.apply(v, layout),
            CpuStorage::F64(v) => self.apply(v, layout),
            other => candle_core::bail!(
                "compact rows: {:?} cache",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{tiny_config, TinySpec};

    /// Column `c` of row `r`, kv head `h` holds `r·1000 + h·100 + c` in every element, so what a
    /// row holds after compaction shows which row it came from.
    fn filled_cache(batch: usize, cols: usize, capacity: usize) -> (KvCache, usize, usize) {
        let cfg = tiny_config(&TinySpec::default(), 16);
        let (kv, d) = (cfg.num_key_value_heads, cfg.head_dim);
        let mut cache = KvCache::new(
            &cfg,
            batch,
            capacity,
            vec![0; batch],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        for c in 0..cols {
            let vals: Vec<f32> = (0..batch * kv * d)
                .map(|i| {
                    let (r, h) = (i / (kv * d), i / d % kv);
                    (r * 1000 + h * 100 + c) as f32
                })
                .collect();
            let col = Tensor::from_vec(vals, (batch, kv, 1, d), &Device::Cpu).unwrap();
            for layer in 0..cfg.num_hidden_layers {
                cache.append(layer, &col, &(&col * -1.0).unwrap()).unwrap();
            }
            cache.advance(1);
        }
        (cache, kv, d)
    }

    fn expect_rows(cache: &KvCache, from: &[usize], cols: usize, kv: usize, d: usize) {
        for layer in 0..cache.layers.len() {
            let (k, v) = cache.layer(layer).unwrap();
            assert_eq!(k.dims(), &[from.len(), kv, cols, d]);
            let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
            let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            for (i, (&k, &v)) in k.iter().zip(&v).enumerate() {
                let (b, h, c) = (i / (kv * cols * d), i / (cols * d) % kv, i / d % cols);
                let want = (from[b] * 1000 + h * 100 + c) as f32;
                assert_eq!(
                    (k, v),
                    (want, -want),
                    "layer {layer} row {b} head {h} col {c}"
                );
            }
        }
    }

    #[test]
    fn rows_in_order_are_compacted_in_place_and_keep_their_columns() {
        let (mut cache, kv, d) = filled_cache(6, 3, 5);
        let before = cache.clone();
        cache.select_rows(&[1, 2, 5]).unwrap();
        expect_rows(&cache, &[1, 2, 5], 3, kv, d);
        // a clone made before does not see the move
        expect_rows(&before, &[0, 1, 2, 3, 4, 5], 3, kv, d);
        // twice more, down to one row, then a column written after the moves
        cache.select_rows(&[0, 2]).unwrap();
        expect_rows(&cache, &[1, 5], 3, kv, d);
        cache.select_rows(&[1]).unwrap();
        expect_rows(&cache, &[5], 3, kv, d);
        assert_eq!(cache.remaining(), 2);
        // out of order and repeated rows take the copying path
        let (mut cache, kv, d) = filled_cache(4, 2, 4);
        cache.select_rows(&[3, 0, 3]).unwrap();
        expect_rows(&cache, &[3, 0, 3], 2, kv, d);
    }
}
