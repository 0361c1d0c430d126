//! `agff-lens eval`: P-MMVP, MMVP-VLM folders and scene retrieval, for the fused score and
//! each perception pattern alone.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::scenes::MmvpPattern;
use crate::scenes::eval::PMMVP_SEED;
use crate::scenes::eval::{Evaluator, PairReport, Retrieval};

/// What `eval` measures.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// The P-MMVP pair benchmark on generated scenes (MMVP-VLM's 9 patterns and scoring).
    Pmmvp(PmmvpArgs),
    /// Any folder in the MMVP-VLM layout (Questions.csv + images), e.g. the real benchmark.
    Mmvp(MmvpArgs),
    /// The pointing game on generated scenes: does each heatmap method's peak fall on the
    /// object the query names?
    Pointing(PointingArgs),
    /// Linear probes of a demo model's frozen vision tower: per visual token, the shape,
    /// colour, size, fill, orientation and characters of the object under it; per image,
    /// the object count, setting and zoom. Held-out accuracy per attribute.
    Probes(ProbesArgs),
}

/// Options of `eval probes`.
#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// A demo model: `demo` or a folder saved by `train --recipe demo`.
    #[arg(long)]
    pub model: String,
    /// Scenes the probes are fitted on.
    #[arg(long, default_value_t = 3000)]
    pub train_scenes: usize,
    /// Held-out scenes they are scored on.
    #[arg(long, default_value_t = 1000)]
    pub test_scenes: usize,
    /// Seed of the fitting scenes (the held-out ones use seed + 1).
    #[arg(long, default_value_t = 7_000_001)]
    pub seed: u64,
    /// Full-batch Adam steps each probe is fitted with.
    #[arg(long, default_value_t = 300)]
    pub fit_steps: usize,
    /// Also probe each token's column, from the tower's tokens and from the language
    /// model's inputs (for a model with a trained projector: stage 2, not `OUT/vision`).
    #[arg(long)]
    pub positions: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `eval pointing`.
#[derive(Debug, Args)]
pub struct PointingArgs {
    /// `demo`, a local folder, or a Hub repo id.
    #[arg(long)]
    pub model: String,
    /// Scenes (queries) per method (at least 1).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub scenes: usize,
    /// Seed of the generated scenes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// How the model runs; JSON output.
    #[command(flatten)]
    pub common: Common,
}

/// Options shared by `eval pmmvp`, `eval mmvp` and `eval pointing`.
#[derive(Debug, Args)]
pub struct Common {
    /// How the model runs and what it embeds with.
    #[command(flatten)]
    pub run: super::RunArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// An evaluator with the session's perspectives, soft prompts and fusion.
fn evaluator(session: &crate::session::Session) -> anyhow::Result<Evaluator<'_>> {
    Ok(Evaluator::with_setup(
        session.backbone.as_ref(),
        session.perspectives.clone(),
        session.soft.clone(),
        &session.fusion,
    )?)
}

/// Options of `eval pmmvp`.
#[derive(Debug, Args)]
pub struct PmmvpArgs {
    /// Model(s) to evaluate (repeat for a side-by-side table).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Pairs per pattern (at least 1).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub pairs: usize,
    /// Seed of the pairs (the retrieval scenes use one derived from it).
    #[arg(long, default_value_t = PMMVP_SEED)]
    pub seed: u64,
    /// Also text→image and image→text recall@1 over this many held-out scenes.
    #[arg(long, default_value_t = 0)]
    pub retrieval: usize,
    /// Print a Markdown table (one column per model).
    #[arg(long)]
    pub markdown: bool,
    /// How the models run; JSON output.
    #[command(flatten)]
    pub common: Common,
}

/// Options of `eval mmvp`.
#[derive(Debug, Args)]
pub struct MmvpArgs {
    /// Model(s) to evaluate: `demo`, a local folder, or a Hub repo id (repeat for one
    /// table with a row per model).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// The folder holding Questions.csv.
    #[arg(long)]
    pub dir: PathBuf,
    /// How the model runs; JSON output.
    #[command(flatten)]
    pub common: Common,
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

/// Runs `eval`.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Probes(args) => {
            use crate::model::demo::DemoModel;
            use crate::train::vision::{ProbeSettings, probe_vision};
            let device = candle_core::Device::Cpu;
            let model = if args.model == "demo" {
                DemoModel::embedded(&device)?
            } else {
                DemoModel::load(std::path::Path::new(&args.model), &device)?
            };
            let report = probe_vision(
                &model,
                &ProbeSettings {
                    train_scenes: args.train_scenes,
                    test_scenes: args.test_scenes,
                    seed: args.seed,
                    steps: args.fit_steps,
                    positions: args.positions,
                },
            )?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}: linear probes, fitted on {} scenes ({} steps), scored on {} others",
                    args.model, report.train_scenes, args.fit_steps, report.test_scenes
                );
                for (name, acc) in &report.accuracy {
                    let fit = report.fit_accuracy.get(name).copied().unwrap_or(f64::NAN);
                    println!(
                        "  {name:<30} {:>6.1} %  ({} held-out rows; {:.1} % on the rows fitted)",
                        100.0 * acc,
                        report.rows[name],
                        100.0 * fit
                    );
                }
            }
            Ok(())
        }
        EvalCommand::Pmmvp(args) => pmmvp(&args),
        EvalCommand::Pointing(args) => {
            use crate::explain::{Method, composite_pointing_game, pointing_game};
            let session = args.common.run.session(&args.model)?;
            let explainer = session.explainer();
            let mut methods = serde_json::Map::new();
            let mut composite = serde_json::Map::new();
            for method in Method::ALL {
                let pb = bar(args.scenes, args.common.json);
                let s = pointing_game(&explainer, method, args.scenes, args.seed, |d, _| {
                    pb.set_position(d as u64);
                })?;
                pb.finish_and_clear();
                let pb = bar(args.scenes, args.common.json);
                let c = composite_pointing_game(
                    &explainer,
                    method,
                    args.scenes,
                    args.seed ^ 0xc0,
                    |d, _| pb.set_position(d as u64),
                )?;
                pb.finish_and_clear();
                if !args.common.json {
                    println!(
                        "{:<14} hit rate {:.3} ({} of {}; a random cell: {:.3}); energy in the box {:.3}; 2×2 composite: quadrant hit rate {:.3} (chance {:.3}), energy {:.3}",
                        method.name(),
                        s.hit_rate,
                        s.hits,
                        s.trials,
                        s.chance,
                        s.energy,
                        c.hit_rate,
                        c.chance,
                        c.energy
                    );
                }
                methods.insert(method.name().into(), serde_json::to_value(s)?);
                composite.insert(method.name().into(), serde_json::to_value(c)?);
            }
            if args.common.json {
                println!(
                    "{}",
                    serde_json::json!({ "methods": methods, "composite": composite })
                );
            }
            Ok(())
        }
        EvalCommand::Mmvp(args) => {
            let mut reports = Vec::new();
            for model in &args.models {
                let session = args.common.run.session(model)?;
                let eval = evaluator(&session)?;
                let pb = bar(1, args.common.json);
                let report = eval.mmvp_dir(&args.dir, |done, total| {
                    pb.set_length(total as u64);
                    pb.set_position(done as u64);
                })?;
                pb.finish_and_clear();
                reports.push(ModelReport {
                    model: model.clone(),
                    report,
                    retrieval: None,
                });
            }
            if args.common.json {
                print_json(&reports)?;
            } else if let [one] = reports.as_slice() {
                print_report(&one.model, &one.report);
            } else {
                print_rows("MMVP-VLM", &reports);
            }
            Ok(())
        }
    }
}

/// One model's report as JSON, or `{"models": [...]}` for several.
fn print_json(reports: &[ModelReport]) -> anyhow::Result<()> {
    if let [one] = reports {
        println!("{}", serde_json::to_string(one)?);
    } else {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "models": reports }))?
        );
    }
    Ok(())
}

/// The patterns of these reports in MMVP-VLM's order (then any others by name).
fn pattern_names(reports: &[ModelReport]) -> Vec<String> {
    let mut names: Vec<String> = MmvpPattern::ALL
        .iter()
        .map(|p| p.name().to_string())
        .filter(|n| reports.iter().any(|r| r.report.patterns.contains_key(n)))
        .collect();
    for r in reports {
        for n in r.report.patterns.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
}

/// Several models as rows of one table, as the paper's MMVP-VLM table: pair accuracy (%)
/// per pattern and the average; the fused score, and the global view alone (GG) below
/// it where the model has fine-grained perspectives.
fn print_rows(benchmark: &str, reports: &[ModelReport]) {
    let names = pattern_names(reports);
    let width = reports
        .iter()
        .map(|r| r.model.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 40);
    println!("{benchmark}: pair accuracy (%), fused score; GG: the global view alone");
    let mut header = format!("  {:<width$}", "model");
    for n in &names {
        header.push_str(&format!(" {:>7}", n.chars().take(7).collect::<String>()));
    }
    header.push_str(&format!(" {:>7} {:>6}", "average", "± s.e."));
    println!("{header}");
    for r in reports {
        let row = |label: &str, pick: fn(&crate::scenes::eval::MethodScores) -> f64| {
            let mut line = format!("  {label:<width$}");
            for n in &names {
                match r.report.patterns.get(n) {
                    Some(s) => line.push_str(&format!(" {:>7.1}", pick(s))),
                    None => line.push_str(&format!(" {:>7}", "–")),
                }
            }
            line.push_str(&format!(
                " {:>7.1} {:>6.1}",
                pick(&r.report.average),
                pick(&r.report.average_standard_error)
            ));
            line
        };
        println!("{}", row(&r.model, |s| s.fused));
        if r.report.average.gg != r.report.average.fused
            || r.report.patterns.values().any(|s| s.gg != s.fused)
        {
            println!("{}", row("  GG", |s| s.gg));
        }
    }
    for r in reports {
        if let Some(t) = &r.retrieval {
            println!(
                "  {}: recall@1 over {} scenes: text→image {:.3}, image→text {:.3}, short object queries {:.3}",
                r.model, t.scenes, t.text_to_image_r1, t.image_to_text_r1, t.object_query_r1
            );
            println!("  {}", misses_line(t));
        }
    }
}

/// The object queries' misses by cause, as one line.
fn misses_line(t: &Retrieval) -> String {
    let m = &t.object_query_misses;
    format!(
        "object queries missed: {} (the first-ranked scene's closest object differs in size {}, fill {}, colour {}, shape {}, several {})",
        m.total(),
        m.size,
        m.fill,
        m.colour,
        m.shape,
        m.several
    )
}

fn pmmvp(args: &PmmvpArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    if args.models.len() > 1 && args.common.run.tuned.is_some() {
        anyhow::bail!("--tuned applies to one model: give a single --model with it");
    }
    for model in &args.models {
        let session = args.common.run.session(model)?;
        let eval = evaluator(&session)?;
        let total = args.pairs * MmvpPattern::ALL.len();
        let pb = bar(total, args.common.json);
        let report = eval.pmmvp(args.pairs, args.seed, |done, _| {
            pb.set_position(done as u64);
        })?;
        pb.finish_and_clear();
        let retrieval = if args.retrieval > 0 {
            let pb = bar(args.retrieval, args.common.json);
            let r = eval.retrieval(args.retrieval, args.seed ^ 0x7e7, |d, total| {
                pb.set_length(total as u64);
                pb.set_position(d as u64);
            })?;
            pb.finish_and_clear();
            Some(r)
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
        print_json(&reports)?;
    } else if reports.len() > 1 {
        print_rows("P-MMVP", &reports);
    } else {
        for r in &reports {
            print_report(&r.model, &r.report);
            if let Some(t) = &r.retrieval {
                println!(
                    "  recall@1 over {} scenes: text→image {:.3}, image→text {:.3}, short object queries {:.3}",
                    t.scenes, t.text_to_image_r1, t.image_to_text_r1, t.object_query_r1
                );
                println!("  {}", misses_line(t));
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
    let e = &r.average_standard_error;
    println!(
        "  {:<12} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1}",
        "± s.e.", e.fused, e.gg, e.fg, e.gf, e.ff
    );
    println!(
        "  (± s.e.: the average's standard error from the draw of pairs; more --pairs make \
         it smaller. cos img / cos txt: mean cosine of a pair's two images / two statements, \
         global view; near 1, the model does not tell them apart)"
    );
    // Each fine perspective's own view (the global one's is GG above).
    let views = r.perspectives.get(1..).unwrap_or_default();
    if views.is_empty() {
        return;
    }
    let mut header = format!("  {:<12}", "view alone");
    for v in views {
        header.push_str(&format!(
            " {:>10}",
            v.name.chars().take(10).collect::<String>()
        ));
    }
    println!("{header}");
    for p in MmvpPattern::ALL.iter().map(|p| p.name()) {
        if !r.patterns.contains_key(p) {
            continue;
        }
        let mut line = format!("  {p:<12}");
        for v in views {
            match v.patterns.get(p) {
                Some(x) => line.push_str(&format!(" {x:>10.1}")),
                None => line.push_str(&format!(" {:>10}", "–")),
            }
        }
        println!("{line}");
    }
    let mut line = format!("  {:<12}", "average");
    for v in views {
        line.push_str(&format!(" {:>10.1}", v.average));
    }
    println!("{line}");
}

/// A Markdown table with a row per model (and a GG row under it), as [`print_rows`], with
/// recall columns when they were measured.
fn print_markdown(reports: &[ModelReport]) {
    let names = pattern_names(reports);
    let recall = reports.iter().any(|r| r.retrieval.is_some());
    let mut header = String::from("| model | score |");
    let mut rule = String::from("|---|---|");
    for n in names.iter().map(String::as_str).chain(["**average**"]) {
        header.push_str(&format!(" {n} |"));
        rule.push_str("---:|");
    }
    if recall {
        header.push_str(" text→image R@1 | image→text R@1 | object query R@1 |");
        rule.push_str("---:|---:|---:|");
    }
    println!("{header}\n{rule}");
    for r in reports {
        for (label, pick) in [
            (
                "fused",
                (|s| s.fused) as fn(&crate::scenes::eval::MethodScores) -> f64,
            ),
            ("GG", |s| s.gg),
        ] {
            let mut line = format!("| {} | {label} |", r.model);
            for n in &names {
                match r.report.patterns.get(n) {
                    Some(s) => line.push_str(&format!(" {:.1} |", pick(s))),
                    None => line.push_str(" – |"),
                }
            }
            line.push_str(&format!(" {:.1} |", pick(&r.report.average)));
            if recall {
                match (&r.retrieval, label) {
                    (Some(t), "fused") => line.push_str(&format!(
                        " {:.1} | {:.1} | {:.1} |",
                        100.0 * t.text_to_image_r1,
                        100.0 * t.image_to_text_r1,
                        100.0 * t.object_query_r1
                    )),
                    _ => line.push_str(" | | |"),
                }
            }
            println!("{line}");
        }
    }
}
