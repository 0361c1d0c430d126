//! `config.json` of a Qwen3-VL checkpoint (Qwen3-VL-2B/4B/8B-Instruct, Qwen3-VL-Embedding).
//!
//! Both spellings of the rotary settings are read: `rope_scaling` + `rope_theta`
//! (checkpoints saved by transformers 4.x) and `rope_parameters` (transformers 5.x).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::model::error::{ModelError, Result};

/// Architectures this implementation loads.
pub const SUPPORTED_ARCHITECTURES: &str = "Qwen3VLForConditionalGeneration, Qwen3VLModel (model_type qwen3_vl); SiglipModel (model_type siglip)";

/// The vision tower's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// `depth`: number of transformer blocks of the vision tower.
    pub depth: usize,
    /// `hidden_size`: width of the vision tower's tokens.
    pub hidden_size: usize,
    /// `intermediate_size`: width of each block's MLP.
    pub intermediate_size: usize,
    /// `num_heads`: attention heads per block (`hidden_size / num_heads` must be a
    /// multiple of 4 for the 2-D rotary embedding).
    pub num_heads: usize,
    /// `in_channels`: colour channels of the pixels (default 3).
    pub in_channels: usize,
    /// `patch_size`: side of a square patch in pixels (16 for Qwen3-VL).
    pub patch_size: usize,
    /// `spatial_merge_size`: side of the window of patches merged into one language-model
    /// token (default 2, so one token per 2×2 patches).
    pub spatial_merge_size: usize,
    /// `temporal_patch_size`: frames per patch (default 2; a still image is repeated).
    pub temporal_patch_size: usize,
    /// `out_hidden_size`: width of the merged tokens handed to the language model; must
    /// equal the text `hidden_size`.
    pub out_hidden_size: usize,
    /// `num_position_embeddings`: size of the learned position table, a square number
    /// (interpolated bilinearly to the patch grid).
    pub num_position_embeddings: usize,
    /// `deepstack_visual_indexes`: vision blocks whose outputs are merged and added to the
    /// hidden states after the first language-model layers (DeepStack), in order.
    pub deepstack_visual_indexes: Vec<usize>,
    /// `hidden_act` (default `gelu_pytorch_tanh`). Read but not consulted: the blocks
    /// use tanh-approximated GELU, as every released Qwen3-VL checkpoint does.
    pub hidden_act: String,
    /// Base of the vision tower's 2-D rotary embedding: `rope_theta` or
    /// `rope_parameters.rope_theta`, default 10 000.
    pub rope_theta: f64,
}

/// The language model's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// `vocab_size`: rows of the token embedding table.
    pub vocab_size: usize,
    /// `hidden_size`: width of the language model's hidden states (and of the raw
    /// embeddings).
    pub hidden_size: usize,
    /// `intermediate_size`: width of each layer's SwiGLU MLP.
    pub intermediate_size: usize,
    /// `num_hidden_layers`: number of decoder layers.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`: query heads per layer.
    pub num_attention_heads: usize,
    /// `num_key_value_heads`: key/value heads per layer (grouped-query attention; defaults
    /// to `num_attention_heads` and must divide it).
    pub num_key_value_heads: usize,
    /// `head_dim`: width of one attention head (default `hidden_size /
    /// num_attention_heads`).
    pub head_dim: usize,
    /// `rms_norm_eps`: epsilon of the RMS norms (default 1e-6).
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding: `rope_theta`, or `rope_theta` inside
    /// `rope_parameters`/`rope_scaling`, default 500 000.
    pub rope_theta: f64,
    /// Frequencies driven by the temporal, height and width position; Qwen3-VL always
    /// interleaves them (T, H, W, T, H, W, …), as transformers does whatever the config says.
    pub mrope_section: [usize; 3],
    /// `attention_bias`: whether the q, k, v and o projections have biases (default
    /// false).
    pub attention_bias: bool,
    /// `hidden_act` (default `silu`). Read but not consulted: the MLP is always SwiGLU, as
    /// in every released Qwen3-VL checkpoint.
    pub hidden_act: String,
    /// `max_position_embeddings`: the longest sequence the model was made for (default
    /// 262 144, Qwen3-VL's).
    pub max_position_embeddings: usize,
}

/// A whole Qwen3-VL config.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3VlConfig {
    /// The language model's settings (`text_config`).
    pub text: TextConfig,
    /// The vision tower's settings (`vision_config`).
    pub vision: VisionConfig,
    /// `image_token_id`: id of `<|image_pad|>`, the placeholder expanded to one token per
    /// merged image token.
    pub image_token_id: u32,
    /// `video_token_id`: id of `<|video_pad|>` (videos are not supported; read for
    /// completeness).
    pub video_token_id: u32,
    /// `vision_start_token_id`: id of `<|vision_start|>`, written before the image tokens.
    pub vision_start_token_id: u32,
    /// `vision_end_token_id`: id of `<|vision_end|>`, written after the image tokens.
    pub vision_end_token_id: u32,
    /// `tie_word_embeddings` (top level, else in `text_config`; default false): whether
    /// the output head shares the input embeddings. Embedding needs no output head.
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct RawVision {
    depth: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_heads: usize,
    #[serde(default = "three")]
    in_channels: usize,
    patch_size: usize,
    #[serde(default = "two")]
    spatial_merge_size: usize,
    #[serde(default = "two")]
    temporal_patch_size: usize,
    out_hidden_size: usize,
    num_position_embeddings: usize,
    #[serde(default)]
    deepstack_visual_indexes: Vec<usize>,
    #[serde(default = "gelu_tanh")]
    hidden_act: String,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    rope_theta: Option<f64>,
}

#[derive(Deserialize)]
struct RawText {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "silu")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
}

fn default_max_positions() -> usize {
    262_144
}

#[derive(Deserialize)]
struct RawConfig {
    text_config: Option<RawText>,
    vision_config: Option<RawVision>,
    image_token_id: Option<u32>,
    video_token_id: Option<u32>,
    vision_start_token_id: Option<u32>,
    vision_end_token_id: Option<u32>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-6
}
fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn silu() -> String {
    "silu".into()
}

impl Qwen3VlConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config JSON; `path` is only used in error messages.
    pub fn from_json(json: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(json).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            what: "a model config",
            source,
        })?;
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let archs: Vec<&str> = value
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let known_arch = archs.iter().any(|a| a.starts_with("Qwen3VL"));
        if !(model_type == "qwen3_vl" || known_arch) {
            let found = if model_type.is_empty() {
                archs.join(", ")
            } else {
                model_type.to_string()
            };
            return Err(ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                found: if found.is_empty() {
                    "(none given)".into()
                } else {
                    found
                },
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
        if value.get("vision_config").is_none_or(Value::is_null) {
            return Err(ModelError::MissingVisionConfig(path.to_path_buf()));
        }
        let raw: RawConfig = serde_json::from_value(value).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            what: "a Qwen3-VL config",
            source,
        })?;
        let bad = |reason: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let rt = raw
            .text_config
            .ok_or_else(|| bad("no `text_config`".into()))?;
        let rv = raw
            .vision_config
            .ok_or(ModelError::MissingVisionConfig(path.to_path_buf()))?;

        let rope = rt.rope_parameters.as_ref().or(rt.rope_scaling.as_ref());
        let rope_theta = rt
            .rope_theta
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(500_000.0);
        let section: Vec<usize> = rope
            .and_then(|r| r.get("mrope_section"))
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_else(|| vec![24, 20, 20]);
        let mrope_section: [usize; 3] = section.as_slice().try_into().map_err(|_| {
            bad(format!(
                "mrope_section must have 3 entries, got {section:?}"
            ))
        })?;
        let head_dim = rt
            .head_dim
            .unwrap_or(rt.hidden_size / rt.num_attention_heads.max(1));
        let text = TextConfig {
            vocab_size: rt.vocab_size,
            hidden_size: rt.hidden_size,
            intermediate_size: rt.intermediate_size,
            num_hidden_layers: rt.num_hidden_layers,
            num_attention_heads: rt.num_attention_heads,
            num_key_value_heads: rt.num_key_value_heads.unwrap_or(rt.num_attention_heads),
            head_dim,
            rms_norm_eps: rt.rms_norm_eps,
            rope_theta,
            mrope_section,
            attention_bias: rt.attention_bias,
            hidden_act: rt.hidden_act,
            max_position_embeddings: rt.max_position_embeddings,
        };
        let vision_theta = rv
            .rope_theta
            .or_else(|| {
                rv.rope_parameters
                    .as_ref()
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let vision = VisionConfig {
            depth: rv.depth,
            hidden_size: rv.hidden_size,
            intermediate_size: rv.intermediate_size,
            num_heads: rv.num_heads,
            in_channels: rv.in_channels,
            patch_size: rv.patch_size,
            spatial_merge_size: rv.spatial_merge_size,
            temporal_patch_size: rv.temporal_patch_size,
            out_hidden_size: rv.out_hidden_size,
            num_position_embeddings: rv.num_position_embeddings,
            deepstack_visual_indexes: rv.deepstack_visual_indexes,
            hidden_act: rv.hidden_act,
            rope_theta: vision_theta,
        };
        let missing_id = |what: &str| bad(format!("no `{what}`"));
        let config = Self {
            image_token_id: raw
                .image_token_id
                .ok_or_else(|| missing_id("image_token_id"))?,
            video_token_id: raw
                .video_token_id
                .ok_or_else(|| missing_id("video_token_id"))?,
            vision_start_token_id: raw
                .vision_start_token_id
                .ok_or_else(|| missing_id("vision_start_token_id"))?,
            vision_end_token_id: raw
                .vision_end_token_id
                .ok_or_else(|| missing_id("vision_end_token_id"))?,
            tie_word_embeddings: raw
                .tie_word_embeddings
                .or(rt.tie_word_embeddings)
                .unwrap_or(false),
            text,
            vision,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text;
        let v = &self.vision;
        if t.num_attention_heads == 0 || t.num_key_value_heads == 0 {
            return Err("attention head counts must be positive".into());
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if !t.head_dim.is_multiple_of(2) || t.mrope_section.iter().sum::<usize>() != t.head_dim / 2
        {
            return Err(format!(
                "mrope_section {:?} must sum to head_dim/2 = {}",
                t.mrope_section,
                t.head_dim / 2
            ));
        }
        if v.num_heads == 0 || !v.hidden_size.is_multiple_of(v.num_heads) {
            return Err(format!(
                "vision hidden_size {} is not a multiple of num_heads {}",
                v.hidden_size, v.num_heads
            ));
        }
        if !(v.hidden_size / v.num_heads).is_multiple_of(4) {
            return Err("vision head dim must be a multiple of 4 (2-D rotary)".into());
        }
        let side = (v.num_position_embeddings as f64).sqrt().round() as usize;
        if side * side != v.num_position_embeddings {
            return Err(format!(
                "num_position_embeddings {} is not a square",
                v.num_position_embeddings
            ));
        }
        if let Some(&i) = v.deepstack_visual_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(format!(
                "deepstack index {i} is beyond the vision depth {}",
                v.depth
            ));
        }
        if v.deepstack_visual_indexes.len() > t.num_hidden_layers {
            return Err("more DeepStack levels than language layers".into());
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(format!(
                "vision out_hidden_size {} differs from the text hidden_size {}",
                v.out_hidden_size, t.hidden_size
            ));
        }
        Ok(())
    }
}
