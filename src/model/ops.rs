//! Building blocks shared by the backbones. Each uses candle's fused kernel when no
//! gradient is being tracked and a composite of differentiable ops otherwise, so the same
//! model code serves fast inference and gradient-based explanations or soft-prompt training.

use candle_core::{D, DType, Result, Tensor};

fn tracked(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op())
}

/// Softmax over the last axis.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if tracked(&[x]) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// RMS normalisation over the last axis, computed in f32 and returned in `x`'s dtype,
/// then scaled by `weight` (as transformers' Qwen RMSNorm does).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
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
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// Exact GELU with the error function (`nn.GELU()`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// SiLU.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
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
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn fused_and_differentiable_paths_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 5, 16), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
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
