//! Picking a step's next tokens where its logits are.
//!
//! The host sampler ([`super::logits`]) needs every row's whole vocabulary: on a GPU that is a
//! `rows × vocab` f32 copy per decode step, 65 MB for 128 rows of Llama 3's 128k vocabulary,
//! which takes longer than the decode step of a 1B model itself. Here the device reduces the
//! logits first and the host receives a few hundred kilobytes:
//!
//! - greedy: the argmax of every row (and its maximum, to catch NaN rows);
//! - temperature sampling (top_p = 1): the row maxima and the softmax mass of every block of
//!   [`BLOCK`] tokens. The host walks the block masses to the block where the row's uniform
//!   lands, fetches just that block's logits and finishes the inverse transform inside it with
//!   the host sampler's own f64 formula. The token is the host sampler's token unless the
//!   uniform falls within f32 rounding (about 1e-7 of the mass) of a block boundary.
//!
//! Nucleus sampling (top_p < 1) needs the tokens in probability order, which has no cheap
//! device form here, so it copies the rows and samples on the host; so do rows whose logits hold
//! a NaN or no finite value, so that they get the host sampler's exact treatment.

use candle_core::{DType, Device, Result, Tensor, D};

use super::logits::{argmax, inverse_cdf, sample_one, sample_rows, Sampling};

/// Tokens per block whose mass the device sums. Small enough that fetching one block per row is
/// cheap, large enough that the block masses of a 128k vocabulary are only ~500 numbers a row.
pub const BLOCK: usize = 256;

/// Where a decode step's logits become tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplerPlacement {
    /// On the host when the model runs on the CPU (the logits are already there), on the
    /// device otherwise.
    #[default]
    Auto,
    /// Copy the whole logits to the host and sample there.
    Host,
    /// Reduce on the device and copy only what the draw needs.
    Device,
}

impl SamplerPlacement {
    /// Whether logits on `device` are reduced there before the host sees them.
    pub fn reduces_on(self, device: &Device) -> bool {
        match self {
            SamplerPlacement::Auto => !device.is_cpu(),
            SamplerPlacement::Host => false,
            SamplerPlacement::Device => true,
        }
    }
}

/// The next token of every row of `logits` (`(rows, vocab)`, f32); `uniforms[r]` is row r's
/// draw (ignored when greedy).
pub fn next_tokens(
    logits: &Tensor,
    sampling: Sampling,
    uniforms: &[f64],
    placement: SamplerPlacement,
) -> Result<Vec<u32>> {
    let (rows, vocab) = logits.dims2()?;
    if uniforms.len() != rows {
        candle_core::bail!("next_tokens: {} uniforms for {rows} rows", uniforms.len())
    }
    let logits = logits.to_dtype(DType::F32)?;
    let nucleus = !sampling.is_greedy() && sampling.top_p < 1.0;
    if !placement.reduces_on(logits.device()) || nucleus {
        return sample_on_host(&logits, vocab, sampling, uniforms);
    }
    if sampling.is_greedy() {
        greedy(&logits)
    } else {
        sample_by_blocks(&logits, sampling, uniforms, BLOCK)
    }
}

/// The host sampler over every row. Contiguous f32 logits already on the CPU are read where
/// they are: a copy would be `rows × vocab` floats per step (25 MB at 128 × 49k), freshly
/// allocated and page-faulted in each time.
fn sample_on_host(
    logits: &Tensor,
    vocab: usize,
    sampling: Sampling,
    uniforms: &[f64],
) -> Result<Vec<u32>> {
    {
        let (storage, layout) = logits.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(sample_rows(&data[a..b], vocab, sampling, uniforms));
        }
    }
    let flat: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    Ok(sample_rows(&flat, vocab, sampling, uniforms))
}

fn greedy(logits: &Tensor) -> Result<Vec<u32>> {
    let best: Vec<u32> = logits.argmax_keepdim(D::Minus1)?.flatten_all()?.to_vec1()?;
    let max: Vec<f32> = logits.max_keepdim(D::Minus1)?.flatten_all()?.to_vec1()?;
    best.into_iter()
        .zip(max)
        .enumerate()
        .map(|(r, (token, max))| {
            // A NaN can win a device argmax; the host's argmax never lets it.
            if max.is_finite() {
                Ok(token)
            } else {
                Ok(argmax(&logits.get(r)?.to_vec1::<f32>()?))
            }
        })
        .collect()
}

/// Temperature sampling through per-block masses; `block` is a parameter so tests can make
/// boundaries fall between a handful of tokens.
pub(crate) fn sample_by_blocks(
    logits: &Tensor,
    sampling: Sampling,
    uniforms: &[f64],
    block: usize,
) -> Result<Vec<u32>> {
    let (rows, vocab) = logits.dims2()?;
    let device = logits.device();
    let blocks = vocab.div_ceil(block);
    // Padding tokens get -inf: zero mass, never drawn.
    let padded = if blocks * block > vocab {
        let pad = Tensor::full(f32::NEG_INFINITY, (rows, blocks * block - vocab), device)?;
        Tensor::cat(&[logits, &pad], 1)?
    } else {
        logits.clone()
    };
    let inv_t = 1.0 / sampling.temperature;
    let max = padded.max_keepdim(1)?;
    let weights = (padded.broadcast_sub(&max)? * inv_t)?.exp()?;
    let masses = weights.reshape((rows, blocks, block))?.sum(2)?;
    // One copy: column 0 is the row maximum, then the block masses.
    let summary: Vec<f32> = Tensor::cat(&[&max, &masses], 1)?.flatten_all()?.to_vec1()?;

    // Per row: the block the uniform lands in and how much mass precedes it, or None when the
    // row must go to the host sampler.
    let picks: Vec<Option<(usize, f64)>> = summary
        .chunks(blocks + 1)
        .zip(uniforms)
        .map(|(row, &u)| {
            let (max, masses) = (row[0], &row[1..]);
            if !max.is_finite() || masses.iter().any(|m| !m.is_finite()) {
                return None;
            }
            let total: f64 = masses.iter().map(|&m| m as f64).sum();
            let target = u * total;
            let mut before = 0.0;
            let mut last_with_mass = None;
            for (j, &m) in masses.iter().enumerate() {
                if m <= 0.0 {
                    continue;
                }
                if before + m as f64 > target {
                    return Some((j, target - before));
                }
                last_with_mass = Some((j, before));
                before += m as f64;
            }
            // Rounding put the target at the very end: the last block with mass, entered at its
            // top so the draw takes its last token with mass.
            last_with_mass.map(|(j, before)| (j, (target - before).max(0.0)))
        })
        .collect();

    let chosen: Vec<u32> = picks
        .iter()
        .enumerate()
        .map(|(r, p)| (r * blocks + p.map_or(0, |(j, _)| j)) as u32)
        .collect();
    let chosen = Tensor::new(chosen.as_slice(), device)?;
    let block_logits: Vec<f32> = padded
        .reshape((rows * blocks, block))?
        .index_select(&chosen, 0)?
        .flatten_all()?
        .to_vec1()?;

    let mut tokens = Vec::with_capacity(rows);
    for (r, pick) in picks.into_iter().enumerate() {
        let row_max = summary[r * (blocks + 1)];
        let drawn = pick.and_then(|(j, residual)| {
            let slice = &block_logits[r * block..(r + 1) * block];
            draw_in_block(slice, row_max, inv_t, residual).map(|i| (j * block + i) as u32)
        });
        tokens.push(match drawn {
            Some(token) => token,
            None => sample_one(&logits.get(r)?.to_vec1::<f32>()?, sampling, uniforms[r]),
        });
    }
    Ok(tokens)
}

/// Inverse transform inside one block, with the host sampler's weights `exp((l − max) / T)` in
/// f64 (a NaN logit has none).
fn draw_in_block(logits: &[f32], row_max: f32, inv_t: f64, residual: f64) -> Option<usize> {
    let weights = logits.iter().map(|&l| {
        if l.is_nan() {
            0.0
        } else {
            (((l - row_max) as f64) * inv_t).exp()
        }
    });
    inverse_cdf(weights.enumerate(), residual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn tensor(rows: &[Vec<f32>]) -> Tensor {
        let vocab = rows[0].len();
        let flat: Vec<f32> = rows.concat();
        Tensor::from_vec(flat, (rows.len(), vocab), &Device::Cpu).unwrap()
    }

    #[test]
    fn draws_cross_block_boundaries_like_the_softmax() {
        // p = (0.1, 0.2, 0.7) in blocks of two tokens: {0.1, 0.2} | {0.7, padding}.
        let logits = [0.0f32, 2f32.ln(), 7f32.ln()];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        let cases = [
            (0.05, 0),
            (0.15, 1),
            (0.29, 1),
            (0.31, 2),
            (0.999, 2),
            (0.0, 0),
        ];
        let t = tensor(&vec![logits.to_vec(); cases.len()]);
        let uniforms: Vec<f64> = cases.iter().map(|c| c.0).collect();
        let want: Vec<u32> = cases.iter().map(|c| c.1).collect();
        assert_eq!(sample_by_blocks(&t, s, &uniforms, 2).unwrap(), want);
        // T = 0.5 squares the probabilities: (1, 4, 49)/54.
        let s = Sampling {
            temperature: 0.5,
            top_p: 1.0,
        };
        let t = tensor(&vec![logits.to_vec(); 4]);
        let u = [
            1.0 / 54.0 - 1e-5,
            1.0 / 54.0 + 1e-5,
            5.0 / 54.0 - 1e-5,
            5.0 / 54.0 + 1e-5,
        ];
        assert_eq!(sample_by_blocks(&t, s, &u, 2).unwrap(), vec![0, 1, 1, 2]);
    }

    #[test]
    fn matches_the_host_sampler_on_random_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (vocab, temperature) in [(1000usize, 0.7), (512, 1.0), (49_152, 1.3), (37, 0.2)] {
            let rows: Vec<Vec<f32>> = (0..24)
                .map(|_| (0..vocab).map(|_| rng.random_range(-8.0f32..8.0)).collect())
                .collect();
            let uniforms: Vec<f64> = (0..rows.len()).map(|_| rng.random()).collect();
            let s = Sampling {
                temperature,
                top_p: 1.0,
            };
            let host: Vec<u32> = rows
                .iter()
                .zip(&uniforms)
                .map(|(r, &u)| sample_one(r, s, u))
                .collect();
            let t = tensor(&rows);
            assert_eq!(
                next_tokens(&t, s, &uniforms, SamplerPlacement::Device).unwrap(),
                host,
                "vocab {vocab}"
            );
            assert_eq!(
                sample_by_blocks(&t, s, &uniforms, 16).unwrap(),
                host,
                "vocab {vocab}, blocks of 16"
            );
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_skips_nan() {
        let t = tensor(&[
            vec![0.0, 3.0, 3.0, -1.0],
            vec![f32::NAN, 1.0, 0.5, 2.0],
            vec![f32::NEG_INFINITY; 4],
        ]);
        let got = next_tokens(&t, Sampling::GREEDY, &[0.5; 3], SamplerPlacement::Device).unwrap();
        assert_eq!(got, vec![1, 3, 0]);
    }

    #[test]
    fn nan_rows_and_nucleus_fall_back_to_the_host_rules() {
        // A NaN token has no mass on the host; the rest of its row still samples normally.
        let rows = vec![
            vec![f32::NAN, 0.0, 2f32.ln(), 7f32.ln()],
            vec![0.0, 2f32.ln(), 7f32.ln(), f32::NEG_INFINITY],
        ];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        let u = [0.15, 0.31];
        let got = next_tokens(&tensor(&rows), s, &u, SamplerPlacement::Device).unwrap();
        assert_eq!(got, vec![2, 2]);
        let nucleus = Sampling {
            temperature: 1.0,
            top_p: 0.75,
        };
        let got = next_tokens(
            &tensor(&rows),
            nucleus,
            &[0.9, 0.1],
            SamplerPlacement::Device,
        )
        .unwrap();
        assert_eq!(got, vec![2, 2]);
    }

    #[test]
    fn placement_follows_the_device() {
        assert!(!SamplerPlacement::Auto.reduces_on(&Device::Cpu));
        assert!(SamplerPlacement::Device.reduces_on(&Device::Cpu));
        assert!(!SamplerPlacement::Host.reduces_on(&Device::Cpu));
    }
}
