//! `agff-lens eval`: P-MMVP, MMVP-VLM folders and scene retrieval, for the fused score and
//! each perception pattern alone.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;

use super::load_backbone;
use crate::model::DeviceChoice;
use crate::scenes::MmvpPattern;
use crate::scenes::eval::PMMVP_SEED;
use crate::scenes::eval::{Evaluator, PairReport};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// The P-MMVP pair benchmark on generated scenes (MMVP-VLM's 9 patterns and scoring).
    Pmmvp(PmmvpArgs),
    /// Any folder in the MMVP-VLM layout (Questions.csv + images), e.g. the real benchmark.
    Mmvp(MmvpArgs),
    /// The pointing game on generated scenes: does each heatmap method's peak fall on the
    /// object the query names?
    Pointing(PointingArgs),
}

#[derive(Debug, Args)]
pub struct PointingArgs {
    #[arg(long)]
    pub model: String,
    /// Scenes (queries) per method.
    #[arg(long, default_value_t = 100)]
    pub scenes: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct Common {
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PmmvpArgs {
    /// Model(s) to evaluate (repeat for a side-by-side table).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Pairs per pattern.
    #[arg(long, default_value_t = 15)]
    pub pairs: usize,
    #[arg(long, default_value_t = PMMVP_SEED)]
    pub seed: u64,
    /// Also text→image and image→text recall@1 over this many held-out scenes.
    #[arg(long, default_value_t = 0)]
    pub retrieval: usize,
    /// Print a Markdown table (one column per model).
    #[arg(long)]
    pub markdown: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct MmvpArgs {
    #[arg(long)]
    pub model: String,
    /// The folder holding Questions.csv.
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Serialize)]
struct Retrieval {
    scenes: usize,
    text_to_image_r1: f64,
    image_to_text_r1: f64,
}

#[derive(Serialize)]
struct ModelReport {
    model: String,
    #[serde(flatten)]
    report: PairReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    retrieval: Option<Retrieval>,
}

fn bar(len: usize, json: bool) -> ProgressBar {
    if json || len == 0 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len as u64)
    }
}

pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Pmmvp(args) => pmmvp(&args),
        EvalCommand::Pointing(args) => {
            use crate::explain::{Explainer, Method, pointing_game};
            let backbone = load_backbone(&args.model, &args.common.dtype, &args.common.device)?;
            let fusion = crate::agff::Fusion::for_backbone(backbone.as_ref())?;
            let explainer =
                Explainer::new(backbone.as_ref(), backbone.default_perspectives(), fusion);
            let mut methods = serde_json::Map::new();
            for method in Method::ALL {
                let pb = bar(args.scenes, args.common.json);
                let s = pointing_game(&explainer, method, args.scenes, args.seed, |d, _| {
                    pb.set_position(d as u64)
                })?;
                pb.finish_and_clear();
                if !args.common.json {
                    println!(
                        "{:<12} hit rate {:.3} ({} of {}; a random cell: {:.3})",
                        method.name(),
                        s.hit_rate,
                        s.hits,
                        s.trials,
                        s.chance
                    );
                }
                methods.insert(method.name().into(), serde_json::to_value(s)?);
            }
            if args.common.json {
                println!("{}", serde_json::json!({ "methods": methods }));
            }
            Ok(())
        }
        EvalCommand::Mmvp(args) => {
            let backbone = load_backbone(&args.model, &args.common.dtype, &args.common.device)?;
            let eval = Evaluator::new(backbone.as_ref())?;
            let pb = bar(1, args.common.json);
            let report = eval.mmvp_dir(&args.dir, |done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            })?;
            pb.finish_and_clear();
            if args.common.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&args.model, &report);
            }
            Ok(())
        }
    }
}

fn pmmvp(args: &PmmvpArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for model in &args.models {
        let backbone = load_backbone(model, &args.common.dtype, &args.common.device)?;
        let eval = Evaluator::new(backbone.as_ref())?;
        let total = args.pairs * MmvpPattern::ALL.len();
        let pb = bar(total, args.common.json);
        let report = eval.pmmvp(args.pairs, args.seed, |done, _| {
            pb.set_position(done as u64)
        })?;
        pb.finish_and_clear();
        let retrieval = if args.retrieval > 0 {
            let pb = bar(args.retrieval, args.common.json);
            let (t2i, i2t) = eval.retrieval(args.retrieval, args.seed ^ 0x7e7, |d, _| {
                pb.set_position(d as u64)
            })?;
            pb.finish_and_clear();
            Some(Retrieval {
                scenes: args.retrieval,
                text_to_image_r1: t2i,
                image_to_text_r1: i2t,
            })
        } else {
            None
        };
        reports.push(ModelReport {
            model: model.clone(),
            report,
            retrieval,
        });
    }
    if args.markdown {
        print_markdown(&reports);
    } else if args.common.json {
        if reports.len() == 1 {
            println!("{}", serde_json::to_string(&reports[0])?);
        } else {
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({ "models": reports }))?
            );
        }
    } else {
        for r in &reports {
            print_report(&r.model, &r.report);
            if let Some(t) = &r.retrieval {
                println!(
                    "  recall@1 over {} scenes: text→image {:.3}, image→text {:.3}",
                    t.scenes, t.text_to_image_r1, t.image_to_text_r1
                );
            }
        }
    }
    Ok(())
}

fn print_report(model: &str, r: &PairReport) {
    println!("{model}: pair accuracy (%)");
    println!(
        "  {:<12} {:>6} {:>6} {:>6} {:>6} {:>6}   {:>7} {:>7}",
        "pattern", "fused", "GG", "FG", "GF", "FF", "cos img", "cos txt"
    );
    let rows = MmvpPattern::ALL
        .iter()
        .filter_map(|p| r.patterns.get(p.name()).map(|v| (p.name(), v)))
        .chain(std::iter::once(("average", &r.average)));
    for (name, s) in rows {
        let cosines = r
            .separation
            .get(name)
            .map(|c| format!("   {:>7.4} {:>7.4}", c.images, c.statements))
            .unwrap_or_default();
        println!(
            "  {:<12} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1}{cosines}",
            name, s.fused, s.gg, s.fg, s.gf, s.ff
        );
    }
    println!(
        "  (cos img / cos txt: mean cosine of a pair's two images / two statements, global \
         view; near 1, the model does not tell them apart)"
    );
}

fn print_markdown(reports: &[ModelReport]) {
    let mut header = String::from("| pattern |");
    let mut rule = String::from("|---|");
    for r in reports {
        header.push_str(&format!(" {} fused | {} GG |", r.model, r.model));
        rule.push_str("---:|---:|");
    }
    println!("{header}\n{rule}");
    let names: Vec<String> = MmvpPattern::ALL
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    for name in names.iter().map(String::as_str).chain(["**average**"]) {
        let mut line = format!("| {name} |");
        for r in reports {
            let s = if name == "**average**" {
                Some(&r.report.average)
            } else {
                r.report.patterns.get(name)
            };
            match s {
                Some(s) => line.push_str(&format!(" {:.1} | {:.1} |", s.fused, s.gg)),
                None => line.push_str(" – | – |"),
            }
        }
        println!("{line}");
    }
    for (label, pick) in [("text→image R@1", 0usize), ("image→text R@1", 1usize)] {
        let mut line = format!("| {label} |");
        for r in reports {
            match &r.retrieval {
                Some(t) => {
                    let v = if pick == 0 {
                        t.text_to_image_r1
                    } else {
                        t.image_to_text_r1
                    };
                    line.push_str(&format!(" {:.1} | |", 100.0 * v));
                }
                None => line.push_str(" – | |"),
            }
        }
        println!("{line}");
    }
}
