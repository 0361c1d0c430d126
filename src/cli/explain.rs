//! `agff-lens explain`: heatmaps and the score breakdown of one (query, image) pair, and
//! optionally why it beat another image.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::agff::Similarity;
use crate::explain::{ColorMap, Comparison, Heatmap, Method, PairBreakdown};
use crate::model::image_io::{open_image, to_rgb8};

/// Options of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// `demo`, a local folder, or a Hub repo id.
    #[arg(long)]
    pub model: String,
    /// The candidate image.
    #[arg(long)]
    pub image: PathBuf,
    /// The query whose score against the image is explained.
    #[command(flatten)]
    pub query: super::QueryArgs,
    /// How the maps are computed (method.md §7).
    #[arg(long, value_enum, default_value_t = Method::Attribution)]
    pub method: Method,
    /// A second candidate: explain why --image scores higher or lower than it.
    #[arg(long)]
    pub versus: Option<PathBuf>,
    /// Folder for the PNG overlays (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Colour map of the PNG overlays.
    #[arg(long, value_enum, default_value_t = ColorMap::Inferno)]
    pub colormap: ColorMap,
    /// Opacity of the heatmap over the image in the PNG overlays (0: image only, 1: map
    /// only).
    #[arg(long, default_value_t = 0.6)]
    pub opacity: f32,
    /// How the model runs and what it embeds with.
    #[command(flatten)]
    pub run: super::RunArgs,
    /// Print JSON instead of a summary (the overlays are written either way).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct MapOut {
    name: String,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    png: String,
    /// The path's raw bytes when it is not UTF-8 (`png` is then lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    png_bytes: Option<Vec<u8>>,
}

#[derive(Serialize)]
struct Report {
    method: &'static str,
    image: String,
    /// The path's raw bytes when it is not UTF-8 (`image` is then lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    image_bytes: Option<Vec<u8>>,
    scores: ScoresOut,
    perspective_maps: Vec<MapOut>,
    similarity_maps: Vec<MapOut>,
    fused_map: MapOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    versus: Option<VersusOut>,
}

#[derive(Serialize)]
struct ScoresOut {
    fused: f32,
    similarities: std::collections::BTreeMap<&'static str, f32>,
    weights: std::collections::BTreeMap<&'static str, f32>,
    perspectives: std::collections::BTreeMap<String, f32>,
}

#[derive(Serialize)]
struct VersusOut {
    image: String,
    /// The path's raw bytes when it is not UTF-8 (`image` is then lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    image_bytes: Option<Vec<u8>>,
    scores: ScoresOut,
    fused_diff: f32,
    similarity_diffs: std::collections::BTreeMap<&'static str, f32>,
    similarity_contributions: std::collections::BTreeMap<&'static str, f32>,
    perspective_diffs: std::collections::BTreeMap<String, f32>,
    decided_by: &'static str,
}

fn by_similarity(v: [f32; 4]) -> std::collections::BTreeMap<&'static str, f32> {
    Similarity::ALL
        .iter()
        .map(|m| (m.name(), v[m.index()]))
        .collect()
}

fn scores_out(b: &PairBreakdown) -> ScoresOut {
    ScoresOut {
        fused: b.fused,
        similarities: by_similarity(b.similarities),
        weights: by_similarity(b.weights),
        perspectives: b.perspectives.iter().cloned().collect(),
    }
}

/// Runs `explain`.
pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let (method, colormap) = (args.method, args.colormap);
    let session = args.run.session(&args.model)?;
    let image = to_rgb8(&open_image(&args.image)?);
    let query = args.query.input(session.backbone.as_ref())?;
    let explainer = session.explainer();
    let ex = explainer.explain(&query, &image, method)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let save = |prefix: &str, m: &Heatmap| -> anyhow::Result<MapOut> {
        let path = args.out.join(format!("{prefix}{}.png", m.name));
        m.overlay(&image, colormap, args.opacity)
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(MapOut {
            name: m.name.clone(),
            rows: m.rows,
            cols: m.cols,
            values: m.values.clone(),
            png: path.display().to_string(),
            png_bytes: super::non_utf8_bytes(&path),
        })
    };
    let perspective_maps = ex
        .perspective_maps
        .iter()
        .map(|m| save("perspective_", m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let similarity_maps = ex
        .similarity_maps
        .iter()
        .map(|m| save("pattern_", m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fused_map = save("", &ex.fused_map)?;
    let versus = match &args.versus {
        Some(p) => {
            let other = to_rgb8(&open_image(p)?);
            let c: Comparison = explainer.compare(&query, &image, &other)?;
            let decided = Similarity::ALL
                .iter()
                .max_by(|x, y| {
                    c.similarity_contributions[x.index()]
                        .abs()
                        .total_cmp(&c.similarity_contributions[y.index()].abs())
                })
                .map_or("GG", |m| m.name());
            Some(VersusOut {
                image: p.display().to_string(),
                image_bytes: super::non_utf8_bytes(p),
                scores: scores_out(&c.b),
                fused_diff: c.fused_diff,
                similarity_diffs: by_similarity(c.similarity_diffs),
                similarity_contributions: by_similarity(c.similarity_contributions),
                perspective_diffs: c.perspective_diffs.iter().cloned().collect(),
                decided_by: decided,
            })
        }
        None => None,
    };
    let report = Report {
        method: method.name(),
        image: args.image.display().to_string(),
        image_bytes: super::non_utf8_bytes(&args.image),
        scores: scores_out(&ex.scores),
        perspective_maps,
        similarity_maps,
        fused_map,
        versus,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("fused score {:.4} ({})", report.scores.fused, method.name());
    for (m, s) in &report.scores.similarities {
        println!("  {m}: s = {s:.4}, a = {:.3}", report.scores.weights[m]);
    }
    for (p, s) in &report.scores.perspectives {
        println!("  perspective {p}: {s:.4}");
    }
    if let Some(v) = &report.versus {
        println!(
            "versus {}: {:+.4} (decided by {})",
            v.image, v.fused_diff, v.decided_by
        );
        for (m, d) in &v.similarity_contributions {
            println!(
                "  {m}: Δs = {:+.4}, contribution {d:+.4}",
                v.similarity_diffs[m]
            );
        }
    }
    println!("overlays in {}", args.out.display());
    Ok(())
}
