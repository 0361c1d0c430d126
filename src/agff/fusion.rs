//! Adaptive smooth fusion of the four pattern similarities (§3).

use candle_core::{D, DType, Device, Tensor, Var};

use super::{AgffError, Result, log_sum_exp_last};

/// Initial values of the learnable fusion parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionInit {
    /// Similarity logits θ (GG, FG, GF, FF); `w = softmax(θ)`. Default: all 0.
    pub theta: [f64; 4],
    /// Fusion temperature β = exp(ρ). Default: 0.05.
    pub beta: f64,
}

impl Default for FusionInit {
    fn default() -> Self {
        Self {
            theta: [0.0; 4],
            beta: 0.05,
        }
    }
}

/// `s = β·log Σ_m w_m·exp(s_m/β)` with `w = softmax(θ)` and `β = exp(ρ)`; θ and ρ are
/// learnable [`Var`]s.
#[derive(Debug, Clone)]
pub struct Fusion {
    theta: Var,
    rho: Var,
}

/// Fused scores and the per-pair fusion weights.
#[derive(Debug, Clone)]
pub struct Fused {
    /// The fused score of every pair, the pattern tensor without its last axis.
    pub scores: Tensor,
    /// `a_m = w_m·exp(s_m/β) / Σ w·exp(s/β) = ∂s/∂s_m`, same shape as the patterns; sums
    /// to 1 over the last axis and says which pattern decided the score.
    pub weights: Tensor,
}

impl Fusion {
    /// New parameters on `device` with the given dtype.
    pub fn new(init: FusionInit, dtype: DType, device: &Device) -> Result<Self> {
        if !(init.beta.is_finite() && init.beta > 0.0) {
            return Err(AgffError::Config(format!(
                "fusion temperature β must be positive, got {}",
                init.beta
            )));
        }
        if init.theta.iter().any(|t| !t.is_finite()) {
            return Err(AgffError::Config(format!(
                "fusion logits θ must be finite, got {:?}",
                init.theta
            )));
        }
        let theta = Tensor::new(&init.theta, device)?.to_dtype(dtype)?;
        let rho = Tensor::new(init.beta.ln(), device)?.to_dtype(dtype)?;
        Ok(Self {
            theta: Var::from_tensor(&theta)?,
            rho: Var::from_tensor(&rho)?,
        })
    }

    /// The fusion a backbone was trained with (f32, on its device), or the defaults when
    /// it has none.
    pub fn for_backbone(backbone: &dyn crate::model::Backbone) -> Result<Self> {
        let init = backbone
            .trained_fusion()
            .map_or(FusionInit::default(), |f| FusionInit {
                theta: f.theta,
                beta: f.beta,
            });
        Self::new(init, DType::F32, backbone.device())
    }

    /// The pattern logits θ, `[4]`.
    pub fn theta(&self) -> &Var {
        &self.theta
    }

    /// The log temperature ρ, a scalar.
    pub fn rho(&self) -> &Var {
        &self.rho
    }

    /// Both learnable parameters, for an optimiser.
    pub fn vars(&self) -> Vec<Var> {
        vec![self.theta.clone(), self.rho.clone()]
    }

    /// The pattern weights `w = softmax(θ)` as numbers.
    pub fn similarity_weights(&self) -> Result<[f32; 4]> {
        let w = candle_nn::ops::softmax(self.theta.as_tensor(), 0)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok([w[0], w[1], w[2], w[3]])
    }

    /// The temperature β = exp(ρ).
    pub fn beta(&self) -> Result<f64> {
        Ok(self
            .rho
            .as_tensor()
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .exp())
    }

    /// Fuses `[…, 4]` pattern similarities (see [`super::agff_similarities`]).
    pub fn fuse(&self, similarities: &Tensor) -> Result<Fused> {
        if similarities.dims().last() != Some(&4) {
            return Err(AgffError::BadShape(similarities.dims().to_vec()));
        }
        let theta = self.theta.as_tensor();
        let rho = self.rho.as_tensor();
        let log_w = candle_nn::ops::log_softmax(theta, 0)?;
        let beta = rho.exp()?;
        // z_m = s_m/β + log w_m, so s = β·logsumexp(z) and a = softmax(z).
        let z = similarities.broadcast_div(&beta)?.broadcast_add(&log_w)?;
        let lse = log_sum_exp_last(&z)?;
        let weights = z.broadcast_sub(&lse)?.exp()?;
        let scores = lse.squeeze(D::Minus1)?.broadcast_mul(&beta)?;
        Ok(Fused { scores, weights })
    }
}
