//! The Qwen3 language model of Qwen3-VL: GQA attention with q/k RMS norms and 3-D RoPE,
//! SwiGLU MLPs, a final RMS norm. Runs a whole sequence, or a batch of suffixes that share
//! a cached prefix.

use candle_core::{DType, Tensor};

use super::config::TextConfig;
use crate::model::cpu::{self, F32View, f32_view};
use crate::model::error::Result;
use crate::model::ops::{linear, rms_norm, softmax_last_owned, swiglu};
use crate::model::weights::Weights;

struct Attention {
    /// q, k and v projections stacked into one matrix (one GEMM instead of three).
    qkv_proj: (Tensor, Option<Tensor>),
    o_proj: (Tensor, Option<Tensor>),
    q_norm: Tensor,
    k_norm: Tensor,
}

struct Layer {
    input_norm: Tensor,
    attn: Attention,
    post_norm: Tensor,
    /// Gate and up projections stacked: `[2·intermediate, hidden]`.
    gate_up: Tensor,
    down: Tensor,
}

/// A layer's weights as slices for the in-place CPU path (see [`Layer::views`]).
struct LayerViews<'a> {
    input_norm: F32View<'a>,
    qkv_w: F32View<'a>,
    qkv_b: Option<F32View<'a>>,
    o_w: F32View<'a>,
    o_b: Option<F32View<'a>>,
    q_norm: F32View<'a>,
    k_norm: F32View<'a>,
    post_norm: F32View<'a>,
    gate_up: F32View<'a>,
    down: F32View<'a>,
}

impl Layer {
    /// f32 views of the layer's weights (`None` unless all are contiguous f32 CPU
    /// tensors).
    fn views(&self) -> Option<LayerViews<'_>> {
        let a = &self.attn;
        Some(LayerViews {
            input_norm: f32_view(&self.input_norm)?,
            qkv_w: f32_view(&a.qkv_proj.0)?,
            qkv_b: bias_view(a.qkv_proj.1.as_ref())?,
            o_w: f32_view(&a.o_proj.0)?,
            o_b: bias_view(a.o_proj.1.as_ref())?,
            q_norm: f32_view(&a.q_norm)?,
            k_norm: f32_view(&a.k_norm)?,
            post_norm: f32_view(&self.post_norm)?,
            gate_up: f32_view(&self.gate_up)?,
            down: f32_view(&self.down)?,
        })
    }
}

/// An optional bias's view: `Some(None)` without a bias, `None` for one that cannot be
/// viewed.
fn bias_view(b: Option<&Tensor>) -> Option<Option<F32View<'_>>> {
    match b {
        None => Some(None),
        Some(b) => f32_view(b).map(Some),
    }
}

/// Keys and values of every layer for a computed prefix, `[1, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `(keys, values)` of each decoder layer, in layer order.
    pub layers: Vec<(Tensor, Tensor)>,
    /// Number of positions the keys and values cover.
    pub len: usize,
}

/// What one run of the language model returns.
pub struct TextOutput {
    /// Final-normed hidden states `[B, S, hidden]`.
    pub hidden: Tensor,
    /// Keys and values of this run's positions (prefix runs keep them as a cache).
    pub cache: KvCache,
    /// Attention probabilities `[B, heads, S, T]` of the layers asked for, in order.
    pub attentions: Vec<(usize, Tensor)>,
    /// Hidden states after each layer (before the final norm and before DeepStack
    /// additions, as transformers reports them), when asked for.
    pub layer_outputs: Vec<Tensor>,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions<'a> {
    /// Layers whose attention probabilities are returned.
    pub capture_attention: &'a [usize],
    /// Whether to keep every layer's output.
    pub keep_layer_outputs: bool,
    /// An explicit additive mask `[S, past+S]` (0 = may attend, −∞ = may not) instead of
    /// the causal one.
    pub mask: Option<&'a Tensor>,
    /// Packed perspective branches: `(prefix, suffix lengths)` (method.md §1). The CPU
    /// path builds their mask a block of rows at a time; the tensor path builds the dense
    /// mask. Ignored when `mask` is given.
    pub branches: Option<(usize, &'a [usize])>,
}

/// The mask [`TextModel::run_cpu`] applies.
#[derive(Clone, Copy)]
enum CpuMask<'a> {
    /// A dense additive `[S, S]` tensor.
    Dense(&'a Tensor),
    /// Packed branches after a causal prefix, never materialised.
    Branches(usize, &'a [usize]),
}

/// Tensors added to the hidden states after the first layers (DeepStack), at positions
/// `start..start+n` of a prefix run.
pub struct Injection<'a> {
    /// Position of the first image token in the run.
    pub start: usize,
    /// One `[n, hidden]` tensor per DeepStack level; level i is added after layer i.
    pub features: &'a [Tensor],
}

/// The Qwen3-VL language model (transformers' `Qwen3VLTextModel`): token embeddings,
/// decoder layers with q/k RMS norms, grouped-query attention and interleaved M-RoPE, and
/// the final RMS norm (no output head).
pub struct TextModel {
    config: TextConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
}

fn load_linear(
    w: &Weights,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(w.get(&format!("{name}.bias"), &[out])?)
    } else {
        None
    };
    Ok((weight, bias))
}

impl TextModel {
    /// Loads the weights under `prefix` (`model.language_model`).
    pub fn load(weights: &Weights, config: &TextConfig, prefix: &str) -> Result<Self> {
        let c = config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let embed = weights.get(&format!("{prefix}.embed_tokens.weight"), &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("{prefix}.layers.{i}");
            let b = c.attention_bias;
            layers.push(Layer {
                input_norm: weights.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn: Attention {
                    qkv_proj: {
                        let q = load_linear(
                            weights,
                            &format!("{p}.self_attn.q_proj"),
                            c.num_attention_heads * hd,
                            h,
                            b,
                        )?;
                        let k = load_linear(
                            weights,
                            &format!("{p}.self_attn.k_proj"),
                            c.num_key_value_heads * hd,
                            h,
                            b,
                        )?;
                        let v = load_linear(
                            weights,
                            &format!("{p}.self_attn.v_proj"),
                            c.num_key_value_heads * hd,
                            h,
                            b,
                        )?;
                        let w = Tensor::cat(&[&q.0, &k.0, &v.0], 0)?;
                        let bias = match (q.1, k.1, v.1) {
                            (Some(qb), Some(kb), Some(vb)) => {
                                Some(Tensor::cat(&[&qb, &kb, &vb], 0)?)
                            }
                            _ => None,
                        };
                        (w, bias)
                    },
                    o_proj: load_linear(
                        weights,
                        &format!("{p}.self_attn.o_proj"),
                        h,
                        c.num_attention_heads * hd,
                        b,
                    )?,
                    q_norm: weights.get(&format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                    k_norm: weights.get(&format!("{p}.self_attn.k_norm.weight"), &[hd])?,
                },
                post_norm: weights.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: Tensor::cat(
                    &[
                        &weights.get(
                            &format!("{p}.mlp.gate_proj.weight"),
                            &[c.intermediate_size, h],
                        )?,
                        &weights.get(
                            &format!("{p}.mlp.up_proj.weight"),
                            &[c.intermediate_size, h],
                        )?,
                    ],
                    0,
                )?,
                down: weights.get(
                    &format!("{p}.mlp.down_proj.weight"),
                    &[h, c.intermediate_size],
                )?,
            });
        }
        let norm = weights.get(&format!("{prefix}.norm.weight"), &[h])?;
        Ok(Self {
            config: config.clone(),
            embed,
            layers,
            norm,
        })
    }

    /// The settings the model was loaded with.
    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Token embeddings `[n, hidden]` of `ids`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let idx = Tensor::new(ids, self.embed.device())?;
        Ok(self.embed.index_select(&idx, 0)?)
    }

    /// Runs `embeds` `[B, S, hidden]` at rotary `cos`/`sin` `[S, head_dim]`, attending
    /// causally to itself and, when given, to every position of `past`.
    pub fn run(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<&KvCache>,
        injection: Option<&Injection<'_>>,
        options: &RunOptions<'_>,
    ) -> Result<TextOutput> {
        let (b, s, _) = embeds.dims3()?;
        let past_len = past.map_or(0, |p| p.len);
        let dense = || -> Result<Tensor> {
            Ok(match (options.mask, options.branches) {
                (Some(m), _) => m.clone(),
                (None, Some((prefix, lengths))) => {
                    let t = prefix + lengths.iter().sum::<usize>();
                    let m = crate::model::perspective::branch_mask(
                        0,
                        prefix,
                        lengths,
                        f32::NEG_INFINITY,
                    );
                    Tensor::from_vec(m, (t, t), embeds.device())?
                }
                (None, None) => causal_mask(s, past_len, embeds.device())?,
            })
        };
        if past.is_none() && options.capture_attention.is_empty() && !options.keep_layer_outputs {
            let out = match (options.mask, options.branches) {
                (None, Some((prefix, lengths))) => self.run_cpu(
                    embeds,
                    cos,
                    sin,
                    CpuMask::Branches(prefix, lengths),
                    injection,
                )?,
                _ => self.run_cpu(embeds, cos, sin, CpuMask::Dense(&dense()?), injection)?,
            };
            if let Some(out) = out {
                return Ok(out);
            }
        }
        let mask = dense()?;
        let mut x = embeds.clone();
        let mut cache = Vec::with_capacity(self.layers.len());
        let mut attentions = Vec::new();
        let mut layer_outputs = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let capture = options.capture_attention.contains(&i);
            let past_kv = past.map(|p| &p.layers[i]);
            let (y, kv, probs) = self.layer(layer, &x, cos, sin, &mask, past_kv, b, capture)?;
            x = y;
            if options.keep_layer_outputs {
                layer_outputs.push(x.clone());
            }
            if let Some(inj) = injection
                && let Some(feat) = inj.features.get(i)
            {
                x = add_at(&x, feat, inj.start)?;
            }
            if let Some(p) = probs {
                attentions.push((i, p));
            }
            cache.push(kv);
        }
        let hidden = rms_norm(&x, &self.norm, self.config.rms_norm_eps)?;
        Ok(TextOutput {
            hidden,
            cache: KvCache {
                layers: cache,
                len: past_len + s,
            },
            attentions,
            layer_outputs,
        })
    }

    /// [`Self::run`] for one sequence without a cache, attention capture or layer
    /// outputs, on the CPU in f32 (`None` otherwise, or for a tracked input): the same
    /// computation with the activations kept in one buffer that each layer updates in
    /// place (residuals folded into the GEMMs' destinations, the q/k norms and RoPE
    /// applied while q, k and v are split into heads, attention written straight into the
    /// layout the output projection reads).
    fn run_cpu(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: CpuMask<'_>,
        injection: Option<&Injection<'_>>,
    ) -> Result<Option<TextOutput>> {
        let c = &self.config;
        let (b, s, h) = embeds.dims3()?;
        let (nh, nkv, hd, inter) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.intermediate_size,
        );
        let mask_fits = match mask {
            CpuMask::Dense(m) => m.dims() == [s, s],
            CpuMask::Branches(prefix, lengths) => prefix + lengths.iter().sum::<usize>() == s,
        };
        if b != 1 || !mask_fits || cos.dims() != [s, hd] || sin.dims() != [s, hd] {
            return Ok(None);
        }
        let dense_view = match mask {
            CpuMask::Dense(m) => match f32_view(m) {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            CpuMask::Branches(..) => None,
        };
        let attention_mask = match (mask, &dense_view) {
            (CpuMask::Branches(prefix, lengths), _) => {
                cpu::AttentionMask::Branches { prefix, lengths }
            }
            (CpuMask::Dense(_), Some(v)) => cpu::AttentionMask::Dense(v),
            (CpuMask::Dense(_), None) => return Ok(None),
        };
        let (Some(x_view), Some(cos), Some(sin)) = (f32_view(embeds), f32_view(cos), f32_view(sin))
        else {
            return Ok(None);
        };
        let layers = self
            .layers
            .iter()
            .map(Layer::views)
            .collect::<Option<Vec<_>>>();
        let (Some(layers), Some(norm)) = (layers, f32_view(&self.norm)) else {
            return Ok(None);
        };
        let mut features = Vec::new();
        if let Some(inj) = injection {
            for f in inj.features {
                let (n, fh) = f.dims2()?;
                match f32_view(f) {
                    Some(view) if fh == h && inj.start + n <= s => features.push(view),
                    _ => return Ok(None),
                }
            }
        }
        let mut x = x_view.to_vec();
        drop(x_view);
        let device = embeds.device();
        let eps = c.rms_norm_eps as f32;
        let (qw, kvw) = (nh * hd, nkv * hd);
        let mut y = vec![0f32; s * h];
        let mut qkv = vec![0f32; s * (qw + 2 * kvw)];
        let (mut q, mut attn) = (vec![0f32; s * qw], vec![0f32; s * qw]);
        let (mut k, mut v) = (vec![0f32; s * kvw], vec![0f32; s * kvw]);
        let mut gate_up = vec![0f32; s * 2 * inter];
        let mut act = vec![0f32; s * inter];
        let scale = 1.0 / (hd as f32).sqrt();
        let mut cache = Vec::with_capacity(self.layers.len());
        for (i, l) in layers.iter().enumerate() {
            cpu::rms_norm_rows(&x, &l.input_norm, eps, &mut y);
            if let Some(bias) = &l.qkv_b {
                cpu::fill_rows(&mut qkv, bias);
            }
            cpu::matmul_wt(&y, &l.qkv_w, h, &mut qkv, l.qkv_b.is_some());
            let split = cpu::HeadSplit {
                q_heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                qk_norm: Some((&l.q_norm, &l.k_norm, eps)),
                rope: (&cos, &sin),
            };
            cpu::split_heads(&qkv, &split, [&mut q, &mut k, &mut v]);
            cpu::attention_heads_into(&q, &k, &v, (nh, nkv), hd, scale, attention_mask, &mut attn);
            if let Some(bias) = &l.o_b {
                cpu::add_rows(&mut x, bias);
            }
            cpu::matmul_wt(&attn, &l.o_w, qw, &mut x, true);
            cpu::rms_norm_rows(&x, &l.post_norm, eps, &mut y);
            cpu::matmul_wt(&y, &l.gate_up, h, &mut gate_up, false);
            cpu::swiglu_rows(&gate_up, inter, &mut act);
            cpu::matmul_wt(&act, &l.down, inter, &mut x, true);
            if let (Some(inj), Some(feat)) = (injection, features.get(i)) {
                x[inj.start * h..][..feat.len()]
                    .iter_mut()
                    .zip(feat.iter())
                    .for_each(|(x, &f)| *x += f);
            }
            cache.push((
                Tensor::from_slice(&k, (1, nkv, s, hd), device)?,
                Tensor::from_slice(&v, (1, nkv, s, hd), device)?,
            ));
        }
        cpu::rms_norm_rows(&x, &norm, eps, &mut y);
        Ok(Some(TextOutput {
            hidden: Tensor::from_vec(y, (1, s, h), device)?,
            cache: KvCache {
                layers: cache,
                len: s,
            },
            attentions: Vec::new(),
            layer_outputs: Vec::new(),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        past: Option<&(Tensor, Tensor)>,
        batch: usize,
        capture: bool,
    ) -> Result<(Tensor, (Tensor, Tensor), Option<Tensor>)> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let s = x.dim(1)?;
        let a = &layer.attn;
        let normed = rms_norm(x, &layer.input_norm, eps)?;
        let qkv = linear(&normed, &a.qkv_proj.0, a.qkv_proj.1.as_ref())?;
        let q = qkv.narrow(2, 0, nh * hd)?.reshape((batch, s, nh, hd))?;
        let k = qkv
            .narrow(2, nh * hd, nkv * hd)?
            .reshape((batch, s, nkv, hd))?;
        let v = qkv
            .narrow(2, (nh + nkv) * hd, nkv * hd)?
            .reshape((batch, s, nkv, hd))?;
        let q = rms_norm(&q, &a.q_norm, eps)?.transpose(1, 2)?;
        let k = rms_norm(&k, &a.k_norm, eps)?.transpose(1, 2)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (cos4, sin4) = (
            cos.unsqueeze(0)?.unsqueeze(0)?,
            sin.unsqueeze(0)?.unsqueeze(0)?,
        );
        let q = crate::model::ops::rotate_half_rope(&q, &cos4, &sin4)?;
        let k = crate::model::ops::rotate_half_rope(&k, &cos4, &sin4)?.contiguous()?;
        let (k_all, v_all) = match past {
            Some((pk, pv)) => {
                let t = pk.dim(2)?;
                let pk = pk.broadcast_as((batch, nkv, t, hd))?;
                let pv = pv.broadcast_as((batch, nkv, t, hd))?;
                (
                    Tensor::cat(&[&pk, &k], 2)?.contiguous()?,
                    Tensor::cat(&[&pv, &v], 2)?.contiguous()?,
                )
            }
            None => (k.clone(), v.clone()),
        };
        let t = k_all.dim(2)?;
        let rep = nh / nkv;
        // Group the query heads by their key/value head instead of copying K and V.
        let scale = 1.0 / (hd as f64).sqrt();
        let qg = (q.contiguous()?.reshape((batch, nkv, rep * s, hd))? * scale)?;
        let scores = qg
            .matmul(&k_all.transpose(2, 3)?)?
            .reshape((batch, nh, s, t))?;
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
        let probs = softmax_last_owned(scores)?;
        let out = probs
            .to_dtype(x.dtype())?
            .reshape((batch, nkv, rep * s, t))?
            .matmul(&v_all)?
            .reshape((batch, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((batch, s, nh * hd))?;
        let out = linear(&out, &a.o_proj.0, a.o_proj.1.as_ref())?;
        let x = (x + out)?;
        let normed = rms_norm(&x, &layer.post_norm, eps)?;
        let mlp = linear(
            &swiglu(&linear(&normed, &layer.gate_up, None)?)?,
            &layer.down,
            None,
        )?;
        let captured = if capture { Some(probs) } else { None };
        Ok(((x + mlp)?, (k, v), captured))
    }
}

/// `[S, past+S]` additive mask: 0 where query s may see key t (every past key, and suffix
/// keys up to itself), −∞ elsewhere.
fn causal_mask(s: usize, past: usize, device: &candle_core::Device) -> Result<Tensor> {
    let t = past + s;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (s, t), device)?)
}

/// Adds `feature` `[n, hidden]` to `x` `[1, L, hidden]` at positions `start..start+n`.
fn add_at(x: &Tensor, feature: &Tensor, start: usize) -> Result<Tensor> {
    let (b, l, h) = x.dims3()?;
    let n = feature.dim(0)?;
    let dev = x.device();
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(Tensor::zeros((start, h), x.dtype(), dev)?);
    }
    parts.push(feature.to_dtype(x.dtype())?);
    if start + n < l {
        parts.push(Tensor::zeros((l - start - n, h), x.dtype(), dev)?);
    }
    let padded = Tensor::cat(&parts, 0)?
        .unsqueeze(0)?
        .broadcast_as((b, l, h))?;
    Ok((x + padded)?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::model::qwen3_vl::Qwen3VlConfig;
    use crate::model::qwen3_vl::rope::TextRope;
    use crate::model::testing::{max_abs_diff as max_diff, uniform_tensor as values};

    fn tiny(name: &str) -> (Qwen3VlConfig, TextModel) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qwen3vl")
            .join(name);
        let config = Qwen3VlConfig::from_file(&dir.join("config.json")).unwrap();
        let weights = Weights::open(&dir, DType::F32, &Device::Cpu).unwrap();
        let text = TextModel::load(&weights, &config.text, "model.language_model").unwrap();
        (config, text)
    }

    /// The in-place CPU layers compute what the tensor layers compute: final hidden
    /// states and the keys and values they keep, with a packed-branch mask, DeepStack
    /// injections, and (added here, as no fixture has them) projection biases.
    #[test]
    fn cpu_layers_match_the_tensor_layers() {
        for name in ["tiny-a", "tiny-b"] {
            let (config, mut text) = tiny(name);
            let c = &config.text;
            let (s, h) = (13, c.hidden_size);
            let embeds = values(&[1, s, h], 1);
            let pos: Vec<i64> = (0..s as i64).collect();
            let (cos, sin) = TextRope::new(c)
                .cos_sin(&[pos.clone(), pos.clone(), pos], DType::F32, &Device::Cpu)
                .unwrap();
            // A prefix of 7 and two branches of 3, as the packed perspectives run.
            let mut m = vec![f32::NEG_INFINITY; s * s];
            for q in 0..s {
                let own = if q < 7 {
                    0
                } else if q < 10 {
                    7
                } else {
                    10
                };
                m[q * s..q * s + 7.min(q + 1)].fill(0.0);
                m[q * s + own..q * s + q + 1].fill(0.0);
            }
            let mask = Tensor::from_vec(m, (s, s), &Device::Cpu).unwrap();
            let features: Vec<Tensor> = (0..2).map(|i| values(&[4, h], 10 + i)).collect();
            let injection = Injection {
                start: 2,
                features: &features,
            };
            for with_bias in [false, true] {
                if with_bias {
                    for (i, layer) in text.layers.iter_mut().enumerate() {
                        let width = layer.attn.qkv_proj.0.dim(0).unwrap();
                        layer.attn.qkv_proj.1 = Some(values(&[width], 20 + i as u64));
                        layer.attn.o_proj.1 = Some(values(&[h], 40 + i as u64));
                    }
                }
                let fast = text
                    .run_cpu(&embeds, &cos, &sin, CpuMask::Dense(&mask), Some(&injection))
                    .unwrap()
                    .expect("f32 on the CPU takes the in-place path");
                // The same mask built a block of rows at a time gives the same states.
                let blocks = text
                    .run_cpu(
                        &embeds,
                        &cos,
                        &sin,
                        CpuMask::Branches(7, &[3, 3]),
                        Some(&injection),
                    )
                    .unwrap()
                    .expect("f32 on the CPU takes the in-place path");
                assert_eq!(
                    max_diff(&fast.hidden, &blocks.hidden),
                    0.0,
                    "{name}: block-built branch mask"
                );
                // Asking for the layer outputs keeps `run` on the tensor layers.
                let options = RunOptions {
                    keep_layer_outputs: true,
                    mask: Some(&mask),
                    ..RunOptions::default()
                };
                let reference = text
                    .run(&embeds, &cos, &sin, None, Some(&injection), &options)
                    .unwrap();
                let d = max_diff(&fast.hidden, &reference.hidden);
                assert!(
                    d < 1e-4,
                    "{name}, bias {with_bias}: hidden states off by {d}"
                );
                assert_eq!(fast.cache.len, reference.cache.len);
                for ((fk, fv), (rk, rv)) in fast.cache.layers.iter().zip(&reference.cache.layers) {
                    assert!(max_diff(fk, rk) < 1e-4 && max_diff(fv, rv) < 1e-4, "{name}");
                }
            }
        }
    }
}
