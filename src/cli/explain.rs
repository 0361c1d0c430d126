//! `agff-lens explain`: heatmaps and the score breakdown of one (query, image) pair, and
//! optionally why it beat another image.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::load_backbone;
use crate::agff::{Fusion, Pattern};
use crate::explain::{ColorMap, Comparison, Explainer, Heatmap, Method, PairBreakdown};
use crate::model::image_io::{open_image, to_rgb8};
use crate::model::{DeviceChoice, PerspectiveSet};

/// Options of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub model: String,
    /// The candidate image.
    #[arg(long)]
    pub image: PathBuf,
    #[command(flatten)]
    pub query: super::QueryArgs,
    /// attribution (default), attention or similarity.
    #[arg(long, default_value = "attribution")]
    pub method: String,
    /// A second candidate: explain why --image scores higher or lower than it.
    #[arg(long)]
    pub versus: Option<PathBuf>,
    /// Folder for the PNG overlays (created).
    #[arg(long)]
    pub out: PathBuf,
    /// inferno, viridis, turbo or gray.
    #[arg(long, default_value = "inferno")]
    pub colormap: String,
    #[arg(long, default_value_t = 0.6)]
    pub opacity: f32,
    #[arg(long)]
    pub perspectives: Option<PathBuf>,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
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
}

#[derive(Serialize)]
struct Report {
    method: &'static str,
    image: String,
    scores: ScoresOut,
    perspective_maps: Vec<MapOut>,
    pattern_maps: Vec<MapOut>,
    fused_map: MapOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    versus: Option<VersusOut>,
}

#[derive(Serialize)]
struct ScoresOut {
    fused: f32,
    patterns: std::collections::BTreeMap<&'static str, f32>,
    weights: std::collections::BTreeMap<&'static str, f32>,
    perspectives: std::collections::BTreeMap<String, f32>,
}

#[derive(Serialize)]
struct VersusOut {
    image: String,
    scores: ScoresOut,
    fused_diff: f32,
    pattern_diffs: std::collections::BTreeMap<&'static str, f32>,
    pattern_contributions: std::collections::BTreeMap<&'static str, f32>,
    perspective_diffs: std::collections::BTreeMap<String, f32>,
    decided_by: &'static str,
}

fn by_pattern(v: [f32; 4]) -> std::collections::BTreeMap<&'static str, f32> {
    Pattern::ALL
        .iter()
        .map(|m| (m.name(), v[m.index()]))
        .collect()
}

fn scores_out(b: &PairBreakdown) -> ScoresOut {
    ScoresOut {
        fused: b.fused,
        patterns: by_pattern(b.patterns),
        weights: by_pattern(b.weights),
        perspectives: b.perspectives.iter().cloned().collect(),
    }
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let method = Method::parse(&args.method).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown method {:?}: expected attribution, attention or similarity",
            args.method
        )
    })?;
    let colormap = ColorMap::ALL
        .into_iter()
        .find(|c| c.name() == args.colormap)
        .ok_or_else(|| anyhow::anyhow!("unknown colour map {:?}", args.colormap))?;
    let backbone = load_backbone(&args.model, &args.dtype, &args.device)?;
    let perspectives = match &args.perspectives {
        Some(p) => PerspectiveSet::from_file(p)?,
        None => backbone.default_perspectives(),
    };
    let image = to_rgb8(&open_image(&args.image)?);
    let query = args.query.input(backbone.as_ref())?;
    let explainer = Explainer::new(
        backbone.as_ref(),
        perspectives,
        Fusion::for_backbone(backbone.as_ref())?,
    );
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
        })
    };
    let perspective_maps = ex
        .perspective_maps
        .iter()
        .map(|m| save("perspective_", m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pattern_maps = ex
        .pattern_maps
        .iter()
        .map(|m| save("pattern_", m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fused_map = save("", &ex.fused_map)?;
    let versus = match &args.versus {
        Some(p) => {
            let other = to_rgb8(&open_image(p)?);
            let c: Comparison = explainer.compare(&query, &image, &other)?;
            let decided = Pattern::ALL
                .iter()
                .max_by(|x, y| {
                    c.pattern_contributions[x.index()]
                        .abs()
                        .total_cmp(&c.pattern_contributions[y.index()].abs())
                })
                .map_or("GG", |m| m.name());
            Some(VersusOut {
                image: p.display().to_string(),
                scores: scores_out(&c.b),
                fused_diff: c.fused_diff,
                pattern_diffs: by_pattern(c.pattern_diffs),
                pattern_contributions: by_pattern(c.pattern_contributions),
                perspective_diffs: c.perspective_diffs.iter().cloned().collect(),
                decided_by: decided,
            })
        }
        None => None,
    };
    let report = Report {
        method: method.name(),
        image: args.image.display().to_string(),
        scores: scores_out(&ex.scores),
        perspective_maps,
        pattern_maps,
        fused_map,
        versus,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("fused score {:.4} ({})", report.scores.fused, method.name());
    for (m, s) in &report.scores.patterns {
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
        for (m, d) in &v.pattern_contributions {
            println!(
                "  {m}: Δs = {:+.4}, contribution {d:+.4}",
                v.pattern_diffs[m]
            );
        }
    }
    println!("overlays in {}", args.out.display());
    Ok(())
}
