//! Building blocks shared by the backbones. Each uses candle's fused kernel when no
//! gradient is being tracked and a composite of differentiable ops otherwise, so the same
//! model code serves fast inference and gradient-based explanations or soft-prompt training.

use candle_core::{D, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::cpu::{CHUNK, gelu_tanh_inplace, gelu_tanh_scalar, silu_scalar, softmax_rows};
use super::fused;

fn tracked(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op())
}

/// Whether the fused CPU kernels of [`super::fused`] take these tensors (CPU, f32).
fn fusable(xs: &[&Tensor]) -> bool {
    xs.iter()
        .all(|x| x.dtype() == DType::F32 && x.device().is_cpu())
}

/// The contiguous f32 data of a CPU tensor that no gradient flows through, if it is one.
fn cpu_f32(x: &Tensor) -> Option<Vec<f32>> {
    if x.track_op() || x.dtype() != DType::F32 || !x.device().is_cpu() || !x.is_contiguous() {
        return None;
    }
    x.flatten_all().ok()?.to_vec1::<f32>().ok()
}

/// Applies `f` to every element in parallel (CPU, f32, no gradient), else `fallback`.
fn map_f32(
    x: &Tensor,
    f: impl Fn(f32) -> f32 + Sync,
    fallback: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    match cpu_f32(x) {
        Some(mut data) => {
            data.par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
            Tensor::from_vec(data, x.shape(), &Device::Cpu)
        }
        None => fallback(),
    }
}

/// Softmax over the last axis.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if let Some(mut data) = cpu_f32(x) {
        softmax_rows(&mut data, x.dim(D::Minus1)?);
        return Tensor::from_vec(data, x.shape(), &Device::Cpu);
    }
    if tracked(&[x]) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// Attention probabilities: softmax over the last axis of `scale·scores + mask`, for
/// scores `[B, H, T, S]` and an additive mask `[B or 1, 1, T, S]` (no gradient reaches
/// the mask).
///
/// On CPU f32 it is one fused kernel, differentiable with a one-pass backward
/// (the private `model::fused` module); elsewhere the composite of candle ops.
pub fn attention_softmax(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let mask_fits = mask.is_none_or(|m| fusable(&[m]) && fused::mask_fits(scores.dims(), m.dims()));
    if fusable(&[scores]) && mask_fits {
        return fused::softmax_scaled(scores, scale, mask);
    }
    let mut scores = (scores * scale)?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    softmax_last(&scores)
}

/// In-place kernels on CPU f32 storage.
enum Inplace {
    SoftmaxLast,
    GeluTanh,
}

impl candle_core::InplaceOp1 for Inplace {
    fn name(&self) -> &'static str {
        "agff-inplace"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("in-place kernels take f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("in-place kernels take contiguous tensors")
        };
        let data = &mut data[start..end];
        match self {
            Inplace::SoftmaxLast => softmax_rows(data, layout.dims().last().copied().unwrap_or(0)),
            Inplace::GeluTanh => gelu_tanh_inplace(data),
        }
        Ok(())
    }
}

/// Whether `x` can be overwritten in place by the CPU kernels.
fn inplace_ok(x: &Tensor) -> bool {
    !x.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() && x.is_contiguous()
}

/// Softmax over the last axis, overwriting `x` when it can. `x` must be a fresh result
/// (e.g. the attention scores just computed) that no other tensor shares.
pub fn softmax_last_owned(x: Tensor) -> Result<Tensor> {
    if inplace_ok(&x) {
        x.inplace_op1(&Inplace::SoftmaxLast)?;
        Ok(x)
    } else {
        softmax_last(&x)
    }
}

/// `silu(a)·b` where `x = [a | b]` along the last axis (the stacked gate and up
/// projections of a SwiGLU MLP). Differentiable; on CPU f32 one fused kernel each way
/// (the private `model::fused` module), which also serves inference (no graph is recorded
/// without a gradient).
pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    let half = width / 2;
    if fusable(&[x]) && width.is_multiple_of(2) && width > 0 {
        return fused::swiglu(x);
    }
    let gate = x.narrow(D::Minus1, 0, half)?;
    let up = x.narrow(D::Minus1, half, half)?;
    gate.silu()? * up
}

/// [`gelu_tanh`] overwriting `x` when it can (`x` fresh, as for [`softmax_last_owned`]).
pub fn gelu_tanh_owned(x: Tensor) -> Result<Tensor> {
    if inplace_ok(&x) {
        x.inplace_op1(&Inplace::GeluTanh)?;
        Ok(x)
    } else {
        gelu_tanh(&x)
    }
}

/// RMS normalisation over the last axis, computed in f32 and returned in `x`'s dtype,
/// then scaled by `weight` (as transformers' Qwen RMSNorm does). With a gradient tracked
/// (on `x` or `weight`) on CPU f32 it is one fused kernel each way (the private
/// `model::fused` module).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if tracked(&[x, weight])
        && fusable(&[x, weight])
        && weight.rank() == 1
        && x.dim(D::Minus1)? == weight.dim(0)?
    {
        return fused::rms_norm(x, weight, eps);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let normed = if tracked(&[x]) {
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        xf.broadcast_div(&(var + eps)?.sqrt()?)?
    } else {
        let ones = Tensor::ones(xf.dim(D::Minus1)?, DType::F32, xf.device())?;
        candle_nn::ops::rms_norm(&xf.contiguous()?, &ones, eps as f32)?
    };
    normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)
}

/// Layer normalisation over the last axis with weight and bias (computed in f32).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let (w, b) = (weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?);
    let out = if tracked(&[x, weight, bias]) {
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(&w)?
            .broadcast_add(&b)?
    } else {
        candle_nn::ops::layer_norm(&xf.contiguous()?, &w, &b, eps as f32)?
    };
    out.to_dtype(dtype)
}

/// `x·Wᵀ (+ b)` for `x` of any rank.
///
/// Rows of a rank > 2 input go through one 2-D product: a broadcast product would
/// broadcast `W` over the leading axes, and its backward pass then builds one weight
/// gradient per leading index and sums them (a quarter of the demo tower's training step).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let y = match dims {
        [lead @ .., inp] if !lead.is_empty() && *inp > 0 => {
            let rows = lead.iter().product::<usize>();
            let mut out = dims.to_vec();
            if let Some(last) = out.last_mut() {
                *last = weight.dim(0)?;
            }
            x.reshape((rows, *inp))?
                .matmul(&weight.t()?)?
                .reshape(out)?
        }
        _ => x.broadcast_matmul(&weight.t()?)?,
    };
    // A trained bias is added as the product of a column of ones and the bias row, so
    // that its gradient is one matrix product over the rows (candle reduces a broadcast
    // add's gradient with a strided single-threaded sum, ~15% of a tower training step).
    if let Some(b) = bias
        && b.track_op()
        && b.rank() == 1
        && y.rank() >= 2
    {
        let out = y.dim(D::Minus1)?;
        let rows = y.elem_count() / out.max(1);
        let ones = Tensor::ones((rows, 1), y.dtype(), y.device())?;
        let add = ones.matmul(&b.reshape((1, out))?)?.reshape(y.shape())?;
        return y + add;
    }
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`):
/// `0.5·x·(1 + tanh(z)) = x·σ(2z)`, `z = √(2/π)·(x + 0.044715·x³)`.
///
/// With a gradient tracked on a CPU f32 tensor it is one fused kernel whose backward is
/// one kernel too (the private `model::fused` module).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fusable(&[x]) && tracked(&[x]) {
        return fused::gelu_tanh(x);
    }
    map_f32(x, gelu_tanh_scalar, || x.gelu())
}

/// Exact GELU with the error function (`nn.GELU()`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// SiLU, `x·σ(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    map_f32(x, silu_scalar, || x.silu())
}

/// Applies rotary embeddings with the "rotate half" convention:
/// `x·cos + rotate_half(x)·sin`, where `cos`/`sin` broadcast against `x`.
pub fn rotate_half_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{largest, max_abs_diff as max_diff};
    use candle_core::{Device, Var};

    /// A fixed pseudo-normal tensor, so a failing run can be reproduced:
    /// `Tensor::randn` on the CPU is not seedable.
    fn normal(mean: f32, std: f32, shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut rng = crate::util::rng::SplitMix64::new(seed);
        let values: Vec<f32> = (0..n).map(|_| mean + std * rng.normal() as f32).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// The largest difference relative to the reference, `|a−b| / max(1, |b|)`: f32
    /// rounding grows with the magnitude, so an absolute bound fails on large values.
    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let den = b.abs().unwrap().maximum(1f32).unwrap();
        largest(&((a - b).unwrap().abs().unwrap() / den).unwrap())
    }

    #[test]
    fn linear_trains_like_a_broadcast_product() {
        let x = Var::from_tensor(&normal(0.0, 1.0, &[3, 7, 5], 1)).unwrap();
        let w = Var::from_tensor(&normal(0.0, 1.0, &[4, 5], 2)).unwrap();
        let b = Var::from_tensor(&normal(0.0, 1.0, &[4], 3)).unwrap();
        let up = normal(0.0, 1.0, &[3, 7, 4], 4);
        let ours = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        let theirs = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let grads = |y: &Tensor| (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (grads(&ours), grads(&theirs));
        for v in [&x, &w, &b] {
            let d = max_diff(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "gradient off by {d}");
        }
    }

    #[test]
    fn fused_gelu_trains_like_candles() {
        for seed in 0..4 {
            let x = Var::from_tensor(&normal(0.0, 3.0, &[5, 257], seed)).unwrap();
            let w = normal(0.0, 1.0, &[5, 257], seed + 100);
            let ours = gelu_tanh(x.as_tensor()).unwrap();
            let theirs = x.as_tensor().gelu().unwrap();
            assert!(max_rel_diff(&ours, &theirs) < 2e-6, "seed {seed}: forward");
            let grad = |y: &Tensor| {
                (y * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
                    .get(x.as_tensor())
                    .unwrap()
                    .clone()
            };
            let got = max_rel_diff(&grad(&ours), &grad(&theirs));
            assert!(got < 1e-5, "seed {seed}: gradient off by {got}");
        }
    }

    /// The gradients of `Σ y·up` with respect to each of `vars`.
    fn grads_of(y: &Tensor, up: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
        let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).expect("a gradient").clone())
            .collect()
    }

    #[test]
    fn fused_attention_softmax_trains_like_the_composite() {
        let (b, h, t, s) = (2, 3, 5, 37);
        // Mask the later keys of each row, as the demo's block mask does (−1e9).
        let causal: Vec<f32> = (0..b * t * s)
            .map(|i| {
                if (i % s) > (i / s) % t + 20 {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        let per_batch = Tensor::from_vec(causal, (b, 1, t, s), &Device::Cpu).unwrap();
        let shared = per_batch.narrow(0, 1, 1).unwrap().contiguous().unwrap();
        for (seed, mask) in [(0, None), (1, Some(&per_batch)), (2, Some(&shared))] {
            let x = Var::from_tensor(&normal(0.0, 4.0, &[b, h, t, s], seed)).unwrap();
            let up = normal(0.0, 1.0, &[b, h, t, s], seed + 50);
            let scale = 0.3;
            let ours = attention_softmax(x.as_tensor(), scale, mask).unwrap();
            let mut z = (x.as_tensor() * scale).unwrap();
            if let Some(m) = mask {
                z = z.broadcast_add(m).unwrap();
            }
            let theirs = candle_nn::ops::softmax(&z, D::Minus1).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-6, "seed {seed}: forward");
            let (g1, g2) = (grads_of(&ours, &up, &[&x]), grads_of(&theirs, &up, &[&x]));
            let d = max_diff(&g1[0], &g2[0]);
            assert!(d < 1e-5, "seed {seed}: gradient off by {d}");
            // Without a gradient the same kernel serves inference.
            let plain = attention_softmax(&x.as_tensor().detach(), scale, mask).unwrap();
            assert!(!plain.track_op() && max_diff(&plain, &theirs) < 1e-6);
        }
        // A mask that fits no scores is refused, not read out of bounds.
        let x = normal(0.0, 1.0, &[b, h, t, s], 9);
        let wrong = Tensor::zeros((3, 1, t, s), DType::F32, &Device::Cpu).unwrap();
        assert!(fused::softmax_scaled(&x, 1.0, Some(&wrong)).is_err());
    }

    #[test]
    fn fused_rms_norm_trains_like_the_composite() {
        for seed in 0..3 {
            let x = Var::from_tensor(&normal(0.5, 2.0, &[3, 7, 40], seed)).unwrap();
            let w = Var::from_tensor(&normal(1.0, 0.3, &[40], seed + 10)).unwrap();
            let up = normal(0.0, 1.0, &[3, 7, 40], seed + 20);
            let ours = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
            let xt = x.as_tensor();
            let theirs = xt
                .broadcast_div(
                    &(xt.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6)
                        .unwrap()
                        .sqrt()
                        .unwrap(),
                )
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap();
            assert!(max_rel_diff(&ours, &theirs) < 2e-6, "seed {seed}: forward");
            let g1 = grads_of(&ours, &up, &[&x, &w]);
            let g2 = grads_of(&theirs, &up, &[&x, &w]);
            for (name, a, b) in [("x", &g1[0], &g2[0]), ("weight", &g1[1], &g2[1])] {
                let d = max_rel_diff(a, b);
                assert!(d < 1e-5, "seed {seed}: gradient of {name} off by {d}");
            }
        }
    }

    #[test]
    fn fused_swiglu_trains_like_the_composite() {
        for seed in 0..3 {
            let x = Var::from_tensor(&normal(0.0, 3.0, &[4, 9, 2 * 33], seed)).unwrap();
            let up = normal(0.0, 1.0, &[4, 9, 33], seed + 30);
            let ours = swiglu(x.as_tensor()).unwrap();
            let a = x.as_tensor().narrow(D::Minus1, 0, 33).unwrap();
            let b = x.as_tensor().narrow(D::Minus1, 33, 33).unwrap();
            let theirs = (a.silu().unwrap() * b).unwrap();
            assert!(max_rel_diff(&ours, &theirs) < 2e-6, "seed {seed}: forward");
            let d = max_rel_diff(
                &grads_of(&ours, &up, &[&x])[0],
                &grads_of(&theirs, &up, &[&x])[0],
            );
            assert!(d < 1e-5, "seed {seed}: gradient off by {d}");
        }
    }

    #[test]
    fn fast_elementwise_kernels_match_candle() {
        for seed in 0..8 {
            let x = normal(0.0, 3.0, &[7, 333], seed);
            let gelu = x.gelu().unwrap();
            assert!(
                max_rel_diff(&gelu_tanh(&x).unwrap(), &gelu) < 2e-6,
                "seed {seed}"
            );
            assert!(max_rel_diff(&silu(&x).unwrap(), &x.silu().unwrap()) < 2e-6);
            let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
            assert!(max_diff(&softmax_last(&x).unwrap(), &want) < 1e-6);
            assert!(max_diff(&softmax_last_owned(x.copy().unwrap()).unwrap(), &want) < 1e-6);
            let owned = gelu_tanh_owned(x.copy().unwrap()).unwrap();
            assert!(max_rel_diff(&owned, &gelu) < 2e-6, "seed {seed}");
            let (a, b) = (x.narrow(1, 0, 160).unwrap(), x.narrow(1, 160, 160).unwrap());
            let want = (a.silu().unwrap() * b).unwrap();
            let stacked = x.narrow(1, 0, 320).unwrap().contiguous().unwrap();
            let got = max_rel_diff(&swiglu(&stacked).unwrap(), &want);
            assert!(got < 2e-6, "seed {seed}: swiglu off by {got}");
        }
        // A masked row: −∞ entries get (almost exactly) no weight.
        let masked = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, 1.5]], &Device::Cpu).unwrap();
        let p: Vec<f32> = softmax_last(&masked)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(p[1] < 1e-30 && (p[0] + p[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fused_and_differentiable_paths_agree() {
        let x = normal(0.0, 2.0, &[3, 5, 16], 4);
        let w = normal(1.0, 0.1, &[16], 5);
        let b = normal(0.0, 0.1, &[16], 6);
        let xv = Var::from_tensor(&x).unwrap();
        let xt = xv.as_tensor();
        assert!(xt.track_op() && !x.track_op());
        assert!(max_diff(&softmax_last(&x).unwrap(), &softmax_last(xt).unwrap()) < 1e-6);
        assert!(
            max_diff(
                &rms_norm(&x, &w, 1e-6).unwrap(),
                &rms_norm(xt, &w, 1e-6).unwrap()
            ) < 1e-5
        );
        assert!(
            max_diff(
                &layer_norm(&x, &w, &b, 1e-6).unwrap(),
                &layer_norm(xt, &w, &b, 1e-6).unwrap()
            ) < 1e-5
        );
        // The tracked path really carries a gradient.
        let loss = rms_norm(xt, &w, 1e-6)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(loss.backward().unwrap().get(xt).is_some());
    }
}
