//! The demo model's configuration and its word-level vocabulary.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::perspective::{Perspective, PerspectiveSet};

/// Padding (never attended to).
pub const PAD: &str = "<pad>";
/// A word outside the vocabulary.
pub const UNK: &str = "<unk>";
/// Start of every sequence.
pub const BOS: &str = "<bos>";
/// Placeholder id at visual-token positions (the embedding there comes from the image).
pub const IMG: &str = "<img>";
/// Placeholder id at soft-prompt positions.
pub const SOFT: &str = "<soft>";
/// Last token of every perspective branch: its final hidden state is the embedding.
pub const EMB: &str = "<emb>";
/// The special tokens, at the start of every demo vocabulary in this order.
pub const SPECIALS: [&str; 6] = [PAD, UNK, BOS, IMG, SOFT, EMB];

/// How the vision tower turns pixels into tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// One linear map of each `patch × patch` block (ViT's patch embedding).
    #[default]
    Linear,
    /// Three 3×3 convolutions of stride 2 (padding 1, GELU between them), so `patch`
    /// must be 8: every token sees a 15-pixel neighbourhood, overlapping its neighbours'.
    /// Channels: `stem_channels[0]`, `stem_channels[1]`, then `vision_width`.
    Conv,
}

/// Shape of the demo MLLM: a small ViT, a projector and a small causal language model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    /// Images are resized to `image_size × image_size`.
    pub image_size: usize,
    /// Pixels per visual token along a side: `(image_size/patch)²` visual tokens.
    pub patch: usize,
    /// The pixel stem (older configs without the key use the linear one).
    #[serde(default)]
    pub stem: Stem,
    /// Channels of the first two convolutions of a [`Stem::Conv`].
    #[serde(default = "default_stem_channels")]
    pub stem_channels: [usize; 2],
    /// Width of the vision tower's tokens (the projector maps them to `hidden`).
    pub vision_width: usize,
    /// Transformer blocks of the vision tower.
    pub vision_layers: usize,
    /// Attention heads of each vision block (`vision_width` must be a multiple).
    pub vision_heads: usize,
    /// Width of the language model and of the embeddings.
    pub hidden: usize,
    /// Decoder layers of the language model.
    pub layers: usize,
    /// Attention heads of each decoder layer (`hidden` must be a multiple).
    pub heads: usize,
    /// SwiGLU intermediate width.
    pub mlp: usize,
    /// Longest sequence (learned absolute positions).
    pub max_positions: usize,
    /// Add a fixed 2-D sine-cosine embedding of each visual token's (row, column) to the
    /// language model's input at the visual positions, on top of the learned sequence
    /// positions ([`super::visual_position_table`]), as Qwen3-VL gives its visual tokens
    /// height and width positions (MRoPE). With the learned 1-D positions alone a linear
    /// probe reads a token's column from the language model's inputs for 0.299 of the
    /// committed weights' tokens (`eval probes --model demo --positions`; chance 0.083),
    /// with this 0.922. Off unless asked for (`train --visual-positions-2d`): a recipe run
    /// with it did not separate position pairs any better (README). Older configs
    /// without the key have none.
    #[serde(default)]
    pub visual_position_2d: bool,
    /// Words, specials first ([`SPECIALS`]).
    pub vocab: Vec<String>,
    /// The perspectives the model was trained with (global first).
    pub perspectives: PerspectiveSet,
    /// Trained fusion logits θ (GG, FG, GF, FF).
    #[serde(default)]
    pub fusion_theta: [f64; 4],
    /// Trained fusion temperature β.
    #[serde(default = "default_beta")]
    pub fusion_beta: f64,
    /// Free-form notes on how the weights were made (the training command).
    #[serde(default)]
    pub provenance: String,
}

fn default_beta() -> f64 {
    0.05
}

fn default_stem_channels() -> [usize; 2] {
    [32, 64]
}

impl DemoConfig {
    /// The default shape over the given words (the scene grammar's vocabulary).
    pub fn new(words: &[&str], perspectives: PerspectiveSet) -> Self {
        let mut vocab: Vec<String> = SPECIALS.iter().map(ToString::to_string).collect();
        let mut extra: Vec<&str> = words.to_vec();
        for p in &perspectives.perspectives {
            extra.extend(p.instruction.split_whitespace());
        }
        for w in extra {
            let w = w.to_lowercase();
            if !vocab.contains(&w) {
                vocab.push(w);
            }
        }
        Self {
            image_size: 96,
            patch: 8,
            stem: Stem::Conv,
            stem_channels: default_stem_channels(),
            vision_width: 96,
            vision_layers: 2,
            vision_heads: 4,
            hidden: 128,
            layers: 3,
            heads: 4,
            mlp: 256,
            max_positions: 256,
            visual_position_2d: false,
            vocab,
            perspectives,
            fusion_theta: [0.0; 4],
            fusion_beta: 0.05,
            provenance: String::new(),
        }
    }

    /// The demo's perspectives: the global view and the four fine-grained ones the scenes'
    /// captions are written for, each with a two-word instruction and two soft tokens.
    pub fn default_perspectives(k: usize) -> PerspectiveSet {
        let fine = [
            ("attributes", "focus attributes"),
            ("count", "focus count"),
            ("spatial", "focus spatial"),
            ("text", "focus text"),
        ];
        let mut perspectives = vec![Perspective::new("global", "")];
        for (name, instruction) in fine.iter().take(k) {
            let mut p = Perspective::new(name, instruction);
            p.soft_tokens = 2;
            perspectives.push(p);
        }
        PerspectiveSet { perspectives }
    }

    /// Visual tokens per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.patch == 0 || !self.image_size.is_multiple_of(self.patch) {
            return Err(format!(
                "image_size {} is not a multiple of patch {}",
                self.image_size, self.patch
            ));
        }
        if self.stem == Stem::Conv && self.patch != 8 {
            return Err(format!(
                "a conv stem (three stride-2 convolutions) needs patch 8, not {}",
                self.patch
            ));
        }
        if self.stem_channels.contains(&0) {
            return Err("stem_channels must be positive".into());
        }
        if self.vision_heads == 0 || !self.vision_width.is_multiple_of(self.vision_heads) {
            return Err("vision_width must be a multiple of vision_heads".into());
        }
        if self.visual_position_2d && !self.hidden.is_multiple_of(4) {
            return Err(format!(
                "visual_position_2d needs hidden to be a multiple of 4, not {}",
                self.hidden
            ));
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err("hidden must be a multiple of heads".into());
        }
        for (i, s) in SPECIALS.iter().enumerate() {
            if self.vocab.get(i).map(String::as_str) != Some(*s) {
                return Err(format!("vocab entry {i} must be {s}"));
            }
        }
        if self.perspectives.perspectives.is_empty() {
            return Err("the model needs at least the global perspective".into());
        }
        Ok(())
    }
}

/// Word-level tokenizer over the config's vocabulary.
#[derive(Debug, Clone)]
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// A tokenizer over `words` (a config's `vocab`, specials first): a word's id is its
    /// index.
    pub fn new(words: &[String]) -> Self {
        let ids = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Self {
            words: words.to_vec(),
            ids,
        }
    }

    /// Id of a special token (always present in a validated config).
    pub fn special(&self, token: &str) -> u32 {
        self.ids.get(token).copied().unwrap_or(1)
    }

    /// Lower-cases, splits on anything that is not a letter or digit, and maps words to
    /// ids; unknown words become `<unk>` and are returned in the second list.
    pub fn encode(&self, text: &str) -> (Vec<u32>, Vec<String>) {
        let mut ids = Vec::new();
        let mut unknown = Vec::new();
        let lower = text.to_lowercase();
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            match self.ids.get(word) {
                Some(&id) => ids.push(id),
                None => {
                    ids.push(self.special(UNK));
                    unknown.push(word.to_string());
                }
            }
        }
        (ids, unknown)
    }

    /// The word of an id.
    pub fn word(&self, id: u32) -> &str {
        self.words
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or(UNK)
    }

    /// Number of words, specials included (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary has no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}
