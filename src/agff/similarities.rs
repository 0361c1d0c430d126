//! The four perception-pattern similarities (§2), from one matrix product.

use candle_core::{D, Tensor};

use super::{AgffError, PerspectiveEmbeddings, Result, log_sum_exp_last};

/// How the K perspective similarities of a pattern become one number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregator {
    /// The largest similarity.
    Max,
    /// The mean similarity.
    Mean,
    /// Log-mean-exp with temperature γ (ours, the default with γ = 0.05):
    /// `γ·log((1/K)·Σ_k exp(x_k/γ))`, between mean (γ→∞) and max (γ→0), with gradient
    /// reaching every perspective.
    Lme {
        /// The temperature γ (> 0).
        gamma: f64,
    },
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::Lme { gamma: 0.05 }
    }
}

impl std::str::FromStr for Aggregator {
    type Err = AgffError;

    /// `max`, `mean`, `lme` (γ = 0.05) or `lme:γ`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "max" => Ok(Aggregator::Max),
            None if s == "mean" => Ok(Aggregator::Mean),
            None if s == "lme" => Ok(Aggregator::default()),
            Some(("lme", g)) => {
                let gamma: f64 = g.parse().map_err(|_| {
                    AgffError::Config(format!("lme temperature {g:?} is not a number"))
                })?;
                let agg = Aggregator::Lme { gamma };
                agg.validate()?;
                Ok(agg)
            }
            _ => Err(AgffError::Config(format!(
                "unknown aggregator {s:?}: expected max, mean, lme or lme:GAMMA"
            ))),
        }
    }
}

impl Aggregator {
    fn validate(self) -> Result<()> {
        match self {
            Aggregator::Lme { gamma } if !(gamma.is_finite() && gamma > 0.0) => Err(
                AgffError::Config(format!("lme temperature must be positive, got {gamma}")),
            ),
            _ => Ok(()),
        }
    }

    /// Aggregates over the last axis, dropping it.
    pub fn reduce_last(self, x: &Tensor) -> Result<Tensor> {
        let last = x.rank() - 1;
        let k = x.dim(last)?;
        let out = match self {
            Aggregator::Max => x.max(last)?,
            Aggregator::Mean => x.mean(last)?,
            Aggregator::Lme { gamma } => {
                let lse = log_sum_exp_last(&(x / gamma)?)?.squeeze(last)?;
                lse.affine(gamma, -gamma * (k as f64).ln())?
            }
        };
        Ok(out)
    }

    /// Aggregates a plain slice the same way; the scalar reference used by the fast
    /// inference paths and by tests.
    pub fn reduce_slice(self, x: &[f32]) -> f32 {
        let k = x.len() as f32;
        match self {
            Aggregator::Max => x.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            Aggregator::Mean => x.iter().sum::<f32>() / k,
            Aggregator::Lme { gamma } => {
                let g = gamma as f32;
                let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = x.iter().map(|&v| ((v - m) / g).exp()).sum();
                m + g * (sum / k).ln()
            }
        }
    }
}

/// Which fine-grained pairs the FF pattern compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FfPairing {
    /// `<f_q,k, f_c,k>` for the same perspective k (ours, the default).
    #[default]
    Matched,
    /// All K·K pairs `<f_q,k, f_c,l>`.
    All,
}

impl std::str::FromStr for FfPairing {
    type Err = AgffError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "matched" => Ok(FfPairing::Matched),
            "all" => Ok(FfPairing::All),
            _ => Err(AgffError::Config(format!(
                "unknown FF pairing {s:?}: expected matched or all"
            ))),
        }
    }
}

/// Settings of the pattern similarities.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimilarityConfig {
    /// How FG, GF and FF reduce their K (or K·K) perspective similarities (§2).
    pub aggregator: Aggregator,
    /// Which fine-grained pairs FF compares.
    pub ff_pairing: FfPairing,
}

/// The pattern similarities of every (query, candidate) pair.
#[derive(Debug, Clone)]
pub struct SimilarityScores {
    /// `[Q, C, 1+K, 1+K]`: `<query perspective a, candidate perspective b>` for every pair
    /// of perspectives (0 = global), the per-perspective similarities shown to users.
    pub perspective_sims: Tensor,
    /// `[Q, C, 4]`: s_GG, s_FG, s_GF, s_FF in [`super::Similarity::ALL`] order.
    pub similarities: Tensor,
}

/// Computes the four pattern similarities for every (query, candidate) pair.
///
/// All perspective vectors of both batches go through a single matrix product
/// `[Q·(1+K), d] × [d, C·(1+K)]`; the patterns are then slices of it, aggregated.
///
/// With K = 0 there are no fine-grained embeddings: FG, GF and FF are then set equal to
/// GG, so the fused score is exactly s_GG (a global-only model).
pub fn agff_similarities(
    query: &PerspectiveEmbeddings,
    candidates: &PerspectiveEmbeddings,
    config: &SimilarityConfig,
) -> Result<SimilarityScores> {
    config.aggregator.validate()?;
    let (nq, nc, k) = (query.len(), candidates.len(), query.k());
    let p = k + 1;
    // [Q·P, C·P] is [Q, P, C, P]; put the pair axes first.
    let sims = all_perspective_products(query, candidates)?
        .reshape((nq, p, nc, p))?
        .permute((0, 2, 1, 3))?
        .contiguous()?;

    let gg = sims.narrow(2, 0, 1)?.narrow(3, 0, 1)?.reshape((nq, nc))?;
    let similarities = if k == 0 {
        Tensor::stack(&[&gg, &gg, &gg, &gg], 2)?
    } else {
        let agg = config.aggregator;
        // [Q, C, K]: query's fine perspectives against the candidate's global one.
        let fg = agg.reduce_last(&sims.narrow(2, 1, k)?.narrow(3, 0, 1)?.squeeze(3)?)?;
        let gf = agg.reduce_last(&sims.narrow(2, 0, 1)?.narrow(3, 1, k)?.squeeze(2)?)?;
        let ff_terms = match config.ff_pairing {
            FfPairing::All => sims
                .narrow(2, 1, k)?
                .narrow(3, 1, k)?
                .reshape((nq, nc, k * k))?,
            FfPairing::Matched => {
                // The diagonal (k, k), k ≥ 1, of each pair's P×P block.
                let diag: Vec<u32> = (1..p).map(|i| (i * p + i) as u32).collect();
                let idx = Tensor::new(diag.as_slice(), sims.device())?;
                sims.reshape((nq, nc, p * p))?
                    .index_select(&idx, D::Minus1)?
            }
        };
        let ff = agg.reduce_last(&ff_terms)?;
        Tensor::stack(&[&gg, &fg, &gf, &ff], 2)?
    };
    Ok(SimilarityScores {
        perspective_sims: sims,
        similarities,
    })
}

/// Every query perspective vector against every candidate perspective vector, in one
/// GEMM: `[Q·(1+K), d] × [d, C·(1+K)]`. Checks that the batches are compatible.
pub(crate) fn all_perspective_products(
    query: &PerspectiveEmbeddings,
    candidates: &PerspectiveEmbeddings,
) -> Result<Tensor> {
    check_compatible(query, candidates)?;
    let (p, d) = (query.k() + 1, query.dim());
    let q_flat = query.tensor().reshape((query.len() * p, d))?;
    let c_flat = candidates.tensor().reshape((candidates.len() * p, d))?;
    Ok(q_flat.matmul(&c_flat.t()?)?)
}

/// Query and candidate embeddings must share the width d and the number K.
fn check_compatible(
    query: &PerspectiveEmbeddings,
    candidates: &PerspectiveEmbeddings,
) -> Result<()> {
    if query.dim() != candidates.dim() {
        return Err(AgffError::Mismatch(format!(
            "embedding width {} vs {}",
            query.dim(),
            candidates.dim()
        )));
    }
    if query.k() != candidates.k() {
        return Err(AgffError::Mismatch(format!(
            "{} vs {} fine-grained perspectives",
            query.k(),
            candidates.k()
        )));
    }
    Ok(())
}
