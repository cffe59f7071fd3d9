//! AdamW on device tensors, in place: three passes over each tensor (first moment, second
//! moment, parameter), with candle's in-place custom ops. On CUDA each pass is one kernel of
//! `adamw.cu`; composed from candle's tensor ops the same update took about fifteen passes,
//! each allocating a new tensor (0.11 s of a 1B step on an H200). The CPU implementations are
//! the same arithmetic in the same order as the kernels, and are checked against
//! [`adamw_update`](super::shared::adamw_update) (the CPU engine's single pass, itself checked against PyTorch).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

use super::shared::Float;
use crate::train::optim::AdamW;

/// One step's constants, computed in f64 and rounded to the element type once (as
/// [`adamw_update`](super::shared::adamw_update) does).
#[derive(Debug, Clone, Copy)]
struct Constants {
    scale: f64,
    beta1: f64,
    gain1: f64,
    beta2: f64,
    gain2: f64,
    decay: f64,
    step: f64,
    bc2_sqrt: f64,
    eps: f64,
}

impl Constants {
    fn new(opt: &AdamW, t: u64, lr: f64, grad_scale: f64) -> Self {
        let bc1 = 1.0 - opt.beta1.powi(t as i32);
        let bc2 = 1.0 - opt.beta2.powi(t as i32);
        Self {
            scale: grad_scale,
            beta1: opt.beta1,
            gain1: 1.0 - opt.beta1,
            beta2: opt.beta2,
            gain2: 1.0 - opt.beta2,
            decay: 1.0 - lr * opt.weight_decay,
            step: lr / bc1,
            bc2_sqrt: bc2.sqrt(),
            eps: opt.eps,
        }
    }
}

/// One AdamW step (step number `t`, from 1) on parameter `p` with gradient `g` (times
/// `grad_scale`) and moments `(m, v)`, all of one shape and float dtype (f32/f64), on one
/// device; `p`, `m` and `v` contiguous tensors of their own. They are updated in place.
pub fn step(
    opt: &AdamW,
    t: u64,
    lr: f64,
    grad_scale: f64,
    p: &Tensor,
    g: &Tensor,
    (m, v): (&Tensor, &Tensor),
) -> Result<()> {
    for (name, x) in [("gradient", g), ("first moment", m), ("second moment", v)] {
        if x.dims() != p.dims() || x.dtype() != p.dtype() {
            candle_core::bail!(
                "AdamW: {name} {:?} {:?} does not match the parameter {:?} {:?}",
                x.dims(),
                x.dtype(),
                p.dims(),
                p.dtype()
            )
        }
    }
    let c = Constants::new(opt, t, lr, grad_scale);
    let g = g.contiguous()?;
    m.inplace_op2(&g, &Moment { c, second: false })?;
    v.inplace_op2(&g, &Moment { c, second: true })?;
    p.inplace_op3(m, v, &Update { c })
}

/// `m ← β1·m + (1−β1)·(s·g)` or, `second`, `v ← β2·v + (1−β2)·(s·g)²`.
struct Moment {
    c: Constants,
    second: bool,
}

/// `p ← p·decay − step·m / (√v / bc2_sqrt + eps)`.
struct Update {
    c: Constants,
}

/// The elements of a contiguous layout.
fn elems<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("AdamW: tensors must be contiguous"),
    }
}

fn elems_mut<'a, T>(s: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut s[a..b]),
        None => candle_core::bail!("AdamW: tensors must be contiguous"),
    }
}

fn moment_cpu<T: Float>(x: &mut [T], g: &[T], c: &Constants, second: bool) {
    use rayon::prelude::*;
    let (beta, gain) = if second {
        (c.beta2, c.gain2)
    } else {
        (c.beta1, c.gain1)
    };
    let (beta, gain, scale) = (
        T::from_f64c(beta),
        T::from_f64c(gain),
        T::from_f64c(c.scale),
    );
    x.par_chunks_mut(1 << 14)
        .zip(g.par_chunks(1 << 14))
        .for_each(|(xc, gc)| {
            for (xi, &gi) in xc.iter_mut().zip(gc) {
                let gi = gi * scale;
                *xi = if second {
                    beta * *xi + gain * gi * gi
                } else {
                    beta * *xi + gain * gi
                };
            }
        });
}

fn update_cpu<T: Float>(p: &mut [T], m: &[T], v: &[T], c: &Constants) {
    use rayon::prelude::*;
    let (decay, step, bc2_sqrt, eps) = (
        T::from_f64c(c.decay),
        T::from_f64c(c.step),
        T::from_f64c(c.bc2_sqrt),
        T::from_f64c(c.eps),
    );
    p.par_chunks_mut(1 << 14)
        .zip(m.par_chunks(1 << 14).zip(v.par_chunks(1 << 14)))
        .for_each(|(pc, (mc, vc))| {
            for ((pi, &mi), &vi) in pc.iter_mut().zip(mc).zip(vc) {
                let denom = vi.sqrt() / bc2_sqrt + eps;
                *pi = *pi * decay - step * mi / denom;
            }
        });
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "east-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                moment_cpu(elems_mut(x, l1)?, elems(g, l2)?, &self.c, self.second)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                moment_cpu(elems_mut(x, l1)?, elems(g, l2)?, &self.c, self.second)
            }
            (x, _) => candle_core::bail!("AdamW: f32 or f64 state, not {:?}", x.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        let kernel = if self.second {
            "east_adamw_second_moment"
        } else {
            "east_adamw_first_moment"
        };
        let (beta, gain) = if self.second {
            (self.c.beta2, self.c.gain2)
        } else {
            (self.c.beta1, self.c.gain1)
        };
        cuda::moment(kernel, s1, l1, s2, l2, [beta, gain, self.c.scale])
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "east-adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        match (s1, s2, s3) {
            (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                update_cpu(elems_mut(p, l1)?, elems(m, l2)?, elems(v, l3)?, &self.c)
            }
            (CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                update_cpu(elems_mut(p, l1)?, elems(m, l2)?, elems(v, l3)?, &self.c)
            }
            (p, _, _) => candle_core::bail!("AdamW: f32 or f64 state, not {:?}", p.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        let c = &self.c;
        cuda::update(s1, l1, s2, l2, s3, l3, [c.decay, c.step, c.bc2_sqrt, c.eps])
    }
}

/// Launching `adamw.cu`'s kernels.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
    const MODULE: &str = "east_adamw";

    fn range(l: &Layout) -> Result<std::ops::Range<usize>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(a..b),
            None => candle_core::bail!("AdamW: tensors must be contiguous"),
        }
    }

    /// Grid-stride loops: 256 threads a block, enough blocks to cover `n` (capped; the loop
    /// takes the rest).
    fn config(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `x ← consts[0]·x + consts[1]·f(consts[2]·g)` (the moment kernels).
    pub fn moment(
        kernel: &str,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        consts: [f64; 3],
    ) -> Result<()> {
        let dev = s1.device.clone();
        let (r1, r2) = (range(l1)?, range(l2)?);
        let n = r1.len();
        fn launch<T: DeviceRepr + Copy>(
            dev: &candle_core::CudaDevice,
            name: &str,
            x: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            g: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            (r1, r2): (std::ops::Range<usize>, std::ops::Range<usize>),
            consts: [T; 3],
        ) -> Result<()> {
            let n = r1.len();
            let func = dev.get_or_load_custom_func(name, super::cuda::MODULE, super::cuda::PTX)?;
            let mut x = x.slice_mut(r1);
            let g = g.slice(r2);
            let mut b = func.builder();
            b.arg(&mut x);
            b.arg(&g);
            b.arg(&n);
            for c in &consts {
                b.arg(c);
            }
            // SAFETY: the kernel reads and writes n elements of views of that length.
            unsafe { b.launch(config(n)) }.w()?;
            Ok(())
        }
        match (&mut s1.slice, &s2.slice) {
            (CudaStorageSlice::F32(x), CudaStorageSlice::F32(g)) => launch(
                &dev,
                &format!("{kernel}_f32"),
                x,
                g,
                (r1, r2),
                consts.map(|c| c as f32),
            ),
            (CudaStorageSlice::F64(x), CudaStorageSlice::F64(g)) => {
                launch(&dev, &format!("{kernel}_f64"), x, g, (r1, r2), consts)
            }
            _ => candle_core::bail!(
                "AdamW: f32 or f64 state and gradient of one dtype ({n} elements)"
            ),
        }
    }

    /// `p ← p·decay − step·m / (√v / bc2_sqrt + eps)`, `consts` = [decay, step, bc2_sqrt, eps].
    pub fn update(
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
        consts: [f64; 4],
    ) -> Result<()> {
        let dev = s1.device.clone();
        let (r1, r2, r3) = (range(l1)?, range(l2)?, range(l3)?);
        fn launch<T: DeviceRepr + Copy>(
            dev: &candle_core::CudaDevice,
            name: &str,
            p: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            m: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            v: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            (r1, r2, r3): (
                std::ops::Range<usize>,
                std::ops::Range<usize>,
                std::ops::Range<usize>,
            ),
            consts: [T; 4],
        ) -> Result<()> {
            let n = r1.len();
            let func = dev.get_or_load_custom_func(name, super::cuda::MODULE, super::cuda::PTX)?;
            let mut p = p.slice_mut(r1);
            let (m, v) = (m.slice(r2), v.slice(r3));
            let mut b = func.builder();
            b.arg(&mut p);
            b.arg(&m);
            b.arg(&v);
            b.arg(&n);
            for c in &consts {
                b.arg(c);
            }
            // SAFETY: the kernel reads and writes n elements of views of that length.
            unsafe { b.launch(config(n)) }.w()?;
            Ok(())
        }
        match (&mut s1.slice, &s2.slice, &s3.slice) {
            (CudaStorageSlice::F32(p), CudaStorageSlice::F32(m), CudaStorageSlice::F32(v)) => {
                launch(
                    &dev,
                    "east_adamw_update_f32",
                    p,
                    m,
                    v,
                    (r1, r2, r3),
                    consts.map(|c| c as f32),
                )
            }
            (CudaStorageSlice::F64(p), CudaStorageSlice::F64(m), CudaStorageSlice::F64(v)) => {
                launch(&dev, "east_adamw_update_f64", p, m, v, (r1, r2, r3), consts)
            }
            _ => candle_core::bail!("AdamW: f32 or f64 parameters and moments of one dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Three steps with clipping scales and weight decay: the in-place passes give exactly the
    /// numbers of the CPU engine's single pass (same arithmetic, same order), f32 and f64.
    #[test]
    fn inplace_passes_equal_the_single_pass_update() {
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let n = 40_000; // more than one rayon chunk
        let p0: Vec<f64> = (0..n)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) * 0.013)
            .collect();
        let grads: Vec<Vec<f64>> = (0..3)
            .map(|s| {
                (0..n)
                    .map(|i| ((i * 53 + s * 7) % 89) as f64 * 0.01 - 0.4)
                    .collect()
            })
            .collect();
        let scales = [1.0, 0.37, 0.81];
        fn run<T: Float>(
            opt: &AdamW,
            p0: &[f64],
            grads: &[Vec<f64>],
            scales: &[f64],
        ) -> (Vec<T>, Vec<T>) {
            let cast = |v: &[f64]| v.iter().map(|&x| T::from_f64c(x)).collect::<Vec<T>>();
            let n = p0.len();
            let (mut p, mut m, mut v) = (cast(p0), vec![T::zero(); n], vec![T::zero(); n]);
            let tp = Var::from_vec(cast(p0), n, &Device::Cpu).unwrap();
            let tm = Var::from_vec(vec![T::zero(); n], n, &Device::Cpu).unwrap();
            let tv = Var::from_vec(vec![T::zero(); n], n, &Device::Cpu).unwrap();
            for (t, (g, &s)) in grads.iter().zip(scales).enumerate() {
                let lr = 1e-3 * (t + 1) as f64;
                super::super::shared::adamw_update(
                    opt,
                    t as u64 + 1,
                    lr,
                    s,
                    &mut p,
                    &cast(g),
                    &mut m,
                    &mut v,
                );
                let tg = Tensor::from_vec(cast(g), n, &Device::Cpu).unwrap();
                step(opt, t as u64 + 1, lr, s, &tp, &tg, (&tm, &tv)).unwrap();
            }
            (p, tp.to_vec1().unwrap())
        }
        let (want, got) = run::<f32>(&opt, &p0, &grads, &scales);
        assert_eq!(want, got, "f32");
        let (want, got) = run::<f64>(&opt, &p0, &grads, &scales);
        assert_eq!(want, got, "f64");
        assert_ne!(
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            p0.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let p = Var::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = step(
            &AdamW::default(),
            1,
            1e-3,
            1.0,
            &p,
            &g,
            (&p.zeros_like().unwrap(), &p.zeros_like().unwrap()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gradient"), "{err}");
    }
}
