//! InfoNCE on the fused score matrix (§4) and EGA, explicit amplification of the
//! hard negatives' gradient (§5).

use candle_core::{D, DType, Tensor};

use super::{AgffError, Result};

/// Rejects a similarity matrix that is not `[B, C]` with `C ≥ B`.
fn check_scores(scores: &Tensor) -> Result<(usize, usize)> {
    let (b, c) = scores
        .dims2()
        .map_err(|_| AgffError::BadShape(scores.dims().to_vec()))?;
    if b == 0 || c < b {
        return Err(AgffError::Config(format!(
            "a contrastive batch needs B ≥ 1 queries and at least B candidates, got [{b}, {c}]"
        )));
    }
    Ok((b, c))
}

fn check_tau(tau: f64) -> Result<()> {
    if tau.is_finite() && tau > 0.0 {
        Ok(())
    } else {
        Err(AgffError::Config(format!(
            "temperature τ must be positive, got {tau}"
        )))
    }
}

/// `[B, C]` with ones at (i, i): where the positives are.
fn positive_mask(b: usize, c: usize, scores: &Tensor) -> Result<Tensor> {
    let mut mask = vec![0f32; b * c];
    for i in 0..b {
        mask[i * c + i] = 1.0;
    }
    Ok(Tensor::from_vec(mask, (b, c), scores.device())?.to_dtype(scores.dtype())?)
}

/// InfoNCE `L = -(1/B)·Σ_i log softmax(S_i/τ)_i` for a `[B, C]` matrix (C ≥ B) whose
/// positive for query i is candidate i. Returns a scalar tensor.
pub fn info_nce(scores: &Tensor, tau: f64) -> Result<Tensor> {
    let (b, c) = check_scores(scores)?;
    check_tau(tau)?;
    let mask = positive_mask(b, c, scores)?;
    let log_p = candle_nn::ops::log_softmax(&(scores / tau)?, D::Minus1)?;
    Ok((log_p.mul(&mask)?.sum_all()? / -(b as f64))?)
}

/// EGA settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EgaConfig {
    /// Amplification strength α ≥ 0; α = 0 is plain InfoNCE. Default 1.0.
    pub alpha: f64,
    /// Temperature τ of InfoNCE and of the hardness. Default 0.02.
    pub tau: f64,
}

impl Default for EgaConfig {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            tau: 0.02,
        }
    }
}

/// The EGA objective and what the app shows about it.
#[derive(Debug, Clone)]
pub struct EgaOutput {
    /// Scalar whose value is the InfoNCE loss and whose gradient w.r.t. the scores is
    /// `G/(τB)`: call `backward` on it.
    pub objective: Tensor,
    /// The InfoNCE value, for logging.
    pub info_nce: f64,
    /// `P = softmax(S/τ)` by rows, `[B, C]` (detached).
    pub probs: Tensor,
    /// `h_ij = σ((S_ij − S_ii)/τ)` for negatives, 0 on positives (detached).
    pub hardness: Tensor,
    /// `1 + α·h_ij` for negatives, 1 on positives (detached): a hard negative's weight.
    pub amplification: Tensor,
    /// `G`, the gradient of the loss w.r.t. S times τB (detached).
    pub grad_weights: Tensor,
}

/// InfoNCE with explicit hard-negative gradient amplification on a `[B, C]` fused score
/// matrix (C ≥ B, positive of query i at candidate i), as the surrogate of method.md §5:
///
/// ```text
/// h_ij = σ((S_ij − S_ii)/τ),  G_ij = P_ij·(1 + α·h_ij),  G_ii = −Σ_{j≠i} G_ij
/// L_sur = Σ_ij detach(G_ij)·S_ij/(τB)
/// ```
///
/// The returned objective is `L_sur + detach(L_InfoNCE − L_sur)`: its value is the InfoNCE
/// loss, its gradient is EGA's. With α = 0 the gradient is plain InfoNCE's, `(P − I)/(τB)`.
pub fn ega_objective(scores: &Tensor, config: &EgaConfig) -> Result<EgaOutput> {
    let (b, c) = check_scores(scores)?;
    check_tau(config.tau)?;
    if !(config.alpha.is_finite() && config.alpha >= 0.0) {
        return Err(AgffError::Config(format!(
            "EGA strength α must be ≥ 0, got {}",
            config.alpha
        )));
    }
    let tau = config.tau;
    let mask = positive_mask(b, c, scores)?;
    let negatives = mask.affine(-1.0, 1.0)?;
    let s = scores.detach();
    let probs = candle_nn::ops::softmax(&(&s / tau)?, D::Minus1)?;
    let positive = s.mul(&mask)?.sum_keepdim(D::Minus1)?;
    let hardness =
        candle_nn::ops::sigmoid(&(s.broadcast_sub(&positive)? / tau)?)?.mul(&negatives)?;
    let amplification = (hardness.affine(config.alpha, 1.0)?.mul(&negatives)? + &mask)?;
    let g_neg = probs.mul(&amplification)?.mul(&negatives)?;
    let g_pos = g_neg.sum_keepdim(D::Minus1)?.neg()?.broadcast_mul(&mask)?;
    let grad_weights = (g_neg + g_pos)?;

    let surrogate = (scores.mul(&grad_weights)?.sum_all()? / (tau * b as f64))?;
    let nce = info_nce(&s, tau)?;
    let info_nce = nce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !info_nce.is_finite() {
        return Err(AgffError::NonFinite(format!(
            "InfoNCE is not finite ({info_nce}): the scores hold NaN or infinity"
        )));
    }
    let objective = (&surrogate + (nce - &surrogate)?.detach())?;
    Ok(EgaOutput {
        objective,
        info_nce,
        probs,
        hardness,
        amplification,
        grad_weights,
    })
}
