//! The fine-tune view: settings, start/pause/stop, the loss and accuracy curves, the batch
//! similarity matrix, a chosen query's hard negatives with P_ij, h_ij and 1+α·h_ij, and a
//! held-out query's ranking before and after.

use egui::{Color32, RichText, Sense, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::LensApp;
use super::worker::{Job, Ranking, TrainData};
use crate::train::{StepReport, TrainEvent};

/// What the fine-tune view shows.
#[derive(Default)]
pub struct TrainView {
    /// A fine-tune is running (its settings are locked).
    pub running: bool,
    /// Steps of the run (or of its current stage).
    pub total_steps: u64,
    /// (step, loss) of every step so far.
    pub losses: Vec<[f64; 2]>,
    /// (step, batch accuracy) of every step so far.
    pub accuracies: Vec<[f64; 2]>,
    /// The latest step's report (batch matrix, thumbnails, hard negatives).
    pub last: Option<Box<StepReport>>,
    matrix: Option<egui::TextureHandle>,
    thumbs: Vec<egui::TextureHandle>,
    /// Which query of the batch the hard-negative panel shows.
    pub query: usize,
    /// The held-out query's ranking before the run.
    pub before: Option<Ranking>,
    /// The held-out query's ranking after the run.
    pub after: Option<Ranking>,
    /// The held-out rankings' thumbnails (before, after).
    ranking_thumbs: [Vec<egui::TextureHandle>; 2],
    /// Train on [`super::Settings::train_folder`] instead of demo scenes.
    pub use_folder: bool,
    /// The status line under the controls.
    pub status: String,
    /// The folder the last run saved into.
    pub last_run: Option<std::path::PathBuf>,
}

impl TrainView {
    /// Shows a held-out ranking (before or after the run) with its thumbnails.
    pub fn set_ranking(&mut self, ctx: &egui::Context, r: Ranking) {
        let slot = usize::from(r.after);
        self.ranking_thumbs[slot] = r
            .thumbs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                ctx.load_texture(
                    format!("ranking-{slot}-{i}"),
                    egui::ColorImage::from_rgb([p.width as usize, p.height as usize], &p.rgb),
                    egui::TextureOptions::LINEAR,
                )
            })
            .collect();
        if r.after {
            self.after = Some(r);
        } else {
            self.before = Some(r);
            self.after = None;
            self.ranking_thumbs[1].clear();
        }
    }

    /// Updates the view with one trainer event.
    pub fn handle(&mut self, ctx: &egui::Context, event: TrainEvent) {
        match event {
            TrainEvent::Started { total_steps, .. } => {
                self.total_steps = total_steps;
                self.status = format!("running: 0 / {total_steps}");
            }
            TrainEvent::Step(report) => {
                let step = report.step as f64;
                self.losses.push([step, report.loss]);
                self.accuracies.push([step, report.accuracy]);
                self.status = format!(
                    "step {} / {}: loss {:.4}, accuracy {:.2}",
                    report.step, report.total_steps, report.loss, report.accuracy
                );
                self.matrix = Some(matrix_texture(ctx, &report));
                self.thumbs = report
                    .thumbnails
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        ctx.load_texture(
                            format!("batch-{i}"),
                            egui::ColorImage::from_rgb(
                                [t.width() as usize, t.height() as usize],
                                t.as_raw(),
                            ),
                            egui::TextureOptions::LINEAR,
                        )
                    })
                    .collect();
                if self.query >= report.batch {
                    self.query = 0;
                }
                self.last = Some(report);
            }
            TrainEvent::Checkpoint { step, dir } => {
                self.status = format!("saved step {step} in {}", dir.display());
            }
            TrainEvent::Paused => self.status = "paused".into(),
            TrainEvent::Stage { name, total_steps } => {
                self.total_steps = total_steps;
                self.status = format!("{name}: 0 / {total_steps}");
            }
            TrainEvent::Note(line) => self.status = line,
            TrainEvent::Finished(summary) => {
                self.running = false;
                self.last_run = Some(summary.out.clone());
                self.status = format!(
                    "finished: {} steps, loss {:.4}, accuracy {:.2}{}",
                    summary.steps_done,
                    summary.final_loss,
                    summary.final_accuracy,
                    if summary.stopped_early {
                        " (stopped early)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

/// An exponential moving average of a curve (weight 0.1 on each new point), the trend
/// drawn over the raw per-step values.
pub fn smoothed(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let mut avg = None;
    points
        .iter()
        .map(|&[x, y]| {
            let a = match avg {
                Some(a) if y.is_finite() => 0.9 * a + 0.1 * y,
                Some(a) => a,
                None => y,
            };
            avg = Some(a);
            [x, a]
        })
        .collect()
}

/// One held-out ranking as a strip of thumbnails with ranks and scores; with `before`,
/// each image's move since then (up 2, down 1, = or new).
fn ranking_strip(
    ui: &mut egui::Ui,
    label: &str,
    r: &Ranking,
    thumbs: &[egui::TextureHandle],
    before: Option<&Ranking>,
) {
    ui.label(label);
    ui.horizontal_wrapped(|ui| {
        for (i, (path, score)) in r.top.iter().enumerate() {
            ui.vertical(|ui| {
                if let Some(tex) = thumbs.get(i) {
                    ui.add(
                        egui::Image::from_texture(egui::load::SizedTexture::new(
                            tex.id(),
                            Vec2::splat(56.0),
                        ))
                        .fit_to_exact_size(Vec2::splat(56.0)),
                    )
                    .on_hover_text(path.display().to_string());
                }
                let change = before.map(|b| match b.top.iter().position(|(p, _)| p == path) {
                    Some(was) if was > i => {
                        (format!("up {}", was - i), Color32::from_rgb(80, 190, 90))
                    }
                    Some(was) if was < i => {
                        (format!("down {}", i - was), Color32::from_rgb(220, 80, 70))
                    }
                    Some(_) => ("=".to_owned(), Color32::GRAY),
                    None => ("new".to_owned(), Color32::from_rgb(240, 180, 60)),
                });
                ui.horizontal(|ui| {
                    ui.small(format!("#{} {score:.3}", i + 1));
                    if let Some((text, colour)) = change {
                        ui.small(RichText::new(text).color(colour).strong());
                    }
                });
            });
        }
    });
}

/// The batch similarity matrix as a picture (rows: text queries, columns: images),
/// min–max scaled, with the shared colour map.
fn matrix_texture(ctx: &egui::Context, report: &StepReport) -> egui::TextureHandle {
    let b = report.batch.max(1);
    let sim = &report.similarity;
    let (lo, hi) = sim
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut rgb = Vec::with_capacity(b * b * 3);
    for i in 0..b * b {
        let v = sim.get(i).map_or(0.0, |v| (v - lo) / span);
        rgb.extend_from_slice(&crate::explain::ColorMap::Viridis.color(v));
    }
    ctx.load_texture(
        "batch-matrix",
        egui::ColorImage::from_rgb([b, b], &rgb),
        egui::TextureOptions::NEAREST,
    )
}

/// Draws the fine-tune view: settings, start/pause/stop, the curves, the batch and the
/// held-out rankings.
pub fn show(app: &mut LensApp, ui: &mut egui::Ui) {
    ui.heading("Fine-tune (InfoNCE with Explicit Gradient Amplification)");
    let running = app.training.running;
    ui.add_enabled_ui(!running, |ui| {
        egui::Grid::new("train-settings")
            .num_columns(4)
            .show(ui, |ui| {
                let s = &mut app.settings;
                ui.label("data");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut app.training.use_folder, false, "demo scenes");
                    ui.radio_value(&mut app.training.use_folder, true, "folder / JSONL:");
                    ui.add_enabled(
                        app.training.use_folder,
                        egui::TextEdit::singleline(&mut s.train_folder).desired_width(200.0),
                    );
                });
                ui.label("held-out query");
                ui.add(egui::TextEdit::singleline(&mut s.heldout).desired_width(180.0));
                ui.end_row();
                let label = ui.label("EGA α");
                ui.add(
                    egui::DragValue::new(&mut s.alpha)
                        .range(0.0..=10.0)
                        .speed(0.05),
                )
                .labelled_by(label.id);
                let label = ui.label("τ");
                ui.add(
                    egui::DragValue::new(&mut s.tau)
                        .range(0.005..=1.0)
                        .speed(0.005),
                )
                .labelled_by(label.id);
                ui.end_row();
                let label = ui.label("learning rate");
                ui.add(
                    egui::DragValue::new(&mut s.lr)
                        .range(1e-5..=1e-1)
                        .speed(1e-4),
                )
                .labelled_by(label.id);
                let label = ui.label("steps");
                ui.add(egui::DragValue::new(&mut s.steps).range(1..=100_000))
                    .labelled_by(label.id);
                ui.end_row();
                let label = ui.label("batch");
                ui.add(egui::DragValue::new(&mut s.batch).range(2..=128))
                    .labelled_by(label.id);
                ui.label("train");
                ui.horizontal(|ui| {
                    ui.checkbox(&mut s.train_soft, "soft prompts");
                    ui.checkbox(&mut s.train_fusion, "fusion");
                    ui.add_enabled(false, egui::Checkbox::new(&mut false, "LoRA"))
                        .on_disabled_hover_text("no backbone here has LoRA adapters yet");
                });
                ui.end_row();
            });
    });
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!running, egui::Button::new("Start"))
            .clicked()
        {
            start(app);
        }
        let paused = app.worker().is_paused();
        if ui
            .add_enabled(
                running,
                egui::Button::new(if paused { "Resume" } else { "Pause" }),
            )
            .clicked()
        {
            app.worker().set_paused(!paused);
        }
        if ui
            .add_enabled(running, egui::Button::new("Stop and save"))
            .clicked()
        {
            app.worker().cancel();
        }
        if ui
            .add_enabled(
                !running && app.training.last_run.is_some(),
                egui::Button::new("Save run to…"),
            )
            .on_hover_text("copy the trained soft prompts, perspectives and fusion to a folder")
            .clicked()
        {
            save_run(app);
        }
        ui.label(&app.training.status);
    });
    ui.separator();
    let t = &mut app.training;
    ui.columns(2, |cols| {
        let ui = &mut cols[0];
        ui.label("InfoNCE loss and in-batch accuracy");
        Plot::new("train-curves")
            .height(220.0)
            .legend(Legend::default())
            .allow_scroll(false)
            .show(ui, |plot| {
                let faint = |c: Color32| c.gamma_multiply(0.3);
                let (loss_c, acc_c) = (
                    Color32::from_rgb(230, 120, 60),
                    Color32::from_rgb(90, 150, 230),
                );
                plot.line(
                    Line::new("loss (raw)", PlotPoints::from(t.losses.clone()))
                        .color(faint(loss_c)),
                );
                plot.line(
                    Line::new("accuracy (raw)", PlotPoints::from(t.accuracies.clone()))
                        .color(faint(acc_c)),
                );
                plot.line(
                    Line::new("loss", PlotPoints::from(smoothed(&t.losses)))
                        .color(loss_c)
                        .width(2.0),
                );
                plot.line(
                    Line::new("accuracy", PlotPoints::from(smoothed(&t.accuracies)))
                        .color(acc_c)
                        .width(2.0),
                );
            });
        if let Some(before) = &t.before {
            ui.label(format!(
                "held-out query “{}”: top {}",
                before.query,
                before.top.len()
            ));
            ranking_strip(ui, "before", before, &t.ranking_thumbs[0], None);
            match &t.after {
                Some(after) => {
                    ranking_strip(
                        ui,
                        "after (tuned prompts and fusion)",
                        after,
                        &t.ranking_thumbs[1],
                        Some(before),
                    );
                }
                None => {
                    ui.label("after: when the run ends");
                }
            }
        }
        let ui = &mut cols[1];
        let Some(report) = &t.last else {
            ui.label("Start a run to see the batch similarity matrix and its hard negatives.");
            return;
        };
        ui.label(format!(
            "batch similarity (text × image, step {}); diagonal = positives",
            report.step
        ));
        if let Some(m) = &t.matrix {
            let side = 200.0;
            let (rect, resp) = ui.allocate_exact_size(Vec2::splat(side), Sense::click());
            ui.painter().image(
                m.id(),
                rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
            let cell_at = |pos: egui::Pos2| {
                let b = report.batch.max(1);
                let row = ((pos.y - rect.min.y) / side * b as f32) as usize;
                let col = ((pos.x - rect.min.x) / side * b as f32) as usize;
                (row.min(b - 1), col.min(b - 1))
            };
            // Hover a cell to see its two items; click a row to choose the query.
            if let Some(pos) = resp.hover_pos() {
                let (row, col) = cell_at(pos);
                let value = report
                    .similarity
                    .get(row * report.batch + col)
                    .copied()
                    .unwrap_or(f32::NAN);
                let caption = report.captions.get(row).cloned().unwrap_or_default();
                let thumb = t.thumbs.get(col).map(egui::TextureHandle::id);
                resp.clone().on_hover_ui_at_pointer(|ui| {
                    ui.label(format!("text {row}: “{caption}”"));
                    ui.horizontal(|ui| {
                        if let Some(id) = thumb {
                            ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                                id,
                                Vec2::splat(48.0),
                            )));
                        }
                        ui.label(format!(
                            "image {col}{}\nfused score {value:.4}",
                            if row == col { " (its positive)" } else { "" }
                        ));
                    });
                });
            }
            if resp.clicked()
                && let Some(pos) = resp.interact_pointer_pos()
            {
                t.query = cell_at(pos).0;
            }
            let row_h = side / report.batch.max(1) as f32;
            let y = rect.min.y + row_h * t.query as f32;
            ui.painter().rect_stroke(
                egui::Rect::from_min_size(egui::pos2(rect.min.x, y), Vec2::new(side, row_h)),
                0.0,
                egui::Stroke::new(1.5, Color32::WHITE),
                egui::StrokeKind::Outside,
            );
        }
        ui.add(egui::Slider::new(&mut t.query, 0..=report.batch.saturating_sub(1)).text("query"));
        let caption = report.captions.get(t.query).cloned().unwrap_or_default();
        ui.label(RichText::new(format!("query: “{caption}”")).strong());
        if let Some(negs) = report.hard_negatives.get(t.query) {
            egui::Grid::new("hard-negatives")
                .num_columns(5)
                .striped(true)
                .show(ui, |ui| {
                    ui.strong("");
                    ui.strong("negative");
                    ui.strong("P_ij");
                    ui.strong("h_ij");
                    ui.strong("1+α·h_ij");
                    ui.end_row();
                    for n in negs {
                        match t.thumbs.get(n.index) {
                            Some(tex) => {
                                ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                                    tex.id(),
                                    Vec2::splat(40.0),
                                )));
                            }
                            None => {
                                ui.label("");
                            }
                        }
                        // Long captions are cut to keep the numbers in view; the full
                        // text is on hover.
                        let caption = report.captions.get(n.index).cloned().unwrap_or_default();
                        ui.scope(|ui| {
                            ui.set_max_width(220.0);
                            ui.add(egui::Label::new(&caption).truncate())
                                .on_hover_text(&caption);
                        });
                        ui.monospace(format!("{:.3}", n.prob));
                        ui.monospace(format!("{:.3}", n.hardness));
                        ui.monospace(format!("{:.3}", n.amplification));
                        ui.end_row();
                    }
                });
        }
    });
}

/// Copies the last run's files (small: soft prompts, perspectives, fusion) to a folder.
fn save_run(app: &mut LensApp) {
    let Some(from) = app.training.last_run.clone() else {
        return;
    };
    let Some(to) = app.pick_folder() else {
        return;
    };
    let copy = || -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name()))?;
                n += 1;
            }
        }
        Ok(n)
    };
    match copy() {
        Ok(n) => app.info(format!("saved {n} files of the run to {}", to.display())),
        Err(e) => app.error(format!(
            "saving the run from {} to {}: {e}",
            from.display(),
            to.display()
        )),
    }
}

fn start(app: &mut LensApp) {
    let data = if app.training.use_folder {
        let dir = app.settings.train_folder.trim();
        if dir.is_empty() {
            app.error("fine-tune: give a folder of captioned images or a JSONL file");
            return;
        }
        TrainData::Folder(dir.into())
    } else {
        TrainData::Scenes { seed: 7 }
    };
    let settings = app.train_settings();
    let heldout = Some(app.settings.heldout.clone()).filter(|h| !h.trim().is_empty());
    app.training.losses.clear();
    app.training.accuracies.clear();
    app.training.last = None;
    app.training.before = None;
    app.training.after = None;
    app.training.running = true;
    app.training.status = "starting…".into();
    app.submit(Job::Train {
        data,
        settings,
        heldout,
    });
}
