//! The desktop app (eframe on wgpu). It holds no model math: every job goes to the model
//! thread in [`worker`], and this module only draws what comes back.
//!
//! Panels: the top bar (model, gallery, job progress), the query row, the results grid,
//! the inspector (heatmap overlay per perspective/pattern, scores, fusion weights, the
//! runner-up comparison), the fine-tune view and the perspective editor, and a log.

mod heatmap;
pub mod map_view;
pub mod pairs_view;
pub mod train_view;
pub mod views;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::explain::{ColorMap, Method};
use crate::model::PerspectiveSet;
use crate::session::defaults;
use crate::train::TrainSettings;
use worker::{
    Event, ExplainResult, GalleryInfo, Job, ModelChoice, Query, SearchResults, WorkerHandle,
};

pub use heatmap::{OverlayCallback, OverlayData, OverlayRenderer};

/// Scenes in the demo gallery that opens at start-up.
pub const DEMO_GALLERY_SCENES: usize = 300;
/// Seed of the demo gallery (different from the training and P-MMVP seeds).
pub const DEMO_GALLERY_SEED: u64 = 20_261_126;

/// File dialogs, behind a trait so tests can hand the app paths.
pub trait Picker {
    /// Asks for a folder; `None` when the dialog is cancelled.
    fn pick_folder(&mut self) -> Option<PathBuf>;
    /// Asks for an image file; `None` when the dialog is cancelled.
    fn pick_image(&mut self) -> Option<PathBuf>;
}

/// The system's dialogs (rfd).
pub struct SystemPicker;

impl Picker for SystemPicker {
    fn pick_folder(&mut self) -> Option<PathBuf> {
        rfd::FileDialog::new().pick_folder()
    }
    fn pick_image(&mut self) -> Option<PathBuf> {
        rfd::FileDialog::new()
            .add_filter(
                "images",
                &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"],
            )
            .pick_file()
    }
}

/// How the app starts.
pub struct AppOptions {
    /// The file dialogs (tests pass a fake).
    pub picker: Box<dyn Picker>,
    /// Embedding cache and demo scenes (default: the user cache folder).
    pub cache_dir: Option<PathBuf>,
    /// Load the demo model and index the demo gallery at once.
    pub autostart: bool,
    /// Scenes in the demo gallery that `autostart` renders and indexes.
    pub demo_scenes: usize,
    /// Read and write settings through eframe's storage.
    pub persist: bool,
    /// Where models run.
    pub device: crate::model::DeviceChoice,
    /// The view the window opens on.
    pub view: Tab,
    /// A text query run as soon as the gallery is indexed (`gui --query`).
    pub query: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            picker: Box::new(SystemPicker),
            cache_dir: None,
            autostart: true,
            demo_scenes: DEMO_GALLERY_SCENES,
            persist: true,
            device: crate::model::DeviceChoice::Cpu,
            view: Tab::Search,
            query: None,
        }
    }
}

/// What persists between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Empty: the demo model.
    pub model: String,
    /// The folder opened last.
    pub last_folder: Option<PathBuf>,
    /// Results per search (at least 1).
    pub top_k: usize,
    /// Candidates the search's first stage keeps (at least 10).
    pub first_stage: usize,
    /// Rank the first stage by all matched perspectives instead of the global view.
    pub first_stage_matched: bool,
    /// The heatmaps' colour map.
    pub colormap: ColorMap,
    /// The heatmap's opacity over the image, 0 to 1.
    pub opacity: f32,
    /// The heatmap method's name (read with [`Settings::method`]).
    pub method: String,
    /// Fine-tune: EGA strength α (0: plain InfoNCE).
    pub alpha: f64,
    /// Fine-tune: InfoNCE temperature τ.
    pub tau: f64,
    /// Fine-tune: peak learning rate.
    pub lr: f64,
    /// Fine-tune: optimisation steps (at least 1).
    pub steps: u64,
    /// Fine-tune: pairs per step (at least 2).
    pub batch: usize,
    /// Fine-tune: train the soft prompts.
    pub train_soft: bool,
    /// Fine-tune: train the fusion θ, ρ.
    pub train_fusion: bool,
    /// Fine-tune: a folder of captioned images or a JSONL, used when the view's data
    /// choice is the folder.
    pub train_folder: String,
    /// Fine-tune: a query whose ranking is shown before and after the run (empty:
    /// none).
    pub heldout: String,
    /// How a Qwen3-VL model resizes images: empty (the model's default), `embedder` or
    /// `processor` (the CLI's `--preprocess`); applied at the next load.
    pub preprocess: String,
    /// Most pixels an image is resized to (0: the profile's; the CLI's `--max-pixels`).
    pub max_pixels: usize,
    /// Matryoshka dimensions of the embeddings (0: all; the CLI's `--dim`).
    pub dim: usize,
}

impl Settings {
    /// How to load a model: image preprocessing and Matryoshka dimensions.
    pub fn load_settings(&self) -> worker::LoadSettings {
        use crate::model::loader::ProfileKind;
        worker::LoadSettings {
            images: crate::model::loader::ImageOptions {
                profile: match self.preprocess.as_str() {
                    "embedder" => Some(ProfileKind::Embedder),
                    "processor" => Some(ProfileKind::Processor),
                    _ => None,
                },
                min_pixels: None,
                max_pixels: (self.max_pixels > 0).then_some(self.max_pixels),
            },
            dim: (self.dim > 0).then_some(self.dim),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            last_folder: None,
            top_k: 40,
            // Exact up to 20,000 images; the first stage only cuts larger galleries.
            first_stage: crate::index::DEFAULT_FIRST_STAGE,
            first_stage_matched: false,
            colormap: ColorMap::Inferno,
            opacity: 0.55,
            method: Method::Attribution.name().into(),
            alpha: defaults::EGA_ALPHA,
            tau: defaults::FINE_TUNE_TAU,
            lr: defaults::LR,
            steps: defaults::FINE_TUNE_STEPS,
            batch: defaults::FINE_TUNE_BATCH,
            train_soft: true,
            train_fusion: true,
            train_folder: String::new(),
            heldout: "a red circle".into(),
            preprocess: String::new(),
            max_pixels: 0,
            dim: 0,
        }
    }
}

impl Settings {
    /// The heatmap method; attribution when the stored name is unknown.
    pub fn method(&self) -> Method {
        Method::parse(&self.method).unwrap_or(Method::Attribution)
    }
}

/// Which main view is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Tab {
    /// The gallery, the query row, the results and the inspector.
    #[default]
    Search,
    /// MMVP-style pairs scored by the fused score and each similarity.
    Pairs,
    /// The gallery's embedding space in 2-D.
    Map,
    /// Fine-tuning with InfoNCE and EGA.
    #[value(name = "fine-tune")]
    FineTune,
    /// The perspective editor.
    Perspectives,
}

impl Tab {
    /// Every view, in tab order (Ctrl+1… selects them).
    pub const ALL: [Tab; 5] = [
        Tab::Search,
        Tab::Pairs,
        Tab::Map,
        Tab::FineTune,
        Tab::Perspectives,
    ];

    /// The tab's label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Search => "Search",
            Tab::Pairs => "Pairs",
            Tab::Map => "Map",
            Tab::FineTune => "Fine-tune",
            Tab::Perspectives => "Perspectives",
        }
    }
}

/// The keyboard shortcuts the help overlay lists (key, what it does).
pub const SHORTCUTS: [(&str, &str); 8] = [
    ("Enter", "search with the query typed"),
    ("arrow keys", "move the selection in the results"),
    (
        "Esc",
        "cancel the running job (indexing, search, training, projection)",
    ),
    (
        "Ctrl+1 … Ctrl+5",
        "Search, Pairs, Map, Fine-tune, Perspectives",
    ),
    ("Ctrl+M", "show or hide the heatmap over the image"),
    ("F1 or Ctrl+H", "show or hide this help"),
    ("drag / scroll", "pan and zoom the embedding map"),
    ("click", "a result or a map point: inspect it"),
];

/// One line of the log panel.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// An error or warning (drawn in the warning colour).
    pub error: bool,
    /// The line.
    pub text: String,
}

/// The job the top bar shows.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The job's name ([`Job::name`]).
    pub job: &'static str,
    /// Units done.
    pub done: usize,
    /// Units in all (0: not known; the bar animates).
    pub total: usize,
    /// What the job is doing now.
    pub what: String,
}

/// The app's state. Everything here is plain data from the worker, plus GPU handles.
pub struct LensApp {
    /// What persists between runs.
    pub settings: Settings,
    /// The view shown.
    pub tab: Tab,
    /// The query row's text.
    pub query_text: String,
    /// An image query; when set, searches use it instead of the text.
    pub query_image: Option<PathBuf>,
    /// The loaded model's name (`None` until one loads).
    pub model_name: Option<String>,
    /// The top bar's model field: empty or `demo`, a folder or a Hub repo id.
    pub model_field: String,
    /// The compare menu's field: a second model to rank the same gallery with.
    pub compare_field: String,
    /// The second model's name while comparing (`None`: not comparing).
    pub compare_name: Option<String>,
    /// The perspectives the model thread uses now.
    pub perspectives: PerspectiveSet,
    /// The perspective editor's copy, sent with [`Job::SetPerspectives`].
    pub edited_perspectives: PerspectiveSet,
    /// The indexed gallery (`None` until one is indexed, and after a model loads).
    pub gallery: Option<GalleryInfo>,
    /// The latest search's results.
    pub results: Option<views::ResultsView>,
    /// Rank of the selected result.
    pub selected: Option<usize>,
    /// The inspector's data for the selected result or map point.
    pub inspector: Option<views::InspectorView>,
    /// Which map the inspector shows: "fused", a perspective name or a pattern name.
    pub map_choice: String,
    /// Whether the heatmap is drawn over the image (Ctrl+M).
    pub show_map: bool,
    /// The fine-tune view's state.
    pub training: train_view::TrainView,
    /// The pairs view's scored pairs.
    pub pairs: Option<pairs_view::PairsView>,
    /// P-MMVP pairs generated per pattern.
    pub pairs_per_pattern: usize,
    /// The embedding map and its settings.
    pub map: Option<map_view::MapView>,
    /// The perspective whose space the map shows (0: the global view).
    pub map_slot: usize,
    /// PCA or t-SNE.
    pub map_method: crate::index::projection::ProjectionMethod,
    /// Whether the keyboard-shortcut overlay is open.
    pub show_help: bool,
    /// A query to run once the gallery is indexed (`gui --query`).
    pending_query: Option<String>,
    /// The start view's gallery thumbnails.
    pub preview: Vec<(PathBuf, egui::TextureHandle)>,
    /// The log panel's lines, oldest first.
    pub log: Vec<LogLine>,
    /// The latest error, shown in the status line until the next job starts.
    pub status_error: Option<String>,
    /// The running job's progress for the top bar (`None` when idle).
    pub progress: Option<Progress>,
    /// Jobs sent and not finished yet.
    pub in_flight: usize,
    /// An explanation wanted while another was running (only the newest is kept).
    pending_explain: Option<Job>,
    picker: Box<dyn Picker>,
    worker: WorkerHandle,
    gpu_overlay: bool,
    persist: bool,
    overlay_version: u64,
}

impl LensApp {
    /// Builds the app; starts the model thread and, with `autostart`, the demo.
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let settings = if options.persist {
            cc.storage
                .and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY))
                .unwrap_or_default()
        } else {
            Settings::default()
        };
        let gpu_overlay = match cc.wgpu_render_state.as_ref() {
            Some(rs) => {
                OverlayRenderer::install(rs);
                true
            }
            None => false,
        };
        // A user may type or paste any character (an emoji, a script the bundled fonts
        // lack): what no font can draw is drawn as a box, never a panic.
        cc.egui_ctx
            .set_missing_glyph_policy(egui::epaint::text::MissingGlyphPolicy::Tofu);
        let ctx = cc.egui_ctx.clone();
        let worker = WorkerHandle::spawn(
            options.cache_dir.clone(),
            options.device,
            Arc::new(move || ctx.request_repaint()),
        );
        let mut app = Self {
            model_field: settings.model.clone(),
            compare_field: String::new(),
            compare_name: None,
            training: train_view::TrainView::default(),
            settings,
            tab: options.view,
            pairs: None,
            pairs_per_pattern: 3,
            map: None,
            map_slot: 0,
            map_method: crate::index::projection::ProjectionMethod::Pca,
            show_help: false,
            pending_query: options.query.clone(),
            preview: Vec::new(),
            query_text: String::new(),
            query_image: None,
            model_name: None,
            perspectives: PerspectiveSet {
                perspectives: Vec::new(),
            },
            edited_perspectives: PerspectiveSet {
                perspectives: Vec::new(),
            },
            gallery: None,
            results: None,
            selected: None,
            inspector: None,
            map_choice: "fused".into(),
            show_map: true,
            log: Vec::new(),
            status_error: None,
            progress: None,
            in_flight: 0,
            pending_explain: None,
            picker: options.picker,
            worker,
            gpu_overlay,
            persist: options.persist,
            overlay_version: 0,
        };
        if let Some(q) = &options.query {
            app.query_text = q.clone();
        }
        if options.autostart {
            app.submit(Job::LoadModel(
                ModelChoice::Demo,
                app.settings.load_settings(),
            ));
            app.submit(Job::IndexDemo {
                count: options.demo_scenes,
                seed: DEMO_GALLERY_SEED,
            });
            // The pairs and the map need only the model and the gallery: start them too
            // when the window opens on them.
            match options.view {
                Tab::Pairs => app.score_pairs(),
                Tab::Map if options.query.is_none() => map_view::request(&mut app),
                _ => {}
            }
        }
        app
    }

    /// Sends a job to the model thread; a refusal is reported, never waited on.
    pub fn submit(&mut self, job: Job) {
        let name = job.name();
        match self.worker.submit(job) {
            Ok(()) => self.in_flight += 1,
            Err(e) => self.error(format!("{name}: {e}")),
        }
    }

    /// Adds a line to the log.
    pub fn info(&mut self, text: impl Into<String>) {
        self.log.push(LogLine {
            error: false,
            text: text.into(),
        });
    }

    /// Adds an error to the log and shows it in the status line.
    pub fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.status_error = Some(text.clone());
        self.log.push(LogLine { error: true, text });
    }

    /// True while any job runs or waits.
    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    fn next_overlay_version(&mut self) -> u64 {
        self.overlay_version += 1;
        self.overlay_version
    }

    /// Scores the generated P-MMVP pairs for the pairs view.
    pub fn score_pairs(&mut self) {
        self.submit(Job::Pairs {
            source: worker::PairsSource::Pmmvp {
                per_pattern: self.pairs_per_pattern,
                seed: crate::scenes::eval::PMMVP_SEED,
            },
            method: self.settings.method(),
        });
    }

    /// The query of the last search, else the text typed in the query row.
    pub fn current_query(&self) -> Option<Query> {
        self.results
            .as_ref()
            .map(|r| r.results.query.clone())
            .or_else(|| {
                let t = self.query_text.trim();
                (!t.is_empty()).then(|| Query::Text(t.to_owned()))
            })
    }

    /// Inspects gallery item `index` (a point of the map) for the current query; without
    /// a query, says what to do.
    pub fn inspect_gallery_item(&mut self, index: usize) {
        let Some(query) = self.current_query() else {
            self.info("type a query (Search view) to see why a point scores as it does");
            return;
        };
        self.selected = None;
        let job = Job::Explain {
            query,
            target: index,
            runner_up: None,
            method: self.settings.method(),
        };
        if self.in_flight > 0 {
            self.pending_explain = Some(job);
        } else {
            self.submit(job);
        }
    }

    /// Runs the current query.
    pub fn search(&mut self) {
        let query = match &self.query_image {
            Some(p) => Query::Image(p.clone()),
            None => {
                if self.query_text.trim().is_empty() {
                    self.error("type a query first");
                    return;
                }
                Query::Text(self.query_text.trim().to_owned())
            }
        };
        self.submit(Job::Search {
            query,
            top_k: self.settings.top_k.max(1),
            first_stage: Some(self.settings.first_stage.max(10)),
            first_stage_on: if self.settings.first_stage_matched {
                crate::index::FirstStageOn::Matched
            } else {
                crate::index::FirstStageOn::Global
            },
        });
    }

    /// Asks for the inspector's data for result `rank` (coalesced while one runs).
    pub fn select(&mut self, rank: usize) {
        let Some(results) = &self.results else {
            return;
        };
        let Some(item) = results.results.items.get(rank) else {
            return;
        };
        self.selected = Some(rank);
        let job = Job::Explain {
            query: results.results.query.clone(),
            target: item.hit.index,
            runner_up: results
                .results
                .items
                .get(if rank == 0 { 1 } else { 0 })
                .map(|r| r.hit.index),
            method: self.settings.method(),
        };
        if self
            .inspector
            .as_ref()
            .is_some_and(|i| i.loading_for == Some(rank))
        {
            return;
        }
        if self.in_flight > 0 {
            self.pending_explain = Some(job);
        } else {
            self.submit(job);
        }
        if let Some(ins) = &mut self.inspector {
            ins.loading_for = Some(rank);
        }
    }

    /// Drains the worker's events (called every frame, never blocks).
    pub fn handle_events(&mut self, ctx: &egui::Context) {
        while let Some(event) = self.worker.poll() {
            self.handle(ctx, event);
        }
        if self.in_flight == 0
            && let Some(job) = self.pending_explain.take()
        {
            self.submit(job);
        }
        if self.training.running {
            // Step reports arrive without a wake-up when the channel is busy.
            ctx.request_repaint_after(std::time::Duration::from_millis(200));
        }
    }

    fn finish_job(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.progress = None;
        }
    }

    fn handle(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::Started(job) => {
                self.status_error = None;
                self.progress = Some(Progress {
                    job,
                    ..Progress::default()
                });
            }
            Event::Progress {
                job,
                done,
                total,
                what,
            } => {
                self.progress = Some(Progress {
                    job,
                    done,
                    total,
                    what,
                });
            }
            Event::ModelLoaded {
                name,
                perspectives,
                dim,
            } => {
                self.info(format!(
                    "model {name}: d = {dim}, {} perspectives",
                    perspectives.perspectives.len()
                ));
                self.model_name = Some(name);
                self.edited_perspectives = perspectives.clone();
                self.perspectives = perspectives;
                self.gallery = None;
                self.results = None;
                self.inspector = None;
                self.selected = None;
            }
            Event::CompareLoaded(name) => {
                match &name {
                    Some(n) => self.info(format!(
                        "comparing with {n}: searches rank with both models, the inspector shows both maps"
                    )),
                    None => self.info("stopped comparing"),
                }
                self.compare_name = name;
                // Results and maps without (or with) the second model are out of date.
                self.results = None;
                self.inspector = None;
                self.selected = None;
            }
            Event::Indexed(info) => {
                self.info(format!(
                    "indexed {} images ({} embedded, {} from the cache, {} skipped)",
                    info.images,
                    info.embedded,
                    info.from_cache,
                    info.skipped.len()
                ));
                for (path, reason) in &info.skipped {
                    self.log.push(LogLine {
                        error: true,
                        text: format!("skipped {}: {reason}", path.display()),
                    });
                }
                if let Some(note) = &info.cache_note {
                    self.error(format!("cache: {note}"));
                }
                self.preview = info
                    .preview
                    .iter()
                    .enumerate()
                    .map(|(i, (path, p))| {
                        let img = egui::ColorImage::from_rgb(
                            [p.width as usize, p.height as usize],
                            &p.rgb,
                        );
                        let tex = ctx.load_texture(
                            format!("preview-{i}"),
                            img,
                            egui::TextureOptions::LINEAR,
                        );
                        (path.clone(), tex)
                    })
                    .collect();
                self.gallery = Some(*info);
                // Re-run the query on the new gallery or perspectives.
                if let Some(q) = self.pending_query.take() {
                    self.query_text = q;
                    self.search();
                    if self.tab == Tab::Map {
                        map_view::request(self);
                    }
                } else if self.results.is_some() {
                    self.search();
                }
            }
            Event::Results(results) => self.show_results(ctx, *results),
            Event::Explained(result) => self.show_explanation(ctx, *result),
            Event::PerspectivesSet(set) => {
                self.edited_perspectives = set.clone();
                self.perspectives = set;
            }
            Event::Ranking(r) => self.training.set_ranking(ctx, *r),
            Event::Pairs(result) => {
                self.info(format!(
                    "pairs: {} ({} pairs)",
                    result.source,
                    result.pairs.len()
                ));
                self.pairs = Some(pairs_view::PairsView::new(ctx, *result));
            }
            Event::Map(result) => {
                let keep = self.map.as_ref().map(|m| m.colour_by.clone());
                let mut view = map_view::MapView::new(*result);
                if let Some(c) = keep {
                    view.colour_by = c;
                }
                self.map = Some(view);
            }
            Event::Train(e) => self.training.handle(ctx, *e),
            Event::Done { job, message } => {
                if job == "fine-tune" {
                    self.training.running = false;
                }
                if let Some(m) = message {
                    self.info(m);
                }
                self.finish_job();
            }
            Event::Failed { job, message } => {
                if job == "fine-tune" {
                    self.training.running = false;
                }
                if job == "explain"
                    && let Some(ins) = &mut self.inspector
                {
                    ins.loading_for = None;
                }
                self.error(format!("{job} failed: {message}"));
                self.finish_job();
            }
            Event::Cancelled(job) => {
                if job == "fine-tune" {
                    self.training.running = false;
                }
                self.info(format!("{job}: cancelled"));
                self.finish_job();
            }
        }
    }

    fn show_results(&mut self, ctx: &egui::Context, results: SearchResults) {
        for warning in &results.warnings {
            self.error(warning.clone());
        }
        self.info(format!(
            "{}: {} results in {:.0} ms",
            results.query.label(),
            results.items.len(),
            results.seconds * 1e3
        ));
        self.results = Some(views::ResultsView::new(ctx, results));
        self.selected = None;
        self.inspector = None;
        if self
            .results
            .as_ref()
            .is_some_and(|r| !r.results.items.is_empty())
        {
            self.select(0);
        }
    }

    fn show_explanation(&mut self, ctx: &egui::Context, result: ExplainResult) {
        let version = self.next_overlay_version();
        let keep_choice = self.map_choice.clone();
        let view = views::InspectorView::new(ctx, result, version);
        if !view.map_names().contains(&keep_choice) {
            self.map_choice = "fused".into();
        }
        // A newer selection may be pending: show this one only if it still matches.
        let current = self
            .selected
            .and_then(|r| self.results.as_ref()?.results.items.get(r))
            .map(|i| i.hit.index);
        if current == Some(view.result.target) || current.is_none() {
            self.inspector = Some(view);
        }
    }

    /// Opens a folder picked in the dialog (or given) and indexes it.
    pub fn open_folder(&mut self, dir: Option<PathBuf>) {
        let dir = dir.or_else(|| self.picker.pick_folder());
        if let Some(dir) = dir {
            self.settings.last_folder = Some(dir.clone());
            self.submit(Job::IndexFolder(dir));
        }
    }

    /// Replaces the file dialogs (tests hand the app paths this way).
    pub fn set_picker(&mut self, picker: Box<dyn Picker>) {
        self.picker = picker;
    }

    /// Asks the picker for a folder.
    pub(crate) fn pick_folder(&mut self) -> Option<PathBuf> {
        self.picker.pick_folder()
    }

    /// Picks an image as the query.
    pub fn pick_query_image(&mut self) {
        if let Some(p) = self.picker.pick_image() {
            self.query_image = Some(p);
            self.search();
        }
    }

    fn load_model(&mut self) {
        let arg = self.model_field.trim().to_owned();
        self.settings.model = arg.clone();
        let choice = if arg.is_empty() || arg == "demo" {
            ModelChoice::Demo
        } else {
            ModelChoice::Named(arg)
        };
        self.submit(Job::LoadModel(choice, self.settings.load_settings()));
    }

    /// Loads the compare field's model as the second model (empty: stop comparing).
    pub fn load_compare(&mut self) {
        let arg = self.compare_field.trim().to_owned();
        let choice = match arg.as_str() {
            "" => None,
            "demo" => Some(ModelChoice::Demo),
            _ => Some(ModelChoice::Named(arg)),
        };
        self.submit(Job::LoadCompare(choice, self.settings.load_settings()));
    }

    fn keyboard(&mut self, ctx: &egui::Context) {
        let typing = ctx.memory(|m| m.focused().is_some());
        let (esc, left, right, up, down) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::Escape),
                i.key_pressed(egui::Key::ArrowLeft),
                i.key_pressed(egui::Key::ArrowRight),
                i.key_pressed(egui::Key::ArrowUp),
                i.key_pressed(egui::Key::ArrowDown),
            )
        });
        if esc && self.busy() {
            self.worker.cancel();
            self.pending_explain = None;
        }
        let (help, toggle_map, tab) = ctx.input(|i| {
            let ctrl = i.modifiers.command;
            let keys = [
                egui::Key::Num1,
                egui::Key::Num2,
                egui::Key::Num3,
                egui::Key::Num4,
                egui::Key::Num5,
            ];
            (
                i.key_pressed(egui::Key::F1) || (ctrl && i.key_pressed(egui::Key::H)),
                ctrl && i.key_pressed(egui::Key::M),
                keys.iter()
                    .position(|k| ctrl && i.key_pressed(*k))
                    .map(|n| Tab::ALL[n]),
            )
        });
        if help {
            self.show_help = !self.show_help;
        }
        if toggle_map {
            self.show_map = !self.show_map;
        }
        if let Some(t) = tab {
            self.tab = t;
        }
        if typing || self.tab != Tab::Search {
            return;
        }
        let Some(n) = self.results.as_ref().map(|r| r.results.items.len()) else {
            return;
        };
        if n == 0 {
            return;
        }
        let cols = self.results.as_ref().map_or(1, |r| r.columns.max(1));
        let cur = self.selected.unwrap_or(0) as isize;
        let step = match (left, right, up, down) {
            (true, ..) => -1,
            (_, true, ..) => 1,
            (_, _, true, _) => -(cols as isize),
            (.., true) => cols as isize,
            _ => 0,
        };
        if step != 0 {
            let next = (cur + step).clamp(0, n as isize - 1) as usize;
            if Some(next) != self.selected {
                self.select(next);
            }
        }
    }

    /// A dropped image becomes the query; a dropped folder is indexed.
    fn dropped_files(&mut self, ctx: &egui::Context) {
        let (dropped, hovering) = ctx.input(|i| {
            (
                i.raw
                    .dropped_files
                    .iter()
                    .map(|f| f.path().to_path_buf())
                    .find(|p| !p.as_os_str().is_empty()),
                !i.raw.hovered_files.is_empty(),
            )
        });
        if hovering {
            let screen = ctx.content_rect();
            egui::Area::new(egui::Id::unique("agff-drop-hint"))
                .fixed_pos(screen.center() - egui::vec2(200.0, 20.0))
                .show(ctx, |ui| {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.heading("Drop an image to search with it, or a folder to index it");
                    });
                });
        }
        if let Some(path) = dropped {
            if path.is_dir() {
                self.open_folder(Some(path));
            } else {
                self.tab = Tab::Search;
                self.query_image = Some(path);
                self.search();
            }
        }
    }

    /// Draws the whole window (eframe's `ui` and the tests call this).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.handle_events(&ctx);
        self.keyboard(&ctx);
        self.dropped_files(&ctx);
        if self.show_help {
            self.help_overlay(&ctx);
        }
        egui::Panel::top("agff-top").show(ui, |ui| self.top_bar(ui));
        egui::Panel::bottom("agff-log")
            .resizable(true)
            .default_size(90.0)
            .show(ui, |ui| self.log_panel(ui));
        match self.tab {
            Tab::Search => {
                let max = (ui.available_width() * 0.6).max(300.0);
                egui::Panel::right("agff-inspector")
                    .resizable(true)
                    .default_size(520.0)
                    .max_size(max)
                    .show(ui, |ui| views::inspector(self, ui));
                egui::CentralPanel::default_margins().show(ui, |ui| views::search_view(self, ui));
            }
            Tab::Pairs => {
                egui::CentralPanel::default_margins().show(ui, |ui| pairs_view::show(self, ui));
            }
            Tab::Map => {
                egui::CentralPanel::default_margins().show(ui, |ui| map_view::show(self, ui));
            }
            Tab::FineTune => {
                egui::CentralPanel::default_margins().show(ui, |ui| train_view::show(self, ui));
            }
            Tab::Perspectives => {
                egui::CentralPanel::default_margins()
                    .show(ui, |ui| views::perspectives_view(self, ui));
            }
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("agff-lens");
            ui.separator();
            for tab in Tab::ALL {
                ui.selectable_value(&mut self.tab, tab, tab.label());
            }
            ui.separator();
            ui.label("Model:");
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.model_field)
                    .hint_text("demo, a folder or owner/name")
                    .desired_width(220.0),
            );
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Load").clicked() || enter {
                self.load_model();
            }
            ui.menu_button("images", |ui| {
                ui.label("How the model is loaded (at the next Load):");
                for (value, label) in [
                    ("", "the model's default"),
                    (
                        "embedder",
                        "embedder: as Qwen3-VL-Embedding (Pillow, ≤ 1,843,200 px)",
                    ),
                    ("processor", "processor: as transformers' image processor"),
                ] {
                    ui.radio_value(&mut self.settings.preprocess, value.to_owned(), label);
                }
                ui.add(
                    egui::DragValue::new(&mut self.settings.max_pixels)
                        .range(0..=50_000_000)
                        .prefix("at most ")
                        .suffix(" pixels (0: the profile's)"),
                );
                ui.add(
                    egui::DragValue::new(&mut self.settings.dim)
                        .range(0..=8192)
                        .prefix("embedding dims: ")
                        .suffix(" (0: all; Matryoshka prefix)"),
                );
            });
            ui.menu_button("compare", |ui| {
                ui.label("Rank the same gallery with a second model, side by side:");
                ui.add(
                    egui::TextEdit::singleline(&mut self.compare_field)
                        .hint_text("demo, a folder or owner/name")
                        .desired_width(220.0)
                        .id_salt("compare-model"),
                );
                ui.horizontal(|ui| {
                    if ui.button("Compare").clicked() {
                        self.load_compare();
                        ui.close();
                    }
                    if self.compare_name.is_some() && ui.button("Stop comparing").clicked() {
                        self.compare_field.clear();
                        self.load_compare();
                        ui.close();
                    }
                });
            });
            ui.separator();
            if ui.button("Open folder…").clicked() {
                self.open_folder(None);
            }
            if ui.button("Demo scenes").clicked() {
                self.submit(Job::IndexDemo {
                    count: DEMO_GALLERY_SCENES,
                    seed: DEMO_GALLERY_SEED,
                });
            }
            if ui
                .button("?")
                .on_hover_text("keyboard shortcuts (F1)")
                .clicked()
            {
                self.show_help = !self.show_help;
            }
        });
        ui.horizontal(|ui| {
            let model = match (&self.model_name, &self.compare_name) {
                (Some(a), Some(b)) => format!("{a} vs {b}"),
                (Some(a), None) => a.clone(),
                (None, _) => "no model".into(),
            };
            let gallery = match &self.gallery {
                Some(g) => format!(
                    "{} images in {} ({} skipped)",
                    g.images,
                    g.root.file_name().map_or_else(
                        || g.root.display().to_string(),
                        |f| f.to_string_lossy().into()
                    ),
                    g.skipped.len()
                ),
                None => "no gallery".into(),
            };
            ui.label(format!("{model} · {gallery}"));
            if let Some(p) = &self.progress {
                ui.separator();
                let fraction = if p.total > 0 {
                    p.done as f32 / p.total as f32
                } else {
                    0.0
                };
                let text = if p.total > 0 {
                    format!("{}: {} {}/{}", p.job, p.what, p.done, p.total)
                } else if p.done > 0 {
                    format!("{}: {} {}", p.job, p.what, p.done)
                } else {
                    format!("{}…", p.job)
                };
                ui.add(
                    egui::ProgressBar::new(fraction)
                        .desired_width(260.0)
                        .text(text)
                        .animate(p.total == 0),
                );
                if ui.button("Cancel (Esc)").clicked() {
                    self.worker.cancel();
                    self.pending_explain = None;
                }
            }
            if let Some(e) = &self.status_error {
                ui.separator();
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
        });
    }

    /// The keyboard shortcuts, over everything (F1 toggles it).
    fn help_overlay(&mut self, ctx: &egui::Context) {
        let mut open = true;
        egui::Window::new("Keyboard shortcuts")
            .collapsible(false)
            .resizable(false)
            .open(&mut open)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts")
                    .num_columns(2)
                    .striped(true)
                    .show(ui, |ui| {
                        for (key, what) in SHORTCUTS {
                            ui.monospace(key);
                            ui.label(what);
                            ui.end_row();
                        }
                    });
            });
        if !open {
            self.show_help = false;
        }
    }

    fn log_panel(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.strong("Log");
            if ui.small_button("clear").clicked() {
                self.log.clear();
                self.status_error = None;
            }
        });
        egui::ScrollArea::vertical()
            .stick_to_bottom(true)
            .auto_shrink([false, false])
            .show(ui, |ui| {
                for line in &self.log {
                    if line.error {
                        ui.colored_label(ui.visuals().warn_fg_color, &line.text);
                    } else {
                        ui.label(&line.text);
                    }
                }
            });
    }

    pub(crate) fn train_settings(&self) -> TrainSettings {
        let steps = self.settings.steps.max(1);
        TrainSettings {
            batch: self.settings.batch.max(2),
            lr: self.settings.lr,
            alpha: self.settings.alpha,
            tau: self.settings.tau,
            train_soft: self.settings.train_soft,
            train_fusion: self.settings.train_fusion,
            ..defaults::fine_tune(steps)
        }
    }

    pub(crate) fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    pub(crate) fn gpu_overlay(&self) -> bool {
        self.gpu_overlay
    }
}

impl eframe::App for LensApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.persist {
            eframe::set_value(storage, eframe::APP_KEY, &self.settings);
        }
    }
}

/// Opens the app window (the `gui` command).
pub fn run(
    cache_dir: Option<PathBuf>,
    device: crate::model::DeviceChoice,
    view: Tab,
    query: Option<String>,
) -> Result<(), eframe::Error> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("agff-lens")
            .with_inner_size([1400.0, 900.0]),
        ..Default::default()
    };
    eframe::run_native(
        "agff-lens",
        options,
        Box::new(move |cc| {
            Ok(Box::new(LensApp::new(
                cc,
                AppOptions {
                    cache_dir,
                    device,
                    view,
                    query,
                    ..AppOptions::default()
                },
            )))
        }),
    )
}
