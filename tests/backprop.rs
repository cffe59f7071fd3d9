//! The vendored candle-core's backpropagation (`vendor/candle-core/PATCHES.md`): a tensor's first
//! gradient contribution is stored as it is instead of being added to zeros. These check the
//! cases that change could get wrong, against gradients worked out by hand.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// y = Σ (x·x + x - 3x): x reaches the sum along three paths (two of them through one mul) and
/// one of them is subtracted, so dy/dx = 2x + 1 - 3 = 2x - 2.
#[test]
fn contributions_from_several_consumers_add_up() {
    let x = Var::new(&[[1.5f32, -2.0], [0.25, 4.0]], &Device::Cpu).unwrap();
    let t = x.as_tensor();
    let y = ((t * t).unwrap() + t)
        .unwrap()
        .sub(&(t * 3.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    let want = [1.0f32, -6.0, -1.5, 6.0];
    assert_eq!(values(g.get(t).unwrap()), want);
}

/// y = Σ w ⊙ xᵀ with x 2×3: the gradient arrives transposed (a strided view) and, through
/// `sum_all`, as a broadcast scalar; what is stored for x must be w transposed, contiguous.
#[test]
fn a_strided_first_contribution_is_stored_contiguous() {
    let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[[10f32, 20.], [30., 40.], [50., 60.]], &Device::Cpu).unwrap();
    let y = (x.as_tensor().t().unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap();
    assert!(gx.is_contiguous());
    assert_eq!(gx.dims(), &[2, 3]);
    assert_eq!(values(gx), [10., 30., 50., 20., 40., 60.]);
    // The first contribution to the sum itself was a stride-0 broadcast of the seed 1.
    let gs = (x.as_tensor().sum_all().unwrap() * 2.0)
        .unwrap()
        .backward()
        .unwrap();
    let gs = gs.get(x.as_tensor()).unwrap();
    assert!(gs.is_contiguous());
    assert_eq!(values(gs), [2.0; 6]);
}

/// An op whose backward returns a gradient of the wrong shape.
struct WrongShapeBackward;

impl CustomOp1 for WrongShapeBackward {
    fn name(&self) -> &'static str {
        "wrong-shape-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("f32 only")
        };
        let start = layout.start_offset();
        Ok((
            CpuStorage::F32(data[start..start + layout.shape().elem_count()].to_vec()),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, _grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(Tensor::ones(
            arg.elem_count() + 1,
            arg.dtype(),
            arg.device(),
        )?))
    }
}

/// Adding to zeros used to reject such a gradient; storing it directly must still reject it.
#[test]
fn a_first_contribution_of_the_wrong_shape_is_an_error() {
    let x = Var::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
    let y = x
        .as_tensor()
        .apply_op1(WrongShapeBackward)
        .unwrap()
        .sum_all()
        .unwrap();
    let err = y.backward().expect_err("a gradient of the wrong shape");
    let message = err.to_string();
    assert!(message.contains("shape mismatch"), "{message}");
}
