//! SigLIP and fixed-resolution SigLIP 2 (`SiglipModel`, model_type `siglip`): a CLIP-family
//! dual encoder, for putting a global-only model next to an MLLM embedder on one gallery.
//!
//! The towers are `candle_transformers::models::siglip` (the vision tower without its
//! head, the text tower with its head). The vision head, multihead attention pooling
//! ("MAP": one learned probe attends to the patch tokens, then a residual MLP), is ours,
//! written from transformers' `SiglipMultiheadAttentionPoolingHead`, so one pass gives
//! the pooled embedding, the probe's attention over the patches and per-patch vectors in
//! the embedding space.
//!
//! SigLIP has no instruction-following language model, so it embeds one global view:
//! K = 0, and the fused score is GG (method.md §2–3: with no fine-grained perspectives
//! FG, GF and FF equal GG).
//!
//! **Per-patch vectors** (the similarity heatmap): patch i's vector is what the head
//! outputs when every attention head attends to patch i alone: `z_i = out_proj(v_proj(x_i))`,
//! then `z_i + mlp(layernorm(z_i))`. It lives where image and text embeddings live, so its
//! cosine with a text embedding says how much that patch alone would match the text.
//! The pooled embedding is the head applied to the attention-weighted mix of the same
//! value vectors (a different mix per attention head).
//!
//! **Preprocessing** is transformers' `SiglipImageProcessor` on its default (torchvision)
//! backend: convert to RGB (alpha composited on white), resize to `size` ignoring the
//! aspect ratio with torch's antialiased uint8 kernel (bicubic for `resample` 3, bilinear
//! for 2), then `(x − mean·255) / (std·255)`.
//!
//! **Text** is what the released tokenizers give: for `SiglipTokenizer` (SigLIP) the
//! text is canonicalised first as its `canonicalize_text` does (lower-case, ASCII
//! punctuation removed, runs of white space made one space, stripped); for the Gemma
//! tokenizer of SigLIP 2 it is lower-cased, as SigLIP 2 was trained. Then `tokenizer.json`
//! with its special tokens, padded with `pad_token_id` to `max_position_embeddings` (the
//! length SigLIP was trained at; on the side `padding_side` in tokenizer_config.json
//! names, right by default), and the text tower pools the last position.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Activation, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::siglip;
use image::RgbImage;
use serde::Deserialize;

use super::backbone::{
    Backbone, BranchTokens, EmbedInput, EmbedOptions, Embedding, ModelIdentity, VisualTokens,
};
use super::error::{ModelError, Result};
use super::perspective::{Perspective, PerspectiveSet};
use super::qwen3_vl::preprocess::{Resampler, planar_rgb, resize_planar_filtered};
use super::weights::{weight_files, weights_digest};

/// The architectures this module loads (for error messages).
pub const SIGLIP_ARCHITECTURES: &str =
    "SiglipModel (model_type siglip: SigLIP, fixed-resolution SigLIP 2)";

/// Whether `config.json` in `dir` describes a SigLIP model (`model_type` `siglip`, or a
/// `SiglipModel` architecture).
pub fn is_siglip_folder(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v.get("model_type").and_then(|m| m.as_str()) == Some("siglip")
        || v.get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("SiglipModel")))
}

/// `preprocessor_config.json` of a SigLIP model (`SiglipImageProcessor`).
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipProcessorConfig {
    /// Output size `(height, width)`.
    pub size: (usize, usize),
    /// Resize at all (otherwise the image must already have `size`).
    pub do_resize: bool,
    /// The filter: PIL's code, 2 bilinear or 3 bicubic.
    pub resample: u32,
    /// Multiply pixel levels by `rescale_factor` (1/255).
    pub do_rescale: bool,
    /// The rescale factor.
    pub rescale_factor: f64,
    /// Subtract the mean and divide by the standard deviation.
    pub do_normalize: bool,
    /// Per-channel mean (after rescaling).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (after rescaling).
    pub image_std: [f32; 3],
}

#[derive(Deserialize)]
struct RawProcessor {
    size: Option<serde_json::Value>,
    do_resize: Option<bool>,
    resample: Option<u32>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

impl SiglipProcessorConfig {
    /// transformers' defaults for a model whose tower reads `image_size` pixels a side.
    pub fn defaults(image_size: usize) -> Self {
        Self {
            size: (image_size, image_size),
            do_resize: true,
            resample: 3,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }

    /// Reads `path`; missing keys take [`Self::defaults`].
    ///
    /// # Errors
    /// [`ModelError::Io`], [`ModelError::Json`], and [`ModelError::BadConfig`] for a size
    /// that is not `{"height", "width"}`, a filter other than bilinear or bicubic, or a
    /// mean or std that is not three numbers.
    pub fn from_file(path: &Path, image_size: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let raw: RawProcessor = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            what: "a SigLIP image processor config",
            source,
        })?;
        let bad = |reason: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let mut c = Self::defaults(image_size);
        if let Some(size) = raw.size {
            let side = |k: &str| {
                size.get(k)
                    .and_then(serde_json::Value::as_u64)
                    .map(|v| v as usize)
            };
            match (side("height"), side("width")) {
                (Some(h), Some(w)) if h > 0 && w > 0 => c.size = (h, w),
                _ => return Err(bad(format!("size {size} is not {{\"height\", \"width\"}}"))),
            }
        }
        c.do_resize = raw.do_resize.unwrap_or(c.do_resize);
        c.resample = raw.resample.unwrap_or(c.resample);
        if !matches!(c.resample, 2 | 3) {
            return Err(bad(format!(
                "resample {} is not supported (2 bilinear and 3 bicubic are)",
                c.resample
            )));
        }
        c.do_rescale = raw.do_rescale.unwrap_or(c.do_rescale);
        c.rescale_factor = raw.rescale_factor.unwrap_or(c.rescale_factor);
        c.do_normalize = raw.do_normalize.unwrap_or(c.do_normalize);
        let three = |v: Option<Vec<f32>>, what: &str, default: [f32; 3]| match v {
            None => Ok(default),
            Some(v) => <[f32; 3]>::try_from(v.as_slice())
                .map_err(|_| bad(format!("{what} has {} values, not 3", v.len()))),
        };
        c.image_mean = three(raw.image_mean, "image_mean", c.image_mean)?;
        c.image_std = three(raw.image_std, "image_std", c.image_std)?;
        if c.image_std.contains(&0.0) {
            return Err(bad("image_std has a zero".into()));
        }
        Ok(c)
    }

    /// `siglip 224x224 bicubic`: the identity's preprocessing part.
    pub fn describe(&self) -> String {
        format!(
            "siglip {}x{} {}",
            self.size.0,
            self.size.1,
            if self.resample == 2 {
                "bilinear"
            } else {
                "bicubic"
            }
        )
    }
}

/// How a text is canonicalised before the tokenizer, after the released tokenizer class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCanon {
    /// `SiglipTokenizer.canonicalize_text`: lower-case (when `do_lower_case`), ASCII
    /// punctuation removed, white space collapsed and stripped.
    Siglip {
        /// Lower-case first (`do_lower_case`, default true).
        lower: bool,
    },
    /// Lower-case only (SigLIP 2's Gemma tokenizer, as SigLIP 2 was trained).
    Lower,
}

impl TextCanon {
    /// `text` as the tokenizer should see it.
    pub fn apply(self, text: &str) -> String {
        match self {
            TextCanon::Lower => text.to_lowercase(),
            TextCanon::Siglip { lower } => {
                let text = if lower {
                    text.to_lowercase()
                } else {
                    text.to_string()
                };
                let kept: String = text.chars().filter(|c| !c.is_ascii_punctuation()).collect();
                kept.split_whitespace().collect::<Vec<_>>().join(" ")
            }
        }
    }
}

/// The MAP head of the vision tower (transformers' `SiglipMultiheadAttentionPoolingHead`).
struct MapHead {
    probe: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    heads: usize,
}

/// What the head gives for one image.
struct HeadOutput {
    /// `[D]` pooled embedding.
    pooled: Tensor,
    /// `[heads, N]` the probe's attention over the patches.
    attention: Tensor,
    /// `[N, D]` per-patch vectors (see the module docs).
    per_patch: Tensor,
}

impl MapHead {
    fn load(cfg: &siglip::VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let w = att.get((3 * h, h), "in_proj_weight")?.chunk(3, 0)?;
        let b = att.get(3 * h, "in_proj_bias")?.chunk(3, 0)?;
        let lin = |i: usize| Linear::new(w[i].clone(), Some(b[i].clone()));
        Ok(Self {
            probe: vb.get((1, 1, h), "probe")?,
            q: lin(0),
            k: lin(1),
            v: lin(2),
            out: candle_nn::linear(h, h, att.pp("out_proj"))?,
            norm: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            fc1: candle_nn::linear(h, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            act: cfg.hidden_act,
            heads: cfg.num_attention_heads,
        })
    }

    fn mlp_residual(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.norm.forward(x)?)?)?,
        )?;
        x + y
    }

    /// `x`: `[N, D]` patch tokens of one image.
    fn forward(&self, x: &Tensor) -> candle_core::Result<HeadOutput> {
        let (n, d) = x.dims2()?;
        let dh = d / self.heads;
        let q = self.q.forward(&self.probe.reshape((1, d))?)?; // [1, D]
        let k = self.k.forward(x)?; // [N, D]
        let v = self.v.forward(x)?; // [N, D]
        let split = |t: &Tensor, rows: usize| -> candle_core::Result<Tensor> {
            t.reshape((rows, self.heads, dh))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (qh, kh, vh) = (split(&q, 1)?, split(&k, n)?, split(&v, n)?);
        let scores = (qh.matmul(&kh.t()?)? / (dh as f64).sqrt())?; // [H, 1, N]
        let attention = candle_nn::ops::softmax_last_dim(&scores)?;
        let mixed = attention.matmul(&vh)?; // [H, 1, dh]
        let mixed = mixed.transpose(0, 1)?.reshape((1, d))?;
        let pooled = self.mlp_residual(&self.out.forward(&mixed)?)?.squeeze(0)?;
        let per_patch = self.mlp_residual(&self.out.forward(&v)?)?;
        Ok(HeadOutput {
            pooled,
            attention: attention.squeeze(1)?,
            per_patch,
        })
    }
}

/// A SigLIP model loaded from a Hugging Face folder.
pub struct Siglip {
    dir: PathBuf,
    config: siglip::Config,
    processor: SiglipProcessorConfig,
    tokenizer: tokenizers::Tokenizer,
    canon: TextCanon,
    pad_left: bool,
    vision: siglip::VisionModel,
    head: MapHead,
    text: siglip::TextModel,
    identity: ModelIdentity,
    dtype: DType,
    device: Device,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    tokenizer_class: Option<String>,
    padding_side: Option<String>,
    do_lower_case: Option<bool>,
}

impl Siglip {
    /// Loads `config.json`, the safetensors weights, `tokenizer.json` (with
    /// `tokenizer_config.json` when present) and `preprocessor_config.json` (transformers'
    /// defaults when absent) from `dir`.
    ///
    /// # Errors
    /// [`ModelError::MissingFile`] for a missing config, weights or `tokenizer.json` (a
    /// folder with only `spiece.model` is named as such); [`ModelError::BadConfig`] for
    /// a config candle cannot read or whose towers do not meet in one space;
    /// [`ModelError::BadWeights`] for missing or misshapen tensors.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: config_path.clone(),
                what: "a SigLIP config",
                source,
            })?;
        let bad = |reason: String| ModelError::BadConfig {
            path: config_path.clone(),
            reason,
        };
        let config: siglip::Config =
            serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
        let projection = raw["text_config"]["projection_size"]
            .as_u64()
            .map(|v| v as usize)
            .unwrap_or(config.text_config.hidden_size);
        if projection != config.text_config.hidden_size
            || config.text_config.hidden_size != config.vision_config.hidden_size
        {
            return Err(bad(format!(
                "text hidden size {}, text projection {projection} and vision hidden size {} differ: the two towers would not meet in one space",
                config.text_config.hidden_size, config.vision_config.hidden_size
            )));
        }
        if raw["vision_config"]["vision_use_head"].as_bool() == Some(false) {
            return Err(bad("the vision tower has no pooling head (vision_use_head false), so it gives no image embedding".into()));
        }
        for (what, heads, width) in [
            (
                "text",
                config.text_config.num_attention_heads,
                config.text_config.hidden_size,
            ),
            (
                "vision",
                config.vision_config.num_attention_heads,
                config.vision_config.hidden_size,
            ),
        ] {
            if heads == 0 || width % heads != 0 {
                return Err(bad(format!(
                    "{what} hidden size {width} is not a multiple of its {heads} attention heads"
                )));
            }
        }

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            let why = if dir.join("spiece.model").is_file() {
                "tokenizer.json (this folder has only spiece.model; the Hub's SigLIP repos ship tokenizer.json beside it)"
            } else {
                "the tokenizer (tokenizer.json)"
            };
            return Err(ModelError::MissingFile(tok_path, why));
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: TokenizerConfig = match std::fs::read_to_string(&tc_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: tc_path.clone(),
                what: "a tokenizer config",
                source,
            })?,
            Err(_) => TokenizerConfig::default(),
        };
        let class = tc.tokenizer_class.unwrap_or_default();
        let canon = if class.starts_with("Siglip") && !class.starts_with("Siglip2") {
            TextCanon::Siglip {
                lower: tc.do_lower_case.unwrap_or(true),
            }
        } else {
            TextCanon::Lower
        };
        let pad_left = tc.padding_side.as_deref() == Some("left");

        let pp = dir.join("preprocessor_config.json");
        let processor = if pp.is_file() {
            SiglipProcessorConfig::from_file(&pp, config.vision_config.image_size)?
        } else {
            SiglipProcessorConfig::defaults(config.vision_config.image_size)
        };

        let files = weight_files(dir)?;
        let weights_error = |e: candle_core::Error| ModelError::BadWeights {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        };
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on
        // nobody truncating them while the model is loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
            .map_err(weights_error)?;
        let vision = siglip::VisionModel::new(&config.vision_config, false, vb.pp("vision_model"))
            .map_err(weights_error)?;
        let head = MapHead::load(&config.vision_config, vb.pp("vision_model").pp("head"))
            .map_err(weights_error)?;
        let text = siglip::TextModel::new(&config.text_config, vb.pp("text_model"))
            .map_err(weights_error)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "siglip".into());
        let identity = ModelIdentity {
            name,
            weights_digest: weights_digest(&files)?,
            preprocess: processor.describe(),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            processor,
            tokenizer,
            canon,
            pad_left,
            vision,
            head,
            text,
            identity,
            dtype,
            device: device.clone(),
        })
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &siglip::Config {
        &self.config
    }

    /// The image processor settings.
    pub fn processor(&self) -> &SiglipProcessorConfig {
        &self.processor
    }

    /// Prepares images with `processor` from now on; the identity (and so the embedding
    /// cache key) follows.
    pub fn set_processor(&mut self, processor: SiglipProcessorConfig) {
        self.identity.preprocess = processor.describe();
        self.processor = processor;
    }

    /// `[3, H, W]` f32 pixel values as the processor gives them (row-major, channel
    /// planes).
    ///
    /// # Errors
    /// [`ModelError::Input`] for an image without pixels, or one of the wrong size when
    /// the processor does not resize.
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(ModelError::Input("the image has no pixels".into()));
        }
        let (oh, ow) = self.processor.size;
        let planar = planar_rgb(image);
        let resized = if (oh, ow) == (h, w) {
            planar
        } else if self.processor.do_resize {
            let bilinear = self.processor.resample == 2;
            resize_planar_filtered(&planar, h, w, oh, ow, Resampler::Torch, bilinear)
        } else {
            return Err(ModelError::Input(format!(
                "the image is {w}x{h} and the processor does not resize to {ow}x{oh}"
            )));
        };
        // Rescale and normalise fused as transformers does: (x − mean/r) / (std/r).
        let r = self.processor.rescale_factor as f32;
        let (mean, std) = match (self.processor.do_rescale, self.processor.do_normalize) {
            (true, true) => (
                self.processor.image_mean.map(|m| m / r),
                self.processor.image_std.map(|s| s / r),
            ),
            (true, false) => ([0.0; 3], [1.0 / r; 3]),
            (false, true) => (self.processor.image_mean, self.processor.image_std),
            (false, false) => ([0.0; 3], [1.0; 3]),
        };
        let plane = oh * ow;
        Ok(resized
            .iter()
            .enumerate()
            .map(|(i, &v)| (f32::from(v) - mean[i / plane]) / std[i / plane])
            .collect())
    }

    /// The vision tower's patch tokens `[N, D]` (after `post_layernorm`, before the head).
    ///
    /// # Errors
    /// As [`Self::pixel_values`], and candle's.
    pub fn patch_tokens(&self, image: &RgbImage) -> Result<Tensor> {
        let (oh, ow) = self.processor.size;
        let pixels = Tensor::from_vec(self.pixel_values(image)?, (1, 3, oh, ow), &self.device)?
            .to_dtype(self.dtype)?;
        Ok(self.vision.forward(&pixels)?.squeeze(0)?)
    }

    /// Token ids of `text` as the model reads them: canonicalised, tokenised with
    /// special tokens, padded to `max_position_embeddings`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`]; [`ModelError::TooLong`] when the text needs more tokens
    /// than the model reads and `truncate` is off (with it, the text's start is kept and
    /// a warning logged).
    pub fn text_ids(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let limit = self.config.text_config.max_position_embeddings;
        let canon = self.canon.apply(text);
        let tok_error = |e: tokenizers::Error| ModelError::Tokenizer {
            path: self.dir.join("tokenizer.json"),
            reason: e.to_string(),
        };
        let with = self
            .tokenizer
            .encode(canon.as_str(), true)
            .map_err(tok_error)?;
        let mut ids = with.get_ids().to_vec();
        if ids.len() > limit {
            if !truncate {
                return Err(ModelError::TooLong {
                    tokens: ids.len(),
                    limit,
                    why: "SigLIP's max_position_embeddings".into(),
                });
            }
            // Keep the special tokens the post-processor adds around the content.
            let specials = with.get_special_tokens_mask();
            let lead = specials.iter().take_while(|&&s| s == 1).count();
            let trail = specials.iter().rev().take_while(|&&s| s == 1).count();
            let content = ids.len() - lead - trail;
            let keep = content.saturating_sub(ids.len() - limit);
            let mut cut = ids[..lead + keep].to_vec();
            cut.extend_from_slice(&ids[ids.len() - trail..]);
            tracing::warn!(
                "the text was cut from {} to {} tokens to fit SigLIP's {limit}",
                ids.len(),
                cut.len()
            );
            ids = cut;
        }
        let pad = self.config.text_config.pad_token_id;
        let padding = vec![pad; limit - ids.len().min(limit)];
        Ok(if self.pad_left {
            padding.into_iter().chain(ids).collect()
        } else {
            ids.into_iter().chain(padding).collect()
        })
    }

    /// The text embedding `[D]` (the text head's output, not normalised).
    ///
    /// # Errors
    /// As [`Self::text_ids`], and candle's.
    pub fn text_embedding(&self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        Ok(self.text.forward(&input)?.squeeze(0)?)
    }

    /// The pooled image embedding `[D]` (not normalised): `get_image_features`.
    ///
    /// # Errors
    /// As [`Self::pixel_values`], and candle's.
    pub fn image_embedding(&self, image: &RgbImage) -> Result<Tensor> {
        Ok(self.head.forward(&self.patch_tokens(image)?)?.pooled)
    }
}

fn global_only(perspectives: &PerspectiveSet) -> Result<&Perspective> {
    match perspectives.perspectives.as_slice() {
        [global] => Ok(global),
        _ => Err(ModelError::Input(format!(
            "SigLIP embeds one global view (K = 0): it has no instruction-following language model to take the {} fine-grained perspectives; use its default perspectives",
            perspectives.perspectives.len().saturating_sub(1)
        ))),
    }
}

impl Backbone for Siglip {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn default_perspectives(&self) -> PerspectiveSet {
        PerspectiveSet {
            perspectives: vec![Perspective::new("global", "")],
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.text_config.hidden_size
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn show_prompt(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
    ) -> Result<Vec<String>> {
        global_only(perspectives)?;
        let (h, w) = self.processor.size;
        Ok(vec![match (&input.image, &input.text) {
            (Some(_), _) => format!("<image resized to {w}x{h}>"),
            (None, Some(text)) => self.canon.apply(text),
            (None, None) => String::new(),
        }])
    }

    fn embed(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
    ) -> Result<Embedding> {
        let global = global_only(perspectives)?;
        match (&input.image, &input.text) {
            (Some(image), None) => {
                let patches = self.patch_tokens(image)?;
                let patches = if options.track_visual_inputs {
                    Var::from_tensor(&patches.detach())?.as_tensor().clone()
                } else {
                    patches
                };
                let out = self.head.forward(&patches)?;
                let ps = self.config.vision_config.patch_size;
                let (h, w) = self.processor.size;
                let attention = if options.attention_layers > 0 {
                    Some(
                        out.attention
                            .mean(0)?
                            .to_dtype(DType::F32)?
                            .to_vec1::<f32>()?,
                    )
                } else {
                    None
                };
                Ok(Embedding {
                    vectors: out.pooled.unsqueeze(0)?,
                    branches: vec![BranchTokens {
                        name: global.name.clone(),
                        input_ids: Vec::new(),
                        soft_positions: Vec::new(),
                        attention_to_visual: attention,
                    }],
                    visual: Some(VisualTokens {
                        grid: (h / ps, w / ps),
                        first_position: 0,
                        inputs: patches,
                        hidden: out.per_patch,
                    }),
                })
            }
            (None, Some(text)) => {
                let ids = self.text_ids(text, options.truncate)?;
                let vector = self.text_embedding(&ids)?;
                Ok(Embedding {
                    vectors: vector.unsqueeze(0)?,
                    branches: vec![BranchTokens {
                        name: global.name.clone(),
                        input_ids: ids,
                        soft_positions: Vec::new(),
                        attention_to_visual: None,
                    }],
                    visual: None,
                })
            }
            (Some(_), Some(_)) => Err(ModelError::Input(
                "SigLIP embeds an image or a text, not both in one input".into(),
            )),
            (None, None) => Err(ModelError::Input("nothing to embed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siglip_canonicalisation_matches_canonicalize_text() {
        let c = TextCanon::Siglip { lower: true };
        // Python: SiglipTokenizer.canonicalize_text("  Two CATS, on a sofa!\t(x) ")
        assert_eq!(
            c.apply("  Two CATS, on a sofa!\t(x) "),
            "two cats on a sofa x"
        );
        assert_eq!(c.apply("C'est l'été"), "cest lété");
        assert_eq!(TextCanon::Siglip { lower: false }.apply("A-B"), "AB");
        assert_eq!(TextCanon::Lower.apply("Two CATS!"), "two cats!");
    }

    #[test]
    fn processor_config_refuses_what_it_cannot_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preprocessor_config.json");
        std::fs::write(&p, r#"{"resample": 0}"#).unwrap();
        let e = SiglipProcessorConfig::from_file(&p, 224).unwrap_err();
        assert!(e.to_string().contains("resample 0"), "{e}");
        std::fs::write(&p, r#"{"size": {"shortest_edge": 224}}"#).unwrap();
        let e = SiglipProcessorConfig::from_file(&p, 224).unwrap_err();
        assert!(e.to_string().contains("height"), "{e}");
        std::fs::write(&p, r#"{"image_mean": [0.5, 0.5]}"#).unwrap();
        let e = SiglipProcessorConfig::from_file(&p, 224).unwrap_err();
        assert!(e.to_string().contains("2 values"), "{e}");
        std::fs::write(
            &p,
            r#"{"resample": 2, "size": {"height": 256, "width": 256}}"#,
        )
        .unwrap();
        let c = SiglipProcessorConfig::from_file(&p, 224).unwrap();
        assert_eq!(c.describe(), "siglip 256x256 bilinear");
    }
}
