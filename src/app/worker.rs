//! The model thread: every job that touches the backbone runs here, one at a time. The UI
//! sends [`Job`]s over a bounded channel and drains [`Event`]s every frame; the worker
//! wakes the UI with the repaint hook after each event. Nothing here blocks the UI: the
//! UI only ever uses `try_send`/`try_recv`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use image::RgbImage;

use crate::explain::{Comparison, Explanation, Method};
use crate::index::projection::{Projection, ProjectionMethod};
use crate::index::{
    FirstStageOn, GalleryEmbeddings, Hit, SearchOptions, default_cache_dir, thumbnail,
};
use crate::model::hub::DownloadProgress;
use crate::model::image_io::{open_image, to_rgb8};
use crate::model::{DeviceChoice, EmbedInput, PerspectiveSet};
use crate::scenes::MmvpPattern;
use crate::session::{LoadOptions, PairOutcome, Session};
use crate::train::{DataSource, TrainControl, TrainEvent, TrainSettings, fine_tune};

/// Side of the thumbnails in the results grid.
pub const THUMB_SIDE: u32 = 112;
/// Side of the held-out ranking's thumbnails in the fine-tune view.
pub const RANKING_THUMB_SIDE: u32 = 64;
/// Side of the thumbnails drawn on the embedding map.
pub const MAP_THUMB_SIDE: u32 = 40;

/// Categories of scene metadata per point, for colouring the embedding map: setting,
/// viewpoint, number of objects, and the first object's shape and colour.
fn scene_fields(
    paths: &[PathBuf],
    meta: &std::collections::HashMap<PathBuf, crate::scenes::Scene>,
) -> Vec<(String, Vec<String>)> {
    let get = |f: &dyn Fn(&crate::scenes::Scene) -> String| -> Vec<String> {
        paths
            .iter()
            .map(|p| meta.get(p).map_or_else(|| "?".to_owned(), f))
            .collect()
    };
    let first = |s: &crate::scenes::Scene, f: &dyn Fn(&crate::scenes::SceneObject) -> String| {
        s.objects.first().map_or_else(|| "none".to_owned(), f)
    };
    vec![
        ("setting".into(), get(&|s| s.setting.name().to_owned())),
        ("view".into(), get(&|s| s.zoom.name().to_owned())),
        ("objects".into(), get(&|s| s.objects.len().to_string())),
        (
            "first shape".into(),
            get(&|s| first(s, &|o| o.shape.name().to_owned())),
        ),
        (
            "first colour".into(),
            get(&|s| first(s, &|o| o.colour.name().to_owned())),
        ),
    ]
}
/// Longest side of the inspector's image.
pub const VIEW_SIDE: u32 = 384;

/// Which model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// The demo model embedded in the binary.
    Demo,
    /// A local Hugging Face folder or a Hub repo id.
    Named(String),
}

/// A text or an image query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Text to embed as the query.
    Text(String),
    /// An image file to embed as the query.
    Image(PathBuf),
}

impl Query {
    /// A short label for the log and the map: the text in quotes, or `image <path>`.
    pub fn label(&self) -> String {
        match self {
            Query::Text(t) => format!("“{t}”"),
            Query::Image(p) => format!("image {}", p.display()),
        }
    }
}

/// Where fine-tuning pairs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainData {
    /// Procedural scenes with their captions.
    Scenes {
        /// Seed of the scene generator.
        seed: u64,
    },
    /// Images with sidecar `.txt` captions, or a JSONL of image,text.
    Folder(PathBuf),
}

/// Where the pairs view's pairs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PairsSource {
    /// Generated P-MMVP pairs: `per_pattern` of each of the nine patterns.
    Pmmvp {
        /// Pairs generated per pattern.
        per_pattern: usize,
        /// Seed of the pair generator.
        seed: u64,
    },
    /// A folder in the MMVP-VLM layout (`Questions.csv` and the images).
    Folder(PathBuf),
}

/// How a model is loaded, as the settings say: image preprocessing and Matryoshka
/// dimensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSettings {
    /// The image preprocessing profile and pixel budget (`--preprocess`, `--max-pixels`).
    pub images: crate::model::loader::ImageOptions,
    /// The first N dimensions of every embedding, renormalised (`--dim`; `None`: all).
    pub dim: Option<usize>,
}

/// Work for the model thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Load a model (replacing the current one; the gallery is dropped with it).
    /// Answered by [`Event::ModelLoaded`].
    LoadModel(ModelChoice, LoadSettings),
    /// Load a second model to compare with (`None`: stop comparing); it indexes the
    /// current gallery too, and from then on searches and explanations run on both.
    /// Answered by [`Event::CompareLoaded`].
    LoadCompare(Option<ModelChoice>, LoadSettings),
    /// Render `count` demo scenes (once, into the cache folder) and index them.
    IndexDemo {
        /// Number of scenes.
        count: usize,
        /// Seed of the scene generator.
        seed: u64,
    },
    /// Index the images under a folder (through the embedding cache). Answered by
    /// [`Event::Indexed`].
    IndexFolder(PathBuf),
    /// Rank the gallery for a query. Answered by [`Event::Results`].
    Search {
        /// The query to embed.
        query: Query,
        /// Number of results to return.
        top_k: usize,
        /// Candidates the first stage keeps before the full fused score re-ranks them
        /// (`None`: score every item).
        first_stage: Option<usize>,
        /// What the first stage ranks candidates by.
        first_stage_on: FirstStageOn,
    },
    /// Maps and scores for gallery item `target`, compared with `runner_up`.
    Explain {
        /// The query the maps explain.
        query: Query,
        /// Gallery index of the result to explain.
        target: usize,
        /// Gallery index of the result to compare it with (`None`: no comparison).
        runner_up: Option<usize>,
        /// How the maps are computed.
        method: Method,
    },
    /// Use these perspectives from now on and re-embed the gallery (through the cache).
    SetPerspectives(PerspectiveSet),
    /// Fine-tune (soft prompts and/or fusion, as `settings` say), then apply the result and
    /// re-embed the gallery. Sends [`Event::Ranking`] before and after and [`Event::Train`]
    /// while it runs; the pause flag holds it between steps.
    Train {
        /// Where the training pairs come from.
        data: TrainData,
        /// Steps, batch, learning rate, α, τ and what is trained.
        settings: TrainSettings,
        /// A query whose ranking is shown before and after the run.
        heldout: Option<String>,
    },
    /// Score MMVP-style pairs with the fused score and each similarity, with maps.
    Pairs {
        /// Where the pairs come from.
        source: PairsSource,
        /// How the maps over the images are computed.
        method: Method,
    },
    /// Project the gallery's space of perspective `slot` to 2-D (and place the query).
    Project {
        /// Index of the perspective (0: the global view).
        slot: usize,
        /// PCA or t-SNE.
        method: ProjectionMethod,
        /// A query to place on the map and to colour the points by (`None`: no query).
        query: Option<Query>,
    },
}

impl Job {
    /// The job's short name, as [`Event`]s and the log report it.
    pub fn name(&self) -> &'static str {
        match self {
            Job::LoadModel(..) => "load model",
            Job::LoadCompare(..) => "compare model",
            Job::IndexDemo { .. } | Job::IndexFolder(_) => "index",
            Job::Search { .. } => "search",
            Job::Explain { .. } => "explain",
            Job::SetPerspectives(_) => "perspectives",
            Job::Train { .. } => "fine-tune",
            Job::Pairs { .. } => "pairs",
            Job::Project { .. } => "map",
        }
    }
}

/// A small RGB picture for the UI.
#[derive(Debug, Clone)]
pub struct Picture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB8 pixels, `width × height × 3` bytes.
    pub rgb: Vec<u8>,
}

impl Picture {
    /// One grey pixel: the picture of a file that could not be read any more.
    pub fn placeholder() -> Self {
        Self {
            width: 1,
            height: 1,
            rgb: vec![128, 128, 128],
        }
    }

    /// Copies an image's pixels.
    pub fn from_image(image: &RgbImage) -> Self {
        Self {
            width: image.width(),
            height: image.height(),
            rgb: image.as_raw().clone(),
        }
    }
}

/// The gallery the worker holds now.
#[derive(Debug, Clone)]
pub struct GalleryInfo {
    /// The folder that was indexed.
    pub root: PathBuf,
    /// Images in the gallery.
    pub images: usize,
    /// Images embedded by the model in this run.
    pub embedded: usize,
    /// Images whose embeddings came from the cache.
    pub from_cache: usize,
    /// Files not indexed, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// A problem with the cache file (it was rebuilt), for the log.
    pub cache_note: Option<String>,
    /// Thumbnails of the first [`PREVIEW_ITEMS`] images, for the start view.
    pub preview: Vec<(PathBuf, Picture)>,
}

/// Images shown in the start view's gallery grid.
pub const PREVIEW_ITEMS: usize = 240;

/// One scored pair of the pairs view.
#[derive(Debug, Clone)]
pub struct PairView {
    /// The MMVP pattern (or the folder's type name).
    pub pattern: String,
    /// The two images, at most [`VIEW_SIDE`] pixels on their longest side.
    pub images: [Picture; 2],
    /// Each image with its fused map for its own statement blended over it.
    pub overlays: [Picture; 2],
    /// The two statements; statement `i` describes image `i`.
    pub statements: [String; 2],
    /// The 2×2 scores, which methods pick the right images, and the maps.
    pub outcome: PairOutcome,
}

/// The pairs view's data: every pair and, per pattern, the pair accuracy (%) of the fused
/// score and of GG, FG, GF, FF alone, as `eval pmmvp` reports it.
#[derive(Debug, Clone)]
pub struct PairsResult {
    /// Where the pairs came from, in words.
    pub source: String,
    /// Every scored pair, in order.
    pub pairs: Vec<PairView>,
    /// (pattern, [fused, GG, FG, GF, FF] %), in MMVP order, then "average".
    pub summary: Vec<(String, [f64; 5])>,
}

/// The embedding map's data.
#[derive(Debug, Clone)]
pub struct MapResult {
    /// The perspective whose space is drawn, and its name.
    pub slot: usize,
    /// The name of perspective `slot`.
    pub slot_name: String,
    /// The 2-D points, one per gallery item in gallery order, and how they were placed.
    pub projection: Projection,
    /// The query's place, when there is a query.
    pub query: Option<[f32; 2]>,
    /// The query's label ([`Query::label`]), when there is a query.
    pub query_label: Option<String>,
    /// Fused score of every item for the query (empty without a query).
    pub scores: Vec<f32>,
    /// The image file of each point.
    pub paths: Vec<PathBuf>,
    /// Small thumbnails, one per point.
    pub thumbs: Vec<Picture>,
    /// For scene folders: per metadata field, a category per point.
    pub fields: Vec<(String, Vec<String>)>,
}

/// One ranked result.
#[derive(Debug, Clone)]
pub struct ResultItem {
    /// Its gallery index, fused score, similarities and fusion weights.
    pub hit: Hit,
    /// The image file.
    pub path: PathBuf,
    /// A thumbnail at most [`THUMB_SIDE`] pixels on a side (`None`: the file could not
    /// be read).
    pub thumb: Option<Picture>,
}

/// The ranking of one query.
#[derive(Debug, Clone)]
pub struct SearchResults {
    /// The query that was ranked.
    pub query: Query,
    /// The results, best first.
    pub items: Vec<ResultItem>,
    /// The model's perspective names, in slot order (global first).
    pub perspective_names: Vec<String>,
    /// What the model did not read of a text query (unknown words, dropped characters),
    /// one sentence each.
    pub warnings: Vec<String>,
    /// Wall-clock seconds of the search, thumbnails included.
    pub seconds: f64,
    /// The second model's ranking of the same gallery, when one is loaded to compare.
    pub compare: Option<CompareColumn>,
}

/// The second model's side of a search.
#[derive(Debug, Clone)]
pub struct CompareColumn {
    /// The second model's name.
    pub model: String,
    /// Its results, best first (as many as the first model's).
    pub items: Vec<ResultItem>,
    /// How far the two rankings agree (overlap in the top k, Spearman's ρ over the
    /// gallery).
    pub agreement: crate::index::RankAgreement,
}

/// The second model's view of an explained result.
#[derive(Debug, Clone)]
pub struct CompareMap {
    /// The second model's name.
    pub model: String,
    /// Its fused score for the (query, image) pair.
    pub score: f32,
    /// Its fused map over the image (same method as the first model's).
    pub map: crate::explain::Heatmap,
}

/// What the inspector shows for one result.
#[derive(Debug, Clone)]
pub struct ExplainResult {
    /// The query explained.
    pub query: Query,
    /// Gallery index of the result.
    pub target: usize,
    /// Its image file.
    pub path: PathBuf,
    /// The image, at most [`VIEW_SIDE`] pixels on its longest side.
    pub image: Picture,
    /// Scores and maps for the (query, image) pair.
    pub explanation: Explanation,
    /// The runner-up's gallery index, path, picture and its comparison with the
    /// result, when one was asked for.
    pub runner_up: Option<(usize, PathBuf, Picture, Comparison)>,
    /// The runner-up's fused map for the same query (same method), to show beside this one.
    pub runner_up_map: Option<crate::explain::Heatmap>,
    /// The second model's score and map for the same pair, when one is loaded to compare.
    pub compare: Option<CompareMap>,
}

/// A held-out query's top results, before or after fine-tuning.
#[derive(Debug, Clone)]
pub struct Ranking {
    /// False: before the run; true: after it.
    pub after: bool,
    /// The held-out query.
    pub query: String,
    /// The top five images and their fused scores, best first.
    pub top: Vec<(PathBuf, f32)>,
    /// A thumbnail of each of `top`.
    pub thumbs: Vec<Picture>,
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A job began (its [`Job::name`]); sent first for every job.
    Started(&'static str),
    /// How far the running job is. Dropped rather than waited on when the channel is
    /// full.
    Progress {
        /// The job's name.
        job: &'static str,
        /// Units done (images, pairs, thumbnails or bytes, by job).
        done: usize,
        /// Units in all (0: not known yet).
        total: usize,
        /// What the job is doing now.
        what: String,
    },
    /// A model finished loading ([`Job::LoadModel`]); the gallery is gone with the old one.
    ModelLoaded {
        /// The model's name.
        name: String,
        /// Its perspectives.
        perspectives: PerspectiveSet,
        /// Its hidden size, the embedding dimension d.
        dim: usize,
    },
    /// The model to compare with changed ([`Job::LoadCompare`]): its name, or `None`
    /// when comparing stopped.
    CompareLoaded(Option<String>),
    /// A gallery was indexed (after indexing, new perspectives or a fine-tune).
    Indexed(Box<GalleryInfo>),
    /// The ranking of a [`Job::Search`].
    Results(Box<SearchResults>),
    /// The inspector's data for a [`Job::Explain`].
    Explained(Box<ExplainResult>),
    /// The perspectives in use after [`Job::SetPerspectives`] (sent before re-indexing).
    PerspectivesSet(PerspectiveSet),
    /// The held-out query's ranking, before and after a fine-tune.
    Ranking(Box<Ranking>),
    /// A trainer event of the running fine-tune, forwarded as it comes.
    Train(Box<TrainEvent>),
    /// The scored pairs of a [`Job::Pairs`].
    Pairs(Box<PairsResult>),
    /// The embedding map of a [`Job::Project`].
    Map(Box<MapResult>),
    /// The job ended; the message, if any, goes to the log.
    Done {
        /// The job's name.
        job: &'static str,
        /// A line for the log, if any.
        message: Option<String>,
    },
    /// The job ended with an error; the message goes to the status line and the log.
    Failed {
        /// The job's name.
        job: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The job (by name) stopped because the UI asked it to ([`WorkerHandle::cancel`]).
    Cancelled(&'static str),
}

/// The UI's side of the worker.
pub struct WorkerHandle {
    jobs: SyncSender<Job>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The job queue (8 jobs) is full.
    #[error("the model thread is busy with queued work; try again in a moment")]
    Full,
    /// The model thread has ended.
    #[error("the model thread has stopped")]
    Stopped,
}

impl WorkerHandle {
    /// Starts the model thread. `repaint` wakes the UI after each event.
    pub fn spawn(
        cache_dir: Option<PathBuf>,
        device: DeviceChoice,
        repaint: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let (jobs, job_rx) = sync_channel::<Job>(8);
        let (event_tx, events) = sync_channel::<Event>(256);
        let cancel = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            out: Outbox {
                tx: event_tx,
                repaint,
            },
            cancel: cancel.clone(),
            pause: pause.clone(),
            cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
            device,
            model: None,
            gallery: None,
            gallery_root: None,
            compare: None,
        };
        let thread = std::thread::Builder::new()
            .name("agff-model".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    worker.cancel.store(false, Ordering::Relaxed);
                    worker.pause.store(false, Ordering::Relaxed);
                    if !worker.run(job) {
                        break;
                    }
                }
            })
            .ok();
        Self {
            jobs,
            events,
            cancel,
            pause,
            thread,
        }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// The next event, if one is waiting.
    pub fn poll(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Asks the running job to stop (Esc).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Pauses or resumes a fine-tune.
    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::Relaxed);
    }

    /// Whether a pause is asked for.
    pub fn is_paused(&self) -> bool {
        self.pause.load(Ordering::Relaxed)
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // The thread ends when the job channel closes; do not wait for a long job.
        drop(self.thread.take());
    }
}

struct Outbox {
    tx: SyncSender<Event>,
    repaint: Arc<dyn Fn() + Send + Sync>,
}

impl Outbox {
    /// Sends an event; false when the UI is gone.
    fn send(&self, event: Event) -> bool {
        let ok = self.tx.send(event).is_ok();
        (self.repaint)();
        ok
    }

    /// Progress may be dropped when the UI lags behind.
    fn progress(&self, job: &'static str, done: usize, total: usize, what: &str) {
        let _ = self.tx.try_send(Event::Progress {
            job,
            done,
            total,
            what: what.to_owned(),
        });
        (self.repaint)();
    }
}

struct Worker {
    out: Outbox,
    cancel: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    cache_dir: PathBuf,
    /// Where models run (cpu unless the user asked for a GPU).
    device: DeviceChoice,
    model: Option<Session>,
    gallery: Option<GalleryEmbeddings>,
    gallery_root: Option<PathBuf>,
    /// The model to compare with, and its embeddings of the same gallery.
    compare: Option<(Session, Option<GalleryEmbeddings>)>,
}

/// Why a job ended without its result.
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Message(String),
}

fn msg(e: impl std::fmt::Display) -> JobError {
    JobError::Message(e.to_string())
}

fn cancelled_or(e: crate::session::SessionError) -> JobError {
    match e {
        crate::session::SessionError::Index(crate::index::IndexError::Cancelled) => {
            JobError::Cancelled
        }
        other => msg(other),
    }
}

struct HubProgress<'a> {
    out: &'a Outbox,
    cancel: &'a AtomicBool,
    name: String,
    total: u64,
    done: u64,
}

impl DownloadProgress for HubProgress<'_> {
    fn file_started(&mut self, name: &str, bytes: Option<u64>) {
        self.name = name.to_owned();
        self.total = bytes.unwrap_or(0);
        self.done = 0;
        self.out
            .progress("load model", 0, self.total as usize, name);
    }
    fn advanced(&mut self, bytes: u64) {
        self.done += bytes;
        self.out.progress(
            "load model",
            self.done as usize,
            self.total as usize,
            &format!("downloading {}", self.name),
        );
    }
    fn file_done(&mut self, _name: &str) {}
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// The query as model input, a text one checked by [`crate::session::read_text_query`]
/// (one that holds nothing fails the job with the reason), and what the user should be
/// told about it (unknown words, dropped characters).
fn query_input(
    backbone: &dyn crate::model::Backbone,
    query: &Query,
) -> Result<(EmbedInput, Vec<String>), JobError> {
    match query {
        Query::Text(t) => {
            let checked = crate::session::read_text_query(backbone, t).map_err(msg)?;
            let warnings = checked.warnings();
            Ok((EmbedInput::text(checked.text), warnings))
        }
        Query::Image(p) => Ok((
            EmbedInput::image(to_rgb8(&open_image(p).map_err(msg)?)),
            Vec::new(),
        )),
    }
}

fn load_rgb(path: &Path) -> Result<RgbImage, JobError> {
    Ok(to_rgb8(&open_image(path).map_err(msg)?))
}

fn fit(image: &RgbImage, side: u32) -> RgbImage {
    if image.width().max(image.height()) <= side {
        image.clone()
    } else {
        thumbnail(image, side)
    }
}

impl Worker {
    /// Runs one job; false when the UI has gone away.
    fn run(&mut self, job: Job) -> bool {
        let name = job.name();
        if !self.out.send(Event::Started(name)) {
            return false;
        }
        let result = match job {
            Job::LoadModel(choice, load) => self.load_model(&choice, load),
            Job::LoadCompare(choice, load) => self.load_compare(choice.as_ref(), load),
            Job::IndexDemo { count, seed } => self.index_demo(count, seed),
            Job::IndexFolder(dir) => self.index_folder(&dir),
            Job::Search {
                query,
                top_k,
                first_stage,
                first_stage_on,
            } => self.search(query, top_k, first_stage, first_stage_on),
            Job::Explain {
                query,
                target,
                runner_up,
                method,
            } => self.explain(query, target, runner_up, method),
            Job::SetPerspectives(set) => self.set_perspectives(set),
            Job::Train {
                data,
                settings,
                heldout,
            } => self.train(data, settings, heldout),
            Job::Pairs { source, method } => self.pairs(&source, method),
            Job::Project {
                slot,
                method,
                query,
            } => self.project(slot, method, query),
        };
        match result {
            Ok(message) => self.out.send(Event::Done { job: name, message }),
            Err(JobError::Cancelled) => self.out.send(Event::Cancelled(name)),
            Err(JobError::Message(message)) => self.out.send(Event::Failed { job: name, message }),
        }
    }

    fn loaded(&self) -> Result<&Session, JobError> {
        self.model
            .as_ref()
            .ok_or_else(|| msg("no model is loaded yet"))
    }

    fn gallery(&self) -> Result<&GalleryEmbeddings, JobError> {
        self.gallery
            .as_ref()
            .ok_or_else(|| msg("open a folder of images first"))
    }

    /// Loads a session for `choice` with the settings, reporting download progress.
    fn load_session(&self, choice: &ModelChoice, load: LoadSettings) -> Result<Session, JobError> {
        let arg = match choice {
            ModelChoice::Demo => "demo",
            ModelChoice::Named(arg) => arg.trim(),
        };
        let mut progress = HubProgress {
            out: &self.out,
            cancel: &self.cancel,
            name: String::new(),
            total: 0,
            done: 0,
        };
        let options = LoadOptions {
            // bf16 on CUDA, f32 elsewhere, as the CLI's default.
            dtype: self.device.default_dtype(),
            device: self.device,
            images: load.images,
            ..LoadOptions::default()
        };
        let mut session = Session::load(arg, &options, &mut progress).map_err(|e| {
            if self.cancel.load(Ordering::Relaxed) {
                JobError::Cancelled
            } else {
                msg(e)
            }
        })?;
        session.set_dim(load.dim).map_err(msg)?;
        Ok(session)
    }

    fn load_model(
        &mut self,
        choice: &ModelChoice,
        load: LoadSettings,
    ) -> Result<Option<String>, JobError> {
        let session = self.load_session(choice, load)?;
        let perspectives = session.perspectives.clone();
        let name = session.backbone.identity().name.clone();
        let preprocess = session.backbone.identity().preprocess.clone();
        let dim = session.dim();
        self.model = Some(session);
        // Embeddings of another model mean nothing to this one.
        self.gallery = None;
        self.gallery_root = None;
        if let Some((_, gallery)) = &mut self.compare {
            *gallery = None;
        }
        self.out.send(Event::ModelLoaded {
            name: name.clone(),
            perspectives,
            dim,
        });
        Ok(Some(if preprocess.is_empty() {
            format!("loaded {name}")
        } else {
            format!("loaded {name}; images: {preprocess} pixels")
        }))
    }

    /// Loads (or drops) the model to compare with, and indexes the current gallery with it.
    fn load_compare(
        &mut self,
        choice: Option<&ModelChoice>,
        load: LoadSettings,
    ) -> Result<Option<String>, JobError> {
        let Some(choice) = choice else {
            self.compare = None;
            self.out.send(Event::CompareLoaded(None));
            return Ok(Some("stopped comparing".into()));
        };
        let session = self.load_session(choice, load)?;
        let name = session.backbone.identity().name.clone();
        self.compare = Some((session, None));
        self.index_compare()?;
        self.out.send(Event::CompareLoaded(Some(name.clone())));
        Ok(Some(format!("comparing with {name}")))
    }

    /// Indexes the first model's gallery with the model to compare with, if both are
    /// there: the same images (no second scan of the folder, no second hash of every
    /// file), through the cache.
    fn index_compare(&mut self) -> Result<(), JobError> {
        let (Some((session, gallery)), Some(first), Some(root)) =
            (&mut self.compare, &self.gallery, &self.gallery_root)
        else {
            return Ok(());
        };
        let same = crate::index::Gallery {
            root: root.clone(),
            items: first.items.clone(),
            skipped: Vec::new(),
        };
        let cancel = || self.cancel.load(Ordering::Relaxed);
        let out = &self.out;
        let (embeddings, _) = session
            .index(&same, &self.cache_dir, &cancel, &mut |done, total| {
                out.progress("index", done, total, "embedding (second model)");
            })
            .map_err(cancelled_or)?;
        *gallery = Some(embeddings);
        Ok(())
    }

    fn index_demo(&mut self, count: usize, seed: u64) -> Result<Option<String>, JobError> {
        self.out
            .progress("index", 0, count, "rendering demo scenes (once)");
        let dir = crate::session::demo_gallery(&self.cache_dir, count, seed).map_err(msg)?;
        self.index_folder(&dir)
    }

    fn index_folder(&mut self, dir: &Path) -> Result<Option<String>, JobError> {
        let loaded = self.loaded()?;
        let cancel = || self.cancel.load(Ordering::Relaxed);
        let out = &self.out;
        let (gallery, embeddings, report) = loaded
            .index_folder(
                dir,
                &self.cache_dir,
                &cancel,
                &mut |n| out.progress("index", n, 0, "looking for images"),
                &mut |done, total| out.progress("index", done, total, "embedding"),
            )
            .map_err(cancelled_or)?;
        let mut skipped: Vec<(PathBuf, String)> = gallery
            .skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason.clone()))
            .collect();
        skipped.extend(
            report
                .failed
                .iter()
                .map(|s| (s.path.clone(), s.reason.clone())),
        );
        let info = GalleryInfo {
            root: dir.to_path_buf(),
            images: embeddings.len(),
            embedded: report.embedded,
            from_cache: report.from_cache,
            skipped,
            cache_note: report.cache_unwritable.map(|p| p.to_string()).or_else(|| {
                report
                    .cache_problem
                    .map(|p| format!("{}: {} (rebuilt)", p.path.display(), p.reason))
            }),
            preview: embeddings
                .items
                .iter()
                .take(PREVIEW_ITEMS)
                .filter_map(|item| {
                    let img = load_rgb(&item.path).ok()?;
                    Some((
                        item.path.clone(),
                        Picture::from_image(&fit(&img, THUMB_SIDE)),
                    ))
                })
                .collect(),
        };
        self.gallery = Some(embeddings);
        self.gallery_root = Some(dir.to_path_buf());
        self.index_compare()?;
        self.out.send(Event::Indexed(Box::new(info)));
        Ok(None)
    }

    fn search(
        &mut self,
        query: Query,
        top_k: usize,
        first_stage: Option<usize>,
        first_stage_on: FirstStageOn,
    ) -> Result<Option<String>, JobError> {
        let start = std::time::Instant::now();
        let loaded = self.loaded()?;
        let gallery = self.gallery()?;
        let (input, warnings) = query_input(loaded.backbone.as_ref(), &query)?;
        let comparing = matches!(&self.compare, Some((_, Some(_))));
        let options = SearchOptions {
            // A comparison ranks the whole gallery on both sides for the rank correlation.
            top_k: if comparing { usize::MAX } else { top_k },
            first_stage,
            first_stage_on,
        };
        let (mut hits, _) = loaded.rank(gallery, &input, &options).map_err(msg)?;
        let compare = match &self.compare {
            Some((other, Some(other_gallery))) => {
                let (input, _) = query_input(other.backbone.as_ref(), &query)?;
                let (mut other_hits, _) =
                    other.rank(other_gallery, &input, &options).map_err(msg)?;
                let paths = |g: &GalleryEmbeddings, h: &[Hit]| -> Vec<PathBuf> {
                    h.iter().map(|h| g.items[h.index].path.clone()).collect()
                };
                let agreement = crate::index::rank_agreement(
                    &paths(gallery, &hits),
                    &paths(other_gallery, &other_hits),
                    top_k,
                );
                other_hits.truncate(top_k);
                let items = self.result_items(other_gallery, other_hits, top_k)?;
                Some(CompareColumn {
                    model: other.backbone.identity().name.clone(),
                    items,
                    agreement,
                })
            }
            _ => None,
        };
        hits.truncate(top_k);
        let items = self.result_items(gallery, hits, top_k)?;
        let loaded = self.loaded()?;
        let results = SearchResults {
            query,
            warnings,
            items,
            perspective_names: loaded
                .perspectives
                .perspectives
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            seconds: start.elapsed().as_secs_f64(),
            compare,
        };
        self.out.send(Event::Results(Box::new(results)));
        Ok(None)
    }

    /// The hits with their paths and thumbnails (cancellable between thumbnails).
    fn result_items(
        &self,
        gallery: &GalleryEmbeddings,
        hits: Vec<Hit>,
        top_k: usize,
    ) -> Result<Vec<ResultItem>, JobError> {
        let mut items = Vec::with_capacity(hits.len());
        for (n, hit) in hits.into_iter().enumerate() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(JobError::Cancelled);
            }
            let path = gallery.items[hit.index].path.clone();
            // A file that vanished since indexing still ranks; it just has no picture.
            let thumb = load_rgb(&path)
                .ok()
                .map(|img| Picture::from_image(&fit(&img, THUMB_SIDE)));
            items.push(ResultItem { hit, path, thumb });
            if n % 16 == 15 {
                self.out.progress("search", n + 1, top_k, "thumbnails");
            }
        }
        Ok(items)
    }

    fn explain(
        &mut self,
        query: Query,
        target: usize,
        runner_up: Option<usize>,
        method: Method,
    ) -> Result<Option<String>, JobError> {
        let loaded = self.loaded()?;
        let gallery = self.gallery()?;
        let path_of = |i: usize| {
            gallery
                .items
                .get(i)
                .map(|it| it.path.clone())
                .ok_or_else(|| msg(format!("result {i} is not in the gallery any more")))
        };
        let (input, _) = query_input(loaded.backbone.as_ref(), &query)?;
        let path = path_of(target)?;
        let image = load_rgb(&path)?;
        let explainer = loaded.explainer();
        // The query is embedded once, for the maps and for the runner-up comparison.
        let q = explainer.embed_query(&input).map_err(msg)?;
        let explanation = explainer
            .explain_embedded(&q, &image, method)
            .map_err(|e| msg(format!("{}: {e}", path.display())))?;
        let mut runner_up_map = None;
        let runner_up = match runner_up {
            Some(j) => {
                let rpath = path_of(j)?;
                let rimage = load_rgb(&rpath)?;
                // Both candidates' vectors are in the gallery already (a real model pays
                // seconds per image on a CPU to embed them again).
                let cmp = loaded
                    .compare_stored(&explainer, &q, gallery, target, j)
                    .map_err(msg)?;
                runner_up_map = explainer
                    .explain_embedded(&q, &rimage, method)
                    .map(|e| e.fused_map)
                    .ok();
                Some((j, rpath, Picture::from_image(&fit(&rimage, VIEW_SIDE)), cmp))
            }
            None => None,
        };
        let compare = match &self.compare {
            Some((other, _)) => {
                let (input, _) = query_input(other.backbone.as_ref(), &query)?;
                let explainer = other.explainer();
                let q = explainer.embed_query(&input).map_err(msg)?;
                let e = explainer
                    .explain_embedded(&q, &image, method)
                    .map_err(|e| msg(format!("{} (second model): {e}", path.display())))?;
                Some(CompareMap {
                    model: other.backbone.identity().name.clone(),
                    score: e.scores.fused,
                    map: e.fused_map,
                })
            }
            None => None,
        };
        self.out.send(Event::Explained(Box::new(ExplainResult {
            query,
            target,
            path,
            image: Picture::from_image(&fit(&image, VIEW_SIDE)),
            explanation,
            runner_up,
            runner_up_map,
            compare,
        })));
        Ok(None)
    }

    fn set_perspectives(&mut self, set: PerspectiveSet) -> Result<Option<String>, JobError> {
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| msg("no model is loaded yet"))?;
        model.set_perspectives(set.clone()).map_err(msg)?;
        self.out.send(Event::PerspectivesSet(set));
        // Re-embed the open gallery: the cache holds every set it has seen, so only
        // perspectives not embedded before cost model time.
        match self.gallery_root.clone() {
            Some(root) => self.index_folder(&root),
            None => Ok(Some("perspectives updated".into())),
        }
    }

    fn ranking(&self, query: &str, after: bool) -> Result<Option<Ranking>, JobError> {
        let (Some(loaded), Some(gallery)) = (self.model.as_ref(), self.gallery.as_ref()) else {
            return Ok(None);
        };
        if query.trim().is_empty() {
            return Ok(None);
        }
        let (hits, _) = loaded
            .rank(
                gallery,
                &EmbedInput::text(query),
                &SearchOptions {
                    top_k: 5,
                    // Exact up to 20,000 images, as the app's searches.
                    first_stage: Some(crate::index::DEFAULT_FIRST_STAGE),
                    first_stage_on: FirstStageOn::Global,
                },
            )
            .map_err(msg)?;
        let top: Vec<(PathBuf, f32)> = hits
            .iter()
            .map(|h| (gallery.items[h.index].path.clone(), h.score))
            .collect();
        let thumbs = top
            .iter()
            .map(|(p, _)| {
                load_rgb(p).map_or_else(
                    |_| Picture::placeholder(),
                    |img| Picture::from_image(&fit(&img, RANKING_THUMB_SIDE)),
                )
            })
            .collect();
        Ok(Some(Ranking {
            after,
            query: query.to_owned(),
            top,
            thumbs,
        }))
    }

    fn train(
        &mut self,
        data: TrainData,
        settings: TrainSettings,
        heldout: Option<String>,
    ) -> Result<Option<String>, JobError> {
        let heldout = heldout.unwrap_or_default();
        if let Some(r) = self.ranking(&heldout, false)? {
            self.out.send(Event::Ranking(Box::new(r)));
        }
        let source = match &data {
            TrainData::Scenes { seed } => DataSource::scenes(*seed),
            TrainData::Folder(dir) => {
                let cancel = || self.cancel.load(Ordering::Relaxed);
                let mut progress = |done, total| {
                    self.out
                        .progress("fine-tune", done, total, "checking the images");
                };
                match crate::train::load_caption_dataset_with(dir, &cancel, &mut progress) {
                    Ok(pairs) => DataSource::Pairs(pairs),
                    Err(crate::train::TrainError::Cancelled) => return Err(JobError::Cancelled),
                    Err(e) => return Err(msg(e)),
                }
            }
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let out_dir = self
            .cache_dir
            .join("runs")
            .join(format!("fine-tune-{stamp}"));
        let control = TrainControl {
            stop: self.cancel.clone(),
            pause: self.pause.clone(),
        };
        let (tx, rx) = sync_channel::<TrainEvent>(64);
        let loaded = self.loaded()?;
        let out = &self.out;
        let summary = std::thread::scope(|scope| {
            // Forward the trainer's events to the UI as they come.
            scope.spawn(move || {
                while let Ok(e) = rx.recv() {
                    if !out.send(Event::Train(Box::new(e))) {
                        break;
                    }
                }
            });
            fine_tune(
                &*loaded.backbone,
                &loaded.perspectives,
                &source,
                &settings,
                &out_dir,
                &control,
                Some(tx),
            )
        })
        .map_err(msg)?;
        // "Stop and save" (and Esc) stop the training through the cancel flag; the trainer
        // has taken that stop and saved its run, which is applied like a finished one. A
        // later Esc cancels the re-embedding.
        self.cancel.store(false, Ordering::Relaxed);
        let message = format!(
            "fine-tune: {} steps, final loss {:.4}; saved in {}",
            summary.steps_done,
            summary.final_loss,
            out_dir.display()
        );
        // The trained fusion and soft prompts take effect for the "after" ranking.
        if let Err(e) = self.apply_fine_tune(&out_dir) {
            return Err(msg(format!("{message}, but applying it failed: {e}")));
        }
        if let Some(r) = self.ranking(&heldout, true)? {
            self.out.send(Event::Ranking(Box::new(r)));
        }
        Ok(Some(message))
    }

    /// Uses the fusion and soft prompts a fine-tune saved from now on, and re-embeds the
    /// gallery with them.
    fn apply_fine_tune(&mut self, dir: &Path) -> Result<(), JobError> {
        self.model
            .as_mut()
            .ok_or_else(|| msg("no model is loaded yet"))?
            .apply_tuned(dir)
            .map_err(msg)?;
        if let Some(root) = self.gallery_root.clone() {
            self.index_folder(&root)?;
        }
        Ok(())
    }

    fn pairs(&mut self, source: &PairsSource, method: Method) -> Result<Option<String>, JobError> {
        let loaded = self.loaded()?;
        // (pattern name, MMVP pattern if known, images, statements)
        type Raw = (String, Option<MmvpPattern>, [RgbImage; 2], [String; 2]);
        let (label, raw): (String, Vec<Raw>) = match source {
            PairsSource::Pmmvp { per_pattern, seed } => {
                let mut raw = Vec::new();
                for pattern in MmvpPattern::ALL {
                    for pair in crate::scenes::pmmvp_pairs(pattern, *per_pattern, *seed) {
                        raw.push((
                            pattern.name().to_owned(),
                            Some(pattern),
                            [pair.a.render(), pair.b.render()],
                            pair.statements.clone(),
                        ));
                    }
                }
                (
                    format!("P-MMVP, {per_pattern} pairs per pattern, seed {seed}"),
                    raw,
                )
            }
            PairsSource::Folder(dir) => {
                let items = crate::scenes::read_mmvp_dir(dir).map_err(msg)?;
                let mut raw = Vec::new();
                for item in items {
                    let images = [load_rgb(&item.images[0])?, load_rgb(&item.images[1])?];
                    raw.push((
                        item.type_name.clone(),
                        item.pattern,
                        images,
                        item.statements,
                    ));
                }
                (dir.display().to_string(), raw)
            }
        };
        let total = raw.len();
        let mut pairs = Vec::with_capacity(total);
        let mut tally: Vec<crate::scenes::MmvpTally> =
            (0..5).map(|_| crate::scenes::MmvpTally::new()).collect();
        for (n, (pattern_name, pattern, images, statements)) in raw.into_iter().enumerate() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(JobError::Cancelled);
            }
            let outcome = loaded
                .pair_outcome(&images, [&statements[0], &statements[1]], method)
                .map_err(msg)?;
            if let Some(p) = pattern {
                for (t, ok) in tally.iter_mut().zip(outcome.correct) {
                    t.add(p, ok);
                }
            }
            let fitted = [fit(&images[0], VIEW_SIDE), fit(&images[1], VIEW_SIDE)];
            let overlays = std::array::from_fn(|k| {
                Picture::from_image(&outcome.maps[k].overlay(
                    &fitted[k],
                    crate::explain::ColorMap::Inferno,
                    0.55,
                ))
            });
            pairs.push(PairView {
                pattern: pattern_name,
                images: [
                    Picture::from_image(&fitted[0]),
                    Picture::from_image(&fitted[1]),
                ],
                overlays,
                statements,
                outcome,
            });
            self.out.progress("pairs", n + 1, total, "scoring pairs");
        }
        let mut summary: Vec<(String, [f64; 5])> = MmvpPattern::ALL
            .iter()
            .filter(|p| tally[0].pairs(**p) > 0)
            .map(|p| {
                let row = std::array::from_fn(|m| tally[m].percent(*p).unwrap_or(0.0));
                (p.name().to_owned(), row)
            })
            .collect();
        if !summary.is_empty() {
            let avg = std::array::from_fn(|m| tally[m].average().unwrap_or(0.0));
            summary.push(("average".into(), avg));
        }
        let n = pairs.len();
        self.out.send(Event::Pairs(Box::new(PairsResult {
            source: label,
            pairs,
            summary,
        })));
        Ok(Some(format!("pairs: {n} scored")))
    }

    fn project(
        &mut self,
        slot: usize,
        method: ProjectionMethod,
        query: Option<Query>,
    ) -> Result<Option<String>, JobError> {
        let loaded = self.loaded()?;
        let gallery = self.gallery()?;
        let input = query
            .as_ref()
            .map(|q| query_input(loaded.backbone.as_ref(), q).map(|(input, _)| input))
            .transpose()?;
        // Embedded once: placed on the map and ranked for the colours.
        let query_vectors = input
            .as_ref()
            .map(|q| loaded.embed_unit(q))
            .transpose()
            .map_err(msg)?;
        let cancel = || self.cancel.load(Ordering::Relaxed);
        self.out.progress("map", 0, 0, "projecting");
        let Some((projection, placed)) = loaded
            .project(gallery, slot, method, query_vectors.as_deref(), &cancel)
            .map_err(msg)?
        else {
            return Err(JobError::Cancelled);
        };
        let scores = match &query_vectors {
            Some(q) => {
                let hits = loaded
                    .rank_embedded(
                        gallery,
                        q,
                        &SearchOptions {
                            top_k: gallery.len(),
                            first_stage: None,
                            first_stage_on: FirstStageOn::Global,
                        },
                    )
                    .map_err(msg)?;
                let mut scores = vec![f32::NAN; gallery.len()];
                for h in hits {
                    if let Some(s) = scores.get_mut(h.index) {
                        *s = h.score;
                    }
                }
                scores
            }
            None => Vec::new(),
        };
        let paths: Vec<PathBuf> = gallery.items.iter().map(|i| i.path.clone()).collect();
        let total = paths.len();
        let mut thumbs = Vec::with_capacity(total);
        for (n, p) in paths.iter().enumerate() {
            if cancel() {
                return Err(JobError::Cancelled);
            }
            let pic = load_rgb(p)
                .map(|img| Picture::from_image(&fit(&img, MAP_THUMB_SIDE)))
                .unwrap_or_else(|_| Picture::placeholder());
            thumbs.push(pic);
            if n % 256 == 255 {
                self.out.progress("map", n + 1, total, "thumbnails");
            }
        }
        let fields = self
            .gallery_root
            .as_deref()
            .and_then(crate::session::scene_metadata)
            .map(|meta| scene_fields(&paths, &meta))
            .unwrap_or_default();
        let slot_name = loaded
            .perspectives
            .perspectives
            .get(slot)
            .map_or_else(|| format!("perspective {slot}"), |p| p.name.clone());
        self.out.send(Event::Map(Box::new(MapResult {
            slot,
            slot_name,
            projection,
            query: placed,
            query_label: query.as_ref().map(Query::label),
            scores,
            paths,
            thumbs,
            fields,
        })));
        Ok(None)
    }
}
