//! The desktop app driven like a person would, headless: wgpu on lavapipe (Mesa's software
//! Vulkan), no window. Snapshots of the main views live in tests/snapshots/
//! (`UPDATE_SNAPSHOTS=1 cargo test --test integration app::` rewrites them after a deliberate change).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agff_lens::app::{AppOptions, LensApp, Picker, Tab};
use agff_lens::explain::Method;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};

/// A file dropped on the window.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// Hands the app fixed paths instead of opening dialogs.
struct FixedPicker {
    folder: Option<PathBuf>,
    image: Option<PathBuf>,
}

impl FixedPicker {
    /// A picker whose dialogs are always cancelled.
    fn none() -> Self {
        FixedPicker {
            folder: None,
            image: None,
        }
    }
}

impl Picker for FixedPicker {
    fn pick_folder(&mut self) -> Option<PathBuf> {
        self.folder.clone()
    }
    fn pick_image(&mut self) -> Option<PathBuf> {
        self.image.clone()
    }
}

fn cache_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("app-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The app on 48 demo scenes with nothing to pick, with its own cache folder, once their
/// gallery is indexed.
fn demo_gallery(name: &str) -> Harness<'static, LensApp> {
    let mut h = build(AppOptions {
        picker: Box::new(FixedPicker::none()),
        cache_dir: Some(cache_dir(name)),
        autostart: true,
        demo_scenes: 48,
        persist: false,
        device: Default::default(),
        ..AppOptions::default()
    });
    step_until(&mut h, "the demo gallery", |a| {
        a.gallery.is_some() && !a.busy()
    });
    h
}

fn build(options: AppOptions) -> Harness<'static, LensApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .wgpu()
        .build_eframe(move |cc| LensApp::new(cc, options))
}

/// Steps the UI until `done` holds (the worker runs on its own thread meanwhile).
fn step_until(h: &mut Harness<'_, LensApp>, what: &str, done: impl Fn(&LensApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}; log: {:?}",
            h.state().log.iter().map(|l| &l.text).collect::<Vec<_>>()
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let layout settle after the last event.
    for _ in 0..3 {
        h.step();
    }
}

fn snapshot_options() -> SnapshotOptions {
    // Timings ("… in 12 ms") differ between runs; everything else should match.
    SnapshotOptions::new().max_failed_pixels(2500)
}

/// Snapshot with the log panel masked (it holds timings and the run folder's path).
fn snapshot(h: &mut Harness<'_, LensApp>, name: &str) {
    for _ in 0..3 {
        h.step();
    }
    let screen = h.ctx.content_rect();
    h.mask(egui::Rect::from_min_max(
        egui::pos2(screen.min.x, screen.max.y - 100.0),
        screen.max,
    ));
    h.snapshot_options(name, &snapshot_options());
}

#[test]
fn search_select_and_switch_perspective() {
    let mut h = demo_gallery("search");
    let gallery = h.state().gallery.clone().expect("gallery");
    assert_eq!(gallery.images, 48);
    assert!(gallery.skipped.is_empty());

    // Type a query and press Enter.
    let field = h.get_by_role_and_label(Role::TextInput, "Query:");
    field.click();
    field.type_text("a red circle");
    h.step();
    h.key_press(egui::Key::Enter);
    step_until(&mut h, "results and the inspector", |a| {
        a.results.is_some() && a.inspector.is_some() && !a.busy()
    });
    let app = h.state();
    let results = &app.results.as_ref().unwrap().results;
    assert_eq!(results.items.len(), 40, "top 40 by default");
    for pair in results.items.windows(2) {
        assert!(pair[0].hit.score >= pair[1].hit.score, "best first");
    }
    let ins = app.inspector.as_ref().unwrap();
    assert_eq!(ins.result.target, results.items[0].hit.index);
    // The inspector offers the fused map, one per perspective and one per pattern.
    let names = ins.map_names();
    assert_eq!(names[0], "fused");
    for p in &app.perspectives.perspectives {
        assert!(names.contains(&p.name), "{} in {names:?}", p.name);
    }
    for m in ["GG", "FG", "GF", "FF"] {
        assert!(names.contains(&m.to_string()));
    }
    // Each perspective's map is its own (not a copy of the fused one).
    let e = &ins.result.explanation;
    let spatial = e
        .perspective_maps
        .iter()
        .find(|m| m.name == "spatial")
        .expect("a spatial map");
    assert_eq!(spatial.values.len(), e.fused_map.values.len());
    assert_ne!(spatial.values, e.fused_map.values);
    // The runner-up comparison compares with result 2.
    let (j, _, _, cmp) = ins.result.runner_up.as_ref().expect("runner-up");
    assert_eq!(*j, results.items[1].hit.index);
    // The comparison's scores are the grid's scores.
    assert!((cmp.a.fused - results.items[0].hit.score).abs() < 1e-4);
    assert!((cmp.b.fused - results.items[1].hit.score).abs() < 1e-4);
    assert!((cmp.fused_diff - (cmp.a.fused - cmp.b.fused)).abs() < 1e-6);
    snapshot(&mut h, "app_search");

    // Select the third result by clicking it.
    h.get_by_label("result 3").click();
    step_until(&mut h, "the third result's explanation", |a| {
        a.selected == Some(2)
            && a.inspector.as_ref().is_some_and(|i| {
                i.loading_for.is_none()
                    && i.result.target == a.results.as_ref().unwrap().results.items[2].hit.index
            })
            && !a.busy()
    });
    // Its runner-up is the top result.
    let app = h.state();
    let top = app.results.as_ref().unwrap().results.items[0].hit.index;
    assert_eq!(
        app.inspector
            .as_ref()
            .unwrap()
            .result
            .runner_up
            .as_ref()
            .unwrap()
            .0,
        top
    );

    // Arrow keys move through the results (the query field must not have focus).
    h.get_by_label("result 3").click();
    h.step();
    h.key_press(egui::Key::ArrowRight);
    step_until(&mut h, "the fourth result", |a| {
        a.selected == Some(3) && !a.busy()
    });

    // Switch the map to the spatial perspective.
    // The map tabs come first; the perspective bars below repeat the names.
    h.get_all_by_label("spatial")
        .next()
        .expect("a spatial map tab")
        .click();
    h.step();
    assert_eq!(h.state().map_choice, "spatial");
    snapshot(&mut h, "app_inspector_spatial");

    // Pick the mean-baseline method in the inspector: the maps are made again with it.
    let before = h
        .state()
        .inspector
        .as_ref()
        .unwrap()
        .result
        .explanation
        .clone();
    assert_eq!(before.method, Method::Attribution);
    h.get_by_role_and_label(Role::ComboBox, "method").click();
    h.step();
    h.step();
    h.get_by_label("mean-baseline").click();
    step_until(&mut h, "the mean-baseline maps", |a| {
        a.inspector.as_ref().is_some_and(|i| {
            i.loading_for.is_none() && i.result.explanation.method == Method::MeanBaseline
        }) && !a.busy()
    });
    let app = h.state();
    assert_eq!(app.settings.method(), Method::MeanBaseline);
    let after = &app.inspector.as_ref().unwrap().result.explanation;
    assert_eq!(
        after.scores, before.scores,
        "the same result, its maps made again"
    );
    assert_ne!(after.fused_map.values, before.fused_map.values);
}

/// "Stop and save" ends a fine-tune early, and its run is applied as a finished one's is:
/// no failure, the held-out query ranked after it, the gallery embedded again.
#[test]
fn stop_and_save_applies_the_run_so_far() {
    let mut h = demo_gallery("train-stop");
    h.get_by_label("Fine-tune").click();
    h.step();
    {
        let s = &mut h.state_mut().settings;
        s.steps = 10_000;
        s.batch = 8;
    }
    h.get_by_label("Start").click();
    h.step();
    step_until(&mut h, "two steps", |a| a.training.losses.len() >= 2);
    h.get_by_label("Stop and save").click();
    h.step();
    step_until(&mut h, "the stopped fine-tune", |a| {
        !a.training.running && !a.busy()
    });
    let log: Vec<&String> = h.state().log.iter().map(|l| &l.text).collect();
    assert!(
        log.iter().all(|t| !t.contains("failed")),
        "stopping is not a failure: {log:?}"
    );
    let t = &h.state().training;
    assert!(t.losses.len() < 10_000, "stopped early");
    assert!(t.after.is_some(), "ranked after the run: {log:?}");
    assert!(t.last_run.is_some());
    let indexed = log
        .iter()
        .filter(|t| t.starts_with("indexed 48 images (48 embedded"))
        .count();
    assert_eq!(
        indexed, 2,
        "the gallery embedded again with the run: {log:?}"
    );
}

#[test]
fn a_fine_tune_folder_with_an_unreadable_image_fails_naming_it() {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("train-data-with-a-bad-image");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    for (name, colour) in [("a", [200, 10, 10]), ("b", [10, 10, 200])] {
        image::RgbImage::from_pixel(16, 16, image::Rgb(colour))
            .save(data.join(format!("{name}.png")))
            .unwrap();
        std::fs::write(data.join(format!("{name}.txt")), "a square").unwrap();
    }
    std::fs::write(data.join("broken.png"), "not an image").unwrap();
    std::fs::write(data.join("broken.txt"), "a circle").unwrap();

    let mut h = demo_gallery("train-bad-folder");
    h.get_by_label("Fine-tune").click();
    h.step();
    {
        let app = h.state_mut();
        app.training.use_folder = true;
        app.settings.train_folder = data.display().to_string();
        app.settings.steps = 4;
    }
    h.get_by_label("Start").click();
    h.step();
    step_until(&mut h, "the refused fine-tune", |a| {
        !a.training.running && !a.busy()
    });
    let log = &h.state().log;
    assert!(
        log.iter().any(|l| l.error
            && l.text.contains("1 of 3 captioned images cannot be read")
            && l.text.contains("broken.png")),
        "{log:?}"
    );
    assert!(h.state().training.losses.is_empty(), "no step was run");
}

#[test]
fn fine_tune_runs_a_few_steps() {
    let mut h = demo_gallery("train");
    // Dropping a gallery image on the window searches with it: it finds itself first.
    let image = h
        .state()
        .gallery
        .as_ref()
        .unwrap()
        .root
        .join("scene_00007.png");
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(image.clone())));
    h.step();
    step_until(&mut h, "the image query's results", |a| {
        a.results.is_some() && !a.busy()
    });
    let results = &h.state().results.as_ref().unwrap().results;
    assert_eq!(h.state().query_image.as_deref(), Some(image.as_path()));
    assert_eq!(results.items[0].path, image);
    // Same image: the global views match, and so does each perspective with itself.
    let similarities = results.items[0].hit.similarities;
    assert!((similarities[0] - 1.0).abs() < 1e-3, "GG {similarities:?}");
    assert!((similarities[3] - 1.0).abs() < 1e-3, "FF {similarities:?}");

    h.get_by_label("Fine-tune").click();
    h.step();
    assert_eq!(h.state().tab, Tab::FineTune);
    {
        let s = &mut h.state_mut().settings;
        s.steps = 4;
        s.batch = 8;
    }
    h.get_by_label("Start").click();
    h.step();
    assert!(h.state().training.running, "Start starts a run");
    step_until(&mut h, "the fine-tune", |a| {
        !a.training.running && !a.busy()
    });
    let t = &h.state().training;
    assert_eq!(
        t.losses.len(),
        4,
        "one loss point a step: {}; log: {:?}",
        t.status,
        h.state().log.iter().map(|l| &l.text).collect::<Vec<_>>()
    );
    assert!(t.losses.iter().all(|p| p[1].is_finite()));
    let last = t.last.as_ref().expect("a step report");
    assert_eq!(last.batch, 8);
    assert_eq!(last.similarity.len(), 64);
    assert_eq!(last.thumbnails.len(), 8);
    // Each query shows its hard negatives with P, h and 1 + α·h.
    let alpha = h.state().settings.alpha as f32;
    for negs in &last.hard_negatives {
        assert!(!negs.is_empty());
        for n in negs {
            assert!((0.0..=1.0).contains(&n.prob));
            assert!((n.amplification - (1.0 + alpha * n.hardness)).abs() < 1e-4);
        }
    }
    // The held-out query was ranked before and after.
    let before = t.before.as_ref().expect("ranking before");
    let after = t.after.as_ref().expect("ranking after");
    assert_eq!(before.top.len(), 5);
    assert_eq!(after.top.len(), 5);
    // ... each with a thumbnail per result for the before/after strips.
    assert_eq!(before.thumbs.len(), 5);
    assert_eq!(after.thumbs.len(), 5);
    assert!(t.status.starts_with("finished"), "{}", t.status);
    // The tuned soft prompts are part of the cache key: the gallery was embedded again.
    let indexed: Vec<&String> = h
        .state()
        .log
        .iter()
        .map(|l| &l.text)
        .filter(|t| t.starts_with("indexed 48 images (48 embedded"))
        .collect();
    assert_eq!(indexed.len(), 2, "{:?}", h.state().log);
    // "Save run to…" copies the trained prompts, perspectives and fusion to the folder.
    let saved = h.state().training.last_run.clone().expect("the run folder");
    assert!(saved.join("fusion.json").is_file());
    // Its learning curve, a line a step.
    let curve = std::fs::read_to_string(saved.join(agff_lens::train::STEPS_FILE)).unwrap();
    assert_eq!(curve.lines().count(), 4, "{curve}");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-train-saved");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target).unwrap();
    h.state_mut().set_picker(Box::new(FixedPicker {
        folder: Some(target.clone()),
        image: None,
    }));
    h.get_by_label("Save run to…").click();
    h.step();
    for f in [
        "fusion.json",
        "perspectives.json",
        "soft_prompts.safetensors",
    ] {
        assert!(target.join(f).is_file(), "{f} saved");
    }
    snapshot(&mut h, "app_fine_tune");

    // A word the demo model does not know and an emoji are reported, and the search
    // still runs. The app draws what no font has as a box (kittest makes a missing glyph
    // panic, to catch our own labels; a user's emoji is not ours to draw).
    h.ctx
        .set_missing_glyph_policy(egui::epaint::text::MissingGlyphPolicy::Tofu);
    {
        let app = h.state_mut();
        app.tab = Tab::Search;
        app.query_image = None;
        app.query_text = "a red zebra 😀".into();
        app.search();
    }
    step_until(&mut h, "the zebra search", |a| {
        !a.busy()
            && a.results
                .as_ref()
                .is_some_and(|r| r.results.warnings.len() == 2)
    });
    for says in ["does not know these words: zebra", "drops them: “😀”"] {
        assert!(
            h.state()
                .log
                .iter()
                .any(|l| l.error && l.text.contains(says)),
            "{says}: {:?}",
            h.state().log
        );
    }

    // A query of invisible characters fails the job with the reason and keeps the
    // previous results.
    {
        let app = h.state_mut();
        app.query_text = "\u{200B}".into();
        app.search();
    }
    step_until(&mut h, "the invisible search", |a| !a.busy());
    assert!(
        h.state()
            .log
            .iter()
            .any(|l| l.error && l.text.contains("only invisible characters (U+200B)")),
        "{:?}",
        h.state().log
    );
    assert!(h.state().results.is_some(), "the zebra results are kept");
}

#[test]
fn a_hugging_face_folder_loads_indexes_and_explains() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3vl");
    let mut h = build(AppOptions {
        picker: Box::new(FixedPicker {
            folder: Some(fixtures.join("images")),
            image: None,
        }),
        cache_dir: Some(cache_dir("qwen")),
        autostart: false,
        demo_scenes: 0,
        persist: false,
        device: Default::default(),
        ..AppOptions::default()
    });
    // A folder that does not exist: the error names it, nothing else changes.
    h.state_mut().model_field = "tests/fixtures/no-such-model".into();
    h.get_by_label("Load").click();
    h.step();
    step_until(&mut h, "the load to fail", |a| !a.busy());
    let err = h
        .state()
        .status_error
        .clone()
        .expect("an error in the status line");
    assert!(err.contains("no-such-model"), "{err}");
    assert!(h.state().model_name.is_none());

    // The tiny Qwen3-VL checkpoint (real folder format) by path, with the released
    // embedder's preprocessing and a smaller pixel budget chosen in the settings.
    h.state_mut().model_field = fixtures.join("tiny-a").display().to_string();
    h.state_mut().settings.preprocess = "embedder".into();
    h.state_mut().settings.max_pixels = 200_704;
    h.get_by_label("Load").click();
    h.step();
    step_until(&mut h, "the Qwen3-VL model", |a| {
        a.model_name.is_some() && !a.busy()
    });
    assert!(
        h.state()
            .log
            .iter()
            .any(|l| l.text.contains("images: embedder 4096..200704 pixels")),
        "{:?}",
        h.state().log
    );
    h.get_by_label("Open folder…").click();
    h.step();
    step_until(&mut h, "the photos", |a| a.gallery.is_some() && !a.busy());
    let images = h.state().gallery.as_ref().unwrap().images;
    assert!(images >= 2, "{images} images");
    {
        let app = h.state_mut();
        app.query_text = "a photo of a dog".into();
        app.search();
    }
    step_until(&mut h, "results and the inspector", |a| {
        a.results.is_some() && a.inspector.is_some() && !a.busy()
    });
    let app = h.state();
    assert!(app.status_error.is_none(), "{:?}", app.status_error);
    assert_eq!(app.results.as_ref().unwrap().results.items.len(), images);
    let e = &app.inspector.as_ref().unwrap().result.explanation;
    assert_eq!(
        e.perspective_maps.len(),
        app.perspectives.perspectives.len()
    );
    assert!(e.fused_map.values.iter().all(|v| v.is_finite()));
}

#[test]
fn a_device_that_is_not_built_in_is_reported_not_panicked_on() {
    let mut h = build(AppOptions {
        picker: Box::new(FixedPicker::none()),
        cache_dir: Some(cache_dir("device")),
        autostart: true,
        demo_scenes: 8,
        persist: false,
        device: agff_lens::model::DeviceChoice::Metal(0),
        ..AppOptions::default()
    });
    step_until(&mut h, "both start-up jobs to end", |a| !a.busy());
    let app = h.state();
    assert!(app.model_name.is_none());
    assert!(app.gallery.is_none());
    let errors: Vec<&String> = app
        .log
        .iter()
        .filter(|l| l.error)
        .map(|l| &l.text)
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("metal")),
        "the load error names the device: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("no model is loaded")),
        "indexing says why it cannot run: {errors:?}"
    );
}

#[test]
fn start_view_shows_the_gallery_and_example_queries() {
    let mut h = demo_gallery("start");
    // Before any search: the gallery as thumbnails, and the demo model's examples.
    assert_eq!(h.state().preview.len(), 48);
    assert!(h.state().results.is_none());
    snapshot(&mut h, "app_start");
    h.get_by_label("count: “two blue squares”").click();
    h.step();
    step_until(&mut h, "the example's results", |a| {
        a.results.is_some() && !a.busy()
    });
    let app = h.state();
    assert_eq!(app.query_text, "two blue squares");
    let results = &app.results.as_ref().unwrap().results;
    assert_eq!(
        results.query,
        agff_lens::app::worker::Query::Text("two blue squares".into())
    );
    assert!(!results.items.is_empty());
}

#[test]
fn pairs_view_scores_every_pattern_with_maps() {
    let mut h = build(AppOptions {
        picker: Box::new(FixedPicker::none()),
        cache_dir: Some(cache_dir("pairs")),
        demo_scenes: 8,
        persist: false,
        view: Tab::Pairs,
        ..AppOptions::default()
    });
    step_until(&mut h, "the pairs", |a| a.pairs.is_some() && !a.busy());
    let app = h.state();
    assert_eq!(app.tab, Tab::Pairs);
    let result = &app.pairs.as_ref().unwrap().result;
    // Three pairs of each of the nine patterns.
    assert_eq!(result.pairs.len(), 27);
    assert_eq!(result.summary.len(), 10);
    assert_eq!(result.summary[9].0, "average");
    for m in 0..5 {
        // The average is the mean of the nine patterns, as in `eval pmmvp`.
        let mean = result.summary[..9].iter().map(|r| r.1[m]).sum::<f64>() / 9.0;
        assert!((result.summary[9].1[m] - mean).abs() < 1e-9);
    }
    for pair in &result.pairs {
        let o = &pair.outcome;
        // The fused verdict is MMVP's rule applied to the 2×2 fused table.
        let fused = |s: usize, i: usize| o.scores[s][i].fused;
        assert_eq!(
            o.correct[0],
            fused(0, 0) > fused(0, 1) && fused(1, 1) > fused(1, 0)
        );
        for m in &o.maps {
            assert_eq!(m.values.len(), m.rows * m.cols);
            assert!(m.values.iter().all(|v| v.is_finite()));
        }
        assert_eq!(pair.overlays[0].width, pair.images[0].width);
    }
    snapshot(&mut h, "app_pairs");
}

#[test]
fn map_view_projects_the_gallery_and_inspects_a_point() {
    let mut h = build(AppOptions {
        picker: Box::new(FixedPicker::none()),
        cache_dir: Some(cache_dir("map")),
        demo_scenes: 48,
        persist: false,
        view: Tab::Map,
        query: Some("a red circle".into()),
        ..AppOptions::default()
    });
    step_until(&mut h, "the map with the query", |a| {
        a.map.as_ref().is_some_and(|m| m.result.query.is_some()) && !a.busy()
    });
    {
        let m = &h.state().map.as_ref().unwrap().result;
        assert_eq!(m.projection.points.len(), 48);
        assert_eq!(m.thumbs.len(), 48);
        assert_eq!(m.scores.len(), 48);
        assert!(m.scores.iter().all(|s| s.is_finite()));
        assert_eq!(m.slot_name, "global");
        // A scene folder: points can be coloured by its metadata.
        let setting = m
            .fields
            .iter()
            .find(|(n, _)| n == "setting")
            .expect("setting");
        assert_eq!(setting.1.len(), 48);
        assert!(setting.1.iter().all(|v| v != "?"));
    }
    snapshot(&mut h, "app_map");
    // A point is inspected for the query.
    h.state_mut().inspect_gallery_item(5);
    step_until(&mut h, "the point's explanation", |a| {
        a.inspector.as_ref().is_some_and(|i| i.result.target == 5) && !a.busy()
    });
    // t-SNE of a fine-grained perspective's space, on the model thread.
    {
        let app = h.state_mut();
        app.map_slot = 2;
        app.map_method = agff_lens::index::projection::ProjectionMethod::Tsne;
        agff_lens::app::map_view::request(app);
    }
    step_until(&mut h, "the t-SNE map", |a| {
        a.map.as_ref().is_some_and(|m| {
            m.result.projection.method == agff_lens::index::projection::ProjectionMethod::Tsne
        }) && !a.busy()
    });
    let m = &h.state().map.as_ref().unwrap().result;
    assert_eq!(m.slot, 2);
    assert!(
        m.projection
            .points
            .iter()
            .all(|p| p[0].is_finite() && p[1].is_finite())
    );
}

#[test]
fn f1_opens_the_shortcut_help() {
    let mut h = build(AppOptions {
        picker: Box::new(FixedPicker::none()),
        cache_dir: Some(cache_dir("help")),
        autostart: false,
        persist: false,
        ..AppOptions::default()
    });
    h.step();
    assert!(!h.state().show_help);
    h.key_press(egui::Key::F1);
    h.step();
    assert!(h.state().show_help);
    h.get_by_label("Keyboard shortcuts");
    h.get_by_label("cancel the running job (indexing, search, training, projection)");
    // Ctrl+3 opens the map view.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Num3);
    h.step();
    assert_eq!(h.state().tab, Tab::Map);
    h.key_press(egui::Key::F1);
    h.step();
    assert!(!h.state().show_help);
}

#[test]
fn compare_mode_ranks_with_two_models_side_by_side() {
    let siglip = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip/tiny");
    let mut h = demo_gallery("compare");
    // A second model from the compare menu: a (tiny, random) SigLIP checkpoint.
    h.get_by_label("compare").click();
    h.run();
    h.state_mut().compare_field = siglip.display().to_string();
    h.get_by_label("Compare").click();
    step_until(&mut h, "the second model and its index", |a| {
        a.compare_name.is_some() && !a.busy()
    });
    assert_eq!(h.state().compare_name.as_deref(), Some("tiny"));
    {
        let app = h.state_mut();
        app.settings.top_k = 12;
        app.query_text = "two blue squares".into();
        app.search();
    }
    step_until(&mut h, "both rankings and the inspector", |a| {
        a.results.is_some()
            && a.inspector
                .as_ref()
                .is_some_and(|i| i.result.compare.is_some())
            && !a.busy()
    });
    let app = h.state();
    let results = app.results.as_ref().unwrap().results.clone();
    let compare = results.compare.clone().expect("the second model's column");
    assert_eq!(results.items.len(), 12);
    assert_eq!(compare.items.len(), 12);
    assert_eq!(compare.model, "tiny");
    let a = &compare.agreement;
    assert_eq!((a.k, a.items), (12, 48));
    assert!((0.0..=1.0).contains(&a.overlap_at_k));
    // The overlap is what the two lists say.
    let shared = compare
        .items
        .iter()
        .filter(|i| results.items.iter().any(|j| j.path == i.path))
        .count();
    assert!((a.overlap_at_k - shared as f64 / 12.0).abs() < 1e-12);
    // SigLIP's scores are its global similarity: best first, one perspective.
    for pair in compare.items.windows(2) {
        assert!(pair[0].hit.score >= pair[1].hit.score);
    }
    assert_eq!(compare.items[0].hit.perspective_sims.len(), 1);
    // The inspector shows the second model's fused map of the same image.
    let c = app
        .inspector
        .as_ref()
        .unwrap()
        .result
        .compare
        .clone()
        .unwrap();
    assert_eq!(c.model, "tiny");
    assert_eq!((c.map.rows, c.map.cols), (4, 4), "SigLIP's 4×4 patch grid");
    assert!(c.map.values.iter().all(|v| v.is_finite()));
    snapshot(&mut h, "app_compare");

    // Clicking a second-model result selects that image in the first model's list when
    // it is there, and says so when it is not.
    let target = compare.items[0].path.clone();
    let in_first = results.items.iter().position(|i| i.path == target);
    h.get_by_label("compare result 1").click();
    h.step();
    match in_first {
        Some(rank) => step_until(&mut h, "the same image selected", |a| {
            a.selected == Some(rank) && !a.busy()
        }),
        None => assert!(
            h.state()
                .log
                .iter()
                .any(|l| l.text.contains("is not in") && l.text.contains("top 12"))
        ),
    }

    // Stop comparing: one column again.
    h.get_by_label("compare").click();
    h.run();
    h.get_by_label("Stop comparing").click();
    step_until(&mut h, "comparing to stop", |a| {
        a.compare_name.is_none() && !a.busy()
    });
    h.state_mut().search();
    step_until(&mut h, "one model's results", |a| {
        a.results.is_some() && !a.busy()
    });
    assert!(
        h.state()
            .results
            .as_ref()
            .unwrap()
            .results
            .compare
            .is_none()
    );
}
