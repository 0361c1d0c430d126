//! The search view (query row and results grid), the inspector and the perspective editor.

use std::sync::Arc;

use egui::{Color32, RichText, Sense, Vec2};

use super::worker::{ExplainResult, Job, Picture, SearchResults};
use super::{LensApp, OverlayCallback, OverlayData};
use crate::explain::{ColorMap, Heatmap, Method};
use crate::model::Perspective;

/// The four similarities' names, in the order of the similarity and weight arrays
/// ([`crate::index::Hit::similarities`]).
pub const PATTERNS: [&str; 4] = ["GG", "FG", "GF", "FF"];

fn texture(ctx: &egui::Context, name: &str, p: &Picture) -> egui::TextureHandle {
    let image = egui::ColorImage::from_rgb([p.width as usize, p.height as usize], &p.rgb);
    ctx.load_texture(name, image, egui::TextureOptions::LINEAR)
}

/// Results with their thumbnails uploaded.
pub struct ResultsView {
    /// The ranking.
    pub results: SearchResults,
    /// One texture per result (`None` where it has no thumbnail).
    pub thumbs: Vec<Option<egui::TextureHandle>>,
    /// Columns of the grid at the last frame (for arrow-key moves).
    pub columns: usize,
    /// One texture per result of the second model, when comparing.
    pub compare_thumbs: Vec<Option<egui::TextureHandle>>,
}

impl ResultsView {
    /// Uploads the results' thumbnails.
    pub fn new(ctx: &egui::Context, results: SearchResults) -> Self {
        let thumbs = results
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.thumb
                    .as_ref()
                    .map(|p| texture(ctx, &format!("thumb-{i}"), p))
            })
            .collect();
        let compare_thumbs = results
            .compare
            .iter()
            .flat_map(|c| c.items.iter().enumerate())
            .map(|(i, item)| {
                item.thumb
                    .as_ref()
                    .map(|p| texture(ctx, &format!("compare-thumb-{i}"), p))
            })
            .collect();
        Self {
            results,
            thumbs,
            columns: 1,
            compare_thumbs,
        }
    }
}

/// Side of each picture in the small-multiples grid.
const MULTIPLE_SIDE: u32 = 128;

/// `image` (RGB, `width × height`) with `map` blended over it at the shared scale
/// `[lo, hi]` (nearest cell, so the token grid stays visible), `side` pixels on its longest
/// side. Presentation only: the values are the explanation's.
fn scaled_overlay(
    image: &Picture,
    map: &Heatmap,
    (lo, hi): (f32, f32),
    colormap: ColorMap,
    side: u32,
) -> egui::ColorImage {
    let scale = side as f32 / image.width.max(image.height).max(1) as f32;
    let (w, h) = (
        ((image.width as f32 * scale).round() as usize).max(1),
        ((image.height as f32 * scale).round() as usize).max(1),
    );
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let sx = ((x as f32 + 0.5) / scale) as usize;
            let sy = ((y as f32 + 0.5) / scale) as usize;
            let i = (sy.min(image.height as usize - 1) * image.width as usize
                + sx.min(image.width as usize - 1))
                * 3;
            let row = (y * map.rows / h).min(map.rows.saturating_sub(1));
            let col = (x * map.cols / w).min(map.cols.saturating_sub(1));
            let v = map.values.get(row * map.cols + col).copied().unwrap_or(lo);
            let c = colormap.color(((v - lo) / span).clamp(0.0, 1.0));
            for (k, &mapped) in c.iter().enumerate() {
                let base = f32::from(image.rgb.get(i + k).copied().unwrap_or(0));
                rgb.push((base * 0.4 + f32::from(mapped) * 0.6).round() as u8);
            }
        }
    }
    egui::ColorImage::from_rgb([w, h], &rgb)
}

/// The smallest and largest value over several maps: their shared colour scale.
fn shared_range<'a>(maps: impl Iterator<Item = &'a Heatmap>) -> (f32, f32) {
    maps.flat_map(|m| m.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        })
}

/// A horizontal colour bar with its end values and midpoint.
fn colour_bar(ui: &mut egui::Ui, colormap: ColorMap, (lo, hi): (f32, f32)) {
    ui.horizontal(|ui| {
        ui.monospace(format!("{lo:+.3}"));
        let (rect, _) = ui.allocate_exact_size(Vec2::new(180.0, 12.0), Sense::hover());
        let painter = ui.painter_at(rect);
        let n = 60;
        for k in 0..n {
            let t = k as f32 / (n - 1) as f32;
            let [r, g, b] = colormap.color(t);
            let x0 = rect.min.x + rect.width() * k as f32 / n as f32;
            let x1 = rect.min.x + rect.width() * (k + 1) as f32 / n as f32;
            painter.rect_filled(
                egui::Rect::from_min_max(egui::pos2(x0, rect.min.y), egui::pos2(x1, rect.max.y)),
                0.0,
                Color32::from_rgb(r, g, b),
            );
        }
        ui.monospace(format!("{hi:+.3}"));
        ui.label(format!("(mid {:+.3})", (lo + hi) / 2.0));
    });
}

/// The small multiples of one explanation: every map at one colour scale.
pub struct Multiples {
    /// (map name, picture).
    pub maps: Vec<(String, egui::TextureHandle)>,
    /// The shared colour scale (lowest, highest value).
    pub range: (f32, f32),
    /// The colour map the pictures were made with.
    pub colormap: ColorMap,
    /// This result's and the runner-up's fused maps at their shared scale.
    pub versus: Option<([egui::TextureHandle; 2], (f32, f32))>,
    /// When comparing models: this model's and the second model's fused maps of the
    /// image, each at its own scale (two models' similarities live on different scales).
    pub models: Option<[(egui::TextureHandle, (f32, f32)); 2]>,
}

impl Multiples {
    fn new(ctx: &egui::Context, result: &ExplainResult, colormap: ColorMap) -> Self {
        let maps_of = all_maps(result);
        let range = shared_range(maps_of.iter().copied());
        let maps = maps_of
            .iter()
            .enumerate()
            .map(|(n, m)| {
                let img = scaled_overlay(&result.image, m, range, colormap, MULTIPLE_SIDE);
                (
                    m.name.clone(),
                    ctx.load_texture(format!("multiple-{n}"), img, egui::TextureOptions::LINEAR),
                )
            })
            .collect();
        let versus = match (&result.runner_up, &result.runner_up_map) {
            (Some((_, _, picture, _)), Some(other)) => {
                let mine = &result.explanation.fused_map;
                let range = shared_range([mine, other].into_iter());
                let a = scaled_overlay(&result.image, mine, range, colormap, 160);
                let b = scaled_overlay(picture, other, range, colormap, 160);
                Some((
                    [
                        ctx.load_texture("versus-a", a, egui::TextureOptions::LINEAR),
                        ctx.load_texture("versus-b", b, egui::TextureOptions::LINEAR),
                    ],
                    range,
                ))
            }
            _ => None,
        };
        let models = result.compare.as_ref().map(|c| {
            [
                (&result.explanation.fused_map, "models-a"),
                (&c.map, "models-b"),
            ]
            .map(|(map, name)| {
                let range = shared_range(std::iter::once(map));
                let img = scaled_overlay(&result.image, map, range, colormap, 160);
                (
                    ctx.load_texture(name, img, egui::TextureOptions::LINEAR),
                    range,
                )
            })
        });
        Self {
            maps,
            range,
            colormap,
            versus,
            models,
        }
    }
}

/// The inspector's data: the explanation and its pictures.
pub struct InspectorView {
    /// What the model thread sent.
    pub result: ExplainResult,
    /// The result's image.
    pub image: egui::TextureHandle,
    /// The runner-up's image, when there is one.
    pub runner_up_image: Option<egui::TextureHandle>,
    /// Overlay data per map name (GPU path), sharing one image upload per map.
    overlays: Vec<(String, Arc<OverlayData>)>,
    /// CPU-blended pictures per (map, colour map, opacity), made on demand when there is no
    /// wgpu renderer.
    cpu_cache: Option<(String, ColorMap, u8, egui::TextureHandle)>,
    /// The rank whose explanation is being computed, if any.
    pub loading_for: Option<usize>,
    /// Every map side by side at one colour scale (made for the colour map in use).
    multiples: Option<Multiples>,
}

impl InspectorView {
    /// Uploads the images and prepares one overlay per map; `version` keys the GPU
    /// textures (see [`OverlayData::version`]).
    pub fn new(ctx: &egui::Context, result: ExplainResult, version: u64) -> Self {
        let image = texture(ctx, "inspector-image", &result.image);
        let runner_up_image = result
            .runner_up
            .as_ref()
            .map(|(_, _, p, _)| texture(ctx, "inspector-runner-up", p));
        let rgba: Arc<Vec<u8>> = Arc::new(
            result
                .image
                .rgb
                .chunks_exact(3)
                .flat_map(|c| [c[0], c[1], c[2], 255])
                .collect(),
        );
        let overlays = all_maps(&result)
            .into_iter()
            .enumerate()
            .map(|(n, map)| {
                (
                    map.name.clone(),
                    Arc::new(OverlayData {
                        version: version * 64 + n as u64,
                        width: result.image.width,
                        height: result.image.height,
                        rgba: rgba.clone(),
                        rows: map.rows as u32,
                        cols: map.cols as u32,
                        grid: map.values.clone(),
                    }),
                )
            })
            .collect();
        Self {
            result,
            image,
            runner_up_image,
            overlays,
            cpu_cache: None,
            loading_for: None,
            multiples: None,
        }
    }

    /// Names of the maps, in display order: fused, perspectives, similarities.
    pub fn map_names(&self) -> Vec<String> {
        self.overlays.iter().map(|(n, _)| n.clone()).collect()
    }

    fn map(&self, name: &str) -> Option<&Heatmap> {
        all_maps(&self.result).into_iter().find(|m| m.name == name)
    }
}

fn all_maps(result: &ExplainResult) -> Vec<&Heatmap> {
    let e = &result.explanation;
    std::iter::once(&e.fused_map)
        .chain(e.perspective_maps.iter())
        .chain(e.similarity_maps.iter())
        .collect()
}

/// A horizontal bar for a value in [lo, hi], with its number.
fn bar(ui: &mut egui::Ui, label: &str, value: f32, lo: f32, hi: f32, color: Color32) {
    ui.horizontal(|ui| {
        ui.add_sized([86.0, 16.0], egui::Label::new(label));
        let (rect, _) = ui.allocate_exact_size(Vec2::new(150.0, 12.0), Sense::hover());
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
        let t = if hi > lo {
            ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut filled = rect;
        filled.set_width(rect.width() * t);
        painter.rect_filled(filled, 2.0, color);
        ui.monospace(format!("{value:+.4}"));
    });
}

/// Example queries of the demo model, one per visual pattern it was taught.
pub const DEMO_EXAMPLES: [(&str, &str); 6] = [
    ("colour", "a green star"),
    ("count", "two blue squares"),
    ("position", "a red circle left of a yellow square"),
    ("orientation", "an arrow pointing up"),
    ("text", "a sign with the letter a"),
    ("state", "an outlined hexagon"),
];

/// Before the first search: what the gallery holds, what the model is, and (for the demo
/// model) example queries to click. A thumbnail click searches with that image.
fn start_view(app: &mut LensApp, ui: &mut egui::Ui) {
    let Some(g) = &app.gallery else {
        ui.add_space(20.0);
        ui.label("Indexing the gallery… (or open a folder of images)");
        return;
    };
    let images = g.images;
    let root = g.root.file_name().map_or_else(
        || g.root.display().to_string(),
        |f| f.to_string_lossy().into(),
    );
    let model = app.model_name.clone().unwrap_or_else(|| "no model".into());
    ui.heading(format!("{images} images in {root} · model {model}"));
    if model == "agff-lens-demo" {
        ui.label("Try a query (each exercises one visual pattern):");
        let mut chosen = None;
        ui.horizontal_wrapped(|ui| {
            for (pattern, query) in DEMO_EXAMPLES {
                if ui
                    .button(format!("{pattern}: “{query}”"))
                    .on_hover_text("search with this query")
                    .clicked()
                {
                    chosen = Some(query);
                }
            }
        });
        if let Some(q) = chosen {
            app.query_text = q.to_owned();
            app.query_image = None;
            app.search();
        }
    } else {
        ui.label("Type a query and press Enter, or click an image to search with it.");
    }
    let shown = app.preview.len();
    if shown < images {
        ui.label(format!("the first {shown} of {images} images:"));
    }
    let cell = 100.0;
    let columns = ((ui.available_width() / (cell + 6.0)).floor() as usize).max(1);
    let rows = shown.div_ceil(columns);
    let mut picked = None;
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show_rows(ui, cell + 6.0, rows, |ui, range| {
            for row in range {
                ui.horizontal(|ui| {
                    for col in 0..columns {
                        let Some((path, tex)) = app.preview.get(row * columns + col) else {
                            break;
                        };
                        let resp = ui
                            .add(
                                egui::Image::from_texture(egui::load::SizedTexture::new(
                                    tex.id(),
                                    Vec2::splat(cell),
                                ))
                                .fit_to_exact_size(Vec2::splat(cell))
                                .sense(Sense::click()),
                            )
                            .on_hover_text(path.display().to_string());
                        if resp.clicked() {
                            picked = Some(path.clone());
                        }
                    }
                });
            }
        });
    if let Some(p) = picked {
        app.query_image = Some(p);
        app.search();
    }
}

/// The query row and the results grid.
pub fn search_view(app: &mut LensApp, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        let label = ui.label("Query:");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut app.query_text)
                    .hint_text("e.g. a small red circle left of a blue square")
                    .desired_width(360.0)
                    .id_salt("query"),
            )
            .labelled_by(label.id);
        if edit.changed() {
            app.query_image = None;
        }
        let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if ui.button("Search").clicked() || enter {
            app.query_image = None;
            app.search();
        }
        if ui.button("Image query…").clicked() {
            app.pick_query_image();
        }
        ui.add(
            egui::DragValue::new(&mut app.settings.top_k)
                .range(1..=1000)
                .prefix("top "),
        );
        ui.menu_button("first stage", |ui| {
            ui.label("Before the full AGFF score, keep the best");
            ui.add(
                egui::DragValue::new(&mut app.settings.first_stage)
                    .range(10..=1_000_000)
                    .suffix(" candidates"),
            );
            ui.radio_value(
                &mut app.settings.first_stage_matched,
                false,
                "by the global similarity (fast)",
            );
            ui.radio_value(
                &mut app.settings.first_stage_matched,
                true,
                "by all matched perspectives ((1+K)× the cost)",
            );
        });
    });
    if let Some(p) = &app.query_image {
        ui.label(format!("query image: {}", p.display()));
    }
    if app.results.is_none() {
        start_view(app, ui);
        return;
    }
    let Some(view) = &mut app.results else {
        return;
    };
    ui.label(format!(
        "{} — {} results in {:.0} ms (fused score on each)",
        view.results.query.label(),
        view.results.items.len(),
        view.results.seconds * 1e3
    ));
    let selected = app.selected;
    let mut clicked = None;
    let Some(compare) = &view.results.compare else {
        let (c, columns) = result_grid(ui, &view.results.items, &view.thumbs, selected, "result");
        view.columns = columns;
        if let Some(rank) = c {
            app.select(rank);
        }
        return;
    };
    ui.label(format!(
        "agreement with {}: {}",
        compare.model, compare.agreement
    ));
    let mut clicked_other = None;
    let model = app.model_name.clone().unwrap_or_default();
    ui.columns(2, |cols| {
        cols[0].strong(&model);
        let (c, columns) = result_grid(
            &mut cols[0],
            &view.results.items,
            &view.thumbs,
            selected,
            "result",
        );
        view.columns = columns;
        clicked = c;
        cols[1].strong(&compare.model);
        // The image selected on the left is highlighted on the right where it ranks.
        let selected_path = selected
            .and_then(|r| view.results.items.get(r))
            .map(|i| &i.path);
        let same = compare
            .items
            .iter()
            .position(|i| Some(&i.path) == selected_path);
        clicked_other = result_grid(
            &mut cols[1],
            &compare.items,
            &view.compare_thumbs,
            same,
            "compare result",
        )
        .0;
    });
    // A second-model result selects the same image in the first model's list, where it
    // is there.
    if let Some(other) = clicked_other {
        let path = compare.items.get(other).map(|i| i.path.clone());
        match path.and_then(|p| view.results.items.iter().position(|i| i.path == p)) {
            Some(rank) => clicked = Some(rank),
            None => {
                let msg = format!(
                    "{} is not in {}'s top {}",
                    compare.items[other].path.display(),
                    model,
                    view.results.items.len()
                );
                app.info(msg);
            }
        }
    }
    if let Some(rank) = clicked {
        app.select(rank);
    }
}

/// A grid of result thumbnails with rank and score, `label` naming each cell for
/// accessibility (`"{label} {rank}"`); returns the clicked rank and the columns used.
fn result_grid(
    ui: &mut egui::Ui,
    items: &[crate::app::worker::ResultItem],
    thumbs: &[Option<egui::TextureHandle>],
    selected: Option<usize>,
    label: &str,
) -> (Option<usize>, usize) {
    let cell = Vec2::new(128.0, 150.0);
    // The visible width (a wide row above must not widen the grid past the panel).
    let width = ui.available_width().min(ui.clip_rect().width());
    let columns = ((width / (cell.x + 8.0)).floor() as usize).max(1);
    let rows = items.len().div_ceil(columns);
    let mut clicked = None;
    egui::ScrollArea::vertical()
        .id_salt(label)
        .auto_shrink([false, false])
        .show_rows(ui, cell.y + 6.0, rows, |ui, range| {
            for row in range {
                ui.horizontal(|ui| {
                    for col in 0..columns {
                        let rank = row * columns + col;
                        let Some(item) = items.get(rank) else {
                            break;
                        };
                        let (rect, resp) = ui.allocate_exact_size(cell, Sense::click());
                        let painter = ui.painter_at(rect);
                        let fill = if selected == Some(rank) {
                            ui.visuals().selection.bg_fill
                        } else if resp.hovered() {
                            ui.visuals().widgets.hovered.bg_fill
                        } else {
                            ui.visuals().faint_bg_color
                        };
                        painter.rect_filled(rect, 4.0, fill);
                        let img_rect = egui::Rect::from_min_size(
                            rect.min + Vec2::new(8.0, 4.0),
                            Vec2::splat(112.0),
                        );
                        if let Some(Some(tex)) = thumbs.get(rank) {
                            let size = tex.size_vec2();
                            let scale = (112.0 / size.x.max(size.y)).min(4.0);
                            let draw =
                                egui::Rect::from_center_size(img_rect.center(), size * scale);
                            painter.image(
                                tex.id(),
                                draw,
                                egui::Rect::from_min_max(
                                    egui::pos2(0.0, 0.0),
                                    egui::pos2(1.0, 1.0),
                                ),
                                Color32::WHITE,
                            );
                        }
                        painter.text(
                            egui::pos2(rect.center().x, rect.max.y - 14.0),
                            egui::Align2::CENTER_CENTER,
                            format!("#{} {:.4}", rank + 1, item.hit.score),
                            egui::FontId::monospace(12.0),
                            ui.visuals().text_color(),
                        );
                        resp.widget_info(|| {
                            egui::WidgetInfo::labeled(
                                egui::Role::Button,
                                true,
                                format!("{label} {}", rank + 1),
                            )
                        });
                        let resp = resp.on_hover_text(item.path.display().to_string());
                        if resp.clicked() {
                            clicked = Some(rank);
                        }
                    }
                });
            }
        });
    (clicked, columns)
}

/// The inspector of the selected result.
pub fn inspector(app: &mut LensApp, ui: &mut egui::Ui) {
    let gpu = app.gpu_overlay();
    let mut method = app.settings.method();
    // Nothing below may widen the panel: rows of pictures wrap at its width.
    let panel_width = ui
        .available_width()
        .min(ui.clip_rect().width() - 8.0)
        .max(200.0);
    ui.set_max_width(panel_width);
    ui.horizontal_wrapped(|ui| {
        ui.strong("Inspector");
        egui::ComboBox::from_label("method")
            .selected_text(method.name())
            .show_ui(ui, |ui| {
                for m in Method::ALL {
                    ui.selectable_value(&mut method, m, m.name())
                        .on_hover_text(m.describe());
                }
            });
        egui::ComboBox::from_label("colours")
            .selected_text(app.settings.colormap.name())
            .show_ui(ui, |ui| {
                for c in ColorMap::ALL {
                    ui.selectable_value(&mut app.settings.colormap, c, c.name());
                }
            });
        ui.add(egui::Slider::new(&mut app.settings.opacity, 0.0..=1.0).text("opacity"));
        ui.checkbox(&mut app.show_map, "map");
    });
    if method != app.settings.method() {
        app.settings.method = method.name().into();
        if let Some(rank) = app.selected {
            if let Some(ins) = &mut app.inspector {
                ins.loading_for = None;
            }
            app.select(rank);
        }
    }
    let colormap = app.settings.colormap;
    let opacity = app.settings.opacity;
    let show_map = app.show_map;
    let Some(view) = &mut app.inspector else {
        ui.label(if app.results.is_some() {
            "Computing the explanation…"
        } else {
            "Select a result to see why it ranked where it did."
        });
        return;
    };
    // Map tabs: fused, each perspective, each pattern.
    ui.horizontal_wrapped(|ui| {
        ui.label("map:");
        for name in view.map_names() {
            ui.selectable_value(&mut app.map_choice, name.clone(), name);
        }
    });
    let choice = app.map_choice.clone();
    let r = &view.result;
    ui.label(format!(
        "{} · {}",
        r.path.file_name().map_or_else(
            || r.path.display().to_string(),
            |f| f.to_string_lossy().into()
        ),
        r.explanation.method.name()
    ));
    // The picture with its overlay.
    let avail = ui.available_width().min(400.0);
    let (w, h) = (r.image.width as f32, r.image.height as f32);
    let size = Vec2::new(avail, avail * h / w.max(1.0));
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    let overlay = view
        .overlays
        .iter()
        .find(|(n, _)| *n == choice)
        .map(|(_, d)| d.clone());
    match (gpu, overlay) {
        (true, Some(data)) => {
            ui.painter().add(egui_wgpu::Callback::new_paint_callback(
                rect,
                OverlayCallback {
                    slot: 1,
                    data,
                    colormap,
                    opacity,
                    show_map,
                },
            ));
        }
        _ => {
            let key_opacity = (opacity * 100.0).round() as u8;
            let stale = view
                .cpu_cache
                .as_ref()
                .is_none_or(|(n, c, o, _)| *n != choice || *c != colormap || *o != key_opacity);
            if show_map
                && stale
                && let Some(map) = view.map(&choice)
            {
                let img = image::RgbImage::from_raw(
                    view.result.image.width,
                    view.result.image.height,
                    view.result.image.rgb.clone(),
                );
                if let Some(img) = img {
                    let blended = map.overlay(&img, colormap, opacity);
                    let tex = ui.ctx().load_texture(
                        "inspector-cpu-overlay",
                        egui::ColorImage::from_rgb(
                            [blended.width() as usize, blended.height() as usize],
                            blended.as_raw(),
                        ),
                        egui::TextureOptions::LINEAR,
                    );
                    view.cpu_cache = Some((choice.clone(), colormap, key_opacity, tex));
                }
            }
            let id = match (&view.cpu_cache, show_map) {
                (Some((.., t)), true) => t.id(),
                _ => view.image.id(),
            };
            ui.painter().image(
                id,
                rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
        }
    }
    if view.loading_for.is_some() {
        ui.label(RichText::new("updating…").weak());
    }
    if view
        .multiples
        .as_ref()
        .is_none_or(|m| m.colormap != colormap)
    {
        view.multiples = Some(Multiples::new(ui.ctx(), &view.result, colormap));
    }
    let r = &view.result;
    let s = &r.explanation.scores;
    egui::ScrollArea::vertical().show(ui, |ui| {
        if let Some(m) = &view.multiples {
            egui::CollapsingHeader::new("All maps side by side (one colour scale)")
                .default_open(true)
                .show(ui, |ui| {
                    colour_bar(ui, m.colormap, m.range);
                    let cell = 100.0;
                    let columns = ((panel_width - 24.0) / (cell + 8.0)).floor().max(1.0) as usize;
                    for row in m.maps.chunks(columns) {
                        ui.horizontal(|ui| {
                            for (name, tex) in row {
                                ui.vertical(|ui| {
                                    let size =
                                        tex.size_vec2() * (cell / tex.size_vec2().max_elem());
                                    ui.add(
                                        egui::Image::from_texture(egui::load::SizedTexture::new(
                                            tex.id(),
                                            size,
                                        ))
                                        .fit_to_exact_size(size),
                                    );
                                    ui.small(name);
                                });
                            }
                        });
                    }
                });
        }
        ui.label(RichText::new(format!("fused score {:.4}", s.fused)).strong());
        if let (Some(c), Some(m)) = (&r.compare, &view.multiples)
            && let Some(pictures) = &m.models
        {
            let first = app.model_name.clone().unwrap_or_default();
            egui::CollapsingHeader::new(format!("{first} vs {}: fused maps", c.model))
                .default_open(true)
                .show(ui, |ui| {
                    ui.horizontal(|ui| {
                        for ((tex, range), (name, score)) in pictures.iter().zip([
                            (first.as_str(), s.fused),
                            (c.model.as_str(), c.score),
                        ]) {
                            ui.vertical(|ui| {
                                ui.add(
                                    egui::Image::from_texture(egui::load::SizedTexture::new(
                                        tex.id(),
                                        Vec2::splat(150.0),
                                    ))
                                    .fit_to_exact_size(Vec2::splat(150.0)),
                                );
                                ui.small(format!(
                                    "{name}: fused {score:.4}\nmap {:+.3} … {:+.3}",
                                    range.0, range.1
                                ));
                            });
                        }
                    });
                    ui.small("each map at its own colour scale: two models' similarities are not on one scale");
                });
        }
        ui.label("pattern scores s_m");
        for (m, name) in PATTERNS.iter().enumerate() {
            bar(
                ui,
                name,
                s.similarities[m],
                -1.0,
                1.0,
                Color32::from_rgb(90, 150, 230),
            );
        }
        ui.label("fusion weights a_m (which pattern decided)");
        for (m, name) in PATTERNS.iter().enumerate() {
            bar(
                ui,
                name,
                s.weights[m],
                0.0,
                1.0,
                Color32::from_rgb(240, 150, 60),
            );
        }
        ui.label("per-perspective similarity <q_p, c_p>");
        for (name, v) in &s.perspectives {
            bar(ui, name, *v, -1.0, 1.0, Color32::from_rgb(120, 200, 120));
        }
        if let Some((_, path, _, cmp)) = &r.runner_up {
            ui.separator();
            ui.strong("Why not the runner-up?");
            ui.horizontal(|ui| {
                if let Some(t) = &view.runner_up_image {
                    ui.add(
                        egui::Image::from_texture(egui::load::SizedTexture::new(
                            t.id(),
                            Vec2::splat(72.0),
                        ))
                        .fit_to_exact_size(Vec2::splat(72.0)),
                    );
                }
                if let Some(([a, b], range)) =
                    view.multiples.as_ref().and_then(|m| m.versus.as_ref())
                {
                    ui.vertical(|ui| {
                        ui.horizontal(|ui| {
                            for (tex, label) in [(a, "this"), (b, "runner-up")] {
                                ui.vertical(|ui| {
                                    ui.add(
                                        egui::Image::from_texture(egui::load::SizedTexture::new(
                                            tex.id(),
                                            Vec2::splat(120.0),
                                        ))
                                        .fit_to_exact_size(Vec2::splat(120.0)),
                                    );
                                    ui.small(label);
                                });
                            }
                        });
                        colour_bar(
                            ui,
                            view.multiples
                                .as_ref()
                                .map_or(ColorMap::Inferno, |m| m.colormap),
                            *range,
                        );
                    });
                }
                ui.label(format!(
                    "{}\nfused: this {:.4} vs {:.4} (Δ {:+.4})",
                    path.file_name().map_or_else(
                        || path.display().to_string(),
                        |f| f.to_string_lossy().into()
                    ),
                    cmp.a.fused,
                    cmp.b.fused,
                    cmp.fused_diff
                ));
            });
            egui::Grid::new("why-not")
                .striped(true)
                .num_columns(5)
                .show(ui, |ui| {
                    ui.strong("");
                    ui.strong("this");
                    ui.strong("other");
                    ui.strong("Δ");
                    ui.strong("ā·Δ");
                    ui.end_row();
                    for (m, name) in PATTERNS.iter().enumerate() {
                        ui.label(*name);
                        ui.monospace(format!("{:.4}", cmp.a.similarities[m]));
                        ui.monospace(format!("{:.4}", cmp.b.similarities[m]));
                        ui.monospace(format!("{:+.4}", cmp.similarity_diffs[m]));
                        ui.monospace(format!("{:+.4}", cmp.similarity_contributions[m]));
                        ui.end_row();
                    }
                    for (n, (name, d)) in cmp.perspective_diffs.iter().enumerate() {
                        let a = cmp.a.perspectives.get(n).map_or(f32::NAN, |p| p.1);
                        let b = cmp.b.perspectives.get(n).map_or(f32::NAN, |p| p.1);
                        ui.label(name);
                        ui.monospace(format!("{a:.4}"));
                        ui.monospace(format!("{b:.4}"));
                        ui.monospace(format!("{d:+.4}"));
                        ui.label("");
                        ui.end_row();
                    }
                });
            let decisive = (0..4)
                .max_by(|&a, &b| {
                    cmp.similarity_contributions[a]
                        .abs()
                        .total_cmp(&cmp.similarity_contributions[b].abs())
                })
                .unwrap_or(0);
            ui.label(format!(
                "Largest contribution: {} ({:+.4} of the {:+.4} difference).",
                PATTERNS[decisive], cmp.similarity_contributions[decisive], cmp.fused_diff
            ));
        }
    });
}

/// The perspective editor: names and instruction texts; add or remove; apply.
pub fn perspectives_view(app: &mut LensApp, ui: &mut egui::Ui) {
    ui.heading("Perspectives");
    ui.label(
        "The first perspective is the global view; the others are fine-grained. Applying \
         re-embeds the gallery; sets embedded before come from the cache.",
    );
    let mut remove = None;
    egui::Grid::new("perspectives")
        .num_columns(4)
        .striped(true)
        .show(ui, |ui| {
            ui.strong("name");
            ui.strong("instruction");
            ui.strong("soft tokens");
            ui.strong("");
            ui.end_row();
            for (i, p) in app.edited_perspectives.perspectives.iter_mut().enumerate() {
                ui.add(egui::TextEdit::singleline(&mut p.name).desired_width(120.0));
                ui.add(egui::TextEdit::singleline(&mut p.instruction).desired_width(380.0));
                ui.label(p.soft_tokens.to_string());
                if i > 0 && ui.button("remove").clicked() {
                    remove = Some(i);
                }
                ui.end_row();
            }
        });
    if let Some(i) = remove {
        app.edited_perspectives.perspectives.remove(i);
    }
    ui.horizontal(|ui| {
        if ui.button("Add perspective").clicked() {
            let n = app.edited_perspectives.perspectives.len();
            let soft = app
                .edited_perspectives
                .perspectives
                .last()
                .map_or(0, |p| p.soft_tokens);
            let mut p = Perspective::new(&format!("perspective{n}"), "");
            p.soft_tokens = soft;
            app.edited_perspectives.perspectives.push(p);
        }
        let changed = app.edited_perspectives != app.perspectives;
        if ui
            .add_enabled(changed, egui::Button::new("Apply and re-embed"))
            .clicked()
        {
            match app.edited_perspectives.validate() {
                Ok(()) => {
                    let set = app.edited_perspectives.clone();
                    app.submit(Job::SetPerspectives(set));
                }
                Err(e) => app.error(format!("perspectives: {e}")),
            }
        }
        if ui
            .add_enabled(changed, egui::Button::new("Revert"))
            .clicked()
        {
            app.edited_perspectives = app.perspectives.clone();
        }
    });
}
