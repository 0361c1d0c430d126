//! Fast, non-differentiable AGFF scoring for search and benchmarks.
//!
//! [`super::agff_similarities`] + [`super::Fusion::fuse`] build the scores from tensor
//! operations so that training can differentiate them; after the matrix product each of
//! those operations is a separate single-threaded pass over memory. For inference this
//! module runs the same matrix product and then computes the four patterns, the fused score
//! and the fusion weights of each pair in one parallel pass over the product. Both paths are
//! tested to agree.

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

use super::similarities::all_perspective_products;
use super::{Aggregator, FfPairing, Fusion, PerspectiveEmbeddings, Result, SimilarityConfig};

/// Pairs handed to one worker at a time.
const CHUNK: usize = 256;

/// Everything the app shows about one (query, candidate) score.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairScore {
    /// The fused score s.
    pub fused: f32,
    /// s_GG, s_FG, s_GF, s_FF.
    pub similarities: [f32; 4],
    /// The fusion weights a_m = ∂s/∂s_m, summing to 1.
    pub weights: [f32; 4],
}

/// Scores of Q queries × C candidates, row-major by query.
#[derive(Debug, Clone)]
pub struct ScoreTable {
    /// Number of queries Q.
    pub queries: usize,
    /// Number of candidates C.
    pub candidates: usize,
    /// The Q·C scores, row-major: pair (q, c) is at `q * candidates + c`.
    pub pairs: Vec<PairScore>,
}

impl ScoreTable {
    /// The score of query `q` against candidate `c`.
    pub fn get(&self, q: usize, c: usize) -> Option<&PairScore> {
        if q < self.queries && c < self.candidates {
            self.pairs.get(q * self.candidates + c)
        } else {
            None
        }
    }

    /// All candidates' scores for query `q`.
    pub fn row(&self, q: usize) -> &[PairScore] {
        let start = (q * self.candidates).min(self.pairs.len());
        let end = ((q + 1) * self.candidates).min(self.pairs.len());
        &self.pairs[start..end]
    }
}

/// A frozen copy of the fusion parameters and pattern settings, for inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedScorer {
    config: SimilarityConfig,
    log_w: [f32; 4],
    beta: f32,
}

impl FusedScorer {
    /// Snapshots the current values of `fusion`.
    pub fn new(config: SimilarityConfig, fusion: &Fusion) -> Result<Self> {
        let w = fusion.similarity_weights()?;
        Ok(Self {
            config,
            log_w: w.map(f32::ln),
            beta: fusion.beta()? as f32,
        })
    }

    /// Fuses one pair's four pattern similarities: the fused score and the weights a_m.
    pub fn fuse_similarities(&self, similarities: [f32; 4]) -> (f32, [f32; 4]) {
        let z: [f32; 4] = std::array::from_fn(|m| similarities[m] / self.beta + self.log_w[m]);
        let shift = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = shift + z.iter().map(|v| (v - shift).exp()).sum::<f32>().ln();
        (self.beta * lse, z.map(|v| (v - lse).exp()))
    }

    /// One pair, from its `(1+K)×(1+K)` perspective similarities `sim(a, b)`
    /// (0 = global). `scratch` holds at least K·K values.
    fn pair(&self, k: usize, sim: impl Fn(usize, usize) -> f32, scratch: &mut [f32]) -> PairScore {
        let gg = sim(0, 0);
        let similarities = if k == 0 {
            [gg; 4]
        } else {
            let agg: Aggregator = self.config.aggregator;
            let mut reduce = |f: &dyn Fn(usize) -> f32, n: usize| {
                for (i, slot) in scratch[..n].iter_mut().enumerate() {
                    *slot = f(i);
                }
                agg.reduce_slice(&scratch[..n])
            };
            let fg = reduce(&|i| sim(i + 1, 0), k);
            let gf = reduce(&|i| sim(0, i + 1), k);
            let ff = match self.config.ff_pairing {
                FfPairing::Matched => reduce(&|i| sim(i + 1, i + 1), k),
                FfPairing::All => reduce(&|i| sim(i / k + 1, i % k + 1), k * k),
            };
            [gg, fg, gf, ff]
        };
        let (fused, weights) = self.fuse_similarities(similarities);
        PairScore {
            fused,
            similarities,
            weights,
        }
    }

    /// Scores every (query, candidate) pair: one matrix product over all perspective
    /// vectors (on the embeddings' device), then one parallel pass on the CPU.
    pub fn score(
        &self,
        query: &PerspectiveEmbeddings,
        candidates: &PerspectiveEmbeddings,
    ) -> Result<ScoreTable> {
        let (nq, nc, k) = (query.len(), candidates.len(), query.k());
        let p = k + 1;
        let sims = all_perspective_products(query, candidates)?.to_dtype(DType::F32)?;
        let owned;
        let (guard, layout) = sims.storage_and_layout();
        let flat: &[f32] = match (&*guard, layout.contiguous_offsets()) {
            (Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
            _ => {
                // Another device, or an unexpected layout: copy to the host once.
                owned = Tensor::flatten_all(&sims)?.to_vec1::<f32>()?;
                &owned
            }
        };
        let row_len = nc * p;
        let mut pairs = vec![PairScore::default(); nq * nc];
        pairs.par_chunks_mut(CHUNK).enumerate().for_each_init(
            || vec![0f32; (k * k).max(1)],
            |scratch, (chunk, out)| {
                for (offset, slot) in out.iter_mut().enumerate() {
                    let index = chunk * CHUNK + offset;
                    let (i, j) = (index / nc, index % nc);
                    let sim = |a: usize, b: usize| flat[(i * p + a) * row_len + j * p + b];
                    *slot = self.pair(k, sim, scratch);
                }
            },
        );
        Ok(ScoreTable {
            queries: nq,
            candidates: nc,
            pairs,
        })
    }
}
