//! `agff-lens search`: rank a folder of images for a text or image query.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;

use super::load_backbone;
use crate::agff::{FusedScorer, Fusion, Pattern, PatternConfig};
use crate::index::{
    SearchOptions, default_cache_dir, embed_gallery, embed_unit, scan_gallery, search,
};
use crate::model::{DeviceChoice, PerspectiveSet};

/// Options of `search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// `demo`, a local folder, or a Hub repo id.
    #[arg(long)]
    pub model: String,
    /// The folder of images (searched recursively).
    #[arg(long)]
    pub gallery: PathBuf,
    #[command(flatten)]
    pub query: super::QueryArgs,
    /// How many results.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Keep the best N by global similarity before the full AGFF re-ranking (0: off).
    #[arg(long, default_value_t = 1000)]
    pub first_stage: usize,
    /// A JSON perspective set (default: the model's own).
    #[arg(long)]
    pub perspectives: Option<PathBuf>,
    /// Embedding cache folder (default: $AGFF_LENS_CACHE, $XDG_CACHE_HOME/agff-lens or
    /// ~/.cache/agff-lens).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ResultOut {
    path: String,
    score: f32,
    patterns: BTreeMap<&'static str, f32>,
    weights: BTreeMap<&'static str, f32>,
    /// Matched per-perspective similarity `<q_p, c_p>` by perspective name.
    perspectives: BTreeMap<String, f32>,
}

#[derive(Serialize)]
struct SkippedOut {
    path: String,
    reason: String,
}

#[derive(Serialize)]
struct Report {
    results: Vec<ResultOut>,
    indexed: usize,
    embedded: usize,
    from_cache: usize,
    skipped: Vec<SkippedOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_rebuilt: Option<String>,
}

pub fn run(args: &SearchArgs) -> anyhow::Result<()> {
    let backbone = load_backbone(&args.model, &args.dtype, &args.device)?;
    let perspectives = match &args.perspectives {
        Some(p) => PerspectiveSet::from_file(p)?,
        None => backbone.default_perspectives(),
    };
    let never = || false;
    let gallery = scan_gallery(&args.gallery, &never, &mut |_| {})?;
    if gallery.items.is_empty() {
        return Err(crate::index::IndexError::Empty(args.gallery.clone()).into());
    }
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(gallery.items.len() as u64)
    };
    let cache_dir = args.cache.clone().unwrap_or_else(default_cache_dir);
    let (embeddings, report) = embed_gallery(
        backbone.as_ref(),
        &perspectives,
        &gallery,
        &cache_dir,
        &never,
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    if let Some(problem) = &report.cache_problem {
        eprintln!(
            "warning: {}: {}; the cache was rebuilt",
            problem.path.display(),
            problem.reason
        );
    }
    let input = args.query.input(backbone.as_ref())?;
    let query = embed_unit(backbone.as_ref(), &input, &perspectives)?;
    let fusion = Fusion::for_backbone(backbone.as_ref())?;
    let scorer = FusedScorer::new(PatternConfig::default(), &fusion)?;
    let options = SearchOptions {
        top_k: args.top,
        first_stage: (args.first_stage > 0).then_some(args.first_stage),
    };
    let hits = search(&query, &embeddings, &scorer, &options)?;
    let p = perspectives.perspectives.len();
    let results = hits
        .iter()
        .map(|h| ResultOut {
            path: embeddings.items[h.index].path.display().to_string(),
            score: h.score,
            patterns: Pattern::ALL
                .iter()
                .map(|m| (m.name(), h.patterns[m.index()]))
                .collect(),
            weights: Pattern::ALL
                .iter()
                .map(|m| (m.name(), h.weights[m.index()]))
                .collect(),
            perspectives: perspectives
                .perspectives
                .iter()
                .enumerate()
                .map(|(i, per)| (per.name.clone(), h.perspective_sims[i * p + i]))
                .collect(),
        })
        .collect::<Vec<_>>();
    let skipped: Vec<SkippedOut> = gallery
        .skipped
        .iter()
        .chain(&report.failed)
        .map(|s| SkippedOut {
            path: s.path.display().to_string(),
            reason: s.reason.clone(),
        })
        .collect();
    let out = Report {
        indexed: embeddings.len(),
        embedded: report.embedded,
        from_cache: report.from_cache,
        results,
        skipped,
        cache_rebuilt: report.cache_problem.as_ref().map(|p| p.reason.clone()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    for s in &out.skipped {
        eprintln!("skipped {}: {}", s.path, s.reason);
    }
    println!(
        "{} images ({} embedded, {} from the cache)",
        out.indexed, out.embedded, out.from_cache
    );
    for (rank, r) in out.results.iter().enumerate() {
        println!(
            "{:>3}. {:.4}  {}  [GG {:.3} FG {:.3} GF {:.3} FF {:.3}]",
            rank + 1,
            r.score,
            r.path,
            r.patterns["GG"],
            r.patterns["FG"],
            r.patterns["GF"],
            r.patterns["FF"]
        );
    }
    Ok(())
}
