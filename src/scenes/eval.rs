//! Scoring a backbone on the pair benchmarks (P-MMVP, MMVP-VLM folders) and on scene
//! retrieval, with the fused AGFF score and each perception pattern alone.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::caption::ObjectQuery;
use super::{MmvpPattern, MmvpTally, Scene, SceneRng, ScenesError, mmvp_pair_correct, pmmvp_pairs};
use crate::agff::{
    FusedScorer, Fusion, PerspectiveEmbeddings, ScoreTable, Similarity, SimilarityConfig,
};
use crate::model::{Backbone, EmbedInput, EmbedOptions, PerspectiveSet};

/// Default seed of the P-MMVP pairs (the training stream uses other seeds).
pub const PMMVP_SEED: u64 = 20_260_226;

/// A backbone, its perspectives and a frozen fusion: everything needed to score pairs.
pub struct Evaluator<'a> {
    /// The model being evaluated.
    pub backbone: &'a dyn Backbone,
    /// The global and K fine-grained perspectives queries and images are embedded under.
    pub perspectives: PerspectiveSet,
    /// Soft prompts of a fine-tune, one per perspective (empty: the backbone's own).
    pub soft: Vec<Option<Tensor>>,
    /// The frozen fusion and similarity settings every pair is scored with.
    pub scorer: FusedScorer,
}

/// Accuracy (%) of the fused score and of each pattern alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MethodScores {
    /// With the fused score s (method.md §3).
    pub fused: f64,
    /// With s_GG alone (global query vs global candidate).
    #[serde(rename = "GG")]
    pub gg: f64,
    /// With s_FG alone (fine-grained query vs global candidate).
    #[serde(rename = "FG")]
    pub fg: f64,
    /// With s_GF alone (global query vs fine-grained candidate).
    #[serde(rename = "GF")]
    pub gf: f64,
    /// With s_FF alone (fine-grained query vs fine-grained candidate).
    #[serde(rename = "FF")]
    pub ff: f64,
}

/// Per pattern and on average, as `agff-lens eval pmmvp --json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairReport {
    /// Accuracies by MMVP pattern name (`orientation`, `presence`, …); patterns without
    /// pairs are left out.
    pub patterns: BTreeMap<String, MethodScores>,
    /// Mean of the per-pattern accuracies over the patterns that have pairs (0 with none).
    pub average: MethodScores,
    /// The standard error (percentage points) of each [`PairReport::average`], from the
    /// pairs' sampling alone ([`MmvpTally::average_standard_error`]): how far the average
    /// would move on another draw of pairs.
    pub average_standard_error: MethodScores,
    /// Number of pairs scored, by pattern name.
    pub pairs_per_pattern: BTreeMap<String, usize>,
    /// Per pattern, how alike the model finds the two sides of a pair: why a pattern
    /// fails. Near 1 for the images, the model cannot see the difference; near 1 for the
    /// statements, it cannot read it.
    pub separation: BTreeMap<String, PairSeparation>,
    /// Per perspective (the global one first), the pair accuracy of its own view alone:
    /// the cosine of a statement's and an image's embeddings under that perspective (the
    /// matched diagonal of FF; GG for the global one). Whether the `count` perspective is
    /// the one that separates quantity pairs, `spatial` position pairs, and so on.
    pub perspectives: Vec<PerspectiveScores>,
}

/// One perspective's view alone on the pair benchmark (see [`PairReport::perspectives`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerspectiveScores {
    /// The perspective's name (`global`, `attributes`, `count`, …).
    pub name: String,
    /// Pair accuracy (%) by pattern name.
    pub patterns: BTreeMap<String, f64>,
    /// Mean over the patterns that have pairs.
    pub average: f64,
}

/// What one pair gives: per scoring method and per perspective view, whether both
/// statements pick their own image; and the pair's global cosines.
struct PairOutcome {
    methods: [bool; METHODS],
    views: Vec<bool>,
    cosines: (f32, f32),
}

/// Running tallies of a pair benchmark.
struct Tallies {
    methods: Vec<MmvpTally>,
    views: Vec<MmvpTally>,
    separation: BTreeMap<&'static str, SeparationSum>,
}

impl Tallies {
    fn new(views: usize) -> Self {
        Self {
            methods: (0..METHODS).map(|_| MmvpTally::new()).collect(),
            views: (0..views).map(|_| MmvpTally::new()).collect(),
            separation: BTreeMap::new(),
        }
    }

    fn add(&mut self, pattern: MmvpPattern, outcome: PairOutcome) {
        for (t, ok) in self.methods.iter_mut().zip(outcome.methods) {
            t.add(pattern, ok);
        }
        for (t, ok) in self.views.iter_mut().zip(outcome.views) {
            t.add(pattern, ok);
        }
        self.separation
            .entry(pattern.name())
            .or_default()
            .add(outcome.cosines);
    }
}

/// Mean cosine of a pattern's pairs, global view: image A with image B, and statement A
/// with statement B.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PairSeparation {
    /// Mean cosine of image A's and image B's global embeddings.
    pub images: f64,
    /// Mean cosine of statement A's and statement B's global embeddings.
    pub statements: f64,
}

/// Running sums for [`PairSeparation`].
#[derive(Debug, Clone, Copy, Default)]
struct SeparationSum {
    images: f64,
    statements: f64,
    pairs: usize,
}

impl SeparationSum {
    fn add(&mut self, (images, statements): (f32, f32)) {
        self.images += images as f64;
        self.statements += statements as f64;
        self.pairs += 1;
    }

    fn mean(&self) -> Option<PairSeparation> {
        (self.pairs > 0).then(|| PairSeparation {
            images: self.images / self.pairs as f64,
            statements: self.statements / self.pairs as f64,
        })
    }
}

/// The five scoring methods: fused, then GG, FG, GF, FF.
const METHODS: usize = 5;

impl<'a> Evaluator<'a> {
    /// Uses the backbone's default perspectives and trained fusion (or the defaults).
    pub fn new(backbone: &'a dyn Backbone) -> Result<Self, ScenesError> {
        let perspectives = backbone.default_perspectives();
        Self::with_perspectives(backbone, perspectives)
    }

    /// Uses these perspectives with the backbone's trained fusion (or the defaults) and
    /// its own soft prompts.
    pub fn with_perspectives(
        backbone: &'a dyn Backbone,
        perspectives: PerspectiveSet,
    ) -> Result<Self, ScenesError> {
        let fusion = Fusion::for_backbone(backbone).map_err(eval_err)?;
        Self::with_setup(backbone, perspectives, Vec::new(), &fusion)
    }

    /// Scores with the given perspectives, soft prompts and fusion (a fine-tune's).
    pub fn with_setup(
        backbone: &'a dyn Backbone,
        perspectives: PerspectiveSet,
        soft: Vec<Option<Tensor>>,
        fusion: &Fusion,
    ) -> Result<Self, ScenesError> {
        let scorer = FusedScorer::new(SimilarityConfig::default(), fusion).map_err(eval_err)?;
        Ok(Self {
            backbone,
            perspectives,
            soft,
            scorer,
        })
    }

    /// Unit perspective embeddings `[n, 1+K, d]` of the inputs, one forward each.
    pub fn embed(&self, inputs: &[EmbedInput]) -> Result<PerspectiveEmbeddings, ScenesError> {
        let options = EmbedOptions {
            soft_prompts: self.soft.clone(),
            ..EmbedOptions::default()
        };
        let rows = inputs
            .iter()
            .map(|input| {
                PerspectiveEmbeddings::embed(self.backbone, input, &self.perspectives, &options)
                    .map(|(unit, _)| unit)
                    .map_err(eval_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&PerspectiveEmbeddings> = rows.iter().collect();
        PerspectiveEmbeddings::cat(&refs).map_err(eval_err)
    }

    /// Scores every text query against every image candidate.
    pub fn score(
        &self,
        queries: &PerspectiveEmbeddings,
        candidates: &PerspectiveEmbeddings,
    ) -> Result<ScoreTable, ScenesError> {
        self.scorer.score(queries, candidates).map_err(eval_err)
    }

    /// Whether each method and each perspective's view gets one pair right (statements ×
    /// images), and the pair's image and statement cosines (global view).
    fn pair_outcome(
        &self,
        images: [image::RgbImage; 2],
        statements: [&str; 2],
    ) -> Result<PairOutcome, ScenesError> {
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
                    .map(|p| {
                        if m == 0 {
                            p.fused
                        } else {
                            p.similarities[m - 1]
                        }
                    })
                    .unwrap_or(f32::NAN)
            };
            *slot = mmvp_pair_correct([[value(0, 0), value(0, 1)], [value(1, 0), value(1, 1)]]);
        }
        let rows = |e: &PerspectiveEmbeddings| -> Result<Vec<Vec<Vec<f32>>>, ScenesError> {
            e.tensor()
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec3::<f32>())
                .map_err(eval_err)
        };
        // [2, 1+K, d] unit vectors of the statements and the images.
        let (qv, cv) = (rows(&q)?, rows(&c)?);
        let dot = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
        let views = (0..q.k() + 1)
            .map(|k| {
                let cos = |s: usize, i: usize| dot(&qv[s][k], &cv[i][k]);
                mmvp_pair_correct([[cos(0, 0), cos(0, 1)], [cos(1, 0), cos(1, 1)]])
            })
            .collect();
        Ok(PairOutcome {
            methods: out,
            views,
            cosines: (dot(&cv[0][0], &cv[1][0]), dot(&qv[0][0], &qv[1][0])),
        })
    }

    fn tallies(&self) -> Tallies {
        Tallies::new(self.perspectives.perspectives.len())
    }

    /// The report of a finished benchmark: [`method_report`] plus the perspectives' names.
    fn report(&self, tallies: &Tallies) -> PairReport {
        let mut out = method_report(&tallies.methods, &tallies.separation);
        out.perspectives = self
            .perspectives
            .perspectives
            .iter()
            .zip(&tallies.views)
            .map(|(p, t)| PerspectiveScores {
                name: p.name.clone(),
                patterns: MmvpPattern::ALL
                    .iter()
                    .filter_map(|&pattern| Some((pattern.name().to_string(), t.percent(pattern)?)))
                    .collect(),
                average: t.average().unwrap_or(0.0),
            })
            .collect();
        out
    }

    /// P-MMVP: `pairs` generated pairs per pattern from `seed`.
    pub fn pmmvp(
        &self,
        pairs: usize,
        seed: u64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<PairReport, ScenesError> {
        let mut tallies = self.tallies();
        let total = pairs * MmvpPattern::ALL.len();
        let mut done = 0;
        for pattern in MmvpPattern::ALL {
            for pair in pmmvp_pairs(pattern, pairs, seed) {
                let outcome = self.pair_outcome(
                    [pair.a.render(), pair.b.render()],
                    [&pair.statements[0], &pair.statements[1]],
                )?;
                tallies.add(pattern, outcome);
                done += 1;
                progress(done, total);
            }
        }
        Ok(self.report(&tallies))
    }

    /// Scores a folder in the MMVP-VLM layout (the real benchmark or an export).
    pub fn mmvp_dir(
        &self,
        dir: &Path,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<PairReport, ScenesError> {
        let items = super::read_mmvp_dir(dir)?;
        let mut tallies = self.tallies();
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
            tallies.add(pattern, outcome);
            progress(n + 1, total);
        }
        Ok(self.report(&tallies))
    }

    /// Text→image and image→text recall@1 (0–1) over `n` held-out scenes with their
    /// global captions. A retrieved item counts as right when it is the query's own or
    /// has exactly the same caption (identical descriptions cannot be told apart).
    pub fn retrieval(
        &self,
        n: usize,
        seed: u64,
        progress: impl FnMut(usize, usize),
    ) -> Result<Retrieval, ScenesError> {
        let mut rng = SceneRng::new(seed);
        let scenes: Vec<Scene> = (0..n).map(|_| Scene::random(&mut rng)).collect();
        let captions: Vec<String> = scenes.iter().map(Scene::caption).collect();
        // One short object query per scene, from one of its objects' metadata.
        let mut qrng = SceneRng::new(seed ^ 0x000b_1ec7);
        let wanted: Vec<ObjectQuery> = scenes
            .iter()
            .map(|s| ObjectQuery::full(&s.objects[qrng.below(s.objects.len())]))
            .collect();
        let object_queries: Vec<String> = wanted.iter().map(ObjectQuery::text).collect();
        let (images, progress) = self.embed_each(
            scenes.iter().map(|s| EmbedInput::image(s.render())),
            n * 3,
            0,
            progress,
        )?;
        let (texts, progress) = self.embed_each(
            captions.iter().map(|c| EmbedInput::text(c.clone())),
            n * 3,
            n,
            progress,
        )?;
        let (queries, _) = self.embed_each(
            object_queries.iter().map(|c| EmbedInput::text(c.clone())),
            n * 3,
            2 * n,
            progress,
        )?;
        // Each query's first-ranked candidate.
        let firsts = |table: &ScoreTable| -> Vec<Option<usize>> {
            (0..table.queries)
                .map(|q| {
                    table
                        .row(q)
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.fused.total_cmp(&b.1.fused))
                        .map(|(j, _)| j)
                })
                .collect()
        };
        let recall = |firsts: &[Option<usize>], right: &dyn Fn(usize, usize) -> bool| -> f64 {
            let hits = (firsts.iter().enumerate())
                .filter(|(q, j)| j.is_some_and(|j| right(*q, j)))
                .count();
            hits as f64 / firsts.len().max(1) as f64
        };
        let same_caption = |q: usize, j: usize| j == q || captions[j] == captions[q];
        let has_object = |q: usize, j: usize| wanted[q].fits(&scenes[j]);
        let object_firsts = firsts(&self.score(&queries, &images)?);
        let mut misses = ObjectQueryMisses::default();
        for (q, j) in object_firsts.iter().enumerate() {
            if let Some(j) = *j
                && !has_object(q, j)
            {
                misses.add(&wanted[q], &scenes[j]);
            }
        }
        Ok(Retrieval {
            scenes: n,
            text_to_image_r1: recall(&firsts(&self.score(&texts, &images)?), &same_caption),
            image_to_text_r1: recall(&firsts(&self.score(&images, &texts)?), &same_caption),
            object_query_r1: recall(&object_firsts, &has_object),
            object_query_misses: misses,
        })
    }

    /// Unit embeddings of `inputs`, one forward each, stacked; progress counts from
    /// `offset` towards `total`. Returns the progress callback for the next call.
    fn embed_each<P: FnMut(usize, usize)>(
        &self,
        inputs: impl Iterator<Item = EmbedInput>,
        total: usize,
        offset: usize,
        mut progress: P,
    ) -> Result<(PerspectiveEmbeddings, P), ScenesError> {
        let mut rows = Vec::new();
        for (i, input) in inputs.enumerate() {
            rows.push(self.embed(&[input])?);
            progress(offset + i + 1, total);
        }
        let refs: Vec<&PerspectiveEmbeddings> = rows.iter().collect();
        Ok((
            PerspectiveEmbeddings::cat(&refs).map_err(eval_err)?,
            progress,
        ))
    }
}

/// Recall@1 figures over held-out scenes (fractions 0–1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Retrieval {
    /// Number of held-out scenes: queries and candidates alike.
    pub scenes: usize,
    /// A scene's global caption finds that scene (or one with the same caption) first.
    pub text_to_image_r1: f64,
    /// A scene finds its own caption (or an identical one) first.
    pub image_to_text_r1: f64,
    /// A short object query built from one object of each scene ("a small filled green
    /// cross") ranks first a scene that holds such an object (shape, colour, size, fill).
    pub object_query_r1: f64,
    /// What the first-ranked scene got wrong where a short object query missed.
    pub object_query_misses: ObjectQueryMisses,
}

/// Why short object queries missed, a count per cause: the one attribute (of shape,
/// colour, size, fill) in which the first-ranked scene's closest object differs from the
/// query, or `several` when its closest object differs in more than one. A model that
/// does not read one word of the query shows up as one large count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObjectQueryMisses {
    /// The closest object has another shape.
    pub shape: usize,
    /// Another colour.
    pub colour: usize,
    /// Another size.
    pub size: usize,
    /// Filled where the query says outlined, or the other way round.
    pub fill: usize,
    /// More than one attribute differs.
    pub several: usize,
}

impl ObjectQueryMisses {
    /// Counts one miss: `scene` was ranked first for `query` and holds no fitting object.
    fn add(&mut self, query: &ObjectQuery, scene: &Scene) {
        let differs = |o: &super::SceneObject| {
            [
                o.shape != query.shape,
                o.colour != query.colour,
                query.size.is_some_and(|s| s != o.size),
                query.filled.is_some_and(|f| f != o.filled),
            ]
        };
        let closest = scene
            .objects
            .iter()
            .map(differs)
            .min_by_key(|d| d.iter().filter(|x| **x).count());
        match closest {
            Some([true, false, false, false]) => self.shape += 1,
            Some([false, true, false, false]) => self.colour += 1,
            Some([false, false, true, false]) => self.size += 1,
            Some([false, false, false, true]) => self.fill += 1,
            _ => self.several += 1,
        }
    }

    /// All misses counted.
    pub fn total(&self) -> usize {
        self.shape + self.colour + self.size + self.fill + self.several
    }
}

fn eval_err(e: impl std::fmt::Display) -> ScenesError {
    ScenesError::Eval(e.to_string())
}

fn method_report(tallies: &[MmvpTally], separation: &BTreeMap<&str, SeparationSum>) -> PairReport {
    let mut out = PairReport::default();
    for (name, sum) in separation {
        if let Some(mean) = sum.mean() {
            out.separation.insert(name.to_string(), mean);
        }
    }
    // One figure of each method's tally (fused, GG, FG, GF, FF), 0 where it has none.
    let per_method = |f: &dyn Fn(&MmvpTally) -> Option<f64>| {
        let pick = |m: usize| f(&tallies[m]).unwrap_or(0.0);
        MethodScores {
            fused: pick(0),
            gg: pick(1),
            fg: pick(2),
            gf: pick(3),
            ff: pick(4),
        }
    };
    for pattern in MmvpPattern::ALL {
        let n = tallies[0].pairs(pattern);
        if n == 0 {
            continue;
        }
        let scores = per_method(&|t| t.percent(pattern));
        out.patterns.insert(pattern.name().to_string(), scores);
        out.pairs_per_pattern.insert(pattern.name().to_string(), n);
    }
    out.average = per_method(&|t| t.average());
    out.average_standard_error = per_method(&|t| t.average_standard_error());
    out
}

/// The pattern names in `MethodScores` order after `fused`.
pub fn method_names() -> [&'static str; METHODS] {
    [
        "fused",
        Similarity::GG.name(),
        Similarity::FG.name(),
        Similarity::GF.name(),
        Similarity::FF.name(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenes::{Colour, Shape, Size};

    /// A miss is put down to the one attribute the first-ranked scene's closest object
    /// gets wrong, or to `several`.
    #[test]
    fn an_object_query_miss_names_what_the_closest_object_got_wrong() {
        let scene = Scene::random(&mut SceneRng::new(5));
        let o = scene.objects[0].clone();
        let query = ObjectQuery::full(&o);
        let with = |edit: &dyn Fn(&mut super::super::SceneObject)| {
            let mut s = scene.clone();
            let mut x = o.clone();
            edit(&mut x);
            s.objects = vec![x];
            s
        };
        let other_size = if o.size == Size::Small {
            Size::Large
        } else {
            Size::Small
        };
        let other_colour = Colour::ALL
            .iter()
            .copied()
            .find(|c| *c != o.colour)
            .unwrap();
        let other_shape = Shape::ALL.iter().copied().find(|s| *s != o.shape).unwrap();
        let mut m = ObjectQueryMisses::default();
        m.add(&query, &with(&|x| x.size = other_size));
        m.add(&query, &with(&|x| x.filled = !x.filled));
        m.add(&query, &with(&|x| x.colour = other_colour));
        m.add(&query, &with(&|x| x.shape = other_shape));
        m.add(&query, &with(&|x| x.size = other_size));
        // Two attributes wrong, and a scene with no object at all.
        m.add(
            &query,
            &with(&|x| {
                x.shape = other_shape;
                x.colour = other_colour;
            }),
        );
        let mut empty = scene.clone();
        empty.objects.clear();
        m.add(&query, &empty);
        let want = ObjectQueryMisses {
            shape: 1,
            colour: 1,
            size: 2,
            fill: 1,
            several: 2,
        };
        assert_eq!(m, want);
        assert_eq!(m.total(), 7);
    }
}
