//! `agff-lens bench search`: how fast the demo model embeds a gallery of scenes, and how
//! long one query takes over synthetic galleries of 10,000 and 1,000,000 candidates.
//!
//! The synthetic vectors have the structure of real embeddings that matters here: items
//! fall into clusters, an item's K perspective vectors lie near its global vector, and a
//! query is a perturbed copy of some item. Every item's vectors are a pure function of
//! (seed, item index), so a gallery too large for memory (1,000,000 × 5 × 2048 f32 is
//! 41 GB) keeps only the global vectors resident and regenerates the perspective vectors
//! of the candidates that the first stage keeps, standing in for a read from disk.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use serde::Serialize;

use crate::agff::{FusedScorer, Fusion, FusionInit, SimilarityConfig};
use crate::index::{
    FirstStageOn, GalleryEmbeddings, GalleryItem, SearchOptions, embed_gallery, first_stage,
    scan_gallery, search,
};
use crate::model::demo::DemoModel;

/// Options of `bench search`.
#[derive(Debug, Args)]
pub struct SearchBenchArgs {
    /// Scenes rendered and embedded by the demo model for the throughput figure (0: skip).
    #[arg(long, default_value_t = 10_000)]
    pub scenes: usize,
    /// Gallery sizes of the search latency measurements.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 1_000_000])]
    pub candidates: Vec<usize>,
    /// Embedding widths d.
    #[arg(long = "dim", value_delimiter = ',', default_values_t = [256, 2048])]
    pub dims: Vec<usize>,
    /// Fine-grained perspectives K.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Candidates the first stage keeps for the full AGFF re-ranking.
    #[arg(long, default_value_t = 1000)]
    pub first_stage: usize,
    /// Queries timed per configuration (the median latency is reported).
    #[arg(long, default_value_t = 5)]
    pub queries: usize,
    /// Seed of the synthetic vectors.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct SearchResult {
    candidates: usize,
    d: usize,
    k: usize,
    first_stage: bool,
    /// Median milliseconds for one query (null when the configuration was not run).
    latency_ms: Option<f64>,
    /// Mean fraction of the exact top 10 that the first stage kept (null without a first
    /// stage, or when the exact ranking could not be computed).
    top10_kept: Option<f64>,
    /// "resident": every vector in memory; "globals-resident": only the global vectors,
    /// the kept candidates' perspective vectors regenerated per query.
    storage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

#[derive(Debug, Serialize)]
struct SearchReport {
    threads: usize,
    scenes: usize,
    embed_seconds: Option<f64>,
    embed_images_per_sec: Option<f64>,
    first_stage_keep: usize,
    queries: usize,
    search: Vec<SearchResult>,
    peak_rss_mb: Option<f64>,
}

/// A seed per item, so any item is generated without the others.
fn mix(z: u64) -> u64 {
    crate::util::rng::mix64(z.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// A fast stream of roughly Gaussian values.
struct Noise(crate::util::rng::SplitMix64);

impl Noise {
    fn new(seed: u64) -> Self {
        Self(crate::util::rng::SplitMix64::new(seed))
    }

    fn next(&mut self) -> f32 {
        self.0.rough_normal()
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// The synthetic gallery: `clusters` unit centres; item i belongs to cluster `i % clusters`.
struct Synthetic {
    seed: u64,
    d: usize,
    k: usize,
    centres: Vec<f32>,
    clusters: usize,
}

impl Synthetic {
    fn new(seed: u64, d: usize, k: usize, clusters: usize) -> Self {
        let mut centres = vec![0f32; clusters * d];
        for (c, centre) in centres.chunks_mut(d).enumerate() {
            let mut noise = Noise::new(mix(seed ^ mix(u64::MAX - c as u64)));
            centre.iter_mut().for_each(|x| *x = noise.next());
            normalise(centre);
        }
        Self {
            seed,
            d,
            k,
            centres,
            clusters,
        }
    }

    /// Writes item i's global vector and, if `out` has room, its K perspective vectors.
    fn item(&self, i: usize, out: &mut [f32]) {
        let d = self.d;
        let mut noise = Noise::new(mix(self.seed ^ mix(i as u64)));
        let centre = &self.centres[(i % self.clusters) * d..][..d];
        let (global, fines) = out.split_at_mut(d);
        // Noise of norm ~1 around a unit centre: items of a cluster share about half
        // their direction; perspectives keep about 0.8 cosine to their item's global.
        let spread = 1.0 / (d as f32).sqrt();
        for (g, c) in global.iter_mut().zip(centre) {
            *g = c + spread * noise.next();
        }
        normalise(global);
        for fine in fines.chunks_mut(d).take(self.k) {
            for (f, g) in fine.iter_mut().zip(global.iter()) {
                *f = g + 0.75 * spread * noise.next();
            }
            normalise(fine);
        }
    }

    /// A gallery of n items with `per_item` vectors each (1: globals only).
    fn gallery(&self, n: usize, per_item: usize) -> GalleryEmbeddings {
        let d = self.d;
        let full = (1 + self.k) * d;
        let mut data = vec![0f32; n * per_item * d];
        data.par_chunks_mut(per_item * d).enumerate().for_each_init(
            || vec![0f32; full],
            |scratch, (i, out)| {
                self.item(i, scratch);
                out.copy_from_slice(&scratch[..out.len()]);
            },
        );
        let blank = GalleryItem {
            path: PathBuf::new(),
            content_hash: String::new(),
            width: 0,
            height: 0,
        };
        GalleryEmbeddings {
            items: vec![blank; n],
            per_item,
            dim: d,
            data,
        }
    }

    /// Query q: a perturbed copy of a pseudo-random item.
    fn query(&self, q: usize, n: usize) -> Vec<f32> {
        let d = self.d;
        let mut v = vec![0f32; (1 + self.k) * d];
        self.item(
            (mix(self.seed ^ 0xabcd ^ q as u64) % n as u64) as usize,
            &mut v,
        );
        let mut noise = Noise::new(mix(self.seed ^ 0x5eed ^ q as u64));
        let spread = 0.5 / (d as f32).sqrt();
        for chunk in v.chunks_mut(d) {
            chunk.iter_mut().for_each(|x| *x += spread * noise.next());
            normalise(chunk);
        }
        v
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Memory the kernel says is available (bytes), if it says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of this process (MiB), from /proc.
fn peak_rss_mb() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Renders `count` scenes into a temporary folder and times indexing them with the demo
/// model from a cold cache (decode, embed with every perspective, cache writes).
fn embed_throughput(count: usize) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("agff-bench-search-{}", std::process::id()));
    let scenes = dir.join("scenes");
    let cache = dir.join("cache");
    let result = (|| {
        crate::scenes::write_scenes(&scenes, count, 20_261_126)?;
        let gallery = scan_gallery(&scenes, &|| false, &mut |_| {})?;
        let model = DemoModel::embedded(&candle_core::Device::Cpu)?;
        let perspectives = crate::model::Backbone::default_perspectives(&model);
        let start = Instant::now();
        let (embedded, _) = embed_gallery(
            &model,
            &perspectives,
            &gallery,
            &cache,
            &|| false,
            &mut |_, _| {},
        )?;
        let seconds = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            embedded.len() == count,
            "embedded {} of {count} scenes",
            embedded.len()
        );
        Ok(seconds)
    })();
    // Best effort: the numbers stand even if the temporary folder cannot be removed.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(
    args: &SearchBenchArgs,
    scorer: &FusedScorer,
    n: usize,
    d: usize,
) -> anyhow::Result<Vec<SearchResult>> {
    let k = args.k;
    let per = 1 + k;
    let synth = Synthetic::new(args.seed ^ d as u64, d, k, (n / 100).clamp(1, 10_000));
    // Full storage needs the gallery plus one copy of it for the exact ranking.
    let full_bytes = (n * per * d * 4) as u64;
    let fits = available_memory().is_none_or(|avail| 2 * full_bytes < avail / 10 * 8);
    let queries: Vec<Vec<f32>> = (0..args.queries.max(1))
        .map(|q| synth.query(q, n))
        .collect();
    let keep = args.first_stage.max(10);
    if fits {
        let gallery = synth.gallery(n, per);
        let mut with = Vec::new();
        let mut without = Vec::new();
        let mut kept = Vec::new();
        for query in &queries {
            let start = Instant::now();
            let exact = search(
                query,
                &gallery,
                scorer,
                &SearchOptions {
                    top_k: 10,
                    first_stage: None,
                    first_stage_on: FirstStageOn::Global,
                },
            )?;
            without.push(ms(start));
            let start = Instant::now();
            let staged = search(
                query,
                &gallery,
                scorer,
                &SearchOptions {
                    top_k: 10,
                    first_stage: Some(keep),
                    first_stage_on: FirstStageOn::Global,
                },
            )?;
            with.push(ms(start));
            std::hint::black_box(&staged);
            let stage: std::collections::HashSet<usize> =
                first_stage(query, &gallery, Some(keep), FirstStageOn::Global)
                    .into_iter()
                    .collect();
            let hits = exact.iter().filter(|h| stage.contains(&h.index)).count();
            kept.push(hits as f64 / exact.len().max(1) as f64);
        }
        let kept_mean = kept.iter().sum::<f64>() / kept.len() as f64;
        return Ok(vec![
            SearchResult {
                candidates: n,
                d,
                k,
                first_stage: false,
                latency_ms: median(without),
                top10_kept: None,
                storage: "resident",
                skipped: None,
            },
            SearchResult {
                candidates: n,
                d,
                k,
                first_stage: true,
                latency_ms: median(with),
                top10_kept: Some(kept_mean),
                storage: "resident",
                skipped: None,
            },
        ]);
    }
    // Globals resident; the kept candidates' perspective vectors regenerated per query.
    let globals = synth.gallery(n, 1);
    let mut with = Vec::new();
    for query in &queries {
        let start = Instant::now();
        let stage = first_stage(&query[..d], &globals, Some(keep), FirstStageOn::Global);
        let mut shortlist = GalleryEmbeddings {
            items: stage.iter().map(|&i| globals.items[i].clone()).collect(),
            per_item: per,
            dim: d,
            data: vec![0f32; stage.len() * per * d],
        };
        shortlist
            .data
            .par_chunks_mut(per * d)
            .zip(stage.par_iter())
            .for_each(|(out, &i)| synth.item(i, out));
        let hits = search(
            query,
            &shortlist,
            scorer,
            &SearchOptions {
                top_k: 10,
                first_stage: None,
                first_stage_on: FirstStageOn::Global,
            },
        )?;
        with.push(ms(start));
        std::hint::black_box(&hits);
    }
    let gb = full_bytes as f64 / 1e9;
    Ok(vec![
        SearchResult {
            candidates: n,
            d,
            k,
            first_stage: false,
            latency_ms: None,
            top10_kept: None,
            storage: "globals-resident",
            skipped: Some(format!(
                "the full f32 gallery needs {gb:.1} GB (twice that for an exact ranking); \
                 not enough memory here"
            )),
        },
        SearchResult {
            candidates: n,
            d,
            k,
            first_stage: true,
            latency_ms: median(with),
            top10_kept: None,
            storage: "globals-resident",
            skipped: None,
        },
    ])
}

/// Runs `bench search`.
pub fn run(args: &SearchBenchArgs) -> anyhow::Result<()> {
    if args.candidates.contains(&0) || args.dims.contains(&0) || args.queries == 0 {
        anyhow::bail!("--candidates, every --dim and --queries must be at least 1");
    }
    let (embed_seconds, embed_images_per_sec) = if args.scenes > 0 {
        if !args.json {
            eprintln!("rendering and embedding {} scenes…", args.scenes);
        }
        let s = embed_throughput(args.scenes).context("embedding throughput")?;
        (Some(s), Some(args.scenes as f64 / s))
    } else {
        (None, None)
    };
    let fusion = Fusion::new(
        FusionInit::default(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let scorer = FusedScorer::new(SimilarityConfig::default(), &fusion)?;
    let mut results = Vec::new();
    for &n in &args.candidates {
        for &d in &args.dims {
            if !args.json {
                eprintln!("search: {n} candidates, d = {d}, K = {}…", args.k);
            }
            results.extend(measure(args, &scorer, n, d)?);
        }
    }
    let report = SearchReport {
        threads: rayon::current_num_threads(),
        scenes: args.scenes,
        embed_seconds,
        embed_images_per_sec,
        first_stage_keep: args.first_stage.max(10),
        queries: args.queries,
        search: results,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let (Some(s), Some(rate)) = (embed_seconds, embed_images_per_sec) {
        println!(
            "demo model: {} scenes embedded in {s:.1} s = {rate:.1} images/s ({} threads)",
            args.scenes, report.threads
        );
    }
    println!(
        "{:>10} {:>5} {:>3} {:>12} {:>12} {:>10}  storage",
        "candidates", "d", "K", "first stage", "latency ms", "top10 kept"
    );
    for r in &report.search {
        let stage = if r.first_stage {
            format!("keep {}", report.first_stage_keep)
        } else {
            "off".into()
        };
        let latency = r.latency_ms.map_or("not run".into(), |v| format!("{v:.1}"));
        let kept = r.top10_kept.map_or("-".into(), |v| format!("{v:.3}"));
        println!(
            "{:>10} {:>5} {:>3} {:>12} {:>12} {:>10}  {}",
            r.candidates, r.d, r.k, stage, latency, kept, r.storage
        );
        if let Some(why) = &r.skipped {
            println!("{:>10} {why}", "");
        }
    }
    if let Some(mb) = report.peak_rss_mb {
        println!("peak resident memory: {mb:.0} MiB");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_items_are_unit_and_regenerate_identically() {
        let s = Synthetic::new(3, 32, 4, 10);
        let full = s.gallery(50, 5);
        let globals = s.gallery(50, 1);
        for i in 0..50 {
            let item = full.item(i);
            assert_eq!(&item[..32], globals.item(i), "global of item {i}");
            for v in item.chunks(32) {
                let n: f32 = v.iter().map(|x| x * x).sum();
                assert!((n - 1.0).abs() < 1e-4);
            }
            let mut again = vec![0f32; 5 * 32];
            s.item(i, &mut again);
            assert_eq!(item, &again[..]);
        }
    }
}
