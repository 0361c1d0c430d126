//! `agff-lens bench …`: speed measurements anyone can rerun.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;

use crate::agff::{
    Aggregator, FfPairing, FusedScorer, Fusion, FusionInit, PerspectiveEmbeddings,
    SimilarityConfig, agff_similarities,
};
use crate::model::DeviceChoice;

/// Options of `bench fusion`.
#[derive(Debug, Args)]
pub struct FusionArgs {
    /// Number of queries Q.
    #[arg(long, default_value_t = 64)]
    pub queries: usize,
    /// Number of candidates C.
    #[arg(long, default_value_t = 4096)]
    pub candidates: usize,
    /// Fine-grained perspectives K.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Embedding widths d to measure.
    #[arg(long = "dim", value_delimiter = ',', default_values_t = [256, 2048])]
    pub dims: Vec<usize>,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// Aggregator of the pattern similarities: max, mean, lme or lme:GAMMA.
    #[arg(long, default_value = "lme", value_parser = checked::<Aggregator>)]
    pub aggregator: String,
    /// FF pairing: matched or all.
    #[arg(long, default_value = "matched", value_parser = checked::<FfPairing>)]
    pub ff: String,
    /// Compute device: cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A value parser that keeps the text as typed once it parses as `T` (so a bad value is
/// clap's usage error, exit code 2, and the report shows what the user wrote).
fn checked<T: std::str::FromStr>(s: &str) -> Result<String, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// One measured configuration.
#[derive(Debug, Serialize)]
pub struct FusionResult {
    /// Embedding width d.
    pub d: usize,
    /// Fine-grained perspectives K.
    pub k: usize,
    /// Queries Q.
    pub queries: usize,
    /// Candidates C.
    pub candidates: usize,
    /// Median seconds to score all Q×C pairs (similarities, fused score and weights) with the
    /// inference scorer used by search.
    pub fusion_seconds: f64,
    /// Median seconds of the plain matrix product with the same FLOP count.
    pub gemm_seconds: f64,
    /// Q·C pairs over the fusion time.
    pub pairs_per_sec: f64,
    /// `2·Q·C·(1+K)²·d` FLOPs over the fusion time.
    pub fusion_gflops: f64,
    /// The same FLOPs over the plain product's time.
    pub gemm_gflops: f64,
    /// fusion_gflops / gemm_gflops.
    pub ratio: f64,
    /// Median seconds of the differentiable tensor path used in training (patterns +
    /// fusion, no backward pass).
    pub autograd_seconds: f64,
    /// The same FLOPs over the differentiable path's time.
    pub autograd_gflops: f64,
    /// autograd_gflops / gemm_gflops.
    pub autograd_ratio: f64,
}

#[derive(Debug, Serialize)]
struct FusionReport {
    device: String,
    threads: usize,
    reps: usize,
    aggregator: String,
    ff: String,
    results: Vec<FusionResult>,
}

/// The time of one call of `f`. With `pace` (a paced run, see `bench model --paced`) the
/// call first waits for a line on standard input, and its time is reported under that
/// name as a JSON line on standard error.
fn timed_call(
    device: &Device,
    pace: Option<&str>,
    f: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    if pace.is_some() {
        // End of input or an error means the driver is gone: run on unpaced.
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(what) = pace {
        eprintln!(
            "{}",
            serde_json::json!({ "paced": what, "seconds": seconds })
        );
    }
    Ok(seconds)
}

/// The median time of `reps` calls of `f`, after one untimed warm-up call.
fn median_seconds(
    reps: usize,
    device: &Device,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    timed_call(device, None, &mut f)?; // warm-up: allocations, kernel compilation, thread pools
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(timed_call(device, None, &mut f)?);
    }
    Ok(median(times))
}

/// The median of non-empty `v` (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `bench fusion`.
pub fn fusion(args: &FusionArgs) -> anyhow::Result<()> {
    if args.queries == 0 || args.candidates == 0 || args.dims.contains(&0) {
        anyhow::bail!("--queries, --candidates and every --dim must be at least 1");
    }
    let device = args.device.open()?;
    let config = SimilarityConfig {
        aggregator: args.aggregator.parse()?,
        ff_pairing: args.ff.parse()?,
    };
    let fusion = Fusion::new(FusionInit::default(), DType::F32, &device)?;
    let p = args.k + 1;
    let mut results = Vec::new();
    for &d in &args.dims {
        let (nq, nc) = (args.queries, args.candidates);
        let random = |n: usize| -> anyhow::Result<PerspectiveEmbeddings> {
            let raw = Tensor::randn(0f32, 1.0, (n, p, d), &device)?;
            Ok(PerspectiveEmbeddings::from_raw(raw)?)
        };
        let q = random(nq).context("making random queries")?;
        let c = random(nc).context("making random candidates")?;
        let scorer = FusedScorer::new(config, &fusion)?;
        let fusion_seconds = median_seconds(args.reps, &device, || {
            let table = scorer.score(&q, &c)?;
            anyhow::ensure!(
                table.pairs.len() == nq * nc,
                "scorer returned too few pairs"
            );
            Ok(())
        })?;
        let autograd_seconds = median_seconds(args.reps, &device, || {
            let scores = agff_similarities(&q, &c, &config)?;
            let fused = fusion.fuse(&scores.similarities)?;
            // Make sure lazy back-ends have finished the work.
            fused.scores.sum_all()?;
            Ok(())
        })?;
        // The plain product with exactly the fusion's GEMM shape and FLOPs.
        let a = Tensor::randn(0f32, 1.0, (nq * p, d), &device)?;
        let b = Tensor::randn(0f32, 1.0, (nc * p, d), &device)?;
        let gemm_seconds = median_seconds(args.reps, &device, || {
            a.matmul(&b.t()?)?.sum_all()?;
            Ok(())
        })?;
        let flops = 2.0 * (nq * nc * p * p * d) as f64;
        let fusion_gflops = flops / fusion_seconds / 1e9;
        let gemm_gflops = flops / gemm_seconds / 1e9;
        results.push(FusionResult {
            d,
            k: args.k,
            queries: nq,
            candidates: nc,
            fusion_seconds,
            gemm_seconds,
            pairs_per_sec: (nq * nc) as f64 / fusion_seconds,
            fusion_gflops,
            gemm_gflops,
            ratio: fusion_gflops / gemm_gflops,
            autograd_seconds,
            autograd_gflops: flops / autograd_seconds / 1e9,
            autograd_ratio: gemm_seconds / autograd_seconds,
        });
    }
    let report = FusionReport {
        device: args.device.to_string(),
        threads: candle_core::utils::get_num_threads(),
        reps: args.reps,
        aggregator: args.aggregator.clone(),
        ff: args.ff.clone(),
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "fusion scoring, {} queries × {} candidates, K={}, aggregator {}, FF {}, device {}, {} threads, median of {}",
            args.queries,
            args.candidates,
            args.k,
            report.aggregator,
            report.ff,
            report.device,
            report.threads,
            report.reps
        );
        println!(
            "{:>6} {:>14} {:>12} {:>12} {:>12} {:>12} {:>7} {:>12} {:>10}",
            "d",
            "pairs/s",
            "fusion ms",
            "fusion GF/s",
            "gemm ms",
            "gemm GF/s",
            "ratio",
            "autograd ms",
            "autograd r"
        );
        for r in &report.results {
            println!(
                "{:>6} {:>14.0} {:>12.2} {:>12.1} {:>12.2} {:>12.1} {:>7.3} {:>12.2} {:>10.3}",
                r.d,
                r.pairs_per_sec,
                r.fusion_seconds * 1e3,
                r.fusion_gflops,
                r.gemm_seconds * 1e3,
                r.gemm_gflops,
                r.ratio,
                r.autograd_seconds * 1e3,
                r.autograd_ratio
            );
        }
    }
    Ok(())
}

/// Options of `bench model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// `demo`, a local Hugging Face folder, or a Hub repo id.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub model: Option<String>,
    /// A Qwen3-VL config.json: time that configuration with random weights (no checkpoint
    /// needed; text is cut into word-like pieces instead of BPE tokens).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Width of the test image, in pixels (and its height, unless `--image-height`).
    #[arg(long, default_value_t = 448)]
    pub image_size: u32,
    /// Height of the test image (default: `--image-size`, a square), e.g. 3000 with
    /// `--image-size 4000` for a 12-megapixel photo.
    #[arg(long)]
    pub image_height: Option<u32>,
    /// Image preprocessing of a Qwen3-VL model or `--config` (default: the model's own;
    /// `processor` for `--config`).
    #[arg(long, value_enum)]
    pub preprocess: Option<super::Preprocess>,
    /// Time one embedding of the global perspective only, without a warm-up (for inputs
    /// that take minutes on a CPU).
    #[arg(long, conflicts_with = "paced")]
    pub once: bool,
    /// Words of text embedded with the image (0: the image alone).
    #[arg(long, default_value_t = 0)]
    pub text_words: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Weights dtype.
    #[arg(long, value_enum, default_value_t = super::Dtype::F32)]
    pub dtype: super::Dtype,
    /// Compute device: cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Wait for a line on standard input before each embedding (one perspective, then
    /// 1+K, for the warm-up and each rep) and print each one's time to standard error as
    /// a JSON line, so that a driver can alternate this benchmark with another one image
    /// by image (`benches/paired_qwen3vl.py`).
    #[arg(long)]
    pub paced: bool,
}

#[derive(Debug, Serialize)]
struct ModelReport {
    model: String,
    device: String,
    threads: usize,
    image_size: u32,
    image_height: u32,
    /// How images were prepared (the model identity's preprocessing).
    preprocess: String,
    text_words: usize,
    k: usize,
    /// Tokens of the global branch's full sequence.
    tokens: usize,
    single_seconds: f64,
    multi_seconds: f64,
    single_per_sec: f64,
    multi_per_sec: f64,
    /// multi_seconds / single_seconds.
    multi_over_single: f64,
}

/// Runs `bench model`.
pub fn model(args: &ModelArgs) -> anyhow::Result<()> {
    use crate::model::qwen3_vl::preprocess::ImageProcessorConfig;
    use crate::model::qwen3_vl::{Qwen3Vl, Qwen3VlConfig};
    use crate::model::{Backbone, EmbedInput, EmbedOptions, PerspectiveSet};

    let dtype = args.dtype.dtype();
    let device = args.device.open()?;
    let backbone: Box<dyn Backbone> = match (&args.model, &args.config) {
        (_, Some(config)) => {
            let cfg = Qwen3VlConfig::from_file(config)?;
            let mut model = Qwen3Vl::random(cfg, ImageProcessorConfig::default(), dtype, &device)?;
            if let Some(super::Preprocess::Embedder) = args.preprocess {
                model.set_preprocess(crate::model::qwen3_vl::PreprocessProfile::EMBEDDER);
            }
            Box::new(model)
        }
        (Some(m), None) if m.trim() == "demo" => {
            return Err(super::NotAvailable("bench model --model demo").into());
        }
        (Some(m), None) => crate::session::load_backbone(
            m,
            &crate::session::LoadOptions {
                dtype,
                device: args.device,
                images: crate::model::loader::ImageOptions {
                    profile: args.preprocess.map(|p| match p {
                        super::Preprocess::Embedder => crate::model::loader::ProfileKind::Embedder,
                        super::Preprocess::Processor => {
                            crate::model::loader::ProfileKind::Processor
                        }
                    }),
                    ..Default::default()
                },
                ..crate::session::LoadOptions::default()
            },
            &mut super::progress::TerminalDownload::new(),
        )?,
        (None, None) => anyhow::bail!("give --model or --config"),
    };
    // A deterministic noise image: content does not change the cost.
    let side = args.image_size.max(1);
    let height = args.image_height.unwrap_or(side).max(1);
    let mut rng = crate::util::rng::SplitMix64::new(0x2545_f491_4f6c_dd1d);
    let image = image::RgbImage::from_fn(side, height, |_, _| {
        let z = rng.next_u64();
        image::Rgb([z as u8, (z >> 8) as u8, (z >> 16) as u8])
    });
    let words = [
        "a", "small", "red", "cube", "left", "of", "two", "blue", "spheres", "on", "grass",
    ];
    let text: Vec<&str> = (0..args.text_words)
        .map(|i| words[i % words.len()])
        .collect();
    let input = EmbedInput {
        image: Some(image),
        text: if text.is_empty() {
            None
        } else {
            Some(text.join(" "))
        },
    };
    let multi = PerspectiveSet::default_real();
    let single = PerspectiveSet {
        perspectives: multi.perspectives[..1].to_vec(),
    };
    let options = EmbedOptions::default();
    let mut tokens = 0;
    // One perspective and 1+K alternate, rep by rep, so that both medians come from the
    // same stretch of time (this machine's speed drifts within minutes).
    let mut run = |set: &PerspectiveSet, what: &str| -> anyhow::Result<f64> {
        timed_call(&device, args.paced.then_some(what), || {
            let e = backbone.embed(&input, set, &options)?;
            // The global branch comes first in both sets: the same sequence.
            tokens = e.branches[0].input_ids.len();
            e.vectors.sum_all()?;
            Ok(())
        })
    };
    let (mut singles, mut multis) = (Vec::new(), Vec::new());
    if args.once {
        let s = run(&single, "single")?;
        let report = serde_json::json!({
            "model": backbone.identity().name,
            "device": args.device.to_string(),
            "threads": candle_core::utils::get_num_threads(),
            "image_size": side,
            "image_height": height,
            "preprocess": backbone.identity().preprocess,
            "tokens": tokens,
            "single_seconds": s,
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} on {}, {side}x{height} image ({}), {tokens} tokens: {s:.3} s for one embedding of the global perspective (no warm-up)",
                backbone.identity().name,
                args.device,
                backbone.identity().preprocess
            );
        }
        return Ok(());
    }
    for rep in 0..=args.reps.max(1) {
        let s = run(&single, "single")?;
        let m = run(&multi, "multi")?;
        // Rep 0 is the warm-up of each.
        if rep > 0 {
            singles.push(s);
            multis.push(m);
        }
    }
    let (single_seconds, multi_seconds) = (median(singles), median(multis));
    let report = ModelReport {
        model: backbone.identity().name.clone(),
        device: args.device.to_string(),
        threads: candle_core::utils::get_num_threads(),
        image_size: side,
        image_height: height,
        preprocess: backbone.identity().preprocess.clone(),
        text_words: args.text_words,
        k: multi.k(),
        tokens,
        single_seconds,
        multi_seconds,
        single_per_sec: 1.0 / single_seconds,
        multi_per_sec: 1.0 / multi_seconds,
        multi_over_single: multi_seconds / single_seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {} ({} threads), {}x{} image, {} text words, {} tokens, median of {}",
            report.model,
            report.device,
            report.threads,
            side,
            height,
            args.text_words,
            tokens,
            args.reps
        );
        println!(
            "  1 perspective:     {:.3} s/item  ({:.3} items/s)",
            single_seconds, report.single_per_sec
        );
        println!(
            "  1+{} perspectives: {:.3} s/item  ({:.3} items/s), {:.3}x the single cost",
            report.k, multi_seconds, report.multi_per_sec, report.multi_over_single
        );
    }
    Ok(())
}

/// Options of `bench tower`.
#[derive(Debug, Args)]
pub struct TowerArgs {
    /// Timed steps (after 2 untimed warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Scenes per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// Seconds per training step, as `bench tower` and `bench contrastive` report them.
#[derive(Debug, Serialize)]
struct StepTimes {
    steps: usize,
    batch: usize,
    median_s: f64,
    min_s: f64,
    max_s: f64,
    scenes_per_s: f64,
}

impl StepTimes {
    /// The summary of the timed steps' `seconds`, `batch` scenes each.
    fn new(batch: usize, seconds: &[f64]) -> Self {
        let median_s = median(seconds.to_vec());
        Self {
            steps: seconds.len(),
            batch,
            median_s,
            min_s: seconds.iter().copied().fold(f64::INFINITY, f64::min),
            max_s: seconds.iter().copied().fold(0.0, f64::max),
            scenes_per_s: batch as f64 / median_s,
        }
    }

    /// Prints the summary as JSON or as one line about the `what` step.
    fn print(&self, what: &str, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            println!(
                "{what} step (batch {}): median {:.3} s (min {:.3}, max {:.3}) over {} steps, {:.1} scenes/s",
                self.batch, self.median_s, self.min_s, self.max_s, self.steps, self.scenes_per_s
            );
        }
        Ok(())
    }
}

/// `bench tower`: the demo recipe's stage-1 step (render, forward, backward, AdamW) on a
/// freshly initialised demo model, CPU, median seconds per step.
pub fn tower(args: &TowerArgs) -> anyhow::Result<()> {
    use crate::model::demo::{DemoConfig, DemoModel};
    use crate::train::vision::{VisionSettings, pretrain_vision};
    use crate::train::{TrainControl, TrainEvent};
    if args.steps == 0 || args.batch == 0 {
        anyhow::bail!("--steps and --batch must be positive");
    }
    let words = crate::scenes::vocabulary();
    let config = DemoConfig::new(&words, DemoConfig::default_perspectives(4));
    let mut model = DemoModel::random(config, 0, &Device::Cpu)?;
    let out = tempfile::tempdir().context("a temporary folder for the tower")?;
    let warm = 2;
    let (tx, rx) = std::sync::mpsc::sync_channel((args.steps + warm) as usize + 16);
    let settings = VisionSettings {
        steps: args.steps + warm,
        batch: args.batch,
        ..VisionSettings::default()
    };
    pretrain_vision(
        &mut model,
        &settings,
        out.path(),
        &TrainControl::default(),
        &Some(tx),
    )?;
    let seconds: Vec<f64> = rx
        .try_iter()
        .filter_map(|e| match e {
            TrainEvent::Step(r) => Some(r.seconds),
            _ => None,
        })
        .skip(warm as usize)
        .collect();
    StepTimes::new(args.batch, &seconds).print("tower", args.json)
}

/// Options of `bench contrastive`.
#[derive(Debug, Args)]
pub struct ContrastiveArgs {
    /// Timed steps (after the run's first 30 %, whose batches hold fewer minimal pairs).
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// `bench contrastive`: the demo recipe's stage-2 step (scenes, captions, object queries
/// and minimal pairs; the frozen tower, the language model under 1 + 4 perspectives, the
/// fused InfoNCE with EGA both ways, the scene and text heads; backward, AdamW) on a
/// freshly initialised demo model, CPU, median seconds per step. The tower is random, not
/// pre-trained: the same arithmetic as the recipe's, which loads stage 1's.
pub fn contrastive(args: &ContrastiveArgs) -> anyhow::Result<()> {
    use crate::session::defaults;
    use crate::train::{TrainControl, TrainEvent, TrainSettings, train_demo};
    if args.steps == 0 {
        anyhow::bail!("--steps must be positive");
    }
    // The share of minimal pairs ramps up over the first 30 % of a run: time the rest.
    let untimed = (args.steps * 3).div_ceil(7);
    let total = untimed + args.steps;
    let out = tempfile::tempdir().context("a temporary folder for the run")?;
    let settings = TrainSettings {
        checkpoint_every: total,
        scene_heads: 1.0,
        text_heads: 1.0,
        ..defaults::recipe(total)
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(total as usize + 16);
    train_demo(
        &settings,
        out.path(),
        false,
        &TrainControl::default(),
        Some(tx),
    )?;
    let seconds: Vec<f64> = rx
        .try_iter()
        .filter_map(|e| match e {
            TrainEvent::Step(r) if r.step > untimed => Some(r.seconds),
            _ => None,
        })
        .collect();
    StepTimes::new(settings.batch, &seconds).print("contrastive", args.json)
}
