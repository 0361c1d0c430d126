//! One input's perspective embeddings: a global vector and K fine-grained ones (§1).

use candle_core::{D, Tensor};

use super::{AgffError, Result};

/// Norms further than this from 1 are rejected by [`PerspectiveEmbeddings::from_unit`].
const UNIT_TOLERANCE: f32 = 1e-3;

/// A batch of perspective embeddings, `[n, 1+K, d]`: index 0 along the middle axis is the
/// global embedding `g`, indices `1..=K` the fine-grained `f_1..f_K`. Every vector has
/// unit length.
#[derive(Debug, Clone)]
pub struct PerspectiveEmbeddings {
    vectors: Tensor,
}

impl PerspectiveEmbeddings {
    /// L2-normalises raw pooled hidden states `[n, 1+K, d]` (differentiably).
    pub fn from_raw(raw: Tensor) -> Result<Self> {
        check_shape(&raw)?;
        let norm = raw.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        // A zero vector stays zero instead of becoming NaN.
        let norm = norm.clamp(1e-12, f64::INFINITY)?;
        Ok(Self {
            vectors: raw.broadcast_div(&norm)?,
        })
    }

    /// One input embedded under `perspectives` and L2-normalised: `[1, 1+K, d]` in f32,
    /// differentiable when the options track anything, with the backbone's full
    /// [`Embedding`](crate::model::Embedding) (branch tokens, visual tokens) beside it.
    /// The one "embed, then normalise" of the crate (method.md §1).
    ///
    /// # Errors
    /// The backbone's error (bad input, text too long, …) as [`AgffError::Model`].
    pub fn embed(
        backbone: &dyn crate::model::Backbone,
        input: &crate::model::EmbedInput,
        perspectives: &crate::model::PerspectiveSet,
        options: &crate::model::EmbedOptions,
    ) -> Result<(Self, crate::model::Embedding)> {
        let e = backbone.embed(input, perspectives, options)?;
        let mut raw = e.vectors.to_dtype(candle_core::DType::F32)?;
        if let Some(dim) = options.dim {
            let hidden = raw.dim(D::Minus1)?;
            if dim == 0 || dim > hidden {
                return Err(AgffError::Model(crate::model::ModelError::Input(format!(
                    "--dim {dim}: the model's embeddings have {hidden} dimensions; give 1 to {hidden}"
                ))));
            }
            // Matryoshka: the prefix, renormalised below.
            raw = raw.narrow(1, 0, dim)?;
        }
        let unit = Self::from_raw(raw.unsqueeze(0)?)?;
        Ok((unit, e))
    }

    /// Wraps vectors known to be unit length without checking their norms (one pass less
    /// over a large gallery whose vectors were normalised when they were embedded).
    pub fn assume_unit(vectors: Tensor) -> Result<Self> {
        check_shape(&vectors)?;
        Ok(Self { vectors })
    }

    /// Wraps vectors that are already unit length (e.g. read from a cache), checking it.
    pub fn from_unit(vectors: Tensor) -> Result<Self> {
        check_shape(&vectors)?;
        let norms = vectors
            .to_dtype(candle_core::DType::F32)?
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .to_vec2::<f32>()?;
        for (input, row) in norms.iter().enumerate() {
            for (index, &norm) in row.iter().enumerate() {
                // NaN norms are rejected too.
                let is_unit = (norm - 1.0).abs() <= UNIT_TOLERANCE;
                if !is_unit {
                    return Err(AgffError::NotUnit { input, index, norm });
                }
            }
        }
        Ok(Self { vectors })
    }

    /// The `[n, 1+K, d]` tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.vectors
    }

    /// Number of inputs in the batch.
    pub fn len(&self) -> usize {
        self.vectors.dims()[0]
    }

    /// Whether the batch has no inputs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of fine-grained perspectives K.
    pub fn k(&self) -> usize {
        self.vectors.dims()[1] - 1
    }

    /// Embedding width d.
    pub fn dim(&self) -> usize {
        self.vectors.dims()[2]
    }

    /// The global embeddings, `[n, d]`.
    pub fn global(&self) -> Result<Tensor> {
        Ok(self.vectors.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// The fine-grained embeddings, `[n, K, d]`.
    pub fn fine(&self) -> Result<Tensor> {
        Ok(self.vectors.narrow(1, 1, self.k())?)
    }

    /// Concatenates batches with the same K and d.
    pub fn cat(parts: &[&PerspectiveEmbeddings]) -> Result<Self> {
        let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.vectors).collect();
        if let Some(first) = parts.first() {
            for p in parts {
                if p.k() != first.k() || p.dim() != first.dim() {
                    return Err(AgffError::Mismatch(format!(
                        "cannot concatenate K={} d={} with K={} d={}",
                        first.k(),
                        first.dim(),
                        p.k(),
                        p.dim()
                    )));
                }
            }
        }
        Ok(Self {
            vectors: Tensor::cat(&tensors, 0)?,
        })
    }
}

fn check_shape(t: &Tensor) -> Result<()> {
    let dims = t.dims();
    if dims.len() != 3 || dims[1] == 0 || dims[2] == 0 {
        return Err(AgffError::BadShape(dims.to_vec()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn from_raw_normalises_every_vector() {
        let raw = Tensor::randn(0f32, 3.0, (3, 5, 7), &Device::Cpu).unwrap();
        let p = PerspectiveEmbeddings::from_raw(raw).unwrap();
        assert_eq!((p.len(), p.k(), p.dim()), (3, 4, 7));
        // Already unit, so the strict constructor accepts it.
        let again = PerspectiveEmbeddings::from_unit(p.tensor().clone()).unwrap();
        assert_eq!(again.global().unwrap().dims(), &[3, 7]);
        assert_eq!(again.fine().unwrap().dims(), &[3, 4, 7]);
    }

    #[test]
    fn rejects_bad_shapes_and_non_unit_vectors() {
        let dev = Device::Cpu;
        let flat = Tensor::zeros((3, 7), DType::F32, &dev).unwrap();
        assert!(matches!(
            PerspectiveEmbeddings::from_raw(flat),
            Err(AgffError::BadShape(_))
        ));
        let twos = (Tensor::ones((2, 2, 4), DType::F32, &dev).unwrap() * 2.0).unwrap();
        let err = PerspectiveEmbeddings::from_unit(twos).unwrap_err();
        assert!(
            matches!(
                err,
                AgffError::NotUnit {
                    input: 0,
                    index: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn zero_vectors_stay_finite() {
        let zeros = Tensor::zeros((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let p = PerspectiveEmbeddings::from_raw(zeros).unwrap();
        let v: Vec<f32> = p.tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
