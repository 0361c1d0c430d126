//! Scoring a backbone on the pair benchmarks (P-MMVP, MMVP-VLM folders) and on scene
//! retrieval, with the fused AGFF score and each perception pattern alone.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::{MmvpPattern, MmvpTally, Scene, SceneRng, ScenesError, mmvp_pair_correct, pmmvp_pairs};
use crate::agff::{FusedScorer, Fusion, Pattern, PatternConfig, PerspectiveEmbeddings, ScoreTable};
use crate::model::{Backbone, EmbedInput, EmbedOptions, PerspectiveSet};

/// Default seed of the P-MMVP pairs (the training stream uses other seeds).
pub const PMMVP_SEED: u64 = 20_260_226;

/// A backbone, its perspectives and a frozen fusion: everything needed to score pairs.
pub struct Evaluator<'a> {
    pub backbone: &'a dyn Backbone,
    pub perspectives: PerspectiveSet,
    pub scorer: FusedScorer,
}

/// Accuracy (%) of the fused score and of each pattern alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MethodScores {
    pub fused: f64,
    #[serde(rename = "GG")]
    pub gg: f64,
    #[serde(rename = "FG")]
    pub fg: f64,
    #[serde(rename = "GF")]
    pub gf: f64,
    #[serde(rename = "FF")]
    pub ff: f64,
}

/// Per pattern and on average, as `agff-lens eval pmmvp --json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairReport {
    pub patterns: BTreeMap<String, MethodScores>,
    pub average: MethodScores,
    pub pairs_per_pattern: BTreeMap<String, usize>,
}

/// The five scoring methods: fused, then GG, FG, GF, FF.
const METHODS: usize = 5;

impl<'a> Evaluator<'a> {
    /// Uses the backbone's default perspectives and trained fusion (or the defaults).
    pub fn new(backbone: &'a dyn Backbone) -> Result<Self, ScenesError> {
        let perspectives = backbone.default_perspectives();
        Self::with_perspectives(backbone, perspectives)
    }

    pub fn with_perspectives(
        backbone: &'a dyn Backbone,
        perspectives: PerspectiveSet,
    ) -> Result<Self, ScenesError> {
        let fusion = Fusion::for_backbone(backbone).map_err(eval_err)?;
        let scorer = FusedScorer::new(PatternConfig::default(), &fusion).map_err(eval_err)?;
        Ok(Self {
            backbone,
            perspectives,
            scorer,
        })
    }

    /// Unit perspective embeddings `[n, 1+K, d]` of the inputs, one forward each.
    pub fn embed(&self, inputs: &[EmbedInput]) -> Result<PerspectiveEmbeddings, ScenesError> {
        let mut rows = Vec::with_capacity(inputs.len());
        for input in inputs {
            let e = self
                .backbone
                .embed(input, &self.perspectives, &EmbedOptions::default())
                .map_err(|e| ScenesError::Eval(e.to_string()))?;
            rows.push(e.vectors.to_dtype(DType::F32).map_err(eval_err)?);
        }
        let t = Tensor::stack(&rows, 0).map_err(eval_err)?;
        PerspectiveEmbeddings::from_raw(t).map_err(eval_err)
    }

    /// Scores every text query against every image candidate.
    pub fn score(
        &self,
        queries: &PerspectiveEmbeddings,
        candidates: &PerspectiveEmbeddings,
    ) -> Result<ScoreTable, ScenesError> {
        self.scorer.score(queries, candidates).map_err(eval_err)
    }

    /// Whether each method gets one pair right: statements × images.
    fn pair_outcome(
        &self,
        images: [image::RgbImage; 2],
        statements: [&str; 2],
    ) -> Result<[bool; METHODS], ScenesError> {
        let [ia, ib] = images;
        let c = self.embed(&[EmbedInput::image(ia), EmbedInput::image(ib)])?;
        let q = self.embed(&[
            EmbedInput::text(statements[0]),
            EmbedInput::text(statements[1]),
        ])?;
        let table = self.score(&q, &c)?;
        let mut out = [false; METHODS];
        for (m, slot) in out.iter_mut().enumerate() {
            let value = |s: usize, i: usize| -> f32 {
                table
                    .get(s, i)
                    .map(|p| if m == 0 { p.fused } else { p.patterns[m - 1] })
                    .unwrap_or(f32::NAN)
            };
            *slot = mmvp_pair_correct([[value(0, 0), value(0, 1)], [value(1, 0), value(1, 1)]]);
        }
        Ok(out)
    }

    /// P-MMVP: `pairs` generated pairs per pattern from `seed`.
    pub fn pmmvp(
        &self,
        pairs: usize,
        seed: u64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<PairReport, ScenesError> {
        let mut tallies: Vec<MmvpTally> = (0..METHODS).map(|_| MmvpTally::new()).collect();
        let total = pairs * MmvpPattern::ALL.len();
        let mut done = 0;
        for pattern in MmvpPattern::ALL {
            for pair in pmmvp_pairs(pattern, pairs, seed) {
                let outcome = self.pair_outcome(
                    [pair.a.render(), pair.b.render()],
                    [&pair.statements[0], &pair.statements[1]],
                )?;
                for (t, ok) in tallies.iter_mut().zip(outcome) {
                    t.add(pattern, ok);
                }
                done += 1;
                progress(done, total);
            }
        }
        Ok(report(&tallies))
    }

    /// Scores a folder in the MMVP-VLM layout (the real benchmark or an export).
    pub fn mmvp_dir(
        &self,
        dir: &Path,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<PairReport, ScenesError> {
        let items = super::read_mmvp_dir(dir)?;
        let mut tallies: Vec<MmvpTally> = (0..METHODS).map(|_| MmvpTally::new()).collect();
        let total = items.len();
        for (n, item) in items.iter().enumerate() {
            let load = |p: &Path| {
                crate::model::image_io::open_image(p)
                    .map(|i| crate::model::image_io::to_rgb8(&i))
                    .map_err(|e| ScenesError::Eval(e.to_string()))
            };
            let images = [load(&item.images[0])?, load(&item.images[1])?];
            let outcome = self.pair_outcome(images, [&item.statements[0], &item.statements[1]])?;
            let pattern = item.pattern.ok_or_else(|| {
                ScenesError::Eval(format!(
                    "{}: unknown MMVP type {:?}",
                    dir.display(),
                    item.type_name
                ))
            })?;
            for (t, ok) in tallies.iter_mut().zip(outcome) {
                t.add(pattern, ok);
            }
            progress(n + 1, total);
        }
        Ok(report(&tallies))
    }

    /// Text→image and image→text recall@1 (0–1) over `n` held-out scenes with their
    /// global captions. A retrieved item counts as right when it is the query's own or
    /// has exactly the same caption (identical descriptions cannot be told apart).
    pub fn retrieval(
        &self,
        n: usize,
        seed: u64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(f64, f64), ScenesError> {
        let mut rng = SceneRng::new(seed);
        let scenes: Vec<Scene> = (0..n).map(|_| Scene::random(&mut rng)).collect();
        let captions: Vec<String> = scenes.iter().map(Scene::caption).collect();
        let mut image_rows = Vec::with_capacity(n);
        let mut text_rows = Vec::with_capacity(n);
        for (i, s) in scenes.iter().enumerate() {
            image_rows.push(self.embed(&[EmbedInput::image(s.render())])?);
            text_rows.push(self.embed(&[EmbedInput::text(captions[i].clone())])?);
            progress(i + 1, n);
        }
        let refs: Vec<&PerspectiveEmbeddings> = image_rows.iter().collect();
        let images = PerspectiveEmbeddings::cat(&refs).map_err(eval_err)?;
        let refs: Vec<&PerspectiveEmbeddings> = text_rows.iter().collect();
        let texts = PerspectiveEmbeddings::cat(&refs).map_err(eval_err)?;
        let recall = |table: &ScoreTable| -> f64 {
            let mut hits = 0;
            for q in 0..table.queries {
                let best = table
                    .row(q)
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.fused.total_cmp(&b.1.fused))
                    .map(|(j, _)| j);
                if best.is_some_and(|j| j == q || captions[j] == captions[q]) {
                    hits += 1;
                }
            }
            hits as f64 / table.queries.max(1) as f64
        };
        let t2i = recall(&self.score(&texts, &images)?);
        let i2t = recall(&self.score(&images, &texts)?);
        Ok((t2i, i2t))
    }
}

fn eval_err(e: impl std::fmt::Display) -> ScenesError {
    ScenesError::Eval(e.to_string())
}

fn report(tallies: &[MmvpTally]) -> PairReport {
    let mut out = PairReport::default();
    let pick = |m: usize, f: &dyn Fn(&MmvpTally) -> Option<f64>| f(&tallies[m]).unwrap_or(0.0);
    for pattern in MmvpPattern::ALL {
        let n = tallies[0].pairs(pattern);
        if n == 0 {
            continue;
        }
        let scores = MethodScores {
            fused: pick(0, &|t| t.percent(pattern)),
            gg: pick(1, &|t| t.percent(pattern)),
            fg: pick(2, &|t| t.percent(pattern)),
            gf: pick(3, &|t| t.percent(pattern)),
            ff: pick(4, &|t| t.percent(pattern)),
        };
        out.patterns.insert(pattern.name().to_string(), scores);
        out.pairs_per_pattern.insert(pattern.name().to_string(), n);
    }
    out.average = MethodScores {
        fused: pick(0, &|t| t.average()),
        gg: pick(1, &|t| t.average()),
        fg: pick(2, &|t| t.average()),
        gf: pick(3, &|t| t.average()),
        ff: pick(4, &|t| t.average()),
    };
    out
}

/// The pattern names in `MethodScores` order after `fused`.
pub fn method_names() -> [&'static str; METHODS] {
    [
        "fused",
        Pattern::GG.name(),
        Pattern::FG.name(),
        Pattern::GF.name(),
        Pattern::FF.name(),
    ]
}
