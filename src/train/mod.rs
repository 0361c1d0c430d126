//! Training with the AGFF fused InfoNCE and EGA (method.md §4–§6).
//!
//! - [`train_demo`] trains the demo MLLM from scratch on procedural scenes (every weight,
//!   the soft prompts and the fusion θ, ρ);
//! - [`fine_tune`] adapts an existing backbone on captioned images: its perspectives' soft
//!   prompts and the fusion (the backbone stays frozen; neither backbone has LoRA
//!   adapters yet, so none are trained).
//!
//! Both stream [`TrainEvent`]s over a bounded channel (the app draws them live), obey a
//! [`TrainControl`] (pause, stop), write safetensors checkpoints, resume from them, and
//! stop with a clear error on a non-finite loss or gradient, keeping the last good
//! checkpoint.

mod data;
pub mod heads;
mod optim;
mod steplog;
pub mod text;
pub mod vision;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::agff::{
    AgffError, EgaConfig, Fusion, FusionInit, PerspectiveEmbeddings, SimilarityConfig,
    agff_similarities, ega_objective,
};
use crate::model::demo::{DemoConfig, DemoModel};
use crate::model::{Backbone, EmbedInput, EmbedOptions, ModelError, PerspectiveSet};
use crate::util::rng::derive_seed;

pub use data::{
    CaptionPair, DEFAULT_QUERY_SHARE, DataSource, load_caption_dataset, load_caption_dataset_with,
};
pub use optim::AdamW;
pub use steplog::STEPS_FILE;
use steplog::StepLog;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Creating the output folder, or reading or writing a file in it or a data set,
    /// failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The training data is unusable: no such path, fewer than 2 captioned images, a
    /// JSONL line that is not JSON or lacks `image`/`text`, an image that cannot be
    /// decoded, or a pre-training batch without labels. The message names the file.
    #[error("{0}")]
    Data(String),
    /// A checkpoint or a fine-tune's output cannot be written or read back: nothing to
    /// resume (`--resume` without a `trainer.json`), a state, optimiser, fusion or soft
    /// prompt file that does not parse, a missing tensor or one of the wrong shape, θ not
    /// finite or β not positive.
    #[error("{0}")]
    Checkpoint(String),
    /// The loss, the gradient norm or a parameter after the update is not finite; the
    /// run stops, keeping the last good checkpoint.
    #[error(
        "training diverged at step {step}: {what} is not finite; {kept}. Lower the learning rate or α and resume"
    )]
    Diverged {
        /// The step (1-based) that diverged.
        step: u64,
        /// What is not finite (the loss, the gradient norm, a parameter).
        what: String,
        /// Where the last good checkpoint is (or that nothing was saved).
        kept: String,
    },
    /// The caller cancelled before training began (while the data set's images were
    /// being checked); nothing was written.
    #[error("cancelled")]
    Cancelled,
    /// A setting is out of range: batch below 2, learning rate or τ not positive, α
    /// negative, an invalid perspective set, or nothing to train.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Loading, running or saving the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The AGFF similarities, fusion or loss failed (a non-finite loss becomes
    /// [`TrainError::Diverged`] instead).
    #[error(transparent)]
    Agff(#[from] AgffError),
    /// A candle tensor operation failed (the backward pass, an optimiser update, say).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Settings shared by both trainers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Optimisation steps of the run; the learning-rate schedule spans them.
    pub steps: u64,
    /// (query, positive) pairs per step.
    pub batch: usize,
    /// Peak learning rate of AdamW (see [`TrainSettings::lr_at`]).
    pub lr: f64,
    /// Steps of the linear learning-rate warm-up.
    pub warmup: u64,
    /// AdamW's decoupled weight decay of the demo recipe, on its weight matrices only (not
    /// norms, biases, position tables, soft prompts or the fusion); a fine-tune uses none.
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// EGA strength α (method.md §5; 0: plain InfoNCE).
    pub alpha: f64,
    /// The InfoNCE temperature τ (method.md §4); also EGA's hardness temperature.
    pub tau: f64,
    /// Seed of the initial weights and of the data stream.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Fine-grained perspectives of the demo recipe (0: a global-only model).
    pub k: usize,
    /// Train the fusion θ, ρ (else they stay at their initial values).
    pub train_fusion: bool,
    /// Train soft prompts (fine-tune).
    pub train_soft: bool,
    /// Stop after this many seconds of training (0: no limit); the budget of the ablation.
    pub time_budget_s: u64,
    /// Train a very small demo model (tests, quick classroom runs) instead of the default
    /// shape.
    #[serde(default)]
    pub tiny: bool,
    /// Stop (with a checkpoint) once this step is done, as an interrupted run would
    /// (0: run to `steps`). The schedule still spans `steps`.
    #[serde(default)]
    pub stop_at: u64,
    /// Steps of the vision tower's dense pre-training before the contrastive stage of the
    /// demo recipe (0: none, the tower learns from captions alone); see [`vision`].
    #[serde(default)]
    pub vision_steps: u64,
    /// Seconds the pre-training may take at most (0: no limit).
    #[serde(default)]
    pub vision_budget_s: u64,
    /// Steps of the language model's text pre-training on the text heads' tasks, after the
    /// tower's and before the contrastive stage of the demo recipe (0: none); see [`text`].
    #[serde(default)]
    pub text_steps: u64,
    /// Give the text heads two more tasks ([`heads::text_tasks_with`]): the fill and
    /// colour of the first object a text names, and its viewpoint, on the `attributes`
    /// and `spatial` text embeddings.
    #[serde(default)]
    pub more_text_tasks: bool,
    /// Give the text heads a task asking the first size a text names ("small", "large"),
    /// on the `attributes` text embedding ([`heads::ExtraTextTasks::size`]).
    #[serde(default)]
    pub size_text_task: bool,
    /// The global text embedding's head answers the fill-and-colour task too, and the
    /// size task asks the size with its colour there and on `attributes`
    /// ([`heads::ExtraTextTasks::on_global`]).
    #[serde(default)]
    pub text_tasks_on_global: bool,
    /// Give the text heads a task asking the number and colour of the first object a text
    /// names, on `count` ([`heads::ExtraTextTasks::number`]).
    #[serde(default)]
    pub number_text_task: bool,
    /// Keep the (pre-trained) tower fixed in the contrastive stage, as LiT does.
    #[serde(default)]
    pub freeze_vision: bool,
    /// Factor on the learning rate of the tower's parameters when it is trained on in the
    /// contrastive stage (`freeze_vision` false): a pre-trained tower moves slower than
    /// the parts learnt from scratch.
    #[serde(default = "default_vision_lr_scale")]
    pub vision_lr_scale: f64,
    /// Share (0–1) of the demo recipe's random scenes that get a short object query
    /// instead of their global caption (see [`DataSource::Scenes`]).
    #[serde(default = "default_query_share")]
    pub query_share: f32,
    /// Give a new demo model's visual tokens 2-D grid positions
    /// ([`DemoConfig::visual_position_2d`]).
    #[serde(default)]
    pub visual_position_2d: bool,
    /// Weight of the scene heads' auxiliary loss in the contrastive stage of the demo recipe
    /// ([`heads`]; 0: none). Only batches of procedural scenes have targets.
    #[serde(default)]
    pub scene_heads: f64,
    /// Weight of the text heads' auxiliary loss in the contrastive stage of the demo recipe
    /// ([`heads::text_tasks`]: which object a text puts left, right, above or below; 0:
    /// none).
    #[serde(default)]
    pub text_heads: f64,
    /// Scale of the scene (image) heads as cosine classifiers
    /// ([`heads::SceneHeads::cosine`]; 0: linear heads, as runs before this setting).
    #[serde(default)]
    pub head_scale: f64,
    /// Scale of the text heads as cosine classifiers (0: linear). Separate from
    /// `head_scale`: a run with both cosine separated the statements of orientation and
    /// text pairs but cost the fine views what the linear image heads gave them (README).
    #[serde(default)]
    pub text_head_scale: f64,
}

fn default_vision_lr_scale() -> f64 {
    1.0
}

fn default_query_share() -> f32 {
    DEFAULT_QUERY_SHARE
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch: 32,
            lr: 2e-3,
            warmup: 100,
            weight_decay: 0.05,
            clip: 1.0,
            alpha: 1.0,
            tau: 0.02,
            seed: 0,
            checkpoint_every: 100,
            k: 4,
            train_fusion: true,
            train_soft: true,
            time_budget_s: 0,
            tiny: false,
            stop_at: 0,
            vision_steps: 0,
            vision_budget_s: 0,
            text_steps: 0,
            more_text_tasks: false,
            size_text_task: false,
            text_tasks_on_global: false,
            number_text_task: false,
            freeze_vision: true,
            vision_lr_scale: 0.1,
            query_share: DEFAULT_QUERY_SHARE,
            visual_position_2d: false,
            scene_heads: 0.0,
            text_heads: 0.0,
            head_scale: 0.0,
            text_head_scale: 0.0,
        }
    }
}

impl TrainSettings {
    /// The extra text tasks these settings turn on (`more_text_tasks`, `size_text_task`).
    pub fn extra_text_tasks(&self) -> heads::ExtraTextTasks {
        heads::ExtraTextTasks {
            fill_colour_viewpoint: self.more_text_tasks,
            size: self.size_text_task,
            on_global: self.text_tasks_on_global,
            number: self.number_text_task,
        }
    }

    fn validate(&self) -> Result<(), TrainError> {
        if self.steps == 0 {
            return Err(TrainError::Config(
                "steps must be at least 1 (0 would write an untrained run)".into(),
            ));
        }
        if self.batch < 2 {
            return Err(TrainError::Config(
                "batch must be at least 2 (in-batch negatives)".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::Config(format!(
                "learning rate must be positive, got {}",
                self.lr
            )));
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(TrainError::Config(format!(
                "τ must be positive, got {}",
                self.tau
            )));
        }
        if !(self.vision_lr_scale.is_finite() && self.vision_lr_scale >= 0.0) {
            return Err(TrainError::Config(format!(
                "the tower's learning-rate scale must be ≥ 0, got {}",
                self.vision_lr_scale
            )));
        }
        for (value, what) in [
            (self.scene_heads, "the scene heads' weight must be ≥ 0"),
            (self.text_heads, "the text heads' weight must be ≥ 0"),
            (
                self.head_scale,
                "the scene heads' scale must be ≥ 0 (0: linear heads)",
            ),
            (
                self.text_head_scale,
                "the text heads' scale must be ≥ 0 (0: linear heads)",
            ),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(TrainError::Config(format!("{what}, got {value}")));
            }
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(TrainError::Config(format!(
                "α must be ≥ 0, got {}",
                self.alpha
            )));
        }
        if self.text_tasks_on_global
            && !(self.more_text_tasks || self.size_text_task || self.number_text_task)
        {
            return Err(TrainError::Config(
                "text tasks on the global head need the tasks themselves \
                 (more text tasks, the size or the number task)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Learning rate at `step` (1-based): linear warm-up, then cosine decay to 10%.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step <= self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// Pause and stop switches the UI flips while a run goes on.
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    /// Set to stop the run before its next step; it saves what it has and ends (a
    /// [`TrainSummary`] with `stopped_early`).
    pub stop: Arc<AtomicBool>,
    /// Set to pause the run before its next step (a [`TrainEvent::Paused`] is sent);
    /// clear it to go on. The vision pre-training does not pause.
    pub pause: Arc<AtomicBool>,
}

impl TrainControl {
    fn wait_if_paused(&self) {
        while self.pause.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One hard negative of a query, as the app shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardNegative {
    /// Candidate index in the batch.
    pub index: usize,
    /// `P_ij`.
    pub prob: f32,
    /// `h_ij = σ((S_ij − S_ii)/τ)`.
    pub hardness: f32,
    /// `1 + α·h_ij`.
    pub amplification: f32,
}

/// One optimisation step, for live display.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps done, this one included (1-based).
    pub step: u64,
    /// Steps of the whole run (of the current stage, see [`TrainEvent::Stage`]).
    pub total_steps: u64,
    /// InfoNCE of the text→image direction.
    pub loss: f64,
    /// Fraction of queries whose positive scored highest (text→image).
    pub accuracy: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Fusion weights w = softmax(θ) (GG, FG, GF, FF) after the step.
    pub similarity_weights: [f32; 4],
    /// Fusion temperature β = exp(ρ) after the step.
    pub beta: f64,
    /// The batch's fused text→image score matrix, row-major `[B, B]`.
    pub similarity: Vec<f32>,
    /// Pairs in the batch, B.
    pub batch: usize,
    /// Per query, its three hardest negatives.
    pub hard_negatives: Vec<Vec<HardNegative>>,
    /// The batch's captions (queries) and, for scene data, their images' indices.
    pub captions: Vec<String>,
    /// Small pictures of the batch's images (same order), for showing hard negatives.
    #[serde(skip)]
    pub thumbnails: Vec<image::RgbImage>,
    /// Wall-clock seconds of the step (making the batch, embedding it, the update).
    pub seconds: f64,
    /// The scene heads' loss and the global head's accuracy, when the run trains them.
    #[serde(default)]
    pub scene_heads: Option<heads::HeadsLoss>,
    /// The text heads' loss and the global text head's accuracy, when the run trains them.
    #[serde(default)]
    pub text_heads: Option<heads::HeadsLoss>,
}

/// What a training run reports while it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A run (or the vision pre-training) starts.
    Started {
        /// Steps of the whole run.
        total_steps: u64,
        /// Steps already done by the checkpoint it resumes (0: a fresh start).
        resumed_from: u64,
    },
    /// An optimisation step is done. Dropped rather than block training when the channel
    /// is full.
    Step(Box<StepReport>),
    /// A checkpoint was written.
    Checkpoint {
        /// Steps done when it was written.
        step: u64,
        /// The folder it is in.
        dir: PathBuf,
    },
    /// The run saw [`TrainControl::pause`] set and waits until it is cleared (or stop is
    /// set).
    Paused,
    /// The run ended, complete or stopped early (not sent when it fails with an error).
    Finished(TrainSummary),
    /// A run of several stages begins one (its steps are counted from 0).
    Stage {
        /// The stage's name (`vision`, `contrastive`).
        name: String,
        /// Steps of the stage.
        total_steps: u64,
    },
    /// A line worth showing as it is (for example the probes' accuracies).
    Note(String),
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps done in all, resumed ones included.
    pub steps_done: u64,
    /// Text→image InfoNCE of the last step (NaN when this call ran no step).
    pub final_loss: f64,
    /// In-batch text→image accuracy of the last step (0 when this call ran no step).
    pub final_accuracy: f64,
    /// Wall-clock seconds of this call's contrastive steps (the vision pre-training not
    /// included).
    pub seconds: f64,
    /// The run stopped before `steps`: stop was set, or (demo recipe) `stop_at` or the
    /// time budget was reached.
    pub stopped_early: bool,
    /// The folder the run wrote into.
    pub out: PathBuf,
}

/// Sends an event without ever blocking training: a full channel drops step reports,
/// never the final ones (those wait briefly).
fn emit(events: &Option<SyncSender<TrainEvent>>, event: TrainEvent) {
    if let Some(tx) = events {
        match event {
            TrainEvent::Step(_) => {
                let _ = tx.try_send(event);
            }
            other => {
                let _ = tx.send(other);
            }
        }
    }
}

/// The loss of one batch: InfoNCE/EGA on the fused score, text→image and image→text.
struct BatchLoss {
    objective: Tensor,
    report: StepReport,
}

fn batch_loss(
    text: &Tensor,
    image: &Tensor,
    fusion: &Fusion,
    settings: &TrainSettings,
) -> Result<BatchLoss, TrainError> {
    let cfg = SimilarityConfig::default();
    let ega = EgaConfig {
        alpha: settings.alpha,
        tau: settings.tau,
    };
    let q = PerspectiveEmbeddings::from_raw(text.clone())?;
    let c = PerspectiveEmbeddings::from_raw(image.clone())?;
    let t2i = fusion.fuse(&agff_similarities(&q, &c, &cfg)?.similarities)?;
    let i2t = fusion.fuse(&agff_similarities(&c, &q, &cfg)?.similarities)?;
    let a = ega_objective(&t2i.scores, &ega)?;
    let b = ega_objective(&i2t.scores, &ega)?;
    let objective = ((&a.objective + &b.objective)? * 0.5)?;

    let s = t2i.scores.detach().to_dtype(DType::F32)?;
    let n = s.dim(0)?;
    let argmax = s.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let accuracy = argmax
        .iter()
        .enumerate()
        .filter(|(i, j)| *i as u32 == **j)
        .count() as f64
        / n as f64;
    let probs = a.probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let hard = a.hardness.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let amp = a.amplification.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let hard_negatives = (0..n)
        .map(|i| {
            let mut negs: Vec<HardNegative> = (0..n)
                .filter(|&j| j != i)
                .map(|j| HardNegative {
                    index: j,
                    prob: probs[i][j],
                    hardness: hard[i][j],
                    amplification: amp[i][j],
                })
                .collect();
            negs.sort_by(|x, y| y.prob.total_cmp(&x.prob));
            negs.truncate(3);
            negs
        })
        .collect();
    Ok(BatchLoss {
        objective,
        report: StepReport {
            step: 0,
            total_steps: settings.steps,
            loss: a.info_nce,
            accuracy,
            lr: 0.0,
            grad_norm: 0.0,
            similarity_weights: fusion.similarity_weights()?,
            beta: fusion.beta()?,
            similarity: s.flatten_all()?.to_vec1::<f32>()?,
            batch: n,
            hard_negatives,
            captions: Vec::new(),
            thumbnails: Vec::new(),
            seconds: 0.0,
            scene_heads: None,
            text_heads: None,
        },
    })
}

/// A run's fresh heads on CPU: its scene heads (`text` false) or its text heads with the
/// extra tasks it turns on, cosine classifiers when its scale for them is positive
/// (`head_scale`, `text_head_scale`). The text stage and the contrastive stage build the
/// text heads alike, so the second can load what the first trained.
///
/// # Errors
/// Allocating the weights; a scale [`heads::SceneHeads::cosine`] refuses.
fn new_heads(
    settings: &TrainSettings,
    perspectives: &PerspectiveSet,
    dim: usize,
    text: bool,
) -> Result<heads::SceneHeads, TrainError> {
    let device = Device::Cpu;
    let (h, scale) = if text {
        let extra = settings.extra_text_tasks();
        let h = heads::SceneHeads::for_text_with(perspectives, dim, &device, extra)?;
        (h, settings.text_head_scale)
    } else {
        (
            heads::SceneHeads::new(perspectives, dim, &device)?,
            settings.head_scale,
        )
    };
    if scale > 0.0 {
        h.cosine(scale, derive_seed(settings.seed, 0x4ead))
    } else {
        Ok(h)
    }
}

/// A batch's raw embeddings `[B, 1+K, d]`, and the scene heads' loss on its images and
/// the text heads' on its texts when the run trains them.
struct Embedded {
    text: Tensor,
    image: Tensor,
    extra: Option<(Tensor, heads::HeadsLoss)>,
    text_extra: Option<(Tensor, heads::HeadsLoss)>,
}

/// One optimisation step on a batch's raw embeddings: the loss, its gradient, divergence
/// checks, clipping and the AdamW update. `step` is the number of steps done before this
/// one; `kept` names the last good checkpoint for the divergence message. Returns the
/// step's report (captions and timing are the caller's).
fn optimise(
    step: u64,
    batch: Embedded,
    fusion: &Fusion,
    optim: &mut AdamW,
    settings: &TrainSettings,
    kept: String,
) -> Result<StepReport, TrainError> {
    let diverged =
        |step: u64, what: String, kept: String| TrainError::Diverged { step, what, kept };
    let Embedded {
        text,
        image,
        extra,
        text_extra,
    } = batch;
    let mut loss = match batch_loss(&text, &image, fusion, settings) {
        Ok(l) => l,
        Err(TrainError::Agff(AgffError::NonFinite(what))) => {
            return Err(diverged(step + 1, what, kept));
        }
        Err(e) => return Err(e),
    };
    let terms = [
        (
            extra,
            settings.scene_heads,
            "scene",
            &mut loss.report.scene_heads,
        ),
        (
            text_extra,
            settings.text_heads,
            "text",
            &mut loss.report.text_heads,
        ),
    ];
    for (term, weight, which, report) in terms {
        let Some((term, scored)) = term else {
            continue;
        };
        if !scored.loss.is_finite() {
            return Err(diverged(step + 1, format!("the {which} heads' loss"), kept));
        }
        loss.objective = (loss.objective + (term * weight)?)?;
        *report = Some(scored);
    }
    let grads = loss.objective.backward()?;
    let norm = optim.grad_norm(&grads)?;
    if !norm.is_finite() {
        return Err(diverged(step + 1, "the gradient norm".into(), kept));
    }
    let step = step + 1;
    let lr = settings.lr_at(step);
    optim.step_clipped(&grads, lr, norm, settings.clip)?;
    if !optim.params_finite()? || !fusion_finite(fusion)? {
        return Err(diverged(step, "a parameter after the update".into(), kept));
    }
    let mut report = loss.report;
    report.step = step;
    report.lr = lr;
    report.grad_norm = norm;
    report.similarity_weights = fusion.similarity_weights()?;
    report.beta = fusion.beta()?;
    Ok(report)
}

/// What a checkpoint folder holds besides the model: where training stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    settings: TrainSettings,
    fusion_theta: [f64; 4],
    fusion_beta: f64,
}

const STATE_FILE: &str = "trainer.json";
const OPTIM_FILE: &str = "optimizer.safetensors";

/// The provenance words of the extra text tasks: "" when none is on.
fn extra_tasks_provenance(extra: heads::ExtraTextTasks) -> String {
    let mut tasks = Vec::new();
    if extra.fill_colour_viewpoint {
        tasks.extend(["fill-and-colour", "viewpoint"]);
    }
    if extra.size {
        tasks.push("size");
    }
    if extra.number {
        tasks.push("number");
    }
    let list = match tasks.as_slice() {
        [] => return String::new(),
        [one] => format!(" with the {one} task"),
        [rest @ .., last] => format!(" with the {} and {last} tasks", rest.join(", ")),
    };
    match (extra.on_global, extra.size) {
        (false, _) => list,
        (true, false) => format!("{list}, also on the global head"),
        (true, true) => format!("{list}, also on the global head (size with colour)"),
    }
}

/// The provenance words of one kind of heads: ", scene heads 1 (cosine, scale 10)", or
/// nothing for a run without them.
fn heads_provenance(kind: &str, weight: f64, scale: f64) -> String {
    match (weight > 0.0, scale > 0.0) {
        (false, _) => String::new(),
        (true, false) => format!(", {kind} heads {weight}"),
        (true, true) => format!(", {kind} heads {weight} (cosine, scale {scale})"),
    }
}

fn fusion_values(fusion: &Fusion) -> Result<([f64; 4], f64), TrainError> {
    let theta = fusion
        .theta()
        .as_tensor()
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let mut t = [0f64; 4];
    t.copy_from_slice(&theta[..4]);
    Ok((t, fusion.beta()?))
}

/// Whether θ and β = exp(ρ) are finite (a finite ρ can still overflow β).
fn fusion_finite(fusion: &Fusion) -> Result<bool, TrainError> {
    let (theta, beta) = fusion_values(fusion)?;
    Ok(theta.iter().all(|t| t.is_finite()) && beta.is_finite() && beta > 0.0)
}

fn emit_checkpoint(events: &Option<SyncSender<TrainEvent>>, step: u64, out: &Path) {
    emit(
        events,
        TrainEvent::Checkpoint {
            step,
            dir: out.to_path_buf(),
        },
    );
}

fn write_state(dir: &Path, state: &TrainerState) -> Result<(), TrainError> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    write(&path, text.as_bytes())
}

/// [`crate::util::write_atomic`] with the trainer's error.
fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::util::write_atomic(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// Named tensors as a safetensors file, written atomically: checkpoints of the optimiser,
/// the scene heads and a fine-tune's soft prompts.
fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let bytes = safetensors::serialize(tensors, None)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    write(path, &bytes)
}

/// The files a fine-tune writes into its output folder; `Session::apply_tuned` (and so
/// `--tuned DIR` and the app) reads them back.
pub mod tuned_files {
    /// The trained soft prompts, `soft.<perspective>` → `[m, d]` (absent when none).
    pub const SOFT_PROMPTS: &str = "soft_prompts.safetensors";
    /// The perspective set the run trained.
    pub const PERSPECTIVES: &str = "perspectives.json";
    /// `{"theta": [4], "beta", "step"}`.
    pub const FUSION: &str = "fusion.json";
}

fn read_state(dir: &Path) -> Result<Option<TrainerState>, TrainError> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        TrainError::Checkpoint(format!("{}: not a trainer state: {e}", path.display()))
    })
}

/// Trains the demo MLLM from scratch on procedural scenes (or resumes a run in `out`).
/// Runs on a worker of rayon's global pool ([`crate::util::on_compute_pool`]).
pub fn train_demo(
    settings: &TrainSettings,
    out: &Path,
    resume: bool,
    control: &TrainControl,
    events: Option<SyncSender<TrainEvent>>,
) -> Result<TrainSummary, TrainError> {
    crate::util::on_compute_pool(|| train_demo_inner(settings, out, resume, control, events))
}

fn train_demo_inner(
    settings: &TrainSettings,
    out: &Path,
    resume: bool,
    control: &TrainControl,
    events: Option<SyncSender<TrainEvent>>,
) -> Result<TrainSummary, TrainError> {
    settings.validate()?;
    let device = Device::Cpu;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let state = if resume { read_state(out)? } else { None };
    if resume && state.is_none() {
        return Err(TrainError::Checkpoint(format!(
            "{}: nothing to resume (no {STATE_FILE}); start without --resume",
            out.display()
        )));
    }
    let perspectives = DemoConfig::default_perspectives(settings.k);
    let words = crate::scenes::vocabulary();
    let (mut model, start_step, fusion_init) = match &state {
        Some(s) => (
            DemoModel::load(out, &device)?,
            s.step,
            FusionInit {
                theta: s.fusion_theta,
                beta: s.fusion_beta,
            },
        ),
        None => {
            let mut config = DemoConfig::new(&words, perspectives.clone());
            config.visual_position_2d = settings.visual_position_2d;
            if settings.tiny {
                config.vision_width = 32;
                config.vision_layers = 1;
                config.hidden = 32;
                config.layers = 1;
                config.mlp = 64;
            }
            (
                DemoModel::random(config, settings.seed, &device)?,
                0,
                FusionInit::default(),
            )
        }
    };
    let vision_done = if state.is_none() && settings.vision_steps > 0 {
        pretrain_stage(&mut model, settings, out, control, &events)?
    } else {
        vision_steps_done(out)
    };
    let text_done = if state.is_none() && settings.text_steps > 0 {
        text_stage(&mut model, settings, out, control, &events)?
    } else {
        text_steps_done(out)
    };
    if state.is_none() && (settings.vision_steps > 0 || settings.text_steps > 0) {
        // After the stages before it, whether they ran now or were loaded.
        emit(
            &events,
            TrainEvent::Stage {
                name: "contrastive".into(),
                total_steps: settings.steps,
            },
        );
    }
    let perspectives = model.config().perspectives.clone();
    let fusion = Fusion::new(fusion_init, DType::F32, &device)?;
    let frozen = |name: &str| settings.freeze_vision && name.starts_with("vision.");
    let mut vars: Vec<(String, Var, bool)> = model
        .make_trainable_where(|name| !frozen(name))?
        .into_iter()
        .map(|(name, var)| {
            let decay = var.rank() == 2 && !name.ends_with(".pos") && !name.starts_with("soft.");
            (name, var, decay)
        })
        .collect();
    if settings.train_fusion && settings.k > 0 {
        vars.push(("fusion.theta".into(), fusion.theta().clone(), false));
        vars.push(("fusion.rho".into(), fusion.rho().clone(), false));
    }
    let dim = model.config().hidden;
    let mut with_heads = |on: bool, text: bool| -> Result<_, TrainError> {
        if !on {
            return Ok(None);
        }
        let mut h = new_heads(settings, &perspectives, dim, text)?;
        if state.is_some() {
            h.load(&out.join(h.file_name()))?;
        } else if text_done > 0 && h.file_name() == heads::TEXT_HEADS_FILE {
            // The text stage's heads go on where it left them.
            h.load(&out.join(TEXT_DIR).join(h.file_name()))?;
        }
        vars.extend(h.vars());
        Ok(Some(h))
    };
    let scene_heads = with_heads(settings.scene_heads > 0.0, false)?;
    let text_heads = with_heads(settings.text_heads > 0.0, true)?;
    let mut optim = AdamW::new(vars, settings.weight_decay);
    optim.scale_lr_where(|name| name.starts_with("vision."), settings.vision_lr_scale);
    if state.is_some() {
        optim.load(&out.join(OPTIM_FILE))?;
    }
    let source = DataSource::Scenes {
        seed: settings.seed,
        // Global captions alone for the first 10% of the steps (with minimal pairs from the
        // start, in-batch accuracy fell as they came in: 0.16 at step 150 of a K=0 run on
        // an untrained tower, against 0.53 without them), then minimal pairs ramp up to
        // half of each batch over the next 20%. With a pre-trained tower the captions are
        // learnt within a few hundred steps (in-batch accuracy 0.91 at step 200), while the
        // pairs were still unlearnt at the end of a 2,400-step run that began them at 30%
        // (accuracy 0.56 on batches half of pairs), so they get the longer share.
        ramp_start: settings.steps / 10,
        ramp_steps: settings.steps / 5,
        query_share: settings.query_share,
    };
    let save = |model: &mut DemoModel, optim: &AdamW, step: u64| -> Result<(), TrainError> {
        let (theta, beta) = fusion_values(&fusion)?;
        model.set_fusion(theta, beta);
        model.set_provenance(format!(
            "agff-lens train --recipe demo: vision tower pre-trained {} of {} steps{}; {}{} of {} contrastive steps, batch {}, lr {}, α {}, τ {}, K {}, seed {}{}{}{}",
            vision_done,
            settings.vision_steps,
            if settings.freeze_vision {
                ", then frozen".to_string()
            } else {
                format!(", then trained at {}× the rate", settings.vision_lr_scale)
            },
            if text_done > 0 {
                format!("language model pre-trained on the text tasks {text_done} steps; ")
            } else {
                String::new()
            },
            step,
            settings.steps,
            settings.batch,
            settings.lr,
            settings.alpha,
            settings.tau,
            settings.k,
            settings.seed,
            heads_provenance("scene", settings.scene_heads, settings.head_scale),
            heads_provenance("text", settings.text_heads, settings.text_head_scale),
            if settings.text_heads > 0.0 {
                extra_tasks_provenance(settings.extra_text_tasks())
            } else {
                String::new()
            },
        ));
        model.save(out)?;
        optim.save(&out.join(OPTIM_FILE))?;
        for h in scene_heads.iter().chain(&text_heads) {
            h.save(&out.join(h.file_name()))?;
        }
        write_state(
            out,
            &TrainerState {
                step,
                settings: settings.clone(),
                fusion_theta: theta,
                fusion_beta: beta,
            },
        )
    };

    emit(
        &events,
        TrainEvent::Started {
            total_steps: settings.steps,
            resumed_from: start_step,
        },
    );
    let mut log = StepLog::open(out, state.is_some())?;
    let started = Instant::now();
    let mut last = (f64::NAN, 0.0);
    let mut step = start_step;
    let mut last_saved = start_step;
    let mut stopped_early = false;
    while step < settings.steps {
        if control.pause.load(Ordering::Relaxed) {
            emit(&events, TrainEvent::Paused);
            control.wait_if_paused();
        }
        if control.stop.load(Ordering::Relaxed)
            || (settings.stop_at > 0 && step >= settings.stop_at)
            || (settings.time_budget_s > 0 && started.elapsed().as_secs() >= settings.time_budget_s)
        {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        let batch = source.batch(step, settings.batch)?;
        let images: Vec<&image::RgbImage> = batch.iter().map(|p| &p.image).collect();
        let texts: Vec<&str> = batch.iter().map(|p| p.text.as_str()).collect();
        let image_emb = model.embed_images(&images, &perspectives, &[])?;
        let (text_emb, _) = model.embed_texts(&texts, &perspectives, &[])?;
        let kept = format!(
            "the last good checkpoint (step {last_saved}) is in {}",
            out.display()
        );
        let scenes: Vec<&crate::scenes::Scene> =
            batch.iter().filter_map(|p| p.scene.as_ref()).collect();
        let extra = match &scene_heads {
            Some(h) if scenes.len() == batch.len() => Some(h.loss(&image_emb, &scenes)?),
            _ => None,
        };
        let text_extra = text_heads
            .as_ref()
            .map(|h| h.text_loss(&text_emb, &texts))
            .transpose()?;
        let embedded = Embedded {
            text: text_emb,
            image: image_emb,
            extra,
            text_extra,
        };
        let mut report = optimise(step, embedded, &fusion, &mut optim, settings, kept)?;
        step = report.step;
        report.captions = batch.iter().map(|p| p.text.clone()).collect();
        report.thumbnails = batch_thumbnails(&batch);
        report.seconds = t0.elapsed().as_secs_f64();
        last = (report.loss, report.accuracy);
        log.record(&report);
        emit(&events, TrainEvent::Step(Box::new(report)));
        if step % settings.checkpoint_every.max(1) == 0 {
            save(&mut model, &optim, step)?;
            log.flush()?;
            last_saved = step;
            emit_checkpoint(&events, step, out);
        }
    }
    if last_saved != step || state.is_none() && step == 0 {
        save(&mut model, &optim, step)?;
        log.flush()?;
        emit_checkpoint(&events, step, out);
    }
    let summary = TrainSummary {
        steps_done: step,
        final_loss: last.0,
        final_accuracy: last.1,
        seconds: started.elapsed().as_secs_f64(),
        stopped_early,
        out: out.to_path_buf(),
    };
    emit(&events, TrainEvent::Finished(summary.clone()));
    Ok(summary)
}

/// Stage 1 of the demo recipe: the tower's dense pre-training (into `out/vision`), then
/// its linear probes, reported as a [`TrainEvent::Note`] and saved as
/// `out/vision/probes.json`. A pre-training that finished before (its `vision.json`
/// exists) is loaded instead of run again. Returns the pre-training steps done.
fn pretrain_stage(
    model: &mut DemoModel,
    settings: &TrainSettings,
    out: &Path,
    control: &TrainControl,
    events: &Option<SyncSender<TrainEvent>>,
) -> Result<u64, TrainError> {
    let dir = out.join("vision");
    if dir.join("vision.json").is_file() {
        let done = DemoModel::load(&dir, &Device::Cpu)?;
        model.copy_params_from(&done, |name| name.starts_with("vision."))?;
        emit(
            events,
            TrainEvent::Note(format!(
                "vision tower: pre-trained before, loaded from {}",
                dir.display()
            )),
        );
        return Ok(vision_steps_done(out));
    }
    emit(
        events,
        TrainEvent::Stage {
            name: "vision".into(),
            total_steps: settings.vision_steps,
        },
    );
    let vs = vision::VisionSettings {
        steps: settings.vision_steps,
        seed: settings.seed,
        time_budget_s: settings.vision_budget_s,
        ..vision::VisionSettings::default()
    };
    let summary = vision::pretrain_vision(model, &vs, &dir, control, events)?;
    let probes = vision::probe_vision(model, &vision::ProbeSettings::default())?;
    let path = dir.join("probes.json");
    let text = serde_json::to_string_pretty(&probes)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    write(&path, text.as_bytes())?;
    let line = probes
        .accuracy
        .iter()
        .map(|(k, v)| format!("{k} {v:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    emit(
        events,
        TrainEvent::Note(format!(
            "vision tower: {} steps in {:.1} s; linear probes on {} held-out scenes: {line}",
            summary.steps_done, summary.seconds, probes.test_scenes
        )),
    );
    Ok(summary.steps_done)
}

/// Where the recipe's text stage keeps its model and heads, under the run's folder.
const TEXT_DIR: &str = "text";

/// Stage 1b of the demo recipe: the language model's text pre-training ([`text`]) into
/// `out/text`, with text heads built as the contrastive stage builds them (cosine at
/// `text_head_scale` when set), saved there for it. One that finished before (its
/// `text.json` exists) is loaded instead of run again. Returns the steps done.
fn text_stage(
    model: &mut DemoModel,
    settings: &TrainSettings,
    out: &Path,
    control: &TrainControl,
    events: &Option<SyncSender<TrainEvent>>,
) -> Result<u64, TrainError> {
    let dir = out.join(TEXT_DIR);
    if dir.join(text::TEXT_SUMMARY_FILE).is_file() {
        let done = DemoModel::load(&dir, &Device::Cpu)?;
        model.copy_params_from(&done, |name| {
            name.starts_with("lm.") || name.starts_with("soft.")
        })?;
        emit(
            events,
            TrainEvent::Note(format!(
                "language model: pre-trained on the text tasks before, loaded from {}",
                dir.display()
            )),
        );
        return Ok(text_steps_done(out));
    }
    emit(
        events,
        TrainEvent::Stage {
            name: "text".into(),
            total_steps: settings.text_steps,
        },
    );
    let heads = new_heads(
        settings,
        &model.config().perspectives,
        model.config().hidden,
        true,
    )?;
    let ts = text::TextSettings {
        steps: settings.text_steps,
        seed: settings.seed,
        ..text::text_settings()
    };
    let s = text::pretrain_text(model, &heads, &ts, &dir, control, events)?;
    emit(
        events,
        TrainEvent::Note(format!(
            "language model: {} text steps in {:.1} s, loss {:.4}; held out: relation slots {:.3}, \
             position statements at a cosine of {:.4}, colour statements {:.4}",
            s.steps_done,
            s.seconds,
            s.final_loss,
            s.relation_accuracy,
            s.position_statement_cosine,
            s.colour_statement_cosine
        )),
    );
    Ok(s.steps_done)
}

/// Steps the text pre-training in `out/text` did (0 when there was none).
fn text_steps_done(out: &Path) -> u64 {
    steps_done_in(&out.join(TEXT_DIR).join(text::TEXT_SUMMARY_FILE))
}

/// Steps the tower's pre-training in `out/vision` did (0 when there was none).
fn vision_steps_done(out: &Path) -> u64 {
    steps_done_in(&out.join("vision").join("vision.json"))
}

/// `summary.steps_done` of a pre-training stage's record (`vision.json`, `text.json`: its
/// settings and summary), 0 when it is missing or unreadable.
fn steps_done_in(record: &Path) -> u64 {
    std::fs::read_to_string(record)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["summary"]["steps_done"].as_u64())
        .unwrap_or(0)
}

/// Side of the batch thumbnails in step reports.
const REPORT_THUMB: u32 = 40;

fn batch_thumbnails(batch: &[data::Example]) -> Vec<image::RgbImage> {
    batch
        .iter()
        .map(|e| {
            let (w, h) = e.image.dimensions();
            let scale = REPORT_THUMB as f64 / w.max(h).max(1) as f64;
            let tw = ((w as f64 * scale).round() as u32).max(1);
            let th = ((h as f64 * scale).round() as u32).max(1);
            image::imageops::thumbnail(&e.image, tw, th)
        })
        .collect()
}

/// The fusion a fine-tune saved (`fusion.json` in its output folder).
pub fn read_fusion(path: &Path) -> Result<FusionInit, TrainError> {
    #[derive(Deserialize)]
    struct Saved {
        theta: [f64; 4],
        beta: f64,
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let saved: Saved = serde_json::from_str(&text).map_err(|e| {
        TrainError::Checkpoint(format!("{}: not a fusion file: {e}", path.display()))
    })?;
    if !(saved.beta.is_finite() && saved.beta > 0.0) || saved.theta.iter().any(|t| !t.is_finite()) {
        return Err(TrainError::Checkpoint(format!(
            "{}: θ must be finite and β positive",
            path.display()
        )));
    }
    Ok(FusionInit {
        theta: saved.theta,
        beta: saved.beta,
    })
}

/// The soft prompts a fine-tune saved (`soft_prompts.safetensors`), one entry per
/// perspective of `perspectives` (`None` where it has no soft tokens). A missing file
/// means the run trained none: all `None`. Shapes are checked against the set and `d`.
pub fn read_soft_prompts(
    path: &Path,
    perspectives: &PerspectiveSet,
    d: usize,
    device: &Device,
) -> Result<Vec<Option<Tensor>>, TrainError> {
    if !path.is_file() {
        return Ok(vec![None; perspectives.perspectives.len()]);
    }
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    perspectives
        .perspectives
        .iter()
        .map(|p| {
            if p.soft_tokens == 0 {
                return Ok(None);
            }
            let key = format!("soft.{}", p.name);
            let t = tensors.get(&key).ok_or_else(|| {
                TrainError::Checkpoint(format!("{}: no tensor {key}", path.display()))
            })?;
            if t.dims() != [p.soft_tokens, d] {
                return Err(TrainError::Checkpoint(format!(
                    "{}: {key} has shape {:?}, expected [{}, {d}]",
                    path.display(),
                    t.dims(),
                    p.soft_tokens
                )));
            }
            Ok(Some(t.clone()))
        })
        .collect()
}

/// Fine-tunes the soft prompts of `perspectives` and the fusion for `backbone` on `data`.
/// Writes `perspectives.json`, `soft_prompts.safetensors` and `fusion.json` into `out`.
/// Runs on a worker of rayon's global pool ([`crate::util::on_compute_pool`]).
pub fn fine_tune(
    backbone: &dyn Backbone,
    perspectives: &PerspectiveSet,
    data: &DataSource,
    settings: &TrainSettings,
    out: &Path,
    control: &TrainControl,
    events: Option<SyncSender<TrainEvent>>,
) -> Result<TrainSummary, TrainError> {
    crate::util::on_compute_pool(|| {
        fine_tune_inner(backbone, perspectives, data, settings, out, control, events)
    })
}

fn fine_tune_inner(
    backbone: &dyn Backbone,
    perspectives: &PerspectiveSet,
    data: &DataSource,
    settings: &TrainSettings,
    out: &Path,
    control: &TrainControl,
    events: Option<SyncSender<TrainEvent>>,
) -> Result<TrainSummary, TrainError> {
    settings.validate()?;
    perspectives.validate().map_err(TrainError::Config)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let device = backbone.device().clone();
    let d = backbone.hidden_size();
    let fusion = Fusion::for_backbone(backbone)?;

    // Soft prompts start from the backbone's own trained ones where it has them.
    let mut soft_vars: Vec<Option<Var>> = Vec::new();
    for p in &perspectives.perspectives {
        if p.soft_tokens == 0 {
            soft_vars.push(None);
            continue;
        }
        let init = match backbone.trained_soft_prompt(p) {
            Some(t) => t.detach().to_dtype(DType::F32)?,
            None => Tensor::randn(0f32, 0.02, (p.soft_tokens, d), &device)?,
        };
        soft_vars.push(Some(Var::from_tensor(&init)?));
    }
    let mut vars: Vec<(String, Var, bool)> = Vec::new();
    if settings.train_soft {
        for (p, v) in perspectives.perspectives.iter().zip(&soft_vars) {
            if let Some(v) = v {
                vars.push((format!("soft.{}", p.name), v.clone(), false));
            }
        }
    }
    if settings.train_fusion {
        vars.push(("fusion.theta".into(), fusion.theta().clone(), false));
        vars.push(("fusion.rho".into(), fusion.rho().clone(), false));
    }
    if vars.is_empty() {
        return Err(TrainError::Config(
            "nothing to train: the perspectives have no soft tokens and fusion training is off"
                .into(),
        ));
    }
    let mut optim = AdamW::new(vars, 0.0);
    let soft: Vec<Option<Tensor>> = soft_vars
        .iter()
        .map(|v| v.as_ref().map(|v| v.as_tensor().clone()))
        .collect();
    let options = EmbedOptions {
        soft_prompts: soft,
        ..EmbedOptions::default()
    };
    // Each file is replaced atomically: the app reads them back as soon as the run ends,
    // and a reader never sees half a file.
    let save = |step: u64| -> Result<(), TrainError> {
        let mut map = HashMap::new();
        for (p, v) in perspectives.perspectives.iter().zip(&soft_vars) {
            if let Some(v) = v {
                map.insert(format!("soft.{}", p.name), v.as_tensor().detach());
            }
        }
        let path = out.join(tuned_files::SOFT_PROMPTS);
        if !map.is_empty() {
            write_tensors(&path, &map)?;
        }
        let ppath = out.join(tuned_files::PERSPECTIVES);
        let text = serde_json::to_string_pretty(perspectives)
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        write(&ppath, text.as_bytes())?;
        let (theta, beta) = fusion_values(&fusion)?;
        let fpath = out.join(tuned_files::FUSION);
        let text = serde_json::json!({"theta": theta, "beta": beta, "step": step}).to_string();
        write(&fpath, text.as_bytes())
    };

    emit(
        &events,
        TrainEvent::Started {
            total_steps: settings.steps,
            resumed_from: 0,
        },
    );
    let mut log = StepLog::open(out, false)?;
    let started = Instant::now();
    let mut last = (f64::NAN, 0.0);
    let mut step = 0;
    let mut last_saved = 0;
    let mut stopped_early = false;
    while step < settings.steps {
        if control.pause.load(Ordering::Relaxed) {
            emit(&events, TrainEvent::Paused);
            control.wait_if_paused();
        }
        if control.stop.load(Ordering::Relaxed) {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        let batch = data.batch(step, settings.batch)?;
        let mut image_rows = Vec::with_capacity(batch.len());
        let mut text_rows = Vec::with_capacity(batch.len());
        for pair in &batch {
            image_rows.push(
                backbone
                    .embed(
                        &EmbedInput::image(pair.image.clone()),
                        perspectives,
                        &options,
                    )?
                    .vectors,
            );
            text_rows.push(
                backbone
                    .embed(&EmbedInput::text(pair.text.clone()), perspectives, &options)?
                    .vectors,
            );
        }
        let image_emb = Tensor::stack(&image_rows, 0)?.to_dtype(DType::F32)?;
        let text_emb = Tensor::stack(&text_rows, 0)?.to_dtype(DType::F32)?;
        let kept = format!(
            "the last good checkpoint (step {last_saved}) is in {}",
            out.display()
        );
        let embedded = Embedded {
            text: text_emb,
            image: image_emb,
            extra: None,
            text_extra: None,
        };
        let mut report = optimise(step, embedded, &fusion, &mut optim, settings, kept)?;
        step = report.step;
        report.captions = batch.iter().map(|p| p.text.clone()).collect();
        report.thumbnails = batch_thumbnails(&batch);
        report.seconds = t0.elapsed().as_secs_f64();
        last = (report.loss, report.accuracy);
        log.record(&report);
        emit(&events, TrainEvent::Step(Box::new(report)));
        if step % settings.checkpoint_every.max(1) == 0 {
            save(step)?;
            log.flush()?;
            last_saved = step;
            emit_checkpoint(&events, step, out);
        }
    }
    save(step)?;
    log.flush()?;
    let summary = TrainSummary {
        steps_done: step,
        final_loss: last.0,
        final_accuracy: last.1,
        seconds: started.elapsed().as_secs_f64(),
        stopped_early,
        out: out.to_path_buf(),
    };
    emit(&events, TrainEvent::Finished(summary.clone()));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of heads says its own weight and, where cosine, its own scale.
    #[test]
    fn heads_provenance_names_each_kind_and_scale() {
        assert_eq!(heads_provenance("scene", 0.0, 10.0), "");
        assert_eq!(heads_provenance("scene", 1.0, 0.0), ", scene heads 1");
        assert_eq!(
            heads_provenance("text", 0.5, 10.0),
            ", text heads 0.5 (cosine, scale 10)"
        );
        let of = |s: &TrainSettings| extra_tasks_provenance(s.extra_text_tasks());
        let extra = |more, size| {
            of(&TrainSettings {
                more_text_tasks: more,
                size_text_task: size,
                ..TrainSettings::default()
            })
        };
        assert_eq!(extra(false, false), "");
        assert_eq!(
            extra(true, false),
            " with the fill-and-colour and viewpoint tasks"
        );
        assert_eq!(extra(false, true), " with the size task");
        assert_eq!(
            extra(true, true),
            " with the fill-and-colour, viewpoint and size tasks"
        );
        let on_global = TrainSettings {
            size_text_task: true,
            text_tasks_on_global: true,
            ..TrainSettings::default()
        };
        assert_eq!(
            of(&on_global),
            " with the size task, also on the global head (size with colour)"
        );
        let all = TrainSettings {
            more_text_tasks: true,
            number_text_task: true,
            ..on_global
        };
        assert_eq!(
            of(&all),
            " with the fill-and-colour, viewpoint, size and number tasks, also on the global \
             head (size with colour)"
        );
        let number_on_global = TrainSettings {
            number_text_task: true,
            text_tasks_on_global: true,
            ..TrainSettings::default()
        };
        assert_eq!(
            of(&number_on_global),
            " with the number task, also on the global head"
        );
    }

    #[test]
    fn settings_a_run_cannot_use_are_refused() {
        assert!(TrainSettings::default().validate().is_ok());
        let refused = |s: TrainSettings| match s.validate() {
            Err(TrainError::Config(m)) => m,
            other => panic!("accepted: {other:?}"),
        };
        let m = refused(TrainSettings {
            text_tasks_on_global: true,
            ..TrainSettings::default()
        });
        assert!(m.contains("global head"), "{m}");
        // A negative scale would climb the loss on the tower's parameters.
        for scale in [-0.1, f64::NAN] {
            let m = refused(TrainSettings {
                vision_lr_scale: scale,
                ..TrainSettings::default()
            });
            assert!(m.contains("learning-rate scale"), "{m}");
        }
        for weight in [-1.0, f64::INFINITY] {
            let m = refused(TrainSettings {
                scene_heads: weight,
                ..TrainSettings::default()
            });
            assert!(m.contains("scene heads"), "{m}");
            let m = refused(TrainSettings {
                text_heads: weight,
                ..TrainSettings::default()
            });
            assert!(m.contains("text heads"), "{m}");
            let m = refused(TrainSettings {
                head_scale: weight,
                ..TrainSettings::default()
            });
            assert!(m.contains("scene heads' scale"), "{m}");
            let m = refused(TrainSettings {
                text_head_scale: weight,
                ..TrainSettings::default()
            });
            assert!(m.contains("text heads' scale"), "{m}");
        }
        assert!(
            refused(TrainSettings {
                steps: 0,
                ..TrainSettings::default()
            })
            .contains("steps must be at least 1")
        );
    }
}
