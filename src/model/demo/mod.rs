//! The embedded demo MLLM: a small vision transformer, a projector and a small causal
//! language model over visual tokens and a word-level vocabulary, trained from scratch on
//! procedural scenes with the AGFF fused InfoNCE and EGA (`agff-lens train --recipe demo`).
//!
//! It is a teaching model of synthetic scenes, not a model of real photos. It implements
//! the same [`Backbone`] interface as Qwen3-VL: an input (image, text, or both) is a shared
//! prefix `<bos> [<img>×N] [words]`, and every perspective is a branch suffix
//! `[instruction words] [soft tokens] <emb>` that attends to the prefix and to itself only;
//! the final-normed hidden state at `<emb>` is the embedding. All branches run packed in
//! one pass with a block mask.
//!
//! Every op is differentiable, so the same forward pass trains the model, trains soft
//! prompts, and gives gradient-based heatmaps.

mod config;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use image::RgbImage;

pub use config::{BOS, DemoConfig, EMB, IMG, PAD, SOFT, SPECIALS, Stem, UNK, Vocab};

use super::backbone::{
    Backbone, BranchTokens, EmbedInput, EmbedOptions, Embedding, ModelIdentity, TrainedFusion,
    VisualTokens,
};
use super::error::{ModelError, Result};
use super::ops;
use super::perspective::PerspectiveSet;
use crate::util::rng::SplitMix64;

/// The committed demo weights (made by `agff-lens train --recipe demo`; see the README).
static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../../../assets/demo/model.safetensors");
/// The committed demo configuration (vocabulary, perspectives, trained fusion).
static EMBEDDED_CONFIG: &str = include_str!("../../../assets/demo/config.json");

/// File name of a saved demo model's weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of a saved demo model's configuration ([`DemoConfig`] as JSON).
pub const CONFIG_FILE: &str = "config.json";

/// One branch suffix: its token ids and the positions (within it) of its soft tokens.
pub type BranchSuffix = (Vec<u32>, Vec<usize>);

/// Masked attention logits.
const NEG: f32 = -1e9;

/// The demo MLLM.
#[derive(Debug, Clone)]
pub struct DemoModel {
    config: DemoConfig,
    vocab: Vocab,
    params: BTreeMap<String, Tensor>,
    identity: ModelIdentity,
    device: Device,
}

/// Prefix of one sequence: optional visual tokens `[N, hidden]` and word ids.
#[derive(Debug, Clone)]
pub struct PrefixItem {
    /// Visual tokens `[N, hidden]` of one image ([`DemoModel::encode_pixels`]), placed
    /// after `<bos>`; `None` for a text-only row.
    pub visual: Option<Tensor>,
    /// Word ids ([`Vocab::encode`]) after the visual tokens; may be empty.
    pub words: Vec<u32>,
}

/// What one packed forward pass returns.
#[derive(Debug, Clone)]
pub struct Forward {
    /// `[B, 1+K, hidden]` last-token hidden states (final-normed, not L2-normalised).
    pub vectors: Tensor,
    /// `[B, T, hidden]` final-normed hidden states of every position.
    pub hidden: Tensor,
    /// Per row: the first visual position (if the row has an image).
    pub visual_start: Vec<Option<usize>>,
    /// Per row and branch: mean attention from the branch's last token to the visual
    /// tokens (mean over heads and the last `attention_layers` layers), if asked for.
    pub attention: Vec<Vec<Option<Vec<f32>>>>,
    /// Per row and branch: the full token ids and the soft positions.
    pub tokens: Vec<Vec<BranchSuffix>>,
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::Input(reason.into())
}

impl DemoModel {
    /// Fresh weights for `config` (normal init, deterministic per `seed`).
    pub fn random(config: DemoConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate().map_err(|reason| ModelError::BadConfig {
            path: PathBuf::from("(new demo config)"),
            reason,
        })?;
        // The generator the first committed weights were made with (normal init).
        let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut params = BTreeMap::new();
        for (name, shape) in param_shapes(&config) {
            let t = init_param(&name, &shape, &config, &mut rng, device)?;
            params.insert(name, t);
        }
        Ok(Self::assemble(config, params, "random".into(), device))
    }

    /// The model that ships inside the binary.
    pub fn embedded(device: &Device) -> Result<Self> {
        let origin = PathBuf::from("(embedded demo model)");
        let config: DemoConfig =
            serde_json::from_str(EMBEDDED_CONFIG).map_err(|source| ModelError::Json {
                path: origin.join(CONFIG_FILE),
                what: "the demo model config",
                source,
            })?;
        let tensors = candle_core::safetensors::load_buffer(EMBEDDED_WEIGHTS, device)?;
        let digest = digest(EMBEDDED_WEIGHTS, EMBEDDED_CONFIG.as_bytes());
        Self::from_tensors(config, tensors, &origin.join(WEIGHTS_FILE), digest, device)
    }

    /// Loads a demo model saved by [`DemoModel::save`] (or the trainer) from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let config: DemoConfig =
            serde_json::from_str(&config_text).map_err(|source| ModelError::Json {
                path: config_path.clone(),
                what: "a demo model config",
                source,
            })?;
        let bytes = std::fs::read(&weights_path).map_err(|e| ModelError::io(&weights_path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
            ModelError::BadWeights {
                path: weights_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let digest = digest(&bytes, config_text.as_bytes());
        Self::from_tensors(config, tensors, &weights_path, digest, device)
    }

    /// Whether `dir` holds a saved demo model (its config says so).
    pub fn is_demo_folder(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join(CONFIG_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("vision_width").is_some() && v.get("vocab").is_some())
    }

    fn from_tensors(
        config: DemoConfig,
        mut tensors: HashMap<String, Tensor>,
        file: &Path,
        digest: String,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(|reason| ModelError::BadConfig {
            path: file.with_file_name(CONFIG_FILE),
            reason,
        })?;
        let mut params = BTreeMap::new();
        for (name, shape) in param_shapes(&config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.clone(),
                    dir: file.to_path_buf(),
                })?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::TensorShape {
                    name,
                    file: file.to_path_buf(),
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
            params.insert(name, t.to_dtype(DType::F32)?);
        }
        Ok(Self::assemble(config, params, digest, device))
    }

    fn assemble(
        config: DemoConfig,
        params: BTreeMap<String, Tensor>,
        weights_digest: String,
        device: &Device,
    ) -> Self {
        let vocab = Vocab::new(&config.vocab);
        Self {
            config,
            vocab,
            params,
            identity: ModelIdentity {
                name: "agff-lens-demo".into(),
                weights_digest,
                preprocess: String::new(),
            },
            device: device.clone(),
        }
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let config_path = dir.join(CONFIG_FILE);
        let text =
            serde_json::to_string_pretty(&self.config).map_err(|source| ModelError::Json {
                path: config_path.clone(),
                what: "the demo model config",
                source,
            })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let map: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.detach()))
            .collect();
        let bytes = safetensors::serialize(&map, None).map_err(|e| ModelError::BadWeights {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;
        crate::util::write_atomic(&weights_path, &bytes)
            .map_err(|e| ModelError::io(&weights_path, e))?;
        crate::util::write_atomic(&config_path, text.as_bytes())
            .map_err(|e| ModelError::io(&config_path, e))?;
        Ok(())
    }

    /// The model's configuration (shape, vocabulary, perspectives, trained fusion).
    pub fn config(&self) -> &DemoConfig {
        &self.config
    }

    /// Sets the trained fusion θ, β stored with the weights (written by [`DemoModel::save`]).
    pub fn set_fusion(&mut self, theta: [f64; 4], beta: f64) {
        self.config.fusion_theta = theta;
        self.config.fusion_beta = beta;
    }

    /// Sets the provenance note stored with the weights (how they were made).
    pub fn set_provenance(&mut self, text: String) {
        self.config.provenance = text;
    }

    /// The word-level tokenizer over the config's vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The parameters by name.
    pub fn params(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    /// Turns every parameter into a trainable [`Var`] (the model then computes with the
    /// variables' tensors, so optimiser updates are seen by the next forward pass).
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        self.make_trainable_where(|_| true)
    }

    /// Turns the parameters whose name satisfies `trainable` into [`Var`]s (returned) and
    /// the others into plain tensors that track no gradient, so a frozen part costs no
    /// backward pass.
    pub fn make_trainable_where(
        &mut self,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (name, t) in &mut self.params {
            if trainable(name) {
                let var = Var::from_tensor(&t.detach())?;
                *t = var.as_tensor().clone();
                vars.push((name.clone(), var));
            } else {
                *t = t.detach();
            }
        }
        Ok(vars)
    }

    /// Copies the parameters whose name satisfies `which` from `other` (same shapes).
    pub fn copy_params_from(
        &mut self,
        other: &DemoModel,
        which: impl Fn(&str) -> bool,
    ) -> Result<()> {
        for (name, t) in &mut self.params {
            if !which(name) {
                continue;
            }
            let src = other.p(name)?;
            if src.dims() != t.dims() {
                return Err(bad(format!(
                    "{name}: shape {:?} does not fit {:?}",
                    src.dims(),
                    t.dims()
                )));
            }
            *t = src.detach();
        }
        Ok(())
    }

    /// Detaches every parameter from its [`Var`] (after training).
    pub fn freeze(&mut self) {
        for t in self.params.values_mut() {
            *t = t.detach();
        }
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                dir: PathBuf::from("(demo model)"),
            })
    }

    /// The images as the stem reads them, resized to `image_size` if needed, values in
    /// [-1, 1]: `[B, N, patch²·3]` patches for a [`Stem::Linear`], `[B, S, S, 3]` pixels
    /// (channels last) for a [`Stem::Conv`].
    pub fn pixels(&self, images: &[&RgbImage]) -> Result<Tensor> {
        let size = self.config.image_size;
        let mut data = Vec::with_capacity(images.len() * size * size * 3);
        for img in images {
            let resized;
            let img = if img.width() as usize == size && img.height() as usize == size {
                *img
            } else {
                resized = image::imageops::resize(
                    *img,
                    size as u32,
                    size as u32,
                    image::imageops::FilterType::Triangle,
                );
                &resized
            };
            data.extend(img.as_raw().iter().map(|&v| f32::from(v) / 127.5 - 1.0));
        }
        let x = Tensor::from_vec(data, (images.len(), size, size, 3), &self.device)?;
        match self.config.stem {
            Stem::Conv => Ok(x),
            Stem::Linear => {
                let (p, g) = (self.config.patch, self.config.grid());
                // [B, gy, py, gx, px, 3] → [B, gy, gx, py, px, 3]
                Ok(x.reshape((images.len(), g, p, g, p, 3))?
                    .permute((0, 1, 3, 2, 4, 5))?
                    .contiguous()?
                    .reshape((images.len(), g * g, p * p * 3))?)
            }
        }
    }

    /// The stem: [`DemoModel::pixels`] → `[B, N, vision_width]` token features (before
    /// the position embedding).
    fn stem(&self, pixels: &Tensor) -> Result<Tensor> {
        match self.config.stem {
            Stem::Linear => Ok(ops::linear(
                pixels,
                self.p("vision.patch.weight")?,
                Some(self.p("vision.patch.bias")?),
            )?),
            Stem::Conv => {
                let mut x = pixels.clone();
                for i in 0..3 {
                    x = conv3x3_stride2(
                        &x,
                        self.p(&format!("vision.stem.{i}.weight"))?,
                        self.p(&format!("vision.stem.{i}.bias"))?,
                    )?;
                    if i < 2 {
                        x = ops::gelu_tanh(&x)?;
                    }
                }
                let (b, h, w, c) = x.dims4()?;
                Ok(x.reshape((b, h * w, c))?)
            }
        }
    }

    /// The vision tower: [`DemoModel::pixels`] → `[B, N, vision_width]` final-normed
    /// tokens, row-major over the `grid × grid` layout. These are what the tower's dense
    /// pre-training and the linear probes read (`train::vision`).
    pub fn vision_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let mut x = self.stem(pixels)?.broadcast_add(self.p("vision.pos")?)?;
        for i in 0..c.vision_layers {
            let pre = format!("vision.blocks.{i}");
            let h = ops::layer_norm(
                &x,
                self.p(&format!("{pre}.norm1.weight"))?,
                self.p(&format!("{pre}.norm1.bias"))?,
                1e-5,
            )?;
            let a = self.attention(
                &h,
                &format!("{pre}.attn"),
                c.vision_heads,
                true,
                None,
                false,
            )?;
            x = (x + a.0)?;
            let h = ops::layer_norm(
                &x,
                self.p(&format!("{pre}.norm2.weight"))?,
                self.p(&format!("{pre}.norm2.bias"))?,
                1e-5,
            )?;
            let h = ops::linear(
                &h,
                self.p(&format!("{pre}.mlp.fc1.weight"))?,
                Some(self.p(&format!("{pre}.mlp.fc1.bias"))?),
            )?;
            let h = ops::linear(
                &ops::gelu_tanh(&h)?,
                self.p(&format!("{pre}.mlp.fc2.weight"))?,
                Some(self.p(&format!("{pre}.mlp.fc2.bias"))?),
            )?;
            x = (x + h)?;
        }
        Ok(ops::layer_norm(
            &x,
            self.p("vision.norm.weight")?,
            self.p("vision.norm.bias")?,
            1e-5,
        )?)
    }

    /// Vision tower and projector: [`DemoModel::pixels`] → visual tokens
    /// `[B, N, hidden]`, the language model's inputs at the visual positions.
    pub fn encode_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        self.project(&self.vision_tokens(pixels)?)
    }

    /// The projector: tower tokens `[B, N, vision_width]` → visual tokens `[B, N, hidden]`.
    pub fn project(&self, tokens: &Tensor) -> Result<Tensor> {
        let x = ops::linear(
            tokens,
            self.p("projector.fc1.weight")?,
            Some(self.p("projector.fc1.bias")?),
        )?;
        let x = ops::gelu_tanh(&x)?;
        Ok(ops::linear(
            &x,
            self.p("projector.fc2.weight")?,
            Some(self.p("projector.fc2.bias")?),
        )?)
    }

    /// What the language model's first layer reads at the visual positions of an image's
    /// sequence (after `<bos>`): visual tokens `[B, N, hidden]` plus the learned sequence
    /// positions `1..=N` and, if the config has it, the 2-D grid embedding
    /// ([`visual_position_table`]). [`DemoModel::forward`] builds the same sum.
    pub fn language_inputs(&self, visual: &Tensor) -> Result<Tensor> {
        let n = visual.dim(1)?;
        let mut x = visual.broadcast_add(&self.p("lm.pos")?.narrow(0, 1, n)?)?;
        if self.config.visual_position_2d {
            let c = &self.config;
            x = x.broadcast_add(&visual_position_table(c.grid(), c.hidden, &self.device)?)?;
        }
        Ok(x)
    }

    /// Multi-head self-attention of `[B, T, width]`; `mask` is `[B, 1, T, T]` additive.
    /// Returns the output and, if asked, the probabilities `[B, H, T, T]`.
    fn attention(
        &self,
        x: &Tensor,
        pre: &str,
        heads: usize,
        bias: bool,
        mask: Option<&Tensor>,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, w) = x.dims3()?;
        let dh = w / heads;
        let qkv_w = self.p(&format!("{pre}.qkv.weight"))?;
        let qkv_b = if bias {
            Some(self.p(&format!("{pre}.qkv.bias"))?)
        } else {
            None
        };
        // q, k and v each from its rows of the stacked weight: slicing the weight (whose
        // gradient is then a small concatenation) instead of the projected activations
        // (whose gradient would be three zero-padded copies of them).
        let project = |j: usize| -> Result<Tensor> {
            let wj = qkv_w.narrow(0, j * w, w)?;
            let bj = qkv_b.map(|b| b.narrow(0, j * w, w)).transpose()?;
            Ok(ops::linear(x, &wj, bj.as_ref())?
                .reshape((b, t, heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (project(0)?, project(1)?, project(2)?);
        // One kernel for scale, mask and softmax, differentiable (candle-nn's fused
        // softmax_last_dim has no backward pass and would cut the graph).
        let probs = ops::attention_softmax(&q.matmul(&k.t()?)?, 1.0 / (dh as f64).sqrt(), mask)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, w))?;
        let o_b = if bias {
            Some(self.p(&format!("{pre}.proj.bias"))?)
        } else {
            None
        };
        let name = if bias { "proj" } else { "o" };
        let out = ops::linear(&out, self.p(&format!("{pre}.{name}.weight"))?, o_b)?;
        Ok((out, keep_probs.then_some(probs)))
    }

    /// The suffix of every branch: word ids (soft positions hold `<soft>`), and where the
    /// soft tokens sit inside it. Also returns the unknown instruction words.
    pub fn branch_suffixes(
        &self,
        perspectives: &PerspectiveSet,
    ) -> (Vec<BranchSuffix>, Vec<String>) {
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for p in &perspectives.perspectives {
            let (mut ids, unk) = self.vocab.encode(&p.instruction);
            unknown.extend(unk);
            let soft: Vec<usize> = (ids.len()..ids.len() + p.soft_tokens).collect();
            ids.extend(std::iter::repeat_n(self.vocab.special(SOFT), p.soft_tokens));
            ids.push(self.vocab.special(EMB));
            out.push((ids, soft));
        }
        (out, unknown)
    }

    /// The soft-prompt vectors of each perspective: the caller's, else the model's own
    /// trained ones of that name and length, else the `<soft>` embedding repeated.
    pub fn soft_vectors(
        &self,
        perspectives: &PerspectiveSet,
        given: &[Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let d = self.config.hidden;
        let mut out = Vec::new();
        for (i, p) in perspectives.perspectives.iter().enumerate() {
            if p.soft_tokens == 0 {
                out.push(None);
                continue;
            }
            if let Some(Some(t)) = given.get(i) {
                if t.dims() != [p.soft_tokens, d] {
                    return Err(bad(format!(
                        "soft prompt of perspective {:?} has shape {:?}, expected [{}, {d}]",
                        p.name,
                        t.dims(),
                        p.soft_tokens
                    )));
                }
                out.push(Some(t.clone()));
                continue;
            }
            let own = format!("soft.{}", p.name);
            match self.params.get(&own) {
                Some(t) if t.dims() == [p.soft_tokens, d] => out.push(Some(t.clone())),
                _ => {
                    let id = Tensor::new(&[self.vocab.special(SOFT)], &self.device)?;
                    let e = self.p("lm.embed")?.index_select(&id, 0)?;
                    out.push(Some(e.broadcast_as((p.soft_tokens, d))?.contiguous()?));
                }
            }
        }
        Ok(out)
    }

    /// Runs the language model on a batch of prefixes, every row with all perspective
    /// branches packed after its prefix.
    pub fn forward(
        &self,
        rows: &[PrefixItem],
        perspectives: &PerspectiveSet,
        soft: &[Option<Tensor>],
        attention_layers: usize,
    ) -> Result<Forward> {
        let c = &self.config;
        let d = c.hidden;
        let b = rows.len();
        if b == 0 {
            return Err(bad("nothing to embed"));
        }
        let (suffixes, _) = self.branch_suffixes(perspectives);
        let soft = self.soft_vectors(perspectives, soft)?;
        let embed = self.p("lm.embed")?;

        // Shared suffix block [S, d].
        let mut pieces = Vec::new();
        let mut branch_ranges = Vec::new();
        let mut offset = 0;
        for ((ids, soft_pos), sv) in suffixes.iter().zip(&soft) {
            let n_words = ids.len() - 1 - soft_pos.len();
            let words = Tensor::new(&ids[..n_words], &self.device)?;
            pieces.push(embed.index_select(&words, 0)?);
            if let Some(sv) = sv {
                pieces.push(sv.clone());
            }
            let last = Tensor::new(&ids[ids.len() - 1..], &self.device)?;
            pieces.push(embed.index_select(&last, 0)?);
            branch_ranges.push((offset, ids.len()));
            offset += ids.len();
        }
        let suffix_len = offset;
        let suffix = Tensor::cat(&pieces, 0)?;

        let lens: Vec<usize> = rows
            .iter()
            .map(|r| 1 + r.visual.as_ref().map_or(0, |v| v.dim(0).unwrap_or(0)) + r.words.len())
            .collect();
        let prefix_len = lens.iter().copied().max().unwrap_or(1);
        let t = prefix_len + suffix_len;
        if lens.iter().any(|&l| l + suffix_len > c.max_positions) {
            return Err(bad(format!(
                "input too long for the demo model: {} positions, at most {}",
                prefix_len + suffix_len,
                c.max_positions
            )));
        }

        let grid_pos = if c.visual_position_2d {
            Some(visual_position_table(c.grid(), d, &self.device)?)
        } else {
            None
        };
        // Row prefixes, left-padded with zeros.
        let bos = embed.index_select(&Tensor::new(&[self.vocab.special(BOS)], &self.device)?, 0)?;
        let mut prefix_rows = Vec::with_capacity(b);
        let mut visual_start = Vec::with_capacity(b);
        for (row, &len) in rows.iter().zip(&lens) {
            let pad = prefix_len - len;
            let mut parts = Vec::new();
            if pad > 0 {
                parts.push(Tensor::zeros((pad, d), DType::F32, &self.device)?);
            }
            parts.push(bos.clone());
            if let Some(v) = &row.visual {
                let (n, width) = v.dims2()?;
                if width != d {
                    return Err(bad(format!(
                        "visual tokens have width {width}, expected {d}"
                    )));
                }
                visual_start.push(Some(pad + 1));
                match &grid_pos {
                    Some(table) if n == table.dim(0)? => parts.push((v + table)?),
                    Some(table) => {
                        return Err(bad(format!(
                            "{n} visual tokens, expected the {} of the model's grid",
                            table.dim(0)?
                        )));
                    }
                    None => parts.push(v.clone()),
                }
            } else {
                visual_start.push(None);
            }
            if !row.words.is_empty() {
                let ids = Tensor::new(row.words.as_slice(), &self.device)?;
                parts.push(embed.index_select(&ids, 0)?);
            }
            prefix_rows.push(Tensor::cat(&parts, 0)?);
        }
        let prefix = Tensor::stack(&prefix_rows, 0)?;
        let x = Tensor::cat(
            &[
                &prefix,
                &suffix.unsqueeze(0)?.broadcast_as((b, suffix_len, d))?,
            ],
            1,
        )?;

        // Positions and the block mask.
        let branch_lengths: Vec<usize> = branch_ranges.iter().map(|&(_, n)| n).collect();
        let mut pos = vec![0u32; b * t];
        let mut mask = Vec::with_capacity(b * t * t);
        for (r, &len) in lens.iter().enumerate() {
            let pad = prefix_len - len;
            for i in pad..prefix_len {
                pos[r * t + i] = (i - pad) as u32;
            }
            for &(start, n) in &branch_ranges {
                for j in 0..n {
                    pos[r * t + prefix_len + start + j] = (len + j) as u32;
                }
            }
            mask.extend(crate::model::perspective::branch_mask(
                pad,
                len,
                &branch_lengths,
                NEG,
            ));
        }
        let pos = Tensor::from_vec(pos, b * t, &self.device)?;
        let pos_emb = self
            .p("lm.pos")?
            .index_select(&pos, 0)?
            .reshape((b, t, d))?;
        let mut x = (x + pos_emb)?;
        let mask = Tensor::from_vec(mask, (b, 1, t, t), &self.device)?;

        let mut captured: Vec<Tensor> = Vec::new();
        for i in 0..c.layers {
            let pre = format!("lm.layers.{i}");
            let h = ops::rms_norm(&x, self.p(&format!("{pre}.norm1.weight"))?, 1e-6)?;
            let keep = attention_layers > 0 && i + attention_layers >= c.layers;
            let (a, probs) = self.attention(
                &h,
                &format!("{pre}.attn"),
                c.heads,
                false,
                Some(&mask),
                keep,
            )?;
            if let Some(p) = probs {
                captured.push(p.detach().mean(1)?);
            }
            x = (x + a)?;
            let h = ops::rms_norm(&x, self.p(&format!("{pre}.norm2.weight"))?, 1e-6)?;
            let gu = ops::linear(&h, self.p(&format!("{pre}.mlp.gate_up.weight"))?, None)?;
            let h = ops::swiglu(&gu)?;
            let h = ops::linear(&h, self.p(&format!("{pre}.mlp.down.weight"))?, None)?;
            x = (x + h)?;
        }
        let hidden = ops::rms_norm(&x, self.p("lm.norm.weight")?, 1e-6)?;

        let last: Vec<u32> = branch_ranges
            .iter()
            .map(|&(start, n)| (prefix_len + start + n - 1) as u32)
            .collect();
        let last_idx = Tensor::new(last.as_slice(), &self.device)?;
        let vectors = hidden.index_select(&last_idx, 1)?;

        let mut attention = Vec::with_capacity(b);
        let mean_attn = if captured.is_empty() {
            None
        } else {
            let n = captured.len() as f64;
            let sum = captured
                .iter()
                .skip(1)
                .try_fold(captured[0].clone(), |acc, p| acc + p)?;
            Some((sum / n)?)
        };
        let mut tokens = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            let mut row_attn = Vec::new();
            for &l in &last {
                let value = match (&mean_attn, visual_start[r], &row.visual) {
                    (Some(m), Some(vs), Some(v)) => {
                        let n = v.dim(0)?;
                        Some(m.i((r, l as usize))?.narrow(0, vs, n)?.to_vec1::<f32>()?)
                    }
                    _ => None,
                };
                row_attn.push(value);
            }
            attention.push(row_attn);
            let mut prefix_ids = vec![self.vocab.special(BOS)];
            if let Some(v) = &row.visual {
                prefix_ids.extend(std::iter::repeat_n(self.vocab.special(IMG), v.dim(0)?));
            }
            prefix_ids.extend(&row.words);
            let row_tokens = suffixes
                .iter()
                .map(|(ids, soft_pos)| {
                    let mut all = prefix_ids.clone();
                    let base = all.len();
                    all.extend(ids);
                    (all, soft_pos.iter().map(|s| s + base).collect())
                })
                .collect();
            tokens.push(row_tokens);
        }
        Ok(Forward {
            vectors,
            hidden,
            visual_start,
            attention,
            tokens,
        })
    }

    /// `[B, 1+K, hidden]` raw embeddings of a batch of images (differentiable).
    pub fn embed_images(
        &self,
        images: &[&RgbImage],
        perspectives: &PerspectiveSet,
        soft: &[Option<Tensor>],
    ) -> Result<Tensor> {
        let visual = self.encode_pixels(&self.pixels(images)?)?;
        let rows = (0..images.len())
            .map(|i| {
                Ok(PrefixItem {
                    visual: Some(visual.i(i)?),
                    words: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.forward(&rows, perspectives, soft, 0)?.vectors)
    }

    /// `[B, 1+K, hidden]` raw embeddings of a batch of texts (differentiable); also the
    /// unknown words met.
    pub fn embed_texts(
        &self,
        texts: &[&str],
        perspectives: &PerspectiveSet,
        soft: &[Option<Tensor>],
    ) -> Result<(Tensor, Vec<String>)> {
        let mut unknown = Vec::new();
        let rows = texts
            .iter()
            .map(|t| {
                let (words, unk) = self.vocab.encode(t);
                unknown.extend(unk);
                PrefixItem {
                    visual: None,
                    words,
                }
            })
            .collect::<Vec<_>>();
        Ok((self.forward(&rows, perspectives, soft, 0)?.vectors, unknown))
    }
}

/// The fixed 2-D position embedding of the visual tokens (`[grid², hidden]`, row-major
/// like the tokens): the first half of the width encodes the token's row, the second its
/// column, each as `hidden/4` sines then `hidden/4` cosines of `pos · ω_k`,
/// `ω_k = 100^(−k/(hidden/4))` (MAE's 2-D sine-cosine embedding with the temperature
/// lowered from 10,000 to 100 for a 12-token side, so every frequency varies across the
/// grid and the slowest are nearly linear ramps). `hidden` must be a multiple of 4.
pub fn visual_position_table(grid: usize, hidden: usize, device: &Device) -> Result<Tensor> {
    let quarter = hidden / 4;
    let mut data = Vec::with_capacity(grid * grid * hidden);
    for row in 0..grid {
        for col in 0..grid {
            for pos in [row, col] {
                for trig in [f64::sin, f64::cos] {
                    for k in 0..quarter {
                        let omega = 100f64.powf(-(k as f64) / quarter as f64);
                        data.push(trig(pos as f64 * omega) as f32);
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(data, (grid * grid, hidden), device)?)
}

/// blake3 of the weights and config, the model's identity for caches.
fn digest(weights: &[u8], config: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(weights);
    h.update(config);
    h.finalize().to_hex().to_string()
}

/// A 3×3 convolution of stride 2 and padding 1 on channels-last `[B, H, W, C]` (H, W
/// even), as an explicit im2col and one matrix product, so its backward pass is the
/// matrix product's: `weight` is `[C_out, 9·C]` with the inputs ordered (dy, dx, c),
/// `bias` `[C_out]`. Returns `[B, H/2, W/2, C_out]`.
///
/// The im2col is one `index_select` of the zero-padded input's pixels (whose backward is
/// one scatter-add), not nine strided slices: slices' backward passes each allocate and
/// zero a full-size gradient, which made the stem's backward several times its forward.
pub fn conv3x3_stride2(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(bad(format!(
            "a stride-2 convolution needs an even size, got {h}×{w}"
        )));
    }
    let (ho, wo) = (h / 2, w / 2);
    let wp = w + 2;
    let xp = x
        .pad_with_zeros(1, 1, 1)?
        .pad_with_zeros(2, 1, 1)?
        .reshape((b, (h + 2) * wp, c))?;
    let mut index = Vec::with_capacity(ho * wo * 9);
    for oy in 0..ho {
        for ox in 0..wo {
            for dy in 0..3 {
                for dx in 0..3 {
                    index.push(((2 * oy + dy) * wp + 2 * ox + dx) as u32);
                }
            }
        }
    }
    let index = Tensor::from_vec(index, ho * wo * 9, x.device())?;
    let cols = xp.index_select(&index, 1)?.reshape((b, ho, wo, 9 * c))?;
    Ok(ops::linear(&cols, weight, Some(bias))?)
}

/// Every parameter's name and shape.
pub fn param_shapes(c: &DemoConfig) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let vw = c.vision_width;
    let n = c.grid() * c.grid();
    match c.stem {
        Stem::Linear => {
            v.push((
                "vision.patch.weight".into(),
                vec![vw, c.patch * c.patch * 3],
            ));
            v.push(("vision.patch.bias".into(), vec![vw]));
        }
        Stem::Conv => {
            let [c1, c2] = c.stem_channels;
            for (i, (out, inp)) in [(c1, 3), (c2, c1), (vw, c2)].into_iter().enumerate() {
                v.push((format!("vision.stem.{i}.weight"), vec![out, 9 * inp]));
                v.push((format!("vision.stem.{i}.bias"), vec![out]));
            }
        }
    }
    v.push(("vision.pos".into(), vec![n, vw]));
    for i in 0..c.vision_layers {
        let p = format!("vision.blocks.{i}");
        v.push((format!("{p}.norm1.weight"), vec![vw]));
        v.push((format!("{p}.norm1.bias"), vec![vw]));
        v.push((format!("{p}.attn.qkv.weight"), vec![3 * vw, vw]));
        v.push((format!("{p}.attn.qkv.bias"), vec![3 * vw]));
        v.push((format!("{p}.attn.proj.weight"), vec![vw, vw]));
        v.push((format!("{p}.attn.proj.bias"), vec![vw]));
        v.push((format!("{p}.norm2.weight"), vec![vw]));
        v.push((format!("{p}.norm2.bias"), vec![vw]));
        v.push((format!("{p}.mlp.fc1.weight"), vec![4 * vw, vw]));
        v.push((format!("{p}.mlp.fc1.bias"), vec![4 * vw]));
        v.push((format!("{p}.mlp.fc2.weight"), vec![vw, 4 * vw]));
        v.push((format!("{p}.mlp.fc2.bias"), vec![vw]));
    }
    v.push(("vision.norm.weight".into(), vec![vw]));
    v.push(("vision.norm.bias".into(), vec![vw]));
    let d = c.hidden;
    v.push(("projector.fc1.weight".into(), vec![d, vw]));
    v.push(("projector.fc1.bias".into(), vec![d]));
    v.push(("projector.fc2.weight".into(), vec![d, d]));
    v.push(("projector.fc2.bias".into(), vec![d]));
    v.push(("lm.embed".into(), vec![c.vocab.len(), d]));
    v.push(("lm.pos".into(), vec![c.max_positions, d]));
    for i in 0..c.layers {
        let p = format!("lm.layers.{i}");
        v.push((format!("{p}.norm1.weight"), vec![d]));
        v.push((format!("{p}.attn.qkv.weight"), vec![3 * d, d]));
        v.push((format!("{p}.attn.o.weight"), vec![d, d]));
        v.push((format!("{p}.norm2.weight"), vec![d]));
        v.push((format!("{p}.mlp.gate_up.weight"), vec![2 * c.mlp, d]));
        v.push((format!("{p}.mlp.down.weight"), vec![d, c.mlp]));
    }
    v.push(("lm.norm.weight".into(), vec![d]));
    for p in &c.perspectives.perspectives {
        if p.soft_tokens > 0 {
            v.push((format!("soft.{}", p.name), vec![p.soft_tokens, d]));
        }
    }
    v
}

fn init_param(
    name: &str,
    shape: &[usize],
    c: &DemoConfig,
    rng: &mut SplitMix64,
    device: &Device,
) -> Result<Tensor> {
    let is_norm = name.contains("norm") && name.ends_with(".weight");
    if is_norm {
        return Ok(Tensor::ones(shape, DType::F32, device)?);
    }
    if name.ends_with(".bias") {
        return Ok(Tensor::zeros(shape, DType::F32, device)?);
    }
    // Residual output projections start small (GPT-2 style).
    let layers = (c.layers + c.vision_layers).max(1) as f64;
    let std = if name.ends_with("proj.weight")
        || name.ends_with("o.weight")
        || name.ends_with("down.weight")
        || name.ends_with("fc2.weight") && name.starts_with("vision.blocks")
    {
        0.02 / (2.0 * layers).sqrt()
    } else if name.starts_with("soft.") || name == "lm.pos" || name == "vision.pos" {
        0.02
    } else {
        // Fan-in scaling keeps activations of order one in this small model.
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        (1.0 / fan_in).sqrt()
    };
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

impl Backbone for DemoModel {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn default_perspectives(&self) -> PerspectiveSet {
        self.config.perspectives.clone()
    }

    fn trained_fusion(&self) -> Option<TrainedFusion> {
        Some(TrainedFusion {
            theta: self.config.fusion_theta,
            beta: self.config.fusion_beta,
        })
    }

    fn show_prompt(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
    ) -> Result<Vec<String>> {
        let (suffixes, _) = self.branch_suffixes(perspectives);
        let mut prefix = vec![BOS.to_string()];
        if input.image.is_some() {
            prefix.push(format!("{IMG}×{}", self.config.grid() * self.config.grid()));
        }
        if let Some(t) = &input.text {
            let (ids, _) = self.vocab.encode(t);
            prefix.extend(ids.iter().map(|&i| self.vocab.word(i).to_string()));
        }
        Ok(suffixes
            .iter()
            .map(|(ids, _)| {
                let mut words = prefix.clone();
                words.extend(ids.iter().map(|&i| self.vocab.word(i).to_string()));
                words.join(" ")
            })
            .collect())
    }

    fn trained_soft_prompt(&self, perspective: &crate::model::Perspective) -> Option<Tensor> {
        self.params
            .get(&format!("soft.{}", perspective.name))
            .filter(|t| t.dims() == [perspective.soft_tokens, self.config.hidden])
            .cloned()
    }

    fn unknown_words(&self, text: &str) -> Vec<String> {
        self.vocab.encode(text).1
    }

    fn dropped_characters(&self, text: &str) -> Vec<char> {
        let mut dropped: Vec<char> = Vec::new();
        for c in text.chars() {
            let separator = c.is_alphanumeric() || c.is_whitespace() || c.is_ascii_punctuation();
            if !separator && !dropped.contains(&c) {
                dropped.push(c);
            }
        }
        dropped
    }

    fn known_words(&self, text: &str) -> Option<usize> {
        let (ids, unknown) = self.vocab.encode(text);
        Some(ids.len() - unknown.len())
    }

    fn embed(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
    ) -> Result<Embedding> {
        perspectives.validate().map_err(bad)?;
        if input.image.is_none() && input.text.is_none() {
            return Err(bad("nothing to embed: give an image, a text or both"));
        }
        let mut visual_inputs = None;
        let visual = match &input.image {
            Some(img) => {
                let v = self.encode_pixels(&self.pixels(&[img])?)?.i(0)?;
                let v = if options.track_visual_inputs {
                    Var::from_tensor(&v.detach())?.as_tensor().clone()
                } else {
                    v
                };
                visual_inputs = Some(v.clone());
                Some(v)
            }
            None => None,
        };
        let (words, unknown) = match &input.text {
            Some(t) => self.vocab.encode(t),
            None => (Vec::new(), Vec::new()),
        };
        if !unknown.is_empty() {
            // Callers show `unknown_words` to the user; this is for logs only.
            tracing::debug!(
                "the demo model does not know these words (read as <unk>): {}",
                unknown.join(", ")
            );
        }
        let rows = [PrefixItem { visual, words }];
        let out = self.forward(
            &rows,
            perspectives,
            &options.soft_prompts,
            options.attention_layers,
        )?;
        let vectors = out.vectors.i(0)?;
        let branches = perspectives
            .perspectives
            .iter()
            .zip(&out.tokens[0])
            .zip(&out.attention[0])
            .map(|((p, (ids, soft)), attn)| BranchTokens {
                name: p.name.clone(),
                input_ids: ids.clone(),
                soft_positions: soft.clone(),
                attention_to_visual: attn.clone(),
            })
            .collect();
        let visual = match (visual_inputs, out.visual_start[0]) {
            (Some(inputs), Some(start)) => {
                let g = self.config.grid();
                let hidden = out.hidden.i(0)?.narrow(0, start, g * g)?;
                Some(VisualTokens {
                    grid: (g, g),
                    first_position: start,
                    inputs,
                    hidden,
                })
            }
            _ => None,
        };
        Ok(Embedding {
            vectors,
            branches,
            visual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::max_abs_diff as max_diff;

    fn tiny() -> DemoModel {
        let words = ["a", "red", "blue", "circle", "square", "left", "of"];
        let mut c = DemoConfig::new(&words, DemoConfig::default_perspectives(2));
        c.image_size = 24;
        c.patch = 8;
        c.vision_width = 16;
        c.vision_heads = 2;
        c.hidden = 16;
        c.heads = 2;
        c.mlp = 24;
        c.layers = 2;
        c.max_positions = 40;
        DemoModel::random(c, 7, &Device::Cpu).unwrap()
    }

    fn image(seed: u8) -> RgbImage {
        RgbImage::from_fn(24, 24, |x, y| {
            image::Rgb([(x as u8).wrapping_mul(seed), (y as u8) * 9, seed])
        })
    }

    #[test]
    fn conv_stem_equals_candles_conv2d() {
        // [B, H, W, C] channels last against candle's NCHW conv2d with the same kernel.
        let (b, h, w, c, o) = (2, 6, 8, 3, 5);
        let x: Vec<f32> = (0..b * h * w * c)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let x = Tensor::from_vec(x, (b, h, w, c), &Device::Cpu).unwrap();
        let k: Vec<f32> = (0..o * 9 * c)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let weight = Tensor::from_vec(k, (o, 9 * c), &Device::Cpu).unwrap();
        let bias = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0, 0.5], &Device::Cpu).unwrap();
        let ours = conv3x3_stride2(&x, &weight, &bias).unwrap();
        assert_eq!(ours.dims(), &[b, h / 2, w / 2, o]);
        // Our weight's inputs are ordered (dy, dx, c); candle's kernel is [o, c, dy, dx].
        let kernel = weight
            .reshape((o, 3, 3, c))
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap()
            .contiguous()
            .unwrap();
        let nchw = x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
        let theirs = nchw
            .conv2d(&kernel, 1, 2, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-5, "conv differs by {d}");
        // An odd size is an error, not a panic.
        let odd = Tensor::zeros((1, 5, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(conv3x3_stride2(&odd, &weight, &bias).is_err());
    }

    #[test]
    fn linear_stem_configs_still_load_and_cut_patches_row_major() {
        let words = ["a", "red"];
        let mut c = DemoConfig::new(&words, DemoConfig::default_perspectives(1));
        c.stem = Stem::Linear;
        c.image_size = 24;
        c.patch = 12;
        c.vision_width = 8;
        c.vision_heads = 2;
        c.hidden = 8;
        c.heads = 2;
        c.mlp = 8;
        c.layers = 1;
        c.max_positions = 40;
        let m = DemoModel::random(c, 1, &Device::Cpu).unwrap();
        let img = image(9);
        let p = m.pixels(&[&img]).unwrap();
        assert_eq!(p.dims(), &[1, 4, 12 * 12 * 3]);
        // Patch 1 is the top-right block; its first value is pixel (12, 0), red channel.
        let v = p.i((0, 1, 0)).unwrap().to_scalar::<f32>().unwrap();
        let expect = f32::from(img.get_pixel(12, 0)[0]) / 127.5 - 1.0;
        assert!((v - expect).abs() < 1e-6);
        // A config written before the stem existed reads as the linear stem.
        let mut json: serde_json::Value = serde_json::to_value(m.config()).unwrap();
        json.as_object_mut().unwrap().remove("stem");
        let back: DemoConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.stem, Stem::Linear);
    }

    #[test]
    fn packed_branches_equal_one_branch_at_a_time() {
        let m = tiny();
        let all = m.config().perspectives.clone();
        let input = EmbedInput {
            image: Some(image(3)),
            text: Some("a red circle".into()),
        };
        let packed = m.embed(&input, &all, &EmbedOptions::default()).unwrap();
        for (i, p) in all.perspectives.iter().enumerate() {
            let one = PerspectiveSet {
                perspectives: vec![p.clone()],
            };
            let alone = m.embed(&input, &one, &EmbedOptions::default()).unwrap();
            let d = max_diff(&packed.vectors.i(i).unwrap(), &alone.vectors.i(0).unwrap());
            assert!(d < 1e-5, "branch {} differs by {d}", p.name);
        }
        // The prompt the model saw: <bos>, 9 visual tokens, 3 words, then the suffix.
        assert_eq!(packed.branches[0].input_ids.len(), 1 + 9 + 3 + 1);
        assert_eq!(packed.visual.as_ref().unwrap().grid, (3, 3));
    }

    #[test]
    fn visual_positions_give_each_token_its_row_and_column() {
        let (g, d) = (12, 128);
        let table = visual_position_table(g, d, &Device::Cpu).unwrap();
        let t = table.to_vec2::<f32>().unwrap();
        assert_eq!((t.len(), t[0].len()), (g * g, d));
        for r in 0..g {
            for c in 0..g {
                let v = &t[r * g + c];
                // ω_0 = 1: the fastest sine and cosine of the row, then of the column.
                assert!((v[0] - (r as f32).sin()).abs() < 1e-6);
                assert!((v[d / 4] - (r as f32).cos()).abs() < 1e-6);
                assert!((v[d / 2] - (c as f32).sin()).abs() < 1e-6);
                if c > 0 {
                    // The slowest sine of the column is a ramp: it says which of two
                    // tokens of a row lies further right.
                    let slow = d / 2 + d / 4 - 1;
                    assert!(v[slow] > t[r * g + c - 1][slow]);
                }
            }
        }
        // Every token gets its own embedding.
        for a in 0..g * g {
            for b in 0..a {
                let gap = max_diff(&table.i(a).unwrap(), &table.i(b).unwrap());
                assert!(gap > 1e-3, "tokens {a} and {b}");
            }
        }
    }

    #[test]
    fn language_inputs_are_what_the_first_layer_reads() {
        // With no decoder layer, the hidden states are the final norm of the inputs.
        let mut c = tiny().config().clone();
        c.layers = 0;
        c.visual_position_2d = true;
        let m = DemoModel::random(c, 3, &Device::Cpu).unwrap();
        let visual = m.encode_pixels(&m.pixels(&[&image(5)]).unwrap()).unwrap();
        let rows = [PrefixItem {
            visual: Some(visual.i(0).unwrap()),
            words: Vec::new(),
        }];
        let f = m.forward(&rows, &m.config().perspectives, &[], 0).unwrap();
        let n = visual.dim(1).unwrap();
        let got = f.hidden.narrow(1, 1, n).unwrap();
        let norm = m.p("lm.norm.weight").unwrap();
        let want = ops::rms_norm(&m.language_inputs(&visual).unwrap(), norm, 1e-6).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn grid_positions_reach_images_but_not_texts() {
        let without = tiny();
        let mut config = without.config().clone();
        config.visual_position_2d = true;
        let params = without
            .params()
            .clone()
            .into_iter()
            .collect::<HashMap<_, _>>();
        let with = DemoModel::from_tensors(
            config,
            params,
            Path::new("(test)"),
            "test".into(),
            &Device::Cpu,
        )
        .unwrap();
        let all = with.config().perspectives.clone();
        let embed = |m: &DemoModel, input: &EmbedInput| {
            m.embed(input, &all, &EmbedOptions::default())
                .unwrap()
                .vectors
        };
        let text = EmbedInput {
            image: None,
            text: Some("a red circle".into()),
        };
        assert!(max_diff(&embed(&with, &text), &embed(&without, &text)) < 1e-6);
        let picture = EmbedInput {
            image: Some(image(3)),
            text: None,
        };
        assert!(max_diff(&embed(&with, &picture), &embed(&without, &picture)) > 1e-3);
    }

    #[test]
    fn left_padded_batch_equals_single_rows() {
        let m = tiny();
        let p = m.config().perspectives.clone();
        let texts = ["a red circle left of a blue square", "blue", "square of"];
        let (batch, unknown) = m.embed_texts(&texts, &p, &[]).unwrap();
        assert!(unknown.is_empty());
        for (i, t) in texts.iter().enumerate() {
            let (one, _) = m.embed_texts(&[t], &p, &[]).unwrap();
            let d = max_diff(&batch.i(i).unwrap(), &one.i(0).unwrap());
            assert!(d < 1e-5, "row {i} differs by {d}");
        }
        let imgs = [image(1), image(2)];
        let refs: Vec<&RgbImage> = imgs.iter().collect();
        let both = m.embed_images(&refs, &p, &[]).unwrap();
        let one = m.embed_images(&refs[1..], &p, &[]).unwrap();
        assert!(max_diff(&both.i(1).unwrap(), &one.i(0).unwrap()) < 1e-5);
    }

    #[test]
    fn unknown_words_are_reported_and_read_as_unk() {
        let m = tiny();
        assert_eq!(
            m.unknown_words("A red Zebra, left!"),
            vec!["zebra".to_string()]
        );
        let (ids, _) = m.vocab().encode("zebra");
        assert_eq!(ids, vec![m.vocab().special(UNK)]);
    }

    #[test]
    fn gradients_reach_soft_prompts_and_visual_inputs() {
        let m = tiny();
        let p = m.config().perspectives.clone();
        let soft = Var::zeros((2, 16), DType::F32, &Device::Cpu).unwrap();
        let mut given = vec![None; p.perspectives.len()];
        given[1] = Some(soft.as_tensor().clone());
        let opts = EmbedOptions {
            soft_prompts: given,
            track_visual_inputs: true,
            attention_layers: 1,
            truncate: false,
            dim: None,
        };
        let e = m.embed(&EmbedInput::image(image(5)), &p, &opts).unwrap();
        let loss = e.vectors.i(1).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(soft.as_tensor()).expect("soft prompt gradient");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        let v = e.visual.unwrap();
        assert!(
            grads.get(&v.inputs).is_some(),
            "visual inputs get a gradient"
        );
        let attn = e.branches[1].attention_to_visual.as_ref().unwrap();
        assert_eq!(attn.len(), 9);
        assert!(attn.iter().all(|a| a.is_finite() && *a >= 0.0));
        assert!(attn.iter().sum::<f32>() <= 1.0 + 1e-5);
    }

    #[test]
    fn every_parameter_gets_a_gradient_including_queries_and_keys() {
        let mut m = tiny();
        let vars = m.make_trainable().unwrap();
        let p = m.config().perspectives.clone();
        let img = image(4);
        let v = m.embed_images(&[&img], &p, &[]).unwrap();
        let (t, _) = m.embed_texts(&["red circle"], &p, &[]).unwrap();
        let loss = (v * t).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            if name == "lm.embed" || name == "lm.pos" {
                continue; // rows of unused words and positions get no gradient
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let g = if name.ends_with("attn.qkv.weight") {
                // The query rows: zero if the attention probabilities were cut off.
                let w = g.dim(0).unwrap() / 3;
                g.narrow(0, 0, w).unwrap()
            } else {
                g.clone()
            };
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }

    #[test]
    fn save_load_round_trip_and_shape_errors_name_the_tensor() {
        let m = tiny();
        let dir = std::env::temp_dir().join(format!("agff-demo-{}", std::process::id()));
        m.save(&dir).unwrap();
        assert!(DemoModel::is_demo_folder(&dir));
        let back = DemoModel::load(&dir, &Device::Cpu).unwrap();
        let p = m.config().perspectives.clone();
        let (a, _) = m.embed_texts(&["red circle"], &p, &[]).unwrap();
        let (b, _) = back.embed_texts(&["red circle"], &p, &[]).unwrap();
        assert!(max_diff(&a, &b) == 0.0);

        // A config that disagrees with the weights.
        let mut c = m.config().clone();
        c.hidden = 32;
        c.heads = 4;
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string(&c).unwrap()).unwrap();
        let err = DemoModel::load(&dir, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("has shape") && err.contains("model.safetensors"),
            "{err}"
        );
        // Cut-short weights.
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        std::fs::write(
            dir.join(CONFIG_FILE),
            serde_json::to_string(m.config()).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), &bytes[..bytes.len() / 2]).unwrap();
        let err = DemoModel::load(&dir, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
