//! The training ops' hand-written backward passes (`east::model::train_ops`) against central
//! finite differences of the same functions written out on the host in f64, and their
//! forwards against those host formulas (f64 to rounding; f32 and bf16 to their precision).
//! Each check differentiates `L = Σ c ⊙ op(inputs)` for fixed, uneven coefficients `c`.

use candle_core::{DType, Device, Tensor, Var};
use east::model::train_ops::{
    add_bias, attention, attention_probs, rms_norm, rope, softmax_masked, swiglu, RopeTables,
};

/// Deterministic, uneven test values.
fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            ((i * 37 + seed * 11) % 17) as f64 / 8.0 - 1.0 + ((i + seed) as f64 * 0.7).sin() * 0.3
        })
        .collect()
}

fn var(v: &[f64], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Central finite differences of `loss` at `x`.
fn finite_differences(x: &[f64], loss: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[i] += h;
            down[i] -= h;
            (loss(&up) - loss(&down)) / (2.0 * h)
        })
        .collect()
}

fn weighted(y: &[f64], c: &[f64]) -> f64 {
    y.iter().zip(c).map(|(a, b)| a * b).sum()
}

/// Host RMS norm over rows of width `n`.
fn rms_norm_host(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let n = w.len();
    x.chunks(n)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, wi)| v * r * wi)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rms_norm_backward_is_the_finite_difference_of_the_host_formula() {
    let (rows, n, eps) = (2 * 3, 8, 1e-5);
    let (xs, ws, cs) = (values(rows * n, 1), values(n, 2), values(rows * n, 3));
    let x = var(&xs, &[2, 3, n]);
    let w = var(&ws, &[n]);
    let y = rms_norm(x.as_tensor(), w.as_tensor(), eps).unwrap();
    assert_close(&flat(&y), &rms_norm_host(&xs, &ws, eps), 1e-12, "rms_norm");
    let c = Tensor::from_vec(cs.clone(), (2, 3, n), &Device::Cpu).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = finite_differences(&xs, &|x| weighted(&rms_norm_host(x, &ws, eps), &cs));
    let dw = finite_differences(&ws, &|w| weighted(&rms_norm_host(&xs, w, eps), &cs));
    assert_close(&flat(grads.get(x.as_tensor()).unwrap()), &dx, 1e-7, "∂x");
    assert_close(&flat(grads.get(w.as_tensor()).unwrap()), &dw, 1e-7, "∂w");
}

/// A constant weight (a frozen norm under LoRA) gets no gradient, and the input's is unchanged.
#[test]
fn rms_norm_of_a_constant_weight_leaves_it_without_a_gradient() {
    let (xs, ws, cs) = (values(4 * 6, 4), values(6, 5), values(4 * 6, 6));
    let x = var(&xs, &[4, 6]);
    let w = Tensor::from_vec(ws.clone(), 6, &Device::Cpu).unwrap();
    let c = Tensor::from_vec(cs.clone(), (4, 6), &Device::Cpu).unwrap();
    let grads = (rms_norm(x.as_tensor(), &w, 1e-6).unwrap() * c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&w).is_none());
    let dx = finite_differences(&xs, &|x| weighted(&rms_norm_host(x, &ws, 1e-6), &cs));
    assert_close(&flat(grads.get(x.as_tensor()).unwrap()), &dx, 1e-7, "∂x");
}

/// The f32 forward (candle's fused kernel, what a GPU runs) and the bf16 one (statistics in
/// f32) against the host formula.
#[test]
fn rms_norm_in_f32_and_bf16_matches_the_host_formula() {
    let (rows, n) = (5, 64);
    let (xs, ws) = (values(rows * n, 7), values(n, 8));
    let want = rms_norm_host(&xs, &ws, 1e-5);
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 2e-2)] {
        let x = Tensor::from_vec(xs.clone(), (rows, n), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let w = Tensor::from_vec(ws.clone(), n, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        assert_close(
            &flat(&rms_norm(&x, &w, 1e-5).unwrap()),
            &want,
            tol,
            &format!("{dtype:?}"),
        );
    }
}

/// Host `rotate_half` RoPE of `x` `(b, h, t, d)` with tables `(b, t, d/2)`, times `scale`.
fn rope_host(
    x: &[f64],
    cos: &[f64],
    sin: &[f64],
    (b, h, t, d): (usize, usize, usize, usize),
    scale: f64,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let row = ((bi * h + hi) * t + ti) * d;
                for i in 0..d / 2 {
                    let (c, s) = (
                        cos[(bi * t + ti) * d / 2 + i],
                        sin[(bi * t + ti) * d / 2 + i],
                    );
                    let (x1, x2) = (x[row + i], x[row + i + d / 2]);
                    y[row + i] = scale * (x1 * c - x2 * s);
                    y[row + i + d / 2] = scale * (x1 * s + x2 * c);
                }
            }
        }
    }
    y
}

#[test]
fn rope_backward_is_the_finite_difference_of_the_host_formula() {
    let shape = (2, 3, 4, 6);
    let (b, h, t, d) = shape;
    let n = b * h * t * d;
    let angles: Vec<f64> = (0..b * t * d / 2).map(|i| 0.3 + i as f64 * 0.41).collect();
    let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
    let (xs, cs) = (values(n, 9), values(n, 10));
    let table = |v: &[f64]| Tensor::from_vec(v.to_vec(), (b, t, d / 2), &Device::Cpu).unwrap();
    for scale in [1.0, 0.125, 0.37] {
        let tables = RopeTables::new(&table(&cos), &table(&sin), scale).unwrap();
        let x = var(&xs, &[b, h, t, d]);
        let y = rope(x.as_tensor(), &tables).unwrap();
        assert_close(
            &flat(&y),
            &rope_host(&xs, &cos, &sin, shape, scale),
            1e-12,
            "rope",
        );
        let c = Tensor::from_vec(cs.clone(), (b, h, t, d), &Device::Cpu).unwrap();
        let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = finite_differences(&xs, &|x| {
            weighted(&rope_host(x, &cos, &sin, shape, scale), &cs)
        });
        assert_close(
            &flat(grads.get(x.as_tensor()).unwrap()),
            &dx,
            1e-7,
            &format!("∂x (scale {scale})"),
        );
    }
}

/// Host softmax over rows of width `n` of `x + mask` (`mask` one row pattern per query row,
/// repeated over heads as `(b, 1, t, l)` broadcasts).
fn softmax_host(x: &[f64], mask: &[f64], n: usize) -> Vec<f64> {
    x.chunks(n)
        .enumerate()
        .flat_map(|(r, row)| {
            let m = &mask[(r * n) % mask.len()..][..n];
            let z: Vec<f64> = row.iter().zip(m).map(|(a, b)| a + b).collect();
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - mx).exp()).sum();
            z.into_iter()
                .map(move |v| (v - mx).exp() / s)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn masked_softmax_backward_is_the_finite_difference_of_the_host_formula() {
    // (b, h, t, l) = (1, 2, 3, 3): a causal mask shared by both heads
    let (h, t) = (2, 3);
    let inf = f64::NEG_INFINITY;
    let mask: Vec<f64> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { inf }))
        .collect();
    let (xs, cs) = (values(h * t * t, 11), values(h * t * t, 12));
    let x = var(&xs, &[1, h, t, t]);
    let m = Tensor::from_vec(mask.clone(), (1, 1, t, t), &Device::Cpu).unwrap();
    let y = softmax_masked(x.as_tensor(), Some(&m)).unwrap();
    let want = softmax_host(&xs, &mask, t);
    assert_close(&flat(&y), &want, 1e-12, "softmax");
    assert_eq!(flat(&y)[1], 0.0, "a masked key gets no weight");
    let c = Tensor::from_vec(cs.clone(), (1, h, t, t), &Device::Cpu).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&m).is_none(), "the mask is a constant");
    let dx = finite_differences(&xs, &|x| weighted(&softmax_host(x, &mask, t), &cs));
    assert_close(&flat(grads.get(x.as_tensor()).unwrap()), &dx, 1e-7, "∂x");

    // unmasked
    let x = var(&xs, &[h * t, t]);
    let y = softmax_masked(x.as_tensor(), None).unwrap();
    let zeros = vec![0.0; t];
    assert_close(
        &flat(&y),
        &softmax_host(&xs, &zeros, t),
        1e-12,
        "softmax without a mask",
    );
    let c = Tensor::from_vec(cs.clone(), (h * t, t), &Device::Cpu).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = finite_differences(&xs, &|x| weighted(&softmax_host(x, &zeros, t), &cs));
    assert_close(
        &flat(grads.get(x.as_tensor()).unwrap()),
        &dx,
        1e-7,
        "∂x without a mask",
    );
}

/// Host attention probabilities for `q` `(1, h, t, d)`, `k` `(1, kv, l, d)`: query head `i`
/// uses key head `i / (h / kv)`; `mask` `(t, l)`.
fn attention_host(
    q: &[f64],
    k: &[f64],
    mask: &[f64],
    (h, kv, t, l, d): (usize, usize, usize, usize, usize),
) -> Vec<f64> {
    let mut scores = vec![0.0; h * t * l];
    for hi in 0..h {
        let kh = hi / (h / kv);
        for i in 0..t {
            for j in 0..l {
                scores[(hi * t + i) * l + j] = (0..d)
                    .map(|e| q[(hi * t + i) * d + e] * k[(kh * l + j) * d + e])
                    .sum();
            }
        }
    }
    softmax_host(&scores, mask, l)
}

/// Grouped-query attention probabilities (4 query heads on 2 key heads, causal mask): the
/// gradients of the queries and of the shared keys.
#[test]
fn attention_probs_backward_is_the_finite_difference_of_the_host_formula() {
    let dims = (4, 2, 3, 3, 5);
    let (h, kv, t, l, d) = dims;
    let inf = f64::NEG_INFINITY;
    let mask: Vec<f64> = (0..t)
        .flat_map(|i| (0..l).map(move |j| if j <= i { 0.0 } else { inf }))
        .collect();
    let (qs, ks, cs) = (
        values(h * t * d, 18),
        values(kv * l * d, 19),
        values(h * t * l, 20),
    );
    let q = var(&qs, &[1, h, t, d]);
    let k = var(&ks, &[1, kv, l, d]);
    let m = Tensor::from_vec(mask.clone(), (1, 1, t, l), &Device::Cpu).unwrap();
    let y = attention_probs(q.as_tensor(), k.as_tensor(), Some(&m)).unwrap();
    assert_close(
        &flat(&y),
        &attention_host(&qs, &ks, &mask, dims),
        1e-12,
        "probabilities",
    );
    let c = Tensor::from_vec(cs.clone(), (1, h, t, l), &Device::Cpu).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let dq = finite_differences(&qs, &|q| {
        weighted(&attention_host(q, &ks, &mask, dims), &cs)
    });
    let dk = finite_differences(&ks, &|k| {
        weighted(&attention_host(&qs, k, &mask, dims), &cs)
    });
    assert_close(&flat(grads.get(q.as_tensor()).unwrap()), &dq, 1e-7, "∂q");
    assert_close(&flat(grads.get(k.as_tensor()).unwrap()), &dk, 1e-7, "∂k");
    assert!(grads.get(&m).is_none(), "the mask is a constant");
}

/// Host attention output `P·v` for `v` `(1, kv, l, d)`, laid out `(h, t, d)` (the grouped
/// `(1, kv, (h/kv)·t, d)` layout of [`attention`] is the same memory).
fn attention_out_host(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    dims: (usize, usize, usize, usize, usize),
) -> Vec<f64> {
    let (h, kv, t, l, d) = dims;
    let p = attention_host(q, k, mask, dims);
    let mut out = vec![0.0; h * t * d];
    for hi in 0..h {
        let vh = hi / (h / kv);
        for i in 0..t {
            for e in 0..d {
                out[(hi * t + i) * d + e] = (0..l)
                    .map(|j| p[(hi * t + i) * l + j] * v[(vh * l + j) * d + e])
                    .sum();
            }
        }
    }
    out
}

/// The fused attention node (probabilities recomputed in the backward): its output and the
/// gradients of the queries, the shared keys and the shared values against finite
/// differences of the host formula (4 query heads on 2 key/value heads, causal mask).
#[test]
fn fused_attention_backward_is_the_finite_difference_of_the_host_formula() {
    let dims = (4, 2, 3, 3, 5);
    let (h, kv, t, l, d) = dims;
    let inf = f64::NEG_INFINITY;
    let mask: Vec<f64> = (0..t)
        .flat_map(|i| (0..l).map(move |j| if j <= i { 0.0 } else { inf }))
        .collect();
    let (qs, ks, vs, cs) = (
        values(h * t * d, 21),
        values(kv * l * d, 22),
        values(kv * l * d, 23),
        values(h * t * d, 24),
    );
    let q = var(&qs, &[1, h, t, d]);
    let k = var(&ks, &[1, kv, l, d]);
    let v = var(&vs, &[1, kv, l, d]);
    let m = Tensor::from_vec(mask.clone(), (1, 1, t, l), &Device::Cpu).unwrap();
    let y = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), Some(&m)).unwrap();
    assert_eq!(y.dims(), &[1, kv, h / kv * t, d]);
    assert_close(
        &flat(&y),
        &attention_out_host(&qs, &ks, &vs, &mask, dims),
        1e-12,
        "output",
    );
    let c = Tensor::from_vec(cs.clone(), y.dims(), &Device::Cpu).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let out =
        |q: &[f64], k: &[f64], v: &[f64]| weighted(&attention_out_host(q, k, v, &mask, dims), &cs);
    let dq = finite_differences(&qs, &|q| out(q, &ks, &vs));
    let dk = finite_differences(&ks, &|k| out(&qs, k, &vs));
    let dv = finite_differences(&vs, &|v| out(&qs, &ks, v));
    assert_close(&flat(grads.get(q.as_tensor()).unwrap()), &dq, 1e-7, "∂q");
    assert_close(&flat(grads.get(k.as_tensor()).unwrap()), &dk, 1e-7, "∂k");
    assert_close(&flat(grads.get(v.as_tensor()).unwrap()), &dv, 1e-7, "∂v");
    assert!(grads.get(&m).is_none(), "the mask is a constant");
}

/// The fused node against the two-node form it replaces (`attention_probs`, then a matrix
/// product with `v`, candle's backward for the product) in f32 on a larger shape with a
/// causal mask: outputs and gradients within 1e-5 relative (max |a − b| / max |b|).
#[test]
fn fused_attention_matches_probabilities_then_product_in_f32() {
    let (b, h, kv, t, d) = (2, 6, 2, 24, 8);
    let g = h / kv;
    let f32var = |n: usize, seed: usize, shape: &[usize]| {
        let vals: Vec<f32> = values(n, seed).into_iter().map(|x| x as f32).collect();
        Var::from_tensor(&Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()).unwrap()
    };
    let q = f32var(b * h * t * d, 31, &[b, h, t, d]);
    let k = f32var(b * kv * t * d, 32, &[b, kv, t, d]);
    let v = f32var(b * kv * t * d, 33, &[b, kv, t, d]);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let m = Tensor::from_vec(mask, (1, 1, t, t), &Device::Cpu)
        .unwrap()
        .broadcast_as((b, 1, t, t))
        .unwrap()
        .contiguous()
        .unwrap();
    let c = Tensor::from_vec(
        values(b * h * t * d, 34)
            .into_iter()
            .map(|x| x as f32)
            .collect::<Vec<_>>(),
        (b, kv, g * t, d),
        &Device::Cpu,
    )
    .unwrap();
    let (q_, k_, v_) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
    let fused = attention(q_, k_, v_, Some(&m)).unwrap();
    let two = attention_probs(q_, k_, Some(&m))
        .unwrap()
        .reshape((b, kv, g * t, t))
        .unwrap()
        .matmul(v_)
        .unwrap();
    let rel = |a: &Tensor, b: &Tensor| {
        let (a, b) = (flat(a), flat(b));
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        a.iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    };
    assert!(rel(&fused, &two) <= 1e-5, "outputs {}", rel(&fused, &two));
    let gf = (&fused * &c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gt = (&two * &c).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, x) in [("q", q_), ("k", k_), ("v", v_)] {
        let (a, b) = (gf.get(x).unwrap(), gt.get(x).unwrap());
        assert!(rel(a, b) <= 1e-5, "∂{name}: {}", rel(a, b));
    }
}

fn swiglu_host(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

#[test]
fn swiglu_backward_is_the_finite_difference_of_the_host_formula() {
    let n = 3 * 10;
    let gs: Vec<f64> = values(n, 13).iter().map(|v| v * 4.0).collect(); // into silu's curved part
    let (us, cs) = (values(n, 14), values(n, 15));
    let gate = var(&gs, &[3, 10]);
    let up = var(&us, &[3, 10]);
    let y = swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
    assert_close(&flat(&y), &swiglu_host(&gs, &us), 1e-12, "swiglu");
    let c = Tensor::from_vec(cs.clone(), (3, 10), &Device::Cpu).unwrap();
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let dg = finite_differences(&gs, &|g| weighted(&swiglu_host(g, &us), &cs));
    let du = finite_differences(&us, &|u| weighted(&swiglu_host(&gs, u), &cs));
    assert_close(
        &flat(grads.get(gate.as_tensor()).unwrap()),
        &dg,
        1e-7,
        "∂gate",
    );
    assert_close(&flat(grads.get(up.as_tensor()).unwrap()), &du, 1e-7, "∂up");
}

/// A projection's bias (Qwen2's q/k/v): `y + b` over rows, in a (B, T, n) layout; a frozen
/// bias (LoRA) gets no gradient and leaves `y`'s unchanged.
#[test]
fn bias_backward_is_the_finite_difference_of_the_host_formula() {
    let n = 7;
    let (ys, bs, cs) = (values(2 * 3 * n, 18), values(n, 19), values(2 * 3 * n, 20));
    let host = |y: &[f64], b: &[f64]| -> Vec<f64> {
        y.chunks(n)
            .flat_map(|row| row.iter().zip(b).map(|(a, c)| a + c).collect::<Vec<_>>())
            .collect()
    };
    let y = var(&ys, &[2, 3, n]);
    let b = var(&bs, &[n]);
    let out = add_bias(y.as_tensor(), b.as_tensor()).unwrap();
    assert_close(&flat(&out), &host(&ys, &bs), 1e-15, "y + b");
    let c = Tensor::from_vec(cs.clone(), (2, 3, n), &Device::Cpu).unwrap();
    let grads = (out * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let dy = finite_differences(&ys, &|y| weighted(&host(y, &bs), &cs));
    let db = finite_differences(&bs, &|b| weighted(&host(&ys, b), &cs));
    assert_close(&flat(grads.get(y.as_tensor()).unwrap()), &dy, 1e-7, "∂y");
    assert_close(&flat(grads.get(b.as_tensor()).unwrap()), &db, 1e-7, "∂b");
    let frozen = Tensor::from_vec(bs.clone(), n, &Device::Cpu).unwrap();
    let grads = (add_bias(y.as_tensor(), &frozen).unwrap() * &c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&frozen).is_none());
    assert_close(
        &flat(grads.get(y.as_tensor()).unwrap()),
        &dy,
        1e-7,
        "∂y, frozen b",
    );
}

/// Without a tracked input the ops return their values and add no graph node.
#[test]
fn untracked_inputs_give_plain_values() {
    let xs = values(12, 16);
    let x = Tensor::from_vec(xs.clone(), (3, 4), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(values(4, 17), 4, &Device::Cpu).unwrap();
    for y in [
        rms_norm(&x, &w, 1e-5).unwrap(),
        add_bias(&x, &w).unwrap(),
        softmax_masked(&x, None).unwrap(),
        swiglu(&x, &x).unwrap(),
    ] {
        assert!(!y.track_op());
    }
}
