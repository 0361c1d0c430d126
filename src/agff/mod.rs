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
    /// A tensor has the wrong shape: perspective embeddings that are not a non-empty
    /// `[n, 1+K, d]`, similarities whose last axis is not 4, or a score matrix that is not
    /// `[B, C]`. Holds the shape that was given.
    #[error("perspective embeddings must be a [n, 1+K, d] tensor, got shape {0:?}")]
    BadShape(Vec<usize>),
    /// Two sets of perspective embeddings cannot be compared or concatenated: their
    /// width d or their number K of fine-grained perspectives differ.
    #[error("query and candidate embeddings differ: {0}")]
    Mismatch(String),
    /// [`PerspectiveEmbeddings::from_unit`] found a vector that is not unit length (or is
    /// NaN).
    #[error("perspective vector {index} of input {input} has norm {norm}, expected 1")]
    NotUnit {
        /// Row of the input in the batch.
        input: usize,
        /// Perspective index (0 = global, 1..=K fine-grained).
        index: usize,
        /// The L2 norm found.
        norm: f32,
    },
    /// A setting is out of range or cannot be parsed: an unknown aggregator or FF
    /// pairing, γ, β or τ not positive, θ not finite, α negative, or a contrastive batch
    /// with fewer candidates than queries.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A value that must be finite is not (e.g. the InfoNCE loss when the scores hold NaN
    /// or infinity).
    #[error("not a finite number: {0}")]
    NonFinite(String),
    /// A candle tensor operation failed (device, dtype or shape error).
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
