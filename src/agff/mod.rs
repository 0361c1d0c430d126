//! The AGFF-Embed method with EGA, on candle tensors (`../shared/docs/method.md` §1–§5).
//!
//! Everything here is batched and differentiable:
//!
//! - [`PerspectiveEmbeddings`]: one global and K fine-grained unit vectors per input (§1);
//! - [`agff_similarities`]: the four perception-pattern similarities GG, FG, GF, FF for
//!   every (query, candidate) pair, from one matrix product over all perspective vectors (§2);
//! - [`Fusion`]: `s = β·log Σ_m w_m·exp(s_m/β)` with learnable θ and ρ, and the per-pair
//!   weights `a_m = ∂s/∂s_m` (§3);
//! - [`info_nce`] and [`ega_objective`]: InfoNCE on the fused matrix and its explicit
//!   hard-negative gradient amplification (§4–§5);
//! - [`FusedScorer`]: the same scores without autograd, in one parallel pass, for search.
//!
//! Choices that are ours rather than the papers' (the `lme` aggregator, matched FF pairs,
//! relative-similarity hardness, the defaults) are options with documented defaults.

mod fusion;
mod loss;
mod perspectives;
mod scorer;
mod similarities;

pub use fusion::{Fused, Fusion, FusionInit};
pub use loss::{EgaConfig, EgaOutput, ega_objective, info_nce};
pub use perspectives::PerspectiveEmbeddings;
pub use scorer::{FusedScorer, PairScore, ScoreTable};
pub use similarities::{
    Aggregator, FfPairing, SimilarityConfig, SimilarityScores, agff_similarities,
};

/// The four AGFF similarities of a (query, candidate) pair (method.md §2; the paper
/// calls them perception patterns), in the order used by every `[…, 4]` tensor here.
/// Not to be confused with MMVP-VLM's nine visual patterns
/// ([`crate::scenes::MmvpPattern`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Similarity {
    /// Global query vs global candidate.
    GG,
    /// Fine-grained query vs global candidate.
    FG,
    /// Global query vs fine-grained candidate.
    GF,
    /// Fine-grained query vs fine-grained candidate.
    FF,
}

impl Similarity {
    /// All four, in tensor order.
    pub const ALL: [Similarity; 4] = [
        Similarity::GG,
        Similarity::FG,
        Similarity::GF,
        Similarity::FF,
    ];

    /// The short name used in JSON and the UI.
    pub fn name(self) -> &'static str {
        match self {
            Similarity::GG => "GG",
            Similarity::FG => "FG",
            Similarity::GF => "GF",
            Similarity::FF => "FF",
        }
    }

    /// Position of this similarity along the last axis of a `[…, 4]` tensor.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What can go wrong in the AGFF layer.
#[derive(Debug, thiserror::Error)]
pub enum AgffError {
    #[error("perspective embeddings must be a [n, 1+K, d] tensor, got shape {0:?}")]
    BadShape(Vec<usize>),
    #[error("query and candidate embeddings differ: {0}")]
    Mismatch(String),
    #[error("perspective vector {index} of input {input} has norm {norm}, expected 1")]
    NotUnit {
        input: usize,
        index: usize,
        norm: f32,
    },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("not a finite number: {0}")]
    NonFinite(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The backbone failed to embed an input.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

/// Result type of this layer.
pub type Result<T> = std::result::Result<T, AgffError>;

/// `log Σ exp(x)` over the last axis (kept), with the shift detached: the shift cancels
/// in the gradient, so detaching it only saves the backward pass some work.
pub(crate) fn log_sum_exp_last(
    x: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let last = x.rank() - 1;
    let shift = x.max_keepdim(last)?.detach();
    x.broadcast_sub(&shift)?
        .exp()?
        .sum_keepdim(last)?
        .log()?
        .broadcast_add(&shift)
}
