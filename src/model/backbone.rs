//! The one interface every backbone implements (Qwen3-VL, the demo model): embed an input
//! under a set of perspectives, sharing the content prefix across the 1+K suffix branches.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::error::Result;
use super::perspective::PerspectiveSet;

/// What a model is, for caches: a name and a digest of its weights.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelIdentity {
    /// The model's name: the folder name for Qwen3-VL, `agff-lens-demo` for the demo
    /// model, `random` for random weights.
    pub name: String,
    /// A short hex digest of the weights (`random` for random weights); a cache built
    /// with other weights is not reused.
    pub weights_digest: String,
    /// How images are prepared, when the model has a choice (a Qwen3-VL model's
    /// preprocessing profile and pixel budget, e.g. `embedder 4096..1843200`; empty
    /// otherwise): part of the cache key, since it changes the vectors.
    pub preprocess: String,
}

/// One item to embed: an image, a text, or both.
#[derive(Debug, Clone, Default)]
pub struct EmbedInput {
    /// The image, if any (one image per input).
    pub image: Option<RgbImage>,
    /// The text, if any; with an image it follows the image in the prompt.
    pub text: Option<String>,
}

impl EmbedInput {
    /// A text-only input.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            image: None,
            text: Some(text.into()),
        }
    }

    /// An image-only input.
    pub fn image(image: RgbImage) -> Self {
        Self {
            image: Some(image),
            text: None,
        }
    }
}

/// Options of one embedding call.
#[derive(Debug, Clone, Default)]
pub struct EmbedOptions {
    /// Learnable soft-prompt vectors, one `[m, hidden]` tensor per perspective that has
    /// `soft_tokens = m > 0` (in perspective order; `None` for the others).
    pub soft_prompts: Vec<Option<Tensor>>,
    /// Return the attention from each branch's last token to the visual tokens, mean over
    /// heads and over this many last layers (0: none).
    pub attention_layers: usize,
    /// Make the visual-token inputs of the language model a gradient leaf (for the
    /// gradient heatmaps: attribution and mean-baseline).
    pub track_visual_inputs: bool,
    /// Cut a text longer than the model reads to fit (keeping its start, with a warning)
    /// instead of failing with [`super::ModelError::TooLong`].
    pub truncate: bool,
    /// Matryoshka dimensions: keep the first `dim` coordinates of every embedding before
    /// L2-normalising (Qwen3-VL-Embedding is trained for such prefixes); `None`: all.
    /// Applied where embeddings are normalised
    /// ([`crate::agff::PerspectiveEmbeddings::embed`]).
    pub dim: Option<usize>,
}

/// The tokens one perspective branch fed to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchTokens {
    /// Name of the perspective this branch embeds.
    pub name: String,
    /// The full sequence (shared prefix + this branch's suffix); soft tokens appear as the
    /// placeholder id given by `soft_placeholder`.
    pub input_ids: Vec<u32>,
    /// Positions in `input_ids` that hold soft-prompt vectors instead of token embeddings.
    pub soft_positions: Vec<usize>,
    /// Mean attention from the branch's last token to each visual token, when asked for.
    pub attention_to_visual: Option<Vec<f32>>,
}

/// The image's tokens inside the language model.
#[derive(Debug, Clone)]
pub struct VisualTokens {
    /// Merged grid `(rows, cols)`: one token per cell.
    pub grid: (usize, usize),
    /// Position of the first visual token in the sequence.
    pub first_position: usize,
    /// Inputs of the language model at the visual positions, `[rows·cols, hidden]` (a
    /// gradient leaf when `track_visual_inputs` was set).
    pub inputs: Tensor,
    /// Final-normed hidden states at the visual positions, `[rows·cols, hidden]`.
    pub hidden: Tensor,
}

/// The result of embedding one input.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[1+K, hidden]` last-token hidden states of the branches (not normalised).
    pub vectors: Tensor,
    /// The tokens of each of the 1+K branches, in perspective order.
    pub branches: Vec<BranchTokens>,
    /// The image's tokens inside the language model; `None` for a text-only input.
    pub visual: Option<VisualTokens>,
}

/// Fusion parameters trained together with a model (θ logits and β), if it has them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainedFusion {
    /// The fusion logits θ (method.md §3), in [`crate::agff::Similarity::ALL`] order.
    pub theta: [f64; 4],
    /// The fusion temperature β = exp(ρ) (> 0).
    pub beta: f64,
}

/// A model that embeds inputs under perspectives.
pub trait Backbone: Send + Sync {
    /// Name and weights digest, the model part of every cache key.
    fn identity(&self) -> &ModelIdentity;
    /// The perspectives this model is meant to be used with (global first).
    fn default_perspectives(&self) -> PerspectiveSet {
        PerspectiveSet::default_real()
    }
    /// Fusion parameters that were trained with the model, if any.
    fn trained_fusion(&self) -> Option<TrainedFusion> {
        None
    }
    /// The model's own trained soft-prompt vectors `[m, hidden]` for a perspective of that
    /// name and length, if it has them.
    fn trained_soft_prompt(&self, _perspective: &super::Perspective) -> Option<Tensor> {
        None
    }
    /// Words of `text` the model's tokenizer cannot represent (a word-level vocabulary
    /// reads them as unknown); empty for subword tokenizers.
    fn unknown_words(&self, _text: &str) -> Vec<String> {
        Vec::new()
    }
    /// Characters of `text` the tokenizer drops without a trace, each once in order of
    /// appearance (a word-level vocabulary drops emoji and symbols; ASCII punctuation
    /// separates words by design and is not listed); empty for subword tokenizers,
    /// which read every byte.
    fn dropped_characters(&self, _text: &str) -> Vec<char> {
        Vec::new()
    }
    /// How many words of `text` a word-level vocabulary knows (`None` for subword
    /// tokenizers, which read everything): a query with none holds nothing for the model.
    fn known_words(&self, _text: &str) -> Option<usize> {
        None
    }
    /// Width of the embeddings.
    fn hidden_size(&self) -> usize;
    /// The device the model's weights live on; inputs and outputs are on it too.
    fn device(&self) -> &Device;
    /// The prompt of each perspective branch as text, for `--show-prompt`.
    fn show_prompt(&self, input: &EmbedInput, perspectives: &PerspectiveSet)
    -> Result<Vec<String>>;
    /// Embeds `input` under every perspective of the set.
    fn embed(
        &self,
        input: &EmbedInput,
        perspectives: &PerspectiveSet,
        options: &EmbedOptions,
    ) -> Result<Embedding>;
}
