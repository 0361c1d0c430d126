//! The workflow that joins the layers, written once for the desktop app's worker and for
//! every CLI command: load a model by name, apply a fine-tune's output, index a gallery
//! through the embedding cache, search it with the model's fusion, explain a result.
//!
//! A [`Session`] is one loaded model with the perspectives, soft prompts and fusion it
//! embeds and scores with. Everything here blocks: the app calls it from its worker thread,
//! the CLI from `main`. Progress and cancellation come in as callbacks, download progress
//! through [`DownloadProgress`], which the CLI (terminal bars) and the app (its progress
//! line) implement.
//!
//! The defaults that both front ends share (a fine-tune's settings, the demo gallery) live
//! in [`defaults`], so the app and the CLI cannot drift apart.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::agff::{FusedScorer, Fusion, PairScore, PerspectiveEmbeddings, SimilarityConfig};
use crate::explain::{Comparison, Explainer, Heatmap, Method, compare_breakdowns};
use crate::index::projection::{Projection, ProjectionMethod, perspective_vectors, project};
use crate::index::{
    EmbedReport, Gallery, GalleryEmbeddings, Hit, IndexError, SearchOptions, scan_gallery, search,
};
use crate::model::demo::DemoModel;
use crate::model::hub::{DownloadProgress, ModelSource, ResolveOptions, resolve_model};
use crate::model::{Backbone, DeviceChoice, EmbedInput, ModelError, PerspectiveSet};
use crate::train::{TrainError, tuned_files};

/// Settings both front ends default to (the app's settings panel and the CLI's flags).
pub mod defaults {
    /// A fine-tune's InfoNCE temperature τ: the method's default (method.md §4).
    pub const FINE_TUNE_TAU: f64 = 0.02;
    /// A from-scratch recipe's τ (softer, so a random model learns faster).
    pub const RECIPE_TAU: f64 = 0.05;
    /// EGA strength α (method.md §5).
    pub const EGA_ALPHA: f64 = 1.0;
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    pub const LR: f64 = 3e-3;
    /// Optimisation steps of a fine-tune (short enough to watch in the app).
    pub const FINE_TUNE_STEPS: u64 = 60;
    /// Pairs per batch of a fine-tune.
    pub const FINE_TUNE_BATCH: usize = 16;
    /// Optimisation steps of a from-scratch recipe.
    pub const RECIPE_STEPS: u64 = 1800;
    /// Pairs per batch of a from-scratch recipe.
    pub const RECIPE_BATCH: usize = 32;

    /// Warm-up steps of a run of `steps` steps: a tenth, at most 100, at least 1.
    pub fn warmup(steps: u64) -> u64 {
        (steps / 10).clamp(1, 100)
    }

    /// A from-scratch recipe's settings (`train --recipe`): batch, temperature, learning
    /// rate and warm-up for `steps` steps; every other setting at its default.
    pub fn recipe(steps: u64) -> crate::train::TrainSettings {
        crate::train::TrainSettings {
            steps,
            batch: RECIPE_BATCH,
            lr: LR,
            warmup: warmup(steps),
            tau: RECIPE_TAU,
            ..crate::train::TrainSettings::default()
        }
    }

    /// A fine-tune's settings: soft prompts and fusion, no weight decay, one checkpoint at
    /// the end.
    pub fn fine_tune(steps: u64) -> crate::train::TrainSettings {
        crate::train::TrainSettings {
            steps,
            batch: FINE_TUNE_BATCH,
            lr: LR,
            warmup: warmup(steps),
            alpha: EGA_ALPHA,
            tau: FINE_TUNE_TAU,
            weight_decay: 0.0,
            checkpoint_every: steps.max(1),
            ..crate::train::TrainSettings::default()
        }
    }
}

/// What went wrong in a workflow step; each variant keeps its layer's error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Loading the backbone failed: the model argument names nothing loadable, a download
    /// failed, or the weights are missing or do not fit the config.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The compute device of [`LoadOptions::device`] is unknown, not compiled in, or
    /// cannot be opened.
    #[error(transparent)]
    Device(#[from] crate::model::DeviceError),
    /// Scanning or indexing a gallery (embedding its images, its cache), embedding a
    /// query, or a search failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Building the fusion or the scorer, embedding and normalising an input outside the
    /// gallery path ([`Session::pair_outcome`]), or scoring failed (for example a
    /// non-finite value or embeddings of mismatched shapes).
    #[error(transparent)]
    Agff(#[from] crate::agff::AgffError),
    /// Computing a heatmap or a score breakdown failed.
    #[error(transparent)]
    Explain(#[from] crate::explain::ExplainError),
    /// Reading a fine-tune's fusion or soft prompts back failed ([`Session::apply_tuned`]:
    /// an unreadable file, θ or β out of range, a soft prompt of the wrong shape).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A tensor operation of the workflow itself failed (moving stored vectors to the
    /// model's device, say).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A fine-tune's output folder that does not fit the model.
    #[error("{path}: {reason}")]
    Tuned {
        /// The folder, or the file in it, that is wrong.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A request the session cannot serve, with the reason: an invalid perspective set, a
    /// result or perspective slot that is not in the gallery, or a demo gallery that
    /// cannot be written.
    #[error("{0}")]
    Input(String),
    /// A text query that holds nothing the model can read ([`read_text_query`]).
    #[error("{0}")]
    Query(String),
}

/// A text query checked against the model that will read it ([`read_text_query`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextQuery {
    /// The query as typed (the model reads it whole).
    pub text: String,
    /// Words the model does not know (read as its unknown token).
    pub unknown_words: Vec<String>,
    /// Characters the model's tokenizer drops (emoji and symbols for the demo model's
    /// word-level vocabulary), each once.
    pub dropped: Vec<char>,
}

impl TextQuery {
    /// What the user should be told about this query, one sentence per kind of loss:
    /// unknown words, dropped characters (empty when the model reads it all).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.unknown_words.is_empty() {
            out.push(format!(
                "the model does not know these words: {} (they are read as unknown)",
                self.unknown_words.join(", ")
            ));
        }
        if !self.dropped.is_empty() {
            out.push(format!(
                "the model cannot read these characters and drops them: {}",
                describe_chars(&self.dropped)
            ));
        }
        out
    }
}

fn describe_chars(chars: &[char]) -> String {
    chars
        .iter()
        .map(|&c| crate::util::text::describe_char(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a text query before any model work: one that holds nothing is refused, and
/// what the model will not read is listed ([`TextQuery::warnings`]). The app and every
/// CLI command that takes `--query` go through it.
///
/// # Errors
/// [`SessionError::Query`] when the text is empty, only whitespace or invisible
/// characters (zero-width space, joiners, byte-order mark…), or, for a word-level model,
/// holds no word the model knows (an emoji-only query for the demo model); the message
/// names what was dropped or unknown.
pub fn read_text_query(backbone: &dyn Backbone, text: &str) -> Result<TextQuery, SessionError> {
    let visible = text
        .chars()
        .filter(|&c| !c.is_whitespace() && !crate::util::text::is_invisible(c))
        .count();
    if visible == 0 {
        let invisible: Vec<char> = text
            .chars()
            .filter(|&c| crate::util::text::is_invisible(c))
            .fold(Vec::new(), |mut v, c| {
                if !v.contains(&c) {
                    v.push(c);
                }
                v
            });
        return Err(SessionError::Query(if invisible.is_empty() {
            "the query is empty: type what to look for".into()
        } else {
            format!(
                "the query holds only invisible characters ({}): type what to look for",
                describe_chars(&invisible)
            )
        }));
    }
    let query = TextQuery {
        text: text.to_owned(),
        unknown_words: backbone.unknown_words(text),
        dropped: backbone.dropped_characters(text),
    };
    if backbone.known_words(text) == Some(0) {
        let mut lost = Vec::new();
        if !query.unknown_words.is_empty() {
            lost.push(format!("unknown words: {}", query.unknown_words.join(", ")));
        }
        if !query.dropped.is_empty() {
            lost.push(format!(
                "dropped characters: {}",
                describe_chars(&query.dropped)
            ));
        }
        return Err(SessionError::Query(format!(
            "the model reads no word of this query ({}); it knows only the words of its \
             scenes, such as \"two red circles\"",
            lost.join("; ")
        )));
    }
    Ok(query)
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weights dtype of a Qwen3-VL folder or Hub model (the demo model always runs in F32).
    pub dtype: DType,
    /// The compute device the model is loaded onto.
    pub device: DeviceChoice,
    /// How a Hub repo id is resolved (offline, revision, cache folder).
    pub resolve: ResolveOptions,
    /// How a Qwen3-VL model prepares images (profile, pixel budget; default: the model's).
    pub images: crate::model::loader::ImageOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: DeviceChoice::Cpu,
            resolve: ResolveOptions::default(),
            images: crate::model::loader::ImageOptions::default(),
        }
    }
}

/// Loads the backbone `arg` names: `demo` (embedded in the binary), a folder saved by
/// `train --recipe demo`, a Hugging Face folder, or a Hub repo id (downloaded into the
/// Hugging Face cache first, reporting to `progress`).
///
/// # Errors
/// The device cannot be opened, the argument names nothing loadable, or the weights are
/// missing or do not fit the config (each error names the file).
pub fn load_backbone(
    arg: &str,
    options: &LoadOptions,
    progress: &mut dyn DownloadProgress,
) -> Result<Box<dyn Backbone>, SessionError> {
    let device = options.device.open()?;
    match resolve_model(arg, &options.resolve, progress)? {
        ModelSource::Demo => Ok(Box::new(DemoModel::embedded(&device)?)),
        ModelSource::Local(dir) => Ok(crate::model::loader::load_folder_with(
            &dir,
            options.dtype,
            &device,
            &options.images,
        )?),
    }
}

/// One loaded model and what it embeds and scores with.
pub struct Session {
    /// The loaded model that embeds every input.
    pub backbone: Box<dyn Backbone>,
    /// The perspectives every embedding uses (the model's own unless changed).
    pub perspectives: PerspectiveSet,
    /// The fusion θ, β of the scores (the model's trained one unless a fine-tune's).
    pub fusion: Fusion,
    /// Soft prompts of a fine-tune, one per perspective (empty: the backbone's own).
    pub soft: Vec<Option<Tensor>>,
    /// Cut a query text longer than the model reads to fit (with a warning) instead of
    /// failing with [`ModelError::TooLong`] (`--truncate`; off by default).
    pub truncate: bool,
    /// Matryoshka dimensions of every embedding (`--dim`; `None`: all), set with
    /// [`Session::set_dim`].
    dim: Option<usize>,
}

impl Session {
    /// A session on `backbone` with its default perspectives and trained fusion.
    pub fn new(backbone: Box<dyn Backbone>) -> Result<Self, SessionError> {
        let perspectives = backbone.default_perspectives();
        let fusion = Fusion::for_backbone(backbone.as_ref())?;
        Ok(Self {
            backbone,
            perspectives,
            fusion,
            soft: Vec::new(),
            truncate: false,
            dim: None,
        })
    }

    /// Embeds with the first `dim` coordinates of every embedding, renormalised
    /// (Matryoshka; `None`: all of them). The gallery must be indexed again (the cache key
    /// holds it).
    ///
    /// # Errors
    /// [`SessionError::Input`] when `dim` is 0 or more than the model's width.
    pub fn set_dim(&mut self, dim: Option<usize>) -> Result<(), SessionError> {
        let hidden = self.backbone.hidden_size();
        if let Some(d) = dim
            && (d == 0 || d > hidden)
        {
            return Err(SessionError::Input(format!(
                "--dim {d}: the model's embeddings have {hidden} dimensions; give 1 to {hidden}"
            )));
        }
        self.dim = dim;
        Ok(())
    }

    /// The width of this session's embeddings: the Matryoshka dimensions, or the model's.
    pub fn dim(&self) -> usize {
        self.dim.unwrap_or_else(|| self.backbone.hidden_size())
    }

    /// [`load_backbone`] then [`Session::new`].
    pub fn load(
        arg: &str,
        options: &LoadOptions,
        progress: &mut dyn DownloadProgress,
    ) -> Result<Self, SessionError> {
        Self::new(load_backbone(arg, options, progress)?)
    }

    /// Embeds with `set` from now on; soft prompts of a fine-tune belong to the old set
    /// and are dropped. The fusion stays (θ has one logit per similarity, whatever K is).
    pub fn set_perspectives(&mut self, set: PerspectiveSet) -> Result<(), SessionError> {
        set.validate().map_err(SessionError::Input)?;
        self.perspectives = set;
        self.soft.clear();
        Ok(())
    }

    /// Applies a fine-tune's output folder: its perspectives (`perspectives.json`, if
    /// present), soft prompts (`soft_prompts.safetensors`, if present) and fusion
    /// (`fusion.json`, required).
    ///
    /// # Errors
    /// [`SessionError::Tuned`] naming the folder when it is missing or has no
    /// `fusion.json`, or naming `perspectives.json` when that is malformed;
    /// [`SessionError::Train`] naming the file when `fusion.json` or the soft prompts are
    /// unreadable or do not fit the model (soft-prompt shapes against its width).
    pub fn apply_tuned(&mut self, dir: &Path) -> Result<(), SessionError> {
        let tuned = |path: &Path, reason: String| SessionError::Tuned {
            path: path.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(tuned(dir, "no such folder (a fine-tune's --out)".into()));
        }
        let fusion_path = dir.join(tuned_files::FUSION);
        if !fusion_path.is_file() {
            return Err(tuned(
                dir,
                format!(
                    "not a fine-tune's output: it has no {}",
                    tuned_files::FUSION
                ),
            ));
        }
        let perspectives_path = dir.join(tuned_files::PERSPECTIVES);
        let perspectives = if perspectives_path.is_file() {
            PerspectiveSet::from_file(&perspectives_path)
                .map_err(|e| tuned(&perspectives_path, e.to_string()))?
        } else {
            self.perspectives.clone()
        };
        let init = crate::train::read_fusion(&fusion_path)?;
        let soft = crate::train::read_soft_prompts(
            &dir.join(tuned_files::SOFT_PROMPTS),
            &perspectives,
            self.backbone.hidden_size(),
            self.backbone.device(),
        )?;
        self.fusion = Fusion::new(init, DType::F32, self.backbone.device())?;
        self.perspectives = perspectives;
        self.soft = if soft.iter().any(Option::is_some) {
            soft
        } else {
            Vec::new()
        };
        Ok(())
    }

    /// The scorer of this session's fusion.
    pub fn scorer(&self) -> Result<FusedScorer, SessionError> {
        Ok(FusedScorer::new(SimilarityConfig::default(), &self.fusion)?)
    }

    /// One input's unit perspective vectors `[(1+K)·d]`, flattened.
    pub fn embed_unit(&self, input: &EmbedInput) -> Result<Vec<f32>, SessionError> {
        Ok(crate::index::embed_unit_with(
            self.backbone.as_ref(),
            input,
            &self.perspectives,
            &self.embed_options(),
        )?)
    }

    /// Embeds every image of `gallery` not in the cache under `cache_dir` (the cache key
    /// holds the model, the perspectives and the soft prompts), `progress(done, total)`.
    pub fn index(
        &self,
        gallery: &Gallery,
        cache_dir: &Path,
        cancel: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(GalleryEmbeddings, EmbedReport), SessionError> {
        Ok(crate::index::embed_gallery_with(
            self.backbone.as_ref(),
            &self.perspectives,
            &self.embed_options(),
            gallery,
            cache_dir,
            cancel,
            progress,
        )?)
    }

    /// Embeds `input` and ranks `gallery` by the fused score; also returns the query's
    /// unit vectors (for [`crate::index::first_stage_recall`], say).
    pub fn rank(
        &self,
        gallery: &GalleryEmbeddings,
        input: &EmbedInput,
        options: &SearchOptions,
    ) -> Result<(Vec<Hit>, Vec<f32>), SessionError> {
        let query = self.embed_unit(input)?;
        let hits = self.rank_embedded(gallery, &query, options)?;
        Ok((hits, query))
    }

    /// Ranks `gallery` for a query already embedded ([`Session::embed_unit`]).
    pub fn rank_embedded(
        &self,
        gallery: &GalleryEmbeddings,
        query: &[f32],
        options: &SearchOptions,
    ) -> Result<Vec<Hit>, SessionError> {
        Ok(search(query, gallery, &self.scorer()?, options)?)
    }

    /// An explainer with this session's perspectives, fusion and soft prompts.
    pub fn explainer(&self) -> Explainer<'_> {
        let mut explainer = Explainer::new(
            self.backbone.as_ref(),
            self.perspectives.clone(),
            self.fusion.clone(),
        );
        explainer.soft_prompts = self.soft.clone();
        explainer.truncate = self.truncate;
        explainer.dim = self.dim;
        explainer
    }

    /// Why gallery item `a` scores as it does against `b` for the embedded query `q`,
    /// from the gallery's stored vectors (no image is embedded again).
    pub fn compare_stored(
        &self,
        explainer: &Explainer<'_>,
        q: &PerspectiveEmbeddings,
        gallery: &GalleryEmbeddings,
        a: usize,
        b: usize,
    ) -> Result<Comparison, SessionError> {
        let stored = |i: usize| -> Result<PerspectiveEmbeddings, SessionError> {
            if i >= gallery.len() {
                return Err(SessionError::Input(format!(
                    "result {i} is not in the gallery any more"
                )));
            }
            let cpu = gallery.embeddings(&[i])?;
            let t = cpu.tensor().to_device(q.tensor().device())?;
            Ok(PerspectiveEmbeddings::assume_unit(t)?)
        };
        let ba = explainer.breakdown(q, &stored(a)?)?;
        let bb = explainer.breakdown(q, &stored(b)?)?;
        Ok(compare_breakdowns(ba, bb))
    }

    /// Scans `dir` (recursively; unreadable files are listed with a reason) and embeds
    /// it through the cache: [`Session::index`] after [`scan_gallery`].
    pub fn index_folder(
        &self,
        dir: &Path,
        cache_dir: &Path,
        cancel: &dyn Fn() -> bool,
        scanned: &mut dyn FnMut(usize),
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Gallery, GalleryEmbeddings, EmbedReport), SessionError> {
        let gallery = scan_gallery(dir, cancel, scanned)?;
        let (embeddings, report) = self.index(&gallery, cache_dir, cancel, progress)?;
        Ok((gallery, embeddings, report))
    }

    /// One MMVP-style pair as the pairs view shows it: both statements scored against
    /// both images (fused and each similarity), whether each method gets the pair right
    /// (MMVP-VLM scoring: both statements pick their own image), and each image's fused
    /// map for its own statement (method.md §7, by `method`).
    pub fn pair_outcome(
        &self,
        images: &[image::RgbImage; 2],
        statements: [&str; 2],
        method: Method,
    ) -> Result<PairOutcome, SessionError> {
        let explainer = self.explainer();
        let q = [
            explainer.embed_query(&EmbedInput::text(statements[0]))?,
            explainer.embed_query(&EmbedInput::text(statements[1]))?,
        ];
        let mut maps = Vec::with_capacity(2);
        let mut c = Vec::with_capacity(2);
        for (i, image) in images.iter().enumerate() {
            let e = explainer.explain_embedded(&q[i], image, method)?;
            maps.push(e.fused_map);
            let (unit, _) = PerspectiveEmbeddings::embed(
                self.backbone.as_ref(),
                &EmbedInput::image(image.clone()),
                &self.perspectives,
                &self.embed_options(),
            )?;
            c.push(unit);
        }
        let queries = PerspectiveEmbeddings::cat(&[&q[0], &q[1]])?;
        let candidates = PerspectiveEmbeddings::cat(&[&c[0], &c[1]])?;
        let table = self.scorer()?.score(&queries, &candidates)?;
        let cell = |s: usize, i: usize| -> Result<PairScore, SessionError> {
            table
                .get(s, i)
                .copied()
                .ok_or_else(|| SessionError::Input("a pair needs a 2×2 score table".into()))
        };
        let scores = [[cell(0, 0)?, cell(0, 1)?], [cell(1, 0)?, cell(1, 1)?]];
        let correct = std::array::from_fn(|m| {
            let v = |s: usize, i: usize| {
                let p = &scores[s][i];
                if m == 0 {
                    p.fused
                } else {
                    p.similarities[m - 1]
                }
            };
            crate::scenes::mmvp_pair_correct([[v(0, 0), v(0, 1)], [v(1, 0), v(1, 1)]])
        });
        let [m0, m1]: [Heatmap; 2] = maps
            .try_into()
            .map_err(|_| SessionError::Input("a pair has two images".into()))?;
        Ok(PairOutcome {
            scores,
            correct,
            maps: [m0, m1],
        })
    }

    /// The embedding options of this session (its soft prompts, whether long texts are
    /// cut to fit).
    pub fn embed_options(&self) -> crate::model::EmbedOptions {
        crate::model::EmbedOptions {
            soft_prompts: self.soft.clone(),
            truncate: self.truncate,
            dim: self.dim,
            ..crate::model::EmbedOptions::default()
        }
    }

    /// A 2-D picture of the gallery's space of perspective `slot` (0: global), with the
    /// query (if any) placed by the same PCA basis. `None` when cancelled.
    pub fn project(
        &self,
        gallery: &GalleryEmbeddings,
        slot: usize,
        method: ProjectionMethod,
        query: Option<&[f32]>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<Option<PlacedProjection>, SessionError> {
        if slot >= gallery.per_item {
            return Err(SessionError::Input(format!(
                "perspective {slot} does not exist (the gallery has {})",
                gallery.per_item
            )));
        }
        let vectors = perspective_vectors(gallery, slot);
        let Some(projection) = project(&vectors, method, cancel) else {
            return Ok(None);
        };
        let d = gallery.dim;
        let placed = query
            .and_then(|v| v.get(slot * d..(slot + 1) * d))
            .map(|s| projection.place(s));
        Ok(Some((projection, placed)))
    }
}

/// A projection and where the query landed on it (if there was one).
pub type PlacedProjection = (Projection, Option<[f32; 2]>);

/// What [`Session::pair_outcome`] returns.
#[derive(Debug, Clone)]
pub struct PairOutcome {
    /// `scores[s][i]`: statement `s` against image `i`.
    pub scores: [[PairScore; 2]; 2],
    /// Per method (fused, GG, FG, GF, FF): both statements pick their own image.
    pub correct: [bool; 5],
    /// Image `i`'s fused map for statement `i`.
    pub maps: [Heatmap; 2],
}

/// The demo gallery: `count` scenes of `seed` rendered once into `cache_dir` (with their
/// `scenes.jsonl`), so the app opens on a gallery at once and a second start reuses it.
/// A half-written folder (a crash while rendering) is rendered again.
pub fn demo_gallery(
    cache_dir: &Path,
    count: usize,
    seed: u64,
) -> Result<std::path::PathBuf, SessionError> {
    let dir = cache_dir.join(format!("demo-scenes-{seed}-{count}"));
    if !dir.join("scenes.jsonl").is_file() {
        let io = |e: std::io::Error| SessionError::Input(format!("{}: {e}", dir.display()));
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        crate::scenes::write_scenes(&tmp, count, seed)
            .map_err(|e| SessionError::Input(e.to_string()))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io)?;
    }
    Ok(dir)
}

/// The scene metadata of a folder written by `agff-lens scenes` (or the demo gallery),
/// by file name: what the embedding map colours points by. `None` for other folders.
pub fn scene_metadata(
    dir: &Path,
) -> Option<std::collections::HashMap<std::path::PathBuf, crate::scenes::Scene>> {
    let text = std::fs::read_to_string(dir.join("scenes.jsonl")).ok()?;
    let mut out = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let file = v.get("file")?.as_str()?;
        let scene: crate::scenes::Scene = serde_json::from_value(v.get("scene")?.clone()).ok()?;
        out.insert(dir.join(file), scene);
    }
    Some(out)
}
