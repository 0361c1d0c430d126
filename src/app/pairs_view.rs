//! The pairs view: MMVP-style pairs (generated P-MMVP pairs, or any folder in the MMVP-VLM
//! layout) where the global view fails and a fine-grained one succeeds, or not. For each
//! pair: the two images with each one's fused map for its own statement, the two
//! statements, the 2×2 fused score table, and for the fused score and each of GG, FG, GF,
//! FF whether both statements pick their own image (MMVP-VLM's scoring). A summary row
//! per pattern, as `agff-lens eval pmmvp` prints it.

use egui::{Color32, RichText, Vec2};

use super::LensApp;
use super::worker::{Job, PairsResult, PairsSource, Picture};

/// Column names of the summary and of the per-pair verdicts.
const METHODS: [&str; 5] = ["fused", "GG", "FG", "GF", "FF"];

/// The pairs view's state: the scored pairs and their pictures.
pub struct PairsView {
    /// The scored pairs and the per-pattern summary.
    pub result: PairsResult,
    /// Per pair: both images with their maps blended over them.
    textures: Vec<[egui::TextureHandle; 2]>,
    /// Show only this pattern (`None`: all).
    pub filter: Option<String>,
}

fn texture(ctx: &egui::Context, name: &str, p: &Picture) -> egui::TextureHandle {
    let image = egui::ColorImage::from_rgb([p.width as usize, p.height as usize], &p.rgb);
    ctx.load_texture(name, image, egui::TextureOptions::LINEAR)
}

impl PairsView {
    /// Uploads each pair's two overlays.
    pub fn new(ctx: &egui::Context, result: PairsResult) -> Self {
        let textures = result
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                [
                    texture(ctx, &format!("pair-{i}-a"), &p.overlays[0]),
                    texture(ctx, &format!("pair-{i}-b"), &p.overlays[1]),
                ]
            })
            .collect();
        Self {
            result,
            textures,
            filter: None,
        }
    }
}

/// Per-pattern pair accuracy, one row per pattern and the average.
fn summary_table(ui: &mut egui::Ui, summary: &[(String, [f64; 5])]) {
    egui::Grid::new("pairs-summary")
        .striped(true)
        .num_columns(6)
        .show(ui, |ui| {
            ui.strong("pattern");
            for m in METHODS {
                ui.strong(m);
            }
            ui.end_row();
            for (name, row) in summary {
                if name == "average" {
                    ui.strong(name);
                } else {
                    ui.label(name);
                }
                for v in row {
                    ui.monospace(format!("{v:5.1}"));
                }
                ui.end_row();
            }
        });
}

/// "right" or "wrong" with a colour.
fn verdict(ui: &mut egui::Ui, ok: bool) {
    let (text, color) = if ok {
        ("right", Color32::from_rgb(80, 190, 90))
    } else {
        ("wrong", Color32::from_rgb(220, 80, 70))
    };
    ui.label(RichText::new(text).color(color).strong());
}

/// Draws the view.
pub fn show(app: &mut LensApp, ui: &mut egui::Ui) {
    ui.heading("Pairs: does the fine-grained view catch what the global one misses?");
    ui.label(
        "Two images that differ in one visual pattern, each with the statement true of it. \
         A method gets a pair right only if both statements pick their own image \
         (MMVP-VLM's scoring). Maps: each image's fused map for its own statement.",
    );
    ui.horizontal(|ui| {
        let label = ui.label("pairs per pattern");
        ui.add(egui::DragValue::new(&mut app.pairs_per_pattern).range(1..=50))
            .labelled_by(label.id);
        if ui.button("Score P-MMVP pairs").clicked() {
            let job = Job::Pairs {
                source: PairsSource::Pmmvp {
                    per_pattern: app.pairs_per_pattern,
                    seed: crate::scenes::eval::PMMVP_SEED,
                },
                method: app.settings.method(),
            };
            app.submit(job);
        }
        if ui
            .button("Open an MMVP-VLM folder…")
            .on_hover_text("a folder with Questions.csv and the images, e.g. the real MMVP-VLM")
            .clicked()
            && let Some(dir) = app.pick_folder()
        {
            let job = Job::Pairs {
                source: PairsSource::Folder(dir),
                method: app.settings.method(),
            };
            app.submit(job);
        }
    });
    let Some(view) = &mut app.pairs else {
        ui.label("Score the pairs to see them here.");
        return;
    };
    ui.label(format!(
        "{} — {} pairs (pair accuracy in %)",
        view.result.source,
        view.result.pairs.len()
    ));
    summary_table(ui, &view.result.summary);
    ui.horizontal(|ui| {
        ui.label("show");
        let mut patterns: Vec<String> = view
            .result
            .pairs
            .iter()
            .map(|p| p.pattern.clone())
            .collect();
        patterns.dedup();
        egui::ComboBox::from_id_salt("pairs-filter")
            .selected_text(view.filter.clone().unwrap_or_else(|| "all patterns".into()))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut view.filter, None, "all patterns");
                for p in patterns {
                    ui.selectable_value(&mut view.filter, Some(p.clone()), p);
                }
            });
    });
    ui.separator();
    let side = 150.0;
    let shown: Vec<usize> = (0..view.result.pairs.len())
        .filter(|&i| {
            view.filter
                .as_ref()
                .is_none_or(|f| *f == view.result.pairs[i].pattern)
        })
        .collect();
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show_rows(ui, side + 12.0, shown.len(), |ui, range| {
            for &i in &shown[range] {
                let pair = &view.result.pairs[i];
                let tex = &view.textures[i];
                ui.horizontal(|ui| {
                    for t in tex {
                        ui.vertical(|ui| {
                            ui.add(
                                egui::Image::from_texture(egui::load::SizedTexture::new(
                                    t.id(),
                                    Vec2::splat(side),
                                ))
                                .fit_to_exact_size(Vec2::splat(side)),
                            );
                        });
                    }
                    ui.vertical(|ui| {
                        ui.set_max_width(ui.available_width().min(520.0));
                        ui.label(RichText::new(&pair.pattern).strong());
                        let o = &pair.outcome;
                        for (k, statement) in pair.statements.iter().enumerate() {
                            ui.label(format!("{}: “{statement}”", ["A", "B"][k]));
                        }
                        egui::Grid::new(("pair-scores", i))
                            .num_columns(3)
                            .show(ui, |ui| {
                                ui.label("fused");
                                ui.strong("image A");
                                ui.strong("image B");
                                ui.end_row();
                                for (srow, name) in
                                    ["statement A", "statement B"].iter().enumerate()
                                {
                                    ui.label(*name);
                                    for c in 0..2 {
                                        let v = o.scores[srow][c].fused;
                                        let text = RichText::new(format!("{v:.4}")).monospace();
                                        // A statement's best image is bold.
                                        let best =
                                            o.scores[srow][c].fused >= o.scores[srow][1 - c].fused;
                                        ui.label(if best { text.strong() } else { text });
                                    }
                                    ui.end_row();
                                }
                            });
                        ui.horizontal(|ui| {
                            for (m, name) in METHODS.iter().enumerate() {
                                ui.label(*name);
                                verdict(ui, o.correct[m]);
                            }
                        });
                    });
                });
                ui.separator();
            }
        });
}
