//! UI-thread frame time of the desktop app with a 10,000-image gallery, while scrolling
//! through 1,000 results: `cargo bench --bench app_frame` (headless, wgpu on lavapipe).
//!
//! The gallery is the demo scene set of that size (rendered and embedded once, then read
//! from the cache in `target/bench-app-cache`). Each frame is one egui pass of the app
//! (layout, painting into shapes, tessellation) after a mouse-wheel step over the results
//! grid; the median and the 95th percentile are printed. With `--render`, each frame is
//! also rasterised by lavapipe, which a real GPU does off the UI thread's critical path.
//! With `--map`, the frames are of the embedding map instead (all points projected by PCA,
//! coloured by the query's fused score), zooming in to thumbnails and back out while
//! panning.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agff_lens::app::{AppOptions, LensApp, Picker};
use egui_kittest::Harness;

struct NoPicker;

impl Picker for NoPicker {
    fn pick_folder(&mut self) -> Option<PathBuf> {
        None
    }
    fn pick_image(&mut self) -> Option<PathBuf> {
        None
    }
}

fn wait(h: &mut Harness<'_, LensApp>, what: &str, done: impl Fn(&LensApp) -> bool) {
    let start = Instant::now();
    let mut last_report = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(3600),
            "timed out waiting for {what}"
        );
        if last_report.elapsed() > Duration::from_secs(10) {
            if let Some(p) = &h.state().progress {
                eprintln!("  {}: {} {}/{}", p.job, p.what, p.done, p.total);
            }
            last_report = Instant::now();
        }
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let render = std::env::args().any(|a| a == "--render");
    let map = std::env::args().any(|a| a == "--map");
    let scenes: usize = std::env::var("AGFF_BENCH_SCENES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-app-cache");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .wgpu()
        .build_eframe(move |cc| {
            LensApp::new(
                cc,
                AppOptions {
                    picker: Box::new(NoPicker),
                    cache_dir: Some(cache),
                    autostart: true,
                    demo_scenes: scenes,
                    persist: false,
                    device: Default::default(),
                    ..AppOptions::default()
                },
            )
        });
    eprintln!("indexing {scenes} demo scenes (cached after the first run)…");
    wait(&mut h, "the gallery", |a| a.gallery.is_some() && !a.busy());
    {
        let app = h.state_mut();
        app.query_text = "a red circle".into();
        app.settings.top_k = 1000;
        app.search();
    }
    wait(&mut h, "1,000 results", |a| {
        a.results.is_some() && a.inspector.is_some() && !a.busy()
    });
    let images = h.state().gallery.as_ref().map_or(0, |g| g.images);
    let results = h
        .state()
        .results
        .as_ref()
        .map_or(0, |r| r.results.items.len());
    // Warm up: upload textures, fill caches.
    for _ in 0..10 {
        h.step();
    }
    if map {
        {
            let app = h.state_mut();
            app.tab = agff_lens::app::Tab::Map;
            agff_lens::app::map_view::request(app);
        }
        wait(&mut h, "the projection", |a| a.map.is_some() && !a.busy());
        for _ in 0..10 {
            h.step();
        }
    }
    let grid = egui::pos2(300.0, 400.0);
    let mut times = Vec::new();
    for frame in 0..400 {
        h.hover_at(grid);
        // Scroll down for 200 frames, then back up (on the map: zoom in, then out).
        let dy = if frame < 200 { -60.0 } else { 60.0 };
        let dy = if map { -dy / 4.0 } else { dy };
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, dy),
            phase: egui::TouchPhase::Move,
            modifiers: egui::Modifiers::NONE,
            source: egui::MouseWheelSource::Wheel,
        });
        let start = Instant::now();
        h.step();
        if render {
            let _ = h.render();
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
        // AGFF_BENCH_SHOT=file.png saves the view after scrolling down, to check it moved.
        if frame == 199
            && let Ok(path) = std::env::var("AGFF_BENCH_SHOT")
            && let Ok(image) = h.render()
        {
            image.save(&path).expect("saving the screenshot");
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"gallery_images\":{images},\"results\":{results},\"map\":{map},\"frames\":{},\"render\":{render},\
         \"median_frame_ms\":{:.3},\"p95_frame_ms\":{:.3},\"max_frame_ms\":{:.3}}}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times[times.len() - 1]
    );
}
