//! Rotary position embeddings of the language model: 3-D (temporal, height, width)
//! multimodal RoPE with the config's `mrope_section`, interleaved as in Qwen3-VL.

use candle_core::{DType, Device, Result, Tensor};

use super::config::TextConfig;

/// Which of the three position components drives each of the `head_dim/2` frequencies.
pub fn frequency_components(config: &TextConfig) -> Vec<usize> {
    let half = config.head_dim / 2;
    let [_, h, w] = config.mrope_section;
    // T everywhere, then H at 1, 4, 7, … (< 3·h) and W at 2, 5, 8, … (< 3·w).
    (0..half)
        .map(|i| {
            if i % 3 == 1 && i < 3 * h {
                1
            } else if i % 3 == 2 && i < 3 * w {
                2
            } else {
                0
            }
        })
        .collect()
}

/// Precomputed inverse frequencies and their position components.
#[derive(Debug, Clone)]
pub struct TextRope {
    inv_freq: Vec<f32>,
    components: Vec<usize>,
}

impl TextRope {
    /// The `head_dim/2` inverse frequencies `1/θ^(2i/head_dim)` (computed in f32 as torch
    /// does) and the position component of each, from `config`.
    pub fn new(config: &TextConfig) -> Self {
        let d = config.head_dim;
        // torch's recipe in f32: exponent 2i/d in f32, the power rounded to f32, then 1/p.
        let inv_freq = (0..d / 2)
            .map(|i| {
                let e = (2 * i) as f32 / d as f32;
                1.0f32 / config.rope_theta.powf(f64::from(e)) as f32
            })
            .collect();
        Self {
            inv_freq,
            components: frequency_components(config),
        }
    }

    /// `cos` and `sin` of shape `[L, head_dim]` for 3-D positions `[3][L]` (`positions[c][l]`).
    pub fn cos_sin(
        &self,
        positions: &[Vec<i64>; 3],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let len = positions[0].len();
        let half = self.inv_freq.len();
        let mut angles = vec![0f32; len * half * 2];
        for l in 0..len {
            for (i, (&f, &c)) in self.inv_freq.iter().zip(&self.components).enumerate() {
                // Like transformers: position (as f32) times inverse frequency, in f32.
                let a = positions[c][l] as f32 * f;
                angles[l * 2 * half + i] = a;
                angles[l * 2 * half + half + i] = a;
            }
        }
        let angles = Tensor::from_vec(angles, (len, 2 * half), device)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }
}

/// The 3-D position ids of a sequence with at most one image, as transformers'
/// `get_rope_index` computes them: text tokens count up on all three components; the
/// image's merged grid (`grid_h × grid_w` tokens) gets (start, start+row, start+col); text
/// after the image continues from `start + max(grid_h, grid_w)`.
///
/// `image` is `(first_token, grid_h, grid_w)` in merged tokens.
pub fn position_ids(len: usize, image: Option<(usize, usize, usize)>) -> ([Vec<i64>; 3], i64) {
    let mut ids: [Vec<i64>; 3] = [
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    ];
    let mut next: i64 = 0;
    let mut l = 0;
    while l < len {
        match image {
            Some((start, gh, gw)) if l == start => {
                for r in 0..gh {
                    for c in 0..gw {
                        ids[0].push(next);
                        ids[1].push(next + r as i64);
                        ids[2].push(next + c as i64);
                    }
                }
                l += gh * gw;
                next += gh.max(gw) as i64;
            }
            _ => {
                for comp in &mut ids {
                    comp.push(next);
                }
                next += 1;
                l += 1;
            }
        }
    }
    (ids, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(section: [usize; 3]) -> TextConfig {
        TextConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: 2 * section.iter().sum::<usize>(),
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            mrope_section: section,
            attention_bias: false,
            hidden_act: "silu".into(),
            max_position_embeddings: 1024,
        }
    }

    #[test]
    fn interleaved_sections_follow_transformers() {
        // Qwen3-VL's [24, 20, 20]: H at 1, 4, …, 58; W at 2, 5, …, 59; T elsewhere.
        let comps = frequency_components(&config([24, 20, 20]));
        assert_eq!(comps.len(), 64);
        assert_eq!(&comps[..7], &[0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(comps[58], 1);
        assert_eq!(comps[59], 2);
        assert_eq!(&comps[60..], &[0, 0, 0, 0]);
        assert_eq!(comps.iter().filter(|&&c| c == 0).count(), 24);
        // Small sections drop what falls past head_dim/2: tiny-a's [2, 3, 3] gives W only twice.
        assert_eq!(
            frequency_components(&config([2, 3, 3])),
            [0, 1, 2, 0, 1, 2, 0, 1]
        );
        assert_eq!(
            frequency_components(&config([4, 2, 2])),
            [0, 1, 2, 0, 1, 2, 0, 0]
        );
    }

    #[test]
    fn positions_continue_after_the_image_from_its_larger_side() {
        // 2 text tokens, a 2×3 merged image, 2 text tokens.
        let (ids, next) = position_ids(10, Some((2, 2, 3)));
        assert_eq!(ids[0], [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(ids[1], [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(ids[2], [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(next, 7);
        let (text, next) = position_ids(3, None);
        assert_eq!(text[2], [0, 1, 2]);
        assert_eq!(next, 3);
    }
}
