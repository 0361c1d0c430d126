//! Differentiable fused CPU kernels for training: each is one candle custom op whose
//! forward and backward passes are one pass over the data each.
//!
//! candle records a composite such as a softmax (max, subtract, exp, sum, divide) as one
//! graph node per step, and its backward pass then allocates a zeroed gradient for every
//! node, adds into it, and for a division computes `grad·lhs/rhs²` with three more
//! tensors. For the demo model's language model these element-wise steps, not the matrix
//! products, were most of a contrastive training step. The composites in
//! [`crate::model::ops`] stay the reference (other devices and dtypes use them), and the
//! tests compare the two, forward and gradient.
//!
//! Every op here takes contiguous CPU f32 tensors; the callers in `ops` check that.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{
    self, CHUNK, gelu_tanh_inplace, row_chunk, softmax_grad_row, softmax_scaled_row, swiglu_rows,
};

/// The contiguous f32 slice of a CPU storage.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the fused kernel needs a contiguous input"),
    }
}

/// The contiguous f32 slices of an input and of a gradient of the same length: what
/// every backward kernel here but SwiGLU's reads.
fn input_and_grad<'a>(
    op: &str,
    (x, x_layout): (&'a CpuStorage, &Layout),
    (g, g_layout): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    let (x, g) = (f32_slice(x, x_layout, op)?, f32_slice(g, g_layout, op)?);
    if x.len() != g.len() {
        candle_core::bail!("{op}: {} values against {} gradients", x.len(), g.len());
    }
    Ok((x, g))
}

/// `f(out, a, b)` on matching `chunk`-long pieces of the three slices, in parallel.
fn zip_chunks(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    chunk: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync + Send,
) {
    out.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk).zip(b.par_chunks(chunk)))
        .for_each(|(o, (a, b))| f(o, a, b));
}

/// Whether an additive attention mask of shape `mask` fits scores of shape `scores`:
/// `[B or 1, 1, T, S]` against `[B, H, T, S]`. [`softmax_scaled`] refuses any other, and
/// [`crate::model::ops::attention_softmax`] then takes the composite path.
pub(crate) fn mask_fits(scores: &[usize], mask: &[usize]) -> bool {
    matches!((scores, mask), (&[b, _, t, s], &[mb, 1, mt, ms])
        if mt == t && ms == s && (mb == 1 || mb == b))
}

// ---------------------------------------------------------------------------------------
// Softmax of scaled, masked attention scores.

/// `softmax(scale·x + mask)` over the last axis of `x` `[B, H, T, S]` (any rank ≥ 1 without
/// a mask); `mask` `[B or 1, 1, T, S]` is additive and gets no gradient.
pub(crate) fn softmax_scaled(x: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let op = SoftmaxScaled {
        scale: scale as f32,
    };
    let x = x.contiguous()?;
    match mask {
        Some(m) => x.apply_op2(&m.contiguous()?, op),
        None => x.apply_op1(op),
    }
}

struct SoftmaxScaled {
    scale: f32,
}

impl SoftmaxScaled {
    const NAME: &str = "softmax-scaled-fused";

    /// The kernel; `mask` with its rows' mapping from the rows of `x`.
    fn run(&self, x: &[f32], shape: &Shape, mask: Option<(&[f32], &Shape)>) -> Result<Vec<f32>> {
        let dims = shape.dims();
        let n = dims.last().copied().unwrap_or(1).max(1);
        // Row r of x is (outer, t) with t = r % T; its mask row is (batch, t) where
        // batch = r / (H·T) if the mask has one batch entry per row of x's first axis.
        let mask_row = match mask {
            None => None,
            Some((m, mshape)) => {
                let (&[_, h, t, _], &[mb, ..]) = (dims, mshape.dims()) else {
                    candle_core::bail!("{}: scores {shape:?} are not [B, H, T, S]", Self::NAME)
                };
                if !mask_fits(dims, mshape.dims()) {
                    candle_core::bail!(
                        "{}: a mask {mshape:?} does not fit scores {shape:?} (expected [B or 1, 1, T, S])",
                        Self::NAME
                    );
                }
                Some((m, t, h * t, mb == 1))
            }
        };
        let mut out = vec![0f32; x.len()];
        let rows_per_task = row_chunk(n) / n;
        out.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, o)| {
                for (i, orow) in o.chunks_mut(n).enumerate() {
                    let r = task * rows_per_task + i;
                    let xrow = &x[r * n..(r + 1) * n];
                    let mrow: &[f32] = match mask_row {
                        None => &[],
                        Some((m, t, per_batch, shared)) => {
                            let batch = if shared { 0 } else { r / per_batch };
                            let row = batch * t + r % t;
                            &m[row * n..(row + 1) * n]
                        }
                    };
                    softmax_scaled_row(xrow, mrow, self.scale, orow);
                }
            });
        Ok(out)
    }

    /// `scale·y·(g − Σ g·y)` by rows, from the result `y` and its gradient.
    fn grad(&self, res: &Tensor, grad: &Tensor) -> Result<Tensor> {
        res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })
    }
}

impl CustomOp1 for SoftmaxScaled {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, Self::NAME)?;
        let out = self.run(x, layout.shape(), None)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.grad(res, grad)?))
    }
}

impl CustomOp2 for SoftmaxScaled {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        m_storage: &CpuStorage,
        m_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(x_storage, x_layout, Self::NAME)?;
        let m = f32_slice(m_storage, m_layout, Self::NAME)?;
        let out = self.run(x, x_layout.shape(), Some((m, m_layout.shape())))?;
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.grad(res, grad)?), None))
    }
}

/// The backward kernel of [`SoftmaxScaled`]: inputs the softmax's result and its gradient.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-scaled-fused-grad"
    }

    fn cpu_fwd(
        &self,
        y_storage: &CpuStorage,
        y_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = input_and_grad(self.name(), (y_storage, y_layout), (g_storage, g_layout))?;
        let n = y_layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        zip_chunks(&mut out, y, g, row_chunk(n), |o, y, g| {
            for ((o, y), g) in o.chunks_mut(n).zip(y.chunks(n)).zip(g.chunks(n)) {
                softmax_grad_row(y, g, self.scale, o);
            }
        });
        Ok((CpuStorage::F32(out), y_layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// RMS normalisation.

/// `w·x/√(mean(x²) + eps)` over the last axis; gradients for `x` and `w`.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

/// The rows' width `d` = the weight's length, checked against `x`.
fn rms_width(op: &str, x: &[f32], w: &[f32]) -> Result<usize> {
    let d = w.len();
    if d == 0 || !x.len().is_multiple_of(d) {
        candle_core::bail!("{op}: {} values do not make rows of {d}", x.len());
    }
    Ok(d)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-fused"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(x_storage, x_layout, self.name())?;
        let w = f32_slice(w_storage, w_layout, self.name())?;
        rms_width(self.name(), x, w)?;
        let mut out = vec![0f32; x.len()];
        cpu::rms_norm_rows(x, w, self.eps, &mut out);
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let op = RmsNormGrad { eps: self.eps };
        let dx = x.apply_op3_no_bwd(w, &g, &op)?;
        // A frozen weight (a fine-tune's backbone) needs no gradient.
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&g, &op)?.reshape(w.shape())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// The backward kernels of [`RmsNorm`]: as a 3-input op `(x, w, g)` → `dx`, as a 2-input
/// op `(x, g)` → `dw` `[d]` (the width taken from `g`'s last axis).
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-fused-grad-x"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp3::name(self);
        let (x, g) = input_and_grad(name, (x_storage, x_layout), (g_storage, g_layout))?;
        let w = f32_slice(w_storage, w_layout, name)?;
        let d = rms_width(name, x, w)?;
        let mut out = vec![0f32; x.len()];
        zip_chunks(&mut out, x, g, row_chunk(d), |o, x, g| {
            cpu::rms_norm_grad_chunk(x, w, g, self.eps, o);
        });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-fused-grad-weight"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp2::name(self);
        let (x, g) = input_and_grad(name, (x_storage, x_layout), (g_storage, g_layout))?;
        let d = g_layout.dims().last().copied().unwrap_or(1).max(1);
        // One partial sum per chunk of rows, added in chunk order: the same sum on every
        // run, whatever thread did which chunk (a resumed training run repeats the
        // uninterrupted one exactly).
        let partial: Vec<Vec<f32>> = x
            .par_chunks(row_chunk(d))
            .zip(g.par_chunks(row_chunk(d)))
            .map(|(x, g)| {
                let mut acc = vec![0f32; d];
                cpu::rms_norm_weight_grad_chunk(x, g, self.eps, &mut acc);
                acc
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in &partial {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(dw), Shape::from(d)))
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU.

/// `silu(a)·b` for `x = [a | b]` along the last axis (even width); gradient for `x`.
pub(crate) fn swiglu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Swiglu)
}

struct Swiglu;

/// Half the last axis of `layout`, which must be even and non-zero.
fn swiglu_half(op: &str, layout: &Layout) -> Result<usize> {
    let width = layout.dims().last().copied().unwrap_or(0);
    if width == 0 || !width.is_multiple_of(2) {
        candle_core::bail!("{op}: the last axis ({width}) must be even and non-zero");
    }
    Ok(width / 2)
}

impl CustomOp1 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu-fused"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let half = swiglu_half(self.name(), layout)?;
        let mut out = vec![0f32; x.len() / 2];
        swiglu_rows(x, half, &mut out);
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = half;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &SwigluGrad)?,
        ))
    }
}

/// The backward kernel of [`Swiglu`]: inputs `x` and the output's gradient.
struct SwigluGrad;

impl CustomOp2 for SwigluGrad {
    fn name(&self) -> &'static str {
        "swiglu-fused-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(x_storage, x_layout, self.name())?;
        let g = f32_slice(g_storage, g_layout, self.name())?;
        let half = swiglu_half(self.name(), x_layout)?;
        if g.len() * 2 != x.len() {
            candle_core::bail!("{}: {} inputs, {} gradients", self.name(), x.len(), g.len());
        }
        let rows = (row_chunk(half) / half).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(2 * half * rows)
            .zip(x.par_chunks(2 * half * rows).zip(g.par_chunks(half * rows)))
            .for_each(|(o, (x, g))| cpu::swiglu_grad_chunk(x, g, half, o));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// GELU, tanh approximation.

/// GELU (tanh approximation) as one kernel, differentiable through [`GeluTanhGrad`];
/// candle's `gelu` records about ten element-wise ops (`powf`, `tanh`, …), which made
/// GELU a quarter of the demo tower's training step.
pub(crate) fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluTanh)
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh-fused"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = f32_slice(storage, layout, self.name())?.to_vec();
        gelu_tanh_inplace(&mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

/// `grad · GELU'(x)` for the tanh approximation, in one pass: with `s = σ(2z)`,
/// `GELU'(x) = s + x·s·(1 − s)·2·√(2/π)·(1 + 3·0.044715·x²)`.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-fused-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const K: f32 = 0.797_884_6; // √(2/π)
        const A: f32 = 0.044_715;
        let (x, g) = input_and_grad(self.name(), (x_storage, x_layout), (g_storage, g_layout))?;
        let mut out = vec![0f32; x.len()];
        zip_chunks(&mut out, x, g, CHUNK, |o, x, g| {
            for ((o, &v), &d) in o.iter_mut().zip(x).zip(g) {
                let s = 1.0 / (1.0 + cpu::fast_exp(-2.0 * K * (v + A * v * v * v)));
                *o = d * (s + v * s * (1.0 - s) * 2.0 * K * (1.0 + 3.0 * A * v * v));
            }
        });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}
