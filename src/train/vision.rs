//! Teaching the demo model's vision tower to see before it learns words: supervised dense
//! pre-training from the scene renderer's metadata, and linear probes that check it.
//!
//! The caption-contrastive loss alone is satisfied early by cheap cues (setting, zoom,
//! colour) and then gives shape almost no gradient (README, "The demo model"). The
//! renderer knows every object under every visual token, so the tower is first trained as
//! an ordinary supervised vision model, as many MLLMs start from a pre-trained tower (LiT,
//! Zhai et al. 2022, locks it; so does our demo recipe by default): one linear head per
//! [`Attribute`] reads the tower's final-normed tokens (`DemoModel::vision_tokens`), the
//! token heads each token, the image heads the mean over tokens; the loss is the sum over
//! attributes of each one's mean cross-entropy.
//!
//! The probes then freeze the tower, fit fresh linear classifiers on the tokens of
//! scenes from one seed and score them on scenes from another, on object tokens only
//! (shape also on background tokens). They answer "does the tower see it?" before an
//! hour of contrastive training is spent on a tower that does not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{AdamW, StepReport, TrainControl, TrainError, TrainEvent, emit};
use crate::model::demo::DemoModel;
use crate::model::ops;
use crate::scenes::labels::{Attribute, TokenLabels, token_labels};
use crate::scenes::{Scene, SceneRng};

/// Settings of the tower's dense pre-training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionSettings {
    /// Optimisation steps; the learning-rate schedule spans them.
    pub steps: u64,
    /// Scenes per step.
    pub batch: usize,
    /// Peak learning rate (linear warm-up, then cosine decay to 10%, as
    /// [`super::TrainSettings::lr_at`]).
    pub lr: f64,
    /// Steps of the linear warm-up.
    pub warmup: u64,
    /// AdamW's decoupled weight decay, on the tower's and the heads' weight matrices (not
    /// the position table, norms or biases).
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// Seed of the scene stream.
    pub seed: u64,
    /// Stop after this many seconds (0: no limit).
    pub time_budget_s: u64,
}

impl Default for VisionSettings {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch: 32,
            lr: 2e-3,
            warmup: 100,
            weight_decay: 0.05,
            clip: 1.0,
            seed: 0,
            time_budget_s: 0,
        }
    }
}

impl VisionSettings {
    /// Learning rate at `step` (1-based): linear warm-up, then cosine decay to 10%.
    pub(super) fn lr_at(&self, step: u64) -> f64 {
        super::TrainSettings {
            steps: self.steps,
            lr: self.lr,
            warmup: self.warmup,
            ..super::TrainSettings::default()
        }
        .lr_at(step)
    }
}

/// One linear head per attribute, `weight [classes, width]`, `bias [classes]`, plus the
/// objectness head (object or background, every token).
///
/// The shape head is trained on object tokens only (8 classes in effect) and objectness
/// separately: with shape's background class in one loss over all tokens, the 83% of
/// background tokens dominated it and the heads learned "background" first (object-token
/// training accuracy 0.003 after 100 steps, against 0.151 with the split).
struct Heads {
    heads: Vec<(Attribute, Var, Var)>,
    object: (Var, Var),
}

impl Heads {
    fn new(width: usize, device: &Device) -> Result<Self, TrainError> {
        let heads = Attribute::ALL
            .iter()
            .map(|&a| {
                Ok((
                    a,
                    Var::zeros((a.classes(), width), DType::F32, device)?,
                    Var::zeros(a.classes(), DType::F32, device)?,
                ))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let object = (
            Var::zeros((2, width), DType::F32, device)?,
            Var::zeros(2, DType::F32, device)?,
        );
        Ok(Self { heads, object })
    }

    fn vars(&self) -> Vec<(String, Var, bool)> {
        let mut vars: Vec<(String, Var, bool)> = self
            .heads
            .iter()
            .flat_map(|(a, w, b)| {
                [
                    (format!("head.{}.weight", a.name()), w.clone(), true),
                    (format!("head.{}.bias", a.name()), b.clone(), false),
                ]
            })
            .collect();
        vars.push(("head.object.weight".into(), self.object.0.clone(), true));
        vars.push(("head.object.bias".into(), self.object.1.clone(), false));
        vars
    }
}

/// The rows of one attribute in a batch: indices into the flattened tokens
/// (`b·N + t`) or images (`b`), and their classes. `objects_only` drops the background
/// tokens (shape class 0).
fn rows_of(
    labels: &[TokenLabels],
    attribute: Attribute,
    tokens: usize,
    objects_only: bool,
) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut classes = Vec::new();
    for (b, l) in labels.iter().enumerate() {
        for &(t, c) in l.of(attribute) {
            if objects_only && attribute == Attribute::Shape && c == 0 {
                continue;
            }
            rows.push(if attribute.per_image() {
                b as u32
            } else {
                (b * tokens + t) as u32
            });
            classes.push(c);
        }
    }
    (rows, classes)
}

/// The features of an attribute's rows: token features `[B·N, W]` or mean-pooled image
/// features `[B, W]`.
fn features(tokens: &Tensor, attribute: Attribute) -> Result<Tensor, TrainError> {
    if attribute.per_image() {
        Ok(tokens.mean(1)?)
    } else {
        flat(tokens)
    }
}

/// Labels of a batch of scenes for `model`'s token grid.
fn batch_labels(model: &DemoModel, scenes: &[Scene]) -> Vec<TokenLabels> {
    let c = model.config();
    scenes
        .iter()
        .map(|s| token_labels(s, c.image_size, c.grid()))
        .collect()
}

/// The scenes of pre-training step `step` (a pure function of the seed and the step).
fn step_scenes(seed: u64, step: u64, n: usize) -> Vec<Scene> {
    let mut rng = SceneRng::new(crate::util::rng::derive_seed(seed ^ 0x5ee, step + 1));
    (0..n).map(|_| Scene::random_labelled(&mut rng)).collect()
}

fn accuracy(logits: &Tensor, classes: &[u32]) -> Result<f64, TrainError> {
    let argmax = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let hits = argmax.iter().zip(classes).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / classes.len().max(1) as f64)
}

/// What pre-training reports at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionSummary {
    /// Steps done (fewer than `steps` when stopped or out of time).
    pub steps_done: u64,
    /// Wall-clock seconds of the steps.
    pub seconds: f64,
    /// Training accuracy of each head over the last 20 steps.
    pub head_accuracy: BTreeMap<String, f64>,
    /// Mean cross-entropy over the attributes of the last step's batch (NaN when no step
    /// ran).
    pub final_loss: f64,
}

/// Trains `model`'s vision tower (stem, positions, blocks, final norm) with the dense
/// heads for `settings.steps` steps; the rest of the model is untouched. Streams
/// [`TrainEvent::Step`] reports (loss: the mean cross-entropy over the attributes present;
/// accuracy: the shape head's) and writes `model.safetensors`/`config.json` plus
/// `vision.json` into `out` at the end. A non-finite loss or gradient stops it with
/// [`TrainError::Diverged`].
/// Runs on a worker of rayon's global pool ([`crate::util::on_compute_pool`]).
pub fn pretrain_vision(
    model: &mut DemoModel,
    settings: &VisionSettings,
    out: &Path,
    control: &TrainControl,
    events: &Option<SyncSender<TrainEvent>>,
) -> Result<VisionSummary, TrainError> {
    crate::util::on_compute_pool(|| pretrain_vision_inner(model, settings, out, control, events))
}

fn pretrain_vision_inner(
    model: &mut DemoModel,
    settings: &VisionSettings,
    out: &Path,
    control: &TrainControl,
    events: &Option<SyncSender<TrainEvent>>,
) -> Result<VisionSummary, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let device = crate::model::Backbone::device(model).clone();
    let width = model.config().vision_width;
    let tokens_per_image = model.config().grid() * model.config().grid();
    let heads = Heads::new(width, &device)?;
    let mut vars: Vec<(String, Var, bool)> = model
        .make_trainable_where(|name| name.starts_with("vision."))?
        .into_iter()
        .map(|(name, var)| {
            let decay = var.rank() == 2 && !name.ends_with(".pos");
            (name, var, decay)
        })
        .collect();
    vars.extend(heads.vars());
    let mut optim = AdamW::new(vars, settings.weight_decay);
    emit(
        events,
        TrainEvent::Started {
            total_steps: settings.steps,
            resumed_from: 0,
        },
    );
    let started = Instant::now();
    let mut recent: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut last_loss = f64::NAN;
    let mut step = 0;
    while step < settings.steps {
        if control.stop.load(Ordering::Relaxed)
            || (settings.time_budget_s > 0 && started.elapsed().as_secs() >= settings.time_budget_s)
        {
            break;
        }
        let t0 = Instant::now();
        let scenes = step_scenes(settings.seed, step, settings.batch);
        let images: Vec<image::RgbImage> = scenes.iter().map(Scene::render).collect();
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        let labels = batch_labels(model, &scenes);
        let tokens = model.vision_tokens(&model.pixels(&refs)?)?;
        let mut total: Option<Tensor> = None;
        let mut terms = 0usize;
        let mut shape_acc = 0.0;
        for (attribute, w, b) in &heads.heads {
            let (rows, classes) = rows_of(&labels, *attribute, tokens_per_image, true);
            if rows.is_empty() {
                continue;
            }
            let x = features(&tokens, *attribute)?
                .index_select(&Tensor::new(rows.as_slice(), &device)?, 0)?;
            let logits = ops::linear(&x, w.as_tensor(), Some(b.as_tensor()))?;
            let target = Tensor::new(classes.as_slice(), &device)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
            let acc = accuracy(&logits, &classes)?;
            if *attribute == Attribute::Shape {
                shape_acc = acc;
            }
            let r = recent.entry(attribute.name().to_string()).or_default();
            r.push(acc);
            if r.len() > 20 {
                r.remove(0);
            }
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
            terms += 1;
        }
        // Objectness: is any object under the token (the shape labels' class 0 or not).
        let objectness: Vec<u32> = labels
            .iter()
            .flat_map(|l| l.object.iter().map(|o| u32::from(o.is_some())))
            .collect();
        let flat = features(&tokens, Attribute::Shape)?;
        let logits = ops::linear(
            &flat,
            heads.object.0.as_tensor(),
            Some(heads.object.1.as_tensor()),
        )?;
        let objectness = Tensor::new(objectness.as_slice(), &device)?;
        let object_loss = candle_nn::loss::cross_entropy(&logits, &objectness)?;
        let total = total.map(|t| t + object_loss).transpose()?;
        terms += 1;
        let Some(total) = total else {
            return Err(TrainError::Data(
                "a pre-training batch had no labels".into(),
            ));
        };
        // The objective is the sum over attributes; the report is the mean over those this
        // batch has labels for (a batch without a labelled object has no character term),
        // so that reports of different batches compare.
        let loss_value = total.to_scalar::<f32>()? as f64 / terms.max(1) as f64;
        let diverged = |what: &str| TrainError::Diverged {
            step: step + 1,
            what: what.into(),
            kept: format!("nothing was saved to {}", out.display()),
        };
        if !loss_value.is_finite() {
            return Err(diverged("the pre-training loss"));
        }
        let grads = total.backward()?;
        let norm = optim.grad_norm(&grads)?;
        if !norm.is_finite() {
            return Err(diverged("the gradient norm"));
        }
        step += 1;
        let lr = settings.lr_at(step);
        optim.step_clipped(&grads, lr, norm, settings.clip)?;
        last_loss = loss_value;
        emit(
            events,
            TrainEvent::Step(Box::new(StepReport {
                step,
                total_steps: settings.steps,
                loss: loss_value,
                accuracy: shape_acc,
                lr,
                grad_norm: norm,
                similarity_weights: [0.25; 4],
                beta: 0.0,
                similarity: Vec::new(),
                batch: settings.batch,
                hard_negatives: Vec::new(),
                captions: Vec::new(),
                thumbnails: Vec::new(),
                seconds: t0.elapsed().as_secs_f64(),
                scene_heads: None,
                text_heads: None,
            })),
        );
    }
    model.freeze();
    let summary = VisionSummary {
        steps_done: step,
        seconds: started.elapsed().as_secs_f64(),
        head_accuracy: recent
            .into_iter()
            .map(|(k, v)| (k, v.iter().sum::<f64>() / v.len().max(1) as f64))
            .collect(),
        final_loss: last_loss,
    };
    model.save(out)?;
    let path = out.join("vision.json");
    let text = serde_json::json!({"settings": settings, "summary": summary}).to_string();
    super::write(&path, text.as_bytes())?;
    emit(
        events,
        TrainEvent::Checkpoint {
            step,
            dir: out.to_path_buf(),
        },
    );
    Ok(summary)
}

/// Linear-probe accuracy per attribute (fraction in [0, 1]) on held-out scenes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Per attribute: held-out accuracy.
    pub accuracy: BTreeMap<String, f64>,
    /// Per attribute: held-out rows scored (tokens, or images for per-image attributes).
    pub rows: BTreeMap<String, usize>,
    /// Per attribute: accuracy on the rows the probe was fitted on. Near the held-out
    /// figure, a probe is limited by what the tokens hold (or by its fit); well above
    /// it, by its fitting data.
    #[serde(default)]
    pub fit_accuracy: BTreeMap<String, f64>,
    /// Scenes the probes were fitted on.
    pub train_scenes: usize,
    /// Held-out scenes they were scored on.
    pub test_scenes: usize,
}

/// Settings of the probes.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    /// Scenes to fit the probes on.
    pub train_scenes: usize,
    /// Held-out scenes to score them on.
    pub test_scenes: usize,
    /// Seed of the probe scenes (training scenes use `seed`, test scenes `seed + 1`).
    pub seed: u64,
    /// Full-batch Adam steps per probe.
    pub steps: usize,
    /// Also probe where each token is: its column in the grid, read from the tower's
    /// tokens and from the language model's inputs at the visual positions
    /// ([`DemoModel::language_inputs`]; meaningful for a model whose projector was
    /// trained). Off during the recipe's stage 1.
    pub positions: bool,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            train_scenes: 3000,
            test_scenes: 1000,
            seed: 7_000_001,
            steps: 300,
            positions: false,
        }
    }
}

/// The frozen tower's tokens `[S, N, W]` and labels of `count` scenes of `seed`.
fn probe_data(
    model: &DemoModel,
    seed: u64,
    count: usize,
) -> Result<(Tensor, Vec<TokenLabels>), TrainError> {
    let mut rng = SceneRng::new(seed);
    let scenes: Vec<Scene> = (0..count)
        .map(|_| Scene::random_labelled(&mut rng))
        .collect();
    let labels = batch_labels(model, &scenes);
    let mut chunks = Vec::new();
    for part in scenes.chunks(64) {
        let images: Vec<image::RgbImage> = part.iter().map(Scene::render).collect();
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        chunks.push(model.vision_tokens(&model.pixels(&refs)?)?.detach());
    }
    Ok((Tensor::cat(&chunks, 0)?, labels))
}

/// Fits a linear softmax classifier on `(x, y)` with full-batch Adam.
fn fit_probe(
    x: &Tensor,
    y: &[u32],
    classes: usize,
    steps: usize,
) -> Result<(Tensor, Tensor), TrainError> {
    let device = x.device().clone();
    let w = Var::zeros((classes, x.dim(1)?), DType::F32, &device)?;
    let b = Var::zeros(classes, DType::F32, &device)?;
    let mut optim = AdamW::new(
        vec![
            ("w".into(), w.clone(), true),
            ("b".into(), b.clone(), false),
        ],
        1e-4,
    );
    let target = Tensor::new(y, &device)?;
    for step in 0..steps {
        let logits = ops::linear(x, w.as_tensor(), Some(b.as_tensor()))?;
        let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
        let grads = loss.backward()?;
        // A short cosine schedule from 0.05.
        let t = step as f64 / steps.max(1) as f64;
        let lr = 0.05 * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()));
        optim.step(&grads, lr, 1.0)?;
    }
    Ok((w.as_tensor().detach(), b.as_tensor().detach()))
}

/// Fits a probe on `(x, y)` and scores it: (accuracy on `(test_x, test_y)`, accuracy on
/// the fitted rows `(x, y)`), each a fraction in [0, 1].
fn fit_and_score(
    (x, y): (&Tensor, &[u32]),
    (test_x, test_y): (&Tensor, &[u32]),
    classes: usize,
    steps: usize,
) -> Result<(f64, f64), TrainError> {
    let (w, b) = fit_probe(x, y, classes, steps)?;
    let score = |x: &Tensor, y: &[u32]| accuracy(&ops::linear(x, &w, Some(&b))?, y);
    Ok((score(test_x, test_y)?, score(x, y)?))
}

/// Linear probes of `model`'s frozen vision tower, one per [`Attribute`]: fitted on
/// `settings.train_scenes` scenes, scored on `settings.test_scenes` others.
///
/// # Errors
/// [`TrainError::Config`] when either count or `settings.steps` is 0; a tensor error of
/// the model otherwise.
pub fn probe_vision(
    model: &DemoModel,
    settings: &ProbeSettings,
) -> Result<ProbeReport, TrainError> {
    if settings.train_scenes == 0 || settings.test_scenes == 0 || settings.steps == 0 {
        return Err(TrainError::Config(format!(
            "linear probes need at least one fitting scene, one held-out scene and one \
             fitting step (got {} fitting scenes, {} held-out scenes, {} steps)",
            settings.train_scenes, settings.test_scenes, settings.steps
        )));
    }
    let n = model.config().grid() * model.config().grid();
    let (train_x, train_l) = probe_data(model, settings.seed, settings.train_scenes)?;
    let (test_x, test_l) = probe_data(model, settings.seed + 1, settings.test_scenes)?;
    let device = train_x.device().clone();
    let mut report = ProbeReport {
        train_scenes: settings.train_scenes,
        test_scenes: settings.test_scenes,
        ..ProbeReport::default()
    };
    // One probe: fitted on the training scenes' rows, scored on the held-out ones;
    // `None` when either side has no row of it.
    // Returns (held-out accuracy, held-out rows, accuracy on the fitted rows).
    type Scored = Option<(f64, usize, f64)>;
    let probe = |attribute: Attribute, objects_only: bool| -> Result<Scored, TrainError> {
        let (rows, y) = rows_of(&train_l, attribute, n, objects_only);
        let (test_rows, test_y) = rows_of(&test_l, attribute, n, objects_only);
        if rows.is_empty() || test_rows.is_empty() {
            return Ok(None);
        }
        let x = features(&train_x, attribute)?
            .index_select(&Tensor::new(rows.as_slice(), &device)?, 0)?;
        let tx = features(&test_x, attribute)?
            .index_select(&Tensor::new(test_rows.as_slice(), &device)?, 0)?;
        let (held_out, fit) = fit_and_score(
            (&x, &y),
            (&tx, &test_y),
            attribute.classes(),
            settings.steps,
        )?;
        Ok(Some((held_out, test_y.len(), fit)))
    };
    for attribute in Attribute::ALL {
        let mut scored = vec![(attribute.name().to_string(), probe(attribute, false)?)];
        if attribute == Attribute::Shape {
            // Most tokens are background: the shape of the object under a token is also
            // probed on object tokens alone (the criterion), with a probe of its
            // own (one fitted on every token spends itself on background).
            scored.push((SHAPE_ON_OBJECTS.to_string(), probe(attribute, true)?));
        }
        for (name, score) in scored {
            if let Some((acc, rows, fit)) = score {
                report.accuracy.insert(name.clone(), acc);
                report.fit_accuracy.insert(name.clone(), fit);
                report.rows.insert(name, rows);
            }
        }
    }
    if settings.positions {
        let grid = model.config().grid();
        let column = |tokens: &Tensor| -> Result<Vec<u32>, TrainError> {
            let count = tokens.dim(0)? * n;
            Ok((0..count).map(|i| ((i % n) % grid) as u32).collect())
        };
        let lm = |tokens: &Tensor| -> Result<Tensor, TrainError> {
            Ok(model.language_inputs(&model.project(tokens)?)?)
        };
        for (name, train, test) in [
            (COLUMN_TOWER, train_x.clone(), test_x.clone()),
            (COLUMN_LANGUAGE, lm(&train_x)?, lm(&test_x)?),
        ] {
            let y = column(&test)?;
            let (held_out, fit) = fit_and_score(
                (&flat(&train)?, &column(&train)?),
                (&flat(&test)?, &y),
                grid,
                settings.steps,
            )?;
            report.accuracy.insert(name.into(), held_out);
            report.fit_accuracy.insert(name.into(), fit);
            report.rows.insert(name.into(), y.len());
        }
    }
    Ok(report)
}

/// `[B, N, W]` → `[B·N, W]`.
fn flat(tokens: &Tensor) -> Result<Tensor, TrainError> {
    let (b, n, w) = tokens.dims3()?;
    Ok(tokens.reshape((b * n, w))?)
}

/// The report key of the shape probe scored on object tokens only.
pub const SHAPE_ON_OBJECTS: &str = "shape (object tokens)";
/// The report key of the column probe on the tower's tokens ([`ProbeSettings::positions`]).
pub const COLUMN_TOWER: &str = "column (tower tokens)";
/// The report key of the column probe on the language model's inputs.
pub const COLUMN_LANGUAGE: &str = "column (language-model inputs)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::demo::DemoConfig;

    fn tiny_model() -> DemoModel {
        let words = crate::scenes::vocabulary();
        let mut c = DemoConfig::new(&words, DemoConfig::default_perspectives(1));
        c.stem_channels = [8, 16];
        c.vision_width = 32;
        c.vision_layers = 1;
        c.hidden = 32;
        c.layers = 1;
        c.mlp = 64;
        // With grid positions, so the column probe of the language model's inputs has
        // something to find.
        c.visual_position_2d = true;
        DemoModel::random(c, 3, &Device::Cpu).unwrap()
    }

    #[test]
    fn pretraining_moves_only_the_tower_and_lowers_the_loss() {
        let mut model = tiny_model();
        let before = model.params().clone();
        let settings = VisionSettings {
            steps: 30,
            batch: 8,
            lr: 3e-3,
            warmup: 2,
            ..VisionSettings::default()
        };
        let dir = std::env::temp_dir().join(format!("agff-vision-{}", std::process::id()));
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let summary = pretrain_vision(
            &mut model,
            &settings,
            &dir,
            &TrainControl::default(),
            &Some(tx),
        )
        .unwrap();
        assert_eq!(summary.steps_done, 30);
        let losses: Vec<f64> = rx
            .try_iter()
            .filter_map(|e| match e {
                TrainEvent::Step(r) => Some(r.loss),
                _ => None,
            })
            .collect();
        assert_eq!(losses.len(), 30);
        let first: f64 = losses[..5].iter().sum();
        let last: f64 = losses[25..].iter().sum();
        assert!(last < first, "loss did not fall: {losses:?}");
        for (name, t) in model.params() {
            let moved = crate::model::testing::max_abs_diff(t, &before[name]) > 0.0;
            assert_eq!(moved, name.starts_with("vision."), "{name}");
        }
        // Saved and loadable.
        let back = DemoModel::load(&dir, &Device::Cpu).unwrap();
        let d = crate::model::testing::max_abs_diff(
            &back.params()["vision.stem.0.weight"],
            &model.params()["vision.stem.0.weight"],
        );
        assert_eq!(d, 0.0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn probes_score_every_attribute_and_beat_chance_on_zoom() {
        let model = tiny_model();
        let report = probe_vision(
            &model,
            &ProbeSettings {
                train_scenes: 60,
                test_scenes: 40,
                seed: 9,
                steps: 60,
                positions: true,
            },
        )
        .unwrap();
        for a in Attribute::ALL {
            let acc = report.accuracy.get(a.name()).copied();
            assert!(
                acc.is_some_and(|x| (0.0..=1.0).contains(&x)),
                "{}: {acc:?}",
                a.name()
            );
        }
        // Every probe scored reports its accuracy on the rows it was fitted on too.
        assert_eq!(
            report.fit_accuracy.keys().collect::<Vec<_>>(),
            report.accuracy.keys().collect::<Vec<_>>()
        );
        assert!(
            report
                .fit_accuracy
                .values()
                .all(|x| (0.0..=1.0).contains(x))
        );
        // Nothing to fit on, nothing to score or no step: a clear refusal, not a
        // tensor error from deep inside.
        for (train_scenes, test_scenes, steps) in [(0, 40, 60), (60, 0, 60), (60, 40, 0)] {
            let settings = ProbeSettings {
                train_scenes,
                test_scenes,
                steps,
                ..ProbeSettings::default()
            };
            match probe_vision(&model, &settings) {
                Err(TrainError::Config(m)) => assert!(m.contains("at least one"), "{m}"),
                other => panic!("{train_scenes}/{test_scenes}/{steps}: {other:?}"),
            }
        }
        // Even a random tower's mean token separates a near from a far scene (the
        // horizon and the object sizes differ).
        assert!(report.accuracy["zoom"] > 0.6, "{:?}", report.accuracy);
        assert_eq!(report.rows["count"], 40);
        // The language model's inputs carry the grid embedding: whatever the random
        // projector adds, a linear probe reads each token's column from them.
        let n = model.config().grid() * model.config().grid();
        assert_eq!(report.rows[COLUMN_LANGUAGE], 40 * n);
        assert!((0.0..=1.0).contains(&report.accuracy[COLUMN_TOWER]));
        assert!(
            report.accuracy[COLUMN_LANGUAGE] > 0.9,
            "{:?}",
            report.accuracy
        );
    }
}
