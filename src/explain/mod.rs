//! Where in the image a perspective looked (method.md §7), and why one candidate beat
//! another.
//!
//! For a (query, image) pair every map has one cell per visual token of the image:
//! - **attribution** (default): gradient of the chosen score w.r.t. the language model's
//!   visual-token inputs, times those inputs, summed over channels (grad × input);
//! - **mean-baseline** (ours, beside method.md's three): the same gradient times each
//!   input minus the image's mean visual token, the first-order estimate of how much the
//!   score would fall were that token replaced by the image's average one (a reference
//!   input, as DeepLIFT and Integrated Gradients use, here the mean token, in one gradient
//!   step; the map's sum estimates s(x) − s(every token set to the mean)). Plain grad ×
//!   input credits every token for its whole input, background included; against the mean
//!   token, what all tokens share cancels and the object that sets the score apart stands
//!   out;
//! - **attention**: attention from the perspective's last token to the visual tokens,
//!   mean over heads and the last layers;
//! - **similarity**: cosine between the query's perspective embedding and each visual
//!   token's final hidden state.
//!
//! Maps exist per perspective (score `<q_p, c_p>`) and per pattern (score s_m) and for the
//! fused score. Attribution and mean-baseline differentiate each score itself. Attention
//! and similarity have no score to differentiate, so a pattern's map there is the mean of
//! the maps of the image-side perspectives it reads (ours): GG and FG read the global
//! view, GF and FF the fine ones, the fused score all of them weighted by a_m.

mod colormap;

use candle_core::{D, DType, IndexOp, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use colormap::ColorMap;

use crate::agff::{
    FusedScorer, Fusion, PerspectiveEmbeddings, Similarity, SimilarityConfig, agff_similarities,
};
use crate::model::{Backbone, EmbedInput, EmbedOptions, ModelError, PerspectiveSet};
use crate::scenes::caption::ObjectQuery;

/// How a map is computed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
pub enum Method {
    /// Gradient of the score w.r.t. the language model's visual-token inputs, times those
    /// inputs, summed over channels (grad × input; the default).
    #[default]
    Attribution,
    /// Gradient of the score w.r.t. the visual-token inputs `[rows·cols, hidden]`, times
    /// each input minus the mean of the image's visual-token inputs (over the tokens),
    /// summed over channels: one value per token in units of the score
    /// ([`centre_on_mean`], [module docs](self)). A one-token grid gives a zero map.
    MeanBaseline,
    /// Attention from the perspective's last token to the visual tokens, mean over heads
    /// and the last [`Explainer::attention_layers`] layers.
    Attention,
    /// Cosine between the query's perspective embedding and each visual token's final
    /// hidden state (ColPali style).
    Similarity,
}

impl Method {
    /// All methods, the default first.
    pub const ALL: [Method; 4] = [
        Method::Attribution,
        Method::MeanBaseline,
        Method::Attention,
        Method::Similarity,
    ];

    /// The lower-case name used on the command line, in JSON and in the UI.
    pub fn name(self) -> &'static str {
        match self {
            Method::Attribution => "attribution",
            Method::MeanBaseline => "mean-baseline",
            Method::Attention => "attention",
            Method::Similarity => "similarity",
        }
    }

    /// One line on how the map is made, for the UI's method picker.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Attribution => {
                "gradient of the score times each visual token's input (grad × input, method.md §7)"
            }
            Method::MeanBaseline => {
                "gradient of the score times each visual token's input minus the image's mean \
                 token: how much the score would fall were the token replaced by an average one"
            }
            Method::Attention => {
                "attention from the perspective's last token to the visual tokens, last layers"
            }
            Method::Similarity => {
                "cosine between the query's embedding and each visual token's final hidden state"
            }
        }
    }

    /// Whether the map is a gradient of the score (attribution and mean-baseline).
    pub fn uses_gradient(self) -> bool {
        matches!(self, Method::Attribution | Method::MeanBaseline)
    }

    /// The method whose [`Method::name`] is `s`; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// What can go wrong explaining.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The backbone reported no visual tokens for the image (or, for attribution, no
    /// gradient reached them), so there is no grid to map.
    #[error("the model gave no visual tokens for the image, so there is nothing to map")]
    NoVisualTokens,
    /// The request cannot be served: e.g. attention maps from a backbone that does not
    /// report attention to visual tokens, or an empty score table.
    #[error("{0}")]
    Input(String),
    /// The backbone failed to embed the query or the image.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Scoring or fusing failed (shape mismatch, invalid similarity settings).
    #[error(transparent)]
    Agff(#[from] crate::agff::AgffError),
    /// A candle tensor operation failed, including the backward pass.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One map over the visual-token grid, row-major.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heatmap {
    /// Perspective name, pattern name (`GG`…) or `fused`.
    pub name: String,
    /// Rows of the visual-token grid (e.g. 16 for a 448 px image on Qwen3-VL).
    pub rows: usize,
    /// Columns of the visual-token grid.
    pub cols: usize,
    /// `rows × cols` raw map values, row-major, not normalised (see
    /// [`Heatmap::normalized`]).
    pub values: Vec<f32>,
}

impl Heatmap {
    /// Values scaled to [0, 1] (min–max; a flat map is all 0).
    pub fn normalized(&self) -> Vec<f32> {
        let (lo, hi) = self
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let span = hi - lo;
        self.values
            .iter()
            .map(|&v| if span > 0.0 { (v - lo) / span } else { 0.0 })
            .collect()
    }

    /// The cell with the largest value `(row, col)`.
    pub fn argmax(&self) -> (usize, usize) {
        let i = self
            .values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        (i / self.cols.max(1), i % self.cols.max(1))
    }

    /// The centre of the largest cell in image pixels.
    pub fn peak_in_pixels(&self, width: u32, height: u32) -> (f32, f32) {
        let (r, c) = self.argmax();
        (
            (c as f32 + 0.5) * width as f32 / self.cols as f32,
            (r as f32 + 0.5) * height as f32 / self.rows as f32,
        )
    }

    /// The map blended over `image` with `opacity` (bilinear upsampling of the grid).
    pub fn overlay(&self, image: &RgbImage, map: ColorMap, opacity: f32) -> RgbImage {
        let norm = self.normalized();
        let (w, h) = image.dimensions();
        let mut out = image.clone();
        let (rows, cols) = (self.rows as f32, self.cols as f32);
        for (x, y, px) in out.enumerate_pixels_mut() {
            // Cell centres sit at (i + 0.5) cells.
            let gx = ((x as f32 + 0.5) / w as f32 * cols - 0.5).clamp(0.0, cols - 1.0);
            let gy = ((y as f32 + 0.5) / h as f32 * rows - 0.5).clamp(0.0, rows - 1.0);
            let (x0, y0) = (gx.floor() as usize, gy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(self.cols - 1), (y0 + 1).min(self.rows - 1));
            let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
            let at = |r: usize, c: usize| norm[r * self.cols + c];
            let v = at(y0, x0) * (1.0 - fx) * (1.0 - fy)
                + at(y0, x1) * fx * (1.0 - fy)
                + at(y1, x0) * (1.0 - fx) * fy
                + at(y1, x1) * fx * fy;
            let c = map.color(v);
            for k in 0..3 {
                px[k] = (px[k] as f32 * (1.0 - opacity) + c[k] as f32 * opacity).round() as u8;
            }
        }
        out
    }
}

/// Scores of one (query, candidate) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairBreakdown {
    /// The fused score s (method.md §3).
    pub fused: f32,
    /// s_m by pattern name.
    pub similarities: [f32; 4],
    /// a_m.
    pub weights: [f32; 4],
    /// Matched `<q_p, c_p>` per perspective.
    pub perspectives: Vec<(String, f32)>,
}

/// Everything shown for one (query, image) pair.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// How the maps were computed.
    pub method: Method,
    /// The pair's fused score, four similarities, fusion weights and per-perspective
    /// scores.
    pub scores: PairBreakdown,
    /// One map per perspective (global first, in the perspective set's order); empty for
    /// the gradient methods ([`Method::uses_gradient`]) from [`Explainer::explain_fused`].
    pub perspective_maps: Vec<Heatmap>,
    /// One map per similarity in [`Similarity::ALL`] order (GG, FG, GF, FF); empty for
    /// the gradient methods from [`Explainer::explain_fused`].
    pub similarity_maps: Vec<Heatmap>,
    /// The map of the fused score, named `fused`.
    pub fused_map: Heatmap,
}

/// Why candidate A beat candidate B for one query.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Scores of the query against candidate A.
    pub a: PairBreakdown,
    /// Scores of the query against candidate B.
    pub b: PairBreakdown,
    /// s(A) − s(B).
    pub fused_diff: f32,
    /// Per pattern: s_m(A) − s_m(B).
    pub similarity_diffs: [f32; 4],
    /// Per pattern: mean weight ā_m·(s_m(A) − s_m(B)); these add up to about the fused
    /// difference (exactly, to first order), so they say which pattern decided.
    pub similarity_contributions: [f32; 4],
    /// Per perspective: `<q_p, A_p> − <q_p, B_p>`.
    pub perspective_diffs: Vec<(String, f32)>,
}

/// A backbone, perspectives and a fusion ready to explain pairs.
pub struct Explainer<'a> {
    /// The model that embeds the query and the image.
    pub backbone: &'a dyn Backbone,
    /// The global and K fine-grained perspectives both sides are embedded under.
    pub perspectives: PerspectiveSet,
    /// The fusion parameters θ and ρ (method.md §3) behind the fused score and a_m.
    pub fusion: Fusion,
    /// Aggregator and FF pairing of the four similarities (method.md §2).
    pub similarity_config: SimilarityConfig,
    /// Last layers averaged for attention maps.
    pub attention_layers: usize,
    /// Soft-prompt vectors to embed with (e.g. a fine-tune's; empty: the backbone's own).
    pub soft_prompts: Vec<Option<Tensor>>,
    /// Cut a query text longer than the model reads to fit instead of failing.
    pub truncate: bool,
    /// Matryoshka dimensions of the embeddings (`None`: all); similarity maps compare the
    /// same prefix of the visual tokens' states.
    pub dim: Option<usize>,
}

impl<'a> Explainer<'a> {
    /// An explainer with the default similarity settings, attention averaged over the
    /// last 2 layers and the backbone's own soft prompts.
    pub fn new(backbone: &'a dyn Backbone, perspectives: PerspectiveSet, fusion: Fusion) -> Self {
        Self {
            backbone,
            perspectives,
            fusion,
            similarity_config: SimilarityConfig::default(),
            attention_layers: 2,
            soft_prompts: Vec::new(),
            truncate: false,
            dim: None,
        }
    }

    /// The query's unit perspective embeddings `[1, 1+K, d]` (no gradient).
    pub fn embed_query(&self, query: &EmbedInput) -> Result<PerspectiveEmbeddings, ExplainError> {
        let options = EmbedOptions {
            soft_prompts: self.soft_prompts.clone(),
            truncate: self.truncate,
            dim: self.dim,
            ..EmbedOptions::default()
        };
        let (q, _) =
            PerspectiveEmbeddings::embed(self.backbone, query, &self.perspectives, &options)?;
        Ok(PerspectiveEmbeddings::assume_unit(q.tensor().detach())?)
    }

    /// Scores of a pair from unit embeddings (no maps).
    pub fn breakdown(
        &self,
        query: &PerspectiveEmbeddings,
        candidate: &PerspectiveEmbeddings,
    ) -> Result<PairBreakdown, ExplainError> {
        let scorer = FusedScorer::new(self.similarity_config, &self.fusion)?;
        let table = scorer.score(query, candidate)?;
        let pair = table
            .get(0, 0)
            .ok_or_else(|| ExplainError::Input("empty score table".into()))?;
        let q = query.tensor().i(0)?;
        let c = candidate.tensor().i(0)?;
        let matched = (q * c)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        Ok(PairBreakdown {
            fused: pair.fused,
            similarities: pair.similarities,
            weights: pair.weights,
            perspectives: self
                .perspectives
                .perspectives
                .iter()
                .zip(matched)
                .map(|(p, s)| (p.name.clone(), s))
                .collect(),
        })
    }

    /// Maps and scores for `query` against `image`.
    pub fn explain(
        &self,
        query: &EmbedInput,
        image: &RgbImage,
        method: Method,
    ) -> Result<Explanation, ExplainError> {
        self.explain_embedded(&self.embed_query(query)?, image, method)
    }

    /// [`Explainer::explain`] for a query already embedded with [`Explainer::embed_query`]
    /// (a caller that scores the same query against more candidates embeds it once).
    pub fn explain_embedded(
        &self,
        query: &PerspectiveEmbeddings,
        image: &RgbImage,
        method: Method,
    ) -> Result<Explanation, ExplainError> {
        self.explain_maps(query, image, method, false)
    }

    /// Only the fused-score map (and the scores): the gradient methods then run one
    /// backward pass instead of one per perspective and pattern. The per-perspective and
    /// per-pattern lists of the result are empty for them.
    pub fn explain_fused(
        &self,
        query: &EmbedInput,
        image: &RgbImage,
        method: Method,
    ) -> Result<Explanation, ExplainError> {
        self.explain_maps(&self.embed_query(query)?, image, method, true)
    }

    fn explain_maps(
        &self,
        q: &PerspectiveEmbeddings,
        image: &RgbImage,
        method: Method,
        fused_only: bool,
    ) -> Result<Explanation, ExplainError> {
        let options = EmbedOptions {
            soft_prompts: self.soft_prompts.clone(),
            attention_layers: if method == Method::Attention {
                self.attention_layers
            } else {
                0
            },
            track_visual_inputs: method.uses_gradient(),
            truncate: self.truncate,
            dim: self.dim,
        };
        let (c, e) = PerspectiveEmbeddings::embed(
            self.backbone,
            &EmbedInput::image(image.clone()),
            &self.perspectives,
            &options,
        )?;
        let visual = e.visual.clone().ok_or(ExplainError::NoVisualTokens)?;
        let (rows, cols) = visual.grid;
        let scores =
            self.breakdown(q, &PerspectiveEmbeddings::assume_unit(c.tensor().detach())?)?;
        let names: Vec<String> = self
            .perspectives
            .perspectives
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let p = names.len();
        let heat = |name: &str, values: Vec<f32>| Heatmap {
            name: name.to_string(),
            rows,
            cols,
            values,
        };

        let (perspective_maps, similarity_maps, fused_map) = match method {
            Method::Attribution | Method::MeanBaseline => {
                let inputs = visual.inputs.clone();
                // What each token's gradient multiplies: its input, or its input minus
                // the image's mean token.
                let x = inputs.detach().to_dtype(DType::F32)?;
                let x = if method == Method::MeanBaseline {
                    centre_on_mean(&x)?
                } else {
                    x
                };
                let qt = q.tensor().i(0)?;
                let ct = c.tensor().i(0)?;
                let attribute = |score: &Tensor| -> Result<Vec<f32>, ExplainError> {
                    let grads = score.backward()?;
                    let g = grads
                        .get(&inputs)
                        .ok_or(ExplainError::NoVisualTokens)?
                        .to_dtype(DType::F32)?;
                    Ok((g * &x)?.sum(D::Minus1)?.to_vec1::<f32>()?)
                };
                let mut per = Vec::with_capacity(p);
                let pats = agff_similarities(q, &c, &self.similarity_config)?.similarities;
                let mut pm = Vec::with_capacity(4);
                for (i, name) in names.iter().enumerate().filter(|_| !fused_only) {
                    let s = (qt.i(i)? * ct.i(i)?)?.sum_all()?;
                    per.push(heat(name, attribute(&s)?));
                }
                for m in Similarity::ALL.into_iter().filter(|_| !fused_only) {
                    let s = pats.i((0, 0, m.index()))?;
                    pm.push(heat(m.name(), attribute(&s)?));
                }
                let fused = self.fusion.fuse(&pats)?.scores.i((0, 0))?;
                let fused_map = heat("fused", attribute(&fused)?);
                (per, pm, fused_map)
            }
            Method::Attention | Method::Similarity => {
                let mut per = Vec::with_capacity(p);
                if method == Method::Attention {
                    for (b, name) in e.branches.iter().zip(&names) {
                        let values = b.attention_to_visual.clone().ok_or_else(|| {
                            ExplainError::Input(
                                "this backbone does not report attention to visual tokens".into(),
                            )
                        })?;
                        per.push(heat(name, values));
                    }
                } else {
                    let mut hidden = visual.hidden.detach().to_dtype(DType::F32)?;
                    if let Some(d) = self.dim {
                        hidden = hidden.narrow(D::Minus1, 0, d)?;
                    }
                    let norm = hidden
                        .sqr()?
                        .sum_keepdim(D::Minus1)?
                        .sqrt()?
                        .clamp(1e-12, f64::INFINITY)?;
                    let unit = hidden.broadcast_div(&norm)?;
                    let qt = q.tensor().i(0)?;
                    for (i, name) in names.iter().enumerate() {
                        let values = unit
                            .matmul(&qt.i(i)?.unsqueeze(1)?)?
                            .squeeze(1)?
                            .to_vec1::<f32>()?;
                        per.push(heat(name, values));
                    }
                }
                let n = rows * cols;
                let mean_of = |idx: &[usize]| -> Vec<f32> {
                    let mut v = vec![0f32; n];
                    for &i in idx {
                        for (a, b) in v.iter_mut().zip(&per[i].values) {
                            *a += b / idx.len() as f32;
                        }
                    }
                    v
                };
                let fine: Vec<usize> = (1..p).collect();
                let global = [0usize];
                let sides: [&[usize]; 4] = if fine.is_empty() {
                    [&global, &global, &global, &global]
                } else {
                    [&global, &global, &fine, &fine]
                };
                let pm: Vec<Heatmap> = Similarity::ALL
                    .iter()
                    .zip(sides)
                    .map(|(m, idx)| heat(m.name(), mean_of(idx)))
                    .collect();
                let mut fused = vec![0f32; n];
                for (m, map) in pm.iter().enumerate() {
                    for (a, b) in fused.iter_mut().zip(&map.values) {
                        *a += scores.weights[m] * b;
                    }
                }
                (per, pm, heat("fused", fused))
            }
        };
        Ok(Explanation {
            method,
            scores,
            perspective_maps,
            similarity_maps,
            fused_map,
        })
    }

    /// Why `a` beat `b` (or not) for `query`.
    pub fn compare(
        &self,
        query: &EmbedInput,
        a: &RgbImage,
        b: &RgbImage,
    ) -> Result<Comparison, ExplainError> {
        let q = self.embed_query(query)?;
        let emb = |img: &RgbImage| -> Result<PerspectiveEmbeddings, ExplainError> {
            self.embed_query(&EmbedInput::image(img.clone()))
        };
        let sa = self.breakdown(&q, &emb(a)?)?;
        let sb = self.breakdown(&q, &emb(b)?)?;
        Ok(compare_breakdowns(sa, sb))
    }
}

/// The differences between two candidates' breakdowns for one query.
pub fn compare_breakdowns(a: PairBreakdown, b: PairBreakdown) -> Comparison {
    let similarity_diffs: [f32; 4] = std::array::from_fn(|m| a.similarities[m] - b.similarities[m]);
    let similarity_contributions: [f32; 4] =
        std::array::from_fn(|m| 0.5 * (a.weights[m] + b.weights[m]) * similarity_diffs[m]);
    let perspective_diffs = a
        .perspectives
        .iter()
        .zip(&b.perspectives)
        .map(|((n, x), (_, y))| (n.clone(), x - y))
        .collect();
    Comparison {
        fused_diff: a.fused - b.fused,
        similarity_diffs,
        similarity_contributions,
        perspective_diffs,
        a,
        b,
    }
}

/// Pointing-game tally of one method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PointingScore {
    /// Number of scenes (queries) scored.
    pub trials: usize,
    /// Trials whose map had its largest cell's centre inside the target box.
    pub hits: usize,
    /// `hits / trials` (0 with no trials).
    pub hit_rate: f64,
    /// The hit rate a uniformly random cell would get on the same trials: the mean share
    /// of the grid's cell centres inside the target box. What `hit_rate` beats.
    pub chance: f64,
    /// Energy-based pointing: the mean share of the map's positive mass on cells whose
    /// centre lies in the target box (a uniform map scores `chance`).
    pub energy: f64,
}

/// Visual-token inputs `[tokens, hidden]` minus their mean token (the mean over the
/// tokens, per channel): what [`Method::MeanBaseline`] multiplies the gradient by. Each
/// channel of the result sums to zero over the tokens.
///
/// # Errors
/// A tensor that is not 2-D.
pub fn centre_on_mean(inputs: &Tensor) -> Result<Tensor, ExplainError> {
    inputs.dims2()?;
    Ok(inputs.broadcast_sub(&inputs.mean_keepdim(0)?)?)
}

/// The share of `map`'s positive mass on cells whose centre lies in `bbox` (pixels of a
/// `width × height` image); 0 for a map with no positive cell.
pub fn energy_in_box(map: &Heatmap, width: u32, height: u32, bbox: [f32; 4]) -> f64 {
    let cx = |c: usize| (c as f32 + 0.5) * width as f32 / map.cols.max(1) as f32;
    let cy = |r: usize| (r as f32 + 0.5) * height as f32 / map.rows.max(1) as f32;
    let mut inside = 0.0;
    let mut total = 0.0;
    for r in 0..map.rows {
        for c in 0..map.cols {
            let v = f64::from(map.values[r * map.cols + c].max(0.0));
            total += v;
            if in_box(cx(c), cy(r), bbox) {
                inside += v;
            }
        }
    }
    if total > 0.0 { inside / total } else { 0.0 }
}

/// Whether `(x, y)` lies in `bbox = [x0, y0, x1, y1]` (edges included).
fn in_box(x: f32, y: f32, bbox: [f32; 4]) -> bool {
    let [x0, y0, x1, y1] = bbox;
    x >= x0 && x <= x1 && y >= y0 && y <= y1
}

/// How many cell centres of a `rows × cols` grid over a `width × height` image lie in
/// `bbox` (pixels).
pub fn cells_in_box(rows: usize, cols: usize, width: u32, height: u32, bbox: [f32; 4]) -> usize {
    let cx = |c: usize| (c as f32 + 0.5) * width as f32 / cols.max(1) as f32;
    let cy = |r: usize| (r as f32 + 0.5) * height as f32 / rows.max(1) as f32;
    (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (r, c)))
        .filter(|&(r, c)| in_box(cx(c), cy(r), bbox))
        .count()
}

/// A pointing-game query: a scene with an object whose colour and shape are unique in it
/// (two or more objects), the query naming it ("a red circle") and the object's index.
fn pointing_query(
    rng: &mut crate::scenes::SceneRng,
) -> Option<(crate::scenes::Scene, String, usize)> {
    let scene = crate::scenes::Scene::random(rng);
    if scene.objects.len() < 2 {
        return None;
    }
    // Objects whose colour and shape name them alone in the scene.
    let unique: Vec<usize> = (0..scene.objects.len())
        .filter(|&i| {
            ObjectQuery {
                count: Some(1),
                ..ObjectQuery::colour_shape(&scene.objects[i])
            }
            .fits(&scene)
        })
        .collect();
    if unique.is_empty() {
        return None;
    }
    let index = unique[rng.below(unique.len())];
    let query = ObjectQuery::colour_shape(&scene.objects[index]).text();
    Some((scene, query, index))
}

/// Adds one trial to `score`: a hit when the map's largest cell has its centre in `bbox`;
/// also its chance rate and energy share. Returns the chance rate of the trial.
fn score_trial(
    score: &mut PointingScore,
    map: &Heatmap,
    width: u32,
    height: u32,
    bbox: [f32; 4],
) -> f64 {
    let (x, y) = map.peak_in_pixels(width, height);
    score.trials += 1;
    if in_box(x, y, bbox) {
        score.hits += 1;
    }
    score.energy += energy_in_box(map, width, height, bbox);
    let cells = (map.rows * map.cols).max(1);
    cells_in_box(map.rows, map.cols, width, height, bbox) as f64 / cells as f64
}

fn finish(score: &mut PointingScore, chance_sum: f64) {
    let trials = score.trials.max(1) as f64;
    score.hit_rate = score.hits as f64 / trials;
    score.chance = chance_sum / trials;
    score.energy /= trials;
}

/// The pointing game on generated scenes: for scenes with two or more objects, a text
/// query names one object whose colour and shape are unique in the scene ("a red
/// circle"); a hit is when the fused-score map's largest cell has its centre inside that
/// object's box. Also reports the energy-based variant (share of the map's positive mass
/// in the box).
pub fn pointing_game(
    explainer: &Explainer,
    method: Method,
    scenes: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<PointingScore, ExplainError> {
    let mut rng = crate::scenes::SceneRng::new(seed);
    let mut score = PointingScore::default();
    let mut chance_sum = 0.0;
    let mut tries = 0;
    while score.trials < scenes && tries < scenes * 50 {
        tries += 1;
        let Some((scene, query, target)) = pointing_query(&mut rng) else {
            continue;
        };
        let bbox = scene.objects[target].bbox;
        let image = scene.render();
        let ex = explainer.explain_fused(&EmbedInput::text(query), &image, method)?;
        let (w, h) = image.dimensions();
        chance_sum += score_trial(&mut score, &ex.fused_map, w, h, bbox);
        progress(score.trials, scenes);
    }
    finish(&mut score, chance_sum);
    Ok(score)
}

/// The composite pointing game (as in Grad-ECLIP's and FIxLIP's evaluations): four
/// scenes tiled 2×2 into one image of a scene's size (each scene at half size), the query
/// naming an object of one of them, found as in [`pointing_game`]; a hit is when the
/// map's largest cell lies in that scene's quadrant (chance 0.25). `energy` is the share of
/// positive mass in the quadrant.
pub fn composite_pointing_game(
    explainer: &Explainer,
    method: Method,
    trials: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<PointingScore, ExplainError> {
    use crate::scenes::{Scene, SceneRng};
    let mut rng = SceneRng::new(seed);
    let mut score = PointingScore::default();
    let mut chance_sum = 0.0;
    let mut tries = 0;
    while score.trials < trials && tries < trials * 50 {
        tries += 1;
        let Some((scene, query, target)) = pointing_query(&mut rng) else {
            continue;
        };
        let named = ObjectQuery::colour_shape(&scene.objects[target]);
        let quadrant = rng.below(4);
        // The other three scenes hold no object the query also names.
        let mut distractor = || loop {
            let s = Scene::random(&mut rng);
            if !named.fits(&s) {
                return s;
            }
        };
        let tiles: Vec<RgbImage> = (0..4)
            .map(|q| {
                if q == quadrant {
                    scene.render()
                } else {
                    distractor().render()
                }
            })
            .collect();
        let (w, h) = tiles[0].dimensions();
        let (hw, hh) = (w / 2, h / 2);
        let mut image = RgbImage::new(w, h);
        for (q, tile) in tiles.iter().enumerate() {
            let small =
                image::imageops::resize(tile, hw, hh, image::imageops::FilterType::Triangle);
            let (x, y) = ((q as u32 % 2) * hw, (q as u32 / 2) * hh);
            image::imageops::replace(&mut image, &small, i64::from(x), i64::from(y));
        }
        let (x0, y0) = ((quadrant as u32 % 2) * hw, (quadrant as u32 / 2) * hh);
        let quad = [
            x0 as f32,
            y0 as f32,
            (x0 + hw) as f32 - 0.01,
            (y0 + hh) as f32 - 0.01,
        ];
        let ex = explainer.explain_fused(&EmbedInput::text(query), &image, method)?;
        chance_sum += score_trial(&mut score, &ex.fused_map, w, h, quad);
        progress(score.trials, trials);
    }
    finish(&mut score, chance_sum);
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(values: Vec<f32>, rows: usize, cols: usize) -> Heatmap {
        Heatmap {
            name: "m".into(),
            rows,
            cols,
            values,
        }
    }

    #[test]
    fn centring_on_the_mean_token_leaves_what_sets_a_token_apart() {
        let dev = candle_core::Device::Cpu;
        // Three tokens of two channels; the mean token is (2, 10).
        let x = Tensor::new(&[[1f32, 10.0], [2.0, 10.0], [3.0, 10.0]], &dev).unwrap();
        let c = centre_on_mean(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c, [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]);
        // One token: nothing sets it apart, so its map is zero.
        let one = Tensor::new(&[[4f32, -2.0]], &dev).unwrap();
        let c = centre_on_mean(&one).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c, [[0.0, 0.0]]);
        assert!(centre_on_mean(&Tensor::zeros(3, DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn cells_in_a_box_count_their_centres() {
        // 8×8 cells of 12 px over 96 px: centres at 6, 18, 30, …
        assert_eq!(cells_in_box(8, 8, 96, 96, [0.0, 0.0, 24.0, 24.0]), 4);
        assert_eq!(cells_in_box(8, 8, 96, 96, [7.0, 7.0, 17.0, 17.0]), 0);
        assert_eq!(cells_in_box(8, 8, 96, 96, [6.0, 0.0, 6.0, 96.0]), 8);
        assert_eq!(cells_in_box(8, 8, 96, 96, [0.0, 0.0, 96.0, 96.0]), 64);
        // A non-square grid over a non-square image.
        assert_eq!(cells_in_box(2, 4, 40, 20, [0.0, 0.0, 20.0, 20.0]), 4);
    }

    #[test]
    fn peak_is_the_centre_of_the_largest_cell() {
        let m = map(vec![0.0, 1.0, 0.5, 0.2, 0.1, 3.0], 2, 3);
        assert_eq!(m.argmax(), (1, 2));
        assert_eq!(m.peak_in_pixels(96, 64), (80.0, 48.0));
        let n = m.normalized();
        assert_eq!(n[5], 1.0);
        assert_eq!(n[0], 0.0);
        assert!(
            map(vec![2.0; 4], 2, 2)
                .normalized()
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn overlay_blends_the_colour_map_over_the_image() {
        let img = RgbImage::from_pixel(8, 8, image::Rgb([0, 0, 0]));
        let m = map(vec![0.0, 1.0, 0.0, 1.0], 2, 2);
        let full = m.overlay(&img, ColorMap::Gray, 1.0);
        // Left column cold (black), right column hot (white), at any zoom.
        assert_eq!(full.get_pixel(0, 4)[0], 0);
        assert_eq!(full.get_pixel(7, 4)[0], 255);
        let none = m.overlay(&img, ColorMap::Gray, 0.0);
        assert_eq!(none, img);
    }

    #[test]
    fn colour_maps_run_from_their_first_to_last_anchor() {
        for cm in ColorMap::ALL {
            let t = cm.table();
            assert_eq!(t.len(), 256);
            assert_eq!(cm.color(0.0), [t[0][0], t[0][1], t[0][2]]);
            assert_eq!(cm.color(f32::NAN), cm.color(0.0));
        }
        assert_eq!(ColorMap::Gray.color(0.5), [128, 128, 128]);
    }

    #[test]
    fn comparison_contributions_add_up_to_the_fused_difference_to_first_order() {
        let a = PairBreakdown {
            fused: 0.61,
            similarities: [0.6, 0.5, 0.62, 0.4],
            weights: [0.3, 0.1, 0.5, 0.1],
            perspectives: vec![("global".into(), 0.6)],
        };
        let b = PairBreakdown {
            fused: 0.58,
            similarities: [0.59, 0.5, 0.57, 0.45],
            weights: [0.35, 0.1, 0.4, 0.15],
            perspectives: vec![("global".into(), 0.59)],
        };
        let c = compare_breakdowns(a, b);
        assert!((c.fused_diff - 0.03).abs() < 1e-6);
        assert!((c.similarity_diffs[2] - 0.05).abs() < 1e-6);
        // GF decided: the largest contribution.
        let best = (0..4)
            .max_by(|&x, &y| {
                c.similarity_contributions[x].total_cmp(&c.similarity_contributions[y])
            })
            .unwrap();
        assert_eq!(best, 2);
        assert!((c.similarity_contributions[2] - 0.45 * 0.05).abs() < 1e-6);
        assert!((c.perspective_diffs[0].1 - 0.01).abs() < 1e-6);
    }
}
