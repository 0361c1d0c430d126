//! Teaching the demo model's language model to read relations before the contrastive
//! stage: the text heads' tasks ([`super::heads::text_tasks`]) on texts alone.
//!
//! Why a stage of its own. After the whole recipe, the committed model's text embedding
//! of "a red circle left of a blue square" and of "a red circle right of a blue square"
//! had a cosine of 1.0000 in every perspective (their word embeddings for "left" and
//! "right" a cosine of −0.05 apart), while swapping the two objects moved it to 0.977:
//! the language model read which object came first and ignored the relation word. The
//! text heads ask, for such a text, which object is on the left; that answer is the first
//! object for "left of" and the second for "right of", an interaction of the relation
//! word with the word order. A relation word's own feature, added to the embedding, tells
//! a linear (or cosine) head nothing about it on average over the objects, so its
//! gradient averages out and the word stays ignored; the interaction has to be built by
//! attention first. Under InfoNCE the images of a position pair give no help: they are as
//! alike as their statements, and each side's gradient on the pair is proportional to the
//! other side's difference. Here the language model learns the text tasks alone, on
//! texts that state relations, before any image is seen, as the tower learns to see in
//! stage 1 ([`super::vision`]). The contrastive stage then starts from statements that
//! already differ.
//!
//! Texts are cheap (no visual tokens), so this stage takes a few minutes of the recipe's
//! budget. It trains the language model (`lm.*`) and the soft prompts (`soft.*`) with the
//! text heads; the heads are saved with it and carried into the contrastive stage.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::heads::SceneHeads;
use super::vision::VisionSettings;
use super::{AdamW, StepReport, TrainControl, TrainError, TrainEvent, emit};
use crate::model::PerspectiveSet;
use crate::model::demo::DemoModel;
use crate::scenes::{MmvpPattern, ScenePair, SceneRng};

/// Settings of the language model's text pre-training: the fields of the tower's
/// ([`VisionSettings`]; `batch` counts texts), with [`text_settings`]' defaults.
pub type TextSettings = VisionSettings;

/// The text stage's defaults: 1,500 steps of 64 texts; learning rate, warm-up, weight
/// decay and clip as the tower's.
pub fn text_settings() -> TextSettings {
    TextSettings {
        steps: 1500,
        batch: 64,
        ..VisionSettings::default()
    }
}

/// What the text stage reports at the end, measured on held-out texts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextSummary {
    /// Steps done (fewer than `steps` when stopped or out of time).
    pub steps_done: u64,
    /// Wall-clock seconds of the steps.
    pub seconds: f64,
    /// Mean text-heads loss over the last 20 steps (NaN when no step ran).
    pub final_loss: f64,
    /// Held-out position statements: share of the relation slots the heads answer right
    /// (which object is on the left, right, above, below: colour and shape).
    pub relation_accuracy: f64,
    /// Held-out position pairs: mean cosine of their two statements' global embeddings
    /// (near 1: the relation word is not read).
    pub position_statement_cosine: f64,
    /// Held-out colour pairs: the same for their statements.
    pub colour_statement_cosine: f64,
}

/// The texts of step `step` (a pure function of the seed and the step): half of them the
/// statements of position pairs (the only texts whose heads' answers turn on the
/// relation word), a quarter the statements of pairs of the other patterns, a quarter
/// the global captions of random scenes (most of which state a relation).
pub fn text_batch(seed: u64, step: u64, n: usize) -> Vec<String> {
    let mut rng = SceneRng::new(crate::util::rng::derive_seed(seed ^ 0x7e47, step + 1));
    let mut texts = Vec::with_capacity(n + 1);
    while texts.len() < n {
        match texts.len() * 4 / n.max(1) {
            0 | 1 => texts.extend(ScenePair::generate(MmvpPattern::Position, &mut rng).statements),
            2 => {
                let pattern = super::data::pick_pattern(&mut rng);
                texts.extend(ScenePair::generate(pattern, &mut rng).statements);
            }
            _ => texts.push(crate::scenes::Scene::random(&mut rng).caption()),
        }
    }
    texts.truncate(n);
    texts
}

/// Mean cosine of the global text embeddings of the two statements of `pairs` pairs of
/// `pattern` drawn from `rng`.
fn statement_cosine(
    model: &DemoModel,
    perspectives: &PerspectiveSet,
    pattern: MmvpPattern,
    pairs: usize,
    rng: &mut SceneRng,
) -> Result<(f64, Vec<String>), TrainError> {
    let texts: Vec<String> = (0..pairs)
        .flat_map(|_| ScenePair::generate(pattern, rng).statements)
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (emb, _) = model.embed_texts(&refs, perspectives, &[])?;
    let global = emb.narrow(1, 0, 1)?.squeeze(1)?;
    let unit = global.broadcast_div(&global.sqr()?.sum_keepdim(1)?.sqrt()?)?;
    let rows = unit.to_vec2::<f32>()?;
    let total: f64 = rows
        .chunks(2)
        .map(|p| {
            p[0].iter()
                .zip(&p[1])
                .map(|(a, b)| (a * b) as f64)
                .sum::<f64>()
        })
        .sum();
    Ok((total / pairs.max(1) as f64, texts))
}

/// Trains `model`'s language model and soft prompts with the text `heads` for
/// `settings.steps` steps on [`text_batch`]es (the tower and projector are untouched),
/// then scores held-out texts ([`TextSummary`]) and writes `model.safetensors`,
/// `config.json`, the heads and `text.json` into `out`. Streams [`TrainEvent::Step`]
/// reports (loss and accuracy: the text heads'). A non-finite loss or gradient stops it
/// with [`TrainError::Diverged`]. Runs on rayon's global pool.
pub fn pretrain_text(
    model: &mut DemoModel,
    heads: &SceneHeads,
    settings: &TextSettings,
    out: &Path,
    control: &TrainControl,
    events: &Option<SyncSender<TrainEvent>>,
) -> Result<TextSummary, TrainError> {
    crate::util::on_compute_pool(|| {
        pretrain_text_inner(model, heads, settings, out, control, events)
    })
}

fn pretrain_text_inner(
    model: &mut DemoModel,
    heads: &SceneHeads,
    settings: &TextSettings,
    out: &Path,
    control: &TrainControl,
    events: &Option<SyncSender<TrainEvent>>,
) -> Result<TextSummary, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let perspectives = model.config().perspectives.clone();
    let mut vars: Vec<(String, candle_core::Var, bool)> = model
        .make_trainable_where(|name| name.starts_with("lm.") || name.starts_with("soft."))?
        .into_iter()
        .map(|(name, var)| {
            let decay = var.rank() == 2 && !name.ends_with(".pos") && !name.starts_with("soft.");
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
    let mut recent: Vec<f64> = Vec::new();
    let mut step = 0;
    while step < settings.steps {
        if control.stop.load(Ordering::Relaxed)
            || (settings.time_budget_s > 0 && started.elapsed().as_secs() >= settings.time_budget_s)
        {
            break;
        }
        let t0 = Instant::now();
        let texts = text_batch(settings.seed, step, settings.batch);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (emb, _) = model.embed_texts(&refs, &perspectives, &[])?;
        let (loss, scored) = heads.text_loss(&emb, &refs)?;
        let diverged = |what: &str| TrainError::Diverged {
            step: step + 1,
            what: what.into(),
            kept: format!("nothing was saved to {}", out.display()),
        };
        if !scored.loss.is_finite() {
            return Err(diverged("the text pre-training loss"));
        }
        let grads = loss.backward()?;
        let norm = optim.grad_norm(&grads)?;
        if !norm.is_finite() {
            return Err(diverged("the gradient norm"));
        }
        step += 1;
        let lr = settings.lr_at(step);
        optim.step_clipped(&grads, lr, norm, settings.clip)?;
        recent.push(scored.loss);
        if recent.len() > 20 {
            recent.remove(0);
        }
        emit(
            events,
            TrainEvent::Step(Box::new(StepReport {
                step,
                total_steps: settings.steps,
                loss: scored.loss,
                accuracy: scored.accuracy,
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
                text_heads: Some(scored),
            })),
        );
    }
    model.freeze();
    let seconds = started.elapsed().as_secs_f64();
    // Held out: a seed the training stream never draws.
    let mut rng = SceneRng::new(crate::util::rng::derive_seed(settings.seed ^ 0x4e1d, 0));
    let (position_statement_cosine, statements) =
        statement_cosine(model, &perspectives, MmvpPattern::Position, 100, &mut rng)?;
    let (colour_statement_cosine, _) =
        statement_cosine(model, &perspectives, MmvpPattern::Colour, 100, &mut rng)?;
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    let (emb, _) = model.embed_texts(&refs, &perspectives, &[])?;
    let (_, held_out) = heads.text_loss(&emb, &refs)?;
    let summary = TextSummary {
        steps_done: step,
        seconds,
        final_loss: if recent.is_empty() {
            f64::NAN
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        },
        relation_accuracy: held_out.accuracy,
        position_statement_cosine,
        colour_statement_cosine,
    };
    model.save(out)?;
    heads.save(&out.join(heads.file_name()))?;
    let path = out.join(TEXT_SUMMARY_FILE);
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

/// The text stage's record in its folder (`OUT/text/`): its settings and [`TextSummary`].
pub const TEXT_SUMMARY_FILE: &str = "text.json";

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::demo::DemoConfig;
    use crate::train::heads::text_targets;

    fn tiny_model() -> DemoModel {
        let words = crate::scenes::vocabulary();
        let mut c = DemoConfig::new(&words, DemoConfig::default_perspectives(4));
        c.stem_channels = [8, 16];
        c.vision_width = 32;
        c.vision_layers = 1;
        c.hidden = 32;
        c.layers = 1;
        c.mlp = 64;
        DemoModel::random(c, 5, &Device::Cpu).unwrap()
    }

    #[test]
    fn a_text_batch_is_seeded_and_half_of_it_states_a_relation_the_heads_read() {
        let a = text_batch(7, 3, 20);
        assert_eq!(a, text_batch(7, 3, 20));
        assert_ne!(a, text_batch(7, 4, 20));
        assert_eq!(a.len(), 20);
        // The first half are position statements, in pairs: each names a relation whose
        // slots the text heads read, and the two statements of a pair get different ones.
        for pair in a[..10].chunks(2) {
            let (x, y) = (text_targets(&pair[0]), text_targets(&pair[1]));
            assert!(x[..8].iter().any(|&c| c > 0), "{}", pair[0]);
            assert_ne!(x[..8], y[..8], "{pair:?}");
        }
    }

    #[test]
    fn text_pretraining_moves_only_the_language_model_and_lowers_the_heads_loss() {
        let mut model = tiny_model();
        let before = model.params().clone();
        let c = model.config().clone();
        let heads = SceneHeads::for_text(&c.perspectives, c.hidden, &Device::Cpu)
            .unwrap()
            .cosine(10.0, 1)
            .unwrap();
        let settings = TextSettings {
            steps: 40,
            batch: 16,
            lr: 3e-3,
            warmup: 2,
            ..text_settings()
        };
        let dir = std::env::temp_dir().join(format!("agff-text-{}", std::process::id()));
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let summary = pretrain_text(
            &mut model,
            &heads,
            &settings,
            &dir,
            &TrainControl::default(),
            &Some(tx),
        )
        .unwrap();
        assert_eq!(summary.steps_done, 40);
        let losses: Vec<f64> = rx
            .try_iter()
            .filter_map(|e| match e {
                TrainEvent::Step(r) => Some(r.loss),
                _ => None,
            })
            .collect();
        assert_eq!(losses.len(), 40);
        let first: f64 = losses[..5].iter().sum();
        let last: f64 = losses[35..].iter().sum();
        assert!(last < first, "loss did not fall: {losses:?}");
        for (name, t) in model.params() {
            let moved = crate::model::testing::max_abs_diff(t, &before[name]) > 0.0;
            let trained = name.starts_with("lm.") || name.starts_with("soft.");
            // The tower and projector stay. The language model's layers move, and so do the
            // soft prompts of the perspectives that have text tasks (`spatial`, `text`);
            // those of `attributes` and `count` get no gradient here.
            let asked = ["soft.spatial", "soft.text"].contains(&name.as_str());
            if !trained {
                assert!(!moved, "{name} moved");
            } else if name.starts_with("lm.layers.") || asked {
                assert!(moved, "{name} did not move");
            }
        }
        assert!((0.0..=1.0).contains(&summary.relation_accuracy));
        for cos in [
            summary.position_statement_cosine,
            summary.colour_statement_cosine,
        ] {
            assert!(
                cos.is_finite() && (-1.0001..=1.0001).contains(&cos),
                "{cos}"
            );
        }
        // Saved: the model and the heads, which load back equal.
        let back = DemoModel::load(&dir, &Device::Cpu).unwrap();
        let d = crate::model::testing::max_abs_diff(
            &back.params()["lm.embed"],
            &model.params()["lm.embed"],
        );
        assert_eq!(d, 0.0);
        let mut again = SceneHeads::for_text(&c.perspectives, c.hidden, &Device::Cpu).unwrap();
        again.load(&dir.join(heads.file_name())).unwrap();
        for ((n, a, _), (_, b, _)) in heads.vars().iter().zip(again.vars()) {
            let d = crate::model::testing::max_abs_diff(a.as_tensor(), b.as_tensor());
            assert_eq!(d, 0.0, "{n}");
        }
        assert!(dir.join(TEXT_SUMMARY_FILE).is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
