//! Qwen3-VL assembled: tokenizer, image processor, vision tower and language model, with
//! the embedding models' prompt format and perspective branches over a shared prefix.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use image::RgbImage;

use super::config::Qwen3VlConfig;
use super::preprocess::{ImageProcessorConfig, PreparedImage, PreprocessProfile, preprocess_with};
use super::rope::{TextRope, position_ids};
use super::text::{Injection, KvCache, RunOptions, TextModel};
use super::vision::VisionModel;
use crate::model::backbone::{
    Backbone, BranchTokens, EmbedInput, EmbedOptions, Embedding, ModelIdentity, VisualTokens,
};
use crate::model::error::{ModelError, Result};
use crate::model::perspective::{Perspective, PerspectiveSet};
use crate::model::weights::{Weights, weights_digest};

/// The embedding models' default system instruction (Qwen3-VL-Embedding's `Qwen3VLEmbedder`).
pub const DEFAULT_SYSTEM_INSTRUCTION: &str = "Represent the user's input.";

/// Placeholder id written into `input_ids` where a soft-prompt vector sits.
pub const SOFT_TOKEN_PLACEHOLDER: u32 = u32::MAX;

/// A full forward pass over one sequence, for parity checks and explanations.
pub struct SequenceOutput {
    /// Final-normed hidden states `[L, hidden]`.
    pub hidden: Tensor,
    /// Outputs of every decoder layer before DeepStack additions, when asked for.
    pub layer_outputs: Vec<Tensor>,
    /// Attention probabilities `[heads, L, L]` of the layers asked for.
    pub attentions: Vec<(usize, Tensor)>,
    /// The merged image tokens and DeepStack features, when there was an image.
    pub vision: Option<(Tensor, Vec<Tensor>)>,
    /// The 3-D position ids.
    pub position_ids: [Vec<i64>; 3],
}

/// The profile a folder gets by default: [`PreprocessProfile::EMBEDDER`] for a
/// Qwen3-VL-Embedding release (the folder's name, or for a Hugging Face cache snapshot
/// `models--Qwen--Qwen3-VL-Embedding-2B/snapshots/<commit>` the repo's, or an
/// `architectures` entry of config.json, says "Embedding"), else the processor's.
pub fn default_profile(dir: &Path) -> PreprocessProfile {
    let says_embedding = |s: &str| s.to_ascii_lowercase().contains("embedding");
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut names: Vec<String> = name(dir).into_iter().collect();
    if let Some(parent) = dir.parent()
        && name(parent).as_deref() == Some("snapshots")
        && let Some(repo) = parent.parent().and_then(name)
    {
        names.push(repo);
    }
    let archs = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("architectures").cloned())
        .map(|a| a.to_string())
        .unwrap_or_default();
    if names.iter().any(|n| says_embedding(n)) || says_embedding(&archs) {
        PreprocessProfile::EMBEDDER
    } else {
        PreprocessProfile::PROCESSOR
    }
}

/// `max_length` of the Qwen3-VL-Embedding repository's `Qwen3VLEmbedder`: the most
/// tokens it embeds.
const EMBEDDER_MAX_LENGTH: usize = 8192;

/// A Qwen3-VL checkpoint (Qwen3-VL-Instruct or Qwen3-VL-Embedding) used as an embedding
/// backbone: last-token pooling of the final-normed hidden state after each perspective's
/// suffix (method.md §1), as Qwen3-VL-Embedding's `Qwen3VLEmbedder` pools.
pub struct Qwen3Vl {
    dir: PathBuf,
    config: Qwen3VlConfig,
    /// How images are resized ([`Qwen3Vl::set_preprocess`]).
    profile: PreprocessProfile,
    processor: ImageProcessorConfig,
    /// `None` for random-weight benchmark models: see [`synthetic_tokens`].
    tokenizer: Option<tokenizers::Tokenizer>,
    vision: VisionModel,
    text: TextModel,
    rope: TextRope,
    identity: ModelIdentity,
    device: Device,
    system_instruction: String,
}

impl Qwen3Vl {
    /// Loads a Hugging Face folder: `config.json`, weights, `tokenizer.json`,
    /// `preprocessor_config.json`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = Qwen3VlConfig::from_file(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::MissingFile(
                tok_path,
                "the tokenizer (tokenizer.json)",
            ));
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
        let pp = dir.join("preprocessor_config.json");
        let processor = if pp.is_file() {
            ImageProcessorConfig::from_file(&pp)?
        } else {
            ImageProcessorConfig::default()
        };
        if processor.patch_size != config.vision.patch_size
            || processor.merge_size != config.vision.spatial_merge_size
            || processor.temporal_patch_size != config.vision.temporal_patch_size
        {
            return Err(ModelError::BadConfig {
                path: pp,
                reason: "patch, merge or temporal size differs from config.json's vision_config"
                    .into(),
            });
        }
        let weights = Weights::open(dir, dtype, device)?;
        let (vision_prefix, text_prefix) =
            if weights.contains("model.language_model.embed_tokens.weight") {
                ("model.visual", "model.language_model")
            } else {
                ("visual", "language_model")
            };
        let vision = VisionModel::load(&weights, &config.vision, vision_prefix)?;
        let text = TextModel::load(&weights, &config.text, text_prefix)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "qwen3-vl".into());
        let profile = default_profile(dir);
        let identity = ModelIdentity {
            name,
            weights_digest: weights_digest(&weights.files())?,
            preprocess: profile.describe(&processor),
        };
        tracing::info!(
            "{}: images are prepared with the {} profile",
            dir.display(),
            identity.preprocess
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            rope: TextRope::new(&config.text),
            config,
            profile,
            processor,
            tokenizer: Some(tokenizer),
            vision,
            text,
            identity,
            device: device.clone(),
            system_instruction: DEFAULT_SYSTEM_INSTRUCTION.into(),
        })
    }

    /// A model with this configuration and random weights, for speed measurements at a real
    /// size without its checkpoint. Text is cut into word-like pieces instead of real
    /// tokens (there is no tokenizer), so token counts are close to, not equal to, a BPE's.
    pub fn random(
        config: Qwen3VlConfig,
        processor: ImageProcessorConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let weights = Weights::random(dtype, device);
        let preprocess = PreprocessProfile::PROCESSOR.describe(&processor);
        let vision = VisionModel::load(&weights, &config.vision, "model.visual")?;
        let text = TextModel::load(&weights, &config.text, "model.language_model")?;
        Ok(Self {
            dir: PathBuf::from("(random weights)"),
            rope: TextRope::new(&config.text),
            config,
            processor,
            tokenizer: None,
            vision,
            text,
            identity: ModelIdentity {
                name: "random".into(),
                weights_digest: "random".into(),
                preprocess,
            },
            profile: PreprocessProfile::PROCESSOR,
            device: device.clone(),
            system_instruction: DEFAULT_SYSTEM_INSTRUCTION.into(),
        })
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &Qwen3VlConfig {
        &self.config
    }

    /// The folder the model was loaded from (`(random weights)` for a random model).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image processor's settings (`preprocessor_config.json`, or Qwen3-VL's defaults
    /// when the folder has none).
    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let Some(tokenizer) = &self.tokenizer else {
            return Ok(synthetic_tokens(text, &self.config));
        };
        let enc = tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of token ids (the inverse of [`Qwen3Vl::tokenize`], for a truncated
    /// text); synthetic-token models give an empty string.
    fn detokenize(&self, ids: &[u32]) -> Result<String> {
        let Some(tokenizer) = &self.tokenizer else {
            return Ok(String::new());
        };
        tokenizer
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                reason: e.to_string(),
            })
    }

    /// Resizes, normalises and patches `image` with this model's processor settings
    /// ([`preprocess_with`]); [`ModelError::Input`] for an empty image or an aspect ratio
    /// over 200.
    pub fn prepare_image(&self, image: &RgbImage) -> Result<PreparedImage> {
        preprocess_with(image, &self.processor, self.profile)
    }

    /// The preprocessing profile images are prepared with.
    pub fn preprocess_profile(&self) -> PreprocessProfile {
        self.profile
    }

    /// Prepares images with `profile` from now on; the identity (and so the embedding
    /// cache key) follows.
    pub fn set_preprocess(&mut self, profile: PreprocessProfile) {
        self.profile = profile;
        self.identity.preprocess = profile.describe(&self.processor);
    }

    /// Expands the single image placeholder to one id per merged image token.
    fn expand_image_tokens(
        &self,
        ids: Vec<u32>,
        image: Option<&PreparedImage>,
    ) -> Result<Vec<u32>> {
        let pad = self.config.image_token_id;
        let count = ids.iter().filter(|&&t| t == pad).count();
        match image {
            None if count == 0 => Ok(ids),
            None => Err(ModelError::Input(
                "the prompt has image tokens but no image was given".into(),
            )),
            Some(img) => {
                if count != 1 {
                    return Err(ModelError::Input(format!(
                        "the prompt must hold one image placeholder, found {count}"
                    )));
                }
                let m = self.config.vision.spatial_merge_size;
                let n = img.patches() / (m * m);
                Ok(ids
                    .into_iter()
                    .flat_map(|t| if t == pad { vec![pad; n] } else { vec![t] })
                    .collect())
            }
        }
    }

    /// The contiguous run of image tokens: `(start, len)`.
    fn image_run(&self, ids: &[u32]) -> Result<Option<(usize, usize)>> {
        let pad = self.config.image_token_id;
        let Some(start) = ids.iter().position(|&t| t == pad) else {
            return Ok(None);
        };
        let len = ids[start..].iter().take_while(|&&t| t == pad).count();
        if ids[start + len..].contains(&pad) {
            return Err(ModelError::Input(
                "only one image per input is supported".into(),
            ));
        }
        Ok(Some((start, len)))
    }

    /// Input embeddings of `ids` with the image tokens replaced by `visual` `[n, hidden]`.
    fn input_embeddings(
        &self,
        ids: &[u32],
        run: Option<(usize, usize)>,
        visual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.text.embed_tokens(ids)?;
        match (run, visual) {
            (Some((start, len)), Some(v)) => {
                if v.dim(0)? != len {
                    return Err(ModelError::Input(format!(
                        "{len} image tokens in the prompt but the image gives {} features",
                        v.dim(0)?
                    )));
                }
                let mut parts = Vec::with_capacity(3);
                if start > 0 {
                    parts.push(embeds.narrow(0, 0, start)?);
                }
                parts.push(v.to_dtype(embeds.dtype())?);
                if start + len < ids.len() {
                    parts.push(embeds.narrow(0, start + len, ids.len() - start - len)?);
                }
                Ok(Tensor::cat(&parts, 0)?)
            }
            _ => Ok(embeds),
        }
    }

    fn merged_grid(&self, image: &PreparedImage) -> (usize, usize) {
        let m = self.config.vision.spatial_merge_size;
        (image.grid_thw[1] / m, image.grid_thw[2] / m)
    }

    /// Runs one whole token sequence (image placeholder already expanded), as transformers'
    /// forward does.
    pub fn forward_sequence(
        &self,
        ids: &[u32],
        image: Option<&PreparedImage>,
        capture_attention: &[usize],
        keep_layer_outputs: bool,
    ) -> Result<SequenceOutput> {
        let run = self.image_run(ids)?;
        let vision = match (image, run) {
            (Some(img), Some(_)) => Some(self.vision.forward(img)?),
            (None, None) => None,
            _ => {
                return Err(ModelError::Input(
                    "image tokens and image must come together".into(),
                ));
            }
        };
        let embeds = self.input_embeddings(ids, run, vision.as_ref().map(|v| &v.merged))?;
        let grid = image.map(|img| self.merged_grid(img));
        let (positions, _) = position_ids(
            ids.len(),
            run.zip(grid).map(|((s, _), (gh, gw))| (s, gh, gw)),
        );
        let (cos, sin) = self
            .rope
            .cos_sin(&positions, embeds.dtype(), &self.device)?;
        let injection = match (&vision, run) {
            (Some(v), Some((start, _))) => Some(Injection {
                start,
                features: &v.deepstack,
            }),
            _ => None,
        };
        let out = self.text.run(
            &embeds.unsqueeze(0)?,
            &cos,
            &sin,
            None,
            injection.as_ref(),
            &RunOptions {
                capture_attention,
                keep_layer_outputs,
                mask: None,
                branches: None,
            },
        )?;
        Ok(SequenceOutput {
            hidden: out.hidden.squeeze(0)?,
            layer_outputs: out
                .layer_outputs
                .into_iter()
                .map(|t| t.squeeze(0))
                .collect::<candle_core::Result<_>>()?,
            attentions: out
                .attentions
                .into_iter()
                .map(|(l, t)| Ok((l, t.squeeze(0)?)))
                .collect::<Result<_>>()?,
            vision: vision.map(|v| (v.merged, v.deepstack)),
            position_ids: positions,
        })
    }

    /// The prompt of the embedding models (Qwen3-VL-Embedding), split into the shared
    /// content prefix and one suffix per perspective:
    ///
    /// ```text
    /// <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n[<|vision_start|><|image_pad|><|vision_end|>][text]
    ///     ── prefix ends here; each perspective appends ──
    /// [\n{instruction}]<|im_end|>\n<|im_start|>assistant\n[soft tokens]
    /// ```
    ///
    /// The global perspective with an empty instruction is exactly the released format.
    pub fn prompt_text(&self, input: &EmbedInput, perspective: &Perspective) -> (String, String) {
        let mut prefix = format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n",
            self.system_instruction
        );
        if input.image.is_some() {
            prefix.push_str("<|vision_start|><|image_pad|><|vision_end|>");
        }
        match &input.text {
            Some(t) => prefix.push_str(t),
            None if input.image.is_none() => prefix.push_str("NULL"),
            None => {}
        }
        let mut suffix = String::new();
        if !perspective.instruction.trim().is_empty() {
            suffix.push('\n');
            suffix.push_str(perspective.instruction.trim());
        }
        suffix.push_str("<|im_end|>\n<|im_start|>assistant\n");
        (prefix, suffix)
    }

    fn soft_vectors(
        &self,
        p: &Perspective,
        given: Option<&Option<Tensor>>,
    ) -> Result<Option<Tensor>> {
        if p.soft_tokens == 0 {
            return Ok(None);
        }
        let h = self.config.text.hidden_size;
        match given.and_then(|g| g.as_ref()) {
            Some(t) if t.dims() == [p.soft_tokens, h] => Ok(Some(t.clone())),
            Some(t) => Err(ModelError::Input(format!(
                "perspective {:?}: soft prompt has shape {:?}, expected [{}, {h}]",
                p.name,
                t.dims(),
                p.soft_tokens
            ))),
            None => Err(ModelError::Input(format!(
                "perspective {:?} asks for {} soft tokens but no trained soft prompt was given",
                p.name, p.soft_tokens
            ))),
        }
    }
}

/// Word-like pieces for models without a tokenizer (random-weight benchmarks): special
/// tokens, runs of letters or digits with their leading space, single punctuation marks and
/// runs of newlines each become one id; the image markers get the config's ids.
fn synthetic_tokens(text: &str, config: &Qwen3VlConfig) -> Vec<u32> {
    let specials = [
        ("<|vision_start|>", Some(config.vision_start_token_id)),
        ("<|vision_end|>", Some(config.vision_end_token_id)),
        ("<|image_pad|>", Some(config.image_token_id)),
        ("<|im_start|>", None),
        ("<|im_end|>", None),
    ];
    let vocab = config.text.vocab_size.max(2) as u64;
    let id_of = |piece: &str| -> u32 {
        let hash = piece.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % (vocab - 1)) as u32
    };
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some((s, id)) = specials.iter().find(|(s, _)| rest.starts_with(*s)) {
            out.push(id.unwrap_or_else(|| id_of(s)));
            rest = &rest[s.len()..];
            continue;
        }
        let mut chars = rest.char_indices();
        let (_, first) = chars.next().unwrap_or((0, ' '));
        let word = |c: char| c.is_alphanumeric();
        let end = if first == '\n' {
            rest.find(|c: char| c != '\n').unwrap_or(rest.len())
        } else if word(first) || (first == ' ' && rest[1..].starts_with(word)) {
            let start = first.len_utf8();
            start
                + rest[start..]
                    .find(|c: char| !word(c))
                    .unwrap_or(rest.len() - start)
        } else {
            first.len_utf8()
        };
        out.push(id_of(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

/// How the 1+K perspective branches share the content prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchStrategy {
    /// One pass over `[prefix | suffix_0 | … | suffix_K]` with a block mask: each suffix
    /// sees the prefix and itself. The weights are read once, as for a single embedding.
    Packed,
    /// The prefix once, its keys and values cached, then the suffixes as one batch attending
    /// to the cache. Reads the language model's weights twice; the cache can be kept to
    /// embed new perspectives of the same input later.
    CachedPrefix,
}

/// Everything about one input that all perspectives share.
struct Prefix {
    ids: Vec<u32>,
    /// Each perspective's suffix tokens (tokenised once, for the length check and the run).
    suffix_ids: Vec<Vec<u32>>,
    run: Option<(usize, usize)>,
    grid: Option<(usize, usize)>,
    vision_deepstack: Vec<Tensor>,
    visual_inputs: Option<Tensor>,
    embeds: Tensor,
    positions: [Vec<i64>; 3],
    next_position: i64,
}

impl Qwen3Vl {
    /// The most tokens one branch (prompt, image tokens, text and perspective suffix) may
    /// hold: `max_position_embeddings`, and at most the 8,192 of `Qwen3VLEmbedder`'s
    /// `max_length` (the released embedder's own cap).
    pub fn max_tokens(&self) -> (usize, String) {
        let positions = self.config.text.max_position_embeddings;
        if positions > EMBEDDER_MAX_LENGTH {
            (
                EMBEDDER_MAX_LENGTH,
                "Qwen3-VL-Embedding's max_length".into(),
            )
        } else {
            (positions, "max_position_embeddings in config.json".into())
        }
    }

    fn prefix(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
    ) -> Result<Prefix> {
        let prepared = input
            .image
            .as_ref()
            .map(|img| self.prepare_image(img))
            .transpose()?;
        // Every perspective's suffix, tokenised once: the longest decides the length check,
        // and the branches run these ids.
        let mut suffix_ids = Vec::with_capacity(perspectives.perspectives.len());
        let mut suffix_max = 0;
        for p in &perspectives.perspectives {
            let (_, suffix_text) = self.prompt_text(input, p);
            let ids = self.tokenize(&suffix_text)?;
            suffix_max = suffix_max.max(ids.len() + p.soft_tokens);
            suffix_ids.push(ids);
        }
        // All perspectives share the prefix; tokenise it once, and check its length before
        // anything as large as the sequence is allocated.
        let (prefix_text, _) = self.prompt_text(input, &perspectives.perspectives[0]);
        let mut ids = self.expand_image_tokens(self.tokenize(&prefix_text)?, prepared.as_ref())?;
        let (limit, why) = self.max_tokens();
        if ids.len() + suffix_max > limit {
            let tokens = ids.len() + suffix_max;
            let Some(text) = input.text.as_deref().filter(|_| options.truncate) else {
                return Err(ModelError::TooLong { tokens, limit, why });
            };
            let text_ids = self.tokenize(text)?;
            let keep = text_ids.len().saturating_sub(tokens - limit);
            let cut = self.detokenize(&text_ids[..keep])?;
            let shorter = EmbedInput {
                text: Some(cut),
                ..input.clone()
            };
            let (prefix_text, _) = self.prompt_text(&shorter, &perspectives.perspectives[0]);
            ids = self.expand_image_tokens(self.tokenize(&prefix_text)?, prepared.as_ref())?;
            // Re-tokenising the cut text may merge differently: cut the ids themselves.
            if ids.len() + suffix_max > limit {
                return Err(ModelError::TooLong {
                    tokens: ids.len() + suffix_max,
                    limit,
                    why,
                });
            }
            tracing::warn!(
                "the text was cut from {} to {keep} tokens to fit the model's {limit} ({why})",
                text_ids.len()
            );
        }
        let run = self.image_run(&ids)?;
        let started = std::time::Instant::now();
        let vision = prepared
            .as_ref()
            .map(|img| self.vision.forward(img))
            .transpose()?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "vision tower");
        let visual_inputs = match &vision {
            Some(v) if options.track_visual_inputs => {
                Some(Var::from_tensor(&v.merged)?.as_tensor().clone())
            }
            Some(v) => Some(v.merged.clone()),
            None => None,
        };
        let embeds = self.input_embeddings(&ids, run, visual_inputs.as_ref())?;
        let grid = prepared.as_ref().map(|img| self.merged_grid(img));
        let (positions, next_position) = position_ids(
            ids.len(),
            run.zip(grid).map(|((s, _), (gh, gw))| (s, gh, gw)),
        );
        Ok(Prefix {
            ids,
            suffix_ids,
            run,
            grid,
            vision_deepstack: vision.map(|v| v.deepstack).unwrap_or_default(),
            visual_inputs,
            embeds,
            positions,
            next_position,
        })
    }

    /// Token ids and input embeddings `[len, hidden]` of each perspective's suffix, from
    /// the ids [`Self::prefix`] tokenised.
    fn suffixes(
        &self,
        suffix_ids: &[Vec<u32>],
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
        dtype: DType,
    ) -> Result<Vec<(Vec<u32>, Tensor)>> {
        let mut out = Vec::with_capacity(perspectives.perspectives.len());
        for (i, (p, ids)) in perspectives.perspectives.iter().zip(suffix_ids).enumerate() {
            let ids = ids.clone();
            let mut parts = vec![self.text.embed_tokens(&ids)?];
            if let Some(s) = self.soft_vectors(p, options.soft_prompts.get(i))? {
                parts.push(s.to_dtype(dtype)?);
            }
            out.push((ids, Tensor::cat(&parts, 0)?));
        }
        Ok(out)
    }

    /// Embeds `input` under every perspective with the chosen branch strategy (both give
    /// the same vectors as running each branch's full sequence).
    pub fn embed_with(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
        strategy: BranchStrategy,
    ) -> Result<Embedding> {
        perspectives.validate().map_err(ModelError::Input)?;
        let prefix = self.prefix(input, perspectives, options)?;
        let dtype = prefix.embeds.dtype();
        let suffixes = self.suffixes(&prefix.suffix_ids, perspectives, options, dtype)?;
        let lengths: Vec<usize> = suffixes
            .iter()
            .map(|(_, e)| e.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let lp = prefix.ids.len();
        let n_layers = self.config.text.num_hidden_layers;
        let capture: Vec<usize> =
            (n_layers.saturating_sub(options.attention_layers)..n_layers).collect();
        let injection = prefix.run.map(|(start, _)| Injection {
            start,
            features: &prefix.vision_deepstack,
        });
        let started = std::time::Instant::now();

        // For each branch: its last hidden state, and its attention rows [layers][heads, keys]
        // over the prefix; plus the prefix's final hidden states.
        let (pooled, attention_rows, prefix_hidden): (Vec<Tensor>, Vec<Vec<Tensor>>, Tensor) =
            match strategy {
                BranchStrategy::Packed => {
                    let mut parts = vec![prefix.embeds.clone()];
                    let mut positions = prefix.positions.clone();
                    let mut offsets = Vec::with_capacity(lengths.len());
                    let mut at = lp;
                    for ((_, e), &len) in suffixes.iter().zip(&lengths) {
                        parts.push(e.clone());
                        for comp in &mut positions {
                            comp.extend((0..len as i64).map(|i| prefix.next_position + i));
                        }
                        offsets.push(at);
                        at += len;
                    }
                    let embeds = Tensor::cat(&parts, 0)?.unsqueeze(0)?;
                    let (cos, sin) = self.rope.cos_sin(&positions, dtype, &self.device)?;
                    // The branch mask is built a block of rows at a time on the CPU path
                    // (no [T, T] buffer), densely on the tensor path.
                    let out = self.text.run(
                        &embeds,
                        &cos,
                        &sin,
                        None,
                        injection.as_ref(),
                        &RunOptions {
                            capture_attention: &capture,
                            keep_layer_outputs: false,
                            mask: None,
                            branches: Some((lp, &lengths)),
                        },
                    )?;
                    let hidden = out.hidden.squeeze(0)?;
                    let mut pooled = Vec::with_capacity(lengths.len());
                    let mut rows = Vec::with_capacity(lengths.len());
                    for (&o, &len) in offsets.iter().zip(&lengths) {
                        let last = o + len - 1;
                        pooled.push(hidden.get(last)?);
                        rows.push(
                            out.attentions
                                .iter()
                                .map(|(_, p)| {
                                    Ok(p.get(0)?
                                        .narrow(1, last, 1)?
                                        .squeeze(1)?
                                        .narrow(1, 0, lp)?)
                                })
                                .collect::<Result<Vec<_>>>()?,
                        );
                    }
                    (pooled, rows, hidden.narrow(0, 0, lp)?)
                }
                BranchStrategy::CachedPrefix => {
                    let (cos, sin) = self.rope.cos_sin(&prefix.positions, dtype, &self.device)?;
                    let pre = self.text.run(
                        &prefix.embeds.unsqueeze(0)?,
                        &cos,
                        &sin,
                        None,
                        injection.as_ref(),
                        &RunOptions::default(),
                    )?;
                    let cache: KvCache = pre.cache;
                    // The suffixes as one right-padded batch attending to the cached prefix.
                    let h = self.config.text.hidden_size;
                    let max_len = lengths.iter().copied().max().unwrap_or(0);
                    let rows_in = suffixes
                        .iter()
                        .zip(&lengths)
                        .map(|((_, e), &len)| {
                            if len < max_len {
                                Ok(Tensor::cat(
                                    &[
                                        e.clone(),
                                        Tensor::zeros((max_len - len, h), dtype, &self.device)?,
                                    ],
                                    0,
                                )?)
                            } else {
                                Ok(e.clone())
                            }
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let batch = Tensor::stack(&rows_in, 0)?;
                    let text_pos: Vec<i64> = (0..max_len as i64)
                        .map(|i| prefix.next_position + i)
                        .collect();
                    let (scos, ssin) = self.rope.cos_sin(
                        &[text_pos.clone(), text_pos.clone(), text_pos],
                        dtype,
                        &self.device,
                    )?;
                    let out = self.text.run(
                        &batch,
                        &scos,
                        &ssin,
                        Some(&cache),
                        None,
                        &RunOptions {
                            capture_attention: &capture,
                            keep_layer_outputs: false,
                            mask: None,
                            branches: None,
                        },
                    )?;
                    let mut pooled = Vec::with_capacity(lengths.len());
                    let mut rows = Vec::with_capacity(lengths.len());
                    for (b, &len) in lengths.iter().enumerate() {
                        pooled.push(out.hidden.get(b)?.get(len - 1)?);
                        rows.push(
                            out.attentions
                                .iter()
                                .map(|(_, p)| {
                                    Ok(p.get(b)?
                                        .narrow(1, len - 1, 1)?
                                        .squeeze(1)?
                                        .narrow(1, 0, lp)?)
                                })
                                .collect::<Result<Vec<_>>>()?,
                        );
                    }
                    (pooled, rows, pre.hidden.squeeze(0)?)
                }
            };

        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            ?strategy,
            "language model"
        );
        let mut branches = Vec::with_capacity(lengths.len());
        for ((p, (ids, _)), rows) in perspectives
            .perspectives
            .iter()
            .zip(&suffixes)
            .zip(&attention_rows)
        {
            let mut input_ids = prefix.ids.clone();
            input_ids.extend(ids);
            let soft_start = input_ids.len();
            input_ids.extend(std::iter::repeat_n(SOFT_TOKEN_PLACEHOLDER, p.soft_tokens));
            let attention_to_visual = match prefix.run {
                Some((start, n)) if !rows.is_empty() => {
                    let mut acc = vec![0f32; n];
                    for row in rows {
                        // [heads, prefix keys] → mean over heads, visual keys only.
                        let vis: Vec<f32> = row
                            .mean(0)?
                            .narrow(0, start, n)?
                            .to_dtype(DType::F32)?
                            .to_vec1()?;
                        acc.iter_mut()
                            .zip(vis)
                            .for_each(|(a, v)| *a += v / rows.len() as f32);
                    }
                    Some(acc)
                }
                _ => None,
            };
            branches.push(BranchTokens {
                name: p.name.clone(),
                input_ids,
                soft_positions: (soft_start..soft_start + p.soft_tokens).collect(),
                attention_to_visual,
            });
        }
        let visual = match (prefix.run, prefix.grid, prefix.visual_inputs) {
            (Some((start, n)), Some(grid), Some(inputs)) => Some(VisualTokens {
                grid,
                first_position: start,
                inputs,
                hidden: prefix_hidden.narrow(0, start, n)?,
            }),
            _ => None,
        };
        Ok(Embedding {
            vectors: Tensor::stack(&pooled, 0)?,
            branches,
            visual,
        })
    }
}

impl Backbone for Qwen3Vl {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn hidden_size(&self) -> usize {
        self.config.text.hidden_size
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn show_prompt(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
    ) -> Result<Vec<String>> {
        Ok(perspectives
            .perspectives
            .iter()
            .map(|p| {
                let (prefix, suffix) = self.prompt_text(input, p);
                let soft = "<soft>".repeat(p.soft_tokens);
                format!("{prefix}{suffix}{soft}")
            })
            .collect())
    }

    fn embed(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
    ) -> Result<Embedding> {
        self.embed_with(input, perspectives, options, BranchStrategy::Packed)
    }
}
