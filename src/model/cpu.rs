//! f32 kernels on plain slices, for the CPU inference fast paths. Each layer of a model
//! that runs on the CPU in f32 without gradients can keep its activations in one buffer
//! and update it in place (bias and residual folded into the GEMM's destination), instead
//! of materialising a tensor for every element-wise step. The tensor paths in
//! [`crate::model::ops`] stay the reference, and the tests compare the two.

use std::ops::Deref;

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

/// Elements handed to one worker by the parallel element-wise kernels.
pub(crate) const CHUNK: usize = 1 << 14;

/// Elements per parallel task for rows of `n` values: whole rows, about [`CHUNK`].
pub(crate) fn row_chunk(n: usize) -> usize {
    let n = n.max(1);
    n * (CHUNK / n).max(1)
}

/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_GEMM_MIN: usize = 1 << 18;

/// Whether the CPU runs AVX2 and FMA (detected once, then cached by std).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a function whose body is compiled twice, for baseline x86-64 (where loops
/// vectorise 4 lanes wide at most) and for AVX2 with FMA, and picks the second at run
/// time when the CPU has them. The body should be a loop over inlined arithmetic: what it
/// calls out of line keeps the baseline code.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $crate::model::cpu::multiversion! {
            $(#[$meta])* $vis fn $name($($arg: $ty),*) -> () $body
        }
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if $crate::model::cpu::has_avx2_fma() {
                    // SAFETY: the CPU has the features `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `exp(x)` in f32 with a relative error below 3e-7, written so that loops over it
/// vectorise: `2^n · p(r)` with `x = n·ln2 + r`, `|r| ≤ ln2/2`, p of degree 6. Large
/// inputs are clamped to f32's finite range; below −87 (where `exp` nears f32's smallest
/// normal number) the result is exactly 0, so that a masked softmax entry is 0 and never
/// a subnormal: products with subnormals run about a hundred times slower on x86, and a
/// training step whose attention gradients carried them took three times as long.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    // floor(t) without calling libm (which would stop vectorisation on baseline x86-64).
    let t = x * LOG2E + 0.5;
    let ti = t as i32;
    let ni = ti - i32::from(t < ti as f32);
    let n = ni as f32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let y = p * f32::from_bits(((ni + 127) << 23) as u32);
    if underflow { 0.0 } else { y }
}

/// Reduces `xs` with `f` over 8 independent lanes, so that the loop vectorises (a single
/// accumulator would serialise it).
#[inline(always)]
fn lane_reduce(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] = f(lanes[i], c[i]);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &b| f(a, b));
    lanes.iter().fold(tail, |a, &b| f(a, b))
}

multiversion! {
    /// `exp(x − max)` of one row, in place; returns the row's sum (the softmax's
    /// denominator).
    fn exp_row(row: &mut [f32]) -> f32 {
        let max = lane_reduce(row, f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
        row.iter_mut().for_each(|v| *v = fast_exp(*v - max));
        lane_reduce(row, 0.0, |a, b| a + b)
    }
}

multiversion! {
    /// Softmax of one row, in place.
    fn softmax_row(row: &mut [f32]) {
        let inv = 1.0 / exp_row(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

multiversion! {
    /// Softmax of `scale·x + mask` for one row, into `out` (`mask` empty: no mask).
    pub(crate) fn softmax_scaled_row(x: &[f32], mask: &[f32], scale: f32, out: &mut [f32]) {
        if mask.is_empty() {
            out.iter_mut().zip(x).for_each(|(o, &v)| *o = scale * v);
        } else {
            for ((o, &v), &m) in out.iter_mut().zip(x).zip(mask) {
                *o = scale * v + m;
            }
        }
        let inv = 1.0 / exp_row(out);
        out.iter_mut().for_each(|v| *v *= inv);
    }
}

multiversion! {
    /// The gradient reaching the input `x` of one row of `y = softmax(scale·x + mask)`
    /// from the gradient `g` of `y`: `scale·y·(g − Σ g·y)`.
    pub(crate) fn softmax_grad_row(y: &[f32], g: &[f32], scale: f32, out: &mut [f32]) {
        let dot = lane_dot(y, g);
        for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
            *o = scale * y * (g - dot);
        }
    }
}

/// Softmax of each `n`-long row of `data`, in place.
pub fn softmax_rows(data: &mut [f32], n: usize) {
    if n == 0 {
        return;
    }
    data.par_chunks_mut(row_chunk(n))
        .for_each(|rows| rows.chunks_mut(n).for_each(softmax_row));
}

/// Read access to the f32 data of a contiguous CPU tensor that no gradient flows through.
pub struct F32View<'a> {
    /// The storage's read guard (candle's lock type, kept opaque).
    guard: Box<dyn Deref<Target = Storage> + 'a>,
    start: usize,
    end: usize,
}

impl Deref for F32View<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &**self.guard {
            Storage::Cpu(CpuStorage::F32(data)) => &data[self.start..self.end],
            // `f32_view` only builds views over CPU f32 storage.
            _ => &[],
        }
    }
}

/// A view of `t`'s data when `t` is a contiguous f32 CPU tensor without gradient tracking.
pub fn f32_view(t: &Tensor) -> Option<F32View<'_>> {
    if t.track_op() || t.dtype() != DType::F32 || !t.device().is_cpu() {
        return None;
    }
    let (guard, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*guard {
        Storage::Cpu(CpuStorage::F32(data)) if end <= data.len() => Some(F32View {
            guard: Box::new(guard),
            start,
            end,
        }),
        _ => None,
    }
}

/// `dst[rows×out] = x[rows×inp]·wᵀ`, plus what `dst` holds when `accumulate`; `w` is
/// `[out, inp]` row-major (a linear layer's weight). Bias and residual are added by
/// filling `dst` first and accumulating.
///
/// # Panics
/// When the slice lengths do not fit `inp` (a programming error: the callers check the
/// weight shapes when the model is loaded).
pub fn matmul_wt(x: &[f32], w: &[f32], inp: usize, dst: &mut [f32], accumulate: bool) {
    assert!(inp > 0 && x.len().is_multiple_of(inp) && w.len().is_multiple_of(inp));
    let (rows, out) = (x.len() / inp, w.len() / inp);
    assert_eq!(dst.len(), rows * out);
    if rows == 0 || out == 0 {
        return;
    }
    let parallelism = if rows * out * inp >= PARALLEL_GEMM_MIN {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst is [rows, out], x is [rows, inp] and w is [out, inp], all row-major and
    // covered by their slices (checked above); wᵀ is read through strides: (row c, col j)
    // = w[j, c]. dst aliases neither source.
    unsafe {
        gemm::gemm(
            rows,
            out,
            inp,
            dst.as_mut_ptr(),
            1,
            out as isize,
            accumulate,
            x.as_ptr(),
            1,
            inp as isize,
            w.as_ptr(),
            inp as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Overwrites every `row.len()`-long row of `dst` with `row`.
pub fn fill_rows(dst: &mut [f32], row: &[f32]) {
    let n = row.len().max(1);
    dst.par_chunks_mut(row_chunk(n))
        .for_each(|c| c.chunks_mut(n).for_each(|r| r.copy_from_slice(row)));
}

/// Adds `row` to every `row.len()`-long row of `dst`.
pub fn add_rows(dst: &mut [f32], row: &[f32]) {
    let n = row.len().max(1);
    dst.par_chunks_mut(row_chunk(n)).for_each(|c| {
        c.chunks_mut(n).for_each(|r| {
            r.iter_mut().zip(row).for_each(|(d, &b)| *d += b);
        });
    });
}

multiversion! {
    fn gelu_tanh_chunk(c: &mut [f32]) {
        c.iter_mut().for_each(|v| *v = gelu_tanh_scalar(*v));
    }
}

/// [`gelu_tanh_scalar`] of every element, in place, in parallel.
pub fn gelu_tanh_inplace(data: &mut [f32]) {
    data.par_chunks_mut(CHUNK).for_each(gelu_tanh_chunk);
}

/// GELU with the tanh approximation, `x·σ(2z)`, `z = √(2/π)·(x + 0.044715·x³)`.
#[inline(always)]
pub fn gelu_tanh_scalar(v: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    v / (1.0 + fast_exp(-2.0 * K * (v + 0.044_715 * v * v * v)))
}

/// SiLU, `x·σ(x)`.
#[inline(always)]
pub fn silu_scalar(v: f32) -> f32 {
    v / (1.0 + fast_exp(-v))
}

/// The sum of `f(x)` over `xs`, in 16 independent lanes so that the loop vectorises (one
/// accumulator would serialise it).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] += f(c[i]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a·b` in 16 independent lanes, so that the loop vectorises (one accumulator would
/// serialise it).
#[inline(always)]
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

multiversion! {
    fn layer_norm_chunk(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
        let d = weight.len().max(1);
        for (orow, row) in out.chunks_mut(d).zip(x.chunks(d)) {
            let mean = lane_sum(row, |v| v) / d as f32;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in orow.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = (v - mean) * inv * w + b;
            }
        }
    }
}

/// Layer normalisation of each `weight.len()`-long row of `x` into `out`, with weight and
/// bias (mean and variance in f32, as torch computes them).
pub fn layer_norm_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len().max(1);
    out.par_chunks_mut(row_chunk(d))
        .zip(x.par_chunks(row_chunk(d)))
        .for_each(|(o, src)| layer_norm_chunk(src, weight, bias, eps, o));
}

/// How [`split_heads`] reads a row of stacked q, k, v projections
/// `[q_heads·hd | kv_heads·hd | kv_heads·hd]`.
pub struct HeadSplit<'a> {
    /// Number of query heads.
    pub q_heads: usize,
    /// Number of key and value heads (grouped-query attention: divides `q_heads`).
    pub kv_heads: usize,
    /// Width of one head, `hd`.
    pub head_dim: usize,
    /// RMS-norm weights `[hd]` applied to each q and k head before RoPE (Qwen3's q/k
    /// norms), with their epsilon.
    pub qk_norm: Option<(&'a [f32], &'a [f32], f32)>,
    /// Rotary `cos`, `sin` `[n, hd]`, applied rotate-half style to q and k:
    /// `x·cos + rotate_half(x)·sin`.
    pub rope: (&'a [f32], &'a [f32]),
}

/// Splits `qkv` `[n, (q_heads + 2·kv_heads)·hd]` into head-major `q` `[q_heads, n, hd]`,
/// `k` and `v` `[kv_heads, n, hd]`, normalising and rotating q and k on the way.
pub fn split_heads(qkv: &[f32], spec: &HeadSplit<'_>, [q, k, v]: [&mut [f32]; 3]) {
    let hd = spec.head_dim;
    let width = (spec.q_heads + 2 * spec.kv_heads) * hd;
    let n = qkv.len() / width.max(1);
    let (cos, sin) = spec.rope;
    let offsets = [0, spec.q_heads * hd, (spec.q_heads + spec.kv_heads) * hd];
    let norms = [
        spec.qk_norm.map(|(w, _, e)| (w, e)),
        spec.qk_norm.map(|(_, w, e)| (w, e)),
    ];
    for (which, dst) in [q, k, v].into_iter().enumerate() {
        dst.par_chunks_mut(n * hd)
            .enumerate()
            .for_each(|(h, head)| {
                let start = offsets[which] + h * hd;
                match norms.get(which) {
                    Some(&norm) => rope_head(qkv, width, start, norm, cos, sin, head),
                    None => {
                        for (p, out) in head.chunks_mut(hd).enumerate() {
                            out.copy_from_slice(&qkv[p * width + start..][..hd]);
                        }
                    }
                }
            });
    }
}

multiversion! {
    /// One head of [`split_heads`]: the `hd` values at `start` of each `width`-long row of
    /// `qkv`, RMS-normalised when `norm` is given, then rotated, into `head` `[n, hd]`.
    fn rope_head(
        qkv: &[f32],
        width: usize,
        start: usize,
        norm: Option<(&[f32], f32)>,
        cos: &[f32],
        sin: &[f32],
        head: &mut [f32],
    ) {
        let n = qkv.len() / width.max(1);
        let hd = head.len() / n.max(1);
        let half = hd / 2;
        let mut x = vec![0f32; hd];
        for (p, out) in head.chunks_mut(hd).enumerate() {
            x.copy_from_slice(&qkv[p * width + start..][..hd]);
            if let Some((w, eps)) = norm {
                let inv = 1.0 / (lane_sum(&x, |v| v * v) / hd as f32 + eps).sqrt();
                x.iter_mut().zip(w).for_each(|(v, &w)| *v = w * (*v * inv));
            }
            let (c, s) = (&cos[p * hd..][..hd], &sin[p * hd..][..hd]);
            let (x1, x2) = x.split_at(half);
            let (o1, o2) = out.split_at_mut(half);
            for j in 0..half {
                o1[j] = x1[j] * c[j] - x2[j] * s[j];
                o2[j] = x2[j] * c[half + j] + x1[j] * s[half + j];
            }
        }
    }
}

multiversion! {
    /// RMS normalisation of each `weight.len()`-long row of `x` into `out`, scaled by
    /// `weight` (as transformers' Qwen RMSNorm does in f32).
    fn rms_norm_chunk(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let d = weight.len().max(1);
        for (orow, row) in out.chunks_mut(d).zip(x.chunks(d)) {
            let inv = 1.0 / (lane_sum(row, |v| v * v) / d as f32 + eps).sqrt();
            for ((o, &v), &w) in orow.iter_mut().zip(row).zip(weight) {
                *o = w * (v * inv);
            }
        }
    }
}

/// RMS normalisation of each `weight.len()`-long row of `x` into `out`, then scaled by
/// `weight`.
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len().max(1);
    out.par_chunks_mut(row_chunk(d))
        .zip(x.par_chunks(row_chunk(d)))
        .for_each(|(o, src)| rms_norm_chunk(src, weight, eps, o));
}

multiversion! {
    /// The gradient reaching `x` of [`rms_norm_rows`] from the gradient `g` of its output,
    /// rows of `weight.len()`: with `r = 1/√(mean(x²) + eps)` and `dn = g·w`,
    /// `dx = r·(dn − x·r·mean(dn·x·r))`.
    pub(crate) fn rms_norm_grad_chunk(
        x: &[f32],
        weight: &[f32],
        g: &[f32],
        eps: f32,
        out: &mut [f32],
    ) {
        let d = weight.len().max(1);
        for ((orow, row), grow) in out.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
            let inv = 1.0 / (lane_sum(row, |v| v * v) / d as f32 + eps).sqrt();
            for ((o, &gv), &w) in orow.iter_mut().zip(grow).zip(weight) {
                *o = gv * w;
            }
            let c = lane_dot(orow, row) * inv / d as f32;
            for (o, &v) in orow.iter_mut().zip(row) {
                *o = inv * (*o - v * inv * c);
            }
        }
    }
}

multiversion! {
    /// Adds to `acc` (`d` values) the gradient reaching the weight of [`rms_norm_rows`]
    /// from the rows of `x` and of the output's gradient `g`: `Σ_rows g·x·r`.
    pub(crate) fn rms_norm_weight_grad_chunk(x: &[f32], g: &[f32], eps: f32, acc: &mut [f32]) {
        let d = acc.len().max(1);
        for (row, grow) in x.chunks(d).zip(g.chunks(d)) {
            let inv = 1.0 / (lane_sum(row, |v| v * v) / d as f32 + eps).sqrt();
            for ((a, &v), &gv) in acc.iter_mut().zip(row).zip(grow) {
                *a += gv * v * inv;
            }
        }
    }
}

multiversion! {
    /// The gradient reaching `x = [a | b]` (rows of `2·half`) of [`swiglu_rows`] from the
    /// gradient `g` of its output (rows of `half`): with `s = σ(a)`,
    /// `da = g·b·s·(1 + a·(1 − s))`, `db = g·a·s`.
    pub(crate) fn swiglu_grad_chunk(x: &[f32], g: &[f32], half: usize, out: &mut [f32]) {
        for ((orow, row), grow) in out.chunks_mut(2 * half).zip(x.chunks(2 * half)).zip(g.chunks(half)) {
            let (a, b) = row.split_at(half);
            let (da, db) = orow.split_at_mut(half);
            for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db).zip(a).zip(b).zip(grow) {
                let s = 1.0 / (1.0 + fast_exp(-a));
                *da = g * b * s * (1.0 + a * (1.0 - s));
                *db = g * a * s;
            }
        }
    }
}

multiversion! {
    fn swiglu_chunk(x: &[f32], half: usize, out: &mut [f32]) {
        for (orow, row) in out.chunks_mut(half).zip(x.chunks(2 * half)) {
            let (g, u) = row.split_at(half);
            for ((o, &g), &u) in orow.iter_mut().zip(g).zip(u) {
                *o = silu_scalar(g) * u;
            }
        }
    }
}

/// `out` = silu(a)·b for each row `[a | b]` of `x` (the stacked gate and up projections of
/// a SwiGLU MLP), `half` values each.
pub fn swiglu_rows(x: &[f32], half: usize, out: &mut [f32]) {
    let half = half.max(1);
    let rows = row_chunk(half) / half;
    out.par_chunks_mut(half * rows)
        .zip(x.par_chunks(2 * half * rows))
        .for_each(|(o, src)| swiglu_chunk(src, half, o));
}

multiversion! {
    /// `scores += mask`, element-wise.
    fn add_rows_masked(scores: &mut [f32], mask: &[f32]) {
        scores.iter_mut().zip(mask).for_each(|(s, &m)| *s += m);
    }
}

/// A destination that parallel workers write in disjoint parts.
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);

impl SharedDst {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
// SAFETY: used only by `attention_heads_into`, whose workers write disjoint columns.
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

/// Which keys each query may attend to in [`attention_heads_into`].
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every key (full attention).
    None,
    /// An additive `[n, n]` mask (0 or −∞).
    Dense(&'a [f32]),
    /// Packed perspective branches after a causal prefix
    /// ([`crate::model::perspective::branch_mask`]), built one block of rows at a time:
    /// no `[n, n]` buffer, so a long text costs no quadratic memory.
    Branches {
        /// Tokens of the shared prefix.
        prefix: usize,
        /// Tokens of each branch suffix.
        lengths: &'a [usize],
    },
}

impl AttentionMask<'_> {
    /// Whether it fits `n` positions.
    fn fits(&self, n: usize) -> bool {
        match self {
            Self::None => true,
            Self::Dense(m) => m.len() == n * n,
            Self::Branches { prefix, lengths } => prefix + lengths.iter().sum::<usize>() == n,
        }
    }

    /// Adds rows `first..first + rows` of the mask to `scores` (`[rows, n]`), using `buf`
    /// (`rows·n` long) for a built mask.
    fn add_to(&self, scores: &mut [f32], first: usize, n: usize, buf: &mut [f32]) {
        let rows = scores.len() / n.max(1);
        match self {
            Self::None => {}
            Self::Dense(m) => add_rows_masked(scores, &m[first * n..][..rows * n]),
            Self::Branches { prefix, lengths } => {
                let buf = &mut buf[..rows * n];
                buf.fill(f32::NEG_INFINITY);
                for (i, row) in buf.chunks_mut(n).enumerate() {
                    crate::model::perspective::branch_mask_row(0, *prefix, lengths, first + i, row);
                }
                add_rows_masked(scores, buf);
            }
        }
    }
}

/// Query rows per task of [`attention_heads_into`]: a block's scores (`ATTENTION_ROWS × n`)
/// stay in the core's L2 cache between the two GEMMs and the softmax.
const ATTENTION_ROWS: usize = 64;

/// Softmax attention `softmax(q·kᵀ·scale + mask)·v` with `q` `[q_heads, n, hd]` and `k`,
/// `v` `[kv_heads, n, hd]` (query head h reads key/value head `h / (q_heads/kv_heads)`,
/// as grouped-query attention repeats them), written into `out` `[n, q_heads·hd]` (head h
/// in columns `h·hd..(h+1)·hd`, the layout the output projection reads). `mask` says which
/// keys each query sees ([`AttentionMask`]). Blocks of query rows of
/// each head run in parallel, each on one core: scores, their exponentials, the product
/// with v, then each output row divided by its row's sum (instead of normalising the
/// n-long rows of probabilities).
///
/// # Panics
/// When the slice lengths disagree with the head counts and `hd` (a programming error).
#[allow(clippy::too_many_arguments)]
pub fn attention_heads_into(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (q_heads, kv_heads): (usize, usize),
    hd: usize,
    scale: f32,
    mask: AttentionMask<'_>,
    out: &mut [f32],
) {
    assert!(q_heads > 0 && kv_heads > 0 && hd > 0 && q_heads.is_multiple_of(kv_heads));
    let size = q.len() / q_heads;
    let n = size / hd;
    assert!(q.len() == q_heads * n * hd && out.len() == q.len());
    assert!(k.len() == kv_heads * size && v.len() == k.len());
    assert!(mask.fits(n));
    if n == 0 {
        return;
    }
    let rep = q_heads / kv_heads;
    let width = q_heads * hd;
    let blocks = n.div_ceil(ATTENTION_ROWS);
    let dst = SharedDst(out.as_mut_ptr());
    (0..q_heads * blocks).into_par_iter().for_each_init(
        || {
            let built = if matches!(mask, AttentionMask::Branches { .. }) {
                ATTENTION_ROWS * n
            } else {
                0
            };
            (
                vec![0f32; ATTENTION_ROWS * n],
                vec![0f32; ATTENTION_ROWS],
                vec![0f32; built],
            )
        },
        |(scores, sums, built), task| {
            let (h, b) = (task / blocks, task % blocks);
            let first = b * ATTENTION_ROWS;
            let rows = ATTENTION_ROWS.min(n - first);
            let g = h / rep;
            let qb = &q[h * size + first * hd..][..rows * hd];
            let (kh, vh) = (&k[g * size..][..size], &v[g * size..][..size]);
            let scores = &mut scores[..rows * n];
            // SAFETY: q's block is [rows, hd], k_h and v_h are [n, hd] and scores is
            // [rows, n], all row-major inside their slices; this task's output is the
            // [rows, hd] block at row `first`, column h·hd of the [n, width] `out`, which no
            // other task writes and which aliases no source.
            unsafe {
                // scores = scale · q_b · k_hᵀ, kᵀ read through strides: (row c, col j) = k[j, c].
                gemm::gemm(
                    rows,
                    n,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    qb.as_ptr(),
                    1,
                    hd as isize,
                    kh.as_ptr(),
                    hd as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            mask.add_to(scores, first, n, built);
            for (row, sum) in scores.chunks_mut(n).zip(sums.iter_mut()) {
                *sum = exp_row(row);
            }
            let o = dst.at(first * width + h * hd);
            unsafe {
                gemm::gemm(
                    rows,
                    hd,
                    n,
                    o,
                    1,
                    width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    vh.as_ptr(),
                    1,
                    hd as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (i, &sum) in sums[..rows].iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(o.add(i * width), hd);
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops;
    use crate::model::testing::uniform as values;
    use candle_core::{D, Device, Var};

    fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((fast_exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        // Below −87 exactly 0, never a subnormal (see `fast_exp`).
        for x in [f32::NEG_INFINITY, -1e9, -87.5] {
            assert_eq!(fast_exp(x), 0.0, "exp({x})");
        }
        assert!(fast_exp(-86.9).is_normal());
    }

    #[test]
    fn views_cover_exactly_the_tensor_and_refuse_what_they_cannot_read() {
        let t = tensor(&values(24, 1), &[4, 6]);
        let row = t.narrow(0, 1, 2).unwrap();
        assert_eq!(&*f32_view(&row).unwrap(), &flat(&row)[..]);
        // Not contiguous, not f32, or tracked: no view.
        assert!(f32_view(&t.t().unwrap()).is_none());
        assert!(f32_view(&t.to_dtype(DType::F16).unwrap()).is_none());
        let var = Var::from_tensor(&t).unwrap();
        assert!(f32_view(var.as_tensor()).is_none());
    }

    #[test]
    fn linear_with_bias_and_residual_matches_tensor_ops() {
        // Big enough to take the parallel GEMM, and a small one that does not.
        for (rows, inp, out) in [(37, 64, 200), (3, 5, 7)] {
            let x = values(rows * inp, 2);
            let w = values(out * inp, 3);
            let b = values(out, 4);
            let res = values(rows * out, 5);
            let (xt, wt, bt) = (
                tensor(&x, &[rows, inp]),
                tensor(&w, &[out, inp]),
                tensor(&b, &[out]),
            );
            let lin = ops::linear(&xt, &wt, Some(&bt)).unwrap();
            let mut dst = vec![f32::NAN; rows * out];
            fill_rows(&mut dst, &b);
            matmul_wt(&x, &w, inp, &mut dst, true);
            assert!(max_diff(&dst, &flat(&lin)) < 1e-5);
            let mut acc = res.clone();
            add_rows(&mut acc, &b);
            matmul_wt(&x, &w, inp, &mut acc, true);
            let want = (tensor(&res, &[rows, out]) + &lin).unwrap();
            assert!(max_diff(&acc, &flat(&want)) < 1e-5);
            // Without accumulation the destination's old contents (NaN here) are ignored.
            let mut plain = vec![f32::NAN; rows * out];
            matmul_wt(&x, &w, inp, &mut plain, false);
            let want = xt.matmul(&wt.t().unwrap()).unwrap();
            assert!(max_diff(&plain, &flat(&want)) < 1e-5);
        }
    }

    #[test]
    fn layer_norm_and_gelu_match_tensor_ops() {
        let (rows, d) = (19, 48);
        let x: Vec<f32> = values(rows * d, 6).iter().map(|v| 3.0 * v + 0.5).collect();
        let w = values(d, 7);
        let b = values(d, 8);
        let mut out = vec![0f32; rows * d];
        layer_norm_rows(&x, &w, &b, 1e-6, &mut out);
        let want = candle_nn::ops::layer_norm(
            &tensor(&x, &[rows, d]),
            &tensor(&w, &[d]),
            &tensor(&b, &[d]),
            1e-6,
        )
        .unwrap();
        assert!(max_diff(&out, &flat(&want)) < 1e-5);
        let mut g = x.clone();
        gelu_tanh_inplace(&mut g);
        let want = flat(&tensor(&x, &[rows, d]).gelu().unwrap());
        let worst = g
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0, f32::max);
        assert!(worst < 2e-6, "{worst}");
    }

    #[test]
    fn split_rope_and_attention_match_tensor_ops() {
        let (n, heads, hd) = (29, 3, 8);
        let d = heads * hd;
        let qkv = values(n * 3 * d, 9);
        let cos = values(n * hd, 10);
        let sin = values(n * hd, 11);
        let (mut q, mut k, mut v) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        let spec = HeadSplit {
            q_heads: heads,
            kv_heads: heads,
            head_dim: hd,
            qk_norm: None,
            rope: (&cos, &sin),
        };
        split_heads(&qkv, &spec, [&mut q, &mut k, &mut v]);
        // The tensor path, as the vision tower computes it.
        let t = tensor(&qkv, &[n, 3, heads, hd])
            .permute((1, 2, 0, 3))
            .unwrap();
        let (ct, st) = (tensor(&cos, &[1, n, hd]), tensor(&sin, &[1, n, hd]));
        let qt = ops::rotate_half_rope(&t.get(0).unwrap(), &ct, &st).unwrap();
        let kt = ops::rotate_half_rope(&t.get(1).unwrap(), &ct, &st).unwrap();
        let vt = t.get(2).unwrap().contiguous().unwrap();
        assert!(max_diff(&q, &flat(&qt)) < 1e-6);
        assert!(max_diff(&k, &flat(&kt)) < 1e-6);
        assert_eq!(v, flat(&vt));
        let scale = 0.3;
        let mut out = vec![f32::NAN; n * d];
        attention_heads_into(
            &q,
            &k,
            &v,
            (heads, heads),
            hd,
            scale,
            AttentionMask::None,
            &mut out,
        );
        let probs = candle_nn::ops::softmax(
            &(qt.matmul(&kt.t().unwrap()).unwrap() * f64::from(scale)).unwrap(),
            D::Minus1,
        )
        .unwrap();
        let want = probs
            .matmul(&vt)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((n, d))
            .unwrap();
        assert!(max_diff(&out, &flat(&want)) < 1e-5);
    }

    /// Several row blocks per head (the last one short), grouped-query heads and a
    /// causal mask, against the tensor ops.
    #[test]
    fn blocked_grouped_masked_attention_matches_tensor_ops() {
        let (n, q_heads, kv_heads, hd) = (2 * ATTENTION_ROWS + 21, 4, 2, 8);
        let q = values(q_heads * n * hd, 12);
        let k = values(kv_heads * n * hd, 13);
        let v = values(kv_heads * n * hd, 14);
        let mask: Vec<f32> = (0..n * n)
            .map(|i| {
                if i % n <= i / n {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let scale = 0.7;
        let mut out = vec![f32::NAN; q_heads * n * hd];
        let heads = (q_heads, kv_heads);
        attention_heads_into(
            &q,
            &k,
            &v,
            heads,
            hd,
            scale,
            AttentionMask::Dense(&mask),
            &mut out,
        );
        let qt = tensor(&q, &[q_heads, n, hd]);
        // Each key/value head serves q_heads/kv_heads consecutive query heads.
        let repeat = |x: &[f32]| {
            let t = tensor(x, &[kv_heads, 1, n, hd]);
            Tensor::cat(&[&t, &t], 1)
                .unwrap()
                .reshape((q_heads, n, hd))
                .unwrap()
        };
        let (kt, vt) = (repeat(&k), repeat(&v));
        let scores = (qt.matmul(&kt.t().unwrap()).unwrap() * f64::from(scale))
            .unwrap()
            .broadcast_add(&tensor(&mask, &[n, n]))
            .unwrap();
        let want = candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&vt)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((n, q_heads * hd))
            .unwrap();
        assert!(max_diff(&out, &flat(&want)) < 1e-5);
    }
}
