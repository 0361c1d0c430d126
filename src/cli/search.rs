//! `agff-lens search`: rank a folder of images for a text or image query.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::agff::Similarity;
use crate::index::{
    FirstStageOn, SearchOptions, default_cache_dir, first_stage_recall, scan_gallery,
};

/// Options of `search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// `demo`, a local folder, or a Hub repo id.
    #[arg(long)]
    pub model: String,
    /// The folder of images (searched recursively).
    #[arg(long)]
    pub gallery: PathBuf,
    /// The query to rank the gallery for.
    #[command(flatten)]
    pub query: super::QueryArgs,
    /// How many results.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Keep the best N by the first-stage similarity before the full AGFF re-ranking
    /// (0: off). The default ranks galleries of up to 20,000 images exactly (10,000 × 5 ×
    /// 2048 scores in about 0.15 s here); the first stage only cuts larger ones.
    #[arg(long, default_value_t = crate::index::DEFAULT_FIRST_STAGE)]
    pub first_stage: usize,
    /// What the first stage ranks by: `global` (<g_q, g_c>) or `matched` (the best
    /// matched perspective similarity max_p <q_p, c_p>, (1+K)× the cost, closer to the
    /// fused score).
    #[arg(long, value_enum, default_value_t = FirstStageOn::Global)]
    pub first_stage_on: FirstStageOn,
    /// Embedding cache folder (default: $AGFF_LENS_CACHE, $XDG_CACHE_HOME/agff-lens or
    /// ~/.cache/agff-lens).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// How the model runs and what it embeds with.
    #[command(flatten)]
    pub run: super::RunArgs,
    /// Print JSON instead of a ranked list.
    #[arg(long)]
    pub json: bool,
    /// A second model to rank the same gallery with (same run options): both rankings
    /// side by side, with their overlap in the top `--top` and Spearman's rank
    /// correlation over the gallery.
    #[arg(long)]
    pub compare_model: Option<String>,
}

#[derive(Serialize)]
struct ResultOut {
    path: String,
    /// The path's raw bytes when it is not UTF-8 (`path` is then lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    path_bytes: Option<Vec<u8>>,
    score: f32,
    /// s_GG, s_FG, s_GF, s_FF (method.md §2).
    similarities: BTreeMap<&'static str, f32>,
    weights: BTreeMap<&'static str, f32>,
    /// Matched per-perspective similarity `<q_p, c_p>` by perspective name.
    perspectives: BTreeMap<String, f32>,
}

#[derive(Serialize)]
struct SkippedOut {
    path: String,
    /// The path's raw bytes when it is not UTF-8 (`path` is then lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    path_bytes: Option<Vec<u8>>,
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
    /// When the first stage cut the gallery: how much of the exact top 10 it kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_stage: Option<FirstStageOut>,
    /// With `--compare-model`: the second model's ranking and how far the two agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    compare: Option<CompareOut>,
}

#[derive(Serialize)]
struct CompareOut {
    model: String,
    results: Vec<ResultOut>,
    indexed: usize,
    embedded: usize,
    from_cache: usize,
    #[serde(flatten)]
    agreement: crate::index::RankAgreement,
}

#[derive(Serialize)]
struct FirstStageOut {
    keep: usize,
    /// Fraction of the exact top 10 (full AGFF score over the whole gallery) that is among
    /// the candidates the first stage kept.
    top10_kept: f64,
}

/// Runs `search`.
pub fn run(args: &SearchArgs) -> anyhow::Result<()> {
    let session = args.run.session(&args.model)?;
    let perspectives = &session.perspectives;
    let never = || false;
    let gallery = scan_gallery(&args.gallery, &never, &mut |_| {})?;
    if gallery.items.is_empty() {
        // A folder of phone photos (HEIC) holds files, just none this build decodes:
        // say which and why before giving up.
        for s in &gallery.skipped {
            eprintln!("skipped {}: {}", s.path.display(), s.reason);
        }
        return Err(crate::index::IndexError::Empty(args.gallery.clone()).into());
    }
    let compare = args.compare_model.is_some();
    let mut a = rank_gallery(&session, &gallery, args, compare)?;
    let first_stage = a.first_stage.take();
    let (embeddings, report, hits) = (&a.embeddings, &a.report, &a.hits);
    let results = results_of(hits, embeddings, perspectives, args.top);
    let compare = match &args.compare_model {
        None => None,
        Some(model) => {
            let other = args.run.session(model)?;
            let b = rank_gallery(&other, &gallery, args, true)?;
            let paths = |r: &Ranked| -> Vec<PathBuf> {
                r.hits
                    .iter()
                    .map(|h| r.embeddings.items[h.index].path.clone())
                    .collect()
            };
            Some(CompareOut {
                model: model.clone(),
                results: results_of(&b.hits, &b.embeddings, &other.perspectives, args.top),
                indexed: b.embeddings.len(),
                embedded: b.report.embedded,
                from_cache: b.report.from_cache,
                agreement: crate::index::rank_agreement(&paths(&a), &paths(&b), args.top),
            })
        }
    };
    let skipped: Vec<SkippedOut> = gallery
        .skipped
        .iter()
        .chain(&report.failed)
        .map(|s| SkippedOut {
            path: s.path.display().to_string(),
            path_bytes: super::non_utf8_bytes(&s.path),
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
        first_stage,
        compare,
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
    if let Some(f) = &out.first_stage {
        println!(
            "first stage kept {} of {}; it kept {:.0}% of the exact top 10",
            f.keep,
            out.indexed,
            f.top10_kept * 100.0
        );
    }
    let Some(c) = &out.compare else {
        for (rank, r) in out.results.iter().enumerate() {
            println!(
                "{:>3}. {:.4}  {}  [GG {:.3} FG {:.3} GF {:.3} FF {:.3}]",
                rank + 1,
                r.score,
                r.path,
                r.similarities["GG"],
                r.similarities["FG"],
                r.similarities["GF"],
                r.similarities["FF"]
            );
        }
        return Ok(());
    };
    println!(
        "{}: {} images ({} embedded, {} from the cache)",
        c.model, c.indexed, c.embedded, c.from_cache
    );
    let width = out
        .results
        .iter()
        .map(|r| r.path.chars().count())
        .max()
        .unwrap_or(0)
        .max(args.model.chars().count())
        .min(60);
    println!("     {:<w$}   {}", args.model, c.model, w = width + 8);
    for rank in 0..out.results.len().max(c.results.len()) {
        let cell = |r: Option<&ResultOut>| {
            r.map(|r| format!("{:.4}  {}", r.score, r.path))
                .unwrap_or_default()
        };
        println!(
            "{:>3}. {:<w$}   {}",
            rank + 1,
            cell(out.results.get(rank)),
            cell(c.results.get(rank)),
            w = width + 8
        );
    }
    println!("agreement: {}", c.agreement);
    Ok(())
}

/// The first `n` hits as output rows.
fn results_of(
    hits: &[crate::index::Hit],
    embeddings: &crate::index::GalleryEmbeddings,
    perspectives: &crate::model::PerspectiveSet,
    n: usize,
) -> Vec<ResultOut> {
    let p = perspectives.perspectives.len();
    hits.iter()
        .take(n)
        .map(|h| ResultOut {
            path: embeddings.items[h.index].path.display().to_string(),
            path_bytes: super::non_utf8_bytes(&embeddings.items[h.index].path),
            score: h.score,
            similarities: Similarity::ALL
                .iter()
                .map(|m| (m.name(), h.similarities[m.index()]))
                .collect(),
            weights: Similarity::ALL
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
        .collect()
}

/// One model's embeddings of the gallery and its ranking for the query.
struct Ranked {
    embeddings: crate::index::GalleryEmbeddings,
    report: crate::index::EmbedReport,
    hits: Vec<crate::index::Hit>,
    first_stage: Option<FirstStageOut>,
}

/// Indexes `gallery` with `session` (through the cache, with a progress bar) and ranks it
/// for the query: the top `--top`, or the whole gallery when `whole` (for a comparison).
fn rank_gallery(
    session: &crate::session::Session,
    gallery: &crate::index::Gallery,
    args: &SearchArgs,
    whole: bool,
) -> anyhow::Result<Ranked> {
    let never = || false;
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(gallery.items.len() as u64)
    };
    let cache_dir = args.cache.clone().unwrap_or_else(default_cache_dir);
    let (embeddings, report) = session.index(gallery, &cache_dir, &never, &mut |done, _| {
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if let Some(problem) = &report.cache_problem {
        eprintln!(
            "warning: {}: {}; the cache was rebuilt",
            problem.path.display(),
            problem.reason
        );
    }
    if let Some(problem) = &report.cache_unwritable {
        eprintln!("warning: {problem}");
    }
    let input = args.query.input(session.backbone.as_ref())?;
    let options = SearchOptions {
        top_k: if whole { usize::MAX } else { args.top },
        first_stage: (args.first_stage > 0).then_some(args.first_stage),
        first_stage_on: args.first_stage_on,
    };
    let (mut hits, query) = session.rank(&embeddings, &input, &options)?;
    let scorer = session.scorer()?;
    let first_stage = match options.first_stage {
        Some(keep) if keep < embeddings.len() => Some(FirstStageOut {
            keep,
            top10_kept: first_stage_recall(
                &query,
                &embeddings,
                &scorer,
                keep,
                args.first_stage_on,
                10,
            )?,
        }),
        _ => None,
    };
    if !whole {
        hits.truncate(args.top);
    }
    Ok(Ranked {
        embeddings,
        report,
        hits,
        first_stage,
    })
}
