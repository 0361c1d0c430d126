//! The trainer: a short run lowers the loss, runs resume exactly, divergence stops with
//! the last good checkpoint kept, and events carry what the app draws.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use agff_lens::model::demo::DemoModel;
use agff_lens::model::{Backbone, EmbedInput, EmbedOptions};
use agff_lens::train::{TrainControl, TrainError, TrainEvent, TrainSettings, train_demo};
use candle_core::Device;

use crate::common;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agff-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tiny(steps: u64) -> TrainSettings {
    TrainSettings {
        steps,
        batch: 8,
        lr: 3e-3,
        warmup: 2,
        tau: 0.05,
        checkpoint_every: 1000,
        tiny: true,
        ..TrainSettings::default()
    }
}

/// 60 tiny steps whose random scenes all keep their global captions: a tiny model
/// trained from scratch learns their cheap cues (setting, viewpoint) within these steps,
/// while short object queries name objects only, which an untrained tower cannot yet
/// tell apart (with the recipe's share of queries it fell 0.060, 2.791 → 2.731).
fn captions_run() -> TrainSettings {
    TrainSettings {
        query_share: 0.0,
        ..tiny(60)
    }
}

fn run(
    settings: &TrainSettings,
    out: &Path,
    resume: bool,
) -> (
    Result<agff_lens::train::TrainSummary, TrainError>,
    Vec<TrainEvent>,
) {
    let (tx, rx) = sync_channel(10_000);
    let result = train_demo(settings, out, resume, &TrainControl::default(), Some(tx));
    (result, rx.try_iter().collect())
}

fn held_out_loss(dir: &Path) -> f64 {
    use agff_lens::agff::{
        Fusion, FusionInit, PerspectiveEmbeddings, SimilarityConfig, agff_similarities, info_nce,
    };
    let model = DemoModel::load(dir, &Device::Cpu).unwrap();
    let p = model.default_perspectives();
    let mut rng = agff_lens::scenes::SceneRng::new(424_242);
    let scenes: Vec<_> = (0..16)
        .map(|_| agff_lens::scenes::Scene::random(&mut rng))
        .collect();
    let images: Vec<_> = scenes
        .iter()
        .map(agff_lens::scenes::Scene::render)
        .collect();
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let captions: Vec<String> = scenes
        .iter()
        .map(agff_lens::scenes::Scene::caption)
        .collect();
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    let c = PerspectiveEmbeddings::from_raw(model.embed_images(&refs, &p, &[]).unwrap()).unwrap();
    let (t, _) = model.embed_texts(&texts, &p, &[]).unwrap();
    let q = PerspectiveEmbeddings::from_raw(t).unwrap();
    let f = model.trained_fusion().unwrap();
    let fusion = Fusion::new(
        FusionInit {
            theta: f.theta,
            beta: f.beta,
        },
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let s = fusion
        .fuse(
            &agff_similarities(&q, &c, &SimilarityConfig::default())
                .unwrap()
                .similarities,
        )
        .unwrap()
        .scores;
    info_nce(&s, 0.05).unwrap().to_scalar::<f32>().unwrap() as f64
}

fn losses(events: &[TrainEvent]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(r) => Some(r.loss),
            _ => None,
        })
        .collect()
}

#[test]
fn a_short_run_lowers_the_loss_and_reports_hard_negatives() {
    let out = temp("short");
    // The same run interrupted after its first step stands in for the untrained model.
    let start = temp("short-start");
    let (r, _) = run(
        &TrainSettings {
            stop_at: 1,
            ..captions_run()
        },
        &start,
        false,
    );
    r.unwrap();
    let (result, events) = run(&captions_run(), &out, false);
    let summary = result.unwrap();
    assert_eq!(summary.steps_done, 60);
    assert_eq!(losses(&events).len(), 60);
    // InfoNCE on a fixed held-out batch (the curriculum makes later training batches
    // harder, so their own losses are no yardstick).
    let before = held_out_loss(&start);
    let after = held_out_loss(&out);
    eprintln!("held-out loss {before:.3} → {after:.3}");
    assert!(
        after < before - 0.1,
        "held-out loss did not fall: {before:.3} → {after:.3}"
    );

    let TrainEvent::Step(r) = events
        .iter()
        .rev()
        .find(|e| matches!(e, TrainEvent::Step(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(r.similarity.len(), 64);
    assert_eq!(r.hard_negatives.len(), 8);
    for (i, negs) in r.hard_negatives.iter().enumerate() {
        assert_eq!(negs.len(), 3);
        for n in negs {
            assert_ne!(n.index, i);
            assert!((0.0..=1.0).contains(&n.prob) && (0.0..=1.0).contains(&n.hardness));
            // α = 1: amplification is 1 + h.
            assert!((n.amplification - (1.0 + n.hardness)).abs() < 1e-5);
        }
        assert!(negs.windows(2).all(|w| w[0].prob >= w[1].prob));
    }
    let w: f32 = r.similarity_weights.iter().sum();
    assert!((w - 1.0).abs() < 1e-5);

    // The checkpoint loads as a backbone and embeds a scene.
    let model = DemoModel::load(&out, &Device::Cpu).unwrap();
    let scene = agff_lens::scenes::Scene::random(&mut agff_lens::scenes::SceneRng::new(3));
    let e = model
        .embed(
            &EmbedInput::image(scene.render()),
            &model.default_perspectives(),
            &EmbedOptions::default(),
        )
        .unwrap();
    assert_eq!(e.vectors.dims(), &[5, 32]);
    let _ = (
        std::fs::remove_dir_all(&out),
        std::fs::remove_dir_all(&start),
    );
}

/// Runs `settings` straight and interrupted after step 4 then resumed; returns the
/// resumed half's events after checking both runs end with the same weights.
/// Returns the resumed run's events and the uninterrupted run's model provenance.
fn resumes_exactly(settings: &TrainSettings, name: &str) -> (Vec<TrainEvent>, String) {
    let straight = temp(&format!("{name}-straight"));
    let (r, _) = run(settings, &straight, false);
    r.unwrap();

    let split = temp(&format!("{name}-split"));
    // Same schedule as the straight run, interrupted after step 4.
    let (r, _) = run(
        &TrainSettings {
            stop_at: 4,
            ..settings.clone()
        },
        &split,
        false,
    );
    assert!(r.unwrap().stopped_early);
    let (r, events) = run(settings, &split, true);
    assert_eq!(r.unwrap().steps_done, settings.steps);
    assert!(events.iter().any(|e| matches!(
        e,
        TrainEvent::Started {
            resumed_from: 4,
            ..
        }
    )));
    assert_eq!(losses(&events).len(), 2);

    let a = DemoModel::load(&straight, &Device::Cpu).unwrap();
    let b = DemoModel::load(&split, &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for (name, ta) in a.params() {
        worst = worst.max(common::max_abs(ta, &b.params()[name]));
    }
    // Equal only if the weights, the optimiser moments, the fusion and the data stream
    // all survived the interruption.
    assert!(worst < 1e-4, "resumed run differs by {worst}");
    // The learning curve on disk: a line a step, the resumed run continuing the file.
    let (a_curve, b_curve) = (step_log(&straight), step_log(&split));
    let steps: Vec<u64> = (1..=settings.steps).collect();
    assert_eq!(a_curve.iter().map(|c| c.0).collect::<Vec<_>>(), steps);
    assert_eq!(b_curve.iter().map(|c| c.0).collect::<Vec<_>>(), steps);
    for (x, y) in a_curve.iter().zip(&b_curve) {
        assert!(
            (x.1 - y.1).abs() < 1e-4,
            "step {}: loss {} against {}",
            x.0,
            x.1,
            y.1
        );
    }
    let provenance = a.config().provenance.clone();
    let _ = (
        std::fs::remove_dir_all(&straight),
        std::fs::remove_dir_all(&split),
    );
    (events, provenance)
}

/// (step, loss) of each line of a run's `steps.jsonl`.
fn step_log(dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join(agff_lens::train::STEPS_FILE)).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn resuming_gives_the_same_model_as_an_uninterrupted_run() {
    let (events, _) = resumes_exactly(&tiny(6), "plain");
    assert!(events.iter().all(|e| match e {
        TrainEvent::Step(r) => r.scene_heads.is_none(),
        _ => true,
    }));
}

/// With the scene heads on, every step reports their loss, and a resumed run restores
/// them (their weights feed back into the model's gradients, so a lost head would show in
/// the weights).
#[test]
fn scene_heads_report_every_step_and_resume_exactly() {
    let settings = TrainSettings {
        scene_heads: 1.0,
        text_heads: 1.0,
        ..tiny(6)
    };
    heads_report_and_resume(&settings, "heads");
}

/// Cosine text heads beside linear scene heads (`--text-head-scale` alone) train, resume
/// exactly and are named so in the model's provenance, the scene heads as linear.
#[test]
fn cosine_text_heads_beside_linear_scene_heads_resume_exactly() {
    let settings = TrainSettings {
        scene_heads: 1.0,
        text_heads: 1.0,
        text_head_scale: 10.0,
        ..tiny(6)
    };
    let provenance = heads_report_and_resume(&settings, "cosine-text");
    assert!(
        provenance.ends_with(", scene heads 1, text heads 1 (cosine, scale 10)"),
        "{provenance}"
    );
}

/// A text stage (`--text-steps`, here with every extra text task)
/// runs after the tower's and before the contrastive stage, reports its held-out figures,
/// is named in the provenance with the extra tasks, and leaves a run that still
/// resumes exactly (a resumed run does not repeat it).
#[test]
fn a_text_stage_runs_before_the_contrastive_one_and_the_run_resumes_exactly() {
    let settings = TrainSettings {
        text_steps: 5,
        scene_heads: 1.0,
        text_heads: 1.0,
        text_head_scale: 10.0,
        more_text_tasks: true,
        size_text_task: true,
        ..tiny(6)
    };
    let out = temp("text-stage");
    let (r, events) = run(&settings, &out, false);
    r.unwrap();
    let stages: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Stage { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stages, ["text", "contrastive"]);
    assert!(
        events.iter().any(|e| matches!(e,
            TrainEvent::Note(n) if n.contains("5 text steps") && n.contains("relation slots"))),
        "no text-stage note"
    );
    assert!(out.join("text").join("text.json").is_file());
    assert!(out.join("text").join("text_heads.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&out);
    let provenance = heads_report_and_resume(&settings, "text-stage");
    assert!(
        provenance.contains("language model pre-trained on the text tasks 5 steps; "),
        "{provenance}"
    );
    assert!(
        provenance.ends_with(
            "text heads 1 (cosine, scale 10) with the fill-and-colour, viewpoint and size tasks"
        ),
        "{provenance}"
    );
}

/// Checks that every step of a run with both kinds of heads reports both losses and that
/// the run resumes exactly; returns the model's provenance.
fn heads_report_and_resume(settings: &TrainSettings, name: &str) -> String {
    let (events, provenance) = resumes_exactly(settings, name);
    let reports: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(r) => Some([
                r.scene_heads.expect("a step without the heads' loss"),
                r.text_heads.expect("a step without the text heads' loss"),
            ]),
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 2);
    for h in reports.into_iter().flatten() {
        assert!(h.loss.is_finite() && h.loss > 0.0, "{h:?}");
        assert!((0.0..=1.0).contains(&h.accuracy));
    }
    provenance
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let out = temp("nan");
    let settings = TrainSettings {
        lr: 1e30,
        warmup: 0,
        checkpoint_every: 1,
        ..tiny(5)
    };
    let (result, _) = run(&settings, &out, false);
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Diverged { .. }), "{msg}");
    assert!(
        msg.contains("not finite") && msg.contains("last good checkpoint"),
        "{msg}"
    );
    // Whatever was saved is loadable and finite.
    if out.join("model.safetensors").exists() {
        let m = DemoModel::load(&out, &Device::Cpu).unwrap();
        for t in m.params().values() {
            let s = t
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s.is_finite());
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn nothing_to_resume_is_an_error_naming_the_folder() {
    let out = temp("none");
    let (result, _) = run(&tiny(2), &out, true);
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("nothing to resume") && msg.contains("agff-train-none"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_committed_demo_weights_load_embed_a_scene_and_match_captions() {
    let model = DemoModel::embedded(&Device::Cpu).unwrap();
    assert!(model.config().provenance.contains("--recipe demo"));
    let p = model.default_perspectives();
    assert_eq!(p.perspectives.len(), 5);
    let mut rng = agff_lens::scenes::SceneRng::new(31_337);
    let scenes: Vec<_> = (0..10)
        .map(|_| agff_lens::scenes::Scene::random(&mut rng))
        .collect();
    let images: Vec<_> = scenes
        .iter()
        .map(agff_lens::scenes::Scene::render)
        .collect();
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let captions: Vec<String> = scenes
        .iter()
        .map(agff_lens::scenes::Scene::caption)
        .collect();
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    let img = agff_lens::agff::PerspectiveEmbeddings::from_raw(
        model.embed_images(&refs, &p, &[]).unwrap(),
    )
    .unwrap();
    let (t, unknown) = model.embed_texts(&texts, &p, &[]).unwrap();
    assert!(
        unknown.is_empty(),
        "the grammar's words are all known: {unknown:?}"
    );
    let txt = agff_lens::agff::PerspectiveEmbeddings::from_raw(t).unwrap();
    let g_img = img.global().unwrap();
    let g_txt = txt.global().unwrap();
    let sims = g_txt
        .matmul(&g_img.t().unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let own: f32 = (0..10).map(|i| sims[i][i]).sum::<f32>() / 10.0;
    let other: f32 = (0..10)
        .flat_map(|i| (0..10).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| sims[i][j])
        .sum::<f32>()
        / 90.0;
    // Random weights give no gap; the trained model puts a scene's caption clearly closer.
    assert!(own - other > 0.1, "own {own:.3} vs other {other:.3}");
}
