//! The Qwen3-VL vision tower: patch embedding, interpolated learned position embedding,
//! 2-D rotary attention blocks, the patch merger and the DeepStack mergers.

use candle_core::{DType, Device, Tensor};

use super::config::VisionConfig;
use super::preprocess::PreparedImage;
use crate::model::cpu::{self, F32View, f32_view};
use crate::model::error::{ModelError, Result};
use crate::model::ops::{
    gelu_erf, gelu_tanh_owned, layer_norm, linear, rotate_half_rope, softmax_last_owned,
};
use crate::model::weights::Weights;

const LN_EPS: f64 = 1e-6;

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn load(weights: &Weights, name: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            w: weights.get(&format!("{name}.weight"), &[out, inp])?,
            b: weights.get(&format!("{name}.bias"), &[out])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(linear(x, &self.w, Some(&self.b))?)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn load(weights: &Weights, name: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            w: weights.get(&format!("{name}.weight"), &[dim])?,
            b: weights.get(&format!("{name}.bias"), &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, &self.w, &self.b, LN_EPS)?)
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    /// f32 views of the block's weights for the in-place CPU path (`None` unless all are
    /// contiguous f32 CPU tensors).
    fn views(&self) -> Option<BlockViews<'_>> {
        let pair = |w, b| {
            Some(WeightBias {
                w: f32_view(w)?,
                b: f32_view(b)?,
            })
        };
        Some(BlockViews {
            norm1: pair(&self.norm1.w, &self.norm1.b)?,
            qkv: pair(&self.qkv.w, &self.qkv.b)?,
            proj: pair(&self.proj.w, &self.proj.b)?,
            norm2: pair(&self.norm2.w, &self.norm2.b)?,
            fc1: pair(&self.fc1.w, &self.fc1.b)?,
            fc2: pair(&self.fc2.w, &self.fc2.b)?,
        })
    }
}

/// A weight and its bias, as slices.
struct WeightBias<'a> {
    w: F32View<'a>,
    b: F32View<'a>,
}

/// A block's weights as slices (see [`Block::views`]).
struct BlockViews<'a> {
    norm1: WeightBias<'a>,
    qkv: WeightBias<'a>,
    proj: WeightBias<'a>,
    norm2: WeightBias<'a>,
    fc1: WeightBias<'a>,
    fc2: WeightBias<'a>,
}

struct Merger {
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
    postshuffle: bool,
}

impl Merger {
    fn load(weights: &Weights, name: &str, c: &VisionConfig, postshuffle: bool) -> Result<Self> {
        let m2 = c.spatial_merge_size * c.spatial_merge_size;
        let wide = c.hidden_size * m2;
        Ok(Self {
            norm: Norm::load(
                weights,
                &format!("{name}.norm"),
                if postshuffle { wide } else { c.hidden_size },
            )?,
            fc1: Linear::load(weights, &format!("{name}.linear_fc1"), wide, wide)?,
            fc2: Linear::load(
                weights,
                &format!("{name}.linear_fc2"),
                c.out_hidden_size,
                wide,
            )?,
            postshuffle,
        })
    }

    /// `[patches, D]` → `[patches/m², out_hidden]`; each group of m² consecutive patches is
    /// one merge window.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let wide = self.fc1.w.dim(1)?;
        let groups = n * d / wide;
        let z = if self.postshuffle {
            self.norm.forward(&x.reshape((groups, wide))?)?
        } else {
            self.norm.forward(x)?.reshape((groups, wide))?
        };
        self.fc2.forward(&gelu_erf(&self.fc1.forward(&z)?)?)
    }
}

/// What the vision tower gives the language model for one image.
pub struct VisionOutput {
    /// `[tokens, out_hidden]`: the merged image tokens.
    pub merged: Tensor,
    /// One `[tokens, out_hidden]` tensor per DeepStack level.
    pub deepstack: Vec<Tensor>,
}

/// The Qwen3-VL vision tower (transformers' `Qwen3VLVisionModel`): patch embedding, learned
/// position embedding, transformer blocks with 2-D rotary attention, the patch merger and
/// the DeepStack mergers.
pub struct VisionModel {
    config: VisionConfig,
    patch_w: Tensor,
    patch_b: Tensor,
    pos_table: Tensor,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<Merger>,
    dtype: DType,
}

impl VisionModel {
    /// Loads the weights under `prefix` (`model.visual`).
    pub fn load(weights: &Weights, config: &VisionConfig, prefix: &str) -> Result<Self> {
        let c = config;
        let d = c.hidden_size;
        let (p, t) = (c.patch_size, c.temporal_patch_size);
        let patch_w = weights
            .get(
                &format!("{prefix}.patch_embed.proj.weight"),
                &[d, c.in_channels, t, p, p],
            )?
            .reshape((d, c.in_channels * t * p * p))?;
        let patch_b = weights.get(&format!("{prefix}.patch_embed.proj.bias"), &[d])?;
        let pos_table = weights.get_f32(
            &format!("{prefix}.pos_embed.weight"),
            &[c.num_position_embeddings, d],
        )?;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = format!("{prefix}.blocks.{i}");
            blocks.push(Block {
                norm1: Norm::load(weights, &format!("{b}.norm1"), d)?,
                qkv: Linear::load(weights, &format!("{b}.attn.qkv"), 3 * d, d)?,
                proj: Linear::load(weights, &format!("{b}.attn.proj"), d, d)?,
                norm2: Norm::load(weights, &format!("{b}.norm2"), d)?,
                fc1: Linear::load(
                    weights,
                    &format!("{b}.mlp.linear_fc1"),
                    c.intermediate_size,
                    d,
                )?,
                fc2: Linear::load(
                    weights,
                    &format!("{b}.mlp.linear_fc2"),
                    d,
                    c.intermediate_size,
                )?,
            });
        }
        let merger = Merger::load(weights, &format!("{prefix}.merger"), c, false)?;
        let deepstack = (0..c.deepstack_visual_indexes.len())
            .map(|j| {
                Merger::load(
                    weights,
                    &format!("{prefix}.deepstack_merger_list.{j}"),
                    c,
                    true,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config: c.clone(),
            patch_w,
            patch_b,
            pos_table,
            blocks,
            merger,
            deepstack,
            dtype: weights.dtype(),
        })
    }

    /// The settings the model was loaded with.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// `(row, col)` of each patch in merge-window order (the order of the pixel rows).
    fn patch_coordinates(&self, gh: usize, gw: usize) -> Vec<(usize, usize)> {
        let m = self.config.spatial_merge_size;
        let mut coords = Vec::with_capacity(gh * gw);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        coords.push((bh * m + ih, bw * m + iw));
                    }
                }
            }
        }
        coords
    }

    /// The learned position table resampled (bilinear, corners aligned, f32) to the grid.
    fn position_embedding(
        &self,
        coords: &[(usize, usize)],
        gh: usize,
        gw: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let side = (self.config.num_position_embeddings as f64).sqrt().round() as usize;
        let axis = |i: usize, size: usize| -> ([usize; 2], [f32; 2]) {
            let src = (i as f32 * (side - 1) as f32) / (size.max(2) - 1) as f32;
            let f = src.floor();
            let clamp = |v: f32| (v.max(0.0) as usize).min(side - 1);
            (
                [clamp(f), clamp(f + 1.0)],
                [
                    (1.0 - (src - f).abs()).max(0.0),
                    (1.0 - (src - f - 1.0).abs()).max(0.0),
                ],
            )
        };
        let n = coords.len();
        let mut idx = [vec![0u32; n], vec![0u32; n], vec![0u32; n], vec![0u32; n]];
        let mut wts = [vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]];
        for (p, &(r, c)) in coords.iter().enumerate() {
            let (hi, hw) = axis(r, gh);
            let (wi, ww) = axis(c, gw);
            for (k, (a, b)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                idx[k][p] = (hi[a] * side + wi[b]) as u32;
                wts[k][p] = hw[a] * ww[b];
            }
        }
        let mut total: Option<Tensor> = None;
        for k in 0..4 {
            let rows = self
                .pos_table
                .index_select(&Tensor::new(idx[k].as_slice(), device)?, 0)?;
            let w = Tensor::from_vec(std::mem::take(&mut wts[k]), (n, 1), device)?;
            let term = rows.broadcast_mul(&w)?;
            total = Some(match total {
                None => term,
                Some(t) => (t + term)?,
            });
        }
        let total = total.ok_or_else(|| ModelError::Input("empty position table".into()))?;
        Ok(total.to_dtype(self.dtype)?)
    }

    /// Rotary cos/sin `[patches, head_dim]` (f32) for the 2-D patch coordinates.
    fn rotary(&self, coords: &[(usize, usize)], device: &Device) -> Result<(Tensor, Tensor)> {
        let hd = self.config.hidden_size / self.config.num_heads;
        let half = hd / 2;
        let inv: Vec<f32> = (0..half / 2)
            .map(|i| {
                let e = (2 * i) as f32 / half as f32;
                1.0f32 / self.config.rope_theta.powf(f64::from(e)) as f32
            })
            .collect();
        let q = inv.len();
        let mut angles = vec![0f32; coords.len() * hd];
        for (p, &(r, c)) in coords.iter().enumerate() {
            let row = &mut angles[p * hd..(p + 1) * hd];
            for (i, &f) in inv.iter().enumerate() {
                let (ah, aw) = (r as f32 * f, c as f32 * f);
                row[i] = ah;
                row[q + i] = aw;
                row[half + i] = ah;
                row[half + q + i] = aw;
            }
        }
        let angles = Tensor::from_vec(angles, (coords.len(), hd), device)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// The transformer blocks with tensor ops (any device and dtype): `x` `[patches, D]`,
    /// rotary `cos`/`sin` `[patches, head_dim]`. Returns the output and the DeepStack
    /// features.
    fn blocks_tensor(
        &self,
        mut x: Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let c = &self.config;
        let n = x.dim(0)?;
        let (cos, sin) = (cos.unsqueeze(0)?, sin.unsqueeze(0)?);
        let (nh, d) = (c.num_heads, c.hidden_size);
        let hd = d / nh;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let y = block.norm1.forward(&x)?;
            let qkv = block
                .qkv
                .forward(&y)?
                .reshape((n, 3, nh, hd))?
                .permute((1, 2, 0, 3))?;
            // [3, heads, patches, hd]; rotary always in f32.
            let q = rotate_half_rope(&qkv.get(0)?.to_dtype(DType::F32)?, &cos, &sin)?
                .to_dtype(self.dtype)?;
            let k = rotate_half_rope(&qkv.get(1)?.to_dtype(DType::F32)?, &cos, &sin)?
                .to_dtype(self.dtype)?;
            let v = qkv.get(2)?.contiguous()?;
            // Scaling q instead of the scores saves a pass over n² values.
            let scores = (q * scale)?.contiguous()?.matmul(&k.t()?)?;
            let probs = softmax_last_owned(scores.to_dtype(DType::F32)?)?.to_dtype(self.dtype)?;
            let attn = probs.matmul(&v)?;
            let attn = attn.transpose(0, 1)?.reshape((n, d))?;
            x = (x + block.proj.forward(&attn)?)?;
            let y = block.norm2.forward(&x)?;
            x = (&x
                + block
                    .fc2
                    .forward(&gelu_tanh_owned(block.fc1.forward(&y)?)?)?)?;
            if let Some(j) = c.deepstack_visual_indexes.iter().position(|&k| k == i) {
                deepstack.push(self.deepstack[j].forward(&x)?);
            }
        }
        Ok((x, deepstack))
    }

    /// The transformer blocks on the CPU in f32 (`None` for another device or dtype, or
    /// a tracked input): the same computation as [`Self::blocks_tensor`], with the
    /// activations kept in one buffer that each block updates in place (biases and
    /// residuals folded into the GEMMs' destinations, RoPE applied while q, k and v are
    /// split into heads, attention written straight into the layout the output
    /// projection reads).
    fn blocks_cpu(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        let c = &self.config;
        let (Some(x_view), Some(cos), Some(sin)) = (f32_view(x), f32_view(cos), f32_view(sin))
        else {
            return Ok(None);
        };
        let Some(blocks) = self
            .blocks
            .iter()
            .map(Block::views)
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let (n, d) = x.dims2()?;
        let (nh, inter) = (c.num_heads, c.intermediate_size);
        let hd = d / nh;
        let mut x_buf = x_view.to_vec();
        drop(x_view);
        let (mut y, mut attn) = (vec![0f32; n * d], vec![0f32; n * d]);
        let (mut q, mut k, mut v) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        let mut qkv = vec![0f32; n * 3 * d];
        let mut hidden = vec![0f32; n * inter];
        let scale = 1.0 / (hd as f32).sqrt();
        let eps = LN_EPS as f32;
        let split = cpu::HeadSplit {
            q_heads: nh,
            kv_heads: nh,
            head_dim: hd,
            qk_norm: None,
            rope: (&cos, &sin),
        };
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (i, b) in blocks.iter().enumerate() {
            cpu::layer_norm_rows(&x_buf, &b.norm1.w, &b.norm1.b, eps, &mut y);
            cpu::fill_rows(&mut qkv, &b.qkv.b);
            cpu::matmul_wt(&y, &b.qkv.w, d, &mut qkv, true);
            cpu::split_heads(&qkv, &split, [&mut q, &mut k, &mut v]);
            cpu::attention_heads_into(
                &q,
                &k,
                &v,
                (nh, nh),
                hd,
                scale,
                cpu::AttentionMask::None,
                &mut attn,
            );
            cpu::add_rows(&mut x_buf, &b.proj.b);
            cpu::matmul_wt(&attn, &b.proj.w, d, &mut x_buf, true);
            cpu::layer_norm_rows(&x_buf, &b.norm2.w, &b.norm2.b, eps, &mut y);
            cpu::fill_rows(&mut hidden, &b.fc1.b);
            cpu::matmul_wt(&y, &b.fc1.w, d, &mut hidden, true);
            cpu::gelu_tanh_inplace(&mut hidden);
            cpu::add_rows(&mut x_buf, &b.fc2.b);
            cpu::matmul_wt(&hidden, &b.fc2.w, inter, &mut x_buf, true);
            if let Some(j) = c.deepstack_visual_indexes.iter().position(|&k| k == i) {
                let xt = Tensor::from_slice(&x_buf, (n, d), x.device())?;
                deepstack.push(self.deepstack[j].forward(&xt)?);
            }
        }
        Ok(Some((
            Tensor::from_vec(x_buf, (n, d), x.device())?,
            deepstack,
        )))
    }

    /// Encodes one preprocessed image.
    pub fn forward(&self, image: &PreparedImage) -> Result<VisionOutput> {
        let c = &self.config;
        let device = self.patch_w.device().clone();
        let [t, gh, gw] = image.grid_thw;
        let m = c.spatial_merge_size;
        if t != 1 || gh % m != 0 || gw % m != 0 {
            return Err(ModelError::Input(format!(
                "image grid {t}×{gh}×{gw} is not one frame of whole {m}×{m} merge windows"
            )));
        }
        let row_len = self.patch_w.dim(1)?;
        if image.row_len() != row_len {
            return Err(ModelError::Input(format!(
                "patch rows have {} values, the vision tower expects {row_len}: preprocessor and model configs disagree",
                image.row_len()
            )));
        }
        let n = image.patches();
        let pixels =
            Tensor::from_slice(&image.pixel_values, (n, row_len), &device)?.to_dtype(self.dtype)?;
        let coords = self.patch_coordinates(gh, gw);
        let x = (linear(&pixels, &self.patch_w, Some(&self.patch_b))?
            + self.position_embedding(&coords, gh, gw, &device)?)?;
        let (cos, sin) = self.rotary(&coords, &device)?;
        let (x, deepstack) = match self.blocks_cpu(&x, &cos, &sin)? {
            Some(done) => done,
            None => self.blocks_tensor(x, &cos, &sin)?,
        };
        let merged = self.merger.forward(&x)?;
        Ok(VisionOutput { merged, deepstack })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::qwen3_vl::Qwen3VlConfig;
    use crate::model::testing::max_abs_diff as max_diff;

    /// The in-place CPU blocks compute what the tensor blocks compute, DeepStack
    /// features included.
    #[test]
    fn cpu_blocks_match_the_tensor_blocks() {
        for name in ["tiny-a", "tiny-b"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/qwen3vl")
                .join(name);
            let config = Qwen3VlConfig::from_file(&dir.join("config.json")).unwrap();
            let weights = Weights::open(&dir, DType::F32, &Device::Cpu).unwrap();
            let vision = VisionModel::load(&weights, &config.vision, "model.visual").unwrap();
            let (gh, gw) = (4, 6);
            let coords = vision.patch_coordinates(gh, gw);
            let d = config.vision.hidden_size;
            let x = (Tensor::arange(0f32, (gh * gw * d) as f32, &Device::Cpu)
                .unwrap()
                .reshape((gh * gw, d))
                .unwrap()
                * 0.37)
                .unwrap()
                .sin()
                .unwrap();
            let (cos, sin) = vision.rotary(&coords, &Device::Cpu).unwrap();
            let (fast, fast_ds) = vision
                .blocks_cpu(&x, &cos, &sin)
                .unwrap()
                .expect("f32 on the CPU takes the in-place path");
            let (reference, ref_ds) = vision.blocks_tensor(x, &cos, &sin).unwrap();
            let diff = max_diff(&fast, &reference);
            assert!(diff < 1e-4, "{name}: blocks off by {diff}");
            assert_eq!(fast_ds.len(), config.vision.deepstack_visual_indexes.len());
            for (f, r) in fast_ds.iter().zip(&ref_ds) {
                assert!(max_diff(f, r) < 1e-4, "{name}: DeepStack features differ");
            }
        }
    }
}
